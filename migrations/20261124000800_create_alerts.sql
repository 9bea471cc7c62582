-- Alerts: open problems an operator must see. One open (or acknowledged) alert per kind and
-- subject, guaranteed by the partial unique index below: a repeat bumps `count` and
-- `last_seen_at` on the open row instead of opening another.
create table alerts (
    id            uuid primary key,
    kind          text not null check (kind in ('overdue', 'failed', 'missed', 'dispatch_errors', 'node_lost')),
    severity      text not null check (severity in ('info', 'warning', 'critical')),
    -- What the alert is about, as one key (`task:<id>`, `job:<name>`, `node:<id>`).
    subject_key   text not null,
    task_id       uuid,
    job_name      text,
    node_id       text,
    state         text not null default 'open' check (state in ('open', 'acked', 'resolved')),
    count         bigint not null default 1 check (count > 0),
    summary       text not null,
    opened_at     timestamptz not null default now(),
    last_seen_at  timestamptz not null default now(),
    -- When sinks were last notified; re-notification waits the configured interval after it.
    notified_at   timestamptz,
    acked_at      timestamptz,
    acked_by      text,
    ack_note      text,
    resolved_at   timestamptz,
    resolved_by   text,
    resolve_note  text,
    opened_term   bigint,
    constraint alerts_resolved_is_whole check ((state = 'resolved') = (resolved_at is not null)),
    constraint alerts_acked_is_whole check ((acked_at is null) = (acked_by is null))
);
create unique index alerts_open_subject_key on alerts (kind, subject_key) where state in ('open', 'acked');
create index alerts_listing_idx on alerts (id desc);
create index alerts_job_idx on alerts (job_name, id desc);

-- Notifications to sinks, queued so that a sink or a node being down loses nothing. Any node
-- claims due rows with `for update skip locked`; a claim moves `next_attempt_at` to the end of
-- its lease, so a delivery whose node vanished is due again by construction. The body is fixed
-- when the row is written, so every retry sends the same bytes.
create table alert_deliveries (
    id              uuid primary key,
    alert_id        uuid references alerts (id) on delete cascade,
    -- `alert.opened`, `alert.renotified`, or `task.completed` (a job's `on_success`).
    event           text not null,
    task_id         uuid,
    job_name        text,
    sink            text not null,
    sink_kind       text not null check (sink_kind in ('webhook', 'slack')),
    url             text not null,
    secret          text,
    body            jsonb not null,
    state           text not null default 'pending' check (state in ('pending', 'delivered', 'failed')),
    attempts        integer not null default 0,
    max_attempts    integer not null,
    created_at      timestamptz not null default now(),
    next_attempt_at timestamptz,
    claim_token     uuid,
    claimed_by      text,
    delivered_at    timestamptz,
    last_error      text,
    constraint alert_deliveries_pending_have_a_due_time check ((state = 'pending') = (next_attempt_at is not null))
);
create index alert_deliveries_due_idx on alert_deliveries (next_attempt_at) where next_attempt_at is not null;
create index alert_deliveries_alert_idx on alert_deliveries (alert_id, created_at);

-- Every attempt to deliver, with what the sink answered.
create table alert_delivery_attempts (
    delivery_id uuid not null references alert_deliveries (id) on delete cascade,
    number      integer not null,
    node        text not null,
    started_at  timestamptz not null,
    finished_at timestamptz not null default now(),
    http_status integer,
    error       text,
    latency_ms  bigint,
    primary key (delivery_id, number)
);

-- What the alert evaluation (a leader duty) has already looked at. Each marker is written in the
-- same fenced transaction as the alerts it led to, so after a failover the next leader carries
-- on exactly where the last one committed: nothing is missed, nothing is raised twice.
--
-- Overdue: an open task with a deadline that has not been noticed yet. The partial index holds
-- only those, so finding the ones past their deadline is one index range scan on the database
-- clock.
alter table tasks add column overdue_noticed_at timestamptz;
create index tasks_deadline_watch_idx on tasks (deadline_at)
    where deadline_at is not null and overdue_noticed_at is null and next_dispatch_at is not null;
-- Ended tasks whose outcome (failed, completed with errors, completed for `on_success`) has not
-- been evaluated. Rows that existed before alerting count as seen; open ones are watched. A task
-- that completes for a job without `on_success` is marked seen by the statement completing it,
-- so the happy path costs the leader nothing.
alter table tasks add column outcome_noticed boolean not null default true;
alter table tasks alter column outcome_noticed set default false;
update tasks set outcome_noticed = false where next_dispatch_at is not null;
create index tasks_outcome_watch_idx on tasks (finished_at)
    where not outcome_noticed and state in ('completed', 'completed_with_errors', 'failed');
-- Skipped occurrences and requests not yet counted into a `missed` alert.
alter table skipped_runs add column noticed boolean not null default true;
alter table skipped_runs alter column noticed set default false;
create index skipped_runs_watch_idx on skipped_runs (recorded_at) where not noticed;
-- Nodes: when the leader last raised `node_lost` for a node. A node that heartbeats after it is
-- alive again, and is lost again only by a newer silence. Nodes already long silent when alerting
-- arrives are history, not news.
alter table nodes add column lost_noticed_at timestamptz;
update nodes set lost_noticed_at = now()
where stopped_at is null and last_heartbeat_at < now() - interval '1 minute';

-- Consecutive transient dispatch errors per job: written with the dispatch outcome, reset by a
-- dispatch the downstream took. `noticed` is how many the alert evaluation has seen.
create table dispatch_streaks (
    job_id      uuid primary key references jobs (id) on delete cascade,
    errors      integer not null default 0,
    noticed     integer not null default 0,
    last_error  text,
    updated_at  timestamptz not null default now()
);
create index dispatch_streaks_watch_idx on dispatch_streaks (job_id) where errors > noticed;
