-- How long until a claim has work, in seconds (negative or zero: now): until the earliest open
-- task is due, a task waiting for a concurrency slot is due, or a task that can be claimed ahead
-- (never dispatched, unclaimed, waiting for no other) is within $1 ms of its time. Null when no
-- task is open.
--
-- A dispatcher runs this after every claim that found less than it asked for, so its connection
-- keeps one generic plan, possibly made while `tasks` was empty and before any statistics. Each
-- part is written so that even that plan walks an index in order and stops at its first row:
-- the earliest time is compared as a scalar (a join with it plans as a scan of the whole table),
-- and the waiting task is found by `order by … limit 1` on the index of due waiting tasks.
with first as (
    select min(next_dispatch_at) as at from tasks where next_dispatch_at is not null
)
select extract(epoch from least(
    (select at from first),
    (select due_at from tasks
     where waiting and state = 'pending' and due_at > now()
     order by due_at limit 1),
    -- Only a task due within $1 of the earliest can change the answer, so the look for one
    -- claimable ahead stops there instead of passing every claimed task.
    (select t.next_dispatch_at - $1::bigint * interval '1 millisecond'
     from tasks t
     where t.next_dispatch_at >= (select at from first)
       and t.next_dispatch_at < (select at from first) + $1::bigint * interval '1 millisecond'
       and t.attempt = 0 and t.claim_token is null and t.waits_for is null
     order by t.next_dispatch_at limit 1)
) - now())::float8 as seconds
