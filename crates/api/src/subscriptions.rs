//! Event subscriptions under `/api/v1/subscriptions`: receivers of the event log, each filtered
//! by job (or job labels) and event kind, each with its own position and delivery loop on the
//! leader, with how its deliveries go (lag, failures).

use std::collections::BTreeMap;

use axum::Json as JsonResponse;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use pacer_domain::{OutboundAuth, SubscriptionInput, SubscriptionSpec};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit;
use crate::auth::Actor;
use crate::calendars::from_object;
use crate::error::Problem;
use crate::extract::{Json, Path};
use crate::{AppState, Error, Result};

pub(crate) fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(put_subscription, delete_subscription))
}

pub(crate) fn operator_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_subscriptions))
        .routes(routes!(get_subscription))
}

/// The `{name}` path parameter of a subscription.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct SubscriptionPath {
    /// The subscription's name.
    #[param(
        example = "registration-team",
        pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
    )]
    #[allow(dead_code)]
    name: String,
}

/// How far behind a subscriber is.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LagView {
    /// Matching events after its position not yet accepted (counted up to 10000).
    events: i64,
    /// How long ago the oldest of them happened, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    oldest_age_seconds: Option<f64>,
}

/// An event subscription, as returned.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Subscription, example = json!({
    "name": "registration-team", "url": "https://team.example/pacer-events",
    "labels": { "team": "registration" }, "events": ["task.state", "alert.opened"],
    "batch_size": 100, "created_at": "2026-12-01T09:00:00Z", "updated_at": "2026-12-01T09:00:00Z",
    "delivered_at": "2026-12-01T09:05:00Z", "delivered_events": 42, "consecutive_failures": 0,
    "lag": { "events": 0 }
}))]
pub(crate) struct SubscriptionView {
    name: String,
    url: String,
    /// Only these jobs' events.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    jobs: Vec<String>,
    /// Only the events of jobs carrying all these labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    /// Only these event kinds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    events: Vec<String>,
    #[serde(skip_serializing_if = "OutboundAuth::is_none")]
    auth: OutboundAuth,
    batch_size: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    description: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// When the subscriber last accepted a batch.
    delivered_at: Option<DateTime<Utc>>,
    /// Events the subscriber has accepted in all.
    delivered_events: i64,
    /// Attempts refused (or unanswered) in a row since the last accepted one.
    consecutive_failures: i32,
    /// The last refusal.
    last_error: Option<String>,
    last_error_at: Option<DateTime<Utc>>,
    /// The `id` of the last event the subscriber accepted (or the position it started from).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    position: Option<String>,
    /// How far behind it is; only in `GET /api/v1/subscriptions/{name}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    lag: Option<LagView>,
}

impl From<pacer_store::Subscription> for SubscriptionView {
    fn from(s: pacer_store::Subscription) -> Self {
        let spec = s.spec;
        Self {
            name: s.name,
            url: spec.url,
            jobs: spec.jobs,
            labels: spec.labels,
            events: spec.events,
            auth: spec.auth,
            batch_size: spec.batch_size,
            description: spec.description,
            created_at: s.created_at,
            updated_at: s.updated_at,
            delivered_at: s.delivered_at,
            delivered_events: s.delivered_events,
            consecutive_failures: s.consecutive_failures,
            last_error: s.last_error,
            last_error_at: s.last_error_at,
            position: s.cursor.map(|c| c.to_string()),
            lag: None,
        }
    }
}

/// Every subscription.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SubscriptionList {
    items: Vec<SubscriptionView>,
}

fn name(raw: &str) -> Result<String> {
    if pacer_domain::validation::is_name(raw) {
        Ok(raw.to_owned())
    } else {
        Err(Error::field(
            "name",
            "a subscription name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        ))
    }
}

fn not_found(name: &str) -> impl FnOnce(pacer_store::Error) -> Error {
    crate::error::missing("subscription", name)
}

/// Create or replace an event subscription
///
/// Creates the subscription (`201`) or replaces it (`200`). The leader posts the events it
/// matches to `url` in batches (`{"events": [...]}`, each event as the event stream shows it,
/// with the batch's last event id as `Idempotency-Key`), in log order and so in order per task,
/// at least once: a refused batch is retried with backoff until accepted, and nothing after it
/// is sent meanwhile. Each subscription has its own position and delivery loop, so a slow or
/// failing subscriber never delays another. A new subscription starts at the present; a
/// replaced one keeps its position and takes its new filters within a second.
#[utoipa::path(
    put,
    path = "/api/v1/subscriptions/{name}",
    tag = "events",
    params(SubscriptionPath),
    request_body = SubscriptionInput,
    responses(
        (status = 200, description = "The subscription was replaced.", body = SubscriptionView,
            headers(("Location" = String, description = "The subscription's URL."))),
        (status = 201, description = "The subscription was created.", body = SubscriptionView,
            headers(("Location" = String, description = "The subscription's URL."))),
    )
)]
async fn put_subscription(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_name): Path<String>,
    Json(body): Json<serde_json::Map<String, serde_json::Value>>,
) -> Result<Response> {
    let input: SubscriptionInput = from_object(body)?;
    let name = name(&raw_name)?;
    let spec = SubscriptionSpec::try_from(input).map_err(Error::Validation)?;
    if let Some(secret) = spec.auth.secret()
        && !state.secrets.contains(secret)
    {
        return Err(Error::field(
            format!("auth.{}", spec.auth.secret_field()).as_str(),
            format!("no secret named `{secret}` is configured"),
        ));
    }
    let before = match state.store.get_subscription(&name).await {
        Ok(subscription) => Some(subscription),
        Err(pacer_store::Error::NotFound(_)) => None,
        Err(other) => return Err(other.into()),
    };
    let created = state.store.put_subscription(&name, &spec).await?;
    let view = SubscriptionView::from(state.store.get_subscription(&name).await?);
    if before.as_ref().is_none_or(|b| b.spec != spec) {
        audit::record(
            &state,
            &actor,
            "put_subscription",
            format!("subscription:{name}"),
            before.and_then(|b| serde_json::to_value(b.spec).ok()),
            serde_json::to_value(&spec).ok(),
        )
        .await;
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        [(header::LOCATION, format!("/api/v1/subscriptions/{name}"))],
        JsonResponse(view),
    )
        .into_response())
}

/// Get an event subscription
///
/// Its definition and how its deliveries go: the last accepted batch, failures in a row and the
/// last error, and its lag (matching events not yet accepted, and the age of the oldest).
#[utoipa::path(
    get,
    path = "/api/v1/subscriptions/{name}",
    tag = "events",
    params(SubscriptionPath),
    responses(
        (status = 200, description = "The subscription.", body = SubscriptionView),
        (status = 404, description = "No such subscription.", body = Problem),
    )
)]
async fn get_subscription(
    State(state): State<AppState>,
    Path(raw_name): Path<String>,
) -> Result<JsonResponse<SubscriptionView>> {
    let name = name(&raw_name)?;
    let subscription = state
        .store
        .get_subscription(&name)
        .await
        .map_err(not_found(&name))?;
    let lag = match subscription.cursor {
        Some(cursor) => {
            let lag = state
                .store
                .events_lag(cursor, &subscription.filter())
                .await?;
            let now = state.store.now().await?;
            Some(LagView {
                events: lag.events,
                oldest_age_seconds: lag
                    .oldest_at
                    .map(|at| (now - at).num_milliseconds().max(0) as f64 / 1000.0),
            })
        }
        None => None,
    };
    let mut view = SubscriptionView::from(subscription);
    view.lag = lag;
    Ok(JsonResponse(view))
}

/// List event subscriptions
///
/// Every subscription in name order, with how its deliveries go (without its lag).
#[utoipa::path(
    get,
    path = "/api/v1/subscriptions",
    tag = "events",
    responses((status = 200, description = "Every subscription.", body = SubscriptionList))
)]
async fn list_subscriptions(
    State(state): State<AppState>,
) -> Result<JsonResponse<SubscriptionList>> {
    let subscriptions = state.store.list_subscriptions().await?;
    Ok(JsonResponse(SubscriptionList {
        items: subscriptions.into_iter().map(Into::into).collect(),
    }))
}

/// Delete an event subscription
///
/// Stops its deliveries (within a second) and forgets its position.
#[utoipa::path(
    delete,
    path = "/api/v1/subscriptions/{name}",
    tag = "events",
    params(SubscriptionPath),
    responses(
        (status = 204, description = "The subscription was deleted."),
        (status = 404, description = "No such subscription.", body = Problem),
    )
)]
async fn delete_subscription(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_name): Path<String>,
) -> Result<StatusCode> {
    let name = name(&raw_name)?;
    let before = state
        .store
        .get_subscription(&name)
        .await
        .map_err(not_found(&name))?;
    state
        .store
        .delete_subscription(&name)
        .await
        .map_err(not_found(&name))?;
    audit::record(
        &state,
        &actor,
        "delete_subscription",
        format!("subscription:{name}"),
        serde_json::to_value(before.spec).ok(),
        None,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
