-- Runs made of steps (workflows). A run is the task of a job made of steps: an ordinary row of
-- `tasks` (so overlap, listing, cancel, retry, deadlines and alerts treat it as any task) that is
-- never dispatched. Its children are ordinary tasks too, dispatched, re-polled and called back as
-- any other, each pointing at its run with `run_id`, at its step's index with `step`, and named by
-- `child` (the step's name for a single-target step, the child's name for a `parallel` step, the
-- item's key for a `for_each` step). A started run points at itself (`run_id = id`, `step` null),
-- so its row is told apart from a plain task without a look at its job.
alter table tasks
    add column run_id uuid references tasks (id) on delete cascade,
    add column step   integer,
    add column child  text,
    -- The item a `for_each` child works on.
    add column item   jsonb,
    -- An item of a `for_each` step waiting for one of its step's `max_parallel` slots: pending,
    -- not due before its timeout, released (made due now) by the ending that frees a slot.
    add column held   boolean not null default false,
    add constraint tasks_child_is_whole check ((step is null) = (child is null)
                                               and (step is null or run_id is not null));
-- A step's children are created exactly once: under this key, whichever ending creates them.
create unique index tasks_run_child_key on tasks (run_id, step, child) where step is not null;

-- One row per started run: the step definitions it started with (a job edited meanwhile does not
-- change a running run), the step it is at, and the results of the steps before that step, which
-- its children are dispatched with as `inputs`. Every transaction that ends a child of the run, or
-- the run, locks this row first (`for update`, in run id order) and only then the tasks: so the
-- transactions ending a run's children take turns, each sees what the ones before it committed,
-- and exactly one of them finds its step's last child ended and advances the run.
create table task_runs (
    task_id    uuid primary key references tasks (id) on delete cascade,
    steps      jsonb not null,
    step       integer not null default 0,
    inputs     jsonb not null default '{}',
    -- Retry errors: the earlier run whose completed children this run reuses, up to the first
    -- step that reruns a child (then null: every later step reruns in full).
    reuse_from uuid references tasks (id) on delete set null,
    updated_at timestamptz not null default now()
);
-- A run's children by step and state: what an ending reads of its step (the open, failed and
-- cancelled children, found without a visit to the step's completed ones, of which a `for_each`
-- step may have many), and the cascade when a run is pruned.
create index tasks_run_idx on tasks (run_id, step, state, held) where run_id is not null;

-- A child's state changes say which run, step and child they belong to, so the event stream can
-- follow a run; other tasks' events are unchanged (the fields are null and stripped).
create or replace function pacer_task_created_events() returns trigger language plpgsql as $$
begin
    insert into events (kind, job_name, task_id, data)
    select 'task.state', n.job_name, n.id,
           jsonb_strip_nulls(jsonb_build_object(
               'state', n.state, 'attempt', n.attempt, 'origin', n.origin,
               'run', case when n.step is not null then n.run_id end,
               'step', r.steps -> n.step ->> 'name', 'child', n.child))
    from inserted n
    left join task_runs r on r.task_id = n.run_id and n.step is not null
    order by n.id;
    return null;
end $$;

create or replace function pacer_task_state_events() returns trigger language plpgsql as $$
begin
    insert into events (kind, job_name, task_id, data)
    select 'task.state', n.job_name, n.id,
           jsonb_strip_nulls(jsonb_build_object(
               'state', n.state, 'previous', o.state, 'attempt', n.attempt,
               'origin', n.origin, 'message', n.message, 'failure_reason', n.failure_reason,
               'last_error', n.last_error,
               'run', case when n.step is not null then n.run_id end,
               'step', r.steps -> n.step ->> 'name', 'child', n.child))
    from changed n
    join previous o on o.id = n.id
    left join task_runs r on r.task_id = n.run_id and n.step is not null
    where o.state is distinct from n.state
    order by n.id;
    return null;
end $$;
