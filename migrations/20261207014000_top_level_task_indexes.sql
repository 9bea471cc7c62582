-- A job's own tasks (plain tasks and runs) are the ones with no step: a started run points at
-- itself (`run_id = id`), so `run_id is null` left every started run out of pruning, out of the
-- job view's freshness, and made a job's last success scan past every completed child of its
-- runs. Both indexes now hold top-level tasks alone, named by `step is null`, which the queries
-- that read them say in the same words.
--
-- Like the retention indexes, these are built when the first node of this release starts, not
-- concurrently: an operator with a large `tasks` table may create them `concurrently` by hand,
-- with these names and definitions, beforehand (`if not exists`), and drop the old ones after.

-- A job's last completed run or task: the start of its latest, first in the index.
create index if not exists tasks_job_last_success_idx on tasks (job_id, started_at desc)
    where state = 'completed' and step is null;
drop index if exists tasks_job_success_idx;

-- Finished top-level tasks per job, oldest first: what pruning takes (a run's children go with
-- their run).
create index if not exists tasks_prune_top_idx on tasks (job_id, finished_at)
    where next_dispatch_at is null and step is null;
drop index if exists tasks_prune_idx;
