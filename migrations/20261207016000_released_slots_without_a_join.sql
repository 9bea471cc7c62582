-- The state-events trigger joined the statement's old and new rows (transition tables, which have
-- no index and no statistics). The plans kept were nested loops reading all of one for each row of
-- the other, so a statement changing n tasks cost n²: deleting a job with 6,300 open tasks spent
-- 12 s in the look for released concurrency slots, and on the connections that write batches
-- (hash joins off, see the store) each batch of 256 dispatch outcomes spent 7 to 20 ms finding
-- its tasks' previous states. Now the old states are gathered once into a jsonb object by task id,
-- which each new row looks its own up in (a binary search of the object's keys), and the tasks
-- that held a slot are gathered once, each ended task looked for among them. Everything else is
-- as in `20261207010000_task_notices`.
create or replace function pacer_task_state_events() returns trigger language plpgsql as $$
declare
    -- Each task's state before the statement, by id.
    was jsonb;
begin
    select jsonb_object_agg(o.id, o.state) into was from previous o;
    insert into events (kind, job_name, task_id, data)
    select 'task.state', n.job_name, n.id,
           jsonb_strip_nulls(jsonb_build_object(
               'state', n.state, 'previous', was ->> n.id::text, 'attempt', n.attempt,
               'origin', n.origin, 'message', n.message, 'failure_reason', n.failure_reason,
               'last_error', n.last_error, 'outcome', n.outcome,
               'run', case when n.step is not null then n.run_id end,
               'step', r.steps -> n.step ->> 'name', 'child', n.child))
    from changed n
    left join task_runs r on r.task_id = n.run_id and n.step is not null
    where (was ->> n.id::text) is distinct from n.state
    order by n.id;
    -- A look at the changed rows alone: the task cycle's statements change no task with
    -- `notify` in the common case, and pay for no join.
    if exists (select 1 from changed n where n.notify is not null) then
        insert into task_notices (task_id, event, state)
        select n.id, e.event, n.state
        from changed n
        cross join lateral (
            select 'finished' as event
            where n.notify -> 'events' ? 'finished'
              and n.state not in ('pending', 'processing')
            union all
            select 'state.' || n.state || '.' || n.attempt
            where n.notify -> 'events' ? 'state'
        ) e
        where n.notify is not null and (was ->> n.id::text) is distinct from n.state
        order by n.id
        on conflict (task_id, event) do nothing;
        if found then
            perform pg_notify('pacer_notices', '');
        end if;
    end if;
    -- The tasks that held a slot are gathered once into an array and each ended task is looked
    -- for in it: a join of the two transition tables, which have no statistics, was planned as
    -- a nested loop that read all of one for each row of the other (12 s for a statement that
    -- cancelled 6,300 tasks).
    if exists (select 1 from changed n
               where n.state not in ('pending', 'processing')
                 and n.id = any (array(select o.id from previous o
                                       where o.holds_slot
                                         and o.state in ('pending', 'processing')))) then
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
