-- Concurrency limits: a job's `max_concurrency`, and concurrency groups whose limit the tasks of
-- every job in the group share.
create table concurrency_groups (
    name        text primary key,
    "limit"     integer not null check ("limit" between 1 and 10000),
    description text,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);

-- What SQL needs of a job's limits, kept in step with its definition.
alter table jobs
    add column limited boolean not null
        generated always as (spec ? 'max_concurrency' or spec ? 'concurrency_group') stored,
    -- A job names only a group that exists, and a group in use cannot be deleted.
    add column concurrency_group text
        generated always as (spec ->> 'concurrency_group') stored
        constraint jobs_concurrency_group_fkey references concurrency_groups (name);
create index jobs_concurrency_group_idx on jobs (concurrency_group) where concurrency_group is not null;

-- A task of a limited job is created `waiting`: not due before its timeout (so no claim sees it),
-- its own due time in `due_at`. The admission pass, under one cluster-wide advisory lock, gives
-- due waiting tasks a slot where their job and group have one free: `holds_slot`, and due now.
-- A task holds its slot while it is open; the state change that ends it frees it, in that
-- change's own transaction, because a slot is counted as an open task that holds one.
alter table tasks
    add column waiting    boolean not null default false,
    add column holds_slot boolean not null default false;
create index tasks_waiting_for_slot_idx on tasks (due_at) where waiting and state = 'pending';
create index tasks_waiting_by_job_idx on tasks (job_id, due_at, id) where waiting and state = 'pending';
create index tasks_slot_holders_idx on tasks (job_id)
    where holds_slot and state in ('pending', 'processing');

-- A slot holder's ending is an event of its group (`group.released`) and wakes the dispatchers,
-- whose admission pass hands the slot to the next waiting task. Only statements that end a slot
-- holder notify: the task cycle of unlimited jobs never does.
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
    if exists (select 1 from changed n join previous o on o.id = n.id
               where o.holds_slot and o.state in ('pending', 'processing')
                 and n.state not in ('pending', 'processing')) then
        insert into events (kind, job_name, task_id, data)
        select 'group.released', n.job_name, n.id,
               jsonb_build_object('group', j.concurrency_group, 'state', n.state)
        from changed n
        join previous o on o.id = n.id
        join jobs j on j.id = n.job_id
        where o.holds_slot and o.state in ('pending', 'processing')
          and n.state not in ('pending', 'processing')
          and j.concurrency_group is not null
        order by n.id;
        perform pg_notify('pacer_tasks_due', '');
    end if;
    return null;
end $$;
