-- The W3C trace context a task was created under, so its dispatches and callbacks continue the
-- trace of the request that created it.
alter table tasks add column trace_context text;
