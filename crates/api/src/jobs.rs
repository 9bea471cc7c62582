//! Job definitions: `PUT /api/v1/jobs/{name}` (create or replace), list, get, delete.

use axum::Json as JsonResponse;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use pacer_domain::{JobInput, JobName, JobSpec};
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit;
use crate::auth::Actor;
use crate::error::Problem;
use crate::extract::{Json, Path, Query};
use crate::pagination::{ListQuery, Listing, NameKey, NoFilter, PageParams};
use crate::views::{DeletedJobView, JobView, Page};
use crate::{AppState, Error, Result};

pub(crate) fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(put_job, delete_job))
}

pub(crate) fn operator_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(pause_job))
        .routes(routes!(resume_job))
}

/// The `{name}` path parameter of the job routes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct JobPath {
    /// The job's name: 1–64 letters, digits, `.`, `_` or `-`, starting with a letter or digit.
    #[param(
        example = "master-data-sync",
        pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
    )]
    #[allow(dead_code)]
    name: String,
}

/// A job name from the path; a name that cannot exist is simply not found.
pub(crate) fn existing_name(raw: &str) -> Result<JobName> {
    raw.parse().map_err(|_| Error::NotFound {
        what: "job",
        id: raw.to_owned(),
    })
}

pub(crate) fn not_found(name: &JobName) -> impl FnOnce(pacer_store::Error) -> Error {
    crate::error::missing("job", name)
}

/// The query of `PUT /api/v1/jobs/{name}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PutJob {
    /// Validate only: `204` when the definition would be accepted, the problem otherwise.
    #[serde(default)]
    #[param(default = false)]
    dry_run: bool,
}

/// Create or replace a job
///
/// Creates the job (`201`) or replaces its definition (`200`). Idempotent: the same definition
/// again changes nothing, not even the `version`. Only the target is required: `url` for an HTTP
/// target, `kind: "amqp"` with `exchange` and `routing_key` for a RabbitMQ one. With
/// `?dry_run=true` it only validates, including the checks against this cluster's configuration
/// (secrets, alert sinks, a RabbitMQ broker), and answers `204`, so `pacer apply` can vet every
/// job before writing any.
#[utoipa::path(
    put,
    path = "/api/v1/jobs/{name}",
    tag = "jobs",
    params(JobPath, PutJob),
    request_body = JobInput,
    responses(
        (status = 200, description = "The definition was replaced (or was already this one).", body = JobView,
            headers(("Location" = String, description = "The job's URL."))),
        (status = 201, description = "The job was created.", body = JobView,
            headers(("Location" = String, description = "The job's URL."))),
        (status = 204, description = "Dry run: the definition would be accepted; nothing was written."),
    )
)]
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
    if spec
        .targets()
        .any(|target| matches!(target, pacer_domain::Target::Amqp(_)))
        && state.consumer.borrow().state == pacer_domain::ConsumerState::Disabled
    {
        return Err(Error::field(
            "target.kind",
            "no RabbitMQ broker is configured on this cluster (see `amqp.url` in the configuration)",
        ));
    }
    if let Some((field, secret)) = spec.targets().find_map(|target| {
        let auth = target.auth();
        auth.secret()
            .filter(|secret| !state.secrets.contains(*secret))
            .map(|secret| (auth.secret_field(), secret))
    }) {
        return Err(Error::field(
            &format!("target.auth.{field}"),
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
    let groups = spec
        .concurrency_group
        .iter()
        .map(|group| ("concurrency_group".to_owned(), group))
        .chain(spec.steps.iter().enumerate().filter_map(|(i, step)| {
            let group = step.concurrency_group.as_ref()?;
            Some((format!("steps[{i}].concurrency_group"), group))
        }));
    for (field, group) in groups {
        match state.store.get_group(group).await {
            Ok(_) => {}
            Err(pacer_store::Error::NotFound(_)) => unknown.push(field, no_group(group)),
            Err(other) => return Err(other.into()),
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
    let put = match state.store.put_job(&name, &spec).await {
        // Deleted since the check above.
        Err(pacer_store::Error::Conflict { constraint })
            if constraint == "jobs_concurrency_group_fkey" =>
        {
            let group = spec.concurrency_group.as_ref().map(ToString::to_string);
            return Err(Error::field(
                "concurrency_group",
                no_group(group.unwrap_or_default()),
            ));
        }
        other => other?,
    };
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

/// Get a job
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{name}",
    tag = "jobs",
    params(JobPath),
    responses(
        (status = 200, description = "The job.", body = JobView),
        (status = 404, description = "No such job.", body = Problem),
    )
)]
async fn get_job(
    State(state): State<AppState>,
    Path(raw_name): Path<String>,
) -> Result<JsonResponse<JobView>> {
    let name = existing_name(&raw_name)?;
    let job = state.store.get_job(&name).await.map_err(not_found(&name))?;
    Ok(JsonResponse(job.into()))
}

/// Jobs page on their name, in name order.
struct JobList;

impl Listing for JobList {
    type Key = NameKey;
    const TAG: &'static str = "jb.";
}

/// List jobs
///
/// Jobs in name order, a page at a time: pass `next_cursor` back as `cursor` for the next page.
#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    tag = "jobs",
    params(PageParams<JobList>),
    responses((status = 200, description = "A page of jobs.", body = Page<JobView>))
)]
async fn list_jobs(
    State(state): State<AppState>,
    ListQuery { page, .. }: ListQuery<NoFilter, JobList>,
) -> Result<JsonResponse<Page<JobView>>> {
    let page = page.checked()?;
    let after = page.after.as_ref().map(|name| name.0.as_str());
    let jobs = state.store.list_jobs(after, page.fetch()).await?;
    Ok(JsonResponse(page.page(
        jobs,
        |j| NameKey(j.name.to_string()),
        JobView::from,
    )))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DeleteJob {
    /// Cancel the job's pending and processing tasks and delete it; without it, a job with open
    /// tasks is not deleted.
    #[serde(default)]
    cancel_open_tasks: bool,
}

/// Delete a job
///
/// Deletes a job; its finished tasks stay as history. A job with pending or processing tasks is
/// only deleted with `cancel_open_tasks=true`, which cancels them.
#[utoipa::path(
    delete,
    path = "/api/v1/jobs/{name}",
    tag = "jobs",
    params(JobPath, DeleteJob),
    responses(
        (status = 200, description = "The job was deleted.", body = DeletedJobView),
        (status = 404, description = "No such job.", body = Problem),
        (status = 409, description = "The job has open tasks (`/problems/job-has-open-tasks`).", body = Problem),
    )
)]
async fn delete_job(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_name): Path<String>,
    Query(query): Query<DeleteJob>,
) -> Result<JsonResponse<DeletedJobView>> {
    let name = existing_name(&raw_name)?;
    let before = state.store.get_job(&name).await.map_err(not_found(&name))?;
    let deleted = state
        .store
        .delete_job(&name, query.cancel_open_tasks)
        .await
        .map_err(|e| match e {
            pacer_store::Error::Conflict { constraint } if constraint == "jobs_open_tasks" => {
                Error::JobHasOpenTasks {
                    job: name.to_string(),
                }
            }
            other => not_found(&name)(other),
        })?;
    let summary = DeletedJobView {
        deleted: name.to_string(),
        cancelled_tasks: deleted.cancelled_tasks,
    };
    let before = serde_json::to_value(JobView::from(before)).ok();
    audit::record(
        &state,
        &actor,
        "delete_job",
        format!("job:{name}"),
        before,
        serde_json::to_value(&summary).ok(),
    )
    .await;
    Ok(JsonResponse(summary))
}

/// Pause a job
///
/// Its triggers stop firing and it takes no new tasks (`409 /problems/job-paused`); open tasks
/// carry on. Pausing a paused job changes nothing.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{name}/pause",
    tag = "jobs",
    params(JobPath),
    responses(
        (status = 200, description = "The job, paused.", body = JobView),
        (status = 404, description = "No such job.", body = Problem),
    )
)]
async fn pause_job(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_name): Path<String>,
) -> Result<JsonResponse<JobView>> {
    set_paused(&state, &actor, &raw_name, true).await
}

/// Resume a job
///
/// Its triggers fire next from now; occurrences that fell while it was paused are not fired.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{name}/resume",
    tag = "jobs",
    params(JobPath),
    responses(
        (status = 200, description = "The job, resumed.", body = JobView),
        (status = 404, description = "No such job.", body = Problem),
    )
)]
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

fn no_group(group: impl std::fmt::Display) -> String {
    format!(
        "no concurrency group named `{group}`: create it with PUT /api/v1/concurrency-groups/{group} first"
    )
}
