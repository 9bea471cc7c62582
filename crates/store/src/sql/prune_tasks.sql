-- One batch of pruning: at most $2 finished top-level tasks past their retention (their job's
-- `retention_ms`, or $1 ms), oldest first job by job, then tasks whose job was deleted. They go
-- with their children (a run's), and all of them with their attempts and events, in this one
-- statement. Each job is probed through tasks_prune_top_idx (job_id, finished_at), so a batch reads
-- only rows it deletes, whatever the retentions of the other jobs.
--
-- Kept: open tasks (they have a due time), children (with their run), the job's last completed
-- run (the latest to start, as freshness counts it), the run whose fingerprint the job keeps,
-- tasks whose outcome alerting has not looked at yet or whose cancellation is still to be told
-- to the downstream, and tasks another task waits for (`buffer_one`: the sweep releases the
-- waiter when it sees the task finished, which it could not once the task was gone).
with doomed as (
    (select c.id
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
         select t.id from tasks t
         where t.job_id = j.id and t.next_dispatch_at is null and t.step is null
           and t.finished_at < now() - coalesce(j.retention_ms, $1::bigint) * interval '1 millisecond'
           and t.id is distinct from k.last_completed
           and t.id is distinct from k.fingerprinted
           and (t.outcome_noticed or t.state not in ('completed', 'completed_with_errors', 'failed'))
           and t.cancel_notice_at is null
           and not exists (select 1 from tasks w where w.waits_for = t.id)
         order by t.finished_at limit $2
     ) c)
    union all
    (select t.id from tasks t
     where t.job_id is null and t.next_dispatch_at is null and t.step is null
       and t.finished_at < now() - $1::bigint * interval '1 millisecond'
       and (t.outcome_noticed or t.state not in ('completed', 'completed_with_errors', 'failed'))
       and t.cancel_notice_at is null
       and not exists (select 1 from tasks w where w.waits_for = t.id)
     -- By job first: the order of tasks_prune_top_idx, so no sort (job_id is null throughout).
     order by t.job_id, t.finished_at limit $2)
    limit $2
),
family as (
    select id from doomed
    union all
    select c.id from tasks c where c.run_id in (select id from doomed) and c.step is not null
),
gone_events as (
    delete from events where task_id in (select id from family) returning 1
),
gone_attempts as (
    delete from task_attempts where task_id in (select id from family) returning 1
),
gone_tasks as (
    delete from tasks where id in (select id from family) returning 1
)
select (select count(*) from gone_tasks) as "tasks!",
       (select count(*) from gone_attempts) as "attempts!",
       (select count(*) from gone_events) as "events!",
       (select count(*) from doomed) as "roots!"
