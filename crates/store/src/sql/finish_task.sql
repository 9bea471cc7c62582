-- Ends an open task in one statement: a callback with a final status, or a cancellation. The
-- update matches only while the task is in one of the states ($8) the event may move it out of,
-- so the state machine's check and the write are one atomic step and no row lock is held across
-- round trips; when nothing matches, the caller reads the task to tell a repeat from a conflict.
-- Clearing the claim fences off a dispatch still in flight: its outcome will find no matching
-- claim token and leave this terminal state alone. $7 marks a cancellation, which asks the
-- cancel notifiers to tell the downstream when a dispatch already reached it. $9 is the
-- callback's own event, written before the state change it caused (null for a cancellation).
with updated as (
    update tasks set state = $2, finished_at = now(), next_dispatch_at = null,
        claim_token = null, claimed_by = null, claimed_at = null,
        progress = coalesce($3, progress), message = coalesce($4, message),
        result = coalesce($5, result), failure_reason = $6,
        cancel_notice_at = case when $7 and attempt > 0 then now() end,
        last_heartbeat_at = now(), updated_at = now(),
        -- A task completed for a job nobody watches for success needs no alert evaluation.
        outcome_noticed = $2 = 'completed' and not exists (
            select 1 from jobs j where j.id = tasks.job_id and j.spec -> 'alerts' ? 'on_success')
    where id = $1 and state = any($8)
    returning *
),
callback as (
    insert into events (kind, job_name, task_id, data)
    select 'task.callback', job_name, id, $9 from updated where $9::jsonb is not null
)
select id, job_name, state, origin, idempotency_key, payload, attempt, created_at, due_at,
       trigger_id, scheduled_at, waits_for, actor, retry_of, message_id, message_type,
       started_at, finished_at, next_dispatch_at, deadline_at, timeout_at, claimed_by,
       progress, message, result, last_error, failure_reason, updated_at,
       coalesce(deadline_at < coalesce(finished_at, now()), false) as "overdue!"
from updated
