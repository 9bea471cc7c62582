-- Tasks newest first, optionally one job's or in one state; $3 is the keyset cursor (the last id
-- of the previous page). `overdue` is computed on the database clock.
select id, job_name, state, origin, idempotency_key, payload, attempt, created_at, due_at,
       trigger_id, scheduled_at, waits_for, message_id, message_type,
       started_at, finished_at, next_dispatch_at, deadline_at, timeout_at, claimed_by,
       progress, message, result, last_error, failure_reason, updated_at,
       coalesce(deadline_at < coalesce(finished_at, now()), false) as "overdue!"
from tasks
where ($1::text is null or job_name = $1)
  and ($2::text is null or state = $2)
  and ($3::uuid is null or id < $3)
order by id desc
limit $4
