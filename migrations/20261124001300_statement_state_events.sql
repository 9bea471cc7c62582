-- A task's state changes are written to the event log by one trigger call per statement rather
-- than one per changed row: the batched writes (dispatch outcomes, callbacks) change tens of tasks
-- in a statement, and a PL/pgSQL call with an insert of its own for each row cost about 6 µs per
-- changed task more than one insert for all of them. What is recorded is unchanged: one
-- `task.state` event per task whose state changed, in the transaction that changed it, in id
-- order within the statement. A transition table cannot be limited to some columns, so the
-- trigger runs after every update of tasks and keeps only the rows whose state differs.
drop trigger tasks_state_events on tasks;
drop function pacer_task_state_event();

create function pacer_task_state_events() returns trigger language plpgsql as $$
begin
    insert into events (kind, job_name, task_id, data)
    select 'task.state', n.job_name, n.id,
           jsonb_strip_nulls(jsonb_build_object(
               'state', n.state, 'previous', o.state, 'attempt', n.attempt,
               'origin', n.origin, 'message', n.message, 'failure_reason', n.failure_reason,
               'last_error', n.last_error))
    from changed n
    join previous o on o.id = n.id
    where o.state is distinct from n.state
    order by n.id;
    return null;
end $$;

create trigger tasks_state_events after update on tasks
    referencing old table as previous new table as changed
    for each statement execute function pacer_task_state_events();
