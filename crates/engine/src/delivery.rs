//! The delivery loop, on every node: claims queued notifications with `for update skip locked`,
//! POSTs each to its sink (or sends it by e-mail), and records every attempt. A failed attempt is retried with backoff;
//! a node that dies mid-delivery loses nothing, since its claim's lease runs out and any node
//! takes the delivery over.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use pacer_auth::signing::{SIGNATURE_HEADER, hmac_signature};
use pacer_domain::{RetryPolicy, Span};
use pacer_store::{ALERTS_CHANNEL, ClaimedDelivery, DeliveryOutcome, DeliveryState, Store};
use secrecy::{ExposeSecret, SecretString};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::alerting::SinkKind;
use crate::outbox::{self, Outbox, Rhythm};

/// The header carrying the delivery's id: the same on every retry of one notification, so a
/// sink can drop a repeat after an ambiguous failure (a timeout after it had processed it).
pub const DELIVERY_ID_HEADER: &str = "pacer-delivery-id";

/// The header naming the notification's event (`alert.opened`, `alert.renotified`,
/// `task.completed`).
pub const EVENT_HEADER: &str = "pacer-event";

/// The delivery loop's settings.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub node_id: String,
    /// How long one request to a sink may take.
    pub timeout: Span,
    /// Longest sleep between looks for due deliveries when no notification arrives.
    pub poll_interval: Span,
    /// Most deliveries claimed (and sent concurrently) at once.
    pub batch_size: usize,
    /// The wait between attempts.
    pub backoff: RetryPolicy,
}

/// Delivers queued notifications until shut down.
pub struct Deliverer {
    pub config: DeliveryConfig,
    pub store: Store,
    pub client: reqwest::Client,
    /// Named secrets that sign webhook requests.
    pub secrets: Arc<HashMap<String, SecretString>>,
}

impl Deliverer {
    /// Claims and sends until `shutdown`; deliveries in flight then finish (each is bounded by
    /// the sink timeout).
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let rhythm = Rhythm {
            channels: &[ALERTS_CHANNEL],
            poll: self.config.poll_interval.as_duration(),
            batch_size: self.config.batch_size,
            timeout: self.config.timeout.as_duration(),
        };
        outbox::run(&self, self.store.clone(), &rhythm, shutdown).await
    }

    async fn record(
        &self,
        delivery: &ClaimedDelivery,
        sent: std::result::Result<Option<u16>, (Option<u16>, String)>,
        latency: Duration,
    ) {
        let failures = u32::try_from(delivery.attempt).unwrap_or(1).max(1);
        let (delivered, http_status, error) = match sent {
            Ok(status) => (true, status, None),
            Err((status, error)) => (false, status, Some(error)),
        };
        let outcome = DeliveryOutcome {
            node: self.config.node_id.clone(),
            delivered,
            http_status,
            error: error.clone(),
            latency,
            retry_in: self.config.backoff.backoff(failures, rand::random()),
        };
        let state = match self.store.record_delivery(delivery, &outcome).await {
            Ok(state) => state,
            Err(error) => {
                // The claim's lease runs out and the delivery is tried again; the sink may see
                // it twice, which the delivery id header lets it detect.
                tracing::warn!(%error, delivery.id = %delivery.id, "recording a delivery failed");
                return;
            }
        };
        let label = match state {
            DeliveryState::Delivered => "delivered",
            DeliveryState::Pending => "retry",
            DeliveryState::Failed => "failed",
            DeliveryState::Lost => "lost",
        };
        metrics::counter!("pacer_alert_deliveries_total", "sink_kind" => delivery.sink_kind.clone(), "outcome" => label)
            .increment(1);
        match state {
            DeliveryState::Delivered => tracing::debug!(
                delivery.id = %delivery.id, sink = %delivery.sink, event = %delivery.event,
                attempt = delivery.attempt, "delivered"
            ),
            DeliveryState::Failed => tracing::error!(
                delivery.id = %delivery.id, sink = %delivery.sink, attempt = delivery.attempt,
                error = error.as_deref(), "alert delivery failed for good"
            ),
            DeliveryState::Pending | DeliveryState::Lost => tracing::warn!(
                delivery.id = %delivery.id, sink = %delivery.sink, attempt = delivery.attempt,
                error = error.as_deref(), retry_in = ?outcome.retry_in, "alert delivery failed; will retry"
            ),
        }
    }
}

impl Outbox for Deliverer {
    type Item = ClaimedDelivery;
    const WHAT: &'static str = "alert deliveries";

    async fn claim(&self, limit: i64, lease_ms: i64) -> pacer_store::Result<Vec<ClaimedDelivery>> {
        self.store
            .claim_deliveries(&self.config.node_id, limit, lease_ms)
            .await
    }

    async fn next_due_in(&self) -> pacer_store::Result<Option<Duration>> {
        self.store.next_delivery_in().await
    }

    async fn send_all(&self, claimed: Vec<ClaimedDelivery>) {
        let mut running = JoinSet::new();
        for delivery in claimed {
            let client = self.client.clone();
            let secrets = self.secrets.clone();
            let timeout = self.config.timeout.as_duration();
            running.spawn(async move {
                let started = Instant::now();
                let sent = if delivery.sink_kind == SinkKind::Email.as_str() {
                    crate::email::send(&secrets, &delivery, timeout)
                        .await
                        .map(|()| None)
                        .map_err(|error| (None, error))
                } else {
                    send(&client, &secrets, &delivery, timeout).await.map(Some)
                };
                (delivery, sent, started.elapsed())
            });
        }
        while let Some(joined) = running.join_next().await {
            let Ok((delivery, sent, latency)) = joined else {
                continue;
            };
            self.record(&delivery, sent, latency).await;
        }
    }
}

/// POSTs one delivery. `Ok(status)` on a 2xx; otherwise the status (if any) and what went wrong.
async fn send(
    client: &reqwest::Client,
    secrets: &HashMap<String, SecretString>,
    delivery: &ClaimedDelivery,
    timeout: Duration,
) -> std::result::Result<u16, (Option<u16>, String)> {
    let body = serde_json::to_vec(&delivery.body).map_err(|e| (None, e.to_string()))?;
    let mut request = client
        .post(&delivery.url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(DELIVERY_ID_HEADER, delivery.id.to_string())
        .header(EVENT_HEADER, &delivery.event);
    if let Some(name) = &delivery.secret {
        let secret = secrets.get(name).ok_or_else(|| {
            (
                None,
                format!("the sink's secret `{name}` is not configured on this node"),
            )
        })?;
        let signature = hmac_signature(
            secret.expose_secret().as_bytes(),
            Utc::now().timestamp(),
            &body,
        );
        request = request.header(SIGNATURE_HEADER, signature);
    }
    match request.body(body).send().await {
        Ok(response) if response.status().is_success() => Ok(response.status().as_u16()),
        Ok(response) => {
            let status = response.status();
            Err((Some(status.as_u16()), format!("the sink answered {status}")))
        }
        Err(error) if error.is_timeout() => Err((None, format!("no answer within {timeout:?}"))),
        Err(error) => Err((None, format!("the request failed: {error}"))),
    }
}
