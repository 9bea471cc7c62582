-- Event subscriptions: receivers of the event log, each filtered by job (or job labels) and
-- event kind, each with its own position in the log (`event_cursors`, under
-- `subscription:<name>`) and its own delivery loop on the leader, so a slow or failing receiver
-- never delays another. The loop records how its deliveries go here.
create table subscriptions (
    name                 text primary key,
    spec                 jsonb not null,
    created_at           timestamptz not null default now(),
    updated_at           timestamptz not null default now(),
    -- The last batch the receiver accepted, and how many events it has accepted in all.
    delivered_at         timestamptz,
    delivered_events     bigint not null default 0,
    -- Attempts refused in a row since the last accepted one, and the last refusal.
    consecutive_failures integer not null default 0,
    last_error           text,
    last_error_at        timestamptz
);

-- The event filters by label read a job's labels by its name.
create index jobs_labels_idx on jobs using gin ((spec -> 'labels'));
