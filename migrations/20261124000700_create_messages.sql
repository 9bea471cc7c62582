-- Upstream messages: every message received (over REST or RabbitMQ) once, keyed by its
-- deduplication key: the upstream's id, or a digest of type, key and payload. A message that
-- arrives again finds its row and creates nothing. `routed` is false when no job subscribed to
-- the type; `outcome` lists, per subscribing job, the task created or why none was.
create table messages (
    id          text primary key,
    ordinal     bigint generated always as identity,
    type        text not null,
    key         text,
    payload     jsonb not null,
    source      text not null check (source in ('api', 'amqp')),
    routed      boolean not null,
    outcome     jsonb not null default '[]',
    received_at timestamptz not null default now(),
    constraint messages_ordinal_key unique (ordinal)
);
-- Operators list the unrouted ones, newest first.
create index messages_unrouted_idx on messages (ordinal desc) where not routed;

-- The message that created a task (origin `message`).
alter table tasks
    add column message_id   text references messages (id) on delete set null,
    add column message_type text;

-- Routing a message finds the jobs subscribed to its type (`spec.on_messages ? type`).
create index jobs_on_messages_idx on jobs using gin ((spec -> 'on_messages'));
