//! A running node: one root cancellation token and one supervisor owning the HTTP server and
//! every loop. Any part's unexpected exit stops the rest and the process exits non-zero. The first
//! SIGTERM or Ctrl-C drains; a second exits at once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use pacer_api::{ApiConfig, AppState, Auth, BoxFuture, Dispatch, DispatchSlot, RateLimiter};
use pacer_domain::ConsumerStatus;
use pacer_domain::Span;
use pacer_engine::{
    AmqpConfig, CancelNotifier, Consumer, Deliverer, DeliveryConfig, DispatchConfig, Dispatcher,
    EventPush, Heartbeat, Leader, LeaderConfig, NoticeConfig, Notifier, Outbound, Publisher,
    SubscriptionPush, WebhookConfig,
};
use pacer_store::{ClaimedTask, Store};
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Config;
use crate::security::Security;

/// Connects a pool for `config` without opening a connection yet.
pub(crate) fn connect(config: &Config) -> anyhow::Result<Store> {
    let options: PgConnectOptions = config
        .database
        .url
        .expose_secret()
        .parse()
        .context("database.url is not a valid postgres URL")?;
    // A node paused or cut off inside a transaction must not hold its locks (the lease row's
    // among them) for longer than half a lease: the server ends such a session.
    let idle_limit = (config.cluster.lease_ttl.as_millis() / 2).max(500);
    let options = options.application_name("pacer").options([(
        "idle_in_transaction_session_timeout",
        format!("{idle_limit}ms"),
    )]);
    // A fifth of the connections (one to four) is kept for the batched writers, whose statements
    // are planned differently; the rest is the pool every other statement uses.
    let total = config.database.max_connections;
    let batches = (total / 5).clamp(1, 4);
    let pool = PgPoolOptions::new()
        .max_connections(total.saturating_sub(batches).max(1))
        .acquire_timeout(config.database.acquire_timeout.as_duration())
        .connect_lazy_with(options);
    Ok(Store::with_batch_connections(pool, batches))
}

/// Applies migrations, waiting for the database if it is not up yet.
pub(crate) async fn migrate(store: &Store, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(250);
    loop {
        match store.migrate().await {
            Ok(()) => return Ok(()),
            Err(error) if is_unavailable(&error) => {
                tracing::warn!(%error, retry_in = ?backoff, "database not reachable; waiting");
                tokio::select! {
                    () = shutdown.cancelled() => anyhow::bail!("stopped while waiting for the database"),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error).context("applying migrations failed"),
        }
    }
}

fn is_unavailable(error: &pacer_store::Error) -> bool {
    match error {
        pacer_store::Error::Unavailable(_) => true,
        pacer_store::Error::Migrate(sqlx::migrate::MigrateError::Execute(e)) => {
            matches!(
                e,
                sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::Protocol(_)
                    | sqlx::Error::Tls(_)
            )
        }
        _ => false,
    }
}

/// The default node id: the host name and a random suffix, unique per process.
fn default_node_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pacer".into());
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    format!("{host}-{}", &suffix[suffix.len() - 6..])
}

/// Everything started for a node, before it serves.
pub(crate) struct Node {
    pub(crate) store: Store,
    pub(crate) listener: TcpListener,
    pub(crate) public_url: String,
    pub(crate) node_id: String,
    pub(crate) security: Security,
    metrics: PrometheusHandle,
    config: Config,
}

impl Node {
    /// Connects, migrates and binds the listener.
    pub(crate) async fn start(
        config: Config,
        security: Security,
        metrics: PrometheusHandle,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let store = connect(&config)?;
        migrate(&store, shutdown).await?;
        let listener = TcpListener::bind(&config.http.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.http.listen))?;
        let address = listener.local_addr()?;
        let public_url = config
            .http
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{address}"));
        let node_id = config.node.id.clone().unwrap_or_else(default_node_id);
        tracing::info!(node.id = %node_id, %address, %public_url, "listening");
        Ok(Self {
            store,
            listener,
            public_url,
            node_id,
            security,
            metrics,
            config,
        })
    }

    /// Serves the API (with `extra` routes merged in) and runs the loops until `shutdown`.
    pub(crate) async fn run(
        self,
        extra: Router,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let cluster = &self.config.cluster;
        let api = ApiConfig {
            body_limit: self.config.http.body_limit,
            dead_after: cluster.dead_after,
            secrets: self.security.secrets.keys().cloned().collect(),
            request_timeout: self.config.http.request_timeout.as_duration(),
            notify_urls: self.config.notify.allowed_urls.clone(),
        };
        let auth = Auth {
            verifier: self.security.verifier.clone(),
            keyset: self.security.keyset.clone(),
            leeway: self.config.auth.leeway.as_duration(),
            limiter: RateLimiter::new(
                self.config.auth.rate_limit_per_second,
                self.config.auth.rate_limit_burst,
            ),
        };
        let outbound = Outbound::new(self.security.keyset.clone(), self.security.secrets.clone());
        let alerts = Arc::new(pacer_engine::AlertsConfig {
            dashboard_url: format!("{}/ui/", self.public_url.trim_end_matches('/')),
            ..self.config.alerts.clone()
        });
        let amqp = &self.config.amqp;
        // A node with a broker starts out connecting, not disabled: the API answers before the
        // consumer's first report, and must not refuse AMQP targets meanwhile.
        let initial = match &amqp.url {
            Some(_) => ConsumerStatus::connecting(&amqp.queue),
            None => ConsumerStatus::disabled(),
        };
        let (consumer_status, consumer_seen) = watch::channel(initial);
        let client = pacer_engine::http_client()?;
        let dispatcher = Dispatcher::new(
            DispatchConfig {
                node_id: self.node_id.clone(),
                public_url: self.public_url.clone(),
                settings: self.config.dispatch.clone(),
                claim_ahead: self.config.cluster.fire_ahead,
                max_response_bytes: 64 * 1024,
            },
            self.store.clone(),
            client.clone(),
            outbound.clone(),
        )
        .with_publisher(Publisher::new(amqp.url.clone(), &self.node_id));
        let dispatch: Arc<dyn Dispatch> = Arc::new(Handoff(dispatcher.handoff()));
        let state = AppState::new(
            self.store.clone(),
            &self.node_id,
            Some(dispatch),
            &api,
            auth,
        )
        .with_shutdown(shutdown.clone())
        .with_alert_sinks(alerts.sink_names())
        .with_consumer(consumer_seen);
        let metrics = self.metrics.clone();
        let scrape = axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                let headers = [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )];
                (headers, metrics.render())
            }
        });
        let app = pacer_api::router(state)
            .merge(extra)
            .route("/metrics", scrape);
        let cancels = CancelNotifier {
            store: self.store.clone(),
            client: client.clone(),
            outbound: outbound.clone(),
        };
        let webhook = self.config.events.webhook.as_ref().map(|w| EventPush {
            config: WebhookConfig {
                url: w.url.clone(),
                batch_size: w.batch_size,
                timeout: w.timeout.as_duration(),
                auth: w.auth.clone(),
            },
            client: client.clone(),
            outbound: outbound.clone(),
        });

        let mut parts: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
        // The HTTP server outlives the dispatcher's drain: downstreams of dispatches still in
        // flight call back here, and those callbacks must land.
        let http_stop = CancellationToken::new();
        let http_stopped = http_stop.clone();
        parts.spawn(async move {
            let served = axum::serve(self.listener, app)
                .with_graceful_shutdown(http_stopped.cancelled_owned())
                .await
                .context("the HTTP server failed");
            ("http", served)
        });
        let dispatch_shutdown = shutdown.child_token();
        parts.spawn(async move {
            let drained = dispatcher
                .run(dispatch_shutdown)
                .await
                .context("the dispatcher failed");
            http_stop.cancel();
            ("dispatcher", drained)
        });

        let heartbeat = Heartbeat {
            store: self.store.clone(),
            node_id: self.node_id.clone(),
            address: self.public_url.clone(),
            interval: cluster.heartbeat_interval.as_duration(),
            consumer: amqp.url.is_some().then(|| consumer_status.subscribe()),
        };
        let heartbeat_shutdown = shutdown.child_token();
        parts.spawn(async move {
            (
                "heartbeat",
                heartbeat
                    .run(heartbeat_shutdown)
                    .await
                    .context("the heartbeat failed"),
            )
        });
        let cancels_shutdown = shutdown.child_token();
        parts.spawn(async move {
            (
                "cancel notifier",
                cancels
                    .run(cancels_shutdown)
                    .await
                    .context("the cancel notifier failed"),
            )
        });
        let leader = Leader {
            store: self.store.clone(),
            webhook,
            subscriptions: Some(SubscriptionPush {
                client: client.clone(),
                outbound: outbound.clone(),
            }),
            config: LeaderConfig {
                node_id: self.node_id.clone(),
                lease_ttl: cluster.lease_ttl,
                dead_after: cluster.dead_after,
                firing_batch: cluster.firing_batch_size,
                firing_poll: cluster.firing_poll_interval,
                fire_ahead: cluster.fire_ahead,
                sweep_interval: cluster.sweep_interval,
                alerts,
                event_retention: self.config.events.retention,
                message_retention: self.config.messages.retention,
                retention: self.config.retention.clone(),
            },
        };
        let leader_shutdown = shutdown.child_token();
        parts.spawn(async move {
            (
                "leader",
                leader
                    .run(leader_shutdown)
                    .await
                    .context("the leader loop failed"),
            )
        });

        // Every node delivers queued alert notifications; the leader only queues them.
        let alert_settings = &self.config.alerts;
        let deliverer = Deliverer {
            config: DeliveryConfig {
                node_id: self.node_id.clone(),
                timeout: alert_settings.delivery_timeout,
                poll_interval: alert_settings.delivery_poll_interval,
                batch_size: 16,
                backoff: pacer_domain::RetryPolicy {
                    max_attempts: alert_settings.delivery_max_attempts,
                    initial_backoff: alert_settings.delivery_initial_backoff,
                    max_backoff: alert_settings.delivery_max_backoff,
                    multiplier: 2.0,
                    jitter: 0.2,
                    ..pacer_domain::RetryPolicy::default()
                },
            },
            store: self.store.clone(),
            client: pacer_engine::http_client()?,
            secrets: Arc::new(self.security.secrets.clone()),
        };
        let delivery_shutdown = shutdown.child_token();
        parts.spawn(async move {
            (
                "alert deliveries",
                deliverer
                    .run(delivery_shutdown)
                    .await
                    .context("the alert delivery loop failed"),
            )
        });
        // Every node sends completion notices; the state change that warrants one queues it.
        let notify = &self.config.notify;
        let notifier = Notifier {
            config: NoticeConfig {
                node_id: self.node_id.clone(),
                timeout: notify.timeout,
                poll_interval: Span::from_secs(1),
                batch_size: 16,
                backoff: pacer_domain::RetryPolicy {
                    max_attempts: notify.max_attempts,
                    initial_backoff: notify.initial_backoff,
                    max_backoff: notify.max_backoff,
                    multiplier: 2.0,
                    jitter: 0.2,
                    ..pacer_domain::RetryPolicy::default()
                },
            },
            store: self.store.clone(),
            client: client.clone(),
            outbound: outbound.clone(),
        };
        let notice_shutdown = shutdown.child_token();
        parts.spawn(async move {
            (
                "task notices",
                notifier
                    .run(notice_shutdown)
                    .await
                    .context("the task notice loop failed"),
            )
        });
        if let Some(url) = &amqp.url {
            let consumer = Consumer::new(
                AmqpConfig {
                    url: url.clone(),
                    exchange: amqp.exchange.clone(),
                    queue: amqp.queue.clone(),
                    binding_key: amqp.binding_key.clone(),
                    dead_letter_queue: amqp.dead_letter_queue.clone(),
                    declare: amqp.declare,
                    prefetch: amqp.prefetch,
                    max_message_bytes: amqp.max_message_bytes,
                    reconnect_initial: amqp.reconnect_initial,
                    reconnect_max: amqp.reconnect_max,
                    node_id: self.node_id.clone(),
                    notify_urls: self.config.notify.allowed_urls.clone(),
                },
                self.store.clone(),
                consumer_status,
            );
            let consumer_shutdown = shutdown.child_token();
            parts.spawn(async move {
                (
                    "amqp consumer",
                    consumer
                        .run(consumer_shutdown)
                        .await
                        .context("the RabbitMQ consumer failed"),
                )
            });
        }

        let deadline = self.config.dispatch.drain_timeout.as_duration() + Duration::from_secs(5);
        supervise(parts, shutdown, deadline).await?;
        self.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Waits for every part. The first to stop unasked stops the others and makes the result an
/// error; once shutdown begins, the parts get `deadline` to finish.
async fn supervise(
    mut parts: JoinSet<(&'static str, anyhow::Result<()>)>,
    shutdown: CancellationToken,
    deadline: Duration,
) -> anyhow::Result<()> {
    // Biased: once shutdown has begun, parts finishing is expected, not a failure.
    let failure = tokio::select! {
        biased;
        () = shutdown.cancelled() => {
            tracing::info!("shutting down");
            None
        }
        next = parts.join_next() => {
            shutdown.cancel();
            Some(next.map_or_else(|| anyhow::anyhow!("no part was running"), describe_exit))
        }
    };
    let drained = tokio::time::timeout(deadline, async {
        while let Some(joined) = parts.join_next().await {
            if let Err(error) = check_exit(joined) {
                tracing::error!(error = %format!("{error:#}"), "a part failed while stopping");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::error!(?deadline, "parts did not stop in time; aborting them");
        parts.shutdown().await;
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

fn check_exit(
    joined: Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match joined {
        Ok((_, Ok(()))) => Ok(()),
        Ok((name, Err(error))) => Err(error.context(format!("{name} stopped"))),
        Err(join) => Err(anyhow::anyhow!("a part panicked: {join}")),
    }
}

fn describe_exit(
    joined: Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>,
) -> anyhow::Error {
    match joined {
        Ok((name, Ok(()))) => anyhow::anyhow!("{name} stopped unexpectedly"),
        other => match check_exit(other) {
            Err(error) => error,
            Ok(()) => anyhow::anyhow!("a part stopped unexpectedly"),
        },
    }
}

/// A token cancelled by the first SIGTERM or Ctrl-C; a second one exits the process at once.
/// What must happen even when a second signal exits at once (`pacer dev`'s private
/// PostgreSQL is stopped and removed).
pub(crate) static EXIT_HOOK: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>> =
    std::sync::OnceLock::new();

pub(crate) fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    // Both streams are registered once, up front, so a second signal is seen whenever it comes.
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("signal received; draining (send again to exit at once)");
        trigger.cancel();
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::warn!("second signal; exiting now");
        if let Some(hook) = EXIT_HOOK.get() {
            hook();
        }
        std::process::exit(130);
    });
    Ok(token)
}

/// The dispatcher's [`pacer_engine::Handoff`] as the API takes it.
#[derive(Debug)]
struct Handoff(pacer_engine::Handoff);

impl Dispatch for Handoff {
    fn reserve(&self) -> Option<Box<dyn DispatchSlot>> {
        self.0
            .reserve()
            .map(|reserved| Box::new(Slot(reserved)) as Box<dyn DispatchSlot>)
    }
}

/// A dispatch slot the dispatcher reserved.
struct Slot(pacer_engine::Reservation);

impl DispatchSlot for Slot {
    fn lease_margin(&self) -> Span {
        self.0.lease_margin()
    }

    fn hand_over(self: Box<Self>, task: ClaimedTask) -> BoxFuture<'static, ()> {
        Box::pin(self.0.hand_over(task))
    }
}
