//! The event webhook, a leader duty: pushes the event log to a configured URL in batches (JSON
//! `POST`), retried with backoff until accepted, at least once, in log order. Where it has got to is
//! stored in the database, so a restart or a new leader resumes there (and may repeat the batch
//! in flight: receivers dedupe by event `id`).

use std::time::Duration;

use pacer_domain::OutboundAuth;
use pacer_domain::wire::EventView;
use pacer_store::{EventCursor, EventFilter, Store};
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::outbound::Outbound;

/// The event consumer name the webhook's position is stored under.
const CURSOR: &str = "webhook";
/// How often the webhook looks for new events when it has pushed everything.
const POLL: Duration = Duration::from_secs(1);
/// How soon to look again while committed events wait for older transactions to finish.
const HELD_BACK: Duration = Duration::from_millis(50);
/// The longest wait between two tries of a refused batch.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Where and how events are pushed.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    /// Most events in one `POST`.
    pub batch_size: i64,
    /// How long one `POST` may take.
    pub timeout: Duration,
    /// The credentials sent, as for a job's target.
    pub auth: OutboundAuth,
}

/// Pushes events while this node leads.
pub(crate) struct EventWebhook {
    pub(crate) store: Store,
    pub(crate) client: reqwest::Client,
    pub(crate) outbound: Outbound,
    pub(crate) config: WebhookConfig,
}

impl EventWebhook {
    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<()> {
        // A webhook configured for the first time starts at the present, not at the whole log.
        let mut cursor = loop {
            let stored = match self.store.event_cursor(CURSOR).await {
                Ok(Some(cursor)) => Ok(cursor),
                Ok(None) => match self.store.event_horizon().await {
                    Ok(start) => self
                        .store
                        .save_event_cursor(CURSOR, start)
                        .await
                        .map(|()| start),
                    Err(error) => Err(error),
                },
                Err(error) => Err(error),
            };
            match stored {
                Ok(cursor) => break cursor,
                Err(error) => {
                    tracing::warn!(%error, "reading the event webhook's position failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(POLL) => {}
                    }
                }
            }
        };
        let all = EventFilter::default();
        loop {
            let wait = match self
                .store
                .events_after(cursor, &all, self.config.batch_size)
                .await
            {
                Ok(batch) if !batch.events.is_empty() => {
                    let next = batch.next;
                    let count = batch.events.len();
                    let body: Vec<EventView> =
                        batch.events.into_iter().map(EventView::from).collect();
                    if !self.deliver(&body, next, &shutdown).await {
                        return Ok(());
                    }
                    tracing::debug!(count, "pushed events to the webhook");
                    metrics::counter!("pacer_event_webhook_events_total")
                        .increment(u64::try_from(count).unwrap_or_default());
                    if let Err(error) = self.store.save_event_cursor(CURSOR, next).await {
                        // The next batch starts after this one anyway; a restart repeats it.
                        tracing::warn!(%error, "storing the event webhook's position failed");
                    }
                    cursor = next;
                    continue;
                }
                Ok(batch) => {
                    // Nothing to push: move up to the horizon without writing anything.
                    cursor = batch.next;
                    if batch.held_back { HELD_BACK } else { POLL }
                }
                Err(error) => {
                    tracing::warn!(%error, "reading the event log failed; retrying");
                    POLL
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Posts one batch until the receiver accepts it (2xx). False when shut down first.
    async fn deliver(
        &self,
        events: &[EventView],
        last: EventCursor,
        shutdown: &CancellationToken,
    ) -> bool {
        let Ok(body) = serde_json::to_vec(&serde_json::json!({ "events": events })) else {
            return true;
        };
        let mut backoff = Duration::from_secs(1);
        loop {
            let outcome = match self
                .outbound
                .all_headers_for(&self.client, &self.config.auth, "events", &body)
                .await
            {
                Err(error) => Err(error),
                Ok(signed) => {
                    let mut request = self
                        .client
                        .post(&self.config.url)
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        // The same batch always carries the same key, so a receiver can dedupe.
                        .header("idempotency-key", last.to_string())
                        .timeout(self.config.timeout)
                        .body(body.clone());
                    for (name, value) in signed {
                        request = request.header(name, value);
                    }
                    match request.send().await {
                        Ok(response) if response.status().is_success() => Ok(()),
                        Ok(response) => Err(format!("answered {}", response.status())),
                        Err(error) => Err(error.to_string()),
                    }
                }
            };
            match outcome {
                Ok(()) => return true,
                Err(error) => {
                    metrics::counter!("pacer_event_webhook_failures_total").increment(1);
                    tracing::warn!(%error, retry_in = ?backoff, "the event webhook refused a batch; retrying");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
