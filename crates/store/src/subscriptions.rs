//! Event subscriptions: their definitions, where each has got to in the event log (an
//! `event_cursors` row named `subscription:<name>`), and how its deliveries go.

use chrono::{DateTime, Utc};
use pacer_domain::SubscriptionSpec;
use sqlx::types::Json;

use crate::error::corrupt;
use crate::{Error, EventCursor, EventFilter, Result, Store};

/// The event cursor name of a subscription.
pub fn subscription_cursor(name: &str) -> String {
    format!("subscription:{name}")
}

/// A subscription with how its deliveries go.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub name: String,
    pub spec: SubscriptionSpec,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The last batch the receiver accepted.
    pub delivered_at: Option<DateTime<Utc>>,
    /// Events the receiver accepted in all.
    pub delivered_events: i64,
    /// Attempts refused in a row since the last accepted one.
    pub consecutive_failures: i32,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// Where its receiver has got to: it has every matching event up to here.
    pub cursor: Option<EventCursor>,
}

impl Subscription {
    /// The events it receives.
    pub fn filter(&self) -> EventFilter {
        filter(&self.spec)
    }
}

/// The events a subscription receives.
pub fn filter(spec: &SubscriptionSpec) -> EventFilter {
    EventFilter {
        jobs: spec.jobs.clone(),
        labels: spec.labels.clone(),
        kinds: spec.events.clone(),
    }
}

/// How far behind a receiver is.
#[derive(Debug, Clone, Copy)]
pub struct Lag {
    /// Matching events after its position, counted up to `LAG_COUNT_LIMIT`.
    pub events: i64,
    /// When the oldest of them happened.
    pub oldest_at: Option<DateTime<Utc>>,
}

/// Lag counts stop here, so looking at a far-behind receiver stays cheap.
pub const LAG_COUNT_LIMIT: i64 = 10_000;

struct Row {
    name: String,
    spec: Json<SubscriptionSpec>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    delivered_at: Option<DateTime<Utc>>,
    delivered_events: i64,
    consecutive_failures: i32,
    last_error: Option<String>,
    last_error_at: Option<DateTime<Utc>>,
    cursor_tx: Option<i64>,
    cursor_id: Option<i64>,
}

impl From<Row> for Subscription {
    fn from(r: Row) -> Self {
        Self {
            name: r.name,
            spec: r.spec.0,
            created_at: r.created_at,
            updated_at: r.updated_at,
            delivered_at: r.delivered_at,
            delivered_events: r.delivered_events,
            consecutive_failures: r.consecutive_failures,
            last_error: r.last_error,
            last_error_at: r.last_error_at,
            cursor: r
                .cursor_tx
                .zip(r.cursor_id)
                .map(|(tx, id)| EventCursor { tx, id }),
        }
    }
}

impl Store {
    /// Creates (`true`) or replaces a subscription. A new one starts at the present of the log;
    /// a replaced one keeps its position.
    pub async fn put_subscription(&self, name: &str, spec: &SubscriptionSpec) -> Result<bool> {
        let start = self.event_horizon().await?;
        let mut tx = self.pool.begin().await?;
        let created = sqlx::query_scalar!(
            r#"insert into subscriptions (name, spec) values ($1, $2)
               on conflict (name) do update set spec = excluded.spec, updated_at = now()
               returning (xmax = 0) as "created!""#,
            name,
            Json(spec) as _,
        )
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query!(
            "insert into event_cursors (name, tx, last_id) values ($1, $2, $3)
             on conflict (name) do nothing",
            subscription_cursor(name),
            start.tx,
            start.id,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(created)
    }

    /// One subscription.
    pub async fn get_subscription(&self, name: &str) -> Result<Subscription> {
        sqlx::query_as!(
            Row,
            r#"select s.name, s.spec as "spec: Json<SubscriptionSpec>", s.created_at, s.updated_at,
                      s.delivered_at, s.delivered_events, s.consecutive_failures, s.last_error,
                      s.last_error_at, c.tx as "cursor_tx?", c.last_id as "cursor_id?"
               from subscriptions s
               left join event_cursors c on c.name = 'subscription:' || s.name
               where s.name = $1"#,
            name,
        )
        .fetch_optional(&self.pool)
        .await?
        .map(Subscription::from)
        .ok_or(Error::NotFound("subscription"))
    }

    /// Every subscription, in name order.
    pub async fn list_subscriptions(&self) -> Result<Vec<Subscription>> {
        Ok(sqlx::query_as!(
            Row,
            r#"select s.name, s.spec as "spec: Json<SubscriptionSpec>", s.created_at, s.updated_at,
                      s.delivered_at, s.delivered_events, s.consecutive_failures, s.last_error,
                      s.last_error_at, c.tx as "cursor_tx?", c.last_id as "cursor_id?"
               from subscriptions s
               left join event_cursors c on c.name = 'subscription:' || s.name
               order by s.name"#,
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(Subscription::from)
        .collect())
    }

    /// When a subscription was last created or replaced; `None` once it is deleted.
    pub async fn subscription_version(&self, name: &str) -> Result<Option<DateTime<Utc>>> {
        Ok(
            sqlx::query_scalar!("select updated_at from subscriptions where name = $1", name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Deletes a subscription and its position.
    pub async fn delete_subscription(&self, name: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query!("delete from subscriptions where name = $1", name)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(Error::NotFound("subscription"));
        }
        sqlx::query!(
            "delete from event_cursors where name = $1",
            subscription_cursor(name)
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records that the receiver of `name` accepted `count` events, up to `cursor`: both in one
    /// commit, and only while the subscription exists. False when it is gone.
    pub async fn subscription_delivered(
        &self,
        name: &str,
        cursor: EventCursor,
        count: i64,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query!(
            "update subscriptions set delivered_at = now(),
                 delivered_events = delivered_events + $2, consecutive_failures = 0
             where name = $1",
            name,
            count,
        )
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query!(
            "insert into event_cursors (name, tx, last_id) values ($1, $2, $3)
             on conflict (name) do update set tx = excluded.tx, last_id = excluded.last_id,
                 updated_at = now()
             where (event_cursors.tx, event_cursors.last_id) < (excluded.tx, excluded.last_id)",
            subscription_cursor(name),
            cursor.tx,
            cursor.id,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records that the receiver of `name` refused a batch (or could not be reached).
    pub async fn subscription_failed(&self, name: &str, error: &str) -> Result<()> {
        sqlx::query!(
            "update subscriptions set consecutive_failures = consecutive_failures + 1,
                 last_error = $2, last_error_at = now()
             where name = $1",
            name,
            error,
        )
        .execute(&mut *self.pool.acquire().await?)
        .await?;
        Ok(())
    }

    /// How many events matching `filter` come after `cursor` (up to [`LAG_COUNT_LIMIT`]), and
    /// when the oldest of them happened.
    pub async fn events_lag(&self, cursor: EventCursor, filter: &EventFilter) -> Result<Lag> {
        let kinds = (!filter.kinds.is_empty()).then_some(filter.kinds.as_slice());
        let jobs = (!filter.jobs.is_empty()).then_some(filter.jobs.as_slice());
        let labels = (!filter.labels.is_empty())
            .then(|| serde_json::to_value(&filter.labels))
            .transpose()
            .map_err(corrupt)?;
        let row = sqlx::query!(
            r#"select count(*) as "events!", min(at) as oldest_at
               from (select at from events
                     where (tx, id) > ($1, $2)
                       and ($3::text[] is null or job_name = any($3))
                       and ($4::text[] is null or kind = any($4))
                       and ($5::jsonb is null
                            or job_name in (select name from jobs where spec -> 'labels' @> $5))
                     order by tx, id
                     limit $6) behind"#,
            cursor.tx,
            cursor.id,
            jobs,
            kinds,
            labels,
            LAG_COUNT_LIMIT,
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Lag {
            events: row.events,
            oldest_at: row.oldest_at,
        })
    }
}
