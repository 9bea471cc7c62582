//! Configuration: defaults, then an optional TOML file, then `PACER_…` environment variables
//! (`database.url` is `PACER_DATABASE__URL`; the common keys also have short forms).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use pacer_domain::Span;
use pacer_engine::{AlertsConfig, DispatchSettings, RetentionSettings};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The whole configuration of a node.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    pub(crate) database: DatabaseConfig,
    pub(crate) http: HttpConfig,
    pub(crate) node: NodeConfig,
    pub(crate) dispatch: DispatchSettings,
    pub(crate) cluster: ClusterSettings,
    pub(crate) auth: AuthSettings,
    pub(crate) signing: SigningSettings,
    /// Named secrets jobs use for outbound `bearer` and `hmac` auth; never logged or returned.
    pub(crate) secrets: BTreeMap<String, SecretString>,
    pub(crate) log: LogConfig,
    pub(crate) alerts: AlertsConfig,
    pub(crate) events: EventsSettings,
    pub(crate) notify: NotifySettings,
    pub(crate) messages: MessagesSettings,
    pub(crate) amqp: AmqpSettings,
    /// How long finished tasks, skips, alerts and the audit log are kept, and how the leader
    /// prunes them.
    pub(crate) retention: RetentionSettings,
}

/// Completion notices a task's creator asks for with `notify`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct NotifySettings {
    /// The URL prefixes a `notify.url` must start with; none allowed when empty, so an upstream
    /// cannot make Pacer call arbitrary hosts.
    pub(crate) allowed_urls: Vec<String>,
    /// How long one notice `POST` may take.
    pub(crate) timeout: Span,
    /// Attempts at one notice before it is given up.
    pub(crate) max_attempts: u32,
    /// The wait after the first failed attempt; doubles up to `max_backoff`.
    pub(crate) initial_backoff: Span,
    pub(crate) max_backoff: Span,
}

impl Default for NotifySettings {
    fn default() -> Self {
        Self {
            allowed_urls: Vec::new(),
            timeout: Span::from_secs(10),
            max_attempts: 20,
            initial_backoff: Span::from_secs(1),
            max_backoff: Span::from_secs(300),
        }
    }
}

/// Upstream messages, over REST or RabbitMQ.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct MessagesSettings {
    /// Messages older than this are pruned by the leader; a message's deduplication lasts as
    /// long as it is kept.
    pub(crate) retention: Span,
}

impl Default for MessagesSettings {
    fn default() -> Self {
        Self {
            retention: Span::from_secs(30 * 24 * 3600),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct EventsSettings {
    /// Events older than this are pruned from the event log by the leader.
    pub(crate) retention: Span,
    /// Where the event log is pushed, when set.
    pub(crate) webhook: Option<WebhookSettings>,
}

impl Default for EventsSettings {
    fn default() -> Self {
        Self {
            retention: Span::from_secs(7 * 24 * 3600),
            webhook: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct WebhookSettings {
    /// An http(s) URL that takes a JSON `POST` of `{"events": [...]}`.
    pub(crate) url: String,
    /// Most events in one `POST`.
    pub(crate) batch_size: i64,
    /// How long one `POST` may take.
    pub(crate) timeout: Span,
    /// Credentials, as a job's `target.auth` (`bearer`/`hmac` name a secret, `jwt` an audience).
    pub(crate) auth: pacer_domain::OutboundAuth,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            batch_size: 100,
            timeout: Span::from_secs(10),
            auth: pacer_domain::OutboundAuth::None {},
        }
    }
}

/// RabbitMQ: off unless `url` names a broker. Every node consumes upstream messages from `queue`
/// and publishes the dispatches of jobs with an `amqp` target.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AmqpSettings {
    /// `amqp://user:password@host:5672/vhost` (or `amqps://`); never logged.
    pub(crate) url: Option<SecretString>,
    /// The exchange upstreams publish messages to (a durable topic exchange when declared).
    pub(crate) exchange: String,
    /// The queue Pacer consumes, bound to the exchange with `binding_key`.
    pub(crate) queue: String,
    pub(crate) binding_key: String,
    /// Where malformed messages go, with the reason in the `x-pacer-reject-reason` header.
    pub(crate) dead_letter_queue: String,
    /// Declare the exchange and queues at each connection; `false` expects them to exist.
    pub(crate) declare: bool,
    /// Most unacknowledged messages delivered to one node at once.
    pub(crate) prefetch: u16,
    /// Larger messages are dead-lettered.
    pub(crate) max_message_bytes: usize,
    /// First wait before reconnecting to a broker that went away; doubles up to `reconnect_max`.
    pub(crate) reconnect_initial: Span,
    pub(crate) reconnect_max: Span,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            url: None,
            exchange: "pacer.messages".into(),
            queue: "pacer.messages".into(),
            binding_key: "#".into(),
            dead_letter_queue: "pacer.messages.dead".into(),
            declare: true,
            prefetch: 32,
            max_message_bytes: 256 * 1024,
            reconnect_initial: Span::from_millis(500),
            reconnect_max: Span::from_secs(30),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AuthSettings {
    /// The token issuers Pacer trusts; `PACER_JWT_HS256_SECRET` adds one named `pacer`.
    pub(crate) issuers: Vec<IssuerSettings>,
    /// The claim holding roles: an array (`roles`) or a space-separated string (`scope`).
    pub(crate) role_claim: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub(crate) leeway: Span,
    /// Least time between two fetches of one issuer's JWKS.
    pub(crate) jwks_min_refresh: Span,
    /// A fetched JWKS is refreshed after this long.
    pub(crate) jwks_max_age: Span,
    /// Write requests per second per caller, sustained.
    pub(crate) rate_limit_per_second: f64,
    /// Write requests per caller in a burst.
    pub(crate) rate_limit_burst: u32,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            issuers: Vec::new(),
            role_claim: "roles".into(),
            leeway: Span::from_secs(30),
            jwks_min_refresh: Span::from_secs(30),
            jwks_max_age: Span::from_secs(600),
            rate_limit_per_second: 50.0,
            rate_limit_burst: 100,
        }
    }
}

/// One trusted issuer and its key: exactly one of an HS256 secret, a public key (PEM inline or
/// in a file, with its algorithm), or a JWKS URL.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IssuerSettings {
    pub(crate) issuer: String,
    #[serde(default = "default_audience")]
    pub(crate) audience: String,
    pub(crate) hs256_secret: Option<SecretString>,
    pub(crate) public_key_pem: Option<String>,
    pub(crate) public_key_file: Option<PathBuf>,
    /// `RS256`, `ES256` or `EdDSA`, with a public key.
    pub(crate) algorithm: Option<String>,
    /// The public key's `kid`: a token naming another `kid` is refused.
    pub(crate) kid: Option<String>,
    pub(crate) jwks_url: Option<String>,
}

fn default_audience() -> String {
    "pacer".into()
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct SigningSettings {
    /// The `iss` of the tokens Pacer signs.
    pub(crate) issuer: String,
    /// Pacer's private keys (Ed25519 or RSA, PEM): the first signs, all are published.
    /// `PACER_SIGNING_KEY_FILE` adds one.
    pub(crate) keys: Vec<SigningKeySettings>,
}

impl Default for SigningSettings {
    fn default() -> Self {
        Self {
            issuer: "pacer".into(),
            keys: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SigningKeySettings {
    /// Defaults to a digest of the key, so every node names it alike.
    pub(crate) kid: Option<String>,
    pub(crate) private_key_pem: Option<SecretString>,
    pub(crate) private_key_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct DatabaseConfig {
    /// A `postgres://` URL; may hold a password, so it is never logged.
    pub(crate) url: SecretString,
    pub(crate) max_connections: u32,
    /// How long a request waits for a free connection before failing with 503.
    pub(crate) acquire_timeout: Span,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct HttpConfig {
    /// Address to listen on; port 0 picks a free port (logged at start-up).
    pub(crate) listen: String,
    /// The URL downstreams reach this node on, for callback URLs; defaults to the listen address.
    pub(crate) public_url: Option<String>,
    /// Largest request body accepted, in bytes.
    pub(crate) body_limit: usize,
    /// A request still running after this long is answered `503`.
    pub(crate) request_timeout: Span,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct NodeConfig {
    /// This node's id in claims and attempts; defaults to the host name and a random suffix.
    pub(crate) id: Option<String>,
    /// Threads running this node's work; defaults to the cores the process may use (a
    /// container's CPU limit included).
    pub(crate) worker_threads: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ClusterSettings {
    /// How often this node records its heartbeat.
    pub(crate) heartbeat_interval: Span,
    /// A node silent this long is dead: its claims are taken over.
    pub(crate) dead_after: Span,
    /// How long the leader lease lasts unless renewed (renewed every third of it).
    pub(crate) lease_ttl: Span,
    /// Most triggers fired in one transaction.
    pub(crate) firing_batch_size: usize,
    /// Longest sleep of the firing loop when no notification arrives.
    pub(crate) firing_poll_interval: Span,
    /// How far ahead of their time the occurrences of jobs that allow overlap are fired and
    /// claimed, so that they are dispatched on time; `0s` fires when due.
    pub(crate) fire_ahead: Span,
    /// How often the leader sweeps claims of dead nodes and starts queued tasks.
    pub(crate) sweep_interval: Span,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Span::from_secs(2),
            dead_after: Span::from_secs(10),
            lease_ttl: Span::from_millis(2500),
            firing_batch_size: 2000,
            firing_poll_interval: Span::from_secs(1),
            fire_ahead: Span::from_millis(500),
            sweep_interval: Span::from_secs(1),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LogConfig {
    /// `json` or `pretty`; `pacer dev` defaults to `pretty`.
    pub(crate) format: Option<LogFormat>,
    /// A filter like `info` or `pacer=debug,sqlx=warn`; `RUST_LOG` wins when set.
    pub(crate) level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    Json,
    Pretty,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: SecretString::from("postgres://postgres@127.0.0.1:5432/pacer"),
            max_connections: 20,
            acquire_timeout: Span::from_secs(5),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            public_url: None,
            body_limit: 1024 * 1024,
            request_timeout: Span::from_secs(30),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: None,
            level: "info,sqlx=warn".into(),
        }
    }
}

/// Short environment names for the keys everyone sets.
const SHORT_FORMS: [(&str, &str); 5] = [
    ("PACER_DATABASE_URL", "database.url"),
    ("PACER_AMQP_URL", "amqp.url"),
    ("PACER_LISTEN", "http.listen"),
    ("PACER_PUBLIC_URL", "http.public_url"),
    ("PACER_NODE_ID", "node.id"),
];

impl Config {
    /// Loads the configuration: defaults, then `file` when given, then the environment.
    pub(crate) fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::new();
        if let Some(file) = file {
            if !file.is_file() {
                bail!("configuration file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        let short_names: Vec<&str> = SHORT_FORMS.iter().map(|(env, _)| *env).collect();
        let config: Config = figment
            .merge(Env::raw().only(&short_names).map(|key| {
                let key = SHORT_FORMS
                    .iter()
                    .find(|(env, _)| key.as_str().eq_ignore_ascii_case(env))
                    .map_or_else(|| key.as_str().to_owned(), |(_, path)| (*path).to_owned());
                key.into()
            }))
            // Only nested keys: `PACER_URL`, `PACER_CONFIG` and friends belong to the CLI.
            .merge(
                Env::prefixed("PACER_")
                    .filter(|key| key.as_str().contains("__"))
                    .split("__"),
            )
            .extract()
            .context("invalid configuration")?;
        let mut config = config;
        // Short forms that add an entry to a list, which environment keys cannot express.
        if let Ok(secret) = std::env::var("PACER_JWT_HS256_SECRET") {
            config.auth.issuers.push(IssuerSettings {
                issuer: "pacer".into(),
                audience: default_audience(),
                hs256_secret: Some(SecretString::from(secret)),
                public_key_pem: None,
                public_key_file: None,
                algorithm: None,
                kid: None,
                jwks_url: None,
            });
        }
        if let Ok(file) = std::env::var("PACER_SIGNING_KEY_FILE") {
            config.signing.keys.push(SigningKeySettings {
                kid: None,
                private_key_pem: None,
                private_key_file: Some(file.into()),
            });
        }
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        let url = self.database.url.expose_secret();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            bail!("database.url must be a postgres:// URL");
        }
        if !(1..=1000).contains(&self.database.max_connections) {
            bail!("database.max_connections must be between 1 and 1000");
        }
        self.dispatch
            .check()
            .map_err(|problem| anyhow::anyhow!(problem))?;
        if self
            .node
            .worker_threads
            .is_some_and(|threads| !(1..=1024).contains(&threads))
        {
            bail!("node.worker_threads must be between 1 and 1024");
        }
        let cluster = &self.cluster;
        if cluster.heartbeat_interval < Span::from_millis(100) {
            bail!("cluster.heartbeat_interval must be at least 100ms");
        }
        if cluster.dead_after.as_duration() < cluster.heartbeat_interval.as_duration() * 2 {
            bail!("cluster.dead_after must be at least twice cluster.heartbeat_interval");
        }
        if cluster.lease_ttl < Span::from_millis(600) {
            bail!("cluster.lease_ttl must be at least 600ms");
        }
        if !(1..=10_000).contains(&cluster.firing_batch_size) {
            bail!("cluster.firing_batch_size must be between 1 and 10000");
        }
        if cluster.firing_poll_interval < Span::from_millis(10)
            || cluster.sweep_interval < Span::from_millis(100)
        {
            bail!(
                "cluster.firing_poll_interval must be at least 10ms and cluster.sweep_interval at least 100ms"
            );
        }
        if cluster.fire_ahead > Span::from_secs(10) {
            bail!("cluster.fire_ahead must be at most 10s");
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.http.body_limit) {
            bail!("http.body_limit must be between 1024 and 67108864 bytes");
        }
        let amqp = &self.amqp;
        if let Some(url) = &amqp.url {
            let url = url.expose_secret();
            if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                bail!("amqp.url must be an amqp:// or amqps:// URL");
            }
        }
        let name_ok = |name: &str| !name.is_empty() && name.len() <= 255;
        if !name_ok(&amqp.queue) || !name_ok(&amqp.dead_letter_queue) || amqp.exchange.len() > 255 {
            bail!(
                "amqp.queue and amqp.dead_letter_queue must be 1 to 255 bytes, amqp.exchange at most 255"
            );
        }
        if amqp.queue == amqp.dead_letter_queue {
            bail!("amqp.dead_letter_queue must differ from amqp.queue");
        }
        if amqp.binding_key.len() > 255 {
            bail!("amqp.binding_key must be at most 255 bytes");
        }
        if amqp.prefetch == 0 {
            bail!("amqp.prefetch must be at least 1");
        }
        if !(64..=64 * 1024 * 1024).contains(&amqp.max_message_bytes) {
            bail!("amqp.max_message_bytes must be between 64 and 67108864");
        }
        if amqp.reconnect_initial < Span::from_millis(10)
            || amqp.reconnect_max < amqp.reconnect_initial
        {
            bail!(
                "amqp.reconnect_initial must be at least 10ms and amqp.reconnect_max at least that"
            );
        }
        if let Some(url) = &self.http.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            bail!("http.public_url must be an http:// or https:// URL");
        }
        self.check_alerts()?;
        self.check_events()
    }

    fn check_alerts(&self) -> anyhow::Result<()> {
        let alerts = &self.alerts;
        let mut names = std::collections::BTreeSet::new();
        for (i, sink) in alerts.sinks.iter().enumerate() {
            if sink.name.parse::<pacer_domain::JobName>().is_err() || sink.name == "log" {
                bail!(
                    "alerts.sinks[{i}].name must be 1 to 64 letters, digits, '.', '_' or '-' (and not `log`)"
                );
            }
            if !names.insert(sink.name.as_str()) {
                bail!("alerts.sinks: the name `{}` is used twice", sink.name);
            }
            if sink.kind == pacer_engine::SinkKind::Email {
                self.check_email_sink(i, sink)?;
                continue;
            }
            if !sink.to.is_empty() || sink.from.is_some() || sink.smtp.is_some() {
                bail!(
                    "alerts.sinks[{i}]: `to`, `from` and `smtp` are for e-mail sinks (kind = \"email\")"
                );
            }
            if !(sink.url.starts_with("http://") || sink.url.starts_with("https://")) {
                bail!("alerts.sinks[{i}].url must be an http:// or https:// URL");
            }
            if let Some(secret) = &sink.secret
                && !self.secrets.contains_key(secret)
            {
                bail!("alerts.sinks[{i}].secret names `{secret}`, which is not in `secrets`");
            }
        }
        if alerts.dispatch_errors_threshold < 1 {
            bail!("alerts.dispatch_errors_threshold must be at least 1");
        }
        if alerts.evaluation_interval < Span::from_millis(100) {
            bail!("alerts.evaluation_interval must be at least 100ms");
        }
        if alerts.delivery_timeout < Span::from_millis(100) {
            bail!("alerts.delivery_timeout must be at least 100ms");
        }
        if !(1..=10_000).contains(&alerts.delivery_max_attempts) {
            bail!("alerts.delivery_max_attempts must be between 1 and 10000");
        }
        if alerts.delivery_initial_backoff < Span::from_millis(10)
            || alerts.delivery_max_backoff < alerts.delivery_initial_backoff
        {
            bail!(
                "alerts.delivery_initial_backoff must be at least 10ms and alerts.delivery_max_backoff at least as long"
            );
        }
        if alerts.delivery_poll_interval < Span::from_millis(10) {
            bail!("alerts.delivery_poll_interval must be at least 10ms");
        }
        Ok(())
    }

    /// An e-mail sink: recipients and sender are addresses, the SMTP server is set, and its
    /// password names a configured secret.
    fn check_email_sink(&self, i: usize, sink: &pacer_engine::SinkConfig) -> anyhow::Result<()> {
        if !sink.url.is_empty() || sink.secret.is_some() {
            bail!(
                "alerts.sinks[{i}]: an e-mail sink has no `url` or `secret`; its SMTP password is `smtp.password`"
            );
        }
        if let Err((field, problem)) =
            pacer_engine::check_email_sink(&sink.to, sink.from.as_deref(), sink.smtp.as_ref())
        {
            bail!("alerts.sinks[{i}].{field} {problem}");
        }
        if let Some(secret) = sink.smtp.as_ref().and_then(|s| s.password.as_ref())
            && !self.secrets.contains_key(secret)
        {
            bail!("alerts.sinks[{i}].smtp.password names `{secret}`, which is not in `secrets`");
        }
        Ok(())
    }

    fn check_events(&self) -> anyhow::Result<()> {
        if self.events.retention < Span::from_secs(60) {
            bail!("events.retention must be at least 1m");
        }
        if self.messages.retention < Span::from_secs(60) {
            bail!("messages.retention must be at least 1m");
        }
        for prefix in &self.notify.allowed_urls {
            if !(prefix.starts_with("http://") || prefix.starts_with("https://")) {
                bail!("notify.allowed_urls: `{prefix}` is not an http:// or https:// URL prefix");
            }
        }
        if self.notify.max_attempts == 0 {
            bail!("notify.max_attempts must be at least 1");
        }
        let retention = &self.retention;
        for (key, value) in [
            ("retention.tasks", retention.tasks),
            ("retention.skips", retention.skips),
            ("retention.alerts", retention.alerts),
            ("retention.audit", retention.audit),
        ] {
            if value < Span::from_secs(1) {
                bail!("{key} must be at least 1s");
            }
        }
        if retention.interval < Span::from_millis(100) {
            bail!("retention.interval must be at least 100ms");
        }
        if retention.budget < Span::from_millis(100) {
            bail!("retention.budget must be at least 100ms");
        }
        if !(1..=100_000).contains(&retention.batch_size) {
            bail!("retention.batch_size must be between 1 and 100000");
        }
        if !(0.01..=1.0).contains(&retention.share) {
            bail!("retention.share must be between 0.01 and 1");
        }
        if let Some(webhook) = &self.events.webhook {
            if !(webhook.url.starts_with("http://") || webhook.url.starts_with("https://")) {
                bail!("events.webhook.url must be an http:// or https:// URL");
            }
            if !(1..=1000).contains(&webhook.batch_size) {
                bail!("events.webhook.batch_size must be between 1 and 1000");
            }
            if let Some(secret) = webhook.auth.secret()
                && !self.secrets.contains_key(secret)
            {
                bail!("events.webhook.auth names the secret `{secret}`, which is not configured");
            }
        }
        Ok(())
    }
}
