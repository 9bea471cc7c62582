//! Operator actions on runs — run a job now, run every enabled job now, retry a task, retry a
//! job's failed tasks, force-release a dead claim — and the job summary. Every action that changes
//! something is audited; new tasks go through the job's overlap policy like any other.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json as JsonResponse, Router};
use chrono::{DateTime, Utc};
use pacer_domain::{SkipReason, TaskId};
use pacer_store::{Job, NewTask, Origin, Released, TaskBrief};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::audit;
use crate::auth::Actor;
use crate::extract::{JsonOrEmpty, MAX_LIMIT, Query, limit, task_id};
use crate::jobs::{existing_name, not_found};
use crate::tasks::{Started, start_task, task_not_found};
use crate::views::TaskView;
use crate::{AppState, Error, Result};

pub(crate) fn operator_routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/jobs/{name}/run", post(run_job))
        .route("/api/v1/jobs/{name}/retry-failed", post(retry_failed_tasks))
        .route("/api/v1/jobs/{name}/summary", get(get_job_summary))
        .route("/api/v1/scheduler/run-all", post(run_all_jobs))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
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

/// Runs a job now: one task, origin `{kind: "manual", actor}`, under the job's overlap policy.
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
        Started::Created(id) | Started::Existing(id) => {
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

#[derive(Debug, Serialize)]
struct StartedRun {
    job: String,
    task: TaskId,
}

#[derive(Debug, Serialize)]
struct SkippedRun {
    job: String,
    reason: SkipReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    open_task: Option<TaskId>,
}

#[derive(Debug, Default, Serialize)]
struct RunAllSummary {
    started: Vec<StartedRun>,
    /// Refused by the job's overlap policy (recorded as skips).
    skipped: Vec<SkippedRun>,
    /// Paused jobs, not run.
    paused: Vec<String>,
}

/// Runs every enabled (not paused) job now: one task each, and a summary of what happened.
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
                Ok(Started::Created(id) | Started::Existing(id)) => {
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
    }
}

/// Retries a finished task: a new task with the same payload, origin `{kind: "retry", task_id}`.
/// `202` with the new task; `200` with the existing retry when this task was retried already.
pub(crate) async fn retry_task(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_id): Path<String>,
) -> Result<Response> {
    let id = task_id(&raw_id)?;
    let task = state.store.get_task(id).await.map_err(task_not_found(id))?;
    if !task.state.is_terminal() {
        return Err(Error::TaskOpen {
            task: id,
            state: task.state,
        });
    }
    let job = job_by_name(&state, &task.job_name).await?;
    if job.paused {
        return Err(Error::JobPaused {
            job: job.name.to_string(),
        });
    }
    let new = retry_task_of(&actor, id, task.payload);
    match start_task(&state, &job, new, "retry").await? {
        Started::Created(retry) => {
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
        Started::Existing(retry) => accepted(&state, retry, StatusCode::OK).await,
        Started::Skipped { reason, open_task } => Err(Error::OverlapSkipped {
            job: job.name.to_string(),
            reason,
            open_task,
        }),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryFailedQuery {
    limit: Option<String>,
}

#[derive(Debug, Serialize)]
struct RetriedTask {
    task: TaskId,
    retry: TaskId,
}

#[derive(Debug, Serialize)]
struct RetryFailedSummary {
    retried: Vec<RetriedTask>,
    /// Set when the overlap policy refused a retry; the remaining failed tasks were left alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped: Option<SkippedRun>,
    /// More failed tasks are waiting for a retry (past `limit`, or after a refusal).
    more: bool,
}

/// "Retry errors": retries every `failed` task of a job that has not been retried yet, oldest
/// first, up to `limit` (default 100, at most 500). Each retry is a new task linked to the one it
/// retries; the job's overlap policy applies to each, and the first refusal stops the pass.
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
        let new = retry_task_of(&actor, candidate.id, candidate.payload);
        match start_task(&state, &job, new, "retry").await? {
            Started::Created(retry) | Started::Existing(retry) => {
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

/// Force-releases the claim on a task, for a node an operator knows is dead or hung: the
/// dispatch in flight is recorded as abandoned and the task is due again at once.
pub(crate) async fn release_task(
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SummaryQuery {
    window: Option<String>,
}

#[derive(Debug, Serialize)]
struct BriefView {
    task: TaskId,
    state: pacer_domain::TaskState,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
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

/// How a job is doing: its latest run and success, the success rate and p50/p95 duration over
/// its last `window` finished tasks (default 100, at most 500), its open tasks and its next fire
/// times.
async fn get_job_summary(
    State(state): State<AppState>,
    Path(raw_name): Path<String>,
    Query(query): Query<SummaryQuery>,
) -> Result<JsonResponse<Value>> {
    let window = limit(query.window.as_deref(), 100).map_err(|_| {
        Error::field(
            "window",
            format!("must be a whole number from 1 to {MAX_LIMIT}"),
        )
    })?;
    let job = job_by_name(&state, &raw_name).await?;
    let stats = state.store.job_stats(&job, window).await?;
    let open_alerts = state.store.open_job_alerts(job.name.as_str()).await?;
    let mut next_fire: Vec<(DateTime<Utc>, uuid::Uuid)> = Vec::new();
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
    Ok(JsonResponse(json!({
        "job": job.name,
        "paused": job.paused,
        "last_run": stats.last_run.map(BriefView::from),
        "last_success": stats.last_success.map(BriefView::from),
        "recent": {
            "window": window,
            "finished": stats.finished,
            "completed": stats.completed,
            "completed_with_errors": stats.completed_with_errors,
            "failed": stats.failed,
            "cancelled": stats.cancelled,
            "success_rate": success_rate,
            "p50_ms": stats.p50_ms,
            "p95_ms": stats.p95_ms,
        },
        "open": { "pending": stats.pending, "processing": stats.processing },
        "open_alerts": {
            "total": open_alerts.iter().map(|(_, n)| n).sum::<i64>(),
            "by_kind": open_alerts.into_iter().map(|(kind, n)| (kind, Value::from(n))).collect::<serde_json::Map<String, Value>>(),
        },
        "next_fire_times": next_fire
            .into_iter()
            .map(|(at, trigger)| json!({ "at": at, "trigger": trigger }))
            .collect::<Vec<_>>(),
    })))
}
