//! RabbitMQ (AMQP 0-9-1): the consumer every node runs, which turns upstream messages into tasks
//! and acknowledges each only once its tasks are committed, and the publisher that dispatches the
//! tasks of jobs with an `amqp` target, with publisher confirms.

use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use pacer_domain::dispatch::DispatchOutcome;
use pacer_domain::{
    AmqpTarget, ConsumerState, ConsumerStatus, Message, MessageInput, MessageSource, Span,
};
use pacer_store::Store;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

use crate::Result;

/// Whether an AMQP `content-type` names JSON: `application/json` or `application/<x>+json`,
/// with or without parameters such as `charset`.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.strip_prefix("application/") {
        Some("json") => true,
        Some(subtype) => subtype.len() > "+json".len() && subtype.ends_with("+json"),
        None => false,
    }
}

/// The header a dead-lettered message carries its rejection reason in.
pub const REJECT_REASON_HEADER: &str = "x-pacer-reject-reason";

/// The consumer's settings.
#[derive(Clone)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:5672/vhost`; holds a password, so it is never logged.
    pub url: SecretString,
    /// The exchange upstreams publish to (a topic exchange when Pacer declares it).
    pub exchange: String,
    /// The queue Pacer consumes, bound to the exchange with `binding_key`.
    pub queue: String,
    pub binding_key: String,
    /// Where malformed messages go, with the reason in [`REJECT_REASON_HEADER`].
    pub dead_letter_queue: String,
    /// Declare the exchange and queues (durable) at each connection; otherwise expect them.
    pub declare: bool,
    /// Most unacknowledged messages delivered to this node at once.
    pub prefetch: u16,
    /// Larger messages are dead-lettered unread.
    pub max_message_bytes: usize,
    /// The first wait before reconnecting; it doubles up to `reconnect_max`.
    pub reconnect_initial: Span,
    pub reconnect_max: Span,
    /// Names this node's connection and consumer in the broker's management UI.
    pub node_id: String,
    /// The URL prefixes a message's `notify.url` must start with (none allowed when empty).
    pub notify_urls: Vec<String>,
}

impl std::fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("exchange", &self.exchange)
            .field("queue", &self.queue)
            .field("dead_letter_queue", &self.dead_letter_queue)
            .field("declare", &self.declare)
            .field("prefetch", &self.prefetch)
            .finish_non_exhaustive()
    }
}

fn connection_properties(node_id: &str, role: &str) -> ConnectionProperties {
    ConnectionProperties::default().with_connection_name(format!("pacer {node_id} {role}").into())
}

/// The error text of a lapin error, with its causes.
fn describe(error: &lapin::Error) -> String {
    crate::with_causes(error.to_string(), error)
}

/// The RabbitMQ consumer of one node.
pub struct Consumer {
    config: AmqpConfig,
    store: Store,
    status: watch::Sender<ConsumerStatus>,
}

/// How a connection ended.
enum Ended {
    /// Shutdown was asked for.
    Stopped,
    /// The broker or the network ended it.
    Lost(String),
}

impl Consumer {
    /// A consumer reporting its state on `status`.
    pub fn new(config: AmqpConfig, store: Store, status: watch::Sender<ConsumerStatus>) -> Self {
        Self {
            config,
            store,
            status,
        }
    }

    fn report(&self, state: ConsumerState, last_error: Option<String>) {
        metrics::gauge!("pacer_amqp_consumer_connected").set(
            if state == ConsumerState::Connected {
                1.0
            } else {
                0.0
            },
        );
        let queue = Some(self.config.queue.clone());
        self.status.send_if_modified(|status| {
            let error = last_error.clone().or_else(|| status.last_error.clone());
            if status.state == state && status.last_error == error {
                return false;
            }
            *status = ConsumerStatus {
                state,
                since: if status.state == state {
                    status.since
                } else {
                    chrono::Utc::now()
                },
                queue,
                last_error: error,
            };
            true
        });
    }

    /// Consumes until `shutdown`, reconnecting with backoff whenever the broker goes away.
    /// Deliveries not yet acknowledged when it stops are redelivered by the broker.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        crate::install_crypto_provider();
        let initial = self.config.reconnect_initial.as_duration();
        let max = self.config.reconnect_max.as_duration().max(initial);
        let mut backoff = initial;
        loop {
            self.report(ConsumerState::Connecting, None);
            let ended = self.session(&shutdown, &mut backoff).await;
            let reason = match ended {
                Ok(Ended::Stopped) => return Ok(()),
                Ok(Ended::Lost(reason)) => reason,
                Err(error) => describe(&error),
            };
            if shutdown.is_cancelled() {
                return Ok(());
            }
            tracing::warn!(error = %reason, retry_in = ?backoff, "the RabbitMQ consumer lost its broker; reconnecting");
            self.report(ConsumerState::Connecting, Some(reason));
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(max);
        }
    }

    /// One connection's life: declares (or checks) the topology, consumes, and ends when the
    /// connection does or at shutdown.
    async fn session(
        &self,
        shutdown: &CancellationToken,
        backoff: &mut Duration,
    ) -> lapin::Result<Ended> {
        let config = &self.config;
        let connection = tokio::select! {
            () = shutdown.cancelled() => return Ok(Ended::Stopped),
            connected = Connection::connect(
                config.url.expose_secret(),
                connection_properties(&config.node_id, "consumer"),
            ) => connected?,
        };
        let ended = self.consume(&connection, shutdown, backoff).await;
        // Closing hands every unacknowledged delivery back to the queue (as does a connection
        // that simply drops, if the broker does not answer in time).
        let closing = connection.close(200, "pacer stopping".into());
        let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
        ended
    }

    /// Declares (or checks) the topology on `connection` and consumes until the connection
    /// ends or shutdown.
    async fn consume(
        &self,
        connection: &Connection,
        shutdown: &CancellationToken,
        backoff: &mut Duration,
    ) -> lapin::Result<Ended> {
        let config = &self.config;
        let channel = connection.create_channel().await?;
        self.topology(&channel).await?;
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await?;
        // Dead letters are published on a channel of their own, with confirms, so a rejection
        // is only acknowledged once the dead-letter queue has the message.
        let dead_letters = connection.create_channel().await?;
        dead_letters
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // A tag naming the node, when it fits in an AMQP short string; else the broker picks one.
        let tag = ShortString::try_new(format!("pacer-{}", config.node_id)).unwrap_or_default();
        let mut deliveries = channel
            .basic_consume(
                config.queue.as_str().into(),
                tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %config.queue, "consuming messages from RabbitMQ");
        self.report(ConsumerState::Connected, None);
        *backoff = config.reconnect_initial.as_duration();
        Ok(loop {
            let delivery = tokio::select! {
                () = shutdown.cancelled() => break Ended::Stopped,
                next = deliveries.next() => next,
            };
            let delivery = match delivery {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => break Ended::Lost(describe(&error)),
                None => break Ended::Lost("the broker cancelled the consumer".into()),
            };
            if let Err(error) = self.handle(delivery, &dead_letters, shutdown).await {
                break Ended::Lost(describe(&error));
            }
        })
    }

    async fn topology(&self, channel: &Channel) -> lapin::Result<()> {
        let config = &self.config;
        let queue_options = QueueDeclareOptions {
            durable: true,
            passive: !config.declare,
            ..QueueDeclareOptions::default()
        };
        if !config.declare {
            channel
                .queue_declare(
                    config.queue.as_str().into(),
                    queue_options,
                    FieldTable::default(),
                )
                .await?;
            channel
                .queue_declare(
                    config.dead_letter_queue.as_str().into(),
                    queue_options,
                    FieldTable::default(),
                )
                .await?;
            return Ok(());
        }
        channel
            .exchange_declare(
                config.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                config.dead_letter_queue.as_str().into(),
                queue_options,
                FieldTable::default(),
            )
            .await?;
        // A message rejected without requeue (when the dead-letter publish itself failed) still
        // lands in the dead-letter queue, through the default exchange.
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        arguments.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(config.dead_letter_queue.as_str().into()),
        );
        channel
            .queue_declare(config.queue.as_str().into(), queue_options, arguments)
            .await?;
        channel
            .queue_bind(
                config.queue.as_str().into(),
                config.exchange.as_str().into(),
                config.binding_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Reads one delivery: a good message is recorded with its tasks, then acknowledged; a
    /// malformed one is dead-lettered. An error means the channel is gone.
    async fn handle(
        &self,
        delivery: Delivery,
        dead_letters: &Channel,
        shutdown: &CancellationToken,
    ) -> lapin::Result<()> {
        let message = match self.parse(&delivery) {
            Ok(message) => message,
            Err(reason) => return self.dead_letter(delivery, &reason, dead_letters).await,
        };
        // An upstream that sends a W3C `traceparent` header keeps its tasks in its trace.
        let traceparent = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| match h.inner().get("traceparent") {
                Some(AMQPValue::LongString(value)) => Some(value.to_string()),
                Some(AMQPValue::ShortString(value)) => Some(value.to_string()),
                _ => None,
            })
            .filter(|value| value.len() <= 128 && value.is_ascii());
        let mut backoff = Duration::from_millis(200);
        loop {
            match self
                .store
                .ingest_message(&message, MessageSource::Amqp, traceparent.as_deref())
                .await
            {
                Ok(ingested) => {
                    let result = if ingested.duplicate {
                        "duplicate"
                    } else if ingested.message.routed {
                        "routed"
                    } else {
                        "unrouted"
                    };
                    tracing::info!(
                        message.id = %ingested.message.id,
                        message.r#type = %ingested.message.kind,
                        tasks = ingested.created,
                        result,
                        "message received"
                    );
                    metrics::counter!("pacer_messages_total", "source" => "amqp", "result" => result)
                        .increment(1);
                    if ingested.created > 0 {
                        metrics::counter!("pacer_tasks_created_total", "origin" => "message")
                            .increment(u64::try_from(ingested.created).unwrap_or(u64::MAX));
                    }
                    let skips = ingested
                        .message
                        .routes
                        .iter()
                        .filter_map(|r| r.skipped.as_deref());
                    for reason in skips.filter(|r| !ingested.duplicate && *r != "job_paused") {
                        metrics::counter!("pacer_skips_total", "reason" => reason.to_owned())
                            .increment(1);
                    }
                    // Only now: a crash before this line means a redelivery, which the
                    // message's deduplication key makes harmless.
                    delivery.ack(BasicAckOptions::default()).await?;
                    return Ok(());
                }
                Err(pacer_store::Error::InvalidData(refused)) => {
                    // The message itself is at fault (a NUL character, say): recording it again
                    // would fail again.
                    let reason = format!("the message could not be recorded: {refused}");
                    return self.dead_letter(delivery, &reason, dead_letters).await;
                }
                Err(error) => {
                    // Anything else (the database away, a deadlock, a failover, a timeout) says
                    // nothing about the message: keep it, unacknowledged, and try again. A
                    // well-formed message is never dead-lettered.
                    tracing::warn!(%error, retry_in = ?backoff, "recording a message failed; retrying");
                    tokio::select! {
                        // Left unacknowledged: the broker redelivers it when the connection closes.
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// The message in a delivery: a JSON object `{type, id?, key?, payload?}`. The AMQP `type`
    /// and `message-id` properties stand in for a missing `type` and `id`. A content type other
    /// than JSON says the publisher meant something else: refused, whatever the body.
    fn parse(&self, delivery: &Delivery) -> Result<Message, String> {
        if let Some(content_type) = delivery.properties.content_type()
            && !is_json(content_type.as_str())
        {
            return Err(format!(
                "the content type `{content_type}` is not JSON (send application/json, \
                 application/*+json, or no content type)"
            ));
        }
        let limit = self.config.max_message_bytes;
        if delivery.data.len() > limit {
            return Err(format!(
                "the message is {} bytes, over the {limit}-byte limit",
                delivery.data.len()
            ));
        }
        let mut input: MessageInput = serde_json::from_slice(&delivery.data)
            .map_err(|e| format!("the body is not a JSON message: {e}"))?;
        if input.kind.is_none() {
            input.kind = delivery.properties.kind().as_ref().map(|k| k.to_string());
        }
        if input.id.is_none() {
            input.id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string());
        }
        let message = Message::try_from(input).map_err(|e| format!("invalid message: {e}"))?;
        if let Some(notify) = &message.notify {
            // Secrets are checked when a notice is signed: a missing one fails its attempts.
            notify
                .check(&self.config.notify_urls, None)
                .map_err(|e| format!("invalid message: {e}"))?;
        }
        Ok(message)
    }

    /// Moves a delivery to the dead-letter queue with `reason` in a header, then acknowledges
    /// it; if that publish is not confirmed, rejects it without requeue instead (the queue's
    /// dead-letter exchange takes it there, without the reason).
    async fn dead_letter(
        &self,
        delivery: Delivery,
        reason: &str,
        channel: &Channel,
    ) -> lapin::Result<()> {
        tracing::warn!(reason, "dead-lettering a malformed message");
        metrics::counter!("pacer_messages_total", "source" => "amqp", "result" => "rejected")
            .increment(1);
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        let reason: String = reason.chars().take(1000).collect();
        headers.insert(
            REJECT_REASON_HEADER.into(),
            AMQPValue::LongString(reason.into()),
        );
        headers.insert(
            "x-pacer-original-queue".into(),
            AMQPValue::LongString(self.config.queue.as_str().into()),
        );
        let properties = delivery.properties.clone().with_headers(headers);
        let published = async {
            channel
                .basic_publish(
                    "".into(),
                    self.config.dead_letter_queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &delivery.data,
                    properties,
                )
                .await?
                .await
        }
        .await;
        match published {
            Ok(confirmation) if confirmation.is_ack() => {
                delivery.ack(BasicAckOptions::default()).await?;
            }
            _ => {
                delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
            }
        }
        Ok(())
    }
}

/// Publishes dispatches of jobs with an `amqp` target, over one connection per node opened on
/// first use and reopened after a failure; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<PublisherInner>,
}

struct PublisherInner {
    url: Option<SecretString>,
    node_id: String,
    open: Mutex<Option<(Connection, Channel)>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("enabled", &self.inner.url.is_some())
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher for the broker at `url`; without one, every publish fails as transient.
    pub fn new(url: Option<SecretString>, node_id: &str) -> Self {
        Self {
            inner: Arc::new(PublisherInner {
                url,
                node_id: node_id.to_owned(),
                open: Mutex::new(None),
            }),
        }
    }

    /// Publishes one dispatch and waits for the broker's confirm, at most `timeout`. A confirm
    /// is an accepted dispatch; a nack, an unroutable message, a closed channel or no confirm in
    /// time are transient errors.
    pub(crate) async fn publish(
        &self,
        target: &AmqpTarget,
        headers: Vec<(String, String)>,
        message_id: &str,
        body: &[u8],
        timeout: Duration,
    ) -> DispatchOutcome {
        let transient = |error: String| DispatchOutcome::Transient {
            status: None,
            error,
            retry_after: None,
        };
        let Some(url) = &self.inner.url else {
            return transient("no RabbitMQ broker is configured on this node (amqp.url)".into());
        };
        let (Ok(exchange), Ok(routing_key)) = (
            ShortString::try_new(target.exchange.as_str()),
            ShortString::try_new(target.routing_key.as_str()),
        ) else {
            return DispatchOutcome::Permanent {
                status: 0,
                error: "the exchange or routing key is longer than AMQP allows".into(),
            };
        };
        let mut table = FieldTable::default();
        for (name, value) in headers {
            if let Ok(name) = ShortString::try_new(name) {
                table.insert(name, AMQPValue::LongString(value.into()));
            }
        }
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(message_id.into())
            .with_delivery_mode(2)
            .with_headers(table);
        let attempt = async {
            let channel = {
                let mut open = self.inner.open.lock().await;
                let usable = open
                    .as_ref()
                    .is_some_and(|(c, ch)| c.status().connected() && ch.status().connected());
                if !usable {
                    *open = None;
                    let connection = Connection::connect(
                        url.expose_secret(),
                        connection_properties(&self.inner.node_id, "publisher"),
                    )
                    .await?;
                    let channel = connection.create_channel().await?;
                    channel
                        .confirm_select(ConfirmSelectOptions::default())
                        .await?;
                    *open = Some((connection, channel));
                }
                open.as_ref().map(|(_, channel)| channel.clone())
            };
            let Some(channel) = channel else {
                return Ok(None);
            };
            // Mandatory: a message no queue takes comes back, and counts as not delivered.
            let confirm = channel
                .basic_publish(
                    exchange,
                    routing_key,
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties,
                )
                .await?;
            confirm.await.map(Some)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Err(_) => transient(format!(
                "no publisher confirm within the dispatch timeout ({timeout:?})"
            )),
            Ok(Err(error)) => {
                // The channel may be closed (a missing exchange closes it): open a new one next time.
                *self.inner.open.lock().await = None;
                transient(format!("publishing failed: {}", describe(&error)))
            }
            Ok(Ok(None)) => transient("no channel to the broker".into()),
            Ok(Ok(Some(confirmation))) if confirmation.is_nack() => {
                transient("the broker refused the message (nack)".into())
            }
            Ok(Ok(Some(confirmation))) => match confirmation.take_message() {
                Some(returned) => transient(format!(
                    "the broker could not route the message: {} {}",
                    returned.reply_code, returned.reply_text
                )),
                None => DispatchOutcome::Published,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn only_json_content_types_are_read_as_json() {
        for json in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/cloudevents+json",
            "application/vnd.acme.event+json;version=2",
        ] {
            assert!(is_json(json), "{json}");
        }
        for other in [
            "text/plain",
            "text/json",
            "application/xml",
            "application/octet-stream",
            "application/+json",
            "application/jsonx",
            "text/plain+json",
            "",
        ] {
            assert!(!is_json(other), "{other}");
        }
    }
}
