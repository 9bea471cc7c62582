-- Data freshness: a job with `freshness` raises a `stale` alert when its last completed run
-- started longer ago than that. `freshness_ms` is the definition's value, kept beside it (as
-- `dispatch_timeout_ms` is) so the leader's evaluation can compare times in SQL;
-- `fresh_since` is when the job began watching its freshness, which counts as its last success
-- until a run completes (a job that never completed is stale `freshness` after that).
alter table jobs
    add column freshness_ms bigint,
    add column fresh_since timestamptz;

alter table alerts drop constraint alerts_kind_check;
alter table alerts add constraint alerts_kind_check
    check (kind in ('overdue', 'failed', 'missed', 'dispatch_errors', 'node_lost', 'stale'));
