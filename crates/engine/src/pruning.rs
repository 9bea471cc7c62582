//! Pruning, a leader duty: every `interval` the leader deletes what is past its retention, table by
//! table, in batches of at most `batch_size` rows, each batch one short statement in a transaction
//! of its own fenced by the leader's term, until a table has nothing left or the pass's time
//! budget is spent (the next pass carries on). After each batch it rests in proportion to how
//! long the batch took, so that its statements take at most `share` of the time: on a busy
//! database batches take longer and pruning slows with them, leaving the database to the work.
//! It also keeps `pacer_rows`, `pacer_bytes` and `pacer_prune_lag_seconds` current.

use std::time::Duration;

use pacer_domain::Span;
use pacer_store::{Prunable, Store};
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// How long each kind of row is kept, and how the leader prunes (`retention.*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Finished tasks, with their attempts, events and a run's children; a job's `retention`
    /// overrides it.
    pub tasks: Span,
    /// Skipped occurrences.
    pub skips: Span,
    /// Resolved alerts with their deliveries, and ended alert deliveries.
    pub alerts: Span,
    /// The audit log.
    pub audit: Span,
    /// How often the leader prunes.
    pub interval: Span,
    /// Most rows (for tasks: top-level tasks, each with its children) deleted per statement.
    pub batch_size: i64,
    /// Longest a pass prunes before it yields to the next one.
    pub budget: Span,
    /// Most of the time pruning's statements may take, 0.01–1: after a batch that took `t` the
    /// leader rests `t × (1 − share) / share` before the next (1: no rest).
    pub share: f64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            tasks: Span::from_secs(30 * 86_400),
            skips: Span::from_secs(30 * 86_400),
            alerts: Span::from_secs(90 * 86_400),
            audit: Span::from_secs(365 * 86_400),
            interval: Span::from_secs(60),
            batch_size: 1000,
            budget: Span::from_secs(10),
            share: 0.5,
        }
    }
}

/// The leader's pruning under one term.
pub(crate) struct Pruning {
    pub(crate) store: Store,
    pub(crate) node_id: String,
    pub(crate) term: i64,
    pub(crate) settings: RetentionSettings,
    /// Events without a task older than this go (a task's events go with the task).
    pub(crate) event_retention: Span,
    pub(crate) message_retention: Span,
}

/// How often the table sizes are read for `pacer_rows` and `pacer_bytes`.
const SIZES_INTERVAL: Duration = Duration::from_secs(15);
/// The rest between a pass cut short by its budget and the next.
const CATCH_UP_REST: Duration = Duration::from_secs(1);

impl Pruning {
    /// Runs until cancelled; returns [`Error::Fenced`] when the term no longer holds the lease.
    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let interval = self.settings.interval.as_duration();
        let mut prune_due = Instant::now() + interval.min(Duration::from_secs(5));
        let mut sizes_due = Instant::now();
        loop {
            let next = prune_due.min(sizes_due);
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep_until(next) => {}
            }
            if Instant::now() >= sizes_due {
                sizes_due = Instant::now() + SIZES_INTERVAL;
                self.record_sizes().await;
            }
            if Instant::now() >= prune_due {
                let caught_up = self.pass(&shutdown).await?;
                prune_due = Instant::now()
                    + if caught_up {
                        interval
                    } else {
                        CATCH_UP_REST.min(interval)
                    };
            }
        }
    }

    /// One pass: tasks first (most rows), then the rest, each table until it has nothing left
    /// past its retention or the budget is spent; then the lag of every table. True when every
    /// table was left with nothing past its retention.
    async fn pass(&self, shutdown: &CancellationToken) -> Result<bool> {
        let mut caught_up = true;
        let deadline = Instant::now() + self.settings.budget.as_duration();
        let batch = self.settings.batch_size;
        let tasks_ms = self.settings.tasks.as_millis();
        let full = u64::try_from(batch).unwrap_or(u64::MAX);
        let mut pruned = 0;
        // Whether the table was left with nothing past its retention (a failure counts as done:
        // the next pass tries again after the whole interval).
        let mut done = false;
        while !shutdown.is_cancelled() && Instant::now() < deadline {
            let started = Instant::now();
            match self
                .store
                .prune_tasks(&self.node_id, self.term, tasks_ms, batch)
                .await
            {
                Ok(Some(gone)) => {
                    self.rest_after(started, shutdown).await;
                    for (table, rows) in [
                        ("tasks", gone.tasks),
                        ("task_attempts", gone.attempts),
                        ("events", gone.events),
                    ] {
                        metrics::counter!("pacer_pruned_rows_total", "table" => table)
                            .increment(rows);
                    }
                    pruned += gone.tasks;
                    if gone.roots < full {
                        done = true;
                        break;
                    }
                }
                Ok(None) => return Err(Error::Fenced),
                Err(error) => {
                    tracing::warn!(%error, table = "tasks", "pruning failed");
                    done = true;
                    break;
                }
            }
        }
        caught_up &= done;
        if pruned > 0 {
            tracing::info!(pruned, table = "tasks", "pruned past the retention");
        }
        for what in Prunable::ALL {
            let retention = self.retention(what);
            let mut pruned = 0;
            let mut done = false;
            // Each table gets at least one batch a pass, however long the tasks took.
            let mut first = true;
            while !shutdown.is_cancelled() && (first || Instant::now() < deadline) {
                first = false;
                let started = Instant::now();
                match self
                    .store
                    .prune(&self.node_id, self.term, what, retention, batch)
                    .await
                {
                    Ok(Some(deleted)) => {
                        self.rest_after(started, shutdown).await;
                        metrics::counter!("pacer_pruned_rows_total", "table" => what.table())
                            .increment(deleted);
                        pruned += deleted;
                        if deleted < full {
                            done = true;
                            break;
                        }
                    }
                    Ok(None) => return Err(Error::Fenced),
                    Err(error) => {
                        tracing::warn!(%error, table = what.table(), "pruning failed");
                        done = true;
                        break;
                    }
                }
            }
            caught_up &= done;
            if pruned > 0 {
                tracing::info!(pruned, table = what.table(), "pruned past the retention");
            }
        }
        self.record_lag().await;
        Ok(caught_up)
    }

    /// Records a batch that began at `started` and rests for the rest of its share (see
    /// [`rest_for`]), or until shutdown.
    async fn rest_after(&self, started: Instant, shutdown: &CancellationToken) {
        let took = started.elapsed();
        metrics::histogram!("pacer_prune_batch_seconds").record(took.as_secs_f64());
        let rest = rest_for(took, self.settings.share);
        if !rest.is_zero() {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(rest) => {}
            }
        }
    }

    fn retention(&self, what: Prunable) -> i64 {
        match what {
            Prunable::Events => self.event_retention.as_millis(),
            Prunable::Messages => self.message_retention.as_millis(),
            Prunable::SkippedRuns => self.settings.skips.as_millis(),
            Prunable::Alerts | Prunable::AlertDeliveries => self.settings.alerts.as_millis(),
            Prunable::AuditLog => self.settings.audit.as_millis(),
        }
    }

    /// `pacer_prune_lag_seconds`: how long ago the oldest row still waiting to be pruned passed
    /// its retention, per table.
    async fn record_lag(&self) {
        match self
            .store
            .tasks_prune_lag(self.settings.tasks.as_millis())
            .await
        {
            Ok(lag) => metrics::gauge!("pacer_prune_lag_seconds", "table" => "tasks").set(lag),
            Err(error) => tracing::warn!(%error, table = "tasks", "reading the pruning lag failed"),
        }
        for what in Prunable::ALL {
            match self.store.prune_lag(what, self.retention(what)).await {
                Ok(lag) => {
                    metrics::gauge!("pacer_prune_lag_seconds", "table" => what.table()).set(lag);
                }
                Err(error) => {
                    tracing::warn!(%error, table = what.table(), "reading the pruning lag failed");
                }
            }
        }
    }

    /// `pacer_rows` and `pacer_bytes` per table, from the catalogue and statistics (no scan).
    async fn record_sizes(&self) {
        match self.store.table_sizes().await {
            Ok(sizes) => {
                for size in sizes {
                    #[allow(clippy::cast_precision_loss)]
                    {
                        metrics::gauge!("pacer_rows", "table" => size.table.clone())
                            .set(size.rows as f64);
                        metrics::gauge!("pacer_bytes", "table" => size.table)
                            .set(size.bytes as f64);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "reading the table sizes failed"),
        }
    }
}

/// How long to rest after a batch that took `took`, for pruning's statements to take `share` of
/// the time: a batch slowed by a busy database is followed by a longer rest.
fn rest_for(took: Duration, share: f64) -> Duration {
    if share >= 1.0 || !share.is_finite() || share <= 0.0 {
        return Duration::ZERO;
    }
    took.mul_f64((1.0 - share) / share)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_rests_in_proportion_to_how_long_its_batch_took() {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let batch = Duration::from_millis(200);
        assert_eq!(rest_for(batch, 1.0), Duration::ZERO);
        assert!((ms(rest_for(batch, 0.5)) - 200.0).abs() < 0.001);
        assert!((ms(rest_for(batch, 0.25)) - 600.0).abs() < 0.001);
        // A batch twice as slow (a busy database) rests twice as long.
        assert!((ms(rest_for(batch * 2, 0.25)) - 1200.0).abs() < 0.001);
    }
}
