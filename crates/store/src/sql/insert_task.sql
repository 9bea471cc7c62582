-- Creates a task, or nothing when the job already has a task with this idempotency key.
-- With a node in $10 and the task due now, the task is created already claimed by that node, so
-- the node can dispatch it without a separate claim commit. Otherwise, when it is due now,
-- dispatchers are woken; the notification is delivered at commit. With $12, the task is queued
-- behind that open task (overlap policy `buffer_one`): it is not due before its timeout, and the
-- leader's sweep makes it due once the task it waits for has finished. $14 is the operator who ran
-- it now, $15 the task it retries, $16 and $17 the id and type of the message that created it.
with new as (
    select coalesce($7::timestamptz, now()) as due_at
),
inserted as (
    insert into tasks (id, job_id, job_name, origin, idempotency_key, payload, due_at,
                       next_dispatch_at, deadline_at, timeout_at,
                       claim_token, claimed_by, claimed_at, attempt, started_at, waits_for,
                       trace_context, actor, retry_of, message_id, message_type)
    select $1, $2, $3, $4, $5, $6, new.due_at,
           case when claim then now() + $11::bigint * interval '1 millisecond'
                when $12::uuid is not null then new.due_at + $9::bigint * interval '1 millisecond'
                else new.due_at end,
           new.due_at + $8::bigint * interval '1 millisecond',
           new.due_at + $9::bigint * interval '1 millisecond',
           case when claim then gen_random_uuid() end,
           case when claim then $10 end,
           case when claim then now() end,
           case when claim then 1 else 0 end,
           case when claim then now() end,
           $12,
           $13,
           $14,
           $15,
           $16,
           $17
    from new, lateral (select $10::text is not null and $12::uuid is null and new.due_at <= now() as claim) c
    on conflict (job_id, idempotency_key) do nothing
    returning id, claim_token, due_at, deadline_at, timeout_at, claimed_at, next_dispatch_at
)
select i.id as "id!", i.claim_token, i.due_at as "due_at!", i.deadline_at,
       i.timeout_at as "timeout_at!", i.claimed_at,
       (select max(s.started_at) from tasks s
        where s.job_id = $2 and s.state = 'completed') as last_success_at,
       n.notified as "notified!"
from inserted i
cross join lateral (
    select case when i.claim_token is null and i.next_dispatch_at <= now()
                then pg_notify('pacer_tasks_due', '') is not null
                else false end as notified
) n
