-- Creates tasks, one per element of the arrays (in order), each unless its job already has a task
-- with the same idempotency key. Element i: $1 id, $2 job id, $3 job name, $4 the job's version
-- the caller read (null: not checked; otherwise nothing is inserted unless the job still has that
-- version and is not paused, so a caller may keep a job's definition between calls), $5 origin,
-- $6 idempotency key, $7 payload, $8 not before (null: now), $9 deadline and $10 timeout in ms,
-- $11 the node to claim it for and $12 that claim's lease in ms, $13 the open task it is queued
-- behind (overlap policy `buffer_one`: not due before its timeout, and the leader's sweep makes it
-- due once the task it waits for has finished), $14 traceparent, $15 the operator who ran it now,
-- $16 the task it retries, $17 and $18 the id and type of the message that created it, $19 who
-- to notify when it ends (`notify`).
-- A task due now with a node is created already claimed by that node, so the node can dispatch it
-- without a separate claim commit; one due now without, wakes the dispatchers (the notification
-- is delivered at commit).
with n as (
    select *
    from unnest($1::uuid[], $2::uuid[], $3::text[], $4::int[], $5::text[], $6::text[],
                $7::jsonb[], $8::timestamptz[], $9::bigint[], $10::bigint[], $11::text[],
                $12::bigint[], $13::uuid[], $14::text[], $15::text[], $16::uuid[], $17::text[],
                $18::text[], $19::jsonb[])
         with ordinality
         as n(id, job_id, job_name, version, origin, idempotency_key, payload, not_before,
              deadline_ms, timeout_ms, node, lease_ms, waits_for, trace_context, actor, retry_of,
              message_id, message_type, notify, ord)
),
current as (
    select n.*, coalesce(n.not_before, now()) as due_at, l.waiting,
           n.node is not null and n.waits_for is null and not l.waiting
               and coalesce(n.not_before, now()) <= now() as claim
    from n
    -- A task of a job with concurrency limits waits for a slot: never created claimed.
    cross join lateral (select exists (select 1 from jobs j where j.id = n.job_id and j.limited)
                        as waiting) l
    where n.version is null
       or exists (select 1 from jobs j where j.id = n.job_id and j.version = n.version and not j.paused)
),
inserted as (
    insert into tasks (id, job_id, job_name, origin, idempotency_key, payload, due_at,
                       next_dispatch_at, deadline_at, timeout_at,
                       claim_token, claimed_by, claimed_at, attempt, started_at, dispatched,
                       waits_for, trace_context, actor, retry_of, message_id, message_type,
                       waiting, notify)
    select id, job_id, job_name, origin, idempotency_key, payload, due_at,
           case when claim then now() + lease_ms * interval '1 millisecond'
                when waits_for is not null or waiting then due_at + timeout_ms * interval '1 millisecond'
                else due_at end,
           due_at + deadline_ms * interval '1 millisecond',
           due_at + timeout_ms * interval '1 millisecond',
           case when claim then gen_random_uuid() end,
           case when claim then node end,
           case when claim then now() end,
           case when claim then 1 else 0 end,
           case when claim then now() end,
           claim,
           waits_for, trace_context, actor, retry_of, message_id, message_type, waiting, notify
    from current
    order by ord
    on conflict (job_id, idempotency_key) where idempotency_key is not null do nothing
    returning id, claim_token, due_at, deadline_at, timeout_at, claimed_at, claimed_by,
              next_dispatch_at, attempt, created_at, started_at, updated_at
)
select n.id as "id!", c.id is not null as "current!", i.id as "inserted?",
       i.claim_token as "claim_token?", i.due_at as "due_at?", i.deadline_at as "deadline_at?",
       i.timeout_at as "timeout_at?", i.claimed_at as "claimed_at?", i.claimed_by as "claimed_by?",
       i.next_dispatch_at as "next_dispatch_at?", i.attempt as "attempt?",
       i.created_at as "created_at?", i.started_at as "started_at?", i.updated_at as "updated_at?",
       coalesce(i.deadline_at < now(), false) as "overdue!",
       case when i.claim_token is not null then
           (select max(s.started_at) from tasks s
            where s.job_id = n.job_id and s.state = 'completed' and s.step is null) end as "last_success_at?",
       case when i.claim_token is not null then
           (select f.fingerprint from job_fingerprints f
            where f.job_id = n.job_id) end as "last_fingerprint?",
       -- The task that already has this key (one inserted by this same statement is not visible
       -- here; the caller looks for it afterwards).
       case when c.id is not null and i.id is null then
           (select t.id from tasks t
            where t.job_id = n.job_id and t.idempotency_key = n.idempotency_key) end as "existing?",
       case when i.claim_token is null and i.next_dispatch_at <= now()
            then pg_notify('pacer_tasks_due', '') is not null end as notified
from n
left join current c on c.id = n.id
left join inserted i on i.id = n.id
order by n.ord
