-- Alert changes join the event log, in the transaction that makes them, whichever code path
-- makes them (the leader's evaluation, an operator's ack or resolve): `alert.opened` when an alert
-- opens, `alert.repeated` when a repeat is counted into it, and `alert.acked` / `alert.resolved`
-- when its state changes.
create function pacer_alert_event() returns trigger language plpgsql as $$
begin
    insert into events (kind, job_name, task_id, data)
    values (
        'alert.' || case
            when tg_op = 'INSERT' then 'opened'
            when new.state is distinct from old.state then new.state
            else 'repeated'
        end,
        new.job_name, new.task_id,
        jsonb_strip_nulls(jsonb_build_object(
            'id', new.id, 'kind', new.kind, 'severity', new.severity, 'state', new.state,
            'count', new.count, 'summary', new.summary, 'node', new.node_id,
            'acked_by', new.acked_by, 'resolved_by', new.resolved_by)));
    return null;
end $$;

create trigger alerts_events after insert or update of state, count on alerts
    for each row execute function pacer_alert_event();
