-- Ends open tasks in one statement, one per element of the arrays (ids are distinct): callbacks
-- with a final status, or cancellations. Each update matches only while its task is in one of the
-- states ($8) the event may move it out of, so the state machine's check and the write are one
-- atomic step and no row lock is held across round trips; for a task that matched nothing, the
-- caller reads it to tell a repeat from a conflict. Clearing the claim fences off a dispatch still
-- in flight: its outcome will find no matching claim token and leave the final state alone.
-- Element i: $1 id, $2 final state, $3 progress, $4 message, $5 result, $6 failure reason, $7 a
-- cancellation (which asks the cancel notifiers to tell the downstream when a dispatch went out
-- to it), $9 the callback's own event (null for a cancellation), written just before the
-- state change it caused, $10 the fingerprint reported and $11 whether the downstream said its
-- input was unchanged (see `skips`), $12 the task's `last_error` (the error a failed report
-- named), kept as it was when null.
with o as (
    select *
    from unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::jsonb[], $6::text[],
                $7::bool[], $9::jsonb[], $10::text[], $11::bool[], $12::text[])
         with ordinality as o(id, state, progress, message, result, failure_reason, cancel, event,
                              fingerprint, unchanged, error, ord)
),
-- Rows are locked in id order, the same order every batched writer of tasks uses, so two batches
-- touching the same tasks wait for each other instead of deadlocking. A locking read returns each
-- row as it is once locked, so its state (`was`) is the one the update below starts from; the
-- tasks are found by id alone, so the plan looks each one up by its key. Each element's row
-- carries everything the update needs of it, so that no step joins one set of the batch's rows to
-- another: on the batched writers' connections (no hash joins) such a join compares every row
-- with every other.
-- Skip if unchanged, for the reports that speak of their input: a task of a job, or a child of a
-- step, with `skip_if_unchanged` keeps the fingerprint it reports (`skips`), and a completed one
-- ends `unchanged` when its downstream said so or reported the fingerprint stored for its job
-- (`last`). (A run's steps are the ones it started with, in `task_runs`.) Other tasks ignore both
-- fields.
locked as (
    select o.*, t.state as was, f.fingerprint as last,
           (o.fingerprint is not null or o.unchanged)
           and coalesce(case when t.step is null then (j.spec ->> 'skip_if_unchanged')::boolean
                             else (r.steps -> t.step ->> 'skip_if_unchanged')::boolean end,
                        false) as skips
    from o
    join tasks t on t.id = o.id
    left join jobs j on j.id = t.job_id and t.step is null
    left join task_runs r on r.task_id = t.run_id and t.step is not null
    left join job_fingerprints f on f.job_id = t.job_id
    order by t.id
    for update of t
),
updated as (
    update tasks t set state = l.state, finished_at = now(), next_dispatch_at = null,
        claim_token = null, claimed_by = null, claimed_at = null,
        progress = coalesce(l.progress, t.progress), message = coalesce(l.message, t.message),
        result = coalesce(l.result, t.result), failure_reason = l.failure_reason,
        last_error = coalesce(l.error, t.last_error),
        cancel_notice_at = case when l.cancel and t.dispatched then now() end,
        last_heartbeat_at = now(), updated_at = now(),
        -- A task completed for a job nobody watches for success needs no alert evaluation.
        outcome_noticed = l.state = 'completed' and not exists (
            select 1 from jobs j where j.id = t.job_id and j.spec -> 'alerts' ? 'on_success'),
        fingerprint = case when l.skips then coalesce(l.fingerprint, t.fingerprint)
                           else t.fingerprint end,
        outcome = case when l.state = 'completed' and l.skips
                        and (l.unchanged or l.fingerprint = l.last) then 'unchanged' end
    from locked l
    where t.id = l.id and l.was = any($8)
    returning t.*, l.ord, l.event
),
-- A plain task that completed with a new fingerprint makes it its job's: the input the next task
-- compares with. (A run's child keeps it until its run completes: see `runs.rs`.) The latest of a
-- job's in the batch wins; rows are written in job order, as every writer of them does.
stored as (
    insert into job_fingerprints (job_id, fingerprint, task_id)
    select distinct on (job_id) job_id, fingerprint, id from updated
    where state = 'completed' and outcome is null and step is null and fingerprint is not null
      and job_id is not null
    order by job_id, ord desc
    on conflict (job_id) do update set
        fingerprint = excluded.fingerprint, task_id = excluded.task_id, updated_at = now()
),
callback as (
    insert into events (kind, job_name, task_id, data)
    select 'task.callback', job_name, id, event from updated where event is not null order by ord
)
select id, job_name, state, origin, idempotency_key, payload, attempt, created_at,
       due_at, trigger_id, scheduled_at, waits_for, actor, retry_of, message_id, message_type,
       started_at, finished_at, next_dispatch_at, deadline_at, timeout_at, claimed_by,
       progress, message, result, last_error, failure_reason, updated_at, fingerprint, outcome,
       coalesce(deadline_at < coalesce(finished_at, now()), false) as "overdue!"
from updated
order by ord
