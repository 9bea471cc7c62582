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
-- Rows are locked in id order, the same order every batched writer of tasks uses. A row another
-- transaction holds (a callback batch ending that task, most often, since a downstream may call
-- back before its answer is recorded) is passed over rather than waited for: the batch writes
-- nothing of it and the caller records it again once the holder is done, in a transaction that
-- has already locked it (see `Store::record_outcomes`). So a batch never holds its locks while it
-- waits for another's commit. A locking read returns each row as it is once locked; the tasks are
-- found by id alone, so the plan looks each one up by its key.
--
-- Each outcome's row carries everything the writes below need of it, so that no step joins one
-- set of the batch's rows to another: on the batched writers' connections (no hash joins) such a
-- join compares every row with every other, which for a batch of 256 cost more than the writes.
-- Skip if unchanged, for the answers whose status body speaks of their input: as in
-- `finish_tasks.sql`, a task of a job, or a child of a step, with `skip_if_unchanged` keeps the
-- fingerprint reported (`skips`), and one completed ends `unchanged` when its downstream said so
-- or reported the fingerprint stored for its job (`last`).
locked as (
    select o.*, t.job_id, t.claim_token as held, f.fingerprint as last,
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
    for update of t skip locked
),
updated as (
    update tasks t set
        state = coalesce(l.state, t.state),
        next_dispatch_at = case when l.next_ms is null then null
                                else least(now() + l.next_ms * interval '1 millisecond', t.timeout_at) end,
        finished_at = case when l.next_ms is null then now() end,
        consecutive_failures = l.failures,
        -- Set when the answer's status body reported a failure the job's retry policy retries.
        reported_failures = coalesce(l.reported, t.reported_failures),
        reported_attempt = case when l.reported is null then t.reported_attempt else l.attempt end,
        failure_reason = l.failure_reason,
        last_error = coalesce(l.error, t.last_error),
        progress = coalesce(l.progress, t.progress),
        message = coalesce(l.message, t.message),
        result = coalesce(l.result, t.result),
        -- A task completed for a job nobody watches for success needs no alert evaluation.
        outcome_noticed = t.outcome_noticed or coalesce(l.state = 'completed' and not exists (
            select 1 from jobs j where j.id = t.job_id and j.spec -> 'alerts' ? 'on_success'), false),
        fingerprint = case when l.skips then coalesce(l.fingerprint, t.fingerprint)
                           else t.fingerprint end,
        outcome = case when l.state = 'completed' and l.skips
                        and (l.unchanged or l.fingerprint = l.last) then 'unchanged' end,
        claim_token = null,
        claimed_by = null,
        claimed_at = null,
        updated_at = now()
    from locked l
    where t.id = l.id and l.held = l.token
    returning t.id, t.job_id, t.state, t.step, t.fingerprint, t.outcome, l.ord
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
    select id, attempt, node, started_at, outcome, http_status, error, latency_ms, error_code
    from locked
    on conflict (task_id, number) do update set
        node = excluded.node, started_at = excluded.started_at, finished_at = now(),
        outcome = excluded.outcome, http_status = excluded.http_status,
        -- A callback for this attempt may have recorded its error before the answer came.
        error = coalesce(excluded.error, task_attempts.error), latency_ms = excluded.latency_ms,
        error_code = coalesce(excluded.error_code, task_attempts.error_code)
),
-- Each job's outcomes in the batch, each with the last good answer among them (a window over the
-- job's rows, so no set is joined to another).
per_job as (
    select job_id, ord, outcome, error,
           max(ord) filter (where outcome in ('accepted', 'already_running', 'permanent_error'))
               over (partition by job_id) as last_good
    from locked
    where job_id is not null
),
streaks as (
    select job_id, bool_or(last_good is not null) as ended,
           count(*) filter (where outcome = 'transient_error' and ord > coalesce(last_good, 0))
               as errors,
           (array_agg(error order by ord desc) filter (
               where outcome = 'transient_error' and ord > coalesce(last_good, 0)))[1] as last_error
    from per_job
    group by job_id
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
    from streaks s
    where d.job_id = s.job_id and s.ended and s.errors = 0 and d.errors > 0
)
-- One row per task locked, and one more per task that took its outcome; the caller matches
-- them to the outcomes by id (a task not locked was passed over).
select id as "id!", false as "applied!", null::text as outcome from locked
union all
select id, true, outcome from updated
