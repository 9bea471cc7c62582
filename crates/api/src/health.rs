//! Liveness, readiness and the public signing keys; none needs a token.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use pacer_domain::ConsumerStatus;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

/// Longest `/readyz` waits for the database. Well under a second, so it answers within one
/// whatever the database does (a server that accepts and never answers included), and under
/// any probe's timeout; a database that slow is as good as unreachable for serving.
pub(crate) const READY_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(800);

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(jwks))
}

/// The answer of `/healthz`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({ "status": "ok" }))]
pub(crate) struct Health {
    status: &'static str,
}

/// The answer of `/readyz`: `ready`, or `not ready` / `draining` with the failing check.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({ "status": "ready", "node": "pacer-1", "database": { "status": "ok" },
    "amqp": { "state": "connected", "since": "2026-11-24T08:00:00Z", "queue": "pacer.messages" } }))]
pub(crate) struct Readiness {
    /// `ready`, `not ready` or `draining`.
    status: &'static str,
    /// This node's id.
    node: String,
    /// The database check: `ok`, `migrations pending`, or `unreachable` with an `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object, required = false)]
    database: Option<Value>,
    /// This node's RabbitMQ consumer (not while draining). The broker going away is normal (the
    /// consumer reconnects by itself), so it is reported but never makes the node unready.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    amqp: Option<ConsumerStatus>,
}

/// Liveness
///
/// Answers while the process runs.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "The process is alive.", body = Health))
)]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness
///
/// Ready when the database answers (within 800 ms) and its migrations are current, and not
/// while the node drains during a shutdown. Answers within a second whatever the database does.
/// The answer also shows this node's RabbitMQ consumer.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready.", body = Readiness),
        (status = 503, description = "Not ready: the database is unreachable or behind on migrations, or the node is draining.", body = Readiness,
            example = json!({ "status": "draining", "node": "pacer-1" })),
    )
)]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let node = state.node_id.to_string();
    if state.shutdown.is_cancelled() {
        let body = Readiness {
            status: "draining",
            node,
            database: None,
            amqp: None,
        };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body));
    }
    // Not the pool's acquire timeout: a probe must read the answer before its own deadline.
    let check = tokio::time::timeout(READY_CHECK_TIMEOUT, state.store.is_ready()).await;
    let (ready, database) = match check {
        Ok(Ok(true)) => (true, json!({ "status": "ok" })),
        Ok(Ok(false)) => (false, json!({ "status": "migrations pending" })),
        Ok(Err(error)) => (
            false,
            json!({ "status": "unreachable", "error": error.to_string() }),
        ),
        Err(_) => (
            false,
            json!({ "status": "unreachable",
                    "error": format!("no answer within {} ms", READY_CHECK_TIMEOUT.as_millis()) }),
        ),
    };
    let (status, text) = if ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    };
    let body = Readiness {
        status: text,
        node,
        database: Some(database),
        amqp: Some(state.consumer.borrow().clone()),
    };
    (status, Json(body))
}

/// Pacer's public keys
///
/// The JWK set of Pacer's signing keys, so downstreams can verify the callback tokens and
/// outbound JWTs Pacer sends (look keys up by `kid`).
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "health",
    responses((status = 200, description = "A JWK set.", body = Object,
        example = json!({ "keys": [ { "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                                      "kid": "k1", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" } ] })))
)]
async fn jwks(State(state): State<AppState>) -> Json<Value> {
    Json(state.auth.keyset.jwks())
}

/// Prometheus metrics
///
/// Every metric of this node in the Prometheus text format (served by the node beside the API).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "The metrics.", body = String,
        content_type = "text/plain; version=0.0.4; charset=utf-8"))
)]
#[allow(dead_code)]
pub(crate) async fn metrics() {}

/// The `/metrics` route, documented here and served by the node, which owns the recorder.
#[derive(utoipa::OpenApi)]
#[openapi(paths(metrics))]
pub(crate) struct MetricsDoc;
