//! Tasks: creation (idempotent per job and key), reads, cancellation, and the downstream's
//! status callback, whose rules are the state machine's: repeats change nothing, a terminal
//! state never changes.

use axum::Json as JsonResponse;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use pacer_domain::dispatch::Report;
use pacer_domain::{CallbackStatus, TaskId, TaskState, ValidationErrors};
use pacer_store::{CreatedTask, NewTask, Origin, ReportOutcome, TaskFilter};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::audit;
use crate::auth::Actor;
use crate::error::Problem;
use crate::extract::{Json, JsonOrEmpty, Path, Query, limit, task_id};
use crate::jobs::{JobPath, existing_name, not_found};
use crate::views::{Page, TaskView};
use crate::{AppState, Error, Result};

pub(crate) fn upstream_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_task))
}

pub(crate) fn downstream_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(report_task))
}

pub(crate) fn operator_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tasks))
        .routes(routes!(get_task))
        .routes(routes!(cancel_task))
}

/// The `{id}` path parameter of the task routes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct TaskPath {
    /// The task's id.
    #[allow(dead_code)]
    id: Uuid,
}

/// The `Idempotency-Key` header of task creation.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
struct IdempotencyHeader {
    /// Same as `idempotency_key` in the body; when both are sent they must be equal.
    #[param(rename = "Idempotency-Key", value_type = String, required = false, min_length = 1, max_length = 255, pattern = r"^[ -~]+$")]
    #[allow(dead_code)]
    idempotency_key: Option<String>,
}

/// A new task; every field is optional, and so is the body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewTask, example = json!({
    "payload": { "name": "world" }, "idempotency_key": "order-8812", "not_before": "2026-12-01T09:00:00Z"
}))]
struct CreateTaskRequest {
    /// Laid over the job's payload key by key.
    payload: Option<Map<String, Value>>,
    /// The same key for the same job returns the existing task instead of creating another
    /// (1–255 characters, no control characters). Also accepted as an `Idempotency-Key` header.
    #[schema(min_length = 1, max_length = 255)]
    idempotency_key: Option<String>,
    /// Dispatch no earlier than this.
    not_before: Option<DateTime<Utc>>,
}

/// Create a task
///
/// Creates a task for the job: `202` with the new task, or `200` with the task that already has
/// this idempotency key (from the body, or the `Idempotency-Key` header). Under the job's
/// `skip` or `buffer_one` overlap policy a task that cannot run is recorded as skipped and
/// answered `409 /problems/overlap-skipped`.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{name}/tasks",
    tag = "tasks",
    params(JobPath, IdempotencyHeader),
    request_body(content = Option<CreateTaskRequest>, description = "Optional: an empty body creates a task with the job's payload."),
    responses(
        (status = 200, description = "A task with this idempotency key already exists; it is returned unchanged.", body = TaskView,
            headers(("Location" = String, description = "The task's URL."))),
        (status = 202, description = "The task was created.", body = TaskView,
            headers(("Location" = String, description = "The task's URL."))),
        (status = 404, description = "No such job.", body = Problem),
        (status = 409, description = "The job is paused (`/problems/job-paused`), or its overlap policy skipped the task (`/problems/overlap-skipped`).", body = Problem),
    )
)]
async fn create_task(
    State(state): State<AppState>,
    Path(raw_name): Path<String>,
    headers: HeaderMap,
    JsonOrEmpty(request): JsonOrEmpty<CreateTaskRequest>,
) -> Result<Response> {
    let header_key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| Error::field("Idempotency-Key", "must be visible ASCII"))?
                .to_owned(),
        ),
    };
    let key = match (request.idempotency_key, header_key) {
        (Some(body), Some(header)) if body != header => {
            return Err(Error::field(
                "idempotency_key",
                "differs from the Idempotency-Key header; send one or make them equal",
            ));
        }
        (body, header) => body.or(header),
    };
    if let Some(key) = &key
        && (key.is_empty() || key.chars().count() > 255 || key.chars().any(char::is_control))
    {
        return Err(Error::field(
            "idempotency_key",
            "1 to 255 characters, no control characters",
        ));
    }
    let name = existing_name(&raw_name)?;
    let job = state.store.get_job(&name).await.map_err(not_found(&name))?;
    if job.paused {
        return Err(Error::JobPaused {
            job: name.to_string(),
        });
    }
    let task = NewTask {
        id: TaskId::new(),
        origin: Origin::Api,
        idempotency_key: key,
        payload: job.spec.task_payload(request.payload.as_ref()),
        not_before: request.not_before,
        trace_context: crate::observe::current_traceparent(),
    };
    // A free dispatch slot on this node means the task can be claimed as it is created.
    let reserved = state.handoff.as_ref().and_then(|h| {
        h.permits
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|permit| (h, permit))
    });
    let claim_for = reserved
        .as_ref()
        .map(|(h, _)| (&*state.node_id, h.lease_margin));
    let created = state
        .store
        .create_task(&job, task, claim_for)
        .await
        .map_err(|e| match e {
            // The job was deleted between reading it and inserting the task.
            pacer_store::Error::Conflict { .. } => Error::NotFound {
                what: "job",
                id: name.to_string(),
            },
            other => other.into(),
        })?;
    let (id, status) = match created {
        CreatedTask::Created { id, claimed } => {
            if let (Some(claimed), Some((handoff, permit))) = (claimed, reserved)
                && let Err(unsent) = handoff.sender.try_send((*claimed, permit))
            {
                // The dispatcher is shutting down: hand the claim back for any node to take.
                let (task, _permit) = unsent.into_inner();
                let claim = pacer_store::ReleasedClaim {
                    id: task.id,
                    claim_token: task.claim_token,
                    attempt: task.attempt,
                    claimed_at: task.claimed_at,
                };
                state.store.release_claims(&state.node_id, &[claim]).await?;
            }
            metrics::counter!("pacer_tasks_created_total", "origin" => "api").increment(1);
            (id, StatusCode::ACCEPTED)
        }
        CreatedTask::Existing { id } => (id, StatusCode::OK),
        CreatedTask::Skipped { reason, open_task } => {
            metrics::counter!("pacer_skips_total", "reason" => reason.as_str()).increment(1);
            return Err(Error::OverlapSkipped {
                job: name.to_string(),
                reason,
                open_task,
            });
        }
    };
    let task = state.store.get_task(id).await?;
    let location = format!("/api/v1/tasks/{id}");
    Ok((
        status,
        [(header::LOCATION, location)],
        JsonResponse(TaskView::from(task)),
    )
        .into_response())
}

fn task_not_found(id: TaskId) -> impl FnOnce(pacer_store::Error) -> Error {
    move |error| match error {
        pacer_store::Error::NotFound(_) => Error::NotFound {
            what: "task",
            id: id.to_string(),
        },
        other => other.into(),
    }
}

/// Get a task
///
/// The task with every attempt so far.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}",
    tag = "tasks",
    params(TaskPath),
    responses(
        (status = 200, description = "The task with its attempts.", body = TaskView),
        (status = 404, description = "No such task.", body = Problem),
    )
)]
async fn get_task(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
) -> Result<JsonResponse<TaskView>> {
    let id = task_id(&raw_id)?;
    let task = state.store.get_task(id).await.map_err(task_not_found(id))?;
    let attempts = state.store.task_attempts(id).await?;
    Ok(JsonResponse(TaskView::with_attempts(task, attempts)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListTasks {
    /// Only the tasks of this job.
    job: Option<String>,
    /// Only the tasks in this state.
    #[param(value_type = Option<TaskState>)]
    state: Option<String>,
    /// Most tasks to return.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000, default = 50)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List tasks
///
/// Tasks newest first, by job and state, a page at a time: pass `next_cursor` back as `cursor`
/// for the next page.
#[utoipa::path(
    get,
    path = "/api/v1/tasks",
    tag = "tasks",
    params(ListTasks),
    responses((status = 200, description = "A page of tasks (without their attempts).", body = Page<TaskView>))
)]
async fn list_tasks(
    State(state): State<AppState>,
    Query(query): Query<ListTasks>,
) -> Result<JsonResponse<Page<TaskView>>> {
    let mut errors = ValidationErrors::new();
    let task_state = match query.state.as_deref().map(str::parse::<TaskState>) {
        Some(Err(e)) => {
            errors.push("state", e.to_string());
            None
        }
        other => other.and_then(Result::ok),
    };
    let before = match query.cursor.as_deref().map(str::parse::<TaskId>) {
        Some(Err(_)) => {
            errors.push("cursor", "not a cursor returned by this API");
            None
        }
        other => other.and_then(Result::ok),
    };
    let limit = match limit(query.limit.as_deref(), 50) {
        Ok(limit) => limit,
        Err(Error::Validation(e)) => {
            errors.push(
                "limit",
                e.errors()
                    .first()
                    .map(|e| e.message.clone())
                    .unwrap_or_default(),
            );
            50
        }
        Err(other) => return Err(other),
    };
    errors.into_result(()).map_err(Error::Validation)?;
    let filter = TaskFilter {
        job: query.job,
        state: task_state,
        before,
        limit,
    };
    let tasks = state.store.list_tasks(&filter).await?;
    let full = i64::try_from(tasks.len()).unwrap_or(i64::MAX) == limit;
    let next_cursor = full
        .then(|| tasks.last().map(|t| t.id.to_string()))
        .flatten();
    Ok(JsonResponse(Page {
        items: tasks.into_iter().map(TaskView::from).collect(),
        next_cursor,
    }))
}

/// Cancel a task
///
/// Cancels an open task; cancelling a cancelled task again changes nothing.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/{id}/cancel",
    tag = "tasks",
    params(TaskPath),
    responses(
        (status = 200, description = "The task, cancelled.", body = TaskView),
        (status = 404, description = "No such task.", body = Problem),
        (status = 409, description = "The task already finished otherwise (`/problems/task-terminal`, with `state` and `task`).", body = Problem),
    )
)]
async fn cancel_task(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_id): Path<String>,
) -> Result<JsonResponse<TaskView>> {
    let id = task_id(&raw_id)?;
    let outcome = state
        .store
        .cancel_task(id)
        .await
        .map_err(task_not_found(id))?;
    if let ReportOutcome::Applied(after) = outcome {
        let after = serde_json::json!({ "state": after });
        audit::record(
            &state,
            &actor,
            "cancel_task",
            format!("task:{id}"),
            None,
            Some(after),
        )
        .await;
    }
    respond(&state, id, outcome).await
}

/// A downstream's report on a task.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Callback, example = json!({
    "status": "completed_with_errors", "message": "3 records rejected",
    "result": { "processed": 497, "failed": 3 }
}))]
struct CallbackRequest {
    /// `processing` (progress, also a heartbeat that postpones the next re-poll) or how the
    /// task ended.
    status: CallbackStatus,
    /// Any JSON, shown on the task.
    progress: Option<Value>,
    /// At most 4000 characters.
    message: Option<String>,
    /// Any JSON, kept on the task.
    result: Option<Value>,
}

/// Report on a task (the downstream's callback)
///
/// Progress (`processing`, also a heartbeat) or the end of the task. Repeating a callback changes
/// nothing and answers `200`; one that contradicts a finished task answers `409` with the
/// current state.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/{id}/callback",
    tag = "tasks",
    params(TaskPath),
    request_body = CallbackRequest,
    responses(
        (status = 200, description = "The task after the report (unchanged for a repeat).", body = TaskView),
        (status = 404, description = "No such task.", body = Problem),
        (status = 409, description = "The task already finished otherwise (`/problems/task-terminal`, with `state` and `task`).", body = Problem),
    )
)]
async fn report_task(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    Json(request): Json<CallbackRequest>,
) -> Result<JsonResponse<TaskView>> {
    let id = task_id(&raw_id)?;
    if request
        .message
        .as_ref()
        .is_some_and(|m| m.chars().count() > 4000)
    {
        return Err(Error::field("message", "at most 4000 characters"));
    }
    let report = Report {
        status: request.status,
        progress: request.progress,
        message: request.message,
        result: request.result,
    };
    let outcome = state
        .store
        .report(id, &report)
        .await
        .map_err(task_not_found(id))?;
    let result = match outcome {
        ReportOutcome::Applied(_) => "applied",
        ReportOutcome::Unchanged(_) => "unchanged",
        ReportOutcome::Refused(_) => "refused",
    };
    let status = serde_json::to_value(report.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned));
    metrics::counter!("pacer_callbacks_total", "status" => status.unwrap_or_default(), "result" => result)
        .increment(1);
    respond(&state, id, outcome).await
}

/// `200` with the current task, or `409` carrying it when the request contradicts a final state.
async fn respond(
    state: &AppState,
    id: TaskId,
    outcome: ReportOutcome,
) -> Result<JsonResponse<TaskView>> {
    let task = TaskView::from(state.store.get_task(id).await?);
    match outcome {
        ReportOutcome::Applied(_) | ReportOutcome::Unchanged(_) => Ok(JsonResponse(task)),
        ReportOutcome::Refused(current) => Err(Error::TaskTerminal {
            state: current,
            task: Box::new(task),
        }),
    }
}
