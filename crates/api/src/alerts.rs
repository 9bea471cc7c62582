//! Alerts: listing and reading them (with their deliveries), acknowledging (stops
//! re-notification) and resolving (closes them; a repeat of the problem opens a new one).

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json as JsonResponse, Router};
use chrono::{DateTime, Utc};
use pacer_domain::{AlertKind, AlertState, Severity, ValidationErrors};
use pacer_store::{Alert, AlertChange, AlertFilter, Delivery, DeliveryAttempt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::audit;
use crate::auth::Actor;
use crate::extract::{JsonOrEmpty, Query, limit};
use crate::views::Page;
use crate::{AppState, Error, Result};

pub(crate) fn operator_routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/alerts", get(list_alerts))
        .route("/api/v1/alerts/{id}", get(get_alert))
        .route("/api/v1/alerts/{id}/ack", post(ack_alert))
        .route("/api/v1/alerts/{id}/resolve", post(resolve_alert))
}

/// What an alert is about.
#[derive(Debug, Serialize)]
pub(crate) struct SubjectView {
    task: Option<Uuid>,
    job: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
}

/// An alert as returned by the API (DESIGN §12); `deliveries` only in the detail view.
#[derive(Debug, Serialize)]
pub(crate) struct AlertView {
    id: Uuid,
    kind: AlertKind,
    severity: Severity,
    subject: SubjectView,
    state: AlertState,
    count: i64,
    summary: String,
    opened_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
    notified_at: Option<DateTime<Utc>>,
    acked_at: Option<DateTime<Utc>>,
    acked_by: Option<String>,
    ack_note: Option<String>,
    resolved_at: Option<DateTime<Utc>>,
    resolved_by: Option<String>,
    resolve_note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deliveries: Option<Vec<DeliveryView>>,
}

impl From<Alert> for AlertView {
    fn from(a: Alert) -> Self {
        Self {
            id: a.id,
            kind: a.kind,
            severity: a.severity,
            subject: SubjectView {
                task: a.task_id,
                job: a.job_name,
                node: a.node_id,
            },
            state: a.state,
            count: a.count,
            summary: a.summary,
            opened_at: a.opened_at,
            last_seen_at: a.last_seen_at,
            notified_at: a.notified_at,
            acked_at: a.acked_at,
            acked_by: a.acked_by,
            ack_note: a.ack_note,
            resolved_at: a.resolved_at,
            resolved_by: a.resolved_by,
            resolve_note: a.resolve_note,
            deliveries: None,
        }
    }
}

/// One notification of an alert to one sink, with every attempt.
#[derive(Debug, Serialize)]
pub(crate) struct DeliveryView {
    id: Uuid,
    event: String,
    sink: String,
    sink_kind: String,
    state: String,
    attempts: i32,
    max_attempts: i32,
    created_at: DateTime<Utc>,
    next_attempt_at: Option<DateTime<Utc>>,
    delivered_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    tries: Vec<DeliveryAttemptView>,
}

#[derive(Debug, Serialize)]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListAlerts {
    state: Option<String>,
    kind: Option<String>,
    job: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// Alerts newest first, by state, kind and job; `cursor` is the previous page's `next_cursor`.
async fn list_alerts(
    State(state): State<AppState>,
    Query(query): Query<ListAlerts>,
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
    let before = match query.cursor.as_deref().map(str::parse::<Uuid>) {
        Some(Err(_)) => {
            errors.push("cursor", "not a cursor returned by this API");
            None
        }
        other => other.and_then(Result::ok),
    };
    let limit = match limit(query.limit.as_deref(), 50) {
        Ok(limit) => limit,
        Err(Error::Validation(e)) => {
            for error in e.errors() {
                errors.push(error.field.clone(), error.message.clone());
            }
            50
        }
        Err(other) => return Err(other),
    };
    errors.into_result(()).map_err(Error::Validation)?;
    let filter = AlertFilter {
        state: alert_state,
        kind,
        job: query.job,
        before,
        limit,
    };
    let alerts = state.store.list_alerts(&filter).await?;
    let full = i64::try_from(alerts.len()).unwrap_or(i64::MAX) == limit;
    let next_cursor = full
        .then(|| alerts.last().map(|a| a.id.to_string()))
        .flatten();
    Ok(JsonResponse(Page {
        items: alerts.into_iter().map(AlertView::from).collect(),
        next_cursor,
    }))
}

fn alert_id(raw: &str) -> Result<Uuid> {
    raw.parse()
        .map_err(|_| Error::field("id", format!("`{raw}` is not an alert id (a UUID)")))
}

fn alert_not_found(id: Uuid) -> impl FnOnce(pacer_store::Error) -> Error {
    move |error| match error {
        pacer_store::Error::NotFound(_) => Error::NotFound {
            what: "alert",
            id: id.to_string(),
        },
        other => other.into(),
    }
}

/// One alert with its deliveries and their attempts.
async fn get_alert(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
) -> Result<JsonResponse<AlertView>> {
    let id = alert_id(&raw_id)?;
    let alert = state
        .store
        .get_alert(id)
        .await
        .map_err(alert_not_found(id))?;
    let deliveries = state.store.alert_deliveries(id).await?;
    let mut view = AlertView::from(alert);
    view.deliveries = Some(deliveries.into_iter().map(DeliveryView::from).collect());
    Ok(JsonResponse(view))
}

/// The optional body of an acknowledgement or resolution.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertNote {
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

/// Acknowledges an open alert: it stays open but notifies no one again. Acknowledging again
/// changes nothing; a resolved alert answers `409`.
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

/// Resolves an open or acknowledged alert. Resolving again changes nothing.
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
