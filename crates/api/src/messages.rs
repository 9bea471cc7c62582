//! Upstream messages: `POST /api/v1/messages` turns a message into a task for every job subscribed
//! to its type (once per message id), and operators list what was received, unrouted ones
//! included.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json as JsonResponse, Router};
use chrono::{DateTime, Utc};
use pacer_domain::{Message, MessageInput, MessageSource, TaskId, ValidationErrors};
use pacer_store::{MessageFilter, StoredMessage};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::extract::{Json, Query, limit};
use crate::views::Page;
use crate::{AppState, Error, Result};

pub(crate) fn upstream_routes() -> Router<AppState> {
    Router::new().route("/api/v1/messages", post(create_message))
}

pub(crate) fn operator_routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/messages", get(list_messages))
        .route("/api/v1/messages/{id}", get(get_message))
}

/// A task a message created.
#[derive(Debug, Serialize)]
struct RoutedTask {
    job: String,
    task_id: TaskId,
}

/// A subscribing job that got no task from a message, and why.
#[derive(Debug, Serialize)]
struct SkippedJob {
    job: String,
    reason: String,
}

/// A message as the API returns it.
#[derive(Debug, Serialize)]
pub(crate) struct MessageView {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    key: Option<String>,
    payload: Value,
    source: String,
    /// True when the message had been received before and this request changed nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
    /// False when no job subscribes to the type.
    routed: bool,
    tasks: Vec<RoutedTask>,
    skipped: Vec<SkippedJob>,
    received_at: DateTime<Utc>,
}

impl MessageView {
    fn new(message: StoredMessage, duplicate: Option<bool>) -> Self {
        let mut tasks = Vec::new();
        let mut skipped = Vec::new();
        for route in message.routes {
            match (route.task_id, route.skipped) {
                (Some(task_id), _) => tasks.push(RoutedTask {
                    job: route.job,
                    task_id,
                }),
                (None, reason) => skipped.push(SkippedJob {
                    job: route.job,
                    reason: reason.unwrap_or_default(),
                }),
            }
        }
        Self {
            id: message.id,
            kind: message.kind,
            key: message.key,
            payload: message.payload,
            source: message.source,
            duplicate,
            routed: message.routed,
            tasks,
            skipped,
            received_at: message.received_at,
        }
    }
}

/// Receives a message: `202` listing the tasks it created (none when no job subscribes to its
/// type), or `200` with `duplicate: true` and what the first receipt created when its id (or,
/// without one, its type, key and payload) was seen before.
async fn create_message(
    State(state): State<AppState>,
    Json(input): Json<MessageInput>,
) -> Result<Response> {
    let message = Message::try_from(input).map_err(Error::Validation)?;
    let traceparent = crate::observe::current_traceparent();
    let ingested = state
        .store
        .ingest_message(&message, MessageSource::Api, traceparent.as_deref())
        .await?;
    count_message(MessageSource::Api, &ingested);
    let status = if ingested.duplicate {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let location = format!("/api/v1/messages/{}", ingested.message.id);
    Ok((
        status,
        [(header::LOCATION, location)],
        JsonResponse(MessageView::new(ingested.message, Some(ingested.duplicate))),
    )
        .into_response())
}

/// Counts a received message and the tasks it created.
pub(crate) fn count_message(source: MessageSource, ingested: &pacer_store::Ingested) {
    let result = if ingested.duplicate {
        "duplicate"
    } else if ingested.message.routed {
        "routed"
    } else {
        "unrouted"
    };
    metrics::counter!("pacer_messages_total", "source" => source.as_str(), "result" => result)
        .increment(1);
    if ingested.created > 0 {
        metrics::counter!("pacer_tasks_created_total", "origin" => "message")
            .increment(u64::try_from(ingested.created).unwrap_or(u64::MAX));
    }
    for route in &ingested.message.routes {
        if let (false, Some(reason)) = (ingested.duplicate, route.skipped.as_deref())
            && reason != "job_paused"
        {
            metrics::counter!("pacer_skips_total", "reason" => reason.to_owned()).increment(1);
        }
    }
}

/// One message by id.
async fn get_message(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<JsonResponse<MessageView>> {
    let message = state.store.get_message(&id).await.map_err(|e| match e {
        pacer_store::Error::NotFound(_) => Error::NotFound {
            what: "message",
            id: id.clone(),
        },
        other => other.into(),
    })?;
    Ok(JsonResponse(MessageView::new(message, None)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListMessages {
    #[serde(rename = "type")]
    kind: Option<String>,
    routed: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// Messages newest first; `?routed=false` lists those no job subscribed to.
async fn list_messages(
    State(state): State<AppState>,
    Query(query): Query<ListMessages>,
) -> Result<JsonResponse<Page<MessageView>>> {
    let mut errors = ValidationErrors::new();
    let routed = match query.routed.as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => {
            errors.push("routed", format!("`true` or `false`, got `{other}`"));
            None
        }
    };
    let before = match query.cursor.as_deref().map(str::parse::<i64>) {
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
    let filter = MessageFilter {
        routed,
        kind: query.kind,
        before,
        limit,
    };
    let messages = state.store.list_messages(&filter).await?;
    let full = i64::try_from(messages.len()).unwrap_or(i64::MAX) == limit;
    let next_cursor = full
        .then(|| messages.last().map(|m| m.ordinal.to_string()))
        .flatten();
    Ok(JsonResponse(Page {
        items: messages
            .into_iter()
            .map(|m| MessageView::new(m, None))
            .collect(),
        next_cursor,
    }))
}
