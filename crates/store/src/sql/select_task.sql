-- One task by id (a statement of its own: the listing's optional filters would make a generic
-- plan scan the table). `overdue` is computed on the database clock.
select id, job_name, state, origin, idempotency_key, payload, attempt, created_at, due_at,
       trigger_id, scheduled_at, waits_for, actor, retry_of, message_id, message_type,
       started_at, finished_at, next_dispatch_at, deadline_at, timeout_at, claimed_by,
       progress, message, result, last_error, failure_reason, updated_at, fingerprint, outcome,
       coalesce(deadline_at < coalesce(finished_at, now()), false) as "overdue!"
from tasks
where id = $1
