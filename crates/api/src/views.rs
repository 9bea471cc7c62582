//! The JSON shapes the API returns (DESIGN §12).

use chrono::{DateTime, Utc};
use pacer_domain::TriggerSpec;
use pacer_domain::{JobSpec, TaskId, TaskState};
use pacer_store::{Attempt, Event, Job, Node, SkippedRun, Task, Trigger};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// A page of a list: `next_cursor` fetches the next page, null on the last.
#[derive(Debug, Serialize)]
pub(crate) struct Page<T> {
    pub(crate) items: Vec<T>,
    pub(crate) next_cursor: Option<String>,
}

/// A job as returned by the API: its name and version beside its definition.
#[derive(Debug, Serialize)]
pub(crate) struct JobView {
    name: String,
    version: i32,
    #[serde(flatten)]
    spec: JobSpec,
    paused: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Job> for JobView {
    fn from(job: Job) -> Self {
        Self {
            name: job.name.to_string(),
            version: job.version,
            spec: job.spec,
            paused: job.paused,
            created_at: job.created_at,
            updated_at: job.updated_at,
        }
    }
}

/// How a task came to be: `{kind: "trigger", trigger_id, scheduled_at}`,
/// `{kind: "manual", actor}`, `{kind: "retry", task_id}`, `{kind: "message", message_id, type}`,
/// or just the kind.
#[derive(Debug, Serialize)]
struct OriginView {
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    trigger_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<String>,
    /// The task this one retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<TaskId>,
    /// The message that created it.
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    message_type: Option<String>,
}

/// A task as returned by the API; `attempts` only in the detail view.
#[derive(Debug, Serialize)]
pub struct TaskView {
    id: TaskId,
    job: String,
    state: TaskState,
    origin: OriginView,
    idempotency_key: Option<String>,
    payload: Value,
    attempt: i32,
    created_at: DateTime<Utc>,
    due_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    next_dispatch_at: Option<DateTime<Utc>>,
    deadline_at: Option<DateTime<Utc>>,
    timeout_at: DateTime<Utc>,
    overdue: bool,
    claimed_by: Option<String>,
    progress: Option<Value>,
    message: Option<String>,
    result: Option<Value>,
    last_error: Option<String>,
    failure_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    waits_for: Option<TaskId>,
    updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<Vec<AttemptView>>,
    /// State changes and callbacks in the order they happened (detail view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<Vec<EventView>>,
    /// The tasks that retry this one (detail view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    retries: Option<Vec<TaskId>>,
}

impl TaskView {
    /// The detail view: the task with its attempts, its history and its retries.
    pub(crate) fn detail(
        task: Task,
        attempts: Vec<Attempt>,
        history: Vec<Event>,
        retries: Vec<TaskId>,
    ) -> Self {
        let mut view = Self::from(task);
        view.attempts = Some(attempts.into_iter().map(AttemptView::from).collect());
        view.history = Some(history.into_iter().map(EventView::from).collect());
        view.retries = Some(retries);
        view
    }
}

/// One event of the event log, as the task history and the event stream show it.
#[derive(Debug, Serialize)]
pub(crate) struct EventView {
    /// Opaque and ordered: the event stream's `id`, and what `Last-Event-ID` takes back.
    pub(crate) id: String,
    pub(crate) at: DateTime<Utc>,
    pub(crate) kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) job: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) task: Option<TaskId>,
    pub(crate) data: Value,
}

impl From<Event> for EventView {
    fn from(e: Event) -> Self {
        Self {
            id: e.cursor().to_string(),
            at: e.at,
            kind: e.kind,
            job: e.job_name,
            task: e.task_id,
            data: e.data,
        }
    }
}

impl From<Task> for TaskView {
    fn from(t: Task) -> Self {
        Self {
            id: t.id,
            job: t.job_name,
            state: t.state,
            origin: OriginView {
                kind: t.origin,
                trigger_id: t.trigger_id,
                scheduled_at: t.scheduled_at,
                actor: t.actor,
                task_id: t.retry_of,
                message_id: t.message_id,
                message_type: t.message_type,
            },
            waits_for: t.waits_for,
            idempotency_key: t.idempotency_key,
            payload: t.payload,
            attempt: t.attempt,
            created_at: t.created_at,
            due_at: t.due_at,
            started_at: t.started_at,
            finished_at: t.finished_at,
            next_dispatch_at: t.next_dispatch_at,
            deadline_at: t.deadline_at,
            timeout_at: t.timeout_at,
            overdue: t.overdue,
            claimed_by: t.claimed_by,
            progress: t.progress,
            message: t.message,
            result: t.result,
            last_error: t.last_error,
            failure_reason: t.failure_reason,
            updated_at: t.updated_at,
            attempts: None,
            history: None,
            retries: None,
        }
    }
}

/// One dispatch of a task.
#[derive(Debug, Serialize)]
struct AttemptView {
    number: i32,
    node: String,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    outcome: String,
    http_status: Option<i32>,
    error: Option<String>,
    latency_ms: Option<i64>,
}

impl From<Attempt> for AttemptView {
    fn from(a: Attempt) -> Self {
        Self {
            number: a.number,
            node: a.node,
            started_at: a.started_at,
            finished_at: a.finished_at,
            outcome: a.outcome,
            http_status: a.http_status,
            error: a.error,
            latency_ms: a.latency_ms,
        }
    }
}

/// A trigger with its schedule state.
#[derive(Debug, Serialize)]
pub(crate) struct TriggerView {
    id: Uuid,
    job: String,
    #[serde(flatten)]
    spec: TriggerSpec,
    paused: bool,
    next_fire_at: Option<DateTime<Utc>>,
    last_fired_at: Option<DateTime<Utc>>,
    skipped: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Trigger> for TriggerView {
    fn from(t: Trigger) -> Self {
        Self {
            id: t.id,
            job: t.job_name,
            spec: t.spec,
            paused: t.paused,
            next_fire_at: t.next_fire_at,
            last_fired_at: t.last_fired_at,
            skipped: t.skip_count,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// A node of the cluster.
#[derive(Debug, Serialize)]
pub(crate) struct NodeView {
    id: String,
    address: String,
    version: String,
    started_at: DateTime<Utc>,
    last_heartbeat_at: DateTime<Utc>,
    stopped_at: Option<DateTime<Utc>>,
    alive: bool,
    /// Its RabbitMQ consumer, when it has a broker configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    amqp: Option<Value>,
}

impl From<Node> for NodeView {
    fn from(n: Node) -> Self {
        Self {
            id: n.id,
            address: n.address,
            version: n.version,
            started_at: n.started_at,
            last_heartbeat_at: n.last_heartbeat_at,
            stopped_at: n.stopped_at,
            alive: n.alive,
            amqp: n.amqp_consumer,
        }
    }
}

/// A run that got no task.
#[derive(Debug, Serialize)]
pub(crate) struct SkipView {
    id: Uuid,
    job: String,
    trigger_id: Option<Uuid>,
    scheduled_at: Option<DateTime<Utc>>,
    reason: String,
    recorded_at: DateTime<Utc>,
}

impl From<SkippedRun> for SkipView {
    fn from(s: SkippedRun) -> Self {
        Self {
            id: s.id,
            job: s.job_name,
            trigger_id: s.trigger_id,
            scheduled_at: s.scheduled_at,
            reason: s.reason,
            recorded_at: s.recorded_at,
        }
    }
}
