//! The heartbeat, on every node: upserts this node's row on the database clock, and marks it
//! stopped on a clean shutdown so the leader sweeps nothing and raises nothing for it. It also
//! records this node's RabbitMQ consumer state, when that changes, for the cluster view.

use std::time::Duration;

use pacer_domain::ConsumerStatus;
use pacer_store::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Result;

/// Heartbeats until shut down.
pub struct Heartbeat {
    pub store: Store,
    pub node_id: String,
    /// Where this node serves, shown in the cluster view.
    pub address: String,
    pub interval: Duration,
    /// This node's RabbitMQ consumer, when it runs one.
    pub consumer: Option<watch::Receiver<ConsumerStatus>>,
}

impl Heartbeat {
    /// Beats every interval; a failed beat is logged and retried at the next one.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let version = env!("CARGO_PKG_VERSION");
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_beat = tokio::time::Instant::now();
        let mut recorded: Option<ConsumerStatus> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {
                    match self.store.heartbeat(&self.node_id, &self.address, version).await {
                        Ok(()) => {
                            last_beat = tokio::time::Instant::now();
                            self.record_consumer(&mut recorded).await;
                        }
                        Err(error) => tracing::warn!(%error, "heartbeat failed"),
                    }
                    metrics::gauge!("pacer_heartbeat_age_seconds").set(last_beat.elapsed().as_secs_f64());
                    let pool = self.store.pool_stats();
                    metrics::gauge!("pacer_db_pool_connections", "state" => "idle").set(f64::from(pool.idle));
                    metrics::gauge!("pacer_db_pool_connections", "state" => "in_use").set(f64::from(pool.in_use));
                    metrics::gauge!("pacer_db_pool_max_connections").set(f64::from(pool.max));
                }
            }
        }
        if let Err(error) = self.store.node_stopped(&self.node_id).await {
            tracing::warn!(%error, "could not record this node's clean stop");
        }
        Ok(())
    }

    /// Writes the consumer's state when it differs from what was last written, so an idle node
    /// writes nothing more than its heartbeat.
    async fn record_consumer(&self, recorded: &mut Option<ConsumerStatus>) {
        let Some(consumer) = &self.consumer else {
            return;
        };
        let current = consumer.borrow().clone();
        if recorded.as_ref() == Some(&current) {
            return;
        }
        let Ok(value) = serde_json::to_value(&current) else {
            return;
        };
        match self.store.record_consumer(&self.node_id, &value).await {
            Ok(true) => *recorded = Some(current),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "recording the consumer's state failed"),
        }
    }
}
