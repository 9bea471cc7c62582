-- Records one dispatch's outcome. The task is updated only while it still holds the claim token
-- the dispatch was made under: if a callback ended the task, an operator cancelled it, or the
-- lease ran out and another node reclaimed it, the update matches nothing and newer state stands.
-- The attempt row is written either way, since the dispatch did happen; it replaces an
-- `abandoned` row another node may have written for the same attempt.
-- The job's streak of transient dispatch errors grows with a transient error and ends with any
-- answer that shows the downstream up; ending a streak that is already zero writes nothing.
with updated as (
    update tasks set
        state = coalesce($3, state),
        next_dispatch_at = case when $4::bigint is null then null
                                else least(now() + $4 * interval '1 millisecond', timeout_at) end,
        finished_at = case when $4::bigint is null then now() end,
        consecutive_failures = $5,
        failure_reason = $6,
        last_error = coalesce($7, last_error),
        progress = coalesce($8, progress),
        message = coalesce($9, message),
        result = coalesce($10, result),
        -- A task completed for a job nobody watches for success needs no alert evaluation.
        outcome_noticed = outcome_noticed or coalesce($3::text = 'completed' and not exists (
            select 1 from jobs j where j.id = tasks.job_id and j.spec -> 'alerts' ? 'on_success'), false),
        claim_token = null,
        claimed_by = null,
        claimed_at = null,
        updated_at = now()
    where id = $1 and claim_token = $2
    returning id
),
recorded as (
    insert into task_attempts (task_id, number, node, started_at, outcome, http_status, error, latency_ms)
    values ($1, $11, $12, $13, $14, $15, $7, $16)
    on conflict (task_id, number) do update set
        node = excluded.node, started_at = excluded.started_at, finished_at = now(),
        outcome = excluded.outcome, http_status = excluded.http_status,
        error = excluded.error, latency_ms = excluded.latency_ms
),
streak_grown as (
    insert into dispatch_streaks (job_id, errors, last_error)
    select job_id, 1, $7 from tasks where id = $1 and job_id is not null and $14 = 'transient_error'
    on conflict (job_id) do update set
        errors = dispatch_streaks.errors + 1, last_error = excluded.last_error, updated_at = now()
),
streak_ended as (
    update dispatch_streaks set errors = 0, noticed = 0, updated_at = now()
    where job_id = (select job_id from tasks where id = $1) and errors > 0
      and $14 in ('accepted', 'already_running', 'permanent_error')
)
select exists (select 1 from updated) as "applied!"
