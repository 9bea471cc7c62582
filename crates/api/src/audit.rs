//! The audit log: recording admin and operator changes, and reading them back (admin only).

use axum::Json as JsonResponse;
use axum::extract::State;
use chrono::{DateTime, Utc};
use pacer_store::{AuditEntry, NewAuditEntry};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Actor;
use crate::pagination::{ListQuery, Listing, PageParams};
use crate::views::Page;
use crate::{AppState, Result};

pub(crate) fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit))
}

/// Records a change made by `actor`. A change that committed but failed to be recorded is logged
/// loudly rather than turned into an error for a request that did succeed.
pub(crate) async fn record(
    state: &AppState,
    actor: &Actor,
    action: &str,
    target: String,
    before: Option<Value>,
    after: Option<Value>,
) {
    let entry = NewAuditEntry {
        actor: &actor.principal.subject,
        issuer: &actor.principal.issuer,
        action,
        target: target.clone(),
        request_id: actor.request_id.as_deref(),
        before,
        after,
    };
    if let Err(error) = state.store.record_audit(entry).await {
        tracing::error!(%error, action, target, actor = %actor.principal.subject, "could not record an audit entry");
    }
}

/// One change: who made it, what and on what, when, and the target before and after.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = AuditEntry, example = json!({
    "id": "0193a5d2-0c1d-7e2f-8a3b-4c5d6e7f8091", "at": "2026-11-24T09:05:00Z",
    "actor": "alice", "issuer": "pacer", "action": "pause_job", "target": "job:master-data-sync",
    "request_id": "0193a5d2-0c1d-7e2f-8a3b-4c5d6e7f8090",
    "before": { "paused": false }, "after": { "paused": true }
}))]
pub(crate) struct AuditView {
    id: Uuid,
    at: DateTime<Utc>,
    actor: String,
    issuer: String,
    action: String,
    target: String,
    request_id: Option<String>,
    before: Option<Value>,
    after: Option<Value>,
}

impl From<AuditEntry> for AuditView {
    fn from(e: AuditEntry) -> Self {
        Self {
            id: e.id,
            at: e.at,
            actor: e.actor,
            issuer: e.issuer,
            action: e.action,
            target: e.target,
            request_id: e.request_id,
            before: e.before,
            after: e.after,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListAudit {
    /// Only the changes of this subject.
    actor: Option<String>,
    /// Only this action, like `put_job` or `pause_trigger`.
    action: Option<String>,
}

/// Audit entries page on their id, newest first.
struct AuditList;

impl Listing for AuditList {
    type Key = Uuid;
    const TAG: &'static str = "au.";
}

/// Read the audit log
///
/// Every change an admin or operator made, newest first, by actor and action.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "audit",
    params(ListAudit, PageParams<AuditList>),
    responses((status = 200, description = "A page of audit entries.", body = Page<AuditView>))
)]
async fn list_audit(
    State(state): State<AppState>,
    ListQuery {
        filter: query,
        page,
    }: ListQuery<ListAudit, AuditList>,
) -> Result<JsonResponse<Page<AuditView>>> {
    let page = page.checked()?;
    let entries = state
        .store
        .list_audit(
            query.actor.as_deref(),
            query.action.as_deref(),
            page.after,
            page.fetch(),
        )
        .await?;
    Ok(JsonResponse(page.page(entries, |e| e.id, AuditView::from)))
}
