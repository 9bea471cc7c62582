//! Pushing the event log, a leader duty: to the configured event webhook and to each event
//! subscription, in batches (JSON `POST` of `{"events": [...]}`), retried with backoff until
//! accepted, at least once, in log order (so in order per task). Each receiver has its own
//! position in the log, stored in the database, and its own loop: a slow or failing receiver
//! never delays another, and a restart or a new leader resumes where each had got to (and may
//! repeat the batch in flight: receivers dedupe by event `id`).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pacer_domain::OutboundAuth;
use pacer_domain::wire::EventView;
use pacer_store::{EventCursor, EventFilter, Store, subscription_cursor, subscription_filter};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::outbound::Outbound;

/// The event consumer name the webhook's position is stored under.
const CURSOR: &str = "webhook";
/// How often a pusher looks for new events when it has pushed everything (a look at the log's
/// tail is an index range scan that finds nothing when nothing happened).
const POLL: Duration = Duration::from_millis(250);
/// How soon to look again while committed events wait for older transactions to finish.
const HELD_BACK: Duration = Duration::from_millis(50);
/// The longest wait between two tries of a refused batch.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the leader looks for subscriptions created, changed or deleted.
const SUBSCRIPTIONS_POLL: Duration = Duration::from_secs(1);
/// How long one `POST` to a subscriber may take.
const SUBSCRIBER_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Pushes the configured event webhook while this node leads: every event, as a subscription
/// without filters whose position is stored as `webhook`.
pub(crate) struct EventWebhook {
    pub(crate) store: Store,
    pub(crate) client: reqwest::Client,
    pub(crate) outbound: Outbound,
    pub(crate) config: WebhookConfig,
}

impl EventWebhook {
    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let pusher = Pusher {
            store: self.store,
            client: self.client,
            outbound: self.outbound,
            receiver: Receiver::Webhook,
            config: self.config,
            filter: EventFilter::default(),
        };
        pusher.run(shutdown).await;
        Ok(())
    }
}

/// Runs one pusher per event subscription while this node leads, picking up subscriptions
/// created, changed and deleted through the API within a second.
pub(crate) struct Subscriptions {
    pub(crate) store: Store,
    pub(crate) client: reqwest::Client,
    pub(crate) outbound: Outbound,
}

/// A running subscription's pusher, and the definition it runs.
struct Running {
    updated_at: DateTime<Utc>,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl Subscriptions {
    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let mut running: HashMap<String, Running> = HashMap::new();
        loop {
            match self.store.list_subscriptions().await {
                Ok(subscriptions) => {
                    let current: HashMap<&str, DateTime<Utc>> = subscriptions
                        .iter()
                        .map(|s| (s.name.as_str(), s.updated_at))
                        .collect();
                    // Stop the pushers of deleted or changed subscriptions (a changed one starts
                    // again below, with its new definition, from its stored position).
                    let stale: Vec<String> = running
                        .iter()
                        .filter(|(name, r)| current.get(name.as_str()) != Some(&r.updated_at))
                        .map(|(name, _)| name.clone())
                        .collect();
                    for name in stale {
                        if let Some(r) = running.remove(&name) {
                            r.stop.cancel();
                            let _ = r.handle.await;
                        }
                    }
                    for subscription in subscriptions {
                        if running.contains_key(&subscription.name) {
                            continue;
                        }
                        let stop = shutdown.child_token();
                        let pusher = Pusher {
                            store: self.store.clone(),
                            client: self.client.clone(),
                            outbound: self.outbound.clone(),
                            filter: subscription_filter(&subscription.spec),
                            config: WebhookConfig {
                                url: subscription.spec.url.clone(),
                                batch_size: i64::from(subscription.spec.batch_size),
                                timeout: SUBSCRIBER_TIMEOUT,
                                auth: subscription.spec.auth.clone(),
                            },
                            receiver: Receiver::Subscription(
                                subscription.name.clone(),
                                subscription.updated_at,
                            ),
                        };
                        let handle = tokio::spawn(pusher.run(stop.clone()));
                        running.insert(
                            subscription.name,
                            Running {
                                updated_at: subscription.updated_at,
                                stop,
                                handle,
                            },
                        );
                    }
                    metrics::gauge!("pacer_subscriptions_running").set(running.len() as f64);
                }
                Err(error) => tracing::warn!(%error, "listing event subscriptions failed"),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(SUBSCRIPTIONS_POLL) => {}
            }
        }
        for (_, r) in running {
            r.stop.cancel();
            let _ = r.handle.await;
        }
        Ok(())
    }
}

/// Whose position a pusher keeps.
#[derive(Debug, Clone)]
enum Receiver {
    /// The configured event webhook.
    Webhook,
    /// The subscription of this name, as defined at this time; it records how its deliveries
    /// go.
    Subscription(String, DateTime<Utc>),
}

impl Receiver {
    fn cursor_name(&self) -> String {
        match self {
            Receiver::Webhook => CURSOR.to_owned(),
            Receiver::Subscription(name, _) => subscription_cursor(name),
        }
    }

    fn label(&self) -> &str {
        match self {
            Receiver::Webhook => CURSOR,
            Receiver::Subscription(name, _) => name,
        }
    }
}

/// Pushes the events matching `filter` to one receiver.
struct Pusher {
    store: Store,
    client: reqwest::Client,
    outbound: Outbound,
    receiver: Receiver,
    config: WebhookConfig,
    filter: EventFilter,
}

impl Pusher {
    async fn run(self, shutdown: CancellationToken) {
        let name = self.receiver.cursor_name();
        // A webhook configured for the first time starts at the present, not at the whole log;
        // a subscription's position is written when it is created.
        let mut cursor = loop {
            let stored = match self.store.event_cursor(&name).await {
                Ok(Some(cursor)) => Ok(cursor),
                Ok(None) => match self.store.event_horizon().await {
                    Ok(start) => match self.receiver {
                        Receiver::Webhook => self
                            .store
                            .save_event_cursor(&name, start)
                            .await
                            .map(|()| start),
                        Receiver::Subscription(..) => Ok(start),
                    },
                    Err(error) => Err(error),
                },
                Err(error) => Err(error),
            };
            match stored {
                Ok(cursor) => break cursor,
                Err(error) => {
                    tracing::warn!(%error, receiver = self.receiver.label(), "reading an event receiver's position failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(POLL) => {}
                    }
                }
            }
        };
        loop {
            let wait = match self
                .store
                .events_after(cursor, &self.filter, self.config.batch_size)
                .await
            {
                Ok(batch) if !batch.events.is_empty() => {
                    let next = batch.next;
                    let count = batch.events.len();
                    let body: Vec<EventView> =
                        batch.events.into_iter().map(EventView::from).collect();
                    if !self.deliver(&body, next, &shutdown).await {
                        return;
                    }
                    tracing::debug!(count, receiver = self.receiver.label(), "pushed events");
                    metrics::counter!("pacer_event_webhook_events_total", "receiver" => self.receiver.label().to_owned())
                        .increment(u64::try_from(count).unwrap_or_default());
                    let saved = match &self.receiver {
                        Receiver::Webhook => self
                            .store
                            .save_event_cursor(&name, next)
                            .await
                            .map(|()| true),
                        Receiver::Subscription(subscription, _) => {
                            self.store
                                .subscription_delivered(
                                    subscription,
                                    next,
                                    i64::try_from(count).unwrap_or(i64::MAX),
                                )
                                .await
                        }
                    };
                    match saved {
                        Ok(true) => {}
                        // Deleted meanwhile: its pusher is stopped anyway.
                        Ok(false) => return,
                        // The next batch starts after this one anyway; a restart repeats it.
                        Err(error) => {
                            tracing::warn!(%error, receiver = self.receiver.label(), "storing an event receiver's position failed")
                        }
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
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// False once the subscription pushed is deleted or replaced; the webhook always is current.
    /// A failed look counts as current: the batch is sent, at least once.
    async fn current(&self) -> bool {
        let Receiver::Subscription(name, version) = &self.receiver else {
            return true;
        };
        match self.store.subscription_version(name).await {
            Ok(found) => found == Some(*version),
            Err(error) => {
                tracing::warn!(%error, "reading a subscription failed");
                true
            }
        }
    }

    /// Posts one batch until the receiver accepts it (2xx). False when stopped first, or when
    /// the subscription is deleted or replaced.
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
            // A subscription deleted or replaced meanwhile gets nothing more from this pusher
            // (the leader starts a new one for a replaced subscription).
            if !self.current().await {
                return false;
            }
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
                    tokio::select! {
                        () = shutdown.cancelled() => return false,
                        sent = request.send() => match sent {
                            Ok(response) if response.status().is_success() => Ok(()),
                            Ok(response) => Err(format!("answered {}", response.status())),
                            Err(error) => Err(crate::with_causes("the request failed".to_owned(), &error)),
                        }
                    }
                }
            };
            match outcome {
                Ok(()) => return true,
                Err(error) => {
                    metrics::counter!("pacer_event_webhook_failures_total", "receiver" => self.receiver.label().to_owned()).increment(1);
                    tracing::warn!(%error, receiver = self.receiver.label(), retry_in = ?backoff, "an event receiver refused a batch; retrying");
                    if let Receiver::Subscription(name, _) = &self.receiver
                        && let Err(error) = self.store.subscription_failed(name, &error).await
                    {
                        tracing::warn!(%error, "recording a subscription's failure failed");
                    }
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
