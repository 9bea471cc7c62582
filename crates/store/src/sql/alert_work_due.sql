-- True when the alert evaluation has something to look at (see `alert_work_due`). Reads only.
--
-- The leader runs this every evaluation interval, on a connection that keeps one generic plan,
-- possibly made while `tasks` was empty and without statistics; each look at `tasks` is written
-- so that even that plan walks an index of the few rows it asks about: overdue tasks through
-- their partial index, ended tasks not yet evaluated through theirs in order (a scalar
-- subquery: an `exists` would drop the order and read the whole table when nothing is due), and
-- an overdue alert's task by its key.
select (
    exists (select 1 from tasks where deadline_at <= now() and deadline_at is not null
            and overdue_noticed_at is null and next_dispatch_at is not null)
 or coalesce((select true from tasks where not outcome_noticed
            and state in ('completed', 'completed_with_errors', 'failed')
            order by finished_at limit 1), false)
 or exists (select 1 from skipped_runs where not noticed)
 or exists (select 1 from dispatch_streaks where errors > noticed and errors >= $1)
 or exists (select 1 from nodes where stopped_at is null
            and last_heartbeat_at < now() - $2::bigint * interval '1 millisecond'
            and (lost_noticed_at is null or lost_noticed_at < last_heartbeat_at))
 or exists (select 1 from jobs j where j.freshness_ms is not null
    and coalesce((select max(s.started_at) from tasks s
                  where s.job_id = j.id and s.state = 'completed' and s.step is null),
                 j.fresh_since, j.created_at)
        + j.freshness_ms * interval '1 millisecond' <= now()
            and not exists (select 1 from alerts a where a.kind = 'stale'
                            and a.job_name = j.name and a.state in ('open', 'acked')))
 or exists (select 1 from alerts a where a.state in ('open', 'acked')
            and a.kind in ('overdue', 'dispatch_errors', 'node_lost', 'stale') and (
            (a.kind = 'overdue' and coalesce((select t.next_dispatch_at is null from tasks t where t.id = a.task_id), false))
         or (a.kind = 'dispatch_errors' and not exists (select 1 from dispatch_streaks s join jobs j on j.id = s.job_id
                                                        where j.name = a.job_name and s.errors > 0))
         or (a.kind = 'node_lost' and exists (select 1 from nodes n where n.id = a.node_id
                and (n.stopped_at is not null or n.last_heartbeat_at > a.opened_at)))
         or (a.kind = 'stale' and not exists (select 1 from jobs j where j.name = a.job_name
                and j.freshness_ms is not null
    and coalesce((select max(s.started_at) from tasks s
                  where s.job_id = j.id and s.state = 'completed' and s.step is null),
                 j.fresh_since, j.created_at)
        + j.freshness_ms * interval '1 millisecond' <= now()))))
) as "due!"
