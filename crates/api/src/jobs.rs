//! Job definitions: `PUT /api/v1/jobs/{name}` (create or replace), list, get, delete.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json as JsonResponse, Router};
use pacer_domain::{JobInput, JobName, JobSpec};
use serde::Deserialize;
use serde_json::json;

use crate::audit;
use crate::auth::Actor;
use crate::extract::{Json, Query, limit};
use crate::views::{JobView, Page};
use crate::{AppState, Error, Result};

pub(crate) fn admin_routes() -> Router<AppState> {
    Router::new().route(
        "/api/v1/jobs/{name}",
        axum::routing::put(put_job).delete(delete_job),
    )
}

pub(crate) fn operator_routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/jobs", get(list_jobs))
        .route("/api/v1/jobs/{name}", get(get_job))
        .route("/api/v1/jobs/{name}/pause", axum::routing::post(pause_job))
        .route(
            "/api/v1/jobs/{name}/resume",
            axum::routing::post(resume_job),
        )
}

/// A job name from the path; a name that cannot exist is simply not found.
pub(crate) fn existing_name(raw: &str) -> Result<JobName> {
    raw.parse().map_err(|_| Error::NotFound {
        what: "job",
        id: raw.to_owned(),
    })
}

pub(crate) fn not_found(name: &JobName) -> impl FnOnce(pacer_store::Error) -> Error + '_ {
    move |error| match error {
        pacer_store::Error::NotFound(_) => Error::NotFound {
            what: "job",
            id: name.to_string(),
        },
        other => other.into(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutJob {
    /// Validate only: `204` when the definition would be accepted, the problem otherwise.
    #[serde(default)]
    dry_run: bool,
}

/// Creates the job (201) or replaces its definition (200). Idempotent: the same definition
/// again changes nothing. With `?dry_run=true` it only validates, including the checks against
/// this cluster's configuration, so `pacer apply` can vet every job before writing any.
async fn put_job(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_name): Path<String>,
    Query(query): Query<PutJob>,
    Json(input): Json<JobInput>,
) -> Result<Response> {
    let name: JobName = raw_name
        .parse()
        .map_err(|e: pacer_domain::job::InvalidJobName| Error::field("name", e.to_string()))?;
    let spec = JobSpec::try_from(input).map_err(Error::Validation)?;
    if matches!(spec.target, pacer_domain::Target::Amqp(_))
        && state.consumer.borrow().state == pacer_domain::ConsumerState::Disabled
    {
        return Err(Error::field(
            "target.kind",
            "no RabbitMQ broker is configured on this cluster (see `amqp.url` in the configuration)",
        ));
    }
    if let Some(secret) = spec.target.auth().secret()
        && !state.secrets.contains(secret)
    {
        return Err(Error::field(
            "target.auth.secret",
            format!(
                "no secret named `{secret}` is configured on this cluster (see `secrets` in the configuration)"
            ),
        ));
    }
    // Routes name sinks of this cluster's configuration; a typo would silence an alert.
    let mut unknown = pacer_domain::ValidationErrors::new();
    for (field, sink) in spec.alerts.sink_names() {
        if !state.alert_sinks.contains(sink) {
            unknown.push(
                field,
                format!("no alert sink named `{sink}` is configured on this cluster (see `alerts.sinks`)"),
            );
        }
    }
    unknown.into_result(()).map_err(Error::Validation)?;
    let before = match state.store.get_job(&name).await {
        Ok(job) => Some(job),
        Err(pacer_store::Error::NotFound(_)) => None,
        Err(other) => return Err(other.into()),
    };
    // Every check is above this line, so a dry run answers what a real one would.
    if query.dry_run {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let put = state.store.put_job(&name, &spec).await?;
    if before.as_ref().is_none_or(|b| b.version != put.job.version) {
        let summary =
            |job: &pacer_store::Job| serde_json::to_value(JobView::from(job.clone())).ok();
        let after = summary(&put.job);
        audit::record(
            &state,
            &actor,
            "put_job",
            format!("job:{name}"),
            before.as_ref().and_then(summary),
            after,
        )
        .await;
    }
    let status = if put.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let location = format!("/api/v1/jobs/{name}");
    Ok((
        status,
        [(header::LOCATION, location)],
        JsonResponse(JobView::from(put.job)),
    )
        .into_response())
}

async fn get_job(
    State(state): State<AppState>,
    Path(raw_name): Path<String>,
) -> Result<JsonResponse<JobView>> {
    let name = existing_name(&raw_name)?;
    let job = state.store.get_job(&name).await.map_err(not_found(&name))?;
    Ok(JsonResponse(job.into()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListJobs {
    limit: Option<String>,
    cursor: Option<String>,
}

/// Jobs in name order; `cursor` is the last name of the previous page.
async fn list_jobs(
    State(state): State<AppState>,
    Query(query): Query<ListJobs>,
) -> Result<JsonResponse<Page<JobView>>> {
    let limit = limit(query.limit.as_deref(), 50)?;
    let jobs = state
        .store
        .list_jobs(query.cursor.as_deref(), limit)
        .await?;
    let full = i64::try_from(jobs.len()).unwrap_or(i64::MAX) == limit;
    let next_cursor = full
        .then(|| jobs.last().map(|j| j.name.to_string()))
        .flatten();
    Ok(JsonResponse(Page {
        items: jobs.into_iter().map(JobView::from).collect(),
        next_cursor,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteJob {
    #[serde(default)]
    cancel_open_tasks: bool,
}

/// Deletes a job. Its history stays; open tasks are refused (409) unless `cancel_open_tasks`.
async fn delete_job(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_name): Path<String>,
    Query(query): Query<DeleteJob>,
) -> Result<JsonResponse<serde_json::Value>> {
    let name = existing_name(&raw_name)?;
    let before = state.store.get_job(&name).await.map_err(not_found(&name))?;
    let deleted = state
        .store
        .delete_job(&name, query.cancel_open_tasks)
        .await
        .map_err(|e| match e {
            pacer_store::Error::Conflict { .. } => Error::JobHasOpenTasks {
                job: name.to_string(),
            },
            other => not_found(&name)(other),
        })?;
    let summary = serde_json::json!({
        "deleted": name.as_str(),
        "cancelled_tasks": deleted.cancelled_tasks,
    });
    let before = serde_json::to_value(JobView::from(before)).ok();
    audit::record(
        &state,
        &actor,
        "delete_job",
        format!("job:{name}"),
        before,
        Some(summary.clone()),
    )
    .await;
    Ok(JsonResponse(summary))
}

/// Pauses a job: its triggers stop firing and it takes no new tasks; open tasks carry on.
async fn pause_job(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_name): Path<String>,
) -> Result<JsonResponse<JobView>> {
    set_paused(&state, &actor, &raw_name, true).await
}

/// Resumes a job; its triggers fire next from now (occurrences while paused are not fired).
async fn resume_job(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_name): Path<String>,
) -> Result<JsonResponse<JobView>> {
    set_paused(&state, &actor, &raw_name, false).await
}

async fn set_paused(
    state: &AppState,
    actor: &Actor,
    raw_name: &str,
    paused: bool,
) -> Result<JsonResponse<JobView>> {
    let name = existing_name(raw_name)?;
    let job = state.store.get_job(&name).await.map_err(not_found(&name))?;
    let mut next_fire = Vec::new();
    if !paused {
        for trigger in state.store.list_triggers(&job).await? {
            next_fire.push((
                trigger.id,
                crate::triggers::next_from_now(state, &trigger).await?,
            ));
        }
    }
    state
        .store
        .set_job_paused(&job, paused, &next_fire)
        .await
        .map_err(not_found(&name))?;
    let updated = state.store.get_job(&name).await.map_err(not_found(&name))?;
    if updated.paused != job.paused {
        let action = if paused { "pause_job" } else { "resume_job" };
        let (before, after) = (
            json!({ "paused": job.paused }),
            json!({ "paused": updated.paused }),
        );
        audit::record(
            state,
            actor,
            action,
            format!("job:{name}"),
            Some(before),
            Some(after),
        )
        .await;
    }
    Ok(JsonResponse(updated.into()))
}
