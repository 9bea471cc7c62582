//! The sweep, a leader duty: hands the claims of dead or stopped nodes back at once, starts
//! tasks queued under `buffer_one` when the task they waited for has finished, keeps the
//! open-task gauges current, and prunes the event log and upstream messages past their retention.

use std::time::Duration;

use pacer_domain::Span;
use pacer_store::Store;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Result;

/// How often the leader counts open tasks for the `pacer_tasks_open` gauge.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);
/// How often the leader prunes the event log, and the most events deleted per statement (so no
/// statement holds many row locks or runs long).
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
const PRUNE_BATCH: i64 = 10_000;

/// Sweeps every interval while this node leads.
pub(crate) struct Sweeper {
    pub(crate) store: Store,
    pub(crate) dead_after: Span,
    pub(crate) interval: Duration,
    pub(crate) event_retention: Span,
    pub(crate) message_retention: Span,
}

impl Sweeper {
    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gauges_due = Instant::now();
        let mut prune_due = Instant::now() + PRUNE_INTERVAL;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = ticks.tick() => {}
            }
            match self.store.sweep(self.dead_after.as_millis()).await {
                Ok(swept) if swept.orphaned_claims + swept.released > 0 => {
                    tracing::info!(
                        orphaned_claims = swept.orphaned_claims,
                        released = swept.released,
                        "swept"
                    );
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "sweeping failed"),
            }
            if Instant::now() >= gauges_due {
                gauges_due = Instant::now() + GAUGE_INTERVAL;
                match self.store.open_task_counts().await {
                    Ok(counts) => {
                        for (state, count) in counts {
                            #[allow(clippy::cast_precision_loss)]
                            metrics::gauge!("pacer_tasks_open", "state" => state).set(count as f64);
                        }
                    }
                    Err(error) => tracing::warn!(%error, "counting open tasks failed"),
                }
            }
            if Instant::now() >= prune_due {
                prune_due = Instant::now() + PRUNE_INTERVAL;
                self.prune("events", self.event_retention, &shutdown).await;
                self.prune("messages", self.message_retention, &shutdown)
                    .await;
            }
        }
    }
}

impl Sweeper {
    /// Deletes the events or messages past `retention`, a batch at a time, until none is left
    /// or shutdown.
    async fn prune(&self, what: &'static str, retention: Span, shutdown: &CancellationToken) {
        let retention = retention.as_millis();
        let mut pruned = 0;
        while !shutdown.is_cancelled() {
            let batch = match what {
                "events" => self.store.prune_events(retention, PRUNE_BATCH).await,
                _ => self.store.prune_messages(retention, PRUNE_BATCH).await,
            };
            match batch {
                Ok(deleted) => {
                    pruned += deleted;
                    if deleted < u64::try_from(PRUNE_BATCH).unwrap_or(u64::MAX) {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, what, "pruning failed");
                    break;
                }
            }
        }
        if pruned > 0 {
            tracing::info!(pruned, what, "pruned past the retention");
        }
    }
}
