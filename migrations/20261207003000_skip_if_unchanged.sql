-- Skip if unchanged. A downstream of a job (or step) with `skip_if_unchanged` reports a
-- fingerprint of its input; the fingerprint of the job's last completed run is kept here and sent
-- with the next dispatch as `last_fingerprint`. It moves only when a run completes (`completed`,
-- as `last_success_at` does), and an operator may clear it to force the next run through. One row
-- per job that ever completed a run with a fingerprint; never pruned.
create table job_fingerprints (
    job_id      uuid primary key references jobs (id) on delete cascade,
    fingerprint text not null,
    -- The task (or run) whose completion stored it.
    task_id     uuid,
    updated_at  timestamptz not null default now()
);

-- `fingerprint`: what the downstream reported about its input (a run: its skip step's child's,
-- once the run completed). `outcome`: how a completed task ended, beyond its state; `unchanged`
-- when its input equalled the last completed run's.
alter table tasks
    add column fingerprint text,
    add column outcome     text check (outcome in ('unchanged')),
    add constraint tasks_outcome_is_completed check (outcome is null or state = 'completed');

-- `GET /api/v1/tasks?outcome=unchanged` and the job summary's last unchanged run, newest first.
create index tasks_outcome_idx on tasks (outcome, id desc) where outcome is not null;
create index tasks_job_outcome_idx on tasks (job_id, outcome, finished_at desc) where outcome is not null;

-- A task's state change carries its outcome, so the event stream tells an unchanged run from one
-- that did work.
create or replace function pacer_task_state_events() returns trigger language plpgsql as $$
begin
    insert into events (kind, job_name, task_id, data)
    select 'task.state', n.job_name, n.id,
           jsonb_strip_nulls(jsonb_build_object(
               'state', n.state, 'previous', o.state, 'attempt', n.attempt,
               'origin', n.origin, 'message', n.message, 'failure_reason', n.failure_reason,
               'last_error', n.last_error, 'outcome', n.outcome,
               'run', case when n.step is not null then n.run_id end,
               'step', r.steps -> n.step ->> 'name', 'child', n.child))
    from changed n
    join previous o on o.id = n.id
    left join task_runs r on r.task_id = n.run_id and n.step is not null
    where o.state is distinct from n.state
    order by n.id;
    return null;
end $$;
