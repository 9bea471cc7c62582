//! RabbitMQ for end-to-end tests: a connection to the broker on 127.0.0.1:5672, uniquely named
//! exchanges and queues per test (deleted by [`Topology::delete`]), and a TCP proxy in front of
//! the broker that a test can cut to see a node lose its broker.

use std::time::Duration;

use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::wait_until;

/// The broker the tests use: `PACER_E2E_AMQP_URL`, else guest on 127.0.0.1:5672.
pub fn amqp_url() -> String {
    std::env::var("PACER_E2E_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A test's own connection to the broker, with a confirming channel.
pub struct Broker {
    connection: Connection,
    channel: Channel,
}

impl Broker {
    /// Connects to [`amqp_url`].
    pub async fn connect() -> Self {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to RabbitMQ at {}: {e}", amqp_url()));
        let channel = connection.create_channel().await.expect("a channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("publisher confirms");
        Self {
            connection,
            channel,
        }
    }

    /// The test's channel.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes `body` and waits for the broker's confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "the broker confirmed the publish");
    }

    /// Takes one message from `queue` (acknowledged), if there is one.
    pub async fn get(&self, queue: &str) -> Option<BasicGetMessage> {
        let message = self
            .channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get")?;
        message
            .delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        Some(message)
    }

    /// Waits up to `timeout` for a message on `queue`.
    pub async fn wait_for(&self, queue: &str, timeout: Duration) -> BasicGetMessage {
        wait_until(&format!("a message on {queue}"), timeout, || {
            self.get(queue)
        })
        .await
    }

    /// How many messages wait in `queue` (ready, not delivered).
    pub async fn depth(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the queue exists")
            .message_count()
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

/// One test's exchange and queues, named uniquely.
pub struct Topology {
    /// The exchange upstream messages are published to.
    pub exchange: String,
    /// The queue Pacer consumes.
    pub queue: String,
    pub dead_letter_queue: String,
    /// An exchange and queue for dispatches of `amqp`-target jobs.
    pub jobs_exchange: String,
    pub jobs_queue: String,
}

impl Topology {
    /// Names for one test; nothing is declared yet (Pacer declares its own part).
    pub fn new() -> Self {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let tag = &id[id.len() - 12..];
        Self {
            exchange: format!("pacer.test.{tag}.messages"),
            queue: format!("pacer.test.{tag}.messages"),
            dead_letter_queue: format!("pacer.test.{tag}.dead"),
            jobs_exchange: format!("pacer.test.{tag}.jobs"),
            jobs_queue: format!("pacer.test.{tag}.jobs"),
        }
    }

    /// The node settings naming this topology.
    pub fn env(&self, url: &str) -> Vec<(String, String)> {
        vec![
            ("PACER_AMQP_URL".into(), url.to_owned()),
            ("PACER_AMQP__EXCHANGE".into(), self.exchange.clone()),
            ("PACER_AMQP__QUEUE".into(), self.queue.clone()),
            (
                "PACER_AMQP__DEAD_LETTER_QUEUE".into(),
                self.dead_letter_queue.clone(),
            ),
            ("PACER_AMQP__RECONNECT_INITIAL".into(), "100ms".into()),
            ("PACER_AMQP__RECONNECT_MAX".into(), "1s".into()),
        ]
    }

    /// Declares the messages exchange and queues as Pacer does, so messages can wait for a
    /// node that is not running yet.
    pub async fn declare_messages(&self, broker: &Broker) {
        let channel = broker.channel();
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("exchange");
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(
                self.dead_letter_queue.as_str().into(),
                durable,
                FieldTable::default(),
            )
            .await
            .expect("dead-letter queue");
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        arguments.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(self.dead_letter_queue.as_str().into()),
        );
        channel
            .queue_declare(self.queue.as_str().into(), durable, arguments)
            .await
            .expect("queue");
        channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
    }

    /// Declares the jobs exchange (direct) and a queue bound to it with `routing_key`.
    pub async fn declare_jobs(&self, broker: &Broker, routing_key: &str) {
        let channel = broker.channel();
        channel
            .exchange_declare(
                self.jobs_exchange.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("jobs exchange");
        channel
            .queue_declare(
                self.jobs_queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("jobs queue");
        channel
            .queue_bind(
                self.jobs_queue.as_str().into(),
                self.jobs_exchange.as_str().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
    }

    /// Deletes every exchange and queue of this topology that exists.
    pub async fn delete(&self, broker: &Broker) {
        delete_all(broker, &self.queues(), &self.exchanges()).await;
    }

    fn queues(&self) -> Vec<String> {
        vec![
            self.queue.clone(),
            self.dead_letter_queue.clone(),
            self.jobs_queue.clone(),
        ]
    }

    fn exchanges(&self) -> Vec<String> {
        vec![self.exchange.clone(), self.jobs_exchange.clone()]
    }
}

async fn delete_all(broker: &Broker, queues: &[String], exchanges: &[String]) {
    let channel = broker.channel();
    for queue in queues {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in exchanges {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// Deleted when the test ends, even when it fails: on a thread of its own, with its own runtime
/// and connection, since a drop cannot await.
impl Drop for Topology {
    fn drop(&mut self) {
        let (queues, exchanges) = (self.queues(), self.exchanges());
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let broker = Broker::connect().await;
                delete_all(&broker, &queues, &exchanges).await;
                broker.close().await;
            });
        });
        let _ = cleanup.join();
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

/// A TCP proxy in front of the broker. [`BrokerProxy::cut`] drops every connection through it
/// and refuses new ones until [`BrokerProxy::restore`]; [`BrokerProxy::hold_upstream`] keeps
/// connections open but holds back what clients send (their acknowledgements among it).
pub struct BrokerProxy {
    port: u16,
    open: watch::Sender<bool>,
    upstream: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Copies `from` to `to` while `gate` is open; what arrives while it is closed waits.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0_u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        while !*gate.borrow_and_update() {
            if gate.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

impl BrokerProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to the broker on 127.0.0.1:5672.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let (open, mut open_seen) = watch::channel(true);
        let (upstream, upstream_seen) = watch::channel(true);
        let broker = "127.0.0.1:5672";
        let task = tokio::spawn(async move {
            let mut pipes = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        if !*open_seen.borrow() {
                            drop(client);
                            continue;
                        }
                        let upstream_gate = upstream_seen.clone();
                        pipes.spawn(async move {
                            let Ok(server) = TcpStream::connect(broker).await else { return };
                            let (client_read, client_write) = client.into_split();
                            let (server_read, server_write) = server.into_split();
                            let (downstream_gate, downstream_seen) = watch::channel(true);
                            let up = pump(client_read, server_write, upstream_gate);
                            let down = pump(server_read, client_write, downstream_seen);
                            // Either direction ending ends the connection.
                            tokio::select! {
                                () = up => {}
                                () = down => {}
                            }
                            drop(downstream_gate);
                        });
                    }
                    changed = open_seen.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        if !*open_seen.borrow() {
                            pipes.abort_all();
                        }
                    }
                    Some(_) = pipes.join_next(), if !pipes.is_empty() => {}
                }
            }
        });
        Self {
            port,
            open,
            upstream,
            task,
        }
    }

    /// The broker URL through this proxy.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        let _ = self.open.send(false);
    }

    /// Accepts connections again (and forwards what clients send).
    pub fn restore(&self) {
        let _ = self.upstream.send(true);
        let _ = self.open.send(true);
    }

    /// Keeps connections open but stops forwarding what clients send to the broker: a node's
    /// acknowledgements never arrive, while deliveries still reach it.
    pub fn hold_upstream(&self) {
        let _ = self.upstream.send(false);
    }
}

impl Drop for BrokerProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
