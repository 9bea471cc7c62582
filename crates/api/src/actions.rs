//! Operator actions on runs — run a job now, run every enabled job now, retry a task, retry a
//! job's failed tasks, force-release a dead claim, reset a job's fingerprint — and the job
//! summary. Every action that changes
//! something is audited; new tasks go through the job's overlap policy like any other.

use std::collections::BTreeMap;

use axum::Json as JsonResponse;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use pacer_domain::{SkipReason, TaskId, TaskState};
use pacer_store::{Job, JobFingerprint, NewTask, Origin, Released, TaskBrief};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::audit;
use crate::auth::Actor;
use crate::error::Problem;
use crate::extract::{JsonOrEmpty, MAX_LIMIT, Path, Query, limit, task_id};
use crate::jobs::{JobPath, existing_name, not_found};
use crate::tasks::{Started, TaskPath, start_task, task_not_found};
use crate::views::TaskView;
use crate::{AppState, Error, Result};

pub(crate) fn operator_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(run_job))
        .routes(routes!(retry_failed_tasks))
        .routes(routes!(get_job_summary))
        .routes(routes!(run_all_jobs))
        .routes(routes!(retry_task))
        .routes(routes!(release_task))
        .routes(routes!(reset_job_fingerprint))
}

/// What a manual run sends; every field is optional, and so is the body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RunJob, example = json!({ "payload": { "tables": ["centers"] } }))]
struct RunJobRequest {
    /// Merged over the job's payload, as for a task created by an upstream.
    payload: Option<Map<String, Value>>,
}

fn manual_task(job: &Job, actor: &Actor, payload: Option<&Map<String, Value>>) -> NewTask {
    NewTask {
        id: TaskId::new(),
        origin: Origin::Manual,
        idempotency_key: None,
        payload: job.spec.task_payload(payload),
        not_before: None,
        trace_context: crate::observe::current_traceparent(),
        actor: Some(actor.principal.subject.clone()),
        retry_of: None,
        notify: None,
    }
}

async fn job_by_name(state: &AppState, raw_name: &str) -> Result<Job> {
    let name = existing_name(raw_name)?;
    state.store.get_job(&name).await.map_err(not_found(&name))
}

/// `202` with the new task and its location.
async fn accepted(state: &AppState, id: TaskId, status: StatusCode) -> Result<Response> {
    let task = state.store.get_task(id).await?;
    Ok((
        status,
        [(header::LOCATION, format!("/api/v1/tasks/{id}"))],
        JsonResponse(TaskView::from(task)),
    )
        .into_response())
}

/// Run a job now
///
/// One task, origin `{kind: "manual", actor}`, under the job's overlap policy: `202` with the
/// new task (or the open one a `buffer_one` job hands back).
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{name}/run",
    tag = "jobs",
    params(JobPath),
    request_body(content = Option<RunJobRequest>, description = "Optional: an empty body runs the job with its own payload."),
    responses(
        (status = 202, description = "The task was created.", body = TaskView,
            headers(("Location" = String, description = "The task's URL."))),
        (status = 404, description = "No such job.", body = Problem),
        (status = 409, description = "The job is paused (`/problems/job-paused`), or its overlap policy skipped the run (`/problems/overlap-skipped`).", body = Problem),
    )
)]
async fn run_job(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_name): Path<String>,
    JsonOrEmpty(request): JsonOrEmpty<RunJobRequest>,
) -> Result<Response> {
    let job = job_by_name(&state, &raw_name).await?;
    if job.paused {
        return Err(Error::JobPaused {
            job: job.name.to_string(),
        });
    }
    let task = manual_task(&job, &actor, request.payload.as_ref());
    match start_task(&state, &job, task, "manual").await? {
        Started::Created { id, .. } | Started::Existing(id) => {
            audit::record(
                &state,
                &actor,
                "run_job",
                format!("job:{}", job.name),
                None,
                Some(json!({ "task": id })),
            )
            .await;
            accepted(&state, id, StatusCode::ACCEPTED).await
        }
        Started::Skipped { reason, open_task } => Err(Error::OverlapSkipped {
            job: job.name.to_string(),
            reason,
            open_task,
        }),
    }
}

/// A job a manual run started a task of.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = StartedRun)]
struct StartedRun {
    job: String,
    task: TaskId,
}

/// A run the job's overlap policy refused.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = RefusedRun)]
struct SkippedRun {
    job: String,
    reason: SkipReason,
    /// The open task that made the policy refuse.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    open_task: Option<TaskId>,
}

/// What running every job did.
#[derive(Debug, Default, Serialize, ToSchema)]
#[schema(as = RunAll, example = json!({
    "started": [ { "job": "master-data-sync", "task": "0193a5c4-7f2e-7c1a-9d3e-2b1f4a6c8e01" } ],
    "skipped": [ { "job": "nightly-export", "reason": "overlap_skip",
                   "open_task": "0193a5c4-8a3f-7d2b-8e4f-3c2a5b7d9f12" } ],
    "paused": ["legacy-import"]
}))]
struct RunAllSummary {
    started: Vec<StartedRun>,
    /// Refused by the job's overlap policy (recorded as skips).
    skipped: Vec<SkippedRun>,
    /// Paused jobs, not run.
    paused: Vec<String>,
}

/// Run every job now
///
/// Every enabled (not paused) job gets one task, origin `{kind: "manual", actor}`, under its
/// overlap policy; the answer says what was started, skipped and left alone.
#[utoipa::path(
    post,
    path = "/api/v1/scheduler/run-all",
    tag = "cluster",
    responses((status = 200, description = "What was started, skipped and left paused.", body = RunAllSummary))
)]
async fn run_all_jobs(State(state): State<AppState>, actor: Actor) -> Result<Response> {
    let mut summary = RunAllSummary::default();
    let outcome = run_all(&state, &actor, &mut summary).await;
    // What was started stays started, so it is audited even when a later job failed.
    audit::record(
        &state,
        &actor,
        "run_all_jobs",
        "scheduler".to_owned(),
        None,
        Some(json!({
            "started": summary.started.len(),
            "skipped": summary.skipped.len(),
            "paused": summary.paused.len(),
            "completed": outcome.is_ok(),
        })),
    )
    .await;
    outcome?;
    Ok((StatusCode::OK, JsonResponse(summary)).into_response())
}

/// Starts a task of every job that is not paused, noting each in `summary`; stops at the first
/// error other than a job deleted meanwhile.
async fn run_all(state: &AppState, actor: &Actor, summary: &mut RunAllSummary) -> Result<()> {
    let mut after: Option<String> = None;
    loop {
        let jobs = state.store.list_jobs(after.as_deref(), MAX_LIMIT).await?;
        let full = i64::try_from(jobs.len()).unwrap_or(i64::MAX) == MAX_LIMIT;
        after = jobs.last().map(|j| j.name.to_string());
        for job in jobs {
            if job.paused {
                summary.paused.push(job.name.to_string());
                continue;
            }
            let task = manual_task(&job, actor, None);
            match start_task(state, &job, task, "manual").await {
                Ok(Started::Created { id, .. } | Started::Existing(id)) => {
                    summary.started.push(StartedRun {
                        job: job.name.to_string(),
                        task: id,
                    });
                }
                Ok(Started::Skipped { reason, open_task }) => summary.skipped.push(SkippedRun {
                    job: job.name.to_string(),
                    reason,
                    open_task,
                }),
                // Deleted meanwhile: nothing to run.
                Err(Error::NotFound { .. }) => {}
                Err(other) => return Err(other),
            }
        }
        if !full {
            return Ok(());
        }
    }
}

/// The idempotency key of the retry of `task`: retrying the same task twice finds the first
/// retry instead of starting a second one.
fn retry_key(task: TaskId) -> String {
    format!("retry:{task}")
}

fn retry_task_of(actor: &Actor, source: TaskId, payload: Value) -> NewTask {
    NewTask {
        id: TaskId::new(),
        origin: Origin::Retry,
        idempotency_key: Some(retry_key(source)),
        payload,
        not_before: None,
        trace_context: crate::observe::current_traceparent(),
        actor: Some(actor.principal.subject.clone()),
        retry_of: Some(source),
        notify: None,
    }
}

/// What to retry of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum RetryOnly {
    /// Only the children that failed or were cancelled (for a `for_each` step, only the failed
    /// items), and every step after the first one that reruns a child.
    Failed,
}

/// The body of a retry, optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RetryRequest {
    /// For a run of a job made of steps: `failed` reruns only what failed, reusing the results
    /// of the children that completed. Without it, the whole run (any task) runs again.
    only: Option<RetryOnly>,
}

/// The query of a retry.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct RetryQuery {
    /// Say what the retry would run again, and create nothing: `200` with the plan.
    #[serde(default)]
    #[param(default = false)]
    dry_run: bool,
}

/// What a retry would run again (`?dry_run=true`); nothing was created.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = RetryPlan, example = json!({
    "task": "0193a5c4-7f2e-7c1a-9d3e-2b1f4a6c8e01", "dry_run": true, "only": "failed",
    "steps": [ { "name": "list", "reused": 1, "rerun": 0, "children": [] },
               { "name": "ingest", "reused": 993, "rerun": 7, "children": ["p-0", "p-143"] },
               { "name": "report", "reused": 0, "rerun": null, "children": [] } ]
}))]
struct RetryPlanView {
    /// The task that would be retried.
    task: TaskId,
    /// Always true: nothing was created.
    dry_run: bool,
    /// `failed` when only the errors would run again, `all` when everything would.
    only: &'static str,
    /// For a run of a job made of steps, each step of the job as it is now: how many children
    /// it would reuse, how many it would run again and which. Empty for a single task, which
    /// runs again whole.
    steps: Vec<RetryPlanStep>,
}

/// One step of a retry plan.
#[derive(Debug, Serialize, ToSchema)]
struct RetryPlanStep {
    name: String,
    /// Children that completed in the retried run: reused, not dispatched again.
    reused: u64,
    /// Children that would run again; `null` when the step runs in full (every child, a
    /// `for_each` step's as many as its list will hold).
    rerun: Option<u64>,
    /// The first 100 children that would run again, by name (a `for_each` item's key).
    children: Vec<String>,
}

/// The `200` answer of a retry: the existing retry, or the plan of a dry run.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
enum RetryAnswer {
    Existing(Box<TaskView>),
    Plan(RetryPlanView),
}

/// Retry a task
///
/// A finished task gets a new task with the same payload, origin `{kind: "retry", task_id}`:
/// `202` with the new task, or `200` with the existing retry when this task was retried already.
/// A run of a job made of steps may retry only its errors (`{"only": "failed"}`). With
/// `?dry_run=true` nothing is created: `200` says what would run again, step by step.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/{id}/retry",
    tag = "tasks",
    params(TaskPath, RetryQuery),
    request_body(content = Option<RetryRequest>, content_type = "application/json"),
    responses(
        (status = 202, description = "The retry was created.", body = TaskView,
            headers(("Location" = String, description = "The new task's URL."))),
        (status = 200, description = "The task had been retried already: the existing retry (with a `Location`); or, with `?dry_run=true`, what a retry would run again.", body = RetryAnswer),
        (status = 404, description = "No such task, or its job was deleted.", body = Problem),
        (status = 409, description = "The task is still open (`/problems/task-open`), its job is paused (`/problems/job-paused`), or the overlap policy skipped the retry (`/problems/overlap-skipped`).", body = Problem),
    )
)]
async fn retry_task(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_id): Path<String>,
    Query(query): Query<RetryQuery>,
    JsonOrEmpty(request): JsonOrEmpty<RetryRequest>,
) -> Result<Response> {
    let id = task_id(&raw_id)?;
    let task = state.store.get_task(id).await.map_err(task_not_found(id))?;
    if let Some(run) = state.store.run_of(id).await? {
        return Err(Error::field(
            "id",
            format!(
                "a child of a run is retried with its run: POST /api/v1/tasks/{run}/retry with {{\"only\": \"failed\"}}"
            ),
        ));
    }
    let only_errors = request.only == Some(RetryOnly::Failed);
    if only_errors && state.store.run_view(id).await?.is_none() {
        return Err(Error::field(
            "only",
            "only the run of a job made of steps can retry just its failed children",
        ));
    }
    if !task.state.is_terminal() {
        return Err(Error::TaskOpen {
            task: id,
            state: task.state,
        });
    }
    let job = job_by_name(&state, &task.job_name).await?;
    if query.dry_run {
        let steps = if only_errors {
            state.store.retry_errors_plan(id, &job.spec.steps).await?
        } else {
            job.spec
                .steps
                .iter()
                .map(|step| pacer_store::RetryStep {
                    name: step.name.clone(),
                    reused: 0,
                    rerun: None,
                    children: Vec::new(),
                })
                .collect()
        };
        let plan = RetryPlanView {
            task: id,
            dry_run: true,
            only: if only_errors { "failed" } else { "all" },
            steps: steps
                .into_iter()
                .map(|s| RetryPlanStep {
                    name: s.name,
                    reused: s.reused,
                    rerun: s.rerun,
                    children: s.children,
                })
                .collect(),
        };
        return Ok((StatusCode::OK, JsonResponse(RetryAnswer::Plan(plan))).into_response());
    }
    if job.paused {
        return Err(Error::JobPaused {
            job: job.name.to_string(),
        });
    }
    let mut new = retry_task_of(&actor, id, task.payload);
    // Whoever asked to hear about the task hears about its retry too.
    new.notify = state.store.task_notify(id).await?;
    if only_errors {
        // The key tells the run, when it starts, to reuse what the retried run completed.
        new.idempotency_key = Some(pacer_store::retry_errors_key(id));
    }
    match start_task(&state, &job, new, "retry").await? {
        Started::Created { id: retry, .. } => {
            audit::record(
                &state,
                &actor,
                "retry_task",
                format!("task:{id}"),
                Some(json!({ "state": task.state })),
                Some(json!({ "retry": retry })),
            )
            .await;
            accepted(&state, retry, StatusCode::ACCEPTED).await
        }
        Started::Existing(retry) => {
            let task = state.store.get_task(retry).await?;
            Ok((
                StatusCode::OK,
                [(header::LOCATION, format!("/api/v1/tasks/{retry}"))],
                JsonResponse(RetryAnswer::Existing(Box::new(TaskView::from(task)))),
            )
                .into_response())
        }
        Started::Skipped { reason, open_task } => Err(Error::OverlapSkipped {
            job: job.name.to_string(),
            reason,
            open_task,
        }),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct RetryFailedQuery {
    /// Most tasks to retry.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500, default = 100)]
    limit: Option<String>,
}

/// A failed task and its retry.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = RetriedTask)]
struct RetriedTask {
    task: TaskId,
    retry: TaskId,
}

/// What retrying a job's failed tasks did.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = RetryFailed, example = json!({
    "retried": [ { "task": "0193a5c4-7f2e-7c1a-9d3e-2b1f4a6c8e01",
                   "retry": "0193a5d9-0a1b-7c2d-8e3f-4a5b6c7d8e9f" } ],
    "more": false
}))]
struct RetryFailedSummary {
    retried: Vec<RetriedTask>,
    /// Set when the overlap policy refused a retry; the remaining failed tasks were left alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    stopped: Option<SkippedRun>,
    /// More failed tasks are waiting for a retry (past `limit`, or after a refusal).
    more: bool,
}

/// Retry a job's failed tasks
///
/// Retries every `failed` task of a job that has not been retried yet, oldest first, up to
/// `limit` (default 100, at most 500). Each retry is a new task linked to the one it retries;
/// the job's overlap policy applies to each, and the first refusal stops the pass. A run of a
/// job made of steps retries only its errors (as `{"only": "failed"}` on the run's retry).
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{name}/retry-failed",
    tag = "jobs",
    params(JobPath, RetryFailedQuery),
    responses(
        (status = 200, description = "The retries made, and whether failed tasks remain.", body = RetryFailedSummary),
        (status = 404, description = "No such job.", body = Problem),
        (status = 409, description = "The job is paused (`/problems/job-paused`).", body = Problem),
    )
)]
async fn retry_failed_tasks(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_name): Path<String>,
    Query(query): Query<RetryFailedQuery>,
) -> Result<Response> {
    let limit = limit(query.limit.as_deref(), 100)?;
    let job = job_by_name(&state, &raw_name).await?;
    if job.paused {
        return Err(Error::JobPaused {
            job: job.name.to_string(),
        });
    }
    // One more than asked for, to say whether more remain.
    let mut candidates = state.store.failed_without_retry(&job, limit + 1).await?;
    let mut more = i64::try_from(candidates.len()).unwrap_or(i64::MAX) > limit;
    candidates.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let mut summary = RetryFailedSummary {
        retried: Vec::new(),
        stopped: None,
        more: false,
    };
    for candidate in candidates {
        let mut new = retry_task_of(&actor, candidate.id, candidate.payload);
        new.notify = state.store.task_notify(candidate.id).await?;
        if !job.spec.steps.is_empty() {
            // A run retries only its errors, as `POST /api/v1/tasks/{run}/retry` with
            // `{"only": "failed"}` does.
            new.idempotency_key = Some(pacer_store::retry_errors_key(candidate.id));
        }
        match start_task(&state, &job, new, "retry").await? {
            Started::Created { id: retry, .. } | Started::Existing(retry) => {
                summary.retried.push(RetriedTask {
                    task: candidate.id,
                    retry,
                });
            }
            Started::Skipped { reason, open_task } => {
                summary.stopped = Some(SkippedRun {
                    job: job.name.to_string(),
                    reason,
                    open_task,
                });
                more = true;
                break;
            }
        }
    }
    summary.more = more;
    if !summary.retried.is_empty() {
        let retried: Vec<Value> = summary
            .retried
            .iter()
            .map(|r| json!({ "task": r.task, "retry": r.retry }))
            .collect();
        audit::record(
            &state,
            &actor,
            "retry_failed_tasks",
            format!("job:{}", job.name),
            None,
            Some(json!({ "retried": retried })),
        )
        .await;
    }
    Ok((StatusCode::OK, JsonResponse(summary)).into_response())
}

/// Release a task's claim
///
/// Force-releases the claim on a task, for a node an operator knows is dead or hung: the
/// dispatch in flight is recorded as abandoned and the task is due again at once.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/{id}/release",
    tag = "tasks",
    params(TaskPath),
    responses(
        (status = 200, description = "The task, released.", body = TaskView),
        (status = 404, description = "No such task.", body = Problem),
        (status = 409, description = "No node holds a claim on the task (`/problems/task-not-claimed`).", body = Problem),
    )
)]
async fn release_task(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_id): Path<String>,
) -> Result<JsonResponse<TaskView>> {
    let id = task_id(&raw_id)?;
    match state
        .store
        .release_task(id)
        .await
        .map_err(task_not_found(id))?
    {
        Released::Released { node, attempt } => {
            audit::record(
                &state,
                &actor,
                "release_task",
                format!("task:{id}"),
                Some(json!({ "claimed_by": node, "attempt": attempt })),
                Some(json!({ "claimed_by": null })),
            )
            .await;
            Ok(JsonResponse(TaskView::from(
                state.store.get_task(id).await?,
            )))
        }
        Released::NotClaimed(task_state) => Err(Error::TaskNotClaimed {
            task: id,
            state: task_state,
        }),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SummaryQuery {
    /// How many of the latest finished tasks the statistics cover.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 500, default = 100)]
    window: Option<String>,
}

/// One task in a job summary.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TaskBrief)]
struct BriefView {
    task: TaskId,
    state: TaskState,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    /// Start to finish, once finished.
    duration_ms: Option<i64>,
}

impl From<TaskBrief> for BriefView {
    fn from(b: TaskBrief) -> Self {
        let duration_ms = match (b.started_at, b.finished_at) {
            (Some(start), Some(end)) => Some((end - start).num_milliseconds()),
            _ => None,
        };
        Self {
            task: b.id,
            state: b.state,
            created_at: b.created_at,
            started_at: b.started_at,
            finished_at: b.finished_at,
            duration_ms,
        }
    }
}

/// How a job is doing.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = JobSummary, example = json!({
    "job": "master-data-sync", "paused": false,
    "last_run": { "task": "0193a5c4-7f2e-7c1a-9d3e-2b1f4a6c8e01", "state": "completed",
                  "created_at": "2026-11-24T09:00:00Z", "started_at": "2026-11-24T09:00:00.020Z",
                  "finished_at": "2026-11-24T09:02:10Z", "duration_ms": 129980 },
    "last_success": { "task": "0193a5c4-7f2e-7c1a-9d3e-2b1f4a6c8e01", "state": "completed",
                      "created_at": "2026-11-24T09:00:00Z", "started_at": "2026-11-24T09:00:00.020Z",
                      "finished_at": "2026-11-24T09:02:10Z", "duration_ms": 129980 },
    "recent": { "window": 100, "finished": 100, "completed": 97, "completed_with_errors": 1,
                "failed": 2, "cancelled": 0, "success_rate": 0.97, "p50_ms": 118000.0, "p95_ms": 240500.0 },
    "open": { "pending": 3, "processing": 1, "oldest_pending_at": "2026-11-24T09:14:30Z" },
    "unchanged": { "recent": 12, "last_at": "2026-11-24T08:45:02Z",
                   "fingerprint": { "fingerprint": "sha256:9f86d081884c7d65", "task": "0193a5c4-7f2e-7c1a-9d3e-2b1f4a6c8e01",
                                    "updated_at": "2026-11-24T09:02:10Z" } },
    "open_alerts": { "total": 1, "by_kind": { "overdue": 1 } },
    "next_fire_times": [ { "at": "2026-11-24T09:15:00Z", "trigger": "0193a5c0-1b2c-7d3e-8f40-5a6b7c8d9e0f" } ]
}))]
struct JobSummary {
    job: String,
    paused: bool,
    /// The latest task, finished or not.
    last_run: Option<BriefView>,
    /// The latest task that ended `completed`.
    last_success: Option<BriefView>,
    recent: RecentStats,
    open: OpenCounts,
    /// Skip if unchanged: how often the job's input was found unchanged, and the fingerprint its
    /// next task compares with.
    unchanged: UnchangedStats,
    open_alerts: OpenAlerts,
    /// The next (at most 5) fire times of its unpaused triggers; none while the job is paused.
    next_fire_times: Vec<NextFire>,
}

/// Statistics over the job's latest `window` finished tasks.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = JobSummaryRecent)]
struct RecentStats {
    window: i64,
    finished: i64,
    completed: i64,
    completed_with_errors: i64,
    failed: i64,
    cancelled: i64,
    /// `completed` over the finished tasks that were not cancelled; null when there are none.
    success_rate: Option<f64>,
    /// Median duration, start to finish, in milliseconds.
    p50_ms: Option<f64>,
    /// 95th percentile duration, start to finish, in milliseconds.
    p95_ms: Option<f64>,
}

/// How often a job's input was unchanged (`skip_if_unchanged`).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = JobSummaryUnchanged)]
struct UnchangedStats {
    /// Of the latest `window` finished tasks, those that completed with outcome `unchanged`.
    recent: i64,
    /// When the job's latest task with outcome `unchanged` finished.
    last_at: Option<DateTime<Utc>>,
    /// The fingerprint of the job's last completed run, which the next one is compared with;
    /// null when there is none (never reported, or reset).
    fingerprint: Option<FingerprintView>,
}

/// The fingerprint of a job's last completed run.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = JobFingerprint)]
struct FingerprintView {
    fingerprint: String,
    /// The task (or run) whose completion stored it.
    task: Option<TaskId>,
    updated_at: DateTime<Utc>,
}

impl From<JobFingerprint> for FingerprintView {
    fn from(f: JobFingerprint) -> Self {
        Self {
            fingerprint: f.fingerprint,
            task: f.task,
            updated_at: f.updated_at,
        }
    }
}

/// What resetting a job's fingerprint did.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = FingerprintReset, example = json!({
    "job": "timetable-import",
    "previous": { "fingerprint": "sha256:9f86d081884c7d65", "task": "0193a5c4-7f2e-7c1a-9d3e-2b1f4a6c8e01",
                  "updated_at": "2026-11-24T09:02:10Z" }
}))]
struct FingerprintReset {
    job: String,
    /// The fingerprint forgotten; null when the job had none.
    previous: Option<FingerprintView>,
}

/// Reset a job's fingerprint
///
/// Forgets the fingerprint of the job's last completed run (`skip_if_unchanged`), so that its
/// next task is dispatched with `last_fingerprint: null` and does its work whatever its input.
/// Resetting a job without a fingerprint changes nothing.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{name}/fingerprint/reset",
    tag = "jobs",
    params(JobPath),
    responses(
        (status = 200, description = "The fingerprint is forgotten.", body = FingerprintReset),
        (status = 404, description = "No such job.", body = Problem),
    )
)]
async fn reset_job_fingerprint(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_name): Path<String>,
) -> Result<JsonResponse<FingerprintReset>> {
    let job = job_by_name(&state, &raw_name).await?;
    let previous = state.store.reset_fingerprint(&job).await?;
    if let Some(previous) = &previous {
        audit::record(
            &state,
            &actor,
            "reset_fingerprint",
            format!("job:{}", job.name),
            Some(json!({ "fingerprint": previous.fingerprint, "task": previous.task })),
            Some(json!({ "fingerprint": null })),
        )
        .await;
    }
    Ok(JsonResponse(FingerprintReset {
        job: job.name.to_string(),
        previous: previous.map(FingerprintView::from),
    }))
}

/// The job's open tasks.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = JobSummaryOpen)]
struct OpenCounts {
    pending: i64,
    processing: i64,
    /// When the longest-waiting pending task that is due fell due (its due time: its schedule
    /// or `not_before`, not a retry's backoff); null when no pending task is due.
    oldest_pending_at: Option<DateTime<Utc>>,
}

/// The job's open (or acknowledged) alerts.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = JobSummaryAlerts)]
struct OpenAlerts {
    total: i64,
    /// Counts by alert kind.
    #[schema(value_type = BTreeMap<String, i64>)]
    by_kind: BTreeMap<String, i64>,
}

/// A coming fire time and its trigger.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = JobSummaryFire)]
struct NextFire {
    at: DateTime<Utc>,
    trigger: Uuid,
}

/// Show a job's summary
///
/// How a job is doing: its latest run and success, the success rate and p50/p95 duration over
/// its last `window` finished tasks (default 100, at most 500), its open tasks, its open alerts
/// and its next fire times.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{name}/summary",
    tag = "jobs",
    params(JobPath, SummaryQuery),
    responses(
        (status = 200, description = "The job's summary.", body = JobSummary),
        (status = 404, description = "No such job.", body = Problem),
    )
)]
async fn get_job_summary(
    State(state): State<AppState>,
    Path(raw_name): Path<String>,
    Query(query): Query<SummaryQuery>,
) -> Result<JsonResponse<JobSummary>> {
    let window = limit(query.window.as_deref(), 100).map_err(|_| {
        Error::field(
            "window",
            format!("must be a whole number from 1 to {MAX_LIMIT}"),
        )
    })?;
    let job = job_by_name(&state, &raw_name).await?;
    let stats = state.store.job_stats(&job, window).await?;
    let open_alerts = state.store.open_job_alerts(job.name.as_str()).await?;
    let mut next_fire: Vec<(DateTime<Utc>, Uuid)> = Vec::new();
    if !job.paused {
        for trigger in state.store.list_triggers(&job).await? {
            let (Some(next), false) = (trigger.next_fire_at, trigger.paused) else {
                continue;
            };
            next_fire.push((next, trigger.id));
            if let Ok(timetable) = trigger.spec.timetable() {
                next_fire.extend(
                    timetable
                        .preview(next, 4)
                        .into_iter()
                        .map(|at| (at, trigger.id)),
                );
            }
        }
    }
    next_fire.sort();
    next_fire.truncate(5);
    // Cancelled tasks say nothing about whether the job works.
    let judged = stats.finished - stats.cancelled;
    #[allow(clippy::cast_precision_loss)]
    let success_rate = (judged > 0).then(|| stats.completed as f64 / judged as f64);
    Ok(JsonResponse(JobSummary {
        job: job.name.to_string(),
        paused: job.paused,
        last_run: stats.last_run.map(BriefView::from),
        last_success: stats.last_success.map(BriefView::from),
        recent: RecentStats {
            window,
            finished: stats.finished,
            completed: stats.completed,
            completed_with_errors: stats.completed_with_errors,
            failed: stats.failed,
            cancelled: stats.cancelled,
            success_rate,
            p50_ms: stats.p50_ms,
            p95_ms: stats.p95_ms,
        },
        open: OpenCounts {
            pending: stats.pending,
            processing: stats.processing,
            oldest_pending_at: stats.oldest_pending_at,
        },
        unchanged: UnchangedStats {
            recent: stats.unchanged,
            last_at: stats.last_unchanged_at,
            fingerprint: stats.fingerprint.map(FingerprintView::from),
        },
        open_alerts: OpenAlerts {
            total: open_alerts.iter().map(|(_, n)| n).sum::<i64>(),
            by_kind: open_alerts.into_iter().collect(),
        },
        next_fire_times: next_fire
            .into_iter()
            .map(|(at, trigger)| NextFire { at, trigger })
            .collect(),
    }))
}
