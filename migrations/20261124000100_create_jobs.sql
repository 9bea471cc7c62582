-- Jobs: named definitions of work. The validated definition lives in `spec`; the columns beside it
-- are the parts SQL itself needs.
create table jobs (
    id                  uuid primary key,
    name                text not null,
    version             integer not null default 1,
    spec                jsonb not null,
    dispatch_timeout_ms bigint not null check (dispatch_timeout_ms > 0),
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    constraint jobs_name_key unique (name)
);
