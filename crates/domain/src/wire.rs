//! The shapes Pacer writes to others, one type per shape (DESIGN §12): an alert and an event look
//! the same in the API, in the event stream, in alert notifications and in the event webhook,
//! because every one of them serialises these types.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::{AlertKind, AlertState, Severity, TaskId};

/// What an alert is about: a task (with its job), a job, or a node.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertSubject {
    pub task: Option<Uuid>,
    pub job: Option<String>,
    /// The node of a `node_lost` alert.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub node: Option<String>,
}

/// An alert (DESIGN §12), as the API returns it and as notifications carry it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = Alert, example = json!({
    "id": "0193a5d0-2c3d-7e4f-8a5b-6c7d8e9f0a1b", "kind": "overdue", "severity": "warning",
    "subject": { "task": "0193a5c4-7f2e-7c1a-9d3e-2b1f4a6c8e01", "job": "master-data-sync" },
    "state": "open", "count": 1,
    "summary": "task 0193a5c4-7f2e-7c1a-9d3e-2b1f4a6c8e01 of job master-data-sync passed its deadline",
    "opened_at": "2026-11-24T09:15:00Z", "last_seen_at": "2026-11-24T09:15:00Z",
    "notified_at": "2026-11-24T09:15:01Z", "acked_at": null, "acked_by": null, "ack_note": null,
    "resolved_at": null, "resolved_by": null, "resolve_note": null
})))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertView {
    pub id: Uuid,
    pub kind: AlertKind,
    pub severity: Severity,
    pub subject: AlertSubject,
    pub state: AlertState,
    pub count: i64,
    pub summary: String,
    pub opened_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub notified_at: Option<DateTime<Utc>>,
    pub acked_at: Option<DateTime<Utc>>,
    pub acked_by: Option<String>,
    pub ack_note: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<String>,
    pub resolve_note: Option<String>,
}

/// One event of the event log, as task histories, the event stream and the webhook show it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = Event, example = json!({
    "id": "48213-1042", "at": "2026-11-24T09:00:30Z", "kind": "task.state", "job": "master-data-sync",
    "task": "0193a5c4-7f2e-7c1a-9d3e-2b1f4a6c8e01", "data": { "from": "pending", "to": "processing" }
})))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventView {
    /// Opaque and ordered: the event stream's `id`, and what `Last-Event-ID` takes back.
    pub id: String,
    pub at: DateTime<Utc>,
    /// What happened: `task.state`, `task.callback`, `leader.changed`, `leader.resigned`, …
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub job: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub task: Option<TaskId>,
    /// What the event carries; its shape depends on `kind`.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: Value,
}
