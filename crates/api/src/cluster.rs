//! The cluster view, scheduler standby, and the history of skipped runs.

use axum::Json as JsonResponse;
use axum::extract::State;
use pacer_domain::SkipReason;
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::audit;
use crate::auth::Actor;
use crate::pagination::{ListQuery, Listing, PageParams};
use crate::views::{
    AmqpView, ClusterView, LeaderView, NodeView, Page, SchedulerView, SkipView, TableSizeView,
};
use crate::{AppState, Result};

pub(crate) fn operator_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_cluster))
        .routes(routes!(get_scheduler))
        .routes(routes!(pause_scheduler))
        .routes(routes!(resume_scheduler))
        .routes(routes!(list_skips))
}

/// Show the cluster
///
/// The leader (null while no node holds a valid lease), the current term, every known node,
/// alive first, and the size of the tables that grow.
#[utoipa::path(
    get,
    path = "/api/v1/cluster",
    tag = "cluster",
    responses((status = 200, description = "The cluster.", body = ClusterView))
)]
async fn get_cluster(State(state): State<AppState>) -> Result<JsonResponse<ClusterView>> {
    let lease = state.store.lease().await?;
    let nodes: Vec<NodeView> = state
        .store
        .nodes(state.dead_after.as_millis())
        .await?
        .into_iter()
        .map(NodeView::from)
        .collect();
    let leader = lease.valid.then(|| LeaderView {
        node: lease.holder.clone(),
        term: lease.term,
        since: lease.acquired_at,
        lease_expires_at: lease.expires_at,
    });
    // The RabbitMQ consumer of the node answering; each node reports its own in `/readyz`.
    let amqp = AmqpView {
        node: state.node_id.to_string(),
        consumer: state.consumer.borrow().clone(),
    };
    let tables = state
        .store
        .table_sizes()
        .await?
        .into_iter()
        .map(TableSizeView::from)
        .collect();
    Ok(JsonResponse(ClusterView {
        leader,
        term: lease.term,
        nodes,
        amqp,
        tables,
    }))
}

/// Show the scheduler
///
/// Whether the scheduler is in standby (`paused`).
#[utoipa::path(
    get,
    path = "/api/v1/scheduler",
    tag = "cluster",
    responses((status = 200, description = "The scheduler.", body = SchedulerView))
)]
async fn get_scheduler(State(state): State<AppState>) -> Result<JsonResponse<SchedulerView>> {
    let paused = state.store.scheduler_paused().await?;
    Ok(JsonResponse(SchedulerView { paused }))
}

/// Put the scheduler in standby
///
/// No trigger fires until it is resumed; tasks already created carry on.
#[utoipa::path(
    post,
    path = "/api/v1/scheduler/pause",
    tag = "cluster",
    responses((status = 200, description = "The scheduler, paused.", body = SchedulerView))
)]
async fn pause_scheduler(
    State(state): State<AppState>,
    actor: Actor,
) -> Result<JsonResponse<SchedulerView>> {
    set_standby(&state, &actor, true).await
}

/// Take the scheduler out of standby
///
/// Occurrences missed meanwhile follow each trigger's misfire policy.
#[utoipa::path(
    post,
    path = "/api/v1/scheduler/resume",
    tag = "cluster",
    responses((status = 200, description = "The scheduler, running.", body = SchedulerView))
)]
async fn resume_scheduler(
    State(state): State<AppState>,
    actor: Actor,
) -> Result<JsonResponse<SchedulerView>> {
    set_standby(&state, &actor, false).await
}

async fn set_standby(
    state: &AppState,
    actor: &Actor,
    paused: bool,
) -> Result<JsonResponse<SchedulerView>> {
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
    Ok(JsonResponse(SchedulerView { paused }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListSkips {
    /// Only the skips of this job.
    job: Option<String>,
    /// Only the skips of this trigger.
    #[param(value_type = Option<Uuid>)]
    trigger: Option<String>,
    /// Only the skips for this reason.
    #[param(value_type = Option<SkipReason>)]
    reason: Option<String>,
}

/// Skips page on their id, newest first.
struct SkipList;

impl Listing for SkipList {
    type Key = Uuid;
    const TAG: &'static str = "sk.";
}

/// List skipped runs
///
/// Runs that got no task (under the misfire or the overlap policy, or excluded by a calendar),
/// newest first, with their reason; `reason` keeps those of one reason.
#[utoipa::path(
    get,
    path = "/api/v1/skips",
    tag = "cluster",
    params(ListSkips, PageParams<SkipList>),
    responses((status = 200, description = "A page of skipped runs.", body = Page<SkipView>))
)]
async fn list_skips(
    State(state): State<AppState>,
    ListQuery {
        filter: query,
        page,
    }: ListQuery<ListSkips, SkipList>,
) -> Result<JsonResponse<Page<SkipView>>> {
    let mut errors = pacer_domain::ValidationErrors::new();
    let trigger = match query.trigger.as_deref().map(str::parse::<Uuid>) {
        Some(Err(_)) => {
            errors.push(
                "trigger",
                format!(
                    "`{}` is not a UUID",
                    query.trigger.as_deref().unwrap_or_default()
                ),
            );
            None
        }
        other => other.and_then(Result::ok),
    };
    let reason = match query.reason.as_deref().map(str::parse::<SkipReason>) {
        Some(Err(unknown)) => {
            errors.push("reason", unknown.to_string());
            None
        }
        other => other.and_then(Result::ok),
    };
    let page = page.check(errors)?;
    let skips = state
        .store
        .list_skipped_runs(
            query.job.as_deref(),
            trigger,
            reason.map(SkipReason::as_str),
            page.after,
            page.fetch(),
        )
        .await?;
    Ok(JsonResponse(page.page(skips, |s| s.id, SkipView::from)))
}
