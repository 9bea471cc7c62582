//! Pacer's PostgreSQL store: every SQL statement Pacer runs lives here, checked at compile time.
//! Times that matter (leases, due times, deadlines) are always taken from the database clock.

mod alerts;
mod audit;
mod backfill;
pub mod batch;
mod calendars;
mod claims;
mod cluster;
mod concurrency;
mod error;
mod events;
mod firing;
mod jobs;
mod messages;
mod notices;
mod operations;
mod retention;
mod runs;
mod subscriptions;
mod tasks;
mod triggers;
mod withdrawal;

use std::sync::{Arc, Mutex};

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

pub use alerts::{
    ALERTS_CHANNEL, Alert, AlertChange, AlertFilter, AlertTx, ClaimedDelivery, Delivery,
    DeliveryAttempt, DeliveryOutcome, DeliveryState, NewAlert, NewDelivery, Raised, SkipNotice,
    StaleNotice, StreakNotice, TaskNotice,
};
pub use audit::{AuditEntry, NewAuditEntry};
pub use backfill::Backfilled;
pub use calendars::{Calendar, DeleteCalendar, PutCalendar};
pub use claims::{ChildWork, ClaimedTask, Outcome, Recorded, ReleasedClaim};
pub use cluster::{LEADER_CHANNEL, Lease, Node, Tenure};
pub use concurrency::{Admitted, Group, SlotHolder, WaitingFor};
pub use error::{Error, Result};
pub use events::{
    Event, EventBatch, EventCursor, EventFilter, InvalidEventCursor, NewEvent, append_event,
};
pub use firing::{Fired, Swept};
pub use jobs::{DeletedJob, Job, JobWorkload, PutJob};
pub use messages::{Ingested, MessageFilter, Route, StoredMessage};
pub use notices::{ClaimedNotice, NOTICES_CHANNEL, Notice};
pub use operations::{CancelNotice, JobFingerprint, JobStats, Released, RetryCandidate, TaskBrief};
pub use retention::{Prunable, PrunedTasks, SIZED_TABLES, TableSize};
pub use runs::{RETRY_PLAN_NAMES, RetryStep, RunChild, RunView, retry_errors_key};
pub use subscriptions::{
    LAG_COUNT_LIMIT, Lag, Subscription, filter as subscription_filter, subscription_cursor,
};
pub use tasks::{
    Attempt, CreatedTask, KeptTask, NewTask, Origin, ReportOutcome, Reporting, Task, TaskCreation,
    TaskFilter, TaskReport,
};
pub use triggers::{SkippedRun, Trigger};

/// The embedded migrations, applied by `pacer migrate` and at start-up.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// The channel dispatchers listen on to hear that a task became due now.
pub const TASKS_DUE_CHANNEL: &str = "pacer_tasks_due";

/// The channel cancel notifiers listen on to hear that a cancelled task's downstream is to be told.
pub const CANCELS_CHANNEL: &str = "pacer_cancels";

/// The channel the firing loop listens on to hear that triggers changed.
pub const TRIGGERS_CHANNEL: &str = "pacer_triggers";

/// How the connections of the batched writers plan. Each batched write is one statement that
/// joins arrays against tables by their keys. Planning it anew on every execution costs more than
/// running it, so it is planned once per connection; and since that one plan may be made while the
/// tables are still small, where scanning one whole is cheapest, it is made with whole-table scans
/// and the joins that need them off, so it looks up rows by index however large the tables grow.
/// A plan that had to keep a disabled node anyway would carry the planner's penalty in its cost,
/// far above the threshold for compiling it to machine code at every execution (hundreds of
/// milliseconds for a statement that runs in one): JIT is off on these connections.
const BATCH_PLANNING: [(&str, &str); 5] = [
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_seqscan", "off"),
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
    ("jit", "off"),
];

/// How the leader's open-task count plans (see [`Store::open_task_counts`]): with whole-table
/// scans, hash and merge joins and sorts off, in a read-only transaction of its own, it walks the
/// index of open tasks by due time however large `tasks` grows, even under a plan made on an empty
/// table. A plan that still scans a table carries the planner's penalty in its cost, far above the
/// threshold for compiling a plan to machine code, so JIT is off too. Only a statement that
/// changes nothing may run under these settings: a write fires triggers, and the plans their
/// queries make here would be kept by the connection, penalty and all, for every later write.
const GAUGE_PLANNING: &str = "set local enable_seqscan = off; \
     set local enable_hashjoin = off; set local enable_mergejoin = off; \
     set local enable_sort = off; set local jit = off";

/// Connections kept for batched writes when none are set aside by [`Store::with_batch_connections`].
const DEFAULT_BATCH_CONNECTIONS: u32 = 2;

/// A handle on the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    /// Connections of the batched writers (task creation, callbacks, dispatch outcomes): each
    /// batch is one statement in a transaction of its own, planned as `BATCH_PLANNING` says.
    batches: PgPool,
    /// The inputs of runs' steps this node dispatches children of (see `claims.rs`).
    inputs: Arc<Mutex<claims::InputsCache>>,
}

impl Store {
    /// Wraps a connection pool; batched writes get up to two more connections like its own.
    pub fn new(pool: PgPool) -> Self {
        Self::with_batch_connections(pool, DEFAULT_BATCH_CONNECTIONS)
    }

    /// Wraps a connection pool; batched writes get up to `connections` more (at least one),
    /// opened with the same options as the pool's.
    pub fn with_batch_connections(pool: PgPool, connections: u32) -> Self {
        let options = (*pool.connect_options()).clone().options(BATCH_PLANNING);
        let batches = PgPoolOptions::new()
            .max_connections(connections.max(1))
            .acquire_timeout(pool.options().get_acquire_timeout())
            .connect_lazy_with(options);
        Self {
            pool,
            batches,
            inputs: Arc::default(),
        }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes every connection, waiting for those in use to come back.
    pub async fn close(&self) {
        tokio::join!(self.pool.close(), self.batches.close());
    }

    /// How the connections are used right now (the batched writers' included).
    pub fn pool_stats(&self) -> PoolStats {
        let mut stats = PoolStats {
            idle: 0,
            in_use: 0,
            max: 0,
        };
        for pool in [&self.pool, &self.batches] {
            let size = pool.size();
            let idle = u32::try_from(pool.num_idle()).unwrap_or(size);
            stats.idle += idle;
            stats.in_use += size.saturating_sub(idle);
            stats.max += pool.options().get_max_connections();
        }
        stats
    }

    /// Open tasks by state (`pending`, `processing`), both always present. Read through the
    /// index of open tasks by due time, planned as `GAUGE_PLANNING` says: the leader counts
    /// every few seconds, and a plan made on an empty table would read all of `tasks` each time.
    pub async fn open_task_counts(&self) -> Result<Vec<(&'static str, i64)>> {
        let mut tx = self.pool.begin().await?;
        sqlx::raw_sql(GAUGE_PLANNING).execute(&mut *tx).await?;
        let rows = sqlx::query_file!("src/sql/open_task_counts.sql")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(["pending", "processing"]
            .into_iter()
            .map(|state| {
                (
                    state,
                    rows.iter()
                        .find(|r| r.state == state)
                        .map_or(0, |r| r.count),
                )
            })
            .collect())
    }

    /// Applies any migration not yet applied. Migrations this release does not know (applied by
    /// a newer one) are left alone, so nodes of the previous release keep starting during a
    /// rolling upgrade and after a rollback.
    pub async fn migrate(&self) -> Result<()> {
        let mut migrator = sqlx::migrate!("../../migrations");
        migrator.set_ignore_missing(true);
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// True when the database answers and every embedded migration has been applied.
    pub async fn is_ready(&self) -> Result<bool> {
        let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or_default();
        // The migrator's own table, so not described by the compile-time checked queries.
        let applied: i64 = sqlx::query_scalar(
            "select coalesce(max(version), 0) from _sqlx_migrations where success",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(applied >= latest)
    }

    /// Opens a listener subscribed to `channels`, on a connection of its own.
    pub async fn listen(&self, channels: &[&str]) -> Result<Listener> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen_all(channels.iter().copied()).await?;
        Ok(Listener(listener))
    }
}

/// Connection pool usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub idle: u32,
    pub in_use: u32,
    pub max: u32,
}

/// A LISTEN subscription on its own connection.
#[derive(Debug)]
pub struct Listener(sqlx::postgres::PgListener);

impl Listener {
    /// Waits for the next notification. Cancel-safe. An error means the connection was lost.
    pub async fn recv(&mut self) -> Result<()> {
        self.0.recv().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use super::*;

    /// The batched statements, each with how many parameters it takes.
    const BATCHED: [(&str, &str); 3] = [
        ("insert_tasks", include_str!("sql/insert_tasks.sql")),
        ("finish_tasks", include_str!("sql/finish_tasks.sql")),
        ("record_outcomes", include_str!("sql/record_outcomes.sql")),
    ];

    fn parameters(sql: &str) -> usize {
        let mut highest = 0;
        let mut rest = sql;
        while let Some(at) = rest.find('$') {
            rest = &rest[at + 1..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            highest = highest.max(digits.parse().unwrap_or(0));
        }
        highest
    }

    /// The indexes the batched statements may read: each finds rows by their key (or, under a
    /// limit, a job's latest success), never a range of rows that grows with the tables.
    const KEY_INDEXES: [&str; 8] = [
        "tasks_pkey",
        "tasks_job_idempotency_key",
        "tasks_job_last_success_idx",
        "jobs_pkey",
        "task_attempts_pkey",
        "dispatch_streaks_pkey",
        "job_fingerprints_pkey",
        "task_runs_pkey",
    ];

    /// The plan `sql`, prepared on `conn` as `name`, keeps (as `explain` prints it).
    async fn plan_of(conn: &mut sqlx::PgConnection, name: &str, sql: &str) -> String {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("prepare {name} as {sql}")))
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{name} does not prepare: {e}"));
        let arguments = match parameters(sql) {
            0 => String::new(),
            n => format!("({})", vec!["null"; n].join(", ")),
        };
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "explain execute {name}{arguments}"
        )))
        .fetch_all(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{name} does not explain: {e}"));
        plan.join("\n")
    }

    /// Whether a nested loop in `plan` (as `explain` prints it) has no table on either side:
    /// it compares each of the batch's rows with each of another set of them (a CTE, or the
    /// unnested arguments), which costs the square of the batch's size.
    fn joins_two_sets(plan: &str) -> bool {
        let lines: Vec<&str> = plan.lines().collect();
        let depth = |line: &str| line.find("->").unwrap_or(0);
        lines.iter().enumerate().any(|(i, line)| {
            if !line.contains("Nested Loop") {
                return false;
            }
            let at = depth(line);
            let children: Vec<&&str> = lines[i + 1..]
                .iter()
                .take_while(|l| !l.contains("->") || depth(l) > at)
                .filter(|l| l.contains("->") && depth(l) == at + 6)
                .collect();
            children.len() == 2
                && children
                    .iter()
                    .all(|c| c.contains("CTE Scan on") || c.contains("Function Scan on"))
        })
    }

    /// The statements a node runs many times a second on its general connections (and the lock
    /// of an ending's runs on either kind), each with what its plan must not do.
    const LOOKS: [(&str, &str, &[&str]); 5] = [
        (
            "next_due_in",
            include_str!("sql/next_due_in.sql"),
            &["Seq Scan", "Sort", "tasks_waiting_by_job_idx"],
        ),
        (
            "step_tally",
            include_str!("sql/step_tally.sql"),
            &[
                "Seq Scan",
                "Sort",
                "tasks_run_child_key",
                "tasks_job_outcome_idx",
            ],
        ),
        (
            "lock_runs",
            include_str!("sql/lock_runs.sql"),
            &["Seq Scan", "Hash Join", "Merge Join"],
        ),
        (
            "alert_work_due",
            include_str!("sql/alert_work_due.sql"),
            &["Seq Scan on tasks", "tasks_state_idx"],
        ),
        (
            "sweep_waits_released",
            include_str!("sql/sweep_waits_released.sql"),
            &["Seq Scan", "Materialize"],
        ),
    ];

    /// A connection keeps the generic plan of a statement it runs often, and may make it while
    /// `tasks` is still empty and has no statistics; the looks are written so that even that
    /// plan walks the index meant for them, in order, instead of a whole table or step.
    #[sqlx::test(migrator = "MIGRATOR")]
    async fn frequent_looks_keep_plans_that_walk_their_index(pool: PgPool) {
        let mut conn = pool.acquire().await.expect("a connection");
        sqlx::raw_sql("set plan_cache_mode = force_generic_plan")
            .execute(&mut *conn)
            .await
            .expect("generic plans");
        for (name, sql, forbidden) in LOOKS {
            let plan = plan_of(&mut conn, name, sql).await;
            for what in forbidden {
                assert!(!plan.contains(what), "{name} plans {what}:\n{plan}");
            }
        }
        let plan = plan_of(
            &mut conn,
            "sweep_orphaned_claims",
            include_str!("sql/sweep_orphaned_claims.sql"),
        )
        .await;
        assert!(
            plan.contains("One-Time Filter"),
            "the orphaned-claims look reads tasks even with no node dead:\n{plan}"
        );
        let mut tx = conn.begin().await.expect("a transaction");
        sqlx::raw_sql(GAUGE_PLANNING)
            .execute(&mut *tx)
            .await
            .expect("the gauge's planning");
        let jit: String = sqlx::query_scalar("select current_setting('jit')")
            .fetch_one(&mut *tx)
            .await
            .expect("the jit setting");
        assert_eq!(
            jit, "off",
            "the gauge's plan may carry the disabled scans' penalty: JIT would compile it"
        );
        let plan = plan_of(
            &mut tx,
            "open_task_counts",
            include_str!("sql/open_task_counts.sql"),
        )
        .await;
        for what in ["Seq Scan", "tasks_state_idx"] {
            assert!(
                !plan.contains(what),
                "open_task_counts plans {what}:\n{plan}"
            );
        }
        assert!(
            plan.contains("tasks_due_idx"),
            "open_task_counts does not walk tasks_due_idx:\n{plan}"
        );
    }

    /// On an empty database, where a whole-table scan is the cheapest plan there is, the one plan
    /// each batched statement keeps still finds its rows by their keys.
    #[sqlx::test(migrator = "MIGRATOR")]
    async fn batched_statements_keep_plans_that_look_rows_up_by_key(pool: PgPool) {
        let store = Store::new(pool);
        let mut conn = store.batches.acquire().await.expect("a batch connection");
        for (name, sql) in BATCHED {
            let plan = plan_of(&mut conn, name, sql).await;
            for whole in ["Seq Scan", "Hash Join", "Merge Join"] {
                assert!(!plan.contains(whole), "{name} plans a {whole}:\n{plan}");
            }
            // Task creation still joins its (at most 64) rows to the rows it inserted.
            assert!(
                name == "insert_tasks" || !joins_two_sets(&plan),
                "{name} joins two sets of the batch's rows in a nested loop:\n{plan}"
            );
            let mut indexes = plan
                .split(" using ")
                .skip(1)
                .map(|rest| rest.split_whitespace().next().unwrap_or_default())
                .chain(
                    plan.split("Bitmap Index Scan on ")
                        .skip(1)
                        .map(|rest| rest.split_whitespace().next().unwrap_or_default()),
                )
                .peekable();
            assert!(indexes.peek().is_some(), "{name} uses no index:\n{plan}");
            for index in indexes {
                assert!(
                    KEY_INDEXES.contains(&index),
                    "{name} reads the index {index}, not by key:\n{plan}"
                );
            }
        }
    }
}
