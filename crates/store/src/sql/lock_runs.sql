-- Locks the runs the tasks $1 belong to (each child's run, or the run itself), in run id order
-- (see `lock_runs` in `runs.rs`).
--
-- Every ending runs this, some on connections that keep one generic plan, possibly made while
-- `tasks` and `task_runs` were empty; there a hash join of both whole tables looks cheapest, and
-- it would stay the plan as they grow. Looking each task up on its own (the `offset 0` keeps the
-- lateral look from being flattened into a join) leaves only index look-ups to choose from.
select r.task_id
from task_runs r
where r.task_id in (
    select t.run_id
    from unnest($1::uuid[]) i(id)
    cross join lateral (
        select t.run_id from tasks t where t.id = i.id and t.run_id is not null offset 0
    ) t
)
order by r.task_id
for update of r
