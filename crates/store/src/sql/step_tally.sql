-- What `decide` needs of step $2 of run $1, read through the index on (run, step, state, held) so
-- an ending costs what the step's open children cost, not what all its children do: pending,
-- processing and held items, and failed and cancelled ones, are counted only up to $3 (a
-- `for_each` step's `max_parallel`: no more held items are ever released at once, and a failure
-- needs only to be seen). Completed children are not counted.
--
-- Every ending of a run's child runs this on a connection that keeps one generic plan, possibly
-- made while `tasks` was empty; there the index of (run, step, child) looks as good as any for
-- the pending count, and walking it reads every child of the step. Ordering by the columns of
-- (run, step, state, held) makes that index the only one that needs no sort, whatever the
-- statistics say.
select
  (select count(*) from (select 1 from tasks where run_id = $1 and step = $2
                         and state = 'pending' and not held
                         order by run_id, step, state, held limit $3) x) as "pending!",
  (select count(*) from (select 1 from tasks where run_id = $1 and step = $2
                         and state = 'processing' limit $3) x) as "processing!",
  (select count(*) from (select 1 from tasks where run_id = $1 and step = $2
                         and state = 'pending' and held limit $3) x) as "held!",
  (select count(*) from (select 1 from tasks where run_id = $1 and step = $2
                         and state = 'failed' limit $3) x) as "failed!",
  (select count(*) from (select 1 from tasks where run_id = $1 and step = $2
                         and state = 'cancelled' limit $3) x) as "cancelled!",
  -- Only a `skip_if_unchanged` step looks (a single child's): on another step the probe would
  -- walk its completed children for nothing.
  case when $4 then (select count(*) from (
      select 1 from tasks where run_id = $1 and step = $2
      and state = 'completed' and outcome = 'unchanged'
      order by run_id, step, state, held limit 1) x)
  else 0 end as "unchanged!",
  exists (select 1 from tasks where run_id = $1 and step = $2
          and state = 'completed_with_errors') as "with_errors!"
