//! The loop of the outboxes every node works (alert deliveries, completion notices): claim a
//! batch of due items under a lease (`for update skip locked`), send them concurrently, record
//! each, then sleep until the next is due, a notification on the outbox's channel arrives, or the
//! poll interval passes. A full batch is followed at once by the next.

use std::time::Duration;

use pacer_store::Store;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::wakeup::Wakeups;

/// One outbox: how its items are claimed, sent and recorded, and when the next is due.
pub(crate) trait Outbox {
    type Item;
    /// What is claimed, for the log: `alert deliveries`, `task notices`.
    const WHAT: &'static str;
    /// Claims at most `limit` due items for `lease_ms`.
    async fn claim(&self, limit: i64, lease_ms: i64) -> pacer_store::Result<Vec<Self::Item>>;
    /// How long until the next item falls due, if one is waiting.
    async fn next_due_in(&self) -> pacer_store::Result<Option<Duration>>;
    /// Sends the claimed items and records how each went.
    async fn send_all(&self, claimed: Vec<Self::Item>);
}

/// How an outbox's loop runs.
pub(crate) struct Rhythm {
    /// The channel whose notifications say an item was queued.
    pub(crate) channels: &'static [&'static str],
    /// Longest sleep between looks when no notification arrives.
    pub(crate) poll: Duration,
    pub(crate) batch_size: usize,
    /// How long one request may take: the lease outlasts it with room to record its outcome.
    pub(crate) timeout: Duration,
}

/// Works `outbox` until `shutdown`; items in flight then finish (each bounded by the timeout).
pub(crate) async fn run<O: Outbox>(
    outbox: &O,
    store: Store,
    rhythm: &Rhythm,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut wakeups = Wakeups::new(store, rhythm.channels);
    let limit = i64::try_from(rhythm.batch_size).unwrap_or(i64::MAX);
    let lease_ms = i64::try_from(rhythm.timeout.as_millis()).unwrap_or(i64::MAX) + 10_000;
    loop {
        let sleep = match outbox.claim(limit, lease_ms).await {
            Ok(claimed) if !claimed.is_empty() => {
                let full = claimed.len() == rhythm.batch_size;
                outbox.send_all(claimed).await;
                if full && !shutdown.is_cancelled() {
                    continue;
                }
                until_next(outbox, rhythm.poll).await
            }
            Ok(_) => until_next(outbox, rhythm.poll).await,
            Err(error) => {
                tracing::warn!(%error, "claiming {} failed; retrying", O::WHAT);
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = wakeups.next() => {}
            () = tokio::time::sleep_until(Instant::now() + sleep) => {}
        }
    }
}

async fn until_next<O: Outbox>(outbox: &O, poll: Duration) -> Duration {
    match outbox.next_due_in().await {
        Ok(Some(due)) => due.clamp(Duration::from_millis(10), poll),
        Ok(None) => poll,
        Err(error) => {
            tracing::warn!(%error, "reading when the next of the {} is due failed", O::WHAT);
            poll
        }
    }
}
