-- Who changed what: every admin and operator action that changes something.
create table audit_log (
    id         uuid primary key,
    at         timestamptz not null default now(),
    actor      text not null,
    issuer     text not null,
    action     text not null,
    target     text not null,
    request_id text,
    before     jsonb,
    after      jsonb
);
create index audit_log_actor_idx on audit_log (actor, id desc);
