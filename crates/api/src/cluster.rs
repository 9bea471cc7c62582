//! The cluster view, scheduler standby, and the history of skipped runs.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json as JsonResponse, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::audit;
use crate::auth::Actor;
use crate::extract::{Query, limit};
use crate::views::{NodeView, Page, SkipView};
use crate::{AppState, Error, Result};

pub(crate) fn operator_routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/cluster", get(get_cluster))
        .route("/api/v1/scheduler", get(get_scheduler))
        .route("/api/v1/scheduler/pause", post(pause_scheduler))
        .route("/api/v1/scheduler/resume", post(resume_scheduler))
        .route("/api/v1/skips", get(list_skips))
}

/// The leader and every known node, alive first.
async fn get_cluster(State(state): State<AppState>) -> Result<JsonResponse<Value>> {
    let lease = state.store.lease().await?;
    let nodes: Vec<NodeView> = state
        .store
        .nodes(state.dead_after.as_millis())
        .await?
        .into_iter()
        .map(NodeView::from)
        .collect();
    let leader = lease.valid.then(|| {
        json!({
            "node": lease.holder,
            "term": lease.term,
            "since": lease.acquired_at,
            "lease_expires_at": lease.expires_at,
        })
    });
    // The RabbitMQ consumer of the node answering; each node reports its own in `/readyz`.
    let amqp = json!({ "node": &*state.node_id, "consumer": state.consumer.borrow().clone() });
    Ok(JsonResponse(
        json!({ "leader": leader, "term": lease.term, "nodes": nodes, "amqp": amqp }),
    ))
}

async fn get_scheduler(State(state): State<AppState>) -> Result<JsonResponse<Value>> {
    let paused = state.store.scheduler_paused().await?;
    Ok(JsonResponse(json!({ "paused": paused })))
}

/// Standby: no trigger fires until resumed; tasks already created carry on.
async fn pause_scheduler(
    State(state): State<AppState>,
    actor: Actor,
) -> Result<JsonResponse<Value>> {
    set_standby(&state, &actor, true).await
}

/// Leaves standby; occurrences missed meanwhile follow each trigger's misfire policy.
async fn resume_scheduler(
    State(state): State<AppState>,
    actor: Actor,
) -> Result<JsonResponse<Value>> {
    set_standby(&state, &actor, false).await
}

async fn set_standby(state: &AppState, actor: &Actor, paused: bool) -> Result<JsonResponse<Value>> {
    let was = state.store.scheduler_paused().await?;
    state.store.set_scheduler_paused(paused).await?;
    if was != paused {
        let action = if paused {
            "pause_scheduler"
        } else {
            "resume_scheduler"
        };
        let (before, after) = (json!({ "paused": was }), json!({ "paused": paused }));
        audit::record(
            state,
            actor,
            action,
            "scheduler".into(),
            Some(before),
            Some(after),
        )
        .await;
    }
    Ok(JsonResponse(json!({ "paused": paused })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListSkips {
    job: Option<String>,
    trigger: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// Runs that got no task (misfire or overlap policy), newest first.
async fn list_skips(
    State(state): State<AppState>,
    Query(query): Query<ListSkips>,
) -> Result<JsonResponse<Page<SkipView>>> {
    let limit = limit(query.limit.as_deref(), 50)?;
    let parse = |field: &str, raw: Option<&str>| -> Result<Option<Uuid>> {
        raw.map(|text| {
            text.parse()
                .map_err(|_| Error::field(field, format!("`{text}` is not a UUID")))
        })
        .transpose()
    };
    let trigger = parse("trigger", query.trigger.as_deref())?;
    let before = parse("cursor", query.cursor.as_deref())?;
    let skips = state
        .store
        .list_skipped_runs(query.job.as_deref(), trigger, before, limit)
        .await?;
    let full = i64::try_from(skips.len()).unwrap_or(i64::MAX) == limit;
    let next_cursor = full
        .then(|| skips.last().map(|s| s.id.to_string()))
        .flatten();
    Ok(JsonResponse(Page {
        items: skips.into_iter().map(SkipView::from).collect(),
        next_cursor,
    }))
}
