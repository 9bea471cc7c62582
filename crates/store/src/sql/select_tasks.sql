-- Tasks newest first, filtered; every filter is optional. One state comes as $2 (an equality the
-- (state, id) index serves in order), several as $11. $3 is the keyset cursor: the id of the
-- last task of the previous page (ids are UUIDv7, so id order is creation order, and a page
-- boundary stays put while new tasks arrive). The caller plans this statement per execution
-- (`plan_cache_mode = force_custom_plan`), so the filters given pick their index.
-- `overdue` is computed on the database clock. $12 is an outcome (`unchanged`), served by its
-- partial index. $13 is a run: its children (through the run index); without it the children of
-- runs are left out, so a run fanning out over 10,000 items lists as one task.
select id, job_name, state, origin, idempotency_key, payload, attempt, created_at, due_at,
       trigger_id, scheduled_at, waits_for, actor, retry_of, message_id, message_type,
       started_at, finished_at, next_dispatch_at, deadline_at, timeout_at, claimed_by,
       progress, message, result, last_error, failure_reason, updated_at, fingerprint, outcome,
       coalesce(deadline_at < coalesce(finished_at, now()), false) as "overdue!"
from tasks
where ($1::text is null or job_name = $1)
  and ($2::text is null or state = $2)
  and ($11::text[] is null or state = any($11))
  and ($3::uuid is null or id < $3)
  and ($5::text is null or origin = $5)
  and ($6::timestamptz is null or created_at >= $6)
  and ($7::timestamptz is null or created_at < $7)
  and ($8::timestamptz is null or finished_at >= $8)
  and ($9::timestamptz is null or finished_at < $9)
  and ($10::bool is null or coalesce(deadline_at < coalesce(finished_at, now()), false) = $10)
  and ($12::text is null or outcome = $12)
  and (case when $13::uuid is null then step is null else run_id = $13 and step is not null end)
order by id desc
limit $4
