//! Concurrency groups under `/api/v1/concurrency-groups`: a limit the tasks of every job naming
//! the group share (1 is mutual exclusion across jobs), with who holds its slots and how many
//! tasks wait for one.

use axum::Json as JsonResponse;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use pacer_domain::concurrency::InvalidGroupName;
use pacer_domain::{GroupInput, GroupName, GroupSpec, TaskId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit;
use crate::auth::Actor;
use crate::calendars::from_object;
use crate::error::Problem;
use crate::extract::{Json, Path};
use crate::{AppState, Error, Result};

pub(crate) fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(put_group, delete_group))
}

pub(crate) fn operator_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_groups))
        .routes(routes!(get_group))
}

/// The `{name}` path parameter of a concurrency group.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct GroupPath {
    /// The group's name.
    #[param(
        example = "registration-client",
        pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
    )]
    #[allow(dead_code)]
    name: String,
}

/// A task holding one of a limit's slots.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct SlotHolderView {
    task_id: TaskId,
    job: String,
    state: String,
}

impl From<pacer_store::SlotHolder> for SlotHolderView {
    fn from(h: pacer_store::SlotHolder) -> Self {
        Self {
            task_id: h.task_id.into(),
            job: h.job_name,
            state: h.state,
        }
    }
}

/// A concurrency group, as returned.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ConcurrencyGroup, example = json!({
    "name": "registration-client", "limit": 1, "jobs": ["masterdata-sync", "packet-upload"],
    "holders": [ { "task_id": "0193a5c4-5e1f-7c3a-9d2b-6f1e2d3c4b5a", "job": "masterdata-sync", "state": "processing" } ],
    "waiting": 1, "created_at": "2026-12-01T09:00:00Z", "updated_at": "2026-12-01T09:00:00Z"
}))]
pub(crate) struct GroupView {
    name: String,
    limit: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    description: Option<String>,
    /// The jobs that name the group.
    jobs: Vec<String>,
    /// The tasks holding its slots now.
    holders: Vec<SlotHolderView>,
    /// Tasks due and waiting for one of its slots.
    waiting: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<pacer_store::Group> for GroupView {
    fn from(g: pacer_store::Group) -> Self {
        Self {
            name: g.name,
            limit: g.spec.limit,
            description: g.spec.description,
            jobs: g.jobs,
            holders: g.holders.into_iter().map(Into::into).collect(),
            waiting: g.waiting,
            created_at: g.created_at,
            updated_at: g.updated_at,
        }
    }
}

/// Every concurrency group.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupList {
    items: Vec<GroupView>,
}

/// Why a task waits: the slots of its group, or of its job, are all held.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct WaitingForView {
    /// The concurrency group whose slot it waits for.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    group: Option<String>,
    /// The group's limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    limit: Option<u32>,
    /// The job's own `max_concurrency`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    max_concurrency: Option<u32>,
    /// The tasks holding the slots it waits for (its group's, or else its job's).
    holders: Vec<SlotHolderView>,
}

impl From<pacer_store::WaitingFor> for WaitingForView {
    fn from(w: pacer_store::WaitingFor) -> Self {
        Self {
            group: w.group,
            limit: w.group_limit,
            max_concurrency: w.max_concurrency,
            holders: w.holders.into_iter().map(Into::into).collect(),
        }
    }
}

fn name(raw: &str) -> Result<GroupName> {
    raw.parse()
        .map_err(|e: InvalidGroupName| Error::field("name", e.to_string()))
}

fn not_found(name: &str) -> impl FnOnce(pacer_store::Error) -> Error {
    crate::error::missing("concurrency group", name)
}

/// Create or replace a concurrency group
///
/// Creates the group (`201`) or replaces it (`200`). At most `limit` tasks of all the jobs that
/// name the group (`concurrency_group`) hold a slot at once, cluster-wide: from their first
/// dispatch until they end. A raised limit admits waiting tasks at once; a lowered one lets the
/// tasks holding slots finish and admits no more until they are under it.
#[utoipa::path(
    put,
    path = "/api/v1/concurrency-groups/{name}",
    tag = "concurrency",
    params(GroupPath),
    request_body = GroupInput,
    responses(
        (status = 200, description = "The group was replaced.", body = GroupView,
            headers(("Location" = String, description = "The group's URL."))),
        (status = 201, description = "The group was created.", body = GroupView,
            headers(("Location" = String, description = "The group's URL."))),
    )
)]
async fn put_group(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_name): Path<String>,
    Json(body): Json<serde_json::Map<String, serde_json::Value>>,
) -> Result<Response> {
    let input: GroupInput = from_object(body)?;
    let name = name(&raw_name)?;
    let spec = GroupSpec::try_from(input).map_err(Error::Validation)?;
    let before = match state.store.get_group(&name).await {
        Ok(group) => Some(group),
        Err(pacer_store::Error::NotFound(_)) => None,
        Err(other) => return Err(other.into()),
    };
    let created = state.store.put_group(&name, &spec).await?;
    let view = GroupView::from(state.store.get_group(&name).await?);
    if before.as_ref().is_none_or(|b| b.spec != spec) {
        audit::record(
            &state,
            &actor,
            "put_concurrency_group",
            format!("concurrency_group:{name}"),
            before.and_then(|b| serde_json::to_value(b.spec).ok()),
            serde_json::to_value(&spec).ok(),
        )
        .await;
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        [(
            header::LOCATION,
            format!("/api/v1/concurrency-groups/{name}"),
        )],
        JsonResponse(view),
    )
        .into_response())
}

/// Get a concurrency group
///
/// Its limit, the jobs that name it, the tasks holding its slots and how many wait for one.
#[utoipa::path(
    get,
    path = "/api/v1/concurrency-groups/{name}",
    tag = "concurrency",
    params(GroupPath),
    responses(
        (status = 200, description = "The group.", body = GroupView),
        (status = 404, description = "No such group.", body = Problem),
    )
)]
async fn get_group(
    State(state): State<AppState>,
    Path(raw_name): Path<String>,
) -> Result<JsonResponse<GroupView>> {
    let name = name(&raw_name)?;
    let group = state
        .store
        .get_group(&name)
        .await
        .map_err(not_found(name.as_str()))?;
    Ok(JsonResponse(group.into()))
}

/// List concurrency groups
///
/// Every group in name order, each with its limit, holders and waiting count.
#[utoipa::path(
    get,
    path = "/api/v1/concurrency-groups",
    tag = "concurrency",
    responses((status = 200, description = "Every group.", body = GroupList))
)]
async fn list_groups(State(state): State<AppState>) -> Result<JsonResponse<GroupList>> {
    let groups = state.store.list_groups().await?;
    Ok(JsonResponse(GroupList {
        items: groups.into_iter().map(Into::into).collect(),
    }))
}

/// Delete a concurrency group
///
/// Refused with `409` while a job names it: change those jobs first.
#[utoipa::path(
    delete,
    path = "/api/v1/concurrency-groups/{name}",
    tag = "concurrency",
    params(GroupPath),
    responses(
        (status = 204, description = "The group was deleted."),
        (status = 404, description = "No such group.", body = Problem),
        (status = 409, description = "Jobs name it; nothing was deleted.", body = Problem),
    )
)]
async fn delete_group(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_name): Path<String>,
) -> Result<StatusCode> {
    let name = name(&raw_name)?;
    let before = state
        .store
        .get_group(&name)
        .await
        .map_err(not_found(name.as_str()))?;
    match state.store.delete_group(&name).await {
        Ok(()) => {}
        Err(pacer_store::Error::Conflict { .. }) => {
            let jobs = state.store.get_group(&name).await.map(|g| g.jobs);
            return Err(Error::GroupInUse {
                group: name.to_string(),
                jobs: jobs.unwrap_or(before.jobs).join(", "),
            });
        }
        Err(other) => return Err(not_found(name.as_str())(other)),
    }
    audit::record(
        &state,
        &actor,
        "delete_concurrency_group",
        format!("concurrency_group:{name}"),
        serde_json::to_value(before.spec).ok(),
        None,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
