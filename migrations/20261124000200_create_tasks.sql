-- Tasks: one run of a job. `next_dispatch_at` is the single due time the dispatchers scan: the next
-- dispatch or re-poll, the retry after a backoff, the expiry of the current claim's lease, or the
-- hard timeout, whichever comes first. It is null once the task is terminal.
create table tasks (
    id                   uuid primary key,
    job_id               uuid references jobs (id) on delete set null,
    job_name             text not null,
    state                text not null default 'pending'
        check (state in ('pending', 'processing', 'completed', 'completed_with_errors', 'failed', 'cancelled')),
    origin               text not null check (origin in ('api', 'manual', 'trigger', 'message', 'retry')),
    idempotency_key      text,
    payload              jsonb not null,
    attempt              integer not null default 0,
    consecutive_failures integer not null default 0,
    created_at           timestamptz not null default now(),
    due_at               timestamptz not null,
    started_at           timestamptz,
    finished_at          timestamptz,
    next_dispatch_at     timestamptz,
    deadline_at          timestamptz,
    timeout_at           timestamptz not null,
    last_heartbeat_at    timestamptz,
    claim_token          uuid,
    claimed_by           text,
    claimed_at           timestamptz,
    progress             jsonb,
    message              text,
    result               jsonb,
    last_error           text,
    failure_reason       text check (failure_reason in ('attempts_exhausted', 'rejected', 'timed_out', 'reported')),
    updated_at           timestamptz not null default now(),
    constraint tasks_job_idempotency_key unique (job_id, idempotency_key),
    constraint tasks_open_have_a_due_time check ((state in ('pending', 'processing')) = (next_dispatch_at is not null)),
    constraint tasks_claim_is_whole check ((claim_token is null) = (claimed_by is null) and (claim_token is null) = (claimed_at is null))
);

-- The claim scans open tasks in due order.
create index tasks_due_idx on tasks (next_dispatch_at) where next_dispatch_at is not null;
-- Listing newest first, all tasks or one job's.
create index tasks_job_idx on tasks (job_id, id desc);
-- `last_success_at`: the start of the job's latest completed task.
create index tasks_job_success_idx on tasks (job_id, started_at desc) where state = 'completed';
