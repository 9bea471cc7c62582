//! The event log: task state changes (recorded by a trigger on `tasks`, whatever path made them),
//! callbacks, leader changes, and anything another module appends in its own transaction. Read in
//! commit-safe order by the live event stream, the event webhook, and a task's history.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use pacer_domain::TaskId;
use pacer_domain::wire::EventView;
use serde_json::Value;
use uuid::Uuid;

use crate::{Result, Store};

/// One recorded event.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: i64,
    /// The id of the transaction that wrote it; with `id`, its place in the delivery order.
    pub tx: i64,
    pub at: DateTime<Utc>,
    /// What happened: `task.state`, `task.callback`, `leader.changed`, `leader.resigned`, …
    pub kind: String,
    pub job_name: Option<String>,
    pub task_id: Option<TaskId>,
    pub data: Value,
}

impl From<Event> for EventView {
    fn from(e: Event) -> Self {
        Self {
            id: e.cursor().to_string(),
            at: e.at,
            kind: e.kind,
            job: e.job_name,
            task: e.task_id,
            data: e.data,
        }
    }
}

impl Event {
    /// Where a reader that has seen this event resumes.
    pub fn cursor(&self) -> EventCursor {
        EventCursor {
            tx: self.tx,
            id: self.id,
        }
    }
}

/// A position in the event log, in delivery order. Written as `<tx>-<id>`; opaque to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventCursor {
    pub tx: i64,
    pub id: i64,
}

impl EventCursor {
    /// Before every event still in the log.
    pub const START: EventCursor = EventCursor { tx: 0, id: 0 };
}

impl fmt::Display for EventCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.tx, self.id)
    }
}

/// Why an event cursor was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not an event id returned by this API")]
pub struct InvalidEventCursor;

impl FromStr for EventCursor {
    type Err = InvalidEventCursor;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tx, id) = s.trim().split_once('-').ok_or(InvalidEventCursor)?;
        let tx: i64 = tx.parse().map_err(|_| InvalidEventCursor)?;
        let id: i64 = id.parse().map_err(|_| InvalidEventCursor)?;
        if tx < 0 || id < 0 {
            return Err(InvalidEventCursor);
        }
        Ok(Self { tx, id })
    }
}

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub kind: &'a str,
    pub job_name: Option<&'a str>,
    pub task_id: Option<TaskId>,
    pub data: Value,
}

/// Which events to read.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only these jobs' events; all when empty.
    pub jobs: Vec<String>,
    /// Only the events of jobs carrying all these labels; all when empty.
    pub labels: BTreeMap<String, String>,
    /// Only these kinds; all when empty.
    pub kinds: Vec<String>,
}

impl EventFilter {
    /// Events of these jobs.
    pub fn job(job: impl Into<String>) -> Self {
        Self {
            jobs: vec![job.into()],
            ..Self::default()
        }
    }
}

/// A batch of events in delivery order.
#[derive(Debug, Clone)]
pub struct EventBatch {
    pub events: Vec<Event>,
    /// Where to resume: after the last event read, or after everything passed over by the filter.
    pub next: EventCursor,
    /// Some committed events are held back until older transactions finish: read again soon.
    pub held_back: bool,
}

/// Appends an event inside the caller's transaction (or on its own). Readers find it by polling
/// the log's tail; nothing is notified, so an append adds no contention to the caller's commit.
pub async fn append_event(conn: &mut sqlx::PgConnection, event: &NewEvent<'_>) -> Result<()> {
    sqlx::query!(
        "insert into events (kind, job_name, task_id, data) values ($1, $2, $3, $4)",
        event.kind,
        event.job_name,
        event.task_id.map(|id| id.as_uuid()),
        &event.data,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The first transaction id whose events may not all be visible yet: the oldest transaction of
/// this database still running, or the next id to be assigned. Only transactions connected to
/// this database can write its event log, so those of other databases on the server (which the
/// snapshot's own `xmin` would count) hold nothing back. A running transaction's 32-bit id is
/// widened to 64 bits by its signed distance from the snapshot's `xmax` (one past the newest
/// finished transaction): it may be behind `xmax` or, when it started after the newest commit,
/// at or ahead of it, and either way within 2^31.
async fn read_horizon(conn: &mut sqlx::PgConnection) -> Result<i64> {
    Ok(sqlx::query_scalar!(
        r#"with s as (select pg_snapshot_xmax(pg_current_snapshot())::text::bigint as xmax)
           select least(
               s.xmax,
               (select min(s.xmax - ((((s.xmax % 4294967296) - a.backend_xid::text::bigint + 2147483648)
                                      % 4294967296 + 4294967296) % 4294967296 - 2147483648))
                from pg_stat_activity a
                where a.datname = current_database() and a.backend_xid is not null)
           ) as "horizon!"
           from s"#
    )
    .fetch_one(conn)
    .await?)
}

struct EventRow {
    id: i64,
    tx: i64,
    at: DateTime<Utc>,
    kind: String,
    job_name: Option<String>,
    task_id: Option<Uuid>,
    data: Value,
}

impl From<EventRow> for Event {
    fn from(r: EventRow) -> Self {
        Self {
            id: r.id,
            tx: r.tx,
            at: r.at,
            kind: r.kind,
            job_name: r.job_name,
            task_id: r.task_id.map(TaskId::from),
            data: r.data,
        }
    }
}

impl Store {
    /// Appends an event on its own.
    pub async fn append_event(&self, event: &NewEvent<'_>) -> Result<()> {
        append_event(&mut *self.pool.acquire().await?, event).await
    }

    /// The position just before the events not yet safe to read: a reader starting here sees
    /// everything that commits from now on.
    pub async fn event_horizon(&self) -> Result<EventCursor> {
        let horizon = read_horizon(&mut *self.pool.acquire().await?).await?;
        Ok(EventCursor {
            tx: horizon - 1,
            id: i64::MAX,
        })
    }

    /// Up to `limit` events after `after` matching `filter`, in delivery order. Only events of
    /// transactions older than every transaction of this database still running are returned: a
    /// transaction that took a smaller id but commits later is then already visible, so nothing is
    /// ever skipped.
    pub async fn events_after(
        &self,
        after: EventCursor,
        filter: &EventFilter,
        limit: i64,
    ) -> Result<EventBatch> {
        let kinds = (!filter.kinds.is_empty()).then_some(filter.kinds.as_slice());
        let jobs = (!filter.jobs.is_empty()).then_some(filter.jobs.as_slice());
        let labels = (!filter.labels.is_empty())
            .then(|| serde_json::to_value(&filter.labels))
            .transpose()
            .map_err(crate::error::corrupt)?;
        let mut conn = self.pool.acquire().await?;
        // Separate statements, each with its own snapshot taken after the horizon was computed:
        // every transaction below the horizon had finished by then, so its events are visible.
        let horizon = read_horizon(&mut conn).await?;
        let rows = sqlx::query_as!(
            EventRow,
            "select id, tx, at, kind, job_name, task_id, data from events
             where (tx, id) > ($1, $2) and tx < $3
               and ($4::text[] is null or job_name = any($4))
               and ($5::text[] is null or kind = any($5))
               and ($7::jsonb is null
                    or job_name in (select name from jobs where spec -> 'labels' @> $7))
             order by tx, id
             limit $6",
            after.tx,
            after.id,
            horizon,
            jobs,
            kinds,
            limit,
            labels,
        )
        .fetch_all(&mut *conn)
        .await?;
        let held_back = sqlx::query_scalar!(
            r#"select exists (select 1 from events where tx >= $1) as "held!""#,
            horizon
        )
        .fetch_one(&mut *conn)
        .await?;
        let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= limit;
        let events: Vec<Event> = rows.into_iter().map(Event::from).collect();
        let next = match events.last() {
            Some(last) => last.cursor(),
            // Nothing matched below the horizon: the reader may move up to it.
            None if !full => after.max(EventCursor {
                tx: horizon - 1,
                id: i64::MAX,
            }),
            None => after,
        };
        Ok(EventBatch {
            events,
            next,
            held_back,
        })
    }

    /// A task's latest `limit` events (state changes and callbacks) in the order they happened.
    pub async fn task_history(&self, id: TaskId, limit: i64) -> Result<Vec<Event>> {
        Ok(sqlx::query_as!(
            EventRow,
            r#"select id as "id!", tx as "tx!", at as "at!", kind as "kind!", job_name, task_id,
                      data as "data!"
               from (select id, tx, at, kind, job_name, task_id, data from events
                     where task_id = $1 order by id desc limit $2) latest
               order by id"#,
            id.as_uuid(),
            limit,
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(Event::from)
        .collect())
    }

    /// Where the consumer `name` has got to.
    pub async fn event_cursor(&self, name: &str) -> Result<Option<EventCursor>> {
        Ok(sqlx::query!(
            "select tx, last_id from event_cursors where name = $1",
            name
        )
        .fetch_optional(&self.pool)
        .await?
        .map(|r| EventCursor {
            tx: r.tx,
            id: r.last_id,
        }))
    }

    /// Records that `name` has consumed everything up to `cursor`; never moves a cursor back.
    pub async fn save_event_cursor(&self, name: &str, cursor: EventCursor) -> Result<()> {
        sqlx::query!(
            "insert into event_cursors (name, tx, last_id) values ($1, $2, $3)
             on conflict (name) do update set tx = excluded.tx, last_id = excluded.last_id,
                 updated_at = now()
             where (event_cursors.tx, event_cursors.last_id) < (excluded.tx, excluded.last_id)",
            name,
            cursor.tx,
            cursor.id,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
