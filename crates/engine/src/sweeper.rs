//! The sweep, a leader duty: hands the claims of dead or stopped nodes back at once, starts
//! tasks queued under `buffer_one` when the task they waited for has finished, keeps the
//! open-task gauges current (pruning is a duty of its own, in `pruning`).

use std::time::Duration;

use pacer_domain::Span;
use pacer_store::Store;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Result;

/// How often the leader counts open tasks for the `pacer_tasks_open` gauge.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// Sweeps every interval while this node leads.
pub(crate) struct Sweeper {
    pub(crate) store: Store,
    pub(crate) dead_after: Span,
    pub(crate) interval: Duration,
}

impl Sweeper {
    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gauges_due = Instant::now();
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
        }
    }
}
