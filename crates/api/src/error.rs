//! HTTP errors in one place, rendered as RFC 9457 problem+json with a stable `type`. Client
//! mistakes get a 4xx naming the field; server faults get an opaque 5xx and a log line.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pacer_domain::{FieldError, SkipReason, TaskId, TaskState, ValidationErrors};
use serde::Serialize;
use utoipa::ToSchema;

use crate::views::TaskView;

/// An API error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the request has invalid fields: {0}")]
    Validation(ValidationErrors),
    #[error("the body is not valid JSON for this request: {0}")]
    MalformedJson(String),
    #[error("the body must be JSON (content-type: application/json)")]
    UnsupportedMediaType,
    #[error("the body is larger than the {0}-byte limit")]
    PayloadTooLarge(usize),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("task is already {state}")]
    TaskTerminal {
        state: TaskState,
        task: Box<TaskView>,
    },
    #[error("alert {id} is resolved")]
    AlertResolved { id: String },
    #[error("job {job} has open tasks")]
    JobHasOpenTasks { job: String },
    #[error("task {task} is still {state}")]
    TaskOpen { task: TaskId, state: TaskState },
    #[error("task {task} holds no claim")]
    TaskNotClaimed { task: TaskId, state: TaskState },
    #[error("job {job} is paused")]
    JobPaused { job: String },
    #[error("concurrency group {group} is named by jobs {jobs}")]
    GroupInUse { group: String, jobs: String },
    #[error("calendar {calendar} is in use by {used_by}")]
    CalendarInUse { calendar: String, used_by: String },
    #[error("job {job}'s trigger fired an occurrence of the backfill meanwhile")]
    BackfillRaced { job: String },
    #[error("job {job} already has an open task")]
    OverlapSkipped {
        job: String,
        reason: SkipReason,
        open_task: Option<TaskId>,
    },
    #[error("{0}")]
    Unauthenticated(pacer_auth::AuthError),
    #[error("{0}")]
    Forbidden(pacer_auth::AuthError),
    #[error("too many write requests; retry after {retry_after:?}")]
    RateLimited { retry_after: std::time::Duration },
    #[error("the request did not finish within {0:?}")]
    Timeout(std::time::Duration),
    #[error("no such route")]
    RouteNotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("the database is unavailable: {0}")]
    Unavailable(pacer_store::Error),
    #[error("internal error: {0}")]
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

/// The API's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An RFC 9457 problem: every error the API returns, as `application/problem+json`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "type": "/problems/validation", "title": "Invalid request", "status": 422,
    "detail": "retry.max_attempts: must be between 1 and 1000",
    "errors": [ { "field": "retry.max_attempts", "message": "must be between 1 and 1000" } ]
}))]
pub(crate) struct Problem<'a> {
    /// A stable identifier of the kind of problem, such as `/problems/validation`.
    #[serde(rename = "type")]
    #[schema(value_type = String, format = "uri-reference", example = "/problems/validation")]
    kind: &'static str,
    /// A short summary of the kind of problem.
    #[schema(value_type = String)]
    title: &'static str,
    /// The HTTP status code.
    #[schema(minimum = 400, maximum = 599)]
    status: u16,
    /// What went wrong in this request.
    detail: String,
    /// `/problems/validation`: every rejected field and why.
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    #[schema(value_type = Vec<FieldError>)]
    errors: &'a [FieldError],
    /// `/problems/task-terminal`, `/problems/task-open`, `/problems/task-not-claimed`: the
    /// task's current state.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    state: Option<TaskState>,
    /// `/problems/task-terminal`: the task as it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = TaskView, required = false)]
    task: Option<&'a TaskView>,
}

impl Error {
    /// A single invalid field.
    pub(crate) fn field(field: &str, message: impl Into<String>) -> Self {
        Error::Validation(ValidationErrors::single(field, message))
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Error::Validation(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/validation",
                "Invalid request",
            ),
            Error::MalformedJson(_) => (
                StatusCode::BAD_REQUEST,
                "/problems/malformed-json",
                "Malformed JSON",
            ),
            Error::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "/problems/unsupported-media-type",
                "Unsupported media type",
            ),
            Error::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "/problems/payload-too-large",
                "Payload too large",
            ),
            Error::NotFound { .. } | Error::RouteNotFound => {
                (StatusCode::NOT_FOUND, "/problems/not-found", "Not found")
            }
            Error::TaskTerminal { .. } => (
                StatusCode::CONFLICT,
                "/problems/task-terminal",
                "Task already finished",
            ),
            Error::JobPaused { .. } => (StatusCode::CONFLICT, "/problems/job-paused", "Job paused"),
            Error::GroupInUse { .. } => (
                StatusCode::CONFLICT,
                "/problems/concurrency-group-in-use",
                "Concurrency group in use",
            ),
            Error::CalendarInUse { .. } => (
                StatusCode::CONFLICT,
                "/problems/calendar-in-use",
                "Calendar in use",
            ),
            Error::BackfillRaced { .. } => (
                StatusCode::CONFLICT,
                "/problems/backfill-raced",
                "Backfill raced the trigger",
            ),
            Error::AlertResolved { .. } => (
                StatusCode::CONFLICT,
                "/problems/alert-resolved",
                "Alert already resolved",
            ),
            Error::OverlapSkipped { .. } => (
                StatusCode::CONFLICT,
                "/problems/overlap-skipped",
                "Skipped by the overlap policy",
            ),
            Error::JobHasOpenTasks { .. } => (
                StatusCode::CONFLICT,
                "/problems/job-has-open-tasks",
                "Job has open tasks",
            ),
            Error::TaskOpen { .. } => (
                StatusCode::CONFLICT,
                "/problems/task-open",
                "Task still open",
            ),
            Error::TaskNotClaimed { .. } => (
                StatusCode::CONFLICT,
                "/problems/task-not-claimed",
                "Task not claimed",
            ),
            Error::Unauthenticated(_) => (
                StatusCode::UNAUTHORIZED,
                "/problems/unauthenticated",
                "Unauthenticated",
            ),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "/problems/forbidden", "Forbidden"),
            Error::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "/problems/rate-limited",
                "Too many requests",
            ),
            Error::Timeout(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "/problems/timeout",
                "Request timed out",
            ),
            Error::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "/problems/method-not-allowed",
                "Method not allowed",
            ),
            Error::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "/problems/unavailable",
                "Service unavailable",
            ),
            Error::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "/problems/internal",
                "Internal error",
            ),
        }
    }

    fn detail(&self) -> String {
        match self {
            Error::Validation(errors) if errors.errors().len() == 1 => errors.to_string(),
            Error::Validation(errors) => {
                format!("{} fields are invalid: {errors}", errors.errors().len())
            }
            Error::TaskTerminal { state, .. } => {
                format!("the task is already {state}; a finished task never changes")
            }
            Error::JobPaused { job } => format!("job {job} is paused; resume it to create tasks"),
            Error::GroupInUse { group, jobs } => {
                format!("concurrency group {group} is named by jobs {jobs}; change them first")
            }
            Error::CalendarInUse { calendar, used_by } => format!(
                "calendar {calendar} is used by {used_by}; remove it from them first, or delete with ?force=true (they then ignore it)"
            ),
            Error::BackfillRaced { job } => format!(
                "a trigger of job {job} created a task for one of the occurrences while the serial backfill was written; nothing was created, send it again"
            ),
            Error::AlertResolved { id } => format!(
                "alert {id} is resolved, which is final; a repeat of its problem opens a new alert"
            ),
            Error::OverlapSkipped {
                job,
                reason,
                open_task,
            } => match (reason, open_task) {
                (SkipReason::BufferFull, _) => format!(
                    "job {job} runs one task at a time and already has one queued; the request was recorded as skipped"
                ),
                (_, Some(open)) => format!(
                    "job {job} runs one task at a time and task {open} is still open; the request was recorded as skipped"
                ),
                (_, None) => format!(
                    "job {job} runs one task at a time; the request was recorded as skipped"
                ),
            },
            Error::TaskOpen { task, state } => format!(
                "task {task} is still {state}; only a finished task can be retried (cancel it first)"
            ),
            Error::TaskNotClaimed { task, state } => format!(
                "task {task} is {state} and no node holds a claim on it; there is nothing to release"
            ),
            Error::JobHasOpenTasks { job } => format!(
                "job {job} has pending or processing tasks; cancel them first or delete with ?cancel_open_tasks=true"
            ),
            // Server faults stay opaque to the client; the cause goes to the log.
            Error::Unavailable(_) => "the database is unavailable; try again shortly".into(),
            Error::Internal(_) => "an internal error occurred; it has been logged".into(),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, kind, title) = self.parts();
        match &self {
            Error::Internal(cause) => tracing::error!(error = %cause, "request failed"),
            Error::Unavailable(cause) => {
                tracing::warn!(error = %cause, "request failed: database unavailable")
            }
            _ => {}
        }
        let (state, task) = match &self {
            Error::TaskTerminal { state, task } => (Some(*state), Some(task.as_ref())),
            Error::TaskOpen { state, .. } | Error::TaskNotClaimed { state, .. } => {
                (Some(*state), None)
            }
            _ => (None, None),
        };
        let errors = match &self {
            Error::Validation(errors) => errors.errors(),
            _ => &[],
        };
        let problem = Problem {
            kind,
            title,
            status: status.as_u16(),
            detail: self.detail(),
            errors,
            state,
            task,
        };
        let mut response = (status, axum::Json(problem)).into_response();
        let challenge = match &self {
            Error::Unauthenticated(pacer_auth::AuthError::Missing) => {
                Some(r#"Bearer realm="pacer""#.to_owned())
            }
            Error::Unauthenticated(e) => Some(format!(
                r#"Bearer realm="pacer", error="invalid_token", error_description="{}""#,
                e.to_string().replace('"', "'")
            )),
            Error::Forbidden(_) => {
                Some(r#"Bearer realm="pacer", error="insufficient_scope""#.to_owned())
            }
            _ => None,
        };
        if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        if let Error::RateLimited { retry_after } = &self {
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

impl From<pacer_store::Error> for Error {
    fn from(error: pacer_store::Error) -> Self {
        match error {
            unavailable @ (pacer_store::Error::Unavailable(_) | pacer_store::Error::Stopped) => {
                Error::Unavailable(unavailable)
            }
            // What slipped past validation but the database refuses as data is still the
            // client's input, and nothing was written.
            pacer_store::Error::InvalidData(message) => Error::field("body", message),
            other => Error::Internal(Box::new(other)),
        }
    }
}

/// Maps the store's "not found" to a `404` naming `what` and `id`, and any other store error as
/// usual: `.map_err(missing("task", id))`.
pub(crate) fn missing(
    what: &'static str,
    id: impl std::fmt::Display,
) -> impl FnOnce(pacer_store::Error) -> Error {
    let id = id.to_string();
    move |error| match error {
        pacer_store::Error::NotFound(_) => Error::NotFound { what, id },
        other => other.into(),
    }
}

pub(crate) async fn route_not_found() -> Error {
    Error::RouteNotFound
}

pub(crate) async fn method_not_allowed() -> Error {
    Error::MethodNotAllowed
}
