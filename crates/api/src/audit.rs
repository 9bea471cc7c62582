//! The audit log: recording admin and operator changes, and reading them back (admin only).

use axum::extract::State;
use axum::routing::get;
use axum::{Json as JsonResponse, Router};
use chrono::{DateTime, Utc};
use pacer_store::{AuditEntry, NewAuditEntry};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::auth::Actor;
use crate::extract::{Query, limit};
use crate::views::Page;
use crate::{AppState, Error, Result};

pub(crate) fn admin_routes() -> Router<AppState> {
    Router::new().route("/api/v1/audit", get(list_audit))
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

#[derive(Debug, Serialize)]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListAudit {
    actor: Option<String>,
    action: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// Changes newest first, by actor and action.
async fn list_audit(
    State(state): State<AppState>,
    Query(query): Query<ListAudit>,
) -> Result<JsonResponse<Page<AuditView>>> {
    let limit = limit(query.limit.as_deref(), 50)?;
    let before = query
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<Uuid>()
                .map_err(|_| Error::field("cursor", "not a cursor returned by this API"))
        })
        .transpose()?;
    let entries = state
        .store
        .list_audit(
            query.actor.as_deref(),
            query.action.as_deref(),
            before,
            limit,
        )
        .await?;
    let full = i64::try_from(entries.len()).unwrap_or(i64::MAX) == limit;
    let next_cursor = full
        .then(|| entries.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(JsonResponse(Page {
        items: entries.into_iter().map(AuditView::from).collect(),
        next_cursor,
    }))
}
