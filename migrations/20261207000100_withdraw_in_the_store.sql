-- Tasks fired ahead of their time are withdrawn by the store, through the task state machine, in
-- the same transaction as the pause, standby or trigger delete that withdraws them; no database
-- trigger writes task state.
drop trigger triggers_withdraw_on_pause on triggers;
drop trigger triggers_withdraw_on_delete on triggers;
drop trigger jobs_withdraw_on_pause on jobs;
drop trigger scheduler_withdraw_on_standby on scheduler_state;
drop function pacer_withdraw_fired_ahead();

-- Whether a dispatch of the task has gone out, or its node has committed to sending it. A task
-- claimed ahead of its time is not dispatched until its node sets this, shortly before the time,
-- under its claim; a withdrawal takes only tasks without it, so a withdrawn task was never sent
-- and its downstream gets no cancel notice for it. A task claimed when due is marked at its
-- claim. A cancelled task is noticed to its downstream only when this is set.
alter table tasks add column dispatched boolean not null default false;
update tasks set dispatched = true where attempt > 0 and (claimed_at is null or claimed_at <= now());
