-- Open tasks counted by state, for the `pacer_tasks_open` gauge. Under `GAUGE_PLANNING` (see
-- `lib.rs`) this walks the index of open tasks by due time, not the whole table.
select state as "state!", count(*) as "count!" from tasks
where next_dispatch_at is not null
group by state
