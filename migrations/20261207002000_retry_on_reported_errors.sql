-- Retrying the failures a downstream reports with an error code the job's retry policy names.
-- An attempt keeps the code its downstream reported. A task counts the reported failures it
-- retried (they count against `max_attempts` and, unlike transient dispatch errors, are not reset
-- by an accepted dispatch), and remembers the attempt the last one was reported for, so a
-- repeated callback for that attempt changes nothing.
alter table task_attempts add column error_code text;

alter table tasks
    add column reported_failures integer not null default 0,
    add column reported_attempt integer;
