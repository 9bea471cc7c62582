//! Triggers under `/api/v1/jobs/{name}/triggers`: create, list, get, replace, delete, pause,
//! resume, and a preview of the next fire times.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json as JsonResponse, Router};
use chrono::{DateTime, Utc};
use pacer_domain::{TriggerInput, TriggerSpec};
use pacer_store::{Job, Trigger};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::audit;
use crate::auth::Actor;
use crate::extract::{Json, Query};
use crate::jobs::{existing_name, not_found};
use crate::views::TriggerView;
use crate::{AppState, Error, Result};

pub(crate) fn admin_routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/jobs/{name}/triggers", post(create_trigger))
        .route(
            "/api/v1/jobs/{name}/triggers/{id}",
            axum::routing::put(replace_trigger).delete(delete_trigger),
        )
}

pub(crate) fn operator_routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/jobs/{name}/triggers", get(list_triggers))
        .route("/api/v1/jobs/{name}/triggers/{id}", get(get_trigger))
        .route(
            "/api/v1/jobs/{name}/triggers/{id}/pause",
            post(pause_trigger),
        )
        .route(
            "/api/v1/jobs/{name}/triggers/{id}/resume",
            post(resume_trigger),
        )
        .route(
            "/api/v1/jobs/{name}/triggers/{id}/preview",
            get(preview_trigger),
        )
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
    move |error| match error {
        pacer_store::Error::NotFound(_) => Error::NotFound {
            what: "trigger",
            id: id.to_string(),
        },
        other => other.into(),
    }
}

/// Validates a definition and finds its first fire time after now (database clock).
async fn parse(
    state: &AppState,
    input: TriggerInput,
) -> Result<(TriggerSpec, Option<DateTime<Utc>>)> {
    let spec = TriggerSpec::try_from(input).map_err(Error::Validation)?;
    let timetable = spec
        .timetable()
        .map_err(|e| Error::field("expression", e.to_string()))?;
    let now = state.store.now().await?;
    Ok((spec, timetable.next_after(now)))
}

/// Adds a trigger to a job: `201` with the trigger and its first fire time.
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

async fn list_triggers(
    State(state): State<AppState>,
    Path(raw_name): Path<String>,
) -> Result<JsonResponse<Value>> {
    let job = job(&state, &raw_name).await?;
    let triggers: Vec<TriggerView> = state
        .store
        .list_triggers(&job)
        .await?
        .into_iter()
        .map(TriggerView::from)
        .collect();
    Ok(JsonResponse(
        json!({ "items": triggers, "next_cursor": null }),
    ))
}

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

/// Replaces a trigger's definition; its next fire time is recomputed from now.
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

async fn pause_trigger(
    State(state): State<AppState>,
    actor: Actor,
    Path((raw_name, raw_id)): Path<(String, String)>,
) -> Result<JsonResponse<TriggerView>> {
    set_paused(&state, &actor, &raw_name, &raw_id, true).await
}

/// Resumes a trigger; occurrences that fell while it was paused are not fired.
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewQuery {
    count: Option<String>,
}

/// The next `count` (1–100, default 10) fire times of a trigger, from now.
async fn preview_trigger(
    State(state): State<AppState>,
    Path((raw_name, raw_id)): Path<(String, String)>,
    Query(query): Query<PreviewQuery>,
) -> Result<JsonResponse<Value>> {
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
    Ok(JsonResponse(
        json!({ "trigger": id, "fire_times": timetable.preview(now, count) }),
    ))
}
