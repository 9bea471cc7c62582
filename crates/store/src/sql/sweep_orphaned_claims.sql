-- Makes the claims of dead or stopped nodes due again at once (a claim taken ahead of its time,
-- at that time), so they are taken over without waiting for their leases. A node is dead when it
-- has not beaten its heartbeat for $1 ms.
--
-- The leader runs this every sweep. Nodes are never forgotten, so once any node has stopped there
-- is always one to look for; while none is dead, the `exists` (a one-time test) skips the look at
-- `tasks` altogether.
with dead as (
    select id from nodes
    where stopped_at is not null
       or last_heartbeat_at < now() - $1::bigint * interval '1 millisecond'
),
orphaned as (
    update tasks set next_dispatch_at = greatest(now(), claimed_at)
    where exists (select 1 from dead)
      and claim_token is not null and next_dispatch_at > now()
      and claimed_by in (select id from dead)
    returning id
)
select count(*) as "count!" from orphaned
