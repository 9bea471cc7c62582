//! Liveness and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/.well-known/jwks.json", get(jwks))
}

/// The process is alive and serving.
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the database answers and its migrations are current, and not while draining. The
/// detail also shows this node's RabbitMQ consumer.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.shutdown.is_cancelled() {
        let body = json!({ "status": "draining", "node": &*state.node_id });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body));
    }
    let (ready, database) = match state.store.is_ready().await {
        Ok(true) => (true, json!({ "status": "ok" })),
        Ok(false) => (false, json!({ "status": "migrations pending" })),
        Err(error) => (
            false,
            json!({ "status": "unreachable", "error": error.to_string() }),
        ),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // The broker going away is normal (the consumer reconnects by itself), so it is reported
    // but never makes the node unready.
    let amqp = state.consumer.borrow().clone();
    let body = json!({ "status": if ready { "ready" } else { "not ready" }, "node": &*state.node_id, "database": database, "amqp": amqp });
    (status, Json(body))
}

/// Pacer's public signing keys, so downstreams can verify the tokens Pacer sends.
async fn jwks(State(state): State<AppState>) -> Json<Value> {
    Json(state.auth.keyset.jwks())
}
