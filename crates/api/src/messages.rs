//! Upstream messages: `POST /api/v1/messages` turns a message into a task for every job subscribed
//! to its type (once per message id), and operators list what was received, unrouted ones
//! included.

use axum::Json as JsonResponse;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use pacer_domain::{Message, MessageInput, MessageSource, MessageType, TaskId, ValidationErrors};
use pacer_store::{MessageFilter, StoredMessage};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::Problem;
use crate::extract::{Json, Path};
use crate::pagination::{ListQuery, Listing, PageParams};
use crate::views::Page;
use crate::{AppState, Error, Result};

pub(crate) fn upstream_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_message))
}

pub(crate) fn operator_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_messages))
        .routes(routes!(get_message))
}

/// The `{id}` path parameter of a message.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct MessagePath {
    /// The message's id: the upstream's `id`, or the one Pacer gave it.
    #[param(example = "evt-20261124-0042")]
    #[allow(dead_code)]
    id: String,
}

/// A task a message created.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = MessageTask)]
struct RoutedTask {
    job: String,
    task_id: TaskId,
}

/// A subscribing job that got no task from a message, and why.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = MessageSkip)]
struct SkippedJob {
    job: String,
    /// Why: the job's overlap policy skipped it (`overlap_skip`, `overlap_buffer_full`), or the
    /// job is paused (`job_paused`).
    #[schema(examples("job_paused", "overlap_skip"))]
    reason: String,
}

/// A message as the API returns it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Message, example = json!({
    "id": "evt-20261124-0042", "type": "masterdata.changed", "key": "centers",
    "payload": { "tables": ["centers"] }, "source": "api", "duplicate": false, "routed": true,
    "tasks": [ { "job": "master-data-sync", "task_id": "0193a5c4-7f2e-7c1a-9d3e-2b1f4a6c8e01" } ],
    "skipped": [ { "job": "nightly-export", "reason": "job_paused" } ],
    "received_at": "2026-11-24T09:00:00Z"
}))]
pub(crate) struct MessageView {
    /// The upstream's id, or one Pacer gave the message when it had none.
    id: String,
    #[serde(rename = "type")]
    #[schema(value_type = MessageType)]
    kind: String,
    key: Option<String>,
    #[schema(value_type = Object)]
    payload: Value,
    /// `api` or `amqp`.
    #[schema(value_type = MessageSource)]
    source: String,
    /// True when the message had been received before and this request changed nothing; only
    /// in the answer to `POST /api/v1/messages`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
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

/// Send a message
///
/// Creates a task for every job subscribed to the message's type (`on_messages`): `202` listing
/// the tasks it created (none when no job subscribes to its type), or `200` with
/// `duplicate: true` and what the first receipt created when its id (or, without one, its type,
/// key and payload) was seen before.
#[utoipa::path(
    post,
    path = "/api/v1/messages",
    tag = "messages",
    request_body = MessageInput,
    responses(
        (status = 202, description = "The message was received; `tasks` lists the tasks it created.", body = MessageView,
            headers(("Location" = String, description = "The message's URL."))),
        (status = 200, description = "The message had been received before (`duplicate: true`); nothing changed.", body = MessageView,
            headers(("Location" = String, description = "The message's URL."))),
    )
)]
async fn create_message(
    State(state): State<AppState>,
    Json(input): Json<MessageInput>,
) -> Result<Response> {
    let message = Message::try_from(input).map_err(Error::Validation)?;
    if let Some(notify) = &message.notify {
        notify
            .check(&state.notify_urls, Some(&state.secrets))
            .map_err(Error::Validation)?;
    }
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

/// Get a message
///
/// One received message with the tasks it created and the jobs it skipped.
#[utoipa::path(
    get,
    path = "/api/v1/messages/{id}",
    tag = "messages",
    params(MessagePath),
    responses(
        (status = 200, description = "The message.", body = MessageView),
        (status = 404, description = "No such message.", body = Problem),
    )
)]
async fn get_message(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<JsonResponse<MessageView>> {
    let message = state
        .store
        .get_message(&id)
        .await
        .map_err(crate::error::missing("message", &id))?;
    Ok(JsonResponse(MessageView::new(message, None)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListMessages {
    /// Only the messages of this type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    kind: Option<String>,
    /// Only the messages some job subscribed to (`true`) or none did (`false`).
    #[param(value_type = Option<bool>)]
    routed: Option<String>,
}

/// Messages page on the order they arrived in, newest first.
struct MessageList;

impl Listing for MessageList {
    type Key = i64;
    const TAG: &'static str = "ms.";
}

/// List messages
///
/// Messages newest first; `?routed=false` lists those no job subscribed to. Pass `next_cursor`
/// back as `cursor` for the next page.
#[utoipa::path(
    get,
    path = "/api/v1/messages",
    tag = "messages",
    params(ListMessages, PageParams<MessageList>),
    responses((status = 200, description = "A page of messages.", body = Page<MessageView>))
)]
async fn list_messages(
    State(state): State<AppState>,
    ListQuery {
        filter: query,
        page,
    }: ListQuery<ListMessages, MessageList>,
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
    let page = page.check(errors)?;
    let filter = MessageFilter {
        routed,
        kind: query.kind,
        before: page.after,
        limit: page.fetch(),
    };
    let messages = state.store.list_messages(&filter).await?;
    Ok(JsonResponse(page.page(
        messages,
        |m| m.ordinal,
        |m| MessageView::new(m, None),
    )))
}
