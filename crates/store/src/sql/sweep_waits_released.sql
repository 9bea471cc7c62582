-- Starts the tasks queued under `buffer_one` whose task waited for is no longer open (or no
-- longer kept). One waiting for a concurrency slot too goes on waiting: for admission now.
--
-- The leader runs this every sweep. Each waiting task's task waited for is looked up by its key
-- (a scalar subquery): a `not exists` was planned, on an empty table, as a join of every open
-- task with every open task.
with released as (
    update tasks w set waits_for = null, updated_at = now(),
        next_dispatch_at = case when w.waiting then w.next_dispatch_at else now() end,
        due_at = case when w.waiting then least(w.due_at, now()) else w.due_at end
    where w.waits_for is not null and w.state in ('pending', 'processing')
      and not coalesce((select r.state in ('pending', 'processing') from tasks r
                        where r.id = w.waits_for), false)
    returning w.id
)
select count(*) as "count!" from released
