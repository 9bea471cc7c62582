-- Attempts: one row per dispatch of a task, written when its outcome is known (or, for a dispatch
-- whose node vanished, when another node reclaims the task).
create table task_attempts (
    task_id     uuid not null references tasks (id) on delete cascade,
    number      integer not null,
    node        text not null,
    started_at  timestamptz not null,
    finished_at timestamptz not null default now(),
    outcome     text not null check (outcome in ('accepted', 'already_running', 'transient_error', 'permanent_error', 'timed_out', 'abandoned', 'interrupted')),
    http_status integer,
    error       text,
    latency_ms  bigint,
    primary key (task_id, number)
);
