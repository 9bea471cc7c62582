-- Creates a task, or nothing when the job already has a task with this idempotency key.
-- With a node in $10 and the task due now, the task is created already claimed by that node, so
-- the node can dispatch it without a separate claim commit. Otherwise, when it is due now,
-- dispatchers are woken; the notification is delivered at commit. With $12, the task is queued
-- behind that open task (overlap policy `buffer_one`): it is not due before its timeout, and the
-- leader's sweep makes it due once the task it waits for has finished. $14 is the operator who ran
-- it now, $15 the task it retries, $16 and $17 the id and type of the message that created it.
-- With $18, the job's version the caller read: nothing is inserted unless the job still has that
-- version and is not paused, so a caller may keep the job's definition between calls.
with new as (
    select coalesce($7::timestamptz, now()) as due_at
    where $18::int is null
       or exists (select 1 from jobs where id = $2 and version = $18 and not paused)
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
    on conflict (job_id, idempotency_key) where idempotency_key is not null do nothing
    returning id, claim_token, due_at, deadline_at, timeout_at, claimed_at, claimed_by,
              next_dispatch_at, attempt, created_at, started_at, updated_at
)
select i.id as "id!", i.claim_token, i.due_at as "due_at!", i.deadline_at,
       i.timeout_at as "timeout_at!", i.claimed_at, i.claimed_by, i.next_dispatch_at,
       i.attempt as "attempt!", i.created_at as "created_at!", i.started_at,
       i.updated_at as "updated_at!", coalesce(i.deadline_at < now(), false) as "overdue!",
       (select max(s.started_at) from tasks s
        where s.job_id = $2 and s.state = 'completed') as last_success_at,
       n.notified as "notified!"
from inserted i
cross join lateral (
    select case when i.claim_token is null and i.next_dispatch_at <= now()
                then pg_notify('pacer_tasks_due', '') is not null
                else false end as notified
) n
