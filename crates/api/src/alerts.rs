//! Alerts: listing and reading them (with their deliveries), acknowledging (stops
//! re-notification) and resolving (closes them; a repeat of the problem opens a new one).

use axum::Json as JsonResponse;
use axum::extract::State;
use chrono::{DateTime, Utc};
use pacer_domain::wire::AlertView;
use pacer_domain::{AlertKind, AlertState, ValidationErrors};
use pacer_store::{Alert, AlertChange, AlertFilter, Delivery, DeliveryAttempt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::audit;
use crate::auth::Actor;
use crate::error::Problem;
use crate::extract::{JsonOrEmpty, Path};
use crate::pagination::{ListQuery, Listing, PageParams};
use crate::views::Page;
use crate::{AppState, Error, Result};

pub(crate) fn operator_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_alerts))
        .routes(routes!(get_alert))
        .routes(routes!(ack_alert))
        .routes(routes!(resolve_alert))
}

/// The `{id}` path parameter of an alert.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct AlertPath {
    /// The alert's id.
    #[allow(dead_code)]
    id: Uuid,
}

/// An alert with every notification of it and their attempts (`GET /api/v1/alerts/{id}`).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AlertDetail {
    #[serde(flatten)]
    alert: AlertView,
    deliveries: Vec<DeliveryView>,
}

/// One notification of an alert to one sink, with every attempt.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AlertDelivery, example = json!({
    "id": "0193a5d0-3d4e-7f50-9b6c-7d8e9f0a1b2c", "event": "alert.opened", "sink": "ops",
    "sink_kind": "webhook", "state": "delivered", "attempts": 1, "max_attempts": 10,
    "created_at": "2026-11-24T09:15:00Z", "next_attempt_at": null,
    "delivered_at": "2026-11-24T09:15:01Z", "last_error": null,
    "tries": [ { "number": 1, "node": "pacer-1", "started_at": "2026-11-24T09:15:00.500Z",
                 "finished_at": "2026-11-24T09:15:01Z", "http_status": 200, "error": null,
                 "latency_ms": 500 } ]
}))]
pub(crate) struct DeliveryView {
    id: Uuid,
    /// `alert.opened`, `alert.renotified` or `task.completed`.
    #[schema(examples("alert.opened"))]
    event: String,
    sink: String,
    /// `webhook`, `slack` or `email`.
    #[schema(examples("webhook"))]
    sink_kind: String,
    /// `pending`, `delivered` or `failed`.
    #[schema(examples("delivered"))]
    state: String,
    attempts: i32,
    max_attempts: i32,
    created_at: DateTime<Utc>,
    next_attempt_at: Option<DateTime<Utc>>,
    delivered_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    tries: Vec<DeliveryAttemptView>,
}

/// One attempt at a delivery.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AlertDeliveryAttempt)]
pub(crate) struct DeliveryAttemptView {
    number: i32,
    node: String,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    http_status: Option<i32>,
    error: Option<String>,
    latency_ms: Option<i64>,
}

impl From<DeliveryAttempt> for DeliveryAttemptView {
    fn from(a: DeliveryAttempt) -> Self {
        Self {
            number: a.number,
            node: a.node,
            started_at: a.started_at,
            finished_at: a.finished_at,
            http_status: a.http_status,
            error: a.error,
            latency_ms: a.latency_ms,
        }
    }
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        Self {
            id: d.id,
            event: d.event,
            sink: d.sink,
            sink_kind: d.sink_kind,
            state: d.state,
            attempts: d.attempts,
            max_attempts: d.max_attempts,
            created_at: d.created_at,
            next_attempt_at: d.next_attempt_at,
            delivered_at: d.delivered_at,
            last_error: d.last_error,
            tries: d.tries.into_iter().map(DeliveryAttemptView::from).collect(),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListAlerts {
    /// Only the alerts in this state.
    #[param(value_type = Option<AlertState>)]
    state: Option<String>,
    /// Only the alerts of this kind.
    #[param(value_type = Option<AlertKind>)]
    kind: Option<String>,
    /// Only the alerts about this job.
    job: Option<String>,
}

/// Alerts page on their id, newest first.
struct AlertList;

impl Listing for AlertList {
    type Key = Uuid;
    const TAG: &'static str = "al.";
}

/// List alerts
///
/// Alerts newest first, by state, kind and job; pass `next_cursor` back as `cursor` for the next
/// page.
#[utoipa::path(
    get,
    path = "/api/v1/alerts",
    tag = "alerts",
    params(ListAlerts, PageParams<AlertList>),
    responses((status = 200, description = "A page of alerts (without their deliveries).", body = Page<AlertView>))
)]
async fn list_alerts(
    State(state): State<AppState>,
    ListQuery {
        filter: query,
        page,
    }: ListQuery<ListAlerts, AlertList>,
) -> Result<JsonResponse<Page<AlertView>>> {
    let mut errors = ValidationErrors::new();
    let alert_state = match query.state.as_deref().map(str::parse::<AlertState>) {
        Some(Err(e)) => {
            errors.push("state", e.to_string());
            None
        }
        other => other.and_then(Result::ok),
    };
    let kind = match query.kind.as_deref().map(str::parse::<AlertKind>) {
        Some(Err(e)) => {
            errors.push("kind", e.to_string());
            None
        }
        other => other.and_then(Result::ok),
    };
    let page = page.check(errors)?;
    let filter = AlertFilter {
        state: alert_state,
        kind,
        job: query.job,
        before: page.after,
        limit: page.fetch(),
    };
    let alerts = state.store.list_alerts(&filter).await?;
    Ok(JsonResponse(page.page(alerts, |a| a.id, AlertView::from)))
}

fn alert_id(raw: &str) -> Result<Uuid> {
    raw.parse()
        .map_err(|_| Error::field("id", format!("`{raw}` is not an alert id (a UUID)")))
}

fn alert_not_found(id: Uuid) -> impl FnOnce(pacer_store::Error) -> Error {
    crate::error::missing("alert", id)
}

/// Get an alert
///
/// One alert with its deliveries and every attempt of each.
#[utoipa::path(
    get,
    path = "/api/v1/alerts/{id}",
    tag = "alerts",
    params(AlertPath),
    responses(
        (status = 200, description = "The alert with its deliveries.", body = AlertDetail),
        (status = 404, description = "No such alert.", body = Problem),
    )
)]
async fn get_alert(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
) -> Result<JsonResponse<AlertDetail>> {
    let id = alert_id(&raw_id)?;
    let alert = state
        .store
        .get_alert(id)
        .await
        .map_err(alert_not_found(id))?;
    let deliveries = state.store.alert_deliveries(id).await?;
    Ok(JsonResponse(AlertDetail {
        alert: AlertView::from(alert),
        deliveries: deliveries.into_iter().map(DeliveryView::from).collect(),
    }))
}

/// The optional body of an acknowledgement or resolution.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "note": "looking into it" }))]
struct AlertNote {
    /// Why, for the alert and the audit log: at most 2000 characters.
    #[schema(max_length = 2000)]
    note: Option<String>,
}

impl AlertNote {
    fn checked(self) -> Result<Option<String>> {
        match self.note {
            Some(note) if note.chars().count() > 2000 => {
                Err(Error::field("note", "at most 2000 characters"))
            }
            note => Ok(note.filter(|n| !n.trim().is_empty())),
        }
    }
}

/// Acknowledge an alert
///
/// The alert stays open but notifies no one again. Acknowledging again changes nothing; a
/// resolved alert answers `409 /problems/alert-resolved`.
#[utoipa::path(
    post,
    path = "/api/v1/alerts/{id}/ack",
    tag = "alerts",
    params(AlertPath),
    request_body(content = Option<AlertNote>, description = "Optional: a note."),
    responses(
        (status = 200, description = "The alert, acknowledged.", body = AlertView),
        (status = 404, description = "No such alert.", body = Problem),
        (status = 409, description = "The alert is resolved (`/problems/alert-resolved`).", body = Problem),
    )
)]
async fn ack_alert(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_id): Path<String>,
    JsonOrEmpty(body): JsonOrEmpty<AlertNote>,
) -> Result<JsonResponse<AlertView>> {
    let id = alert_id(&raw_id)?;
    let note = body.checked()?;
    let change = state
        .store
        .ack_alert(id, &actor.principal.subject, note.as_deref())
        .await
        .map_err(alert_not_found(id))?;
    match change {
        AlertChange::Applied(alert) => {
            changed(&state, &actor, "ack_alert", &alert).await;
            Ok(JsonResponse(alert.into()))
        }
        AlertChange::Unchanged(alert) => Ok(JsonResponse(alert.into())),
        AlertChange::Refused(alert) => Err(Error::AlertResolved {
            id: alert.id.to_string(),
        }),
    }
}

/// Resolve an alert
///
/// Closes an open or acknowledged alert; a later repeat of its problem opens a new one. Resolving
/// again changes nothing.
#[utoipa::path(
    post,
    path = "/api/v1/alerts/{id}/resolve",
    tag = "alerts",
    params(AlertPath),
    request_body(content = Option<AlertNote>, description = "Optional: a note."),
    responses(
        (status = 200, description = "The alert, resolved.", body = AlertView),
        (status = 404, description = "No such alert.", body = Problem),
    )
)]
async fn resolve_alert(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_id): Path<String>,
    JsonOrEmpty(body): JsonOrEmpty<AlertNote>,
) -> Result<JsonResponse<AlertView>> {
    let id = alert_id(&raw_id)?;
    let note = body.checked()?;
    let change = state
        .store
        .resolve_alert(id, &actor.principal.subject, note.as_deref())
        .await
        .map_err(alert_not_found(id))?;
    match change {
        AlertChange::Applied(alert) => {
            changed(&state, &actor, "resolve_alert", &alert).await;
            Ok(JsonResponse(alert.into()))
        }
        AlertChange::Unchanged(alert) | AlertChange::Refused(alert) => {
            Ok(JsonResponse(alert.into()))
        }
    }
}

/// Every alert state change made through the API passes here once, after it committed: the
/// audit log, and the place to publish alert events.
async fn changed(state: &AppState, actor: &Actor, action: &str, alert: &Alert) {
    let after = json!({ "state": alert.state, "note": alert.ack_note.as_ref().or(alert.resolve_note.as_ref()) });
    audit::record(
        state,
        actor,
        action,
        format!("alert:{}", alert.id),
        None,
        Some(after),
    )
    .await;
}
