-- Finished tasks $3 … $4 − 1 of $5 for the job ($1, $2), each with one attempt and its three
-- state events (created, processing, completed), finishing evenly from $7 seconds before $6 up
-- to $6, oldest first, with time-ordered (version 7) ids as the nodes make them.
with numbered as (
    select i,
           $6::timestamptz - ($7::float8 * (1 - i::float8 / $5)) * interval '1 second' as at,
           md5(i::text || $2) as h
    from generate_series($3::bigint, $4::bigint - 1) i
),
created as (
    insert into tasks (id, job_id, job_name, state, origin, payload, attempt, created_at, due_at,
                       started_at, finished_at, timeout_at, updated_at, outcome_noticed,
                       dispatched, result, message)
    select (lpad(to_hex((extract(epoch from at) * 1000)::bigint), 12, '0')
            || '7' || substr(h, 1, 3) || '8' || substr(h, 4, 15))::uuid,
           $1, $2, 'completed', 'api', jsonb_build_object('item', i), 1,
           at - interval '40 ms', at - interval '40 ms', at - interval '30 ms', at,
           at + interval '1 hour', at, true, true, '{"synced": 1}', 'done'
    from numbered
    returning id, created_at, started_at, finished_at
),
attempts as (
    insert into task_attempts (task_id, number, node, started_at, finished_at, outcome,
                               http_status, latency_ms)
    select id, 1, 'node-1', started_at, started_at + interval '5 ms', 'accepted', 202, 5
    from created
)
insert into events (at, kind, job_name, task_id, data)
select e.at, 'task.state', $2, c.id, e.data
from created c
cross join lateral (values
    (c.created_at, '{"state": "pending", "attempt": 0, "origin": "api"}'::jsonb),
    (c.started_at, '{"state": "processing", "previous": "pending", "attempt": 1, "origin": "api"}'),
    (c.finished_at, '{"state": "completed", "previous": "processing", "attempt": 1, "origin": "api", "message": "done"}')
) e(at, data)
order by c.created_at, e.at
