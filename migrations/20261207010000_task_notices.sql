-- Completion notices: a task created with `notify` ({url, events, auth}) is told about at its
-- URL when it ends (`finished`), or at every state change (`state`). The notice to send is a row
-- of `task_notices`, written by the trigger that records the state change, in its transaction,
-- whatever path made the change; its key (task, event) makes a repeated change or callback write
-- no second notice. Any node's notifier claims due notices (`for update skip locked`), POSTs
-- them, and records each attempt here.
alter table tasks add column notify jsonb;

create table task_notices (
    task_id         uuid not null references tasks (id) on delete cascade,
    -- `finished`, or for `state` notices `state.<state>.<attempt>`.
    event           text not null,
    state           text not null,
    created_at      timestamptz not null default now(),
    attempts        integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    claimed_by      text,
    delivered_at    timestamptz,
    last_error      text,
    -- Given up on after the notifier's last attempt.
    failed          boolean not null default false,
    primary key (task_id, event)
);
create index task_notices_due_idx on task_notices (next_attempt_at)
    where delivered_at is null and not failed;

-- The latest definition (20261207004000_concurrency_limits.sql) with the notices added: only a
-- statement that changes a task with `notify` writes any, and wakes the notifiers at commit.
create or replace function pacer_task_state_events() returns trigger language plpgsql as $$
begin
    insert into events (kind, job_name, task_id, data)
    select 'task.state', n.job_name, n.id,
           jsonb_strip_nulls(jsonb_build_object(
               'state', n.state, 'previous', o.state, 'attempt', n.attempt,
               'origin', n.origin, 'message', n.message, 'failure_reason', n.failure_reason,
               'last_error', n.last_error, 'outcome', n.outcome,
               'run', case when n.step is not null then n.run_id end,
               'step', r.steps -> n.step ->> 'name', 'child', n.child))
    from changed n
    join previous o on o.id = n.id
    left join task_runs r on r.task_id = n.run_id and n.step is not null
    where o.state is distinct from n.state
    order by n.id;
    -- A look at the changed rows alone: the task cycle's statements change no task with
    -- `notify` in the common case, and pay for no join.
    if exists (select 1 from changed n where n.notify is not null) then
        insert into task_notices (task_id, event, state)
        select n.id, e.event, n.state
        from changed n
        join previous o on o.id = n.id
        cross join lateral (
            select 'finished' as event
            where n.notify -> 'events' ? 'finished'
              and n.state not in ('pending', 'processing')
            union all
            select 'state.' || n.state || '.' || n.attempt
            where n.notify -> 'events' ? 'state'
        ) e
        where n.notify is not null and o.state is distinct from n.state
        order by n.id
        on conflict (task_id, event) do nothing;
        if found then
            perform pg_notify('pacer_notices', '');
        end if;
    end if;
    if exists (select 1 from changed n join previous o on o.id = n.id
               where o.holds_slot and o.state in ('pending', 'processing')
                 and n.state not in ('pending', 'processing')) then
        insert into events (kind, job_name, task_id, data)
        select 'group.released', n.job_name, n.id,
               jsonb_build_object('group', g.name, 'state', n.state)
        from changed n
        join previous o on o.id = n.id
        join jobs j on j.id = n.job_id
        left join task_runs r on r.task_id = n.run_id and n.step is not null
        cross join lateral (
            select case when n.step is null then j.concurrency_group
                        else r.steps -> n.step ->> 'concurrency_group' end as name
        ) g
        where o.holds_slot and o.state in ('pending', 'processing')
          and n.state not in ('pending', 'processing')
          and g.name is not null
        order by n.id;
        perform pg_notify('pacer_tasks_due', '');
    end if;
    return null;
end $$;
