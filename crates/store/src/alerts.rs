//! Alerts: raising them (a leader duty, in one transaction fenced by the leader's term, together
//! with the markers that say what has been looked at), reading, acknowledging and resolving
//! them, and the queue of deliveries to sinks that any node works off.

use std::time::Duration;

use chrono::{DateTime, Utc};
use pacer_domain::wire::{AlertSubject, AlertView};
use pacer_domain::{AlertKind, AlertState, JobAlerts, Severity};
use serde_json::Value;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::error::corrupt;
use crate::{Error, Result, Store};

/// The channel delivery loops listen on to hear that deliveries were queued.
pub const ALERTS_CHANNEL: &str = "pacer_alerts";

/// An alert as stored.
#[derive(Debug, Clone)]
pub struct Alert {
    pub id: Uuid,
    pub kind: AlertKind,
    pub severity: Severity,
    pub task_id: Option<Uuid>,
    pub job_name: Option<String>,
    pub node_id: Option<String>,
    pub state: AlertState,
    /// How many times the problem was seen while this alert was open.
    pub count: i64,
    pub summary: String,
    pub opened_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub notified_at: Option<DateTime<Utc>>,
    pub acked_at: Option<DateTime<Utc>>,
    pub acked_by: Option<String>,
    pub ack_note: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<String>,
    pub resolve_note: Option<String>,
}

impl From<Alert> for AlertView {
    fn from(a: Alert) -> Self {
        Self {
            id: a.id,
            kind: a.kind,
            severity: a.severity,
            subject: AlertSubject {
                task: a.task_id,
                job: a.job_name,
                node: a.node_id,
            },
            state: a.state,
            count: a.count,
            summary: a.summary,
            opened_at: a.opened_at,
            last_seen_at: a.last_seen_at,
            notified_at: a.notified_at,
            acked_at: a.acked_at,
            acked_by: a.acked_by,
            ack_note: a.ack_note,
            resolved_at: a.resolved_at,
            resolved_by: a.resolved_by,
            resolve_note: a.resolve_note,
        }
    }
}

/// An `alerts` row as selected (`select *`).
struct AlertRow {
    id: Uuid,
    kind: String,
    severity: String,
    #[allow(dead_code)]
    subject_key: String,
    task_id: Option<Uuid>,
    job_name: Option<String>,
    node_id: Option<String>,
    state: String,
    count: i64,
    summary: String,
    opened_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
    notified_at: Option<DateTime<Utc>>,
    acked_at: Option<DateTime<Utc>>,
    acked_by: Option<String>,
    ack_note: Option<String>,
    resolved_at: Option<DateTime<Utc>>,
    resolved_by: Option<String>,
    resolve_note: Option<String>,
    #[allow(dead_code)]
    opened_term: Option<i64>,
}

impl TryFrom<AlertRow> for Alert {
    type Error = Error;

    fn try_from(r: AlertRow) -> Result<Self> {
        Ok(Alert {
            id: r.id,
            kind: r.kind.parse().map_err(corrupt)?,
            severity: r.severity.parse().map_err(corrupt)?,
            task_id: r.task_id,
            job_name: r.job_name,
            node_id: r.node_id,
            state: r.state.parse().map_err(corrupt)?,
            count: r.count,
            summary: r.summary,
            opened_at: r.opened_at,
            last_seen_at: r.last_seen_at,
            notified_at: r.notified_at,
            acked_at: r.acked_at,
            acked_by: r.acked_by,
            ack_note: r.ack_note,
            resolved_at: r.resolved_at,
            resolved_by: r.resolved_by,
            resolve_note: r.resolve_note,
        })
    }
}

/// Which alerts to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    pub state: Option<AlertState>,
    pub kind: Option<AlertKind>,
    pub job: Option<String>,
    /// Keyset cursor: only alerts older than this one.
    pub before: Option<Uuid>,
    pub limit: i64,
}

/// What an acknowledgement or resolution did.
#[derive(Debug, Clone)]
pub enum AlertChange {
    /// The alert moved to the asked state.
    Applied(Alert),
    /// It was already there; nothing changed.
    Unchanged(Alert),
    /// It is resolved, which is final; nothing changed.
    Refused(Alert),
}

/// A problem to raise: opened, or counted into the open alert with the same kind and subject.
#[derive(Debug, Clone)]
pub struct NewAlert {
    pub kind: AlertKind,
    pub severity: Severity,
    pub task_id: Option<Uuid>,
    pub job_name: Option<String>,
    pub node_id: Option<String>,
    pub summary: String,
    /// How many repeats this raise stands for (skips counted in one pass, say).
    pub count: i64,
}

impl NewAlert {
    /// The key one open alert per kind is unique on.
    fn subject_key(&self) -> String {
        match (&self.task_id, &self.node_id, &self.job_name) {
            (Some(task), _, _) => format!("task:{task}"),
            (None, Some(node), _) => format!("node:{node}"),
            (None, None, Some(job)) => format!("job:{job}"),
            (None, None, None) => "cluster".to_owned(),
        }
    }
}

/// What raising did.
#[derive(Debug, Clone)]
pub struct Raised {
    pub alert: Alert,
    /// A new alert was opened (rather than a repeat counted).
    pub opened: bool,
    /// Sinks should be told: the alert is new, or open and due for re-notification.
    pub notify: bool,
}

/// A notification to queue for one sink.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub alert_id: Option<Uuid>,
    /// `alert.opened`, `alert.renotified` or `task.completed`.
    pub event: String,
    pub task_id: Option<Uuid>,
    pub job_name: Option<String>,
    pub sink: String,
    /// `webhook` or `slack`.
    pub sink_kind: String,
    pub url: String,
    /// The name of the configured secret the request is signed with.
    pub secret: Option<String>,
    pub body: Value,
    pub max_attempts: i32,
}

/// A task whose deadline passed or that ended, as the alert evaluation sees it.
#[derive(Debug, Clone)]
pub struct TaskNotice {
    pub task_id: Uuid,
    pub job_name: String,
    pub state: String,
    pub failure_reason: Option<String>,
    pub message: Option<String>,
    pub last_error: Option<String>,
    pub result: Option<Value>,
    pub deadline_at: Option<DateTime<Utc>>,
    /// The job's alert routes (empty when the job has none or is gone).
    pub alerts: JobAlerts,
}

/// Skips of one job not yet counted into an alert.
#[derive(Debug, Clone)]
pub struct SkipNotice {
    pub job_name: String,
    pub count: i64,
    /// The distinct reasons, for the summary.
    pub reasons: Vec<String>,
    pub alerts: JobAlerts,
}

/// A job whose dispatches keep failing transiently.
#[derive(Debug, Clone)]
pub struct StreakNotice {
    pub job_name: String,
    pub errors: i32,
    pub last_error: Option<String>,
    pub alerts: JobAlerts,
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

/// A task as the evaluation reads it, with its job's alert routes still as stored.
struct TaskNoticeRow {
    id: Uuid,
    job_name: String,
    state: String,
    failure_reason: Option<String>,
    message: Option<String>,
    last_error: Option<String>,
    result: Option<Value>,
    deadline_at: Option<DateTime<Utc>>,
    alerts: Option<Value>,
}

impl From<TaskNoticeRow> for TaskNotice {
    fn from(r: TaskNoticeRow) -> Self {
        Self {
            task_id: r.id,
            job_name: r.job_name,
            state: r.state,
            failure_reason: r.failure_reason,
            message: r.message,
            last_error: r.last_error,
            result: r.result,
            deadline_at: r.deadline_at,
            alerts: job_alerts(r.alerts),
        }
    }
}

fn job_alerts(spec: Option<Value>) -> JobAlerts {
    // A stored definition was validated on write; routes that fail to read route nothing.
    spec.and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

impl Store {
    /// True when the alert evaluation has something to look at: an open task past its deadline
    /// not yet noticed, an ended task or a skip not yet evaluated, a dispatch streak at the
    /// threshold, a node silent for `dead_after_ms` not yet reported, or an open alert whose
    /// condition cleared. Reads only, so an idle leader writes nothing.
    pub async fn alert_work_due(&self, threshold: i32, dead_after_ms: i64) -> Result<bool> {
        Ok(sqlx::query_scalar!(
            r#"select (
                   exists (select 1 from tasks where deadline_at <= now() and deadline_at is not null
                           and overdue_noticed_at is null and next_dispatch_at is not null)
                or exists (select 1 from tasks where not outcome_noticed
                           and state in ('completed', 'completed_with_errors', 'failed'))
                or exists (select 1 from skipped_runs where not noticed)
                or exists (select 1 from dispatch_streaks where errors > noticed and errors >= $1)
                or exists (select 1 from nodes where stopped_at is null
                           and last_heartbeat_at < now() - $2::bigint * interval '1 millisecond'
                           and (lost_noticed_at is null or lost_noticed_at < last_heartbeat_at))
                or exists (select 1 from alerts a where a.state in ('open', 'acked')
                           and a.kind in ('overdue', 'dispatch_errors', 'node_lost') and (
                           (a.kind = 'overdue' and exists (select 1 from tasks t where t.id = a.task_id and t.next_dispatch_at is null))
                        or (a.kind = 'dispatch_errors' and not exists (select 1 from dispatch_streaks s join jobs j on j.id = s.job_id
                                                                       where j.name = a.job_name and s.errors > 0))
                        or (a.kind = 'node_lost' and exists (select 1 from nodes n where n.id = a.node_id
                               and (n.stopped_at is not null or n.last_heartbeat_at > a.opened_at)))))
               ) as "due!""#,
            threshold,
            dead_after_ms,
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Begins an alert evaluation as leader `node` under `term`; `None` when the term no longer
    /// holds the lease. The lease row stays share-locked until commit, so no other node can take
    /// the lease over while the evaluation writes.
    pub async fn begin_alerting(&self, node: &str, term: i64) -> Result<Option<AlertTx>> {
        let mut tx = self.pool.begin().await?;
        let held = sqlx::query_scalar!(
            r#"select term from leader_lease
               where id and holder = $1 and term = $2 and expires_at > clock_timestamp() for share"#,
            node,
            term,
        )
        .fetch_optional(&mut *tx)
        .await?;
        Ok(held.map(|term| AlertTx {
            tx,
            term,
            queued: 0,
        }))
    }

    /// How many alerts about `job` are open or acknowledged, by kind.
    pub async fn open_job_alerts(&self, job: &str) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query!(
            r#"select kind, count(*) as "open!" from alerts
               where job_name = $1 and state in ('open', 'acked')
               group by kind order by kind"#,
            job,
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| (r.kind, r.open))
        .collect())
    }

    /// Alerts matching `filter`, newest first.
    pub async fn list_alerts(&self, filter: &AlertFilter) -> Result<Vec<Alert>> {
        sqlx::query_as!(
            AlertRow,
            "select * from alerts
             where ($1::text is null or state = $1) and ($2::text is null or kind = $2)
               and ($3::text is null or job_name = $3) and ($4::uuid is null or id < $4)
             order by id desc limit $5",
            filter.state.map(AlertState::as_str),
            filter.kind.map(AlertKind::as_str),
            filter.job.as_deref(),
            filter.before,
            filter.limit,
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(Alert::try_from)
        .collect()
    }

    /// The alert with this id.
    pub async fn get_alert(&self, id: Uuid) -> Result<Alert> {
        sqlx::query_as!(AlertRow, "select * from alerts where id = $1", id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(Error::NotFound("alert"))?
            .try_into()
    }

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

    /// Acknowledges an open alert: it stays open for the record but re-notifies no one.
    pub async fn ack_alert(&self, id: Uuid, by: &str, note: Option<&str>) -> Result<AlertChange> {
        let mut tx = self.pool.begin().await?;
        let current = lock_alert(&mut tx, id).await?;
        let change = match current.state {
            AlertState::Resolved => AlertChange::Refused(current),
            AlertState::Acked => AlertChange::Unchanged(current),
            AlertState::Open => AlertChange::Applied(
                sqlx::query_as!(
                    AlertRow,
                    "update alerts set state = 'acked', acked_at = now(), acked_by = $2, ack_note = $3
                     where id = $1 and state = 'open' returning *",
                    id,
                    by,
                    note,
                )
                .fetch_one(&mut *tx)
                .await?
                .try_into()?,
            ),
        };
        tx.commit().await?;
        Ok(change)
    }

    /// Resolves an open or acknowledged alert; a repeat of its problem opens a new one.
    pub async fn resolve_alert(
        &self,
        id: Uuid,
        by: &str,
        note: Option<&str>,
    ) -> Result<AlertChange> {
        let mut tx = self.pool.begin().await?;
        let current = lock_alert(&mut tx, id).await?;
        let change = match current.state {
            AlertState::Resolved => AlertChange::Unchanged(current),
            AlertState::Open | AlertState::Acked => AlertChange::Applied(
                sqlx::query_as!(
                    AlertRow,
                    "update alerts set state = 'resolved', resolved_at = now(), resolved_by = $2,
                         resolve_note = $3
                     where id = $1 and state in ('open', 'acked') returning *",
                    id,
                    by,
                    note,
                )
                .fetch_one(&mut *tx)
                .await?
                .try_into()?,
            ),
        };
        tx.commit().await?;
        Ok(change)
    }

    /// Open and acknowledged alerts by kind, every kind present.
    pub async fn open_alert_counts(&self) -> Result<Vec<(AlertKind, i64)>> {
        let rows = sqlx::query!(
            r#"select kind, count(*) as "count!" from alerts
               where state in ('open', 'acked') group by kind"#
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(AlertKind::ALL
            .into_iter()
            .map(|kind| {
                let count = rows
                    .iter()
                    .find(|r| r.kind == kind.as_str())
                    .map_or(0, |r| r.count);
                (kind, count)
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

    /// How long until the earliest watched deadline passes, if any task has one.
    pub async fn next_deadline_in(&self) -> Result<Option<Duration>> {
        let seconds = sqlx::query_scalar!(
            r#"select extract(epoch from min(deadline_at) - now())::float8 as seconds
               from tasks where deadline_at is not null and overdue_noticed_at is null
                 and next_dispatch_at is not null"#
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(seconds.map(|s| Duration::from_secs_f64(s.max(0.0))))
    }
}

async fn lock_alert(tx: &mut Transaction<'static, Postgres>, id: Uuid) -> Result<Alert> {
    sqlx::query_as!(
        AlertRow,
        "select * from alerts where id = $1 for update",
        id
    )
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(Error::NotFound("alert"))?
    .try_into()
}

/// One alert evaluation: a transaction fenced by the leader's term. Each `take_…` marks what it
/// returns as seen, in this transaction, so the alerts raised from it and the markers commit (or
/// vanish) together.
pub struct AlertTx {
    tx: Transaction<'static, Postgres>,
    term: i64,
    queued: usize,
}

impl std::fmt::Debug for AlertTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertTx").field("term", &self.term).finish()
    }
}

impl AlertTx {
    /// Open tasks past their deadline not yet noticed, at most `limit`, marked noticed.
    pub async fn take_overdue(&mut self, limit: i64) -> Result<Vec<TaskNotice>> {
        // The range scan runs on the partial deadline index; `skip locked` passes over a task a
        // dispatcher or callback holds for a moment: it is found again on the next pass.
        let rows = sqlx::query_as!(
            TaskNoticeRow,
            r#"with due as (
                   select id from tasks
                   where deadline_at <= now() and deadline_at is not null
                     and overdue_noticed_at is null and next_dispatch_at is not null
                   order by deadline_at limit $1
                   for update skip locked
               )
               update tasks t set overdue_noticed_at = now()
               from due where t.id = due.id
               returning t.id, t.job_name, t.state, t.failure_reason, t.message, t.last_error,
                         t.result, t.deadline_at,
                         (select j.spec -> 'alerts' from jobs j where j.id = t.job_id) as alerts"#,
            limit,
        )
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows.into_iter().map(TaskNotice::from).collect())
    }

    /// Tasks that ended `failed`, `completed_with_errors` or `completed` and were not yet
    /// evaluated, at most `limit`, marked evaluated.
    pub async fn take_ended(&mut self, limit: i64) -> Result<Vec<TaskNotice>> {
        let rows = sqlx::query_as!(
            TaskNoticeRow,
            r#"with ended as (
                   select id from tasks
                   where not outcome_noticed and state in ('completed', 'completed_with_errors', 'failed')
                   order by finished_at limit $1
                   for update skip locked
               )
               update tasks t set outcome_noticed = true
               from ended where t.id = ended.id
               returning t.id, t.job_name, t.state, t.failure_reason, t.message, t.last_error,
                         t.result, t.deadline_at,
                         (select j.spec -> 'alerts' from jobs j where j.id = t.job_id) as alerts"#,
            limit,
        )
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows.into_iter().map(TaskNotice::from).collect())
    }

    /// Skips not yet counted, at most `limit`, marked counted, grouped by job.
    pub async fn take_skips(&mut self, limit: i64) -> Result<Vec<SkipNotice>> {
        let rows = sqlx::query!(
            r#"with taken as (
                   update skipped_runs s set noticed = true
                   where s.id in (select id from skipped_runs where not noticed
                                  order by recorded_at limit $1 for update skip locked)
                   returning s.job_name, s.reason
               )
               select taken.job_name, count(*) as "count!",
                      array_agg(distinct taken.reason) as "reasons!",
                      (select j.spec -> 'alerts' from jobs j where j.name = taken.job_name) as alerts
               from taken group by taken.job_name"#,
            limit,
        )
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| SkipNotice {
                job_name: r.job_name,
                count: r.count,
                reasons: r.reasons,
                alerts: job_alerts(r.alerts),
            })
            .collect())
    }

    /// Jobs whose streak of transient dispatch errors reached `threshold` and grew since last
    /// seen, marked seen.
    pub async fn take_streaks(&mut self, threshold: i32) -> Result<Vec<StreakNotice>> {
        let rows = sqlx::query!(
            r#"with grown as (
                   select job_id, errors from dispatch_streaks
                   where errors > noticed and errors >= $1
                   for update skip locked
               ),
               seen as (
                   -- `least`: a streak that ended meanwhile starts again from zero.
                   update dispatch_streaks s set noticed = least(grown.errors, s.errors)
                   from grown where s.job_id = grown.job_id
                   returning s.job_id, grown.errors, s.last_error
               )
               select j.name, seen.errors, seen.last_error, j.spec -> 'alerts' as alerts
               from seen join jobs j on j.id = seen.job_id"#,
            threshold,
        )
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| StreakNotice {
                job_name: r.name,
                errors: r.errors,
                last_error: r.last_error,
                alerts: job_alerts(r.alerts),
            })
            .collect())
    }

    /// Nodes silent for `dead_after_ms` without having stopped cleanly, not yet reported since
    /// their last heartbeat, marked reported.
    pub async fn take_lost_nodes(&mut self, dead_after_ms: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar!(
            "update nodes set lost_noticed_at = now()
             where stopped_at is null
               and last_heartbeat_at < now() - $1::bigint * interval '1 millisecond'
               and (lost_noticed_at is null or lost_noticed_at < last_heartbeat_at)
             returning id",
            dead_after_ms,
        )
        .fetch_all(&mut *self.tx)
        .await?)
    }

    /// Resolves the alerts whose condition cleared: overdue tasks that ended, jobs whose
    /// dispatches succeed again, lost nodes that came back or stopped cleanly.
    pub async fn resolve_cleared(&mut self) -> Result<Vec<Alert>> {
        sqlx::query_as!(
            AlertRow,
            "update alerts a set state = 'resolved', resolved_at = now(), resolved_by = 'pacer',
                 resolve_note = case a.kind
                     when 'overdue' then 'the task ended'
                     when 'dispatch_errors' then 'a dispatch succeeded'
                     else 'the node is back' end
             where a.state in ('open', 'acked')
               -- Only these kinds clear by themselves; naming them keeps the scan to them (the
               -- open-alert index leads with the kind), however many failed or missed alerts
               -- stay open.
               and a.kind in ('overdue', 'dispatch_errors', 'node_lost') and (
                   (a.kind = 'overdue' and exists (select 1 from tasks t where t.id = a.task_id and t.next_dispatch_at is null))
                or (a.kind = 'dispatch_errors' and not exists (select 1 from dispatch_streaks s join jobs j on j.id = s.job_id
                                                               where j.name = a.job_name and s.errors > 0))
                or (a.kind = 'node_lost' and exists (select 1 from nodes n where n.id = a.node_id
                       and (n.stopped_at is not null or n.last_heartbeat_at > a.opened_at))))
             returning a.*"
        )
        .fetch_all(&mut *self.tx)
        .await?
        .into_iter()
        .map(Alert::try_from)
        .collect()
    }

    /// Opens an alert, or counts a repeat into the open (or acknowledged) one with the same
    /// kind and subject. A repeat of an open alert asks for notification again once
    /// `renotify_ms` has passed since the last one (never when `renotify_ms` is 0).
    pub async fn raise(&mut self, alert: &NewAlert, renotify_ms: i64) -> Result<Raised> {
        let key = alert.subject_key();
        // The row lock orders this against an acknowledgement or resolution in flight; the
        // partial unique index is what guarantees a single open alert per kind and subject.
        let open = sqlx::query!(
            r#"select id, state = 'open' and $3::bigint > 0
                   and coalesce(notified_at < now() - $3::bigint * interval '1 millisecond', true) as "due!"
               from alerts where kind = $1 and subject_key = $2 and state in ('open', 'acked')
               for update"#,
            alert.kind.as_str(),
            key,
            renotify_ms,
        )
        .fetch_optional(&mut *self.tx)
        .await?;
        if let Some(open) = open {
            let row = sqlx::query_as!(
                AlertRow,
                "update alerts set count = count + $2, last_seen_at = now(), summary = $3,
                     notified_at = case when $4 then now() else notified_at end
                 where id = $1 returning *",
                open.id,
                alert.count.max(1),
                alert.summary,
                open.due,
            )
            .fetch_one(&mut *self.tx)
            .await?;
            return Ok(Raised {
                alert: row.try_into()?,
                opened: false,
                notify: open.due,
            });
        }
        let row = sqlx::query_as!(
            AlertRow,
            "insert into alerts (id, kind, severity, subject_key, task_id, job_name, node_id,
                                 count, summary, notified_at, opened_term)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, now(), $10)
             returning *",
            Uuid::now_v7(),
            alert.kind.as_str(),
            alert.severity.as_str(),
            key,
            alert.task_id,
            alert.job_name.as_deref(),
            alert.node_id.as_deref(),
            alert.count.max(1),
            alert.summary,
            self.term,
        )
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(Raised {
            alert: row.try_into()?,
            opened: true,
            notify: true,
        })
    }

    /// Queues deliveries; they are due at once and delivery loops are woken at commit.
    pub async fn enqueue(&mut self, deliveries: &[NewDelivery]) -> Result<()> {
        for d in deliveries {
            sqlx::query!(
                "insert into alert_deliveries (id, alert_id, event, task_id, job_name, sink, sink_kind,
                                               url, secret, body, max_attempts, next_attempt_at)
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now())",
                Uuid::now_v7(),
                d.alert_id,
                d.event,
                d.task_id,
                d.job_name.as_deref(),
                d.sink,
                d.sink_kind,
                d.url,
                d.secret.as_deref(),
                d.body,
                d.max_attempts,
            )
            .execute(&mut *self.tx)
            .await?;
        }
        self.queued += deliveries.len();
        Ok(())
    }

    /// Abandons the evaluation: nothing it marked, raised or queued is kept.
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await?;
        Ok(())
    }

    /// Commits the evaluation, waking the delivery loops when something was queued.
    pub async fn commit(mut self) -> Result<()> {
        if self.queued > 0 {
            sqlx::query!("select pg_notify($1, '')", ALERTS_CHANNEL)
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}
