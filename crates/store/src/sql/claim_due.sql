-- Claims up to $2 due tasks for node $1 in one statement.
-- `for update skip locked` lets concurrent claimers pass over each other's rows instead of
-- waiting, so two nodes never take the same task. A task whose previous claim's lease ran out
-- (its node vanished mid-dispatch) is due again by construction, because the claim moved
-- `next_dispatch_at` to the lease expiry; the lost dispatch is recorded as `abandoned`.
-- A task never dispatched and due within $4 ms is claimed ahead: the node holds it and
-- dispatches it at `dispatch_in_ms`, so that the claim's round trip is not part of its lateness.
-- A task dispatched before, or queued behind another, is claimed only when due. A task claimed
-- when due is marked `dispatched` by its claim; one claimed ahead is marked by its node shortly
-- before its time (until then a pause, standby or trigger delete may still withdraw it).
-- A run (the task of a job made of steps) is claimed like a task when it is created, and the
-- dispatcher starts it instead of sending it; started, it is due again only at its timeout.
-- The new lease is the job's dispatch timeout plus a margin ($3 ms) from the dispatch's time, on
-- the database clock.
with due as (
    select t.id, t.claim_token as old_token, t.claimed_by as old_node,
           t.claimed_at as old_claimed_at, t.attempt as old_attempt,
           greatest(t.next_dispatch_at, now()) as dispatch_at
    from tasks t
    where t.next_dispatch_at <= now() + $4::bigint * interval '1 millisecond'
      and (t.next_dispatch_at <= now()
           or (t.attempt = 0 and t.claim_token is null and t.waits_for is null))
    order by t.next_dispatch_at
    limit $2
    for update of t skip locked
),
abandoned as (
    insert into task_attempts (task_id, number, node, started_at, outcome, error)
    select id, old_attempt, old_node, old_claimed_at, 'abandoned',
           'the claim''s lease expired before its node reported an outcome'
    from due
    where old_token is not null
    on conflict (task_id, number) do nothing
),
claimed as (
    update tasks t set
        claim_token = gen_random_uuid(),
        claimed_by = $1,
        claimed_at = due.dispatch_at,
        attempt = t.attempt + case when t.timeout_at <= now() then 0 else 1 end,
        dispatched = t.dispatched or due.dispatch_at <= now(),
        started_at = case when t.timeout_at <= now() then t.started_at
                          else coalesce(t.started_at, due.dispatch_at) end,
        next_dispatch_at = due.dispatch_at + (j.dispatch_timeout_ms + $3::bigint) * interval '1 millisecond',
        updated_at = now()
    from due, jobs j
    where t.id = due.id and j.id = t.job_id
    returning t.id, t.claim_token, t.job_id, t.job_name, j.version as job_version, j.spec,
              t.state, t.attempt, t.consecutive_failures, t.reported_failures, t.payload,
              coalesce(t.scheduled_at, t.due_at) as scheduled_at,
              coalesce(t.fire_at, t.scheduled_at, t.due_at) as fire_at, t.deadline_at,
              t.timeout_at, t.claimed_at, t.timeout_at <= now() as timed_out, t.trace_context,
              t.dispatched, t.run_id, t.step, t.child, t.item,
              (extract(epoch from due.dispatch_at - now()) * 1000)::bigint as dispatch_in_ms
)
select c.id as "id!", c.claim_token as "claim_token!", c.job_name as "job_name!",
       c.job_version as "job_version!", c.spec as "spec!: Json<JobSpec>", c.state as "state!",
       c.attempt as "attempt!", c.consecutive_failures as "consecutive_failures!",
       c.reported_failures as "reported_failures!",
       c.payload as "payload!", c.scheduled_at as "scheduled_at!", c.fire_at as "fire_at!", c.deadline_at, c.timeout_at as "timeout_at!",
       c.claimed_at as "claimed_at!", c.timed_out as "timed_out!", c.trace_context,
       c.dispatched as "dispatched!",
       c.dispatch_in_ms as "dispatch_in_ms!",
       (select max(s.started_at) from tasks s
        where s.job_id = c.job_id and s.state = 'completed' and s.step is null) as last_success_at,
       (select f.fingerprint from job_fingerprints f where f.job_id = c.job_id) as last_fingerprint,
       -- A child of a run: its run, step and name, its item and its step's definition (its
       -- target); all null for any other task. The results of the steps before it, the same for
       -- every child of the step and large for a long list, are read once per run and step by
       -- each node (see `claims.rs`), not detoasted and sent with every claimed child.
       c.run_id, c.step, c.child, c.item, r.steps -> c.step as step_definition
from claimed c
left join task_runs r on r.task_id = c.run_id and c.step is not null
