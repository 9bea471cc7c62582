-- Nodes heartbeat here on the database clock. A node whose heartbeat is older than the dead
-- threshold, or that stopped cleanly, holds nothing: its claims are swept.
create table nodes (
    id                text primary key,
    address           text not null,
    version           text not null,
    started_at        timestamptz not null default now(),
    last_heartbeat_at timestamptz not null default now(),
    stopped_at        timestamptz
);

-- The leader lease: one row. A node leads while it holds an unexpired lease; `term` grows by one
-- at every new tenure, and every leader-only write checks the term it holds.
create table leader_lease (
    id          boolean primary key default true check (id),
    holder      text,
    term        bigint not null default 0,
    acquired_at timestamptz,
    expires_at  timestamptz not null default 'epoch'
);
insert into leader_lease (id) values (true);

-- Standby: while paused, no trigger fires; tasks already created carry on.
create table scheduler_state (
    id         boolean primary key default true check (id),
    paused     boolean not null default false,
    updated_at timestamptz not null default now()
);
insert into scheduler_state (id) values (true);

alter table jobs add column paused boolean not null default false;

-- Triggers: when a job fires. `next_fire_at` is null once the trigger will never fire again.
create table triggers (
    id            uuid primary key,
    job_id        uuid not null references jobs (id) on delete cascade,
    spec          jsonb not null,
    paused        boolean not null default false,
    next_fire_at  timestamptz,
    last_fired_at timestamptz,
    skip_count    bigint not null default 0,
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now()
);
create index triggers_due_idx on triggers (next_fire_at) where next_fire_at is not null and not paused;
create index triggers_job_idx on triggers (job_id);

-- An occurrence (trigger, scheduled time) becomes at most one task: the unique key is the last
-- line of defence against double firing, whatever happens to leadership. `fired_term` is the
-- leader term that created it. `waits_for` holds a task queued under the `buffer_one` overlap
-- policy until the task it waits for finishes.
alter table tasks
    add column trigger_id   uuid references triggers (id) on delete set null,
    add column scheduled_at timestamptz,
    add column fired_term   bigint,
    add column waits_for    uuid references tasks (id) on delete set null,
    add constraint tasks_occurrence_key unique (trigger_id, scheduled_at);
create index tasks_waiting_idx on tasks (waits_for) where waits_for is not null;

-- Occurrences and requests that got no task, with why. With a task row, this is the other half of
-- "exactly one outcome per occurrence": the same unique key.
create table skipped_runs (
    id           uuid primary key,
    job_id       uuid references jobs (id) on delete set null,
    job_name     text not null,
    trigger_id   uuid references triggers (id) on delete set null,
    scheduled_at timestamptz,
    reason       text not null check (reason in ('misfire', 'coalesced', 'catch_up_limit', 'overlap', 'buffer_full')),
    fired_term   bigint,
    recorded_at  timestamptz not null default now(),
    constraint skipped_runs_occurrence_key unique (trigger_id, scheduled_at)
);
create index skipped_runs_job_idx on skipped_runs (job_name, id desc);
