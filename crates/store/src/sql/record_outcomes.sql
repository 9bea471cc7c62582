-- Records the outcomes of a batch of dispatches in one statement; element i of every array is
-- dispatch i, in the order the outcomes arrived. A task is updated only while it still holds the
-- claim token its dispatch was made under: if a callback ended the task, an operator cancelled
-- it, or the lease ran out and another node reclaimed it, its update matches nothing and the
-- newer state stands. Every attempt row is written either way, since the dispatch did happen; it
-- replaces an `abandoned` row another node may have written for the same attempt.
-- A job's streak of transient dispatch errors grows with each transient error and ends with any
-- answer that shows the downstream up; within the batch they count in order, so the streak after
-- it is the transient errors after the job's last good answer (added to the stored streak when
-- the batch has no good answer). Ending a streak that is already zero writes nothing. Outcomes
-- passed over (below) count when they are recorded, after the rest of their batch.
with o as (
    select *
    from unnest($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::int[], $6::text[],
                $7::text[], $8::jsonb[], $9::text[], $10::jsonb[], $11::int[], $12::text[],
                $13::timestamptz[], $14::text[], $15::int[], $16::bigint[], $17::text[],
                $18::bool[], $19::text[], $20::int[])
         with ordinality
         as o(id, token, state, next_ms, failures, failure_reason, error, progress, message,
              result, attempt, node, started_at, outcome, http_status, latency_ms, fingerprint,
              unchanged, error_code, reported, ord)
),
-- Skip if unchanged, for the answers whose status body speaks of their input: as in
-- `finish_tasks.sql`, a task of a job, or a child of a step, with `skip_if_unchanged` keeps the
-- fingerprint reported, and one completed ends `unchanged` when its downstream said so or
-- reported the fingerprint stored for its job.
skips as (
    select t.id, f.fingerprint as last
    from o
    join tasks t on t.id = o.id
    left join jobs j on j.id = t.job_id
    left join task_runs r on r.task_id = t.run_id and t.step is not null
    left join job_fingerprints f on f.job_id = t.job_id
    where (o.fingerprint is not null or o.unchanged)
      and coalesce(case when t.step is null then (j.spec ->> 'skip_if_unchanged')::boolean
                        else (r.steps -> t.step ->> 'skip_if_unchanged')::boolean end, false)
),
-- Rows are locked in id order, the same order every batched writer of tasks uses. A row another
-- transaction holds (a callback batch ending that task, most often, since a downstream may call
-- back before its answer is recorded) is passed over rather than waited for: the batch writes
-- nothing of it, returns it as `skipped`, and the caller records it again once the holder is done,
-- in a transaction that has already locked it (see `Store::record_outcomes`). So a batch never
-- holds its locks while it waits for another's commit. A locking read returns each row as it is
-- once locked; the tasks are found by id alone, so the plan looks each one up by its key.
locked as (
    select id, job_id, claim_token from tasks where id = any($1) order by id
    for update skip locked
),
updated as (
    update tasks t set
        state = coalesce(o.state, t.state),
        next_dispatch_at = case when o.next_ms is null then null
                                else least(now() + o.next_ms * interval '1 millisecond', t.timeout_at) end,
        finished_at = case when o.next_ms is null then now() end,
        consecutive_failures = o.failures,
        -- Set when the answer's status body reported a failure the job's retry policy retries.
        reported_failures = coalesce(o.reported, t.reported_failures),
        reported_attempt = case when o.reported is null then t.reported_attempt else o.attempt end,
        failure_reason = o.failure_reason,
        last_error = coalesce(o.error, t.last_error),
        progress = coalesce(o.progress, t.progress),
        message = coalesce(o.message, t.message),
        result = coalesce(o.result, t.result),
        -- A task completed for a job nobody watches for success needs no alert evaluation.
        outcome_noticed = t.outcome_noticed or coalesce(o.state = 'completed' and not exists (
            select 1 from jobs j where j.id = t.job_id and j.spec -> 'alerts' ? 'on_success'), false),
        fingerprint = case when s.id is not null then coalesce(o.fingerprint, t.fingerprint)
                           else t.fingerprint end,
        outcome = case when o.state = 'completed' and s.id is not null
                        and (o.unchanged or o.fingerprint = s.last) then 'unchanged' end,
        claim_token = null,
        claimed_by = null,
        claimed_at = null,
        updated_at = now()
    from o join locked l on l.id = o.id left join skips s on s.id = o.id
    where t.id = l.id and l.claim_token = o.token
    returning t.id, t.job_id, t.state, t.step, t.fingerprint, t.outcome, o.ord
),
-- A plain task completed with a new fingerprint makes it its job's (see `finish_tasks.sql`).
stored as (
    insert into job_fingerprints (job_id, fingerprint, task_id)
    select distinct on (job_id) job_id, fingerprint, id from updated
    where state = 'completed' and outcome is null and step is null and fingerprint is not null
      and job_id is not null
    order by job_id, ord desc
    on conflict (job_id) do update set
        fingerprint = excluded.fingerprint, task_id = excluded.task_id, updated_at = now()
),
recorded as (
    insert into task_attempts (task_id, number, node, started_at, outcome, http_status, error,
                               latency_ms, error_code)
    select id, attempt, node, started_at, outcome, http_status, error, latency_ms, error_code from o
    where id in (select id from locked)
    on conflict (task_id, number) do update set
        node = excluded.node, started_at = excluded.started_at, finished_at = now(),
        outcome = excluded.outcome, http_status = excluded.http_status,
        -- A callback for this attempt may have recorded its error before the answer came.
        error = coalesce(excluded.error, task_attempts.error), latency_ms = excluded.latency_ms,
        error_code = coalesce(excluded.error_code, task_attempts.error_code)
),
per_job as (
    select l.job_id, o.ord, o.outcome, o.error
    from o join locked l on l.id = o.id
    where l.job_id is not null
),
good as (
    select job_id,
           max(ord) filter (where outcome in ('accepted', 'already_running', 'permanent_error')) as last_ord
    from per_job group by job_id
),
streaks as (
    select p.job_id, g.last_ord is not null as ended,
           count(*) filter (where p.outcome = 'transient_error') as errors,
           (array_agg(p.error order by p.ord desc) filter (where p.outcome = 'transient_error'))[1] as last_error
    from per_job p join good g on g.job_id = p.job_id
    where p.ord > coalesce(g.last_ord, 0)
    group by p.job_id, g.last_ord
),
grown as (
    insert into dispatch_streaks (job_id, errors, last_error)
    select job_id, errors, last_error from streaks where errors > 0
    -- One order for every writer, so concurrent batches lock streaks without deadlocking.
    order by job_id
    on conflict (job_id) do update set
        errors = excluded.errors + case
            when (select s.ended from streaks s where s.job_id = excluded.job_id) then 0
            else dispatch_streaks.errors end,
        noticed = case
            when (select s.ended from streaks s where s.job_id = excluded.job_id) then 0
            else dispatch_streaks.noticed end,
        last_error = excluded.last_error, updated_at = now()
),
ended as (
    update dispatch_streaks d set errors = 0, noticed = 0, updated_at = now()
    from good g
    where d.job_id = g.job_id and g.last_ord is not null and d.errors > 0
      and not exists (select 1 from streaks s where s.job_id = g.job_id and s.errors > 0)
)
select o.id as "id!", exists (select 1 from updated u where u.id = o.id) as "applied!",
       (select u.outcome from updated u where u.id = o.id) as outcome,
       not exists (select 1 from locked l where l.id = o.id) as "skipped!"
from o
order by o.ord
