-- The leader fires the occurrences of jobs that allow overlap up to `cluster.fire_ahead` before
-- their time: such a task exists, due at its scheduled time, before that time comes. Pausing its
-- trigger, its job or the whole scheduler, or deleting its trigger, withdraws it: the task is
-- cancelled in the same transaction, whatever made the change. A node that claimed it ahead
-- checks its claim shortly before the time and does not dispatch it. Once the scheduled time has
-- come, the task stands, like any task already created.
create function pacer_withdraw_fired_ahead() returns trigger language plpgsql as $$
declare
    why text;
begin
    if tg_table_name = 'triggers' then
        why := case when tg_op = 'DELETE' then 'its trigger was deleted' else 'its trigger was paused' end;
        update tasks set state = 'cancelled', finished_at = now(), next_dispatch_at = null,
            claim_token = null, claimed_by = null, claimed_at = null,
            message = 'cancelled: ' || why || ' before its scheduled time', updated_at = now(),
            cancel_notice_at = case when attempt > 0 then now() end
        where trigger_id = old.id and scheduled_at > now() and state = 'pending';
    elsif tg_table_name = 'jobs' then
        update tasks set state = 'cancelled', finished_at = now(), next_dispatch_at = null,
            claim_token = null, claimed_by = null, claimed_at = null,
            message = 'cancelled: its job was paused before its scheduled time', updated_at = now(),
            cancel_notice_at = case when attempt > 0 then now() end
        where job_id = old.id and trigger_id is not null and scheduled_at > now()
          and state = 'pending';
    else
        update tasks set state = 'cancelled', finished_at = now(), next_dispatch_at = null,
            claim_token = null, claimed_by = null, claimed_at = null,
            message = 'cancelled: the scheduler entered standby before its scheduled time',
            updated_at = now(),
            cancel_notice_at = case when attempt > 0 then now() end
        where trigger_id is not null and scheduled_at > now() and state = 'pending';
    end if;
    -- A claimed task may have been sent a moment ago by a node whose check came first.
    if found then
        perform pg_notify('pacer_cancels', '');
    end if;
    -- Lets the delete go ahead; an after trigger's result is ignored.
    return old;
end $$;

create trigger triggers_withdraw_on_pause after update of paused on triggers
    for each row when (new.paused and not old.paused)
    execute function pacer_withdraw_fired_ahead();
create trigger triggers_withdraw_on_delete before delete on triggers
    for each row execute function pacer_withdraw_fired_ahead();
create trigger jobs_withdraw_on_pause after update of paused on jobs
    for each row when (new.paused and not old.paused)
    execute function pacer_withdraw_fired_ahead();
create trigger scheduler_withdraw_on_standby after update of paused on scheduler_state
    for each row when (new.paused and not old.paused)
    execute function pacer_withdraw_fired_ahead();
