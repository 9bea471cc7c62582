//! Triggers under `/api/v1/jobs/{name}/triggers`: create, list, get, replace, delete, pause,
//! resume, and a preview of the next fire times.

use axum::Json as JsonResponse;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use pacer_domain::{TriggerInput, TriggerSpec};
use pacer_store::{Job, Trigger};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::audit;
use crate::auth::Actor;
use crate::error::Problem;
use crate::extract::{Json, Path, Query};
use crate::jobs::{JobPath, existing_name, not_found};
use crate::pagination::{ListQuery, Listing, NoFilter, PageParams};
use crate::views::{Page, PreviewView, TriggerView};
use crate::{AppState, Error, Result};

pub(crate) fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_trigger))
        .routes(routes!(replace_trigger, delete_trigger))
}

pub(crate) fn operator_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_triggers))
        .routes(routes!(get_trigger))
        .routes(routes!(pause_trigger))
        .routes(routes!(resume_trigger))
        .routes(routes!(preview_trigger))
}

/// The `{name}` and `{id}` path parameters of one trigger.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct TriggerPath {
    /// The job's name.
    #[param(
        example = "master-data-sync",
        pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
    )]
    #[allow(dead_code)]
    name: String,
    /// The trigger's id.
    #[allow(dead_code)]
    id: Uuid,
}

async fn job(state: &AppState, raw_name: &str) -> Result<Job> {
    let name = existing_name(raw_name)?;
    state.store.get_job(&name).await.map_err(not_found(&name))
}

fn trigger_id(raw: &str) -> Result<Uuid> {
    raw.parse()
        .map_err(|_| Error::field("id", format!("`{raw}` is not a trigger id (a UUID)")))
}

fn trigger_not_found(id: Uuid) -> impl FnOnce(pacer_store::Error) -> Error {
    crate::error::missing("trigger", id)
}

/// Validates a definition and finds its first fire time from now (database clock). A trigger
/// that would never fire is refused; a `once` in the past is due at once (its misfire policy
/// decides what it becomes).
async fn parse(
    state: &AppState,
    input: TriggerInput,
) -> Result<(TriggerSpec, Option<DateTime<Utc>>)> {
    let spec = TriggerSpec::try_from(input).map_err(Error::Validation)?;
    let now = state.store.now().await?;
    let first = spec.first_fire(now).map_err(Error::Validation)?;
    Ok((spec, Some(first)))
}

/// Add a trigger to a job
///
/// `kind` says which fields the trigger needs: `expression` (and `timezone`) for `cron`,
/// `every` for `interval`, `at` for `once`. Answers `201` with the trigger and its first fire
/// time.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{name}/triggers",
    tag = "triggers",
    params(JobPath),
    request_body = TriggerInput,
    responses(
        (status = 201, description = "The trigger was created.", body = TriggerView,
            headers(("Location" = String, description = "The trigger's URL."))),
        (status = 404, description = "No such job.", body = Problem),
    )
)]
async fn create_trigger(
    State(state): State<AppState>,
    actor: Actor,
    Path(raw_name): Path<String>,
    Json(input): Json<TriggerInput>,
) -> Result<Response> {
    let job = job(&state, &raw_name).await?;
    let (spec, next_fire_at) = parse(&state, input).await?;
    let trigger = state
        .store
        .create_trigger(&job, &spec, next_fire_at)
        .await
        .map_err(|e| match e {
            pacer_store::Error::Conflict { .. } => Error::NotFound {
                what: "job",
                id: raw_name.clone(),
            },
            other => other.into(),
        })?;
    let location = format!("/api/v1/jobs/{}/triggers/{}", job.name, trigger.id);
    let view = TriggerView::from(trigger);
    let target = format!(
        "trigger:{}/{}",
        job.name,
        location.rsplit('/').next().unwrap_or_default()
    );
    audit::record(
        &state,
        &actor,
        "create_trigger",
        target,
        None,
        serde_json::to_value(&view).ok(),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        JsonResponse(view),
    )
        .into_response())
}

/// A job's triggers page on their id, in id order.
struct TriggerList;

impl Listing for TriggerList {
    type Key = Uuid;
    const TAG: &'static str = "tr.";
    const DEFAULT_LIMIT: i64 = 100;
}

/// List a job's triggers
///
/// The job's triggers in id order, a page at a time: pass `next_cursor` back as `cursor` for the
/// next page.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{name}/triggers",
    tag = "triggers",
    params(JobPath, PageParams<TriggerList>),
    responses(
        (status = 200, description = "A page of the job's triggers.", body = Page<TriggerView>),
        (status = 404, description = "No such job.", body = Problem),
    )
)]
async fn list_triggers(
    State(state): State<AppState>,
    Path(raw_name): Path<String>,
    ListQuery { page, .. }: ListQuery<NoFilter, TriggerList>,
) -> Result<JsonResponse<Page<TriggerView>>> {
    let page = page.checked()?;
    let job = job(&state, &raw_name).await?;
    let triggers = state
        .store
        .list_triggers_page(&job, page.after, page.fetch())
        .await?;
    Ok(JsonResponse(page.page(
        triggers,
        |t| t.id,
        TriggerView::from,
    )))
}

/// Get a trigger
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{name}/triggers/{id}",
    tag = "triggers",
    params(TriggerPath),
    responses(
        (status = 200, description = "The trigger.", body = TriggerView),
        (status = 404, description = "No such job or trigger.", body = Problem),
    )
)]
async fn get_trigger(
    State(state): State<AppState>,
    Path((raw_name, raw_id)): Path<(String, String)>,
) -> Result<JsonResponse<TriggerView>> {
    let job = job(&state, &raw_name).await?;
    let id = trigger_id(&raw_id)?;
    let trigger = state
        .store
        .get_trigger(&job, id)
        .await
        .map_err(trigger_not_found(id))?;
    Ok(JsonResponse(trigger.into()))
}

fn summary(trigger: Trigger) -> Option<Value> {
    serde_json::to_value(TriggerView::from(trigger)).ok()
}

/// Replace a trigger
///
/// Replaces the trigger's definition; its next fire time is computed again from now.
#[utoipa::path(
    put,
    path = "/api/v1/jobs/{name}/triggers/{id}",
    tag = "triggers",
    params(TriggerPath),
    request_body = TriggerInput,
    responses(
        (status = 200, description = "The trigger as replaced.", body = TriggerView),
        (status = 404, description = "No such job or trigger.", body = Problem),
    )
)]
async fn replace_trigger(
    State(state): State<AppState>,
    actor: Actor,
    Path((raw_name, raw_id)): Path<(String, String)>,
    Json(input): Json<TriggerInput>,
) -> Result<JsonResponse<TriggerView>> {
    let job = job(&state, &raw_name).await?;
    let id = trigger_id(&raw_id)?;
    let (spec, next_fire_at) = parse(&state, input).await?;
    let before = state
        .store
        .get_trigger(&job, id)
        .await
        .map_err(trigger_not_found(id))?;
    let trigger = state
        .store
        .replace_trigger(&job, id, &spec, next_fire_at)
        .await
        .map_err(trigger_not_found(id))?;
    let target = format!("trigger:{}/{id}", job.name);
    audit::record(
        &state,
        &actor,
        "replace_trigger",
        target,
        summary(before),
        summary(trigger.clone()),
    )
    .await;
    Ok(JsonResponse(trigger.into()))
}

/// Delete a trigger
///
/// The tasks it created stay.
#[utoipa::path(
    delete,
    path = "/api/v1/jobs/{name}/triggers/{id}",
    tag = "triggers",
    params(TriggerPath),
    responses(
        (status = 204, description = "The trigger was deleted."),
        (status = 404, description = "No such job or trigger.", body = Problem),
    )
)]
async fn delete_trigger(
    State(state): State<AppState>,
    actor: Actor,
    Path((raw_name, raw_id)): Path<(String, String)>,
) -> Result<StatusCode> {
    let job = job(&state, &raw_name).await?;
    let id = trigger_id(&raw_id)?;
    let before = state
        .store
        .get_trigger(&job, id)
        .await
        .map_err(trigger_not_found(id))?;
    state
        .store
        .delete_trigger(&job, id)
        .await
        .map_err(trigger_not_found(id))?;
    audit::record(
        &state,
        &actor,
        "delete_trigger",
        format!("trigger:{}/{id}", job.name),
        summary(before),
        None,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Pause a trigger
///
/// It stops firing; its occurrences while paused are not wanted and never fire.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{name}/triggers/{id}/pause",
    tag = "triggers",
    params(TriggerPath),
    responses(
        (status = 200, description = "The trigger, paused.", body = TriggerView),
        (status = 404, description = "No such job or trigger.", body = Problem),
    )
)]
async fn pause_trigger(
    State(state): State<AppState>,
    actor: Actor,
    Path((raw_name, raw_id)): Path<(String, String)>,
) -> Result<JsonResponse<TriggerView>> {
    set_paused(&state, &actor, &raw_name, &raw_id, true).await
}

/// Resume a trigger
///
/// It fires next from now; occurrences that fell while it was paused are not fired.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{name}/triggers/{id}/resume",
    tag = "triggers",
    params(TriggerPath),
    responses(
        (status = 200, description = "The trigger, resumed.", body = TriggerView),
        (status = 404, description = "No such job or trigger.", body = Problem),
    )
)]
async fn resume_trigger(
    State(state): State<AppState>,
    actor: Actor,
    Path((raw_name, raw_id)): Path<(String, String)>,
) -> Result<JsonResponse<TriggerView>> {
    set_paused(&state, &actor, &raw_name, &raw_id, false).await
}

async fn set_paused(
    state: &AppState,
    actor: &Actor,
    raw_name: &str,
    raw_id: &str,
    paused: bool,
) -> Result<JsonResponse<TriggerView>> {
    let job = job(state, raw_name).await?;
    let id = trigger_id(raw_id)?;
    let current: Trigger = state
        .store
        .get_trigger(&job, id)
        .await
        .map_err(trigger_not_found(id))?;
    let next = next_from_now(state, &current).await?;
    let trigger = state
        .store
        .set_trigger_paused(&job, id, paused, next)
        .await
        .map_err(trigger_not_found(id))?;
    if current.paused != trigger.paused {
        let action = if paused {
            "pause_trigger"
        } else {
            "resume_trigger"
        };
        let (before, after) = (
            json!({ "paused": current.paused }),
            json!({ "paused": trigger.paused }),
        );
        audit::record(
            state,
            actor,
            action,
            format!("trigger:{}/{id}", job.name),
            Some(before),
            Some(after),
        )
        .await;
    }
    Ok(JsonResponse(trigger.into()))
}

/// A trigger's next fire time counted from now, for resuming it.
pub(crate) async fn next_from_now(
    state: &AppState,
    trigger: &Trigger,
) -> Result<Option<DateTime<Utc>>> {
    let timetable = trigger
        .spec
        .timetable()
        .map_err(|e| Error::Internal(Box::new(e)))?;
    Ok(timetable.next_after(state.store.now().await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PreviewQuery {
    /// How many fire times.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100, default = 10)]
    count: Option<String>,
}

/// Preview a trigger's fire times
///
/// The next `count` fire times of the trigger, from now (database clock).
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{name}/triggers/{id}/preview",
    tag = "triggers",
    params(TriggerPath, PreviewQuery),
    responses(
        (status = 200, description = "The next fire times; fewer when the trigger ends sooner.", body = PreviewView),
        (status = 404, description = "No such job or trigger.", body = Problem),
    )
)]
async fn preview_trigger(
    State(state): State<AppState>,
    Path((raw_name, raw_id)): Path<(String, String)>,
    Query(query): Query<PreviewQuery>,
) -> Result<JsonResponse<PreviewView>> {
    let count = match query.count.as_deref() {
        None => 10,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                return Err(Error::field(
                    "count",
                    format!("must be a whole number from 1 to 100, got `{text}`"),
                ));
            }
        },
    };
    let job = job(&state, &raw_name).await?;
    let id = trigger_id(&raw_id)?;
    let trigger = state
        .store
        .get_trigger(&job, id)
        .await
        .map_err(trigger_not_found(id))?;
    let timetable = trigger
        .spec
        .timetable()
        .map_err(|e| Error::Internal(Box::new(e)))?;
    let now = state.store.now().await?;
    Ok(JsonResponse(PreviewView {
        trigger: id,
        fire_times: timetable.preview(now, count),
    }))
}
