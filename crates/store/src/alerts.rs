//! Alerts: what an alert is, reading, acknowledging and resolving them. Raising them (a leader
//! duty, in one transaction fenced by the leader's term) is in `raising`; the queue of deliveries
//! to sinks that any node works off is in `deliveries`.

mod deliveries;
mod raising;

use chrono::{DateTime, Utc};
use pacer_domain::wire::{AlertSubject, AlertView};
use pacer_domain::{AlertKind, AlertState, Severity};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::error::corrupt;
use crate::{Error, Result, Store};

pub use deliveries::{
    ClaimedDelivery, Delivery, DeliveryAttempt, DeliveryOutcome, DeliveryState, NewDelivery,
};
pub use raising::{AlertTx, NewAlert, Raised, SkipNotice, StaleNotice, StreakNotice, TaskNotice};

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

impl Store {
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
