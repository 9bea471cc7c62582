//! Retention: the leader's pruning of every table that grows, a bounded batch per statement and
//! each batch in a short transaction of its own, fenced by the leader's term like every other
//! leader write. Also the table sizes the cluster view and `pacer_rows` show.
//!
//! A finished task goes with its attempts, its events and, for a run, its children and theirs, in
//! one statement: a task's history stays whole until the task itself goes. A run's children are
//! never pruned on their own. Open tasks are never pruned, nor a job's last completed run nor the
//! run whose fingerprint the job's next task is compared with.

use serde::Serialize;

use crate::{Result, Store};

/// What one pruning statement works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prunable {
    /// Events without a task (a task's events go with the task).
    Events,
    Messages,
    SkippedRuns,
    /// Resolved alerts, with their deliveries.
    Alerts,
    /// Alert deliveries that ended (delivered or failed).
    AlertDeliveries,
    AuditLog,
}

impl Prunable {
    /// Every table pruned by age alone, in the order a pass prunes them.
    pub const ALL: [Prunable; 6] = [
        Prunable::Events,
        Prunable::Messages,
        Prunable::SkippedRuns,
        Prunable::Alerts,
        Prunable::AlertDeliveries,
        Prunable::AuditLog,
    ];

    /// The table's name.
    pub fn table(self) -> &'static str {
        match self {
            Prunable::Events => "events",
            Prunable::Messages => "messages",
            Prunable::SkippedRuns => "skipped_runs",
            Prunable::Alerts => "alerts",
            Prunable::AlertDeliveries => "alert_deliveries",
            Prunable::AuditLog => "audit_log",
        }
    }
}

/// What one batch of finished tasks took with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrunedTasks {
    /// Tasks, a run's children included.
    pub tasks: u64,
    pub attempts: u64,
    pub events: u64,
    /// Top-level tasks (runs and plain tasks) in the batch: a batch is full when this reaches
    /// its size.
    pub roots: u64,
}

/// The size of one table, from the planner's statistics (cheap, approximate).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableSize {
    pub table: String,
    /// Approximate rows: the live rows the statistics collector counts (or, without its
    /// figures, the planner's estimate).
    pub rows: i64,
    /// Bytes on disk, indexes and TOAST included.
    pub bytes: i64,
}

/// The tables whose sizes are reported, growing ones first.
pub const SIZED_TABLES: [&str; 12] = [
    "tasks",
    "task_attempts",
    "task_runs",
    "events",
    "messages",
    "skipped_runs",
    "alerts",
    "alert_deliveries",
    "alert_delivery_attempts",
    "audit_log",
    "jobs",
    "triggers",
];

/// Fencing: the share lock on the lease row lasts until commit, so no other node takes the lease
/// over meanwhile, and a stale term or an expired lease finds no row at all. A batch never waits
/// long on a row lock: it gives up and the next pass tries again.
async fn fence(tx: &mut sqlx::PgConnection, node: &str, term: i64) -> Result<bool> {
    sqlx::query!("set local lock_timeout = '2s'")
        .execute(&mut *tx)
        .await?;
    Ok(sqlx::query_scalar!(
        r#"select true as "held!" from leader_lease
           where id and holder = $1 and term = $2 and expires_at > clock_timestamp() for share"#,
        node,
        term,
    )
    .fetch_optional(&mut *tx)
    .await?
    .is_some())
}

impl Store {
    /// Deletes one batch of finished tasks past their retention (their job's `retention`, or
    /// `default_ms`), at most `batch` top-level tasks with their attempts, events and children,
    /// as leader `node` under `term`; `None` when the term is fenced.
    ///
    /// Kept whatever their age: open tasks, a run's children (they go with their run), each job's
    /// last completed run (the latest to start, as freshness counts it), the run whose fingerprint
    /// the job keeps, and finished tasks whose outcome alerting has not yet looked at or whose
    /// cancellation the downstream has not yet been told.
    pub async fn prune_tasks(
        &self,
        node: &str,
        term: i64,
        default_ms: i64,
        batch: i64,
    ) -> Result<Option<PrunedTasks>> {
        let mut tx = self.pool.begin().await?;
        if !fence(&mut tx, node, term).await? {
            return Ok(None);
        }
        let row = sqlx::query_file!("src/sql/prune_tasks.sql", default_ms, batch)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(Some(PrunedTasks {
            tasks: count(row.tasks),
            attempts: count(row.attempts),
            events: count(row.events),
            roots: count(row.roots),
        }))
    }

    /// Deletes up to `batch` rows of `what` older than `retention_ms`, as leader `node` under
    /// `term`; `None` when the term is fenced. Returns how many rows went.
    pub async fn prune(
        &self,
        node: &str,
        term: i64,
        what: Prunable,
        retention_ms: i64,
        batch: i64,
    ) -> Result<Option<u64>> {
        let mut tx = self.pool.begin().await?;
        if !fence(&mut tx, node, term).await? {
            return Ok(None);
        }
        let statement = match what {
            Prunable::Events => sqlx::query!(
                "delete from events where id in (
                     select id from events
                     where task_id is null and at < now() - $1::bigint * interval '1 millisecond'
                     order by at limit $2)",
                retention_ms,
                batch,
            ),
            // Their deduplication ends with them; their tasks keep the message's type but lose
            // the link.
            Prunable::Messages => sqlx::query!(
                "delete from messages where ordinal in (
                     select ordinal from messages
                     where received_at < now() - $1::bigint * interval '1 millisecond'
                     order by received_at limit $2)",
                retention_ms,
                batch,
            ),
            // A skip alerting has not yet looked at stays.
            Prunable::SkippedRuns => sqlx::query!(
                "delete from skipped_runs where id in (
                     select id from skipped_runs
                     where recorded_at < now() - $1::bigint * interval '1 millisecond' and noticed
                     order by recorded_at limit $2)",
                retention_ms,
                batch,
            ),
            // An alert goes with its deliveries (and their attempts), unless one is still to be
            // sent.
            Prunable::Alerts => sqlx::query!(
                "delete from alerts where id in (
                     select a.id from alerts a
                     where a.state = 'resolved'
                       and a.resolved_at < now() - $1::bigint * interval '1 millisecond'
                       and not exists (select 1 from alert_deliveries d
                                       where d.alert_id = a.id and d.state = 'pending')
                     order by a.resolved_at limit $2)",
                retention_ms,
                batch,
            ),
            Prunable::AlertDeliveries => sqlx::query!(
                "delete from alert_deliveries where id in (
                     select id from alert_deliveries
                     where state <> 'pending'
                       and created_at < now() - $1::bigint * interval '1 millisecond'
                     order by created_at limit $2)",
                retention_ms,
                batch,
            ),
            Prunable::AuditLog => sqlx::query!(
                "delete from audit_log where id in (
                     select id from audit_log
                     where at < now() - $1::bigint * interval '1 millisecond'
                     order by at limit $2)",
                retention_ms,
                batch,
            ),
        };
        let deleted = statement.execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(Some(deleted))
    }

    /// How far behind the pruning of finished tasks is: how long ago the oldest task that may
    /// be pruned passed its retention, in seconds; 0 when none is waiting.
    pub async fn tasks_prune_lag(&self, default_ms: i64) -> Result<f64> {
        Ok(
            sqlx::query_file_scalar!("src/sql/tasks_prune_lag.sql", default_ms)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// How long ago the oldest row of `what` that may be pruned passed `retention_ms`, in
    /// seconds; 0 when none is waiting. Rows kept for a reason (a skip alerting has not looked
    /// at, an alert with a delivery to send) do not count.
    pub async fn prune_lag(&self, what: Prunable, retention_ms: i64) -> Result<f64> {
        let statement = match what {
            Prunable::Events => sqlx::query_scalar!(
                "select min(at) from events where task_id is null
                     and at < now() - $1::bigint * interval '1 millisecond'",
                retention_ms
            ),
            Prunable::Messages => sqlx::query_scalar!(
                "select min(received_at) from messages
                     where received_at < now() - $1::bigint * interval '1 millisecond'",
                retention_ms
            ),
            Prunable::SkippedRuns => sqlx::query_scalar!(
                "select min(recorded_at) from skipped_runs
                     where recorded_at < now() - $1::bigint * interval '1 millisecond' and noticed",
                retention_ms
            ),
            Prunable::Alerts => sqlx::query_scalar!(
                "select min(a.resolved_at) from alerts a where a.state = 'resolved'
                     and a.resolved_at < now() - $1::bigint * interval '1 millisecond'
                     and not exists (select 1 from alert_deliveries d
                                     where d.alert_id = a.id and d.state = 'pending')",
                retention_ms
            ),
            Prunable::AlertDeliveries => sqlx::query_scalar!(
                "select min(created_at) from alert_deliveries where state <> 'pending'
                     and created_at < now() - $1::bigint * interval '1 millisecond'",
                retention_ms
            ),
            Prunable::AuditLog => sqlx::query_scalar!(
                "select min(at) from audit_log
                     where at < now() - $1::bigint * interval '1 millisecond'",
                retention_ms
            ),
        };
        let oldest = statement.fetch_one(&self.pool).await?;
        let Some(oldest) = oldest else {
            return Ok(0.0);
        };
        let now = sqlx::query_scalar!(r#"select now() as "now!""#)
            .fetch_one(&self.pool)
            .await?;
        let passed = now - chrono::Duration::milliseconds(retention_ms) - oldest;
        #[allow(clippy::cast_precision_loss)]
        Ok((passed.num_milliseconds().max(0) as f64) / 1000.0)
    }

    /// The approximate rows and the bytes (indexes and TOAST included) of each table that grows,
    /// from the catalogue and the statistics collector: no table is scanned.
    pub async fn table_sizes(&self) -> Result<Vec<TableSize>> {
        let names: Vec<String> = SIZED_TABLES.iter().map(|s| (*s).to_string()).collect();
        let rows = sqlx::query!(
            r#"select c.relname::text as "table!",
                      coalesce(s.n_live_tup, greatest(c.reltuples, 0)::bigint) as "rows!",
                      pg_total_relation_size(c.oid) as "bytes!"
               from unnest($1::text[]) with ordinality as n(name, ord)
               join pg_class c on c.relname = n.name and c.relkind = 'r'
                    and c.relnamespace = (select oid from pg_namespace where nspname = current_schema())
               left join pg_stat_user_tables s on s.relid = c.oid
               order by n.ord"#,
            &names,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| TableSize {
                table: r.table,
                rows: r.rows,
                bytes: r.bytes,
            })
            .collect())
    }
}
