-- How long ago the oldest finished task that pruning may take passed its retention (its job's
-- `retention_ms`, or $1 ms), in seconds; 0 when none waits. The same rules as prune_tasks.sql,
-- one index probe per job.
select coalesce(extract(epoch from max(lag)), 0)::float8 as "lag!"
from (
    select now() - coalesce(j.retention_ms, $1::bigint) * interval '1 millisecond' - c.finished_at
               as lag
    from jobs j
    cross join lateral (
        select (select l.id from tasks l
                where l.job_id = j.id and l.state = 'completed' and l.step is null
                  and l.started_at is not null
                order by l.started_at desc limit 1) as last_completed,
               (select coalesce(f.run_id, f.id) from job_fingerprints p
                join tasks f on f.id = p.task_id
                where p.job_id = j.id) as fingerprinted
    ) k
    cross join lateral (
        select t.finished_at from tasks t
        where t.job_id = j.id and t.next_dispatch_at is null and t.step is null
          and t.finished_at < now() - coalesce(j.retention_ms, $1::bigint) * interval '1 millisecond'
          and t.id is distinct from k.last_completed
          and t.id is distinct from k.fingerprinted
          and (t.outcome_noticed or t.state not in ('completed', 'completed_with_errors', 'failed'))
          and t.cancel_notice_at is null
          and not exists (select 1 from tasks w where w.waits_for = t.id)
        order by t.finished_at limit 1
    ) c
    union all
    (select now() - $1::bigint * interval '1 millisecond' - t.finished_at
     from tasks t
     where t.job_id is null and t.next_dispatch_at is null and t.step is null
       and t.finished_at < now() - $1::bigint * interval '1 millisecond'
       and (t.outcome_noticed or t.state not in ('completed', 'completed_with_errors', 'failed'))
       and t.cancel_notice_at is null
       and not exists (select 1 from tasks w where w.waits_for = t.id)
     order by t.job_id, t.finished_at limit 1)
) lags
