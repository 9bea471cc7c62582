-- Retention for every table that grows: the leader prunes finished tasks (with their attempts,
-- events and a run's children), skips, resolved alerts (with their deliveries), ended alert
-- deliveries and the audit log in small batches. These indexes let every batch find its rows
-- without scanning what is kept.
--
-- The indexes are created in the migration, so not concurrently: on a large existing tasks
-- table the first start after the upgrade holds a SHARE lock on it (writes wait) while
-- they build. An operator who created them concurrently beforehand, with these names, keeps
-- them (`if not exists`).

-- A job's own retention (its `retention` field), in milliseconds; null is the configured one.
alter table jobs add column retention_ms bigint check (retention_ms > 0);

-- Finished tasks that are not a run's children (those go with their run), per job, oldest first.
-- Open tasks have a due time (tasks_open_have_a_due_time), so `next_dispatch_at is null` is
-- "finished".
create index if not exists tasks_prune_idx on tasks (job_id, finished_at)
    where next_dispatch_at is null and run_id is null;

-- Deleting a task sets `reuse_from` to null in the runs that reused it: without an index every
-- deleted task would scan task_runs.
create index if not exists task_runs_reuse_from_idx on task_runs (reuse_from) where reuse_from is not null;

-- Events without a task keep the event retention; the others go with their task.
create index if not exists events_untasked_idx on events (at) where task_id is null;

-- Messages were found by their ordinal, which scans every kept message when none is old enough.
create index if not exists messages_received_idx on messages (received_at);
create index if not exists skipped_runs_recorded_idx on skipped_runs (recorded_at);
create index if not exists alerts_resolved_idx on alerts (resolved_at) where state = 'resolved';
create index if not exists alert_deliveries_ended_idx on alert_deliveries (created_at) where state <> 'pending';
create index if not exists audit_log_at_idx on audit_log (at);
