//! Tasks: creation (idempotent per job and key), reads, cancellation, and the downstream's
//! status callback, whose rules are the state machine's: repeats change nothing, a terminal
//! state never changes.

use std::sync::Arc;

use axum::Json as JsonResponse;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use pacer_domain::dispatch::{Report, ReportedError};
use pacer_domain::fingerprint::check_fingerprint;
use pacer_domain::{
    CallbackStatus, Notify, OutboundAuth, OverlapPolicy, SkipReason, TaskId, TaskOutcome,
    TaskState, ValidationErrors,
};
use pacer_store::{CreatedTask, KeptTask, NewTask, Origin, ReportOutcome, TaskFilter};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::audit;
use crate::auth::Actor;
use crate::error::Problem;
use crate::extract::{Json, JsonOrEmpty, Path, task_id};
use crate::jobs::{JobPath, existing_name, not_found};
use crate::observe::Received;
use crate::pagination::{ListQuery, Listing, PageParams};
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
pub(crate) struct TaskPath {
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
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    idempotency_key: Option<String>,
    /// Dispatch no earlier than this.
    not_before: Option<DateTime<Utc>>,
    /// Who to tell when the task ends (or at every state change).
    notify: Option<Notify>,
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
    if let Some(notify) = &request.notify {
        notify
            .check(&state.notify_urls, Some(&state.secrets))
            .map_err(Error::Validation)?;
    }
    let name = existing_name(&raw_name)?;
    let payload = request.payload;
    let trace_context = crate::observe::current_traceparent();
    // The job's definition is kept between requests: the insert itself checks that the job still
    // has the version read and is not paused, and a stale definition is read again. Only a job
    // whose overlap policy is `allow` is created from a kept definition; the others are read
    // afresh, as admission needs the current policy. Three stale reads in a row means the job is
    // being redefined continuously.
    let mut cached = state.jobs.get(name.as_str());
    let mut started = None;
    for _ in 0..3 {
        let job = match cached.take() {
            Some(job) if !job.paused && job.spec.overlap == OverlapPolicy::Allow => job,
            _ => {
                let job = match state.store.get_job(&name).await {
                    Ok(job) => Arc::new(job),
                    Err(error) => {
                        state.jobs.forget(name.as_str());
                        return Err(not_found(&name)(error));
                    }
                };
                state.jobs.keep(name.as_str(), job.clone());
                if job.paused {
                    return Err(Error::JobPaused {
                        job: name.to_string(),
                    });
                }
                job
            }
        };
        let task = NewTask {
            id: TaskId::new(),
            origin: Origin::Api,
            idempotency_key: key.clone(),
            payload: job.spec.task_payload(payload.as_ref()),
            not_before: request.not_before,
            trace_context: trace_context.clone(),
            actor: None,
            retry_of: None,
            notify: request.notify.as_ref().map(|n| n.stored(job_auth(&job))),
        };
        let job = if job.spec.overlap == OverlapPolicy::Allow {
            Job::Kept(&job)
        } else {
            Job::Current(&job)
        };
        if let Some(outcome) = start(&state, job, task, "api").await? {
            started = Some(outcome);
            break;
        }
        state.jobs.forget(name.as_str());
    }
    let Some(started) = started else {
        return Err(Error::Internal(
            format!("job {name} changed on every attempt to create a task; try again").into(),
        ));
    };
    let (task, status) = match started {
        Started::Created { task, .. } => (*task, StatusCode::ACCEPTED),
        Started::Existing(id) => (state.store.get_task(id).await?, StatusCode::OK),
        Started::Skipped { reason, open_task } => {
            return Err(Error::OverlapSkipped {
                job: name.to_string(),
                reason,
                open_task,
            });
        }
    };
    let location = format!("/api/v1/tasks/{}", task.id);
    Ok((
        status,
        [(header::LOCATION, location)],
        JsonResponse(TaskView::from(task)),
    )
        .into_response())
}

/// The outbound auth of a job's target, the default of its tasks' notices.
pub(crate) fn job_auth(job: &pacer_store::Job) -> &OutboundAuth {
    static NONE: OutboundAuth = OutboundAuth::None {};
    job.spec.target.as_ref().map_or(&NONE, |t| t.auth())
}

/// What starting a task came to.
#[derive(Debug, Clone)]
pub(crate) enum Started {
    /// A new task, as inserted.
    Created {
        id: TaskId,
        task: Box<pacer_store::Task>,
    },
    /// The job already had a task with this idempotency key.
    Existing(TaskId),
    /// The job's overlap policy refused the task; the skip was recorded.
    Skipped {
        reason: SkipReason,
        open_task: Option<TaskId>,
    },
}

/// Creates a task for `job` under its overlap policy. A free dispatch slot on this node means
/// the task is claimed as it is created and handed straight to the dispatcher. `origin` labels
/// the metrics.
pub(crate) async fn start_task(
    state: &AppState,
    job: &pacer_store::Job,
    task: NewTask,
    origin: &'static str,
) -> Result<Started> {
    start(state, Job::Current(job), task, origin)
        .await?
        .ok_or_else(|| Error::NotFound {
            what: "job",
            id: job.name.to_string(),
        })
}

/// The job a task is started for.
#[derive(Clone, Copy)]
enum Job<'a> {
    /// Just read.
    Current(&'a pacer_store::Job),
    /// Kept from an earlier read, with overlap policy `allow`: the task is created (in a batch
    /// with others) only if the job has not changed since.
    Kept(&'a Arc<pacer_store::Job>),
}

/// [`start_task`]; `None` says a kept job is no longer current (changed, paused or deleted): read
/// it again.
async fn start(
    state: &AppState,
    job: Job<'_>,
    task: NewTask,
    origin: &'static str,
) -> Result<Option<Started>> {
    let reserved = state.dispatch.as_ref().and_then(|d| d.reserve());
    let claim_for = reserved
        .as_ref()
        .map(|slot| (&*state.node_id, slot.lease_margin()));
    let created = match job {
        Job::Kept(job) => {
            let kept = KeptTask {
                job: job.clone(),
                task,
                claim: claim_for.map(|(_, margin)| margin),
            };
            state.creation.submit(kept).await
        }
        Job::Current(job) => state
            .store
            .create_task(job, task, claim_for)
            .await
            .map(Some),
    };
    let job = match job {
        Job::Current(job) => job,
        Job::Kept(job) => &**job,
    };
    let created = created.map_err(|e| match e {
        // The job was deleted between reading it and inserting the task.
        pacer_store::Error::Conflict { .. } => Error::NotFound {
            what: "job",
            id: job.name.to_string(),
        },
        other => other.into(),
    })?;
    let Some(created) = created else {
        return Ok(None);
    };
    Ok(Some(match created {
        CreatedTask::Created { id, task, claimed } => {
            if let (Some(claimed), Some(slot)) = (claimed, reserved) {
                slot.hand_over(*claimed).await;
            }
            metrics::counter!("pacer_tasks_created_total", "origin" => origin).increment(1);
            Started::Created { id, task }
        }
        CreatedTask::Existing { id } => Started::Existing(id),
        CreatedTask::Skipped { reason, open_task } => {
            metrics::counter!("pacer_skips_total", "reason" => reason.as_str()).increment(1);
            Started::Skipped { reason, open_task }
        }
    }))
}

pub(crate) fn task_not_found(id: TaskId) -> impl FnOnce(pacer_store::Error) -> Error {
    crate::error::missing("task", id)
}

/// Get a task
///
/// The task with every attempt so far, its latest 1000 state changes and callbacks in order
/// (`history`), the tasks that retry it (`retries`), and, while it waits for a concurrency
/// slot, what it waits for (`waiting_for`).
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}",
    tag = "tasks",
    params(TaskPath),
    responses(
        (status = 200, description = "The task with its attempts, history and retries.", body = TaskView),
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
    // A task reporting progress for days has a long history; its latest part is what matters.
    let history = state.store.task_history(id, 1000).await?;
    let retries = state.store.retries_of(id).await?;
    let run = crate::runs::run_steps(&state, id, task.state).await?;
    let waiting_for = state.store.waiting_for(id.as_uuid()).await?;
    let notices = state.store.task_notices(id).await?;
    let view = TaskView::detail(task, attempts, history, retries)
        .waiting_for(waiting_for)
        .notices(notices);
    Ok(JsonResponse(match run {
        Some((steps, progress)) => view.with_steps(steps, progress),
        None => view,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListTasks {
    /// Only the tasks of this job.
    job: Option<String>,
    /// Only the tasks in these states: one state, or several separated by commas.
    #[param(
        value_type = Option<String>,
        pattern = r"^ *(pending|processing|completed|completed_with_errors|failed|cancelled) *(, *(pending|processing|completed|completed_with_errors|failed|cancelled) *)*$",
        example = "failed,completed_with_errors"
    )]
    state: Option<String>,
    /// Only the tasks that came to be this way.
    #[param(value_type = Option<String>, pattern = r"^(api|manual|trigger|message|retry)$", example = "manual")]
    origin: Option<String>,
    /// Only the tasks created at or after this instant (RFC 3339).
    #[param(value_type = Option<DateTime<Utc>>)]
    created_after: Option<String>,
    /// Only the tasks created before this instant (RFC 3339).
    #[param(value_type = Option<DateTime<Utc>>)]
    created_before: Option<String>,
    /// Only the tasks finished at or after this instant (RFC 3339).
    #[param(value_type = Option<DateTime<Utc>>)]
    finished_after: Option<String>,
    /// Only the tasks finished before this instant (RFC 3339).
    #[param(value_type = Option<DateTime<Utc>>)]
    finished_before: Option<String>,
    /// Only the tasks past their deadline (`true`) or not (`false`).
    #[param(value_type = Option<bool>)]
    overdue: Option<String>,
    /// Only the tasks that ended with this outcome: `unchanged` (skip if unchanged).
    #[param(value_type = Option<String>, pattern = r"^unchanged$", example = "unchanged")]
    outcome: Option<String>,
    /// The children of this run (a task of a job made of steps). Without it, the list holds
    /// runs and single tasks, not the children of runs.
    #[param(value_type = Option<Uuid>)]
    run: Option<String>,
}

/// Tasks page on their id (time-ordered), newest first.
struct TaskList;

impl Listing for TaskList {
    type Key = TaskId;
    const TAG: &'static str = "tk.";
}

/// An RFC 3339 instant from the query, or a field error.
fn instant(errors: &mut ValidationErrors, field: &str, raw: Option<&str>) -> Option<DateTime<Utc>> {
    let raw = raw?;
    match DateTime::parse_from_rfc3339(raw) {
        Ok(at) => Some(at.with_timezone(&Utc)),
        Err(_) => {
            errors.push(
                field,
                format!("`{raw}` is not an RFC 3339 instant like 2026-12-01T09:00:00Z"),
            );
            None
        }
    }
}

/// List tasks
///
/// Tasks newest first, filtered by job, state (one or several, comma-separated), origin,
/// creation and finish time ranges, overdue, and outcome (`unchanged`); `cursor` is the `next_cursor` of the previous
/// page. Paging is keyset on the task id, so pages neither repeat nor skip a task while new ones
/// are created.
#[utoipa::path(
    get,
    path = "/api/v1/tasks",
    tag = "tasks",
    params(ListTasks, PageParams<TaskList>),
    responses((status = 200, description = "A page of tasks (without their attempts and history).", body = Page<TaskView>))
)]
async fn list_tasks(
    State(state): State<AppState>,
    ListQuery {
        filter: query,
        page,
    }: ListQuery<ListTasks, TaskList>,
) -> Result<JsonResponse<Page<TaskView>>> {
    let mut errors = ValidationErrors::new();
    let mut states = Vec::new();
    for raw in query
        .state
        .as_deref()
        .into_iter()
        .flat_map(|s| s.split(','))
    {
        match raw.trim().parse::<TaskState>() {
            Ok(parsed) if !states.contains(&parsed) => states.push(parsed),
            Ok(_) => {}
            Err(e) => errors.push("state", e.to_string()),
        }
    }
    let origin = match query.origin.as_deref().map(str::parse::<Origin>) {
        Some(Err(e)) => {
            errors.push("origin", e);
            None
        }
        other => other.and_then(Result::ok),
    };
    let overdue = match query.overdue.as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => {
            errors.push("overdue", format!("must be true or false, got `{other}`"));
            None
        }
    };
    let outcome = match query.outcome.as_deref().map(str::parse::<TaskOutcome>) {
        Some(Err(e)) => {
            errors.push("outcome", e);
            None
        }
        other => other.and_then(Result::ok),
    };
    let created_after = instant(&mut errors, "created_after", query.created_after.as_deref());
    let created_before = instant(
        &mut errors,
        "created_before",
        query.created_before.as_deref(),
    );
    let finished_after = instant(
        &mut errors,
        "finished_after",
        query.finished_after.as_deref(),
    );
    let finished_before = instant(
        &mut errors,
        "finished_before",
        query.finished_before.as_deref(),
    );
    let run = match query.run.as_deref().map(str::parse::<Uuid>) {
        Some(Ok(id)) => Some(TaskId::from(id)),
        Some(Err(_)) => {
            errors.push("run", "must be a task id (a UUID)");
            None
        }
        None => None,
    };
    let page = page.check(errors)?;
    let filter = TaskFilter {
        job: query.job,
        states,
        origin,
        created_after,
        created_before,
        finished_after,
        finished_before,
        overdue,
        outcome,
        run,
        before: page.after,
        limit: page.fetch(),
    };
    let tasks = state.store.list_tasks(&filter).await?;
    Ok(JsonResponse(page.page(tasks, |t| t.id, TaskView::from)))
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
    let (outcome, task) = state
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
    respond(task, outcome)
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
    /// What the downstream saw of its input (1–256 characters, e.g. `sha256:…`). For a job or
    /// step with `skip_if_unchanged`, a `completed` report whose fingerprint equals the
    /// `last_fingerprint` it was dispatched with ends the task with outcome `unchanged`.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    fingerprint: Option<String>,
    /// The downstream found its input unchanged and did nothing (`skip_if_unchanged`).
    unchanged: Option<bool>,
    /// With `failed`: what went wrong. A code the job's `retry.on_errors` names dispatches the
    /// task again with backoff instead of ending it; the task's `last_error` shows
    /// `code: message`.
    error: Option<ReportedError>,
    /// With `failed`: dispatch the task again (with backoff, counted against the job's
    /// `retry.max_attempts`) whatever the error code.
    retryable: Option<bool>,
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
    received: Option<Extension<Received>>,
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
    if let Some(fingerprint) = &request.fingerprint {
        check_fingerprint(fingerprint).map_err(|e| Error::field("fingerprint", e))?;
    }
    if let Some(Err((field, message))) = request.error.as_ref().map(|e| e.check("error")) {
        return Err(Error::field(&field, message));
    }
    let report = Report {
        status: request.status,
        progress: request.progress,
        message: request.message,
        result: request.result,
        fingerprint: request.fingerprint.map(String::into_boxed_str),
        unchanged: request.unchanged.unwrap_or(false),
        error: request.error.map(Box::new),
        retryable: request.retryable.unwrap_or(false),
    };
    let reported = report.status;
    let (outcome, task) = state
        .reporting
        .submit((id, report))
        .await
        .and_then(|answer| answer)
        .map_err(task_not_found(id))?;
    if let (ReportOutcome::Applied(_), Some(Extension(Received(at)))) = (&outcome, received) {
        // From the callback's arrival to its state committed: what a downstream waits for.
        metrics::histogram!("pacer_callback_apply_seconds").record(at.elapsed().as_secs_f64());
    }
    if let (ReportOutcome::Applied(_), Some(TaskOutcome::Unchanged)) = (&outcome, task.outcome) {
        // The engine counts the ones whose dispatch answer carried the report.
        metrics::counter!("pacer_tasks_unchanged_total", "pacer_job" => task.job_name.clone())
            .increment(1);
    }
    let result = match outcome {
        ReportOutcome::Applied(_) => "applied",
        ReportOutcome::Unchanged(_) => "unchanged",
        ReportOutcome::Refused(_) => "refused",
    };
    let status = serde_json::to_value(reported)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned));
    metrics::counter!("pacer_callbacks_total", "status" => status.unwrap_or_default(), "result" => result)
        .increment(1);
    respond(task, outcome)
}

/// `200` with the current task, or `409` carrying it when the request contradicts a final state.
fn respond(task: pacer_store::Task, outcome: ReportOutcome) -> Result<JsonResponse<TaskView>> {
    let task = TaskView::from(task);
    match outcome {
        ReportOutcome::Applied(_) | ReportOutcome::Unchanged(_) => Ok(JsonResponse(task)),
        ReportOutcome::Refused(current) => Err(Error::TaskTerminal {
            state: current,
            task: Box::new(task),
        }),
    }
}
