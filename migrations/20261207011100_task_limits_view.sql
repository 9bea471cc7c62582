-- What limits a task: the concurrency group it takes a slot of (its job's; for a child of a run,
-- its step's), and the job whose `max_concurrency` applies (a run's or a plain task's; a child is
-- bounded by its step's group alone, as its run already holds the job's slot). `limit_key` names
-- the tasks one `max_concurrency` counts. (The state-event function that records a step group's
-- `group.released` is the one of `20261207010000_task_notices.sql`.)
create or replace view task_limits as
select t.id, t.job_id, t.job_name, t.state, t.due_at, t.started_at, t.waiting, t.held,
       t.holds_slot, t.waits_for,
       case when t.step is null then j.concurrency_group
            else r.steps -> t.step ->> 'concurrency_group' end as concurrency_group,
       case when t.step is null then (j.spec ->> 'max_concurrency')::int end as max_concurrency,
       case when t.step is null then j.name else j.name || '/steps' end as limit_key,
       j.spec as job_spec
from tasks t
join jobs j on j.id = t.job_id
left join task_runs r on r.task_id = t.run_id and t.step is not null;
