-- Creates the children of step $2 of run $1, one per element of the arrays: $3 id, $4 name (child
-- name, item key, or the step's name), $5 payload, $6 item, $7 held (a `for_each` item beyond
-- `max_parallel`: pending, not due before the run's timeout $10 until an ending releases it).
-- Children inherit the run's job, origin and trace, and time out with the run. With $11 (the step
-- names a concurrency group), each waits for a slot of the group: not due before the run's
-- timeout until the admission pass gives it one. With $12 (the step's deadline, in milliseconds),
-- each child is overdue when still open that long after the step started.
-- With $8, the earlier run of a retry of errors, a child whose namesake in step $9 (by name, so a
-- job edited in between reuses only what still matches) completed there is created already ended
-- with that child's state, result and fingerprint: not due, never dispatched, and with no alert
-- to evaluate.
-- The unique key (run, step, child) makes the creation exactly once: a repeat inserts nothing.
with n as (
    select *
    from unnest($3::uuid[], $4::text[], $5::jsonb[], $6::jsonb[], $7::bool[])
         with ordinality as n(id, child, payload, item, held, ord)
),
run as (
    select job_id, job_name, origin, trace_context from tasks where id = $1
),
old as (
    select c.child, c.state, c.result, c.progress, c.message, c.attempt, c.started_at, c.finished_at,
           c.fingerprint
    from tasks c join task_runs o on o.task_id = c.run_id
    where $8::uuid is not null and c.run_id = $8 and c.step is not null
      and o.steps -> c.step ->> 'name' = $9::text
      and c.state in ('completed', 'completed_with_errors')
)
insert into tasks (id, job_id, job_name, state, origin, payload, due_at, next_dispatch_at,
                   timeout_at, attempt, started_at, finished_at, result, progress, message,
                   outcome_noticed, trace_context, run_id, step, child, item, held, waiting,
                   fingerprint, deadline_at)
select n.id, run.job_id, run.job_name, coalesce(old.state, 'pending'), run.origin, n.payload,
       now(),
       case when old.state is not null then null
            when n.held or $11::bool then $10::timestamptz
            else now() end,
       $10::timestamptz, coalesce(old.attempt, 0), old.started_at, old.finished_at, old.result,
       old.progress,
       case when old.state is not null then 'reused from the retried run' end,
       old.state is not null, run.trace_context, $1, $2, n.child, n.item,
       n.held and old.state is null, $11::bool and old.state is null, old.fingerprint,
       case when old.state is null then now() + $12::bigint * interval '1 millisecond' end
from n cross join run
left join old on old.child = n.child
order by n.ord
on conflict (run_id, step, child) where step is not null do nothing
returning id, state <> 'pending' as "reused!"
