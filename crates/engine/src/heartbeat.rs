//! The heartbeat, on every node: upserts this node's row on the database clock, and marks it
//! stopped on a clean shutdown so the leader sweeps nothing and raises nothing for it.

use std::time::Duration;

use pacer_store::Store;
use tokio_util::sync::CancellationToken;

use crate::Result;

/// Heartbeats until shut down.
pub struct Heartbeat {
    pub store: Store,
    pub node_id: String,
    /// Where this node serves, shown in the cluster view.
    pub address: String,
    pub interval: Duration,
}

impl Heartbeat {
    /// Beats every interval; a failed beat is logged and retried at the next one.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let version = env!("CARGO_PKG_VERSION");
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {
                    if let Err(error) = self.store.heartbeat(&self.node_id, &self.address, version).await {
                        tracing::warn!(%error, "heartbeat failed");
                    }
                }
            }
        }
        if let Err(error) = self.store.node_stopped(&self.node_id).await {
            tracing::warn!(%error, "could not record this node's clean stop");
        }
        Ok(())
    }
}
