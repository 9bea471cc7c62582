-- Exclusion calendars: a named set of excluded periods (validated by the domain, stored as its
-- JSON spec) that triggers name in their spec's `calendars`.
create table calendars (
    name        text primary key,
    spec        jsonb not null,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);
create index triggers_calendars_idx on triggers using gin ((spec -> 'calendars'));

-- An occurrence a calendar excludes is a skip with reason `calendar`; `detail` names the
-- calendar (null for the other reasons).
alter table skipped_runs add column detail text;
alter table skipped_runs drop constraint skipped_runs_reason_check;
alter table skipped_runs add constraint skipped_runs_reason_check
    check (reason in ('misfire', 'coalesced', 'catch_up_limit', 'overlap', 'buffer_full', 'calendar'));

-- Tasks a backfill creates for past occurrences; they carry the trigger and scheduled time, so
-- they share the occurrence key with the tasks the trigger fires.
alter table tasks drop constraint tasks_origin_check;
alter table tasks add constraint tasks_origin_check
    check (origin in ('api', 'manual', 'trigger', 'message', 'retry', 'backfill'));

-- When a jittered occurrence's task fires: its scheduled time plus the trigger's jitter offset.
-- Null when it fires at its scheduled time (no jitter, and every task not made by a trigger).
alter table tasks add column fire_at timestamptz;
