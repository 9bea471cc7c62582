-- The event log: an ordered, durable record of what happened — task state changes, callbacks,
-- leader changes, and whatever else a module appends (kind + job + task + JSON data). The
-- operator API reads a task's history from it, and the live event stream and the event webhook
-- read it in order.
--
-- `id` orders events within one task (its writers hold the task's row lock), but sequence values
-- are taken before commit, so across transactions a smaller id can become visible after a larger
-- one. `tx` (the writing transaction's id) closes that gap: readers deliver only events of
-- transactions older than every transaction still running, in (tx, id) order, so a reader that
-- resumes after (tx, id) never skips an event that committed late.
create table events (
    id       bigserial primary key,
    tx       bigint not null default (pg_current_xact_id()::text::bigint),
    at       timestamptz not null default now(),
    kind     text not null,
    job_name text,
    task_id  uuid,
    data     jsonb not null default '{}'
);
create index events_order_idx on events (tx, id);
create index events_task_idx on events (task_id, id) where task_id is not null;
-- Retention prunes by age; the log is appended in time order, so a BRIN index is enough.
create index events_at_idx on events using brin (at);

-- Every state change of a task is recorded in the transaction that makes it, whichever code path
-- makes it (API, dispatcher, sweeper, firing). No NOTIFY: a notifying commit takes a cluster-wide
-- lock, and the task cycle's commits must not queue on it; readers poll the log's tail instead,
-- an index range scan that finds nothing when nothing happened.
create function pacer_task_created_events() returns trigger language plpgsql as $$
begin
    insert into events (kind, job_name, task_id, data)
    select 'task.state', n.job_name, n.id,
           jsonb_build_object('state', n.state, 'attempt', n.attempt, 'origin', n.origin)
    from inserted n
    order by n.id;
    return null;
end $$;

create function pacer_task_state_event() returns trigger language plpgsql as $$
begin
    insert into events (kind, job_name, task_id, data)
    values ('task.state', new.job_name, new.id,
            jsonb_strip_nulls(jsonb_build_object(
                'state', new.state, 'previous', old.state, 'attempt', new.attempt,
                'origin', new.origin, 'message', new.message, 'failure_reason', new.failure_reason,
                'last_error', new.last_error)));
    return null;
end $$;

create trigger tasks_created_events after insert on tasks
    referencing new table as inserted
    for each statement execute function pacer_task_created_events();
create trigger tasks_state_events after update of state on tasks
    for each row when (old.state is distinct from new.state)
    execute function pacer_task_state_event();

-- Where each consumer of the event log has got to (the event webhook resumes from here).
create table event_cursors (
    name       text primary key,
    tx         bigint not null,
    last_id    bigint not null,
    updated_at timestamptz not null default now()
);

-- Operator actions on tasks: who ran a task now, which task a retry retries, and a cancelled
-- task whose downstream is still to be told (best effort, by any node's cancel notifier).
alter table tasks
    add column actor            text,
    add column retry_of         uuid references tasks (id) on delete set null,
    add column cancel_notice_at timestamptz;
create index tasks_retry_of_idx on tasks (retry_of) where retry_of is not null;
create index tasks_cancel_notice_idx on tasks (cancel_notice_at) where cancel_notice_at is not null;

-- Listing: newest first, by job name (what the API filters on) and by state.
create index tasks_job_name_idx on tasks (job_name, id desc);
create index tasks_state_idx on tasks (state, id desc);
