//! Pacer's PostgreSQL store: every SQL statement Pacer runs lives here, checked at compile time.
//! Times that matter (leases, due times, deadlines) are always taken from the database clock.

mod alerts;
mod audit;
pub mod batch;
mod claims;
mod cluster;
mod error;
mod events;
mod firing;
mod jobs;
mod messages;
mod operations;
mod tasks;
mod triggers;

use sqlx::PgPool;
use sqlx::migrate::Migrator;

pub use alerts::{
    ALERTS_CHANNEL, Alert, AlertChange, AlertFilter, AlertTx, ClaimedDelivery, Delivery,
    DeliveryAttempt, DeliveryOutcome, DeliveryState, NewAlert, NewDelivery, Raised, SkipNotice,
    StreakNotice, TaskNotice,
};
pub use audit::{AuditEntry, NewAuditEntry};
pub use claims::{ClaimedTask, Outcome, ReleasedClaim};
pub use cluster::{LEADER_CHANNEL, Lease, Node, Tenure};
pub use error::{Error, Result};
pub use events::{
    Event, EventBatch, EventCursor, EventFilter, InvalidEventCursor, NewEvent, append_event,
};
pub use firing::{Fired, Swept};
pub use jobs::{DeletedJob, Job, PutJob};
pub use messages::{Ingested, MessageFilter, Route, StoredMessage};
pub use operations::{CancelNotice, JobStats, Released, RetryCandidate, TaskBrief};
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

/// A handle on the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Wraps a connection pool.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// How the connection pool is used right now.
    pub fn pool_stats(&self) -> PoolStats {
        let size = self.pool.size();
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(size);
        PoolStats {
            idle,
            in_use: size.saturating_sub(idle),
            max: self.pool.options().get_max_connections(),
        }
    }

    /// Open tasks by state (`pending`, `processing`), both always present.
    pub async fn open_task_counts(&self) -> Result<Vec<(&'static str, i64)>> {
        let rows = sqlx::query!(
            r#"select state as "state!", count(*) as "count!" from tasks
               where next_dispatch_at is not null group by state"#
        )
        .fetch_all(&self.pool)
        .await?;
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

/// Makes the rest of the caller's transaction plan each statement for its parameters. A batched
/// statement joins arrays of unknown length against tables: a generic plan, cached once and
/// reused, may have been chosen while the table was small and scan it whole ever after.
pub(crate) async fn plan_per_execution(tx: &mut sqlx::PgConnection) -> Result<()> {
    sqlx::query!("set local plan_cache_mode = force_custom_plan")
        .execute(&mut *tx)
        .await?;
    Ok(())
}
