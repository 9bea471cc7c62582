-- The tasks' unique keys cover only the rows that have one. Most tasks have no idempotency key,
-- and only trigger-fired tasks have an occurrence; as full constraints, both indexes took an
-- entry (of nulls) for every task on its insert and again on each of its updates, since a task's
-- updates always change an indexed column and so can never be heap-only.
alter table tasks drop constraint tasks_job_idempotency_key;
create unique index tasks_job_idempotency_key on tasks (job_id, idempotency_key)
    where idempotency_key is not null;
alter table tasks drop constraint tasks_occurrence_key;
create unique index tasks_occurrence_key on tasks (trigger_id, scheduled_at)
    where trigger_id is not null;
