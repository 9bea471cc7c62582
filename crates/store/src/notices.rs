//! Completion notices: what a task created with `notify` is owed (written by the state-change
//! trigger, see the `task_notices` migration), claimed by any node's notifier with
//! `for update skip locked`, and recorded attempt by attempt.

use std::time::Duration;

use chrono::{DateTime, Utc};
use pacer_domain::TaskId;
use serde_json::Value;

use crate::{Result, Store, Task};

/// The channel notifiers listen on to hear that a notice was written.
pub const NOTICES_CHANNEL: &str = "pacer_notices";

/// A notice a notifier claimed: send it, then record the outcome with [`Store::record_notice`].
#[derive(Debug, Clone)]
pub struct ClaimedNotice {
    pub task_id: TaskId,
    pub event: String,
    /// The task's state the notice was written for.
    pub state: String,
    /// This attempt's number, from 1; also the claim's token.
    pub attempt: i32,
    /// The task's `notify` as stored: `{url, events, auth}`.
    pub notify: Value,
    /// The task as it is now.
    pub task: Task,
}

/// A notice as the task view shows it.
#[derive(Debug, Clone)]
pub struct Notice {
    pub event: String,
    pub state: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// Given up on after the last allowed attempt.
    pub failed: bool,
    /// When the next attempt is due, while it is neither delivered nor given up.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Claims up to `limit` due notices for `node`, each for `lease_ms` (after which another
    /// node may take it over), with its task as it is now.
    pub async fn claim_notices(
        &self,
        node: &str,
        limit: i64,
        lease_ms: i64,
    ) -> Result<Vec<ClaimedNotice>> {
        let rows = sqlx::query!(
            r#"with due as (
                   select task_id, event from task_notices
                   where delivered_at is null and not failed and next_attempt_at <= now()
                   order by next_attempt_at, task_id, event limit $2
                   for update skip locked
               )
               update task_notices n set
                   claimed_by = $1, attempts = n.attempts + 1,
                   next_attempt_at = now() + $3::bigint * interval '1 millisecond'
               from due where n.task_id = due.task_id and n.event = due.event
               returning n.task_id, n.event, n.state, n.attempts"#,
            node,
            limit,
            lease_ms,
        )
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let task = self.get_task(row.task_id.into()).await?;
            let notify = sqlx::query_scalar!(
                r#"select notify as "notify!" from tasks where id = $1 and notify is not null"#,
                row.task_id
            )
            .fetch_one(&self.pool)
            .await?;
            claimed.push(ClaimedNotice {
                task_id: row.task_id.into(),
                event: row.event,
                state: row.state,
                attempt: row.attempts,
                notify,
                task,
            });
        }
        Ok(claimed)
    }

    /// Records an attempt at `notice`: delivered, due again after `retry_in`, or given up when
    /// `retry_in` is `None`. Only while the notice is still this claim's (a claim that outlived
    /// its lease and was taken over records nothing).
    pub async fn record_notice(
        &self,
        notice: &ClaimedNotice,
        error: Option<&str>,
        retry_in: Option<Duration>,
    ) -> Result<bool> {
        let retry_ms = retry_in.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let updated = sqlx::query!(
            "update task_notices set
                 delivered_at = case when $4::text is null then now() end,
                 last_error = coalesce($4, last_error),
                 failed = $4::text is not null and $5::bigint is null,
                 next_attempt_at = now() + coalesce($5, 0) * interval '1 millisecond'
             where task_id = $1 and event = $2 and attempts = $3 and delivered_at is null",
            notice.task_id.as_uuid(),
            notice.event,
            notice.attempt,
            error,
            retry_ms,
        )
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// How long until the next notice is due (zero when one is due now); `None` when no notice
    /// is waiting, so an idle notifier sleeps for its whole poll interval.
    pub async fn next_notice_in(&self) -> Result<Option<Duration>> {
        // Null when nothing waits (`min` of no rows); `greatest` would turn that into 0, "due
        // now", and every idle node would poll the outbox as fast as it can.
        let ms = sqlx::query_scalar!(
            r#"select (extract(epoch from (min(next_attempt_at) - now())) * 1000)::bigint as "ms"
               from task_notices where delivered_at is null and not failed"#
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(ms.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))))
    }

    /// Who a task's creator asked to be told about it (`notify` as stored), if anyone.
    pub async fn task_notify(&self, id: TaskId) -> Result<Option<Value>> {
        Ok(
            sqlx::query_scalar!("select notify from tasks where id = $1", id.as_uuid())
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }

    /// A task's notices, oldest first.
    pub async fn task_notices(&self, id: TaskId) -> Result<Vec<Notice>> {
        let rows = sqlx::query!(
            "select event, state, attempts, created_at, delivered_at, last_error, failed,
                    next_attempt_at
             from task_notices where task_id = $1 order by created_at, event",
            id.as_uuid(),
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| Notice {
                event: r.event,
                state: r.state,
                attempts: r.attempts,
                created_at: r.created_at,
                next_attempt_at: (r.delivered_at.is_none() && !r.failed)
                    .then_some(r.next_attempt_at),
                delivered_at: r.delivered_at,
                last_error: r.last_error,
                failed: r.failed,
            })
            .collect())
    }
}
