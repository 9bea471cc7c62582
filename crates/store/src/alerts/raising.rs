//! Raising alerts, a leader duty: one evaluation is one transaction fenced by the leader's term,
//! in which every `take_…` marks what it returns as seen, so the alerts raised from it, the
//! deliveries queued for them and the markers commit (or vanish) together.

use std::time::Duration;

use chrono::{DateTime, Utc};
use pacer_domain::{AlertKind, JobAlerts, Severity};
use serde_json::Value;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::{ALERTS_CHANNEL, Alert, AlertRow, NewDelivery};
use crate::{Result, Store};

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
    /// For a child of a run: `step `upload`, child `faculty` of run <id>`.
    pub place: Option<String>,
    /// The job's alert routes (empty when the job has none or is gone).
    pub alerts: JobAlerts,
}

impl TaskNotice {
    /// `task <id>`, and for a child of a run the step, child and run it belongs to, as alert
    /// summaries name it.
    pub fn named(&self) -> String {
        match &self.place {
            Some(place) => format!("task {} ({place})", self.task_id),
            None => format!("task {}", self.task_id),
        }
    }
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

/// A job whose data is older than its `freshness`.
#[derive(Debug, Clone)]
pub struct StaleNotice {
    pub job_name: String,
    /// The start of its last completed run, if it completed one.
    pub last_success_at: Option<DateTime<Utc>>,
    pub fresh_until: DateTime<Utc>,
    pub alerts: JobAlerts,
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
    place: Option<String>,
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
            place: r.place,
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
    /// threshold, a node silent for `dead_after_ms` not yet reported, a job gone stale not yet
    /// alerted, or an open alert whose condition cleared. Reads only, so an idle leader writes
    /// nothing.
    pub async fn alert_work_due(&self, threshold: i32, dead_after_ms: i64) -> Result<bool> {
        Ok(
            sqlx::query_file_scalar!("src/sql/alert_work_due.sql", threshold, dead_after_ms,)
                .fetch_one(&self.pool)
                .await?,
        )
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
                         case when t.step is not null then
                             format('step `%s`, child `%s` of run %s',
                                    (select r.steps -> t.step ->> 'name' from task_runs r
                                     where r.task_id = t.run_id),
                                    t.child, t.run_id)
                         end as place,
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
                         case when t.step is not null then
                             format('step `%s`, child `%s` of run %s',
                                    (select r.steps -> t.step ->> 'name' from task_runs r
                                     where r.task_id = t.run_id),
                                    t.child, t.run_id)
                         end as place,
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

    /// Jobs whose data went stale (their last completed run started longer ago than their
    /// `freshness`, or they have watched it that long with none) and that have no open `stale`
    /// alert. A job is alerted once per stretch of staleness: an alert resolved by an operator
    /// while the job is still stale is not raised again until a run completes.
    pub async fn take_stale(&mut self) -> Result<Vec<StaleNotice>> {
        let rows = sqlx::query!(
            r#"with watched as (
                   select j.name, j.spec -> 'alerts' as alerts,
                          (select max(s.started_at) from tasks s
                           where s.job_id = j.id and s.state = 'completed' and s.step is null)
                              as last_success_at,
                          coalesce(j.fresh_since, j.created_at) as since, j.freshness_ms
                   from jobs j where j.freshness_ms is not null
               ),
               stale as (
                   select name, alerts, last_success_at,
                          coalesce(last_success_at, since) + freshness_ms * interval '1 millisecond'
                              as fresh_until
                   from watched
               )
               select name, alerts, last_success_at, fresh_until as "fresh_until!"
               from stale
               where fresh_until <= now()
                 and not exists (select 1 from alerts a where a.kind = 'stale' and a.job_name = stale.name
                                 and (a.state in ('open', 'acked') or a.opened_at >= stale.fresh_until))
               order by name"#
        )
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| StaleNotice {
                job_name: r.name,
                last_success_at: r.last_success_at,
                fresh_until: r.fresh_until,
                alerts: job_alerts(r.alerts),
            })
            .collect())
    }

    /// Resolves the alerts whose condition cleared: overdue tasks that ended, jobs whose
    /// dispatches succeed again, lost nodes that came back or stopped cleanly, jobs fresh again
    /// (a run completed, or the job no longer watches its freshness).
    pub async fn resolve_cleared(&mut self) -> Result<Vec<Alert>> {
        sqlx::query_as!(
            AlertRow,
            "update alerts a set state = 'resolved', resolved_at = now(), resolved_by = 'pacer',
                 resolve_note = case a.kind
                     when 'overdue' then 'the task ended'
                     when 'dispatch_errors' then 'a dispatch succeeded'
                     when 'stale' then 'the job''s data is fresh again'
                     else 'the node is back' end
             where a.state in ('open', 'acked')
               -- Only these kinds clear by themselves; naming them keeps the scan to them (the
               -- open-alert index leads with the kind), however many failed or missed alerts
               -- stay open.
               and a.kind in ('overdue', 'dispatch_errors', 'node_lost', 'stale') and (
                   (a.kind = 'overdue' and exists (select 1 from tasks t where t.id = a.task_id and t.next_dispatch_at is null))
                or (a.kind = 'dispatch_errors' and not exists (select 1 from dispatch_streaks s join jobs j on j.id = s.job_id
                                                               where j.name = a.job_name and s.errors > 0))
                or (a.kind = 'node_lost' and exists (select 1 from nodes n where n.id = a.node_id
                       and (n.stopped_at is not null or n.last_heartbeat_at > a.opened_at)))
                or (a.kind = 'stale' and not exists (select 1 from jobs j where j.name = a.job_name
                       and j.freshness_ms is not null
                   and coalesce((select max(s.started_at) from tasks s
                                 where s.job_id = j.id and s.state = 'completed' and s.step is null),
                                j.fresh_since, j.created_at)
                       + j.freshness_ms * interval '1 millisecond' <= now())))
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
