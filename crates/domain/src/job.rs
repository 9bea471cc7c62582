//! Jobs: a named definition of work — where to dispatch it, with what payload, and the re-poll,
//! retry, timeout and deadline policy. [`JobInput`] is what a client sends; a [`JobSpec`] exists
//! only once every field has been checked.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::alert::JobAlerts;
use crate::concurrency::{GroupName, check_limit};
use crate::firing::OverlapPolicy;
use crate::message::{MessageType, parse_subscriptions};
use crate::retry::StatusMatch;
use crate::workflow::{Step, check_steps};
use crate::{RetryPolicy, Span, ValidationErrors};

/// A job's name: 1–64 characters of letters, digits, `.`, `_` and `-`, starting with a letter
/// or digit. It appears in URLs, so it needs no escaping.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct JobName(String);

/// Why a job name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a job name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")]
pub struct InvalidJobName;

impl FromStr for JobName {
    type Err = InvalidJobName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if crate::validation::is_name(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidJobName)
        }
    }
}

impl JobName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for JobName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Where a job's tasks are dispatched: an HTTP endpoint taking a `POST`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTarget {
    /// An `http` or `https` URL with a host, at most 2048 characters.
    #[cfg_attr(
        feature = "openapi",
        schema(
            max_length = 2048,
            pattern = r"^https?://[^/?#\s]+([/?#]\S*)?$",
            example = "http://registry:8080/sync/masterdata"
        )
    )]
    pub url: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "OutboundAuth::is_none")]
    pub auth: OutboundAuth,
    /// Where a cancellation is sent (`DELETE`, best effort); `url` when absent. `{task_id}` in it
    /// is replaced by the task's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_url: Option<String>,
}

/// Where a job's tasks are dispatched: an HTTP endpoint (written without a `kind`, or with
/// `"kind": "http"`), or a RabbitMQ exchange (`"kind": "amqp"`).
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Http(HttpTarget),
    Amqp(AmqpTarget),
}

/// Where a job's tasks are published: a RabbitMQ exchange and routing key, with publisher
/// confirms. The empty exchange is the broker's default one (the routing key names a queue).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpTarget {
    /// At most 127 letters, digits, `.`, `_`, `-`, `:` or `/`; empty for the default exchange.
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9._:/-]{0,127}$"))]
    pub exchange: String,
    pub routing_key: String,
    /// Static headers on every published message.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl Target {
    /// The HTTP target, if this is one.
    pub fn http(&self) -> Option<&HttpTarget> {
        match self {
            Target::Http(http) => Some(http),
            Target::Amqp(_) => None,
        }
    }

    /// The outbound auth of the target (AMQP targets carry none: the broker authenticates).
    pub fn auth(&self) -> &OutboundAuth {
        static NONE: OutboundAuth = OutboundAuth::None {};
        match self {
            Target::Http(http) => &http.auth,
            Target::Amqp(_) => &NONE,
        }
    }

    /// The target's static headers.
    pub fn headers(&self) -> &BTreeMap<String, String> {
        match self {
            Target::Http(http) => &http.headers,
            Target::Amqp(amqp) => &amqp.headers,
        }
    }
}

/// Named in the OpenAPI document; the API documents a target's shape (one object per kind, an
/// HTTP target still written without a `kind`) where it builds the document.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Target {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new().into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Target {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        use utoipa::PartialSchema;
        schemas.push((
            <OutboundAuth as utoipa::ToSchema>::name().into(),
            OutboundAuth::schema(),
        ));
    }
}

// An HTTP target is written as it always was, without a `kind`, so stored definitions and their
// versions stay as they are.
impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Target::Http(http) => http.serialize(serializer),
            Target::Amqp(amqp) => {
                #[derive(Serialize)]
                struct Tagged<'a> {
                    kind: &'static str,
                    #[serde(flatten)]
                    amqp: &'a AmqpTarget,
                }
                Tagged { kind: "amqp", amqp }.serialize(serializer)
            }
        }
    }
}

/// Every field a target may have, so an unknown one is refused with its path
/// (`target.verb`), before the kind decides which of them belong.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFields {
    kind: Option<String>,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    auth: Option<OutboundAuth>,
    cancel_url: Option<String>,
    exchange: Option<String>,
    routing_key: Option<String>,
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let fields = TargetFields::deserialize(deserializer)?;
        match fields.kind.as_deref() {
            None | Some("http") => {
                if fields.exchange.is_some() || fields.routing_key.is_some() {
                    return Err(D::Error::custom(
                        "`exchange` and `routing_key` belong to an `amqp` target (`\"kind\": \"amqp\"`)",
                    ));
                }
                Ok(Target::Http(HttpTarget {
                    url: fields.url.ok_or_else(|| D::Error::missing_field("url"))?,
                    headers: fields.headers,
                    auth: fields.auth.unwrap_or_default(),
                    cancel_url: fields.cancel_url,
                }))
            }
            Some("amqp") => {
                if fields.url.is_some() || fields.auth.is_some() || fields.cancel_url.is_some() {
                    return Err(D::Error::custom(
                        "`url`, `auth` and `cancel_url` belong to an HTTP target; an `amqp` target has `exchange` and `routing_key`",
                    ));
                }
                Ok(Target::Amqp(AmqpTarget {
                    exchange: fields
                        .exchange
                        .ok_or_else(|| D::Error::missing_field("exchange"))?,
                    routing_key: fields
                        .routing_key
                        .ok_or_else(|| D::Error::missing_field("routing_key"))?,
                    headers: fields.headers,
                }))
            }
            Some(other) => Err(D::Error::custom(format!(
                "unknown target kind `{other}`, expected `http` or `amqp`"
            ))),
        }
    }
}

/// How a dispatch proves it comes from Pacer. Secrets are named, never written here: their values
/// live in Pacer's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OutboundAuth {
    /// No credentials.
    // A struct variant, so that like the others it refuses unknown fields: serde lets a unit
    // variant of an internally tagged enum ignore them.
    None {},
    /// `Authorization: Bearer <the secret's value>`.
    Bearer {
        /// The secret's name: 1 to 64 letters, digits, `.`, `_` or `-`.
        #[cfg_attr(
            feature = "openapi",
            schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
        )]
        secret: String,
    },
    /// `Authorization: Bearer <a short-lived JWT signed by Pacer>` with this audience; the keys
    /// are published at `/.well-known/jwks.json`.
    Jwt {
        /// 1 to 256 characters.
        #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 256))]
        audience: String,
    },
    /// A `pacer-signature` header: an HMAC-SHA256 over a timestamp and the body, keyed by the
    /// secret's value.
    Hmac {
        /// The secret's name: 1 to 64 letters, digits, `.`, `_` or `-`.
        #[cfg_attr(
            feature = "openapi",
            schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
        )]
        secret: String,
    },
    /// `Authorization: Bearer <an access token>` fetched from an OAuth2 token endpoint with the
    /// client credentials grant (RFC 6749 §4.4; the client authenticates with HTTP Basic). Each
    /// node keeps the token until shortly before it expires, and fetches a new one once when the
    /// downstream answers `401`.
    #[serde(rename = "oauth2")]
    OAuth2 {
        /// The token endpoint: an `http` or `https` URL with a host, at most 2048 characters.
        #[cfg_attr(
            feature = "openapi",
            schema(
                max_length = 2048,
                pattern = r"^https?://[^/?#\s]+([/?#]\S*)?$",
                example = "https://auth.example.com/oauth2/token"
            )
        )]
        token_url: String,
        /// 1 to 256 characters.
        #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 256))]
        client_id: String,
        /// The name of the secret holding the client secret: 1 to 64 letters, digits, `.`, `_`
        /// or `-`.
        #[cfg_attr(
            feature = "openapi",
            schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
        )]
        client_secret: String,
        /// The `scope` asked for (space-separated scopes), at most 1024 characters.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "openapi", schema(max_length = 1024))]
        scope: Option<String>,
        /// The `audience` asked for (an extension some providers need), at most 256
        /// characters.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "openapi", schema(max_length = 256))]
        audience: Option<String>,
    },
}

impl Default for OutboundAuth {
    fn default() -> Self {
        OutboundAuth::None {}
    }
}

impl OutboundAuth {
    /// True for [`OutboundAuth::None`].
    pub fn is_none(&self) -> bool {
        *self == OutboundAuth::None {}
    }

    /// The name of the configured secret this needs, if any.
    pub fn secret(&self) -> Option<&str> {
        match self {
            OutboundAuth::Bearer { secret } | OutboundAuth::Hmac { secret } => Some(secret),
            OutboundAuth::OAuth2 { client_secret, .. } => Some(client_secret),
            OutboundAuth::None {} | OutboundAuth::Jwt { .. } => None,
        }
    }

    /// The field naming the secret of [`OutboundAuth::secret`] (`secret`, `client_secret`).
    pub fn secret_field(&self) -> &'static str {
        match self {
            OutboundAuth::OAuth2 { .. } => "client_secret",
            _ => "secret",
        }
    }
}

/// A validated job definition, as stored and as returned by the API.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where the job's tasks are dispatched; absent for a job made of `steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// The steps of a job made of steps (a workflow): its task is a run whose children are
    /// dispatched step by step. Empty for a job with a `target`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: Value,
    pub repoll_interval: Span,
    pub dispatch_timeout: Span,
    pub timeout: Span,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Span>,
    pub retry: RetryPolicy,
    pub expect_callback: bool,
    #[serde(default)]
    pub overlap: OverlapPolicy,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where the job's alerts and success notices go; absent when it routes nothing.
    #[serde(default, skip_serializing_if = "JobAlerts::is_empty")]
    pub alerts: JobAlerts,
    /// Message types this job subscribes to: each such message creates a task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_messages: Vec<MessageType>,
    /// Most of this job's tasks holding a slot (dispatched and not yet ended) at once,
    /// cluster-wide; the others wait `pending` in due order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// The concurrency group whose limit this job's tasks share with every other job in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub concurrency_group: Option<GroupName>,
    /// Skip if unchanged: each dispatch carries `last_fingerprint`, and a task whose downstream
    /// reports the same fingerprint (or `unchanged: true`) ends `completed`, outcome `unchanged`.
    /// A job made of steps sets it on a step instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_if_unchanged: bool,
    /// How old the job's data may get: a `stale` alert opens when its last completed run started
    /// longer ago than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness: Option<Span>,
    /// How long this job's finished tasks are kept, instead of the server's `retention.tasks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Span>,
}

/// A job definition as a client writes it: everything but the target is optional.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({
    "description": "Pull master data deltas",
    "target": { "url": "http://registry:8080/sync/masterdata", "headers": { "X-Tenant": "a" },
                "auth": { "kind": "jwt", "audience": "registry" } },
    "payload": { "tables": ["centers"] },
    "repoll_interval": "30s", "dispatch_timeout": "10s", "timeout": "2h", "deadline": "15m",
    "retry": { "max_attempts": 10, "initial_backoff": "1s", "max_backoff": "5m", "multiplier": 2.0, "jitter": 0.2 },
    "expect_callback": true, "overlap": "skip", "on_messages": ["masterdata.changed"],
    "labels": { "team": "registration" }, "freshness": "6h", "retention": "7d"
})))]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobInput {
    /// At most 1000 characters.
    #[cfg_attr(feature = "openapi", schema(max_length = 1000))]
    pub description: Option<String>,
    /// Where the job's tasks are dispatched; a job has either a `target` or `steps`.
    pub target: Option<Target>,
    /// The steps of a job made of steps, run one after another; a step's children run in
    /// parallel.
    pub steps: Option<Vec<Step>>,
    /// A JSON object; a task's own payload is laid over it key by key.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub payload: Option<Value>,
    pub repoll_interval: Option<Span>,
    pub dispatch_timeout: Option<Span>,
    pub timeout: Option<Span>,
    pub deadline: Option<Span>,
    pub retry: Option<RetryInput>,
    pub expect_callback: Option<bool>,
    pub overlap: Option<OverlapPolicy>,
    /// At most 32, each key 1 to 64 letters, digits, `.`, `_` or `-` (starting with a letter or
    /// digit), each value at most 256 characters.
    #[cfg_attr(feature = "openapi", schema(schema_with = labels_schema))]
    pub labels: Option<BTreeMap<String, String>>,
    pub alerts: Option<JobAlerts>,
    /// Message types this job subscribes to: each such message creates a task.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<MessageType>>))]
    pub on_messages: Option<Vec<String>>,
    /// Most of this job's tasks dispatched and not yet ended at once, cluster-wide (1–10000);
    /// the others wait `pending` in due order and start as slots free up.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10000))]
    #[serde(default, deserialize_with = "crate::validation::optional_whole_number")]
    pub max_concurrency: Option<u32>,
    /// A concurrency group (defined with `PUT /api/v1/concurrency-groups/{name}`) whose limit
    /// this job's tasks share with every other job in it.
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<String>, pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    )]
    pub concurrency_group: Option<String>,
    /// Dispatch with `last_fingerprint` (the fingerprint of the job's last completed run) and end
    /// a task whose downstream reports the same fingerprint, or `unchanged: true`, as `completed`
    /// with outcome `unchanged`. Default false; a job made of steps sets it on a step.
    pub skip_if_unchanged: Option<bool>,
    /// How old the job's data may get (1s–365d): when its last completed run started longer ago
    /// than this (or, before any completed, it has watched its freshness that long), a `stale`
    /// alert opens; the next completed run resolves it.
    pub freshness: Option<Span>,
    /// How long this job's finished tasks (with their attempts, events and a run's children)
    /// are kept before the leader prunes them (1m–365d), instead of the server's
    /// `retention.tasks`. The job's last completed run is kept whatever its age.
    pub retention: Option<Span>,
}

/// The schema of a job's labels: the rules [`check_labels`] applies.
#[cfg(feature = "openapi")]
fn labels_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{AdditionalProperties, SchemaType};
    use utoipa::openapi::schema::{ObjectBuilder, Type};

    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .max_properties(Some(32))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(256))
                .into(),
        )))
        .build()
}

/// A retry policy as a client writes it; omitted fields take the defaults.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryInput {
    /// Most dispatches in a row that end in a transient error (1–1000, default 10).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    #[serde(default, deserialize_with = "crate::validation::optional_whole_number")]
    pub max_attempts: Option<u32>,
    pub initial_backoff: Option<Span>,
    pub max_backoff: Option<Span>,
    /// Each backoff is the one before times this (1.0–10.0, default 2.0).
    #[cfg_attr(feature = "openapi", schema(minimum = 1.0, maximum = 10.0))]
    pub multiplier: Option<f64>,
    /// Each backoff is shortened by up to this share of it, at random (0.0–1.0, default 0.2).
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 1.0))]
    pub jitter: Option<f64>,
    /// HTTP statuses (300–599) or classes (`"4xx"`, `"5xx"`) a dispatch may answer that count as
    /// transient for this job, replacing the default set (408, 429, 5xx). At most 32. 409 keeps
    /// meaning "already running" unless named as a status.
    #[cfg_attr(feature = "openapi", schema(max_items = 32))]
    pub on_status: Option<Vec<StatusMatch>>,
    /// Statuses or classes that fail the task at once even where `on_status` (or the default
    /// set) would retry them; a status named on its own wins over a class. At most 32.
    #[cfg_attr(feature = "openapi", schema(max_items = 32))]
    pub never_on_status: Option<Vec<StatusMatch>>,
    /// Error codes a downstream reports with a `failed` status (`"error": {"code": …}`) that
    /// dispatch the task again with backoff instead of ending it, counted against
    /// `max_attempts`. At most 32, each 1 to 128 characters without control characters.
    #[cfg_attr(feature = "openapi", schema(max_items = 32))]
    pub on_errors: Option<Vec<String>>,
}

/// Checks the statuses a retry list names: at most 32, none twice, none in `other` (the other
/// list) as the same status or class.
fn check_statuses(
    errors: &mut ValidationErrors,
    field: &str,
    list: &[StatusMatch],
    other: &[StatusMatch],
) {
    if list.len() > 32 {
        errors.push(field, "at most 32 statuses");
    }
    for (i, status) in list.iter().enumerate() {
        if list[..i].contains(status) {
            errors.push(format!("{field}[{i}]"), format!("named twice: {status}"));
        } else if other.contains(status) {
            errors.push(
                format!("{field}[{i}]"),
                format!("named in both `on_status` and `never_on_status`: {status}"),
            );
        }
    }
}

fn check_error_codes(errors: &mut ValidationErrors, codes: &[String]) {
    if codes.len() > 32 {
        errors.push("retry.on_errors", "at most 32 error codes");
    }
    for (i, code) in codes.iter().enumerate() {
        let field = format!("retry.on_errors[{i}]");
        if code.is_empty() || code.chars().count() > 128 || code.chars().any(char::is_control) {
            errors.push(field, "1 to 128 characters, no control characters");
        } else if codes[..i].contains(code) {
            errors.push(field, format!("named twice: `{code}`"));
        }
    }
}

/// Defaults a job takes when its definition leaves a field out.
pub mod defaults {
    use crate::Span;

    /// How long after an accepted dispatch the task is dispatched again.
    pub const REPOLL_INTERVAL: Span = Span::from_secs(30);
    /// How long one dispatch may take before it counts as a transient error.
    pub const DISPATCH_TIMEOUT: Span = Span::from_secs(10);
    /// How long a task may stay open before it fails as `timed_out`.
    pub const TIMEOUT: Span = Span::from_secs(24 * 3600);
}

/// Headers Pacer sets itself on every dispatch; a job may not override them.
const RESERVED_HEADERS: [&str; 7] = [
    "content-type",
    "content-length",
    "host",
    "idempotency-key",
    "traceparent",
    "transfer-encoding",
    "connection",
];

fn check_range(errors: &mut ValidationErrors, field: &str, value: Span, min: Span, max: Span) {
    if value < min || value > max {
        errors.push(
            field,
            format!("must be between {min} and {max}, got {value}"),
        );
    }
}

fn check_amqp(errors: &mut ValidationErrors, prefix: &str, target: &AmqpTarget) {
    // AMQP short strings: at most 255 bytes; exchange names are also limited by RabbitMQ.
    let name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/');
    if target.exchange.len() > 127 || !target.exchange.chars().all(name) {
        errors.push(
            format!("{prefix}.exchange"),
            "at most 127 letters, digits, '.', '_', '-', ':' or '/' (empty: the default exchange)",
        );
    }
    if target.routing_key.len() > 255 || target.routing_key.chars().any(char::is_control) {
        errors.push(
            format!("{prefix}.routing_key"),
            "at most 255 bytes, no control characters",
        );
    }
    if target.exchange.is_empty() && target.routing_key.is_empty() {
        errors.push(
            format!("{prefix}.routing_key"),
            "the default exchange routes by queue name: name the queue",
        );
    }
}

fn check_headers(errors: &mut ValidationErrors, prefix: &str, headers: &BTreeMap<String, String>) {
    if headers.len() > 32 {
        errors.push(format!("{prefix}.headers"), "at most 32 headers");
    }
    for (name, value) in headers {
        let field = format!("{prefix}.headers.{name}");
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || name.len() > 128 || !name.chars().all(token) {
            errors.push(field, "not a valid HTTP header name");
        } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            errors.push(
                field,
                "is set by Pacer on every dispatch and cannot be overridden",
            );
        } else if name.eq_ignore_ascii_case("authorization") {
            errors.push(field, "credentials do not belong in static headers");
        } else if value.len() > 4096
            || !value.chars().all(|c| c == '\t' || (' '..='~').contains(&c))
        {
            errors.push(
                field,
                "a header value is at most 4096 visible ASCII characters",
            );
        }
    }
}

fn check_url(errors: &mut ValidationErrors, field: &str, raw: &str) {
    match url::Url::parse(raw) {
        _ if raw.len() > 2048 => errors.push(field, "at most 2048 characters"),
        Ok(url) if !matches!(url.scheme(), "http" | "https") => {
            errors.push(field, "must be an http or https URL")
        }
        Ok(url) if url.host_str().is_none_or(str::is_empty) => {
            errors.push(field, "must name a host")
        }
        Ok(_) => {}
        Err(e) => errors.push(field, format!("not a valid URL: {e}")),
    }
}

/// Checks a target; `prefix` is its field path (`target`, `steps[1].target`).
pub(crate) fn check_target(errors: &mut ValidationErrors, prefix: &str, target: &Target) {
    match target {
        Target::Http(http) => {
            check_url(errors, &format!("{prefix}.url"), &http.url);
            if let Some(cancel_url) = &http.cancel_url {
                // The placeholder is not URL syntax; check the URL around it.
                check_url(
                    errors,
                    &format!("{prefix}.cancel_url"),
                    &cancel_url.replace("{task_id}", "task"),
                );
            }
        }
        Target::Amqp(amqp) => check_amqp(errors, prefix, amqp),
    }
    check_headers(errors, prefix, target.headers());
    check_auth(errors, &format!("{prefix}.auth"), target.auth());
}

/// Checks an outbound auth written at `prefix` (`target.auth`, `auth`): secret names, a JWT's
/// audience, an OAuth2 token endpoint and its parameters.
pub fn check_auth(errors: &mut ValidationErrors, prefix: &str, auth: &OutboundAuth) {
    match auth {
        OutboundAuth::Bearer { secret } | OutboundAuth::Hmac { secret }
            if secret.parse::<JobName>().is_err() =>
        {
            errors.push(
                format!("{prefix}.secret"),
                "a secret name is 1 to 64 letters, digits, '.', '_' or '-'",
            );
        }
        OutboundAuth::Jwt { audience } if audience.is_empty() || audience.chars().count() > 256 => {
            errors.push(format!("{prefix}.audience"), "1 to 256 characters");
        }
        OutboundAuth::OAuth2 {
            token_url,
            client_id,
            client_secret,
            scope,
            audience,
        } => {
            check_url(errors, &format!("{prefix}.token_url"), token_url);
            if client_id.is_empty()
                || client_id.chars().count() > 256
                || client_id.chars().any(char::is_control)
            {
                errors.push(
                    format!("{prefix}.client_id"),
                    "1 to 256 characters, no control characters",
                );
            }
            if client_secret.parse::<JobName>().is_err() {
                errors.push(
                    format!("{prefix}.client_secret"),
                    "a secret name is 1 to 64 letters, digits, '.', '_' or '-'",
                );
            }
            if let Some(scope) = scope
                && (scope.chars().count() > 1024 || scope.chars().any(char::is_control))
            {
                errors.push(
                    format!("{prefix}.scope"),
                    "at most 1024 characters, no control characters",
                );
            }
            if let Some(audience) = audience
                && (audience.chars().count() > 256 || audience.chars().any(char::is_control))
            {
                errors.push(
                    format!("{prefix}.audience"),
                    "at most 256 characters, no control characters",
                );
            }
        }
        _ => {}
    }
}

fn check_labels(errors: &mut ValidationErrors, labels: &BTreeMap<String, String>) {
    if labels.len() > 32 {
        errors.push("labels", "at most 32 labels");
    }
    for (key, value) in labels {
        if key.parse::<JobName>().is_err() {
            errors.push(
                format!("labels.{key}"),
                "a label key is 1 to 64 letters, digits, '.', '_' or '-'",
            );
        } else if value.chars().count() > 256 {
            errors.push(
                format!("labels.{key}"),
                "a label value is at most 256 characters",
            );
        }
    }
}

impl TryFrom<RetryInput> for RetryPolicy {
    type Error = ValidationErrors;

    fn try_from(input: RetryInput) -> Result<Self, Self::Error> {
        let defaults = RetryPolicy::default();
        let policy = RetryPolicy {
            max_attempts: input.max_attempts.unwrap_or(defaults.max_attempts),
            initial_backoff: input.initial_backoff.unwrap_or(defaults.initial_backoff),
            max_backoff: input.max_backoff.unwrap_or_else(|| {
                defaults
                    .max_backoff
                    .max(input.initial_backoff.unwrap_or_default())
            }),
            multiplier: input.multiplier.unwrap_or(defaults.multiplier),
            jitter: input.jitter.unwrap_or(defaults.jitter),
            on_status: input.on_status,
            never_on_status: input.never_on_status.unwrap_or_default(),
            on_errors: input.on_errors.unwrap_or_default(),
        };
        let mut errors = ValidationErrors::new();
        // The never list is checked against the other: an entry in both is refused where it
        // carves out, which is where it has an effect.
        check_statuses(
            &mut errors,
            "retry.on_status",
            policy.on_status.as_deref().unwrap_or_default(),
            &[],
        );
        check_statuses(
            &mut errors,
            "retry.never_on_status",
            &policy.never_on_status,
            policy.on_status.as_deref().unwrap_or_default(),
        );
        check_error_codes(&mut errors, &policy.on_errors);
        if !(1..=1000).contains(&policy.max_attempts) {
            errors.push("retry.max_attempts", "must be between 1 and 1000");
        }
        check_range(
            &mut errors,
            "retry.initial_backoff",
            policy.initial_backoff,
            Span::from_millis(10),
            Span::from_secs(3600),
        );
        check_range(
            &mut errors,
            "retry.max_backoff",
            policy.max_backoff,
            policy.initial_backoff,
            Span::from_secs(86_400),
        );
        if !(1.0..=10.0).contains(&policy.multiplier) {
            errors.push("retry.multiplier", "must be between 1.0 and 10.0");
        }
        if !(0.0..=1.0).contains(&policy.jitter) {
            errors.push("retry.jitter", "must be between 0.0 and 1.0");
        }
        errors.into_result(policy)
    }
}

impl TryFrom<JobInput> for JobSpec {
    type Error = ValidationErrors;

    fn try_from(input: JobInput) -> Result<Self, Self::Error> {
        let mut errors = ValidationErrors::new();
        if input
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > 1000)
        {
            errors.push("description", "at most 1000 characters");
        }
        let mut steps_out = Vec::new();
        let target = match (input.target, input.steps) {
            (Some(target), None) => {
                check_target(&mut errors, "target", &target);
                Some(target)
            }
            (None, Some(steps)) => {
                steps_out = check_steps(&mut errors, steps);
                None
            }
            (Some(_), Some(_)) => {
                errors.push("steps", "a job has either a `target` or `steps`, not both");
                None
            }
            (None, None) => {
                errors.push("target", "a job needs a `target`, or `steps`");
                None
            }
        };
        let payload = input.payload.unwrap_or_else(|| Value::Object(Map::new()));
        if !payload.is_object() {
            errors.push("payload", "must be a JSON object");
        }
        let repoll_interval = input.repoll_interval.unwrap_or(defaults::REPOLL_INTERVAL);
        check_range(
            &mut errors,
            "repoll_interval",
            repoll_interval,
            Span::from_secs(1),
            Span::from_secs(7 * 86_400),
        );
        let dispatch_timeout = input.dispatch_timeout.unwrap_or(defaults::DISPATCH_TIMEOUT);
        check_range(
            &mut errors,
            "dispatch_timeout",
            dispatch_timeout,
            Span::from_millis(100),
            Span::from_secs(600),
        );
        let timeout = input.timeout.unwrap_or(defaults::TIMEOUT);
        check_range(
            &mut errors,
            "timeout",
            timeout,
            Span::from_secs(1),
            Span::from_secs(90 * 86_400),
        );
        if let Some(deadline) = input.deadline {
            check_range(
                &mut errors,
                "deadline",
                deadline,
                Span::from_secs(1),
                timeout,
            );
        }
        for (i, step) in steps_out.iter().enumerate() {
            if let Some(deadline) = step.deadline {
                check_range(
                    &mut errors,
                    &format!("steps[{i}].deadline"),
                    deadline,
                    Span::from_secs(1),
                    timeout,
                );
            }
        }
        let retry = match RetryPolicy::try_from(input.retry.unwrap_or_default()) {
            Ok(policy) => policy,
            Err(retry_errors) => {
                for e in retry_errors.errors() {
                    errors.push(e.field.clone(), e.message.clone());
                }
                RetryPolicy::default()
            }
        };
        let labels = input.labels.unwrap_or_default();
        check_labels(&mut errors, &labels);
        let alerts = input.alerts.unwrap_or_default();
        alerts.check(&mut errors);
        let on_messages = parse_subscriptions(&mut errors, input.on_messages);
        if let Some(limit) = input.max_concurrency {
            check_limit(&mut errors, "max_concurrency", limit);
        }
        let concurrency_group = input.concurrency_group.and_then(|name| {
            name.parse::<GroupName>()
                .map_err(|e| errors.push("concurrency_group", e.to_string()))
                .ok()
        });
        let skip_if_unchanged = input.skip_if_unchanged.unwrap_or(false);
        if skip_if_unchanged && !steps_out.is_empty() {
            errors.push(
                "skip_if_unchanged",
                "a job made of steps sets `skip_if_unchanged` on the step whose downstream \
                 reports the fingerprint",
            );
        }
        if let Some(freshness) = input.freshness {
            check_range(
                &mut errors,
                "freshness",
                freshness,
                Span::from_secs(1),
                Span::from_secs(365 * 86_400),
            );
        }
        if let Some(retention) = input.retention {
            check_range(
                &mut errors,
                "retention",
                retention,
                Span::from_secs(60),
                Span::from_secs(365 * 86_400),
            );
        }
        errors.into_result(JobSpec {
            description: input.description,
            target,
            steps: steps_out,
            payload,
            repoll_interval,
            dispatch_timeout,
            timeout,
            deadline: input.deadline,
            retry,
            expect_callback: input.expect_callback.unwrap_or(true),
            overlap: input.overlap.unwrap_or_default(),
            labels,
            alerts,
            on_messages,
            max_concurrency: input.max_concurrency,
            concurrency_group,
            skip_if_unchanged,
            freshness: input.freshness,
            retention: input.retention,
        })
    }
}

impl JobSpec {
    /// Every target the job dispatches to: its own, or each of its steps' and children's.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        let steps = self.steps.iter().flat_map(|step| {
            let children = step.parallel.iter().flatten().map(|child| &child.target);
            step.target.iter().chain(children)
        });
        self.target.iter().chain(steps)
    }

    /// True when the job's tasks wait for a slot before their first dispatch.
    pub fn is_limited(&self) -> bool {
        self.max_concurrency.is_some() || self.concurrency_group.is_some()
    }

    /// True for a job made of steps, whose tasks are runs.
    pub fn is_workflow(&self) -> bool {
        !self.steps.is_empty()
    }

    /// A task's payload: the job's payload with the task's own top-level keys laid over it.
    pub fn task_payload(&self, overrides: Option<&Map<String, Value>>) -> Value {
        let mut payload = self.payload.as_object().cloned().unwrap_or_default();
        if let Some(overrides) = overrides {
            payload.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Value::Object(payload)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(value: Value) -> Result<JobSpec, ValidationErrors> {
        let input: JobInput = serde_json::from_value(value).expect("input deserializes");
        JobSpec::try_from(input)
    }

    fn fields(errors: &ValidationErrors) -> Vec<&str> {
        errors.errors().iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn a_minimal_job_takes_the_defaults() {
        let spec = parse(json!({ "target": { "url": "http://svc:8080/run" } })).expect("valid");
        assert_eq!(spec.repoll_interval, defaults::REPOLL_INTERVAL);
        assert_eq!(spec.dispatch_timeout, defaults::DISPATCH_TIMEOUT);
        assert_eq!(spec.timeout, defaults::TIMEOUT);
        assert_eq!(spec.deadline, None);
        assert!(spec.expect_callback);
        assert_eq!(spec.payload, json!({}));
    }

    #[test]
    fn every_kind_of_outbound_auth_refuses_unknown_fields_and_none_reads_as_before() {
        for auth in [
            json!({ "kind": "none", "secret": "x" }),
            json!({ "kind": "jwt", "audience": "a", "x": 1 }),
            json!({ "kind": "bearer", "secret": "s", "x": 1 }),
            json!({ "kind": "oauth2", "token_url": "http://a/t", "client_id": "c", "client_secret": "s", "x": 1 }),
            json!({ "kind": "oauth2", "token_url": "http://a/t", "client_id": "c" }),
        ] {
            assert!(
                serde_json::from_value::<OutboundAuth>(auth.clone()).is_err(),
                "{auth}"
            );
        }
        let none: OutboundAuth = serde_json::from_value(json!({ "kind": "none" })).expect("none");
        assert!(none.is_none());
        assert_eq!(
            serde_json::to_value(&none).ok(),
            Some(json!({ "kind": "none" }))
        );
    }

    #[test]
    fn an_oauth2_target_is_checked_field_by_field_and_reads_back_as_written() {
        let written = json!({
            "kind": "oauth2",
            "token_url": "https://auth.example.com/token",
            "client_id": "pacer",
            "client_secret": "sync-client",
            "scope": "items.write",
        });
        let spec = parse(json!({ "target": { "url": "http://svc/run", "auth": written } }))
            .expect("valid");
        let auth = spec.target.as_ref().expect("target").auth();
        assert_eq!(auth.secret(), Some("sync-client"));
        assert_eq!(auth.secret_field(), "client_secret");
        assert_eq!(serde_json::to_value(auth).ok(), Some(written));

        let errors = parse(json!({ "target": { "url": "http://svc/run", "auth": {
            "kind": "oauth2",
            "token_url": "ftp://auth/token",
            "client_id": "",
            "client_secret": "not a name",
            "scope": "a\nb",
            "audience": "x".repeat(257),
        } } }))
        .expect_err("invalid");
        assert_eq!(
            fields(&errors),
            [
                "target.auth.token_url",
                "target.auth.client_id",
                "target.auth.client_secret",
                "target.auth.scope",
                "target.auth.audience",
            ]
        );
        // The broker authenticates an AMQP target: no auth of any kind belongs there.
        let amqp = serde_json::from_value::<JobInput>(json!({ "target": {
            "kind": "amqp", "exchange": "x", "routing_key": "y",
            "auth": { "kind": "oauth2", "token_url": "http://a/t", "client_id": "c", "client_secret": "s" },
        } }));
        assert!(amqp.is_err());
    }

    #[test]
    fn every_bad_field_is_named_at_once() {
        let errors = parse(json!({
            "target": { "url": "ftp://svc/run", "headers": { "Idempotency-Key": "x", "bad name": "y" } },
            "payload": [1, 2],
            "repoll_interval": "0s",
            "dispatch_timeout": "1h",
            "timeout": "1h",
            "deadline": "2h",
            "retry": { "max_attempts": 0, "multiplier": 0.5, "jitter": 2.0 },
            "labels": { "team": "a", "bad key!": "b" },
        }))
        .expect_err("invalid");
        assert_eq!(
            fields(&errors),
            [
                "target.url",
                "target.headers.Idempotency-Key",
                "target.headers.bad name",
                "payload",
                "repoll_interval",
                "dispatch_timeout",
                "deadline",
                "retry.max_attempts",
                "retry.multiplier",
                "retry.jitter",
                "labels.bad key!",
            ]
        );
    }

    #[test]
    fn a_url_without_a_host_or_with_garbage_is_refused() {
        for url in ["http://", "not a url", "mailto:ops@example.com"] {
            let errors = parse(json!({ "target": { "url": url } })).expect_err(url);
            assert_eq!(fields(&errors), ["target.url"], "{url}");
        }
    }

    #[test]
    fn a_cancel_url_may_name_the_task_and_must_be_an_http_url() {
        let spec = parse(json!({ "target": {
            "url": "http://svc/run", "cancel_url": "http://svc/runs/{task_id}" } }))
        .expect("a placeholder is allowed");
        assert_eq!(
            spec.target
                .as_ref()
                .and_then(Target::http)
                .and_then(|t| t.cancel_url.as_deref()),
            Some("http://svc/runs/{task_id}")
        );
        let errors =
            parse(json!({ "target": { "url": "http://svc/run", "cancel_url": "ftp://svc" } }))
                .expect_err("not http");
        assert_eq!(fields(&errors), ["target.cancel_url"]);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let result: Result<JobInput, _> =
            serde_json::from_value(json!({ "target": { "url": "http://a" }, "colour": "red" }));
        assert!(result.is_err());
    }

    #[test]
    fn an_amqp_target_is_written_with_its_kind_and_an_http_one_without() {
        let spec = parse(json!({
            "target": { "kind": "amqp", "exchange": "pacer.jobs", "routing_key": "sync", "headers": { "x-tenant": "a" } },
            "on_messages": ["masterdata.changed"],
        }))
        .expect("valid");
        assert_eq!(
            spec.target,
            Some(Target::Amqp(AmqpTarget {
                exchange: "pacer.jobs".into(),
                routing_key: "sync".into(),
                headers: BTreeMap::from([("x-tenant".into(), "a".into())]),
            }))
        );
        let written = serde_json::to_value(&spec).expect("serialises");
        assert_eq!(written["target"]["kind"], "amqp");
        assert_eq!(written["on_messages"], json!(["masterdata.changed"]));
        let read: JobSpec = serde_json::from_value(written).expect("reads back");
        assert_eq!(read, spec);

        let http =
            parse(json!({ "target": { "kind": "http", "url": "http://a" } })).expect("valid");
        let written = serde_json::to_value(&http).expect("serialises");
        assert_eq!(written["target"], json!({ "url": "http://a" }));
        assert!(written.get("on_messages").is_none());
    }

    #[test]
    fn bad_amqp_targets_and_subscriptions_are_named() {
        let errors = parse(json!({
            "target": { "kind": "amqp", "exchange": "", "routing_key": "", "headers": { "traceparent": "x" } },
            "on_messages": ["ok", "not ok"],
        }))
        .expect_err("invalid");
        assert_eq!(
            fields(&errors),
            [
                "target.routing_key",
                "target.headers.traceparent",
                "on_messages[1]"
            ]
        );
        for target in [
            json!({ "kind": "smtp", "url": "http://a" }),
            json!({ "kind": "amqp", "url": "http://a" }),
            json!({ "kind": "amqp", "exchange": "x", "routing_key": "y", "auth": { "kind": "none" } }),
        ] {
            let result: Result<JobInput, _> =
                serde_json::from_value(json!({ "target": target.clone() }));
            assert!(result.is_err(), "{target}");
        }
    }

    #[test]
    fn job_names_are_checked() {
        for good in ["sync", "master-data.sync_2", "A1"] {
            assert!(good.parse::<JobName>().is_ok(), "{good}");
        }
        let too_long = "a".repeat(65);
        for bad in ["", "-sync", "has space", "sl/ash", too_long.as_str()] {
            assert!(bad.parse::<JobName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_task_payload_overlays_the_job_payload() {
        let spec = parse(json!({
            "target": { "url": "http://a" },
            "payload": { "tables": ["centers"], "full": false },
        }))
        .expect("valid");
        let overrides = json!({ "full": true, "since": "2026-01-01" });
        assert_eq!(
            spec.task_payload(overrides.as_object()),
            json!({ "tables": ["centers"], "full": true, "since": "2026-01-01" })
        );
        assert_eq!(
            spec.task_payload(None),
            json!({ "tables": ["centers"], "full": false })
        );
    }

    #[test]
    fn retry_lists_are_checked_and_named_by_their_index() {
        let spec = parse(json!({
            "target": { "url": "http://a" },
            "retry": { "on_status": [404, "5xx"], "never_on_status": [501],
                       "on_errors": ["UpstreamTimeout"] },
        }))
        .expect("valid");
        assert_eq!(
            spec.retry.on_status,
            Some(vec![StatusMatch::Status(404), StatusMatch::Class(5)])
        );
        assert_eq!(spec.retry.never_on_status, [StatusMatch::Status(501)]);
        assert_eq!(spec.retry.on_errors, ["UpstreamTimeout"]);
        // Stored and read back as written.
        let stored = serde_json::to_value(&spec.retry).expect("serializes");
        assert_eq!(stored["on_status"], json!([404, "5xx"]));
        assert_eq!(
            serde_json::from_value::<RetryPolicy>(stored).expect("reads back"),
            spec.retry
        );

        let errors = parse(json!({
            "target": { "url": "http://a" },
            "retry": { "on_status": [503, 503], "never_on_status": ["5xx", 404, "4xx"],
                       "on_errors": ["A", "", "A"] },
        }))
        .expect_err("invalid");
        assert_eq!(
            fields(&errors),
            [
                "retry.on_status[1]",
                "retry.on_errors[1]",
                "retry.on_errors[2]"
            ]
        );

        for (bad, message) in [
            (json!([200]), "cannot be named"),
            (json!(["2xx"]), "cannot be named"),
            (json!([99]), "300 to 599"),
            (json!(["6xx"]), "`4xx` or `5xx`"),
            (json!([true]), "a number"),
        ] {
            let error = serde_json::from_value::<JobInput>(json!({
                "target": { "url": "http://a" }, "retry": { "on_status": bad },
            }))
            .expect_err("refused");
            assert!(error.to_string().contains(message), "{bad}: {error}");
        }
    }

    #[test]
    fn retention_is_between_a_minute_and_a_year() {
        let spec =
            parse(json!({ "target": { "url": "http://a" }, "retention": "7d" })).expect("valid");
        assert_eq!(spec.retention, Some(Span::from_secs(7 * 86_400)));
        assert_eq!(
            parse(json!({ "target": { "url": "http://a" } }))
                .expect("valid")
                .retention,
            None
        );
        for bad in ["59s", "0s"] {
            let errors = parse(json!({ "target": { "url": "http://a" }, "retention": bad }))
                .expect_err("out of range");
            assert_eq!(fields(&errors), ["retention"], "{bad}");
        }
    }

    #[test]
    fn freshness_is_between_a_second_and_a_year() {
        let spec =
            parse(json!({ "target": { "url": "http://a" }, "freshness": "6h" })).expect("valid");
        assert_eq!(spec.freshness, Some(Span::from_secs(6 * 3600)));
        let longest = parse(json!({ "target": { "url": "http://a" }, "freshness": "365d" }))
            .expect("a year is the most");
        assert_eq!(longest.freshness, Some(Span::from_secs(365 * 86_400)));
        for bad in ["500ms", "0s"] {
            let errors = parse(json!({ "target": { "url": "http://a" }, "freshness": bad }))
                .expect_err("out of range");
            assert_eq!(fields(&errors), ["freshness"], "{bad}");
        }
    }
}
