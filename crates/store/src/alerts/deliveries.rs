//! The queue of alert notifications to sinks: any node claims due deliveries under a lease,
//! sends them, and records each attempt; the alert detail view reads them back.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::{Result, Store};

/// A notification to queue for one sink.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub alert_id: Option<Uuid>,
    /// `alert.opened`, `alert.renotified` or `task.completed`.
    pub event: String,
    pub task_id: Option<Uuid>,
    pub job_name: Option<String>,
    pub sink: String,
    /// `webhook`, `slack` or `email`.
    pub sink_kind: String,
    pub url: String,
    /// The name of the configured secret the request is signed with.
    pub secret: Option<String>,
    pub body: Value,
    pub max_attempts: i32,
}

/// One delivery with its attempts, for the alert detail view.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: Uuid,
    pub event: String,
    pub sink: String,
    pub sink_kind: String,
    pub state: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub tries: Vec<DeliveryAttempt>,
}

/// One attempt to deliver.
#[derive(Debug, Clone)]
pub struct DeliveryAttempt {
    pub number: i32,
    pub node: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    pub latency_ms: Option<i64>,
}

/// A delivery claimed by this node.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub id: Uuid,
    /// Fences the write of this attempt's outcome.
    pub claim_token: Uuid,
    /// The number of this attempt (1 for the first).
    pub attempt: i32,
    pub max_attempts: i32,
    pub event: String,
    pub sink: String,
    pub sink_kind: String,
    pub url: String,
    pub secret: Option<String>,
    pub body: Value,
    pub claimed_at: DateTime<Utc>,
}

/// What one delivery attempt came to.
#[derive(Debug, Clone)]
pub struct DeliveryOutcome {
    pub node: String,
    pub delivered: bool,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    pub latency: Duration,
    /// When not delivered: how long until the next attempt.
    pub retry_in: Duration,
}

/// Where a delivery stands after an attempt was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Delivered,
    /// Will be tried again.
    Pending,
    /// Out of attempts.
    Failed,
    /// The claim was no longer held (the lease ran out and another node took it over).
    Lost,
}

impl Store {
    /// The deliveries of an alert, oldest first, each with its attempts.
    pub async fn alert_deliveries(&self, id: Uuid) -> Result<Vec<Delivery>> {
        let rows = sqlx::query!(
            "select id, event, sink, sink_kind, state, attempts, max_attempts, created_at,
                    next_attempt_at, delivered_at, last_error
             from alert_deliveries where alert_id = $1 order by created_at, id",
            id
        )
        .fetch_all(&self.pool)
        .await?;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let attempts = sqlx::query!(
            "select delivery_id, number, node, started_at, finished_at, http_status, error, latency_ms
             from alert_delivery_attempts where delivery_id = any($1) order by delivery_id, number",
            &ids
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| Delivery {
                tries: attempts
                    .iter()
                    .filter(|a| a.delivery_id == r.id)
                    .map(|a| DeliveryAttempt {
                        number: a.number,
                        node: a.node.clone(),
                        started_at: a.started_at,
                        finished_at: a.finished_at,
                        http_status: a.http_status,
                        error: a.error.clone(),
                        latency_ms: a.latency_ms,
                    })
                    .collect(),
                id: r.id,
                event: r.event,
                sink: r.sink,
                sink_kind: r.sink_kind,
                state: r.state,
                attempts: r.attempts,
                max_attempts: r.max_attempts,
                created_at: r.created_at,
                next_attempt_at: r.next_attempt_at,
                delivered_at: r.delivered_at,
                last_error: r.last_error,
            })
            .collect())
    }

    /// Claims up to `limit` due deliveries for `node`. The claim's lease is `lease_ms`: a
    /// delivery not recorded by then (its node died mid-request) is due again for any node.
    pub async fn claim_deliveries(
        &self,
        node: &str,
        limit: i64,
        lease_ms: i64,
    ) -> Result<Vec<ClaimedDelivery>> {
        // `skip locked`: concurrent claimers on other nodes pass over each other's rows.
        Ok(sqlx::query_as!(
            ClaimedDelivery,
            r#"with due as (
                   select id from alert_deliveries
                   where next_attempt_at <= now()
                   order by next_attempt_at, id limit $2
                   for update skip locked
               ),
               claimed as (
                   update alert_deliveries d set
                       claim_token = gen_random_uuid(), claimed_by = $1, attempts = d.attempts + 1,
                       next_attempt_at = now() + $3::bigint * interval '1 millisecond'
                   from due where d.id = due.id
                   returning d.id, d.claim_token, d.attempts as attempt, d.max_attempts,
                             d.event, d.sink, d.sink_kind, d.url, d.secret, d.body
               )
               -- Oldest first, as they were queued.
               select id as "id!", claim_token as "claim_token!", attempt as "attempt!",
                      max_attempts as "max_attempts!", event as "event!", sink as "sink!",
                      sink_kind as "sink_kind!", url as "url!", secret, body as "body!",
                      now() as "claimed_at!"
               from claimed order by id"#,
            node,
            limit,
            lease_ms,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records one delivery attempt and moves the delivery on: delivered, due again after
    /// `retry_in`, or failed once out of attempts. The attempt row is written whatever happened
    /// to the claim; the delivery only while this node still holds it.
    pub async fn record_delivery(
        &self,
        claimed: &ClaimedDelivery,
        outcome: &DeliveryOutcome,
    ) -> Result<DeliveryState> {
        let retry_ms = i64::try_from(outcome.retry_in.as_millis()).unwrap_or(i64::MAX);
        let state = sqlx::query_scalar!(
            r#"with updated as (
                   update alert_deliveries set
                       state = case when $3 then 'delivered'
                                    when attempts >= max_attempts then 'failed'
                                    else 'pending' end,
                       next_attempt_at = case when $3 or attempts >= max_attempts then null
                                              else now() + $4::bigint * interval '1 millisecond' end,
                       delivered_at = case when $3 then now() end,
                       last_error = case when $3 then last_error else $5 end,
                       claim_token = null, claimed_by = null
                   where id = $1 and claim_token = $2
                   returning state
               ),
               recorded as (
                   insert into alert_delivery_attempts (delivery_id, number, node, started_at, http_status, error, latency_ms)
                   values ($1, $6, $7, $8, $9, $5, $10)
                   on conflict (delivery_id, number) do nothing
               )
               select state from updated"#,
            claimed.id,
            claimed.claim_token,
            outcome.delivered,
            retry_ms,
            outcome.error.as_deref(),
            claimed.attempt,
            outcome.node,
            claimed.claimed_at,
            outcome.http_status.map(i32::from),
            i64::try_from(outcome.latency.as_millis()).unwrap_or(i64::MAX),
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(match state.as_deref() {
            Some("delivered") => DeliveryState::Delivered,
            Some("failed") => DeliveryState::Failed,
            Some(_) => DeliveryState::Pending,
            None => DeliveryState::Lost,
        })
    }

    /// How long until the earliest queued delivery is due (zero if one is due now).
    pub async fn next_delivery_in(&self) -> Result<Option<Duration>> {
        let seconds = sqlx::query_scalar!(
            r#"select extract(epoch from min(next_attempt_at) - now())::float8 as seconds
               from alert_deliveries where next_attempt_at is not null"#
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(seconds.map(|s| Duration::from_secs_f64(s.max(0.0))))
    }
}
