-- E-mail sinks: a delivery may go to an SMTP server. Its `url` is `smtp://host:port`, its
-- `secret` names the configured SMTP password, and its body is the message fixed at queueing.
alter table alert_deliveries drop constraint alert_deliveries_sink_kind_check;
alter table alert_deliveries add constraint alert_deliveries_sink_kind_check
    check (sink_kind in ('webhook', 'slack', 'email'));
