//! The JSON shapes the API returns (DESIGN §12).

use chrono::{DateTime, Utc};
use pacer_domain::TriggerSpec;
use pacer_domain::wire::EventView;
use pacer_domain::{
    ConsumerStatus, FailureReason, JobSpec, SkipReason, TaskId, TaskOutcome, TaskState,
};
use pacer_store::{Attempt, Event, Job, Node, SkippedRun, Task, Trigger};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// A page of a list: `next_cursor` fetches the next page, null on the last.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Page<T> {
    pub(crate) items: Vec<T>,
    pub(crate) next_cursor: Option<String>,
}

/// A job as returned by the API: its name and version beside its definition.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Job, example = json!({
    "name": "master-data-sync", "version": 1, "description": "Pull master data deltas",
    "target": { "url": "http://registry:8080/sync/masterdata", "headers": { "X-Tenant": "a" },
                "auth": { "kind": "jwt", "audience": "registry" } },
    "payload": { "tables": ["centers"] },
    "repoll_interval": "30s", "dispatch_timeout": "10s", "timeout": "2h", "deadline": "15m",
    "retry": { "max_attempts": 10, "initial_backoff": "1s", "max_backoff": "5m", "multiplier": 2.0, "jitter": 0.2 },
    "expect_callback": true, "overlap": "skip", "on_messages": ["masterdata.changed"],
    "labels": { "team": "registration" },
    "paused": false, "created_at": "2026-11-24T08:00:00Z", "updated_at": "2026-11-24T08:00:00Z"
}))]
pub(crate) struct JobView {
    name: String,
    version: i32,
    #[serde(flatten)]
    spec: JobSpec,
    paused: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// For a job with `freshness`: until when its data counts as fresh (the start of its last
    /// completed run, or when it began watching before any, plus `freshness`); past it, a
    /// `stale` alert is open.
    #[serde(skip_serializing_if = "Option::is_none")]
    fresh_until: Option<DateTime<Utc>>,
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
            fresh_until: job.fresh_until,
        }
    }
}

/// How a task came to be: `{kind: "trigger", trigger_id, scheduled_at}`,
/// `{kind: "manual", actor}`, `{kind: "retry", task_id}`, `{kind: "message", message_id, type}`,
/// or just the kind.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TaskOrigin)]
struct OriginView {
    #[schema(value_type = String, pattern = "^(api|manual|trigger|message|retry|backfill)$", examples("trigger", "manual"))]
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
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Task, example = json!({
    "id": "0193a5c4-7f2e-7c1a-9d3e-2b1f4a6c8e01", "job": "master-data-sync", "state": "processing",
    "origin": { "kind": "trigger", "trigger_id": "0193a5c0-1b2c-7d3e-8f40-5a6b7c8d9e0f",
                "scheduled_at": "2026-11-24T09:00:00Z" },
    "idempotency_key": null, "payload": { "tables": ["centers"] },
    "attempt": 2, "created_at": "2026-11-24T09:00:00.012Z", "due_at": "2026-11-24T09:00:00Z",
    "started_at": "2026-11-24T09:00:00.020Z", "finished_at": null,
    "next_dispatch_at": "2026-11-24T09:01:00Z", "deadline_at": "2026-11-24T09:15:00Z",
    "timeout_at": "2026-11-24T11:00:00Z", "overdue": false, "claimed_by": null,
    "progress": { "done": 120, "total": 500 }, "message": null, "result": null, "last_error": null,
    "failure_reason": null, "outcome": null, "fingerprint": null,
    "updated_at": "2026-11-24T09:00:30Z"
}))]
pub struct TaskView {
    id: TaskId,
    job: String,
    state: TaskState,
    origin: OriginView,
    idempotency_key: Option<String>,
    #[schema(value_type = Object)]
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
    #[schema(value_type = Option<FailureReason>)]
    failure_reason: Option<String>,
    /// How a completed task ended beyond its state: `unchanged` when its input equalled the last
    /// completed run's (`skip_if_unchanged`); for a run, the steps after the one that found it
    /// did not run.
    outcome: Option<TaskOutcome>,
    /// What the downstream reported about its input (`skip_if_unchanged`); a run's is its skip
    /// step's, once the run completed.
    fingerprint: Option<String>,
    /// Under the `buffer_one` overlap policy: the open task this one waits for.
    #[serde(skip_serializing_if = "Option::is_none")]
    waits_for: Option<TaskId>,
    updated_at: DateTime<Utc>,
    /// Every dispatch so far, oldest first; only in `GET /api/v1/tasks/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    attempts: Option<Vec<AttemptView>>,
    /// State changes and callbacks in the order they happened, the latest 1000; only in
    /// `GET /api/v1/tasks/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    history: Option<Vec<EventView>>,
    /// The tasks that retry this one; only in `GET /api/v1/tasks/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    retries: Option<Vec<TaskId>>,
    /// For a run of a job made of steps, its steps; only in `GET /api/v1/tasks/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub(crate) steps: Option<Vec<crate::runs::StepView>>,
    /// While the task waits for a slot of its job's `max_concurrency` or its concurrency group:
    /// the limit and the tasks holding its slots; only in `GET /api/v1/tasks/{id}`. Such a task
    /// is first dispatched when a slot frees up, not at `next_dispatch_at`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    waiting_for: Option<crate::concurrency::WaitingForView>,
    /// The notices sent (or being sent) to whoever created the task with `notify`; only in
    /// `GET /api/v1/tasks/{id}`, and only for such a task.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    notices: Option<Vec<NoticeView>>,
}

/// A completion notice of a task created with `notify`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NoticeView {
    /// `finished`, or for `state` notices `state.<state>.<attempt>`.
    event: String,
    /// The task's state the notice was written for.
    state: TaskState,
    /// Attempts so far.
    attempts: i32,
    created_at: DateTime<Utc>,
    /// When the receiver accepted it.
    delivered_at: Option<DateTime<Utc>>,
    /// When the next attempt is due, while it is neither delivered nor given up.
    next_attempt_at: Option<DateTime<Utc>>,
    /// The last failed attempt's error.
    last_error: Option<String>,
    /// Given up after the last allowed attempt.
    failed: bool,
}

impl From<pacer_store::Notice> for NoticeView {
    fn from(n: pacer_store::Notice) -> Self {
        Self {
            event: n.event,
            state: n.state.parse().unwrap_or(TaskState::Pending),
            attempts: n.attempts,
            created_at: n.created_at,
            delivered_at: n.delivered_at,
            next_attempt_at: n.next_attempt_at,
            last_error: n.last_error,
            failed: n.failed,
        }
    }
}

impl TaskView {
    /// The detail view: the task with its attempts, its history and its retries.
    /// Shows a run's steps and its progress (its children done of those created).
    pub(crate) fn with_steps(mut self, steps: Vec<crate::runs::StepView>, progress: Value) -> Self {
        self.steps = Some(steps);
        self.progress = Some(progress);
        self
    }

    /// Shows the task's notices, when it has any.
    pub(crate) fn notices(mut self, notices: Vec<pacer_store::Notice>) -> Self {
        self.notices = (!notices.is_empty()).then(|| notices.into_iter().map(Into::into).collect());
        self
    }

    /// Says what the task waits for, if it waits for a concurrency slot.
    pub(crate) fn waiting_for(mut self, waiting: Option<pacer_store::WaitingFor>) -> Self {
        self.waiting_for = waiting.map(Into::into);
        self
    }

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
            outcome: t.outcome,
            fingerprint: t.fingerprint,
            updated_at: t.updated_at,
            attempts: None,
            history: None,
            retries: None,
            steps: None,
            waiting_for: None,
            notices: None,
        }
    }
}

/// One dispatch of a task.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Attempt)]
struct AttemptView {
    number: i32,
    node: String,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    /// `accepted`, `already_running`, `transient_error`, `permanent_error`, `abandoned` or
    /// `interrupted`.
    #[schema(examples("accepted"))]
    outcome: String,
    http_status: Option<i32>,
    error: Option<String>,
    /// The error code the downstream reported for this attempt (`"error": {"code": …}` in a
    /// `failed` callback or status body).
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<String>,
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
            error_code: a.error_code,
            latency_ms: a.latency_ms,
        }
    }
}

/// A trigger with its schedule state.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Trigger, example = json!({
    "id": "0193a5c0-1b2c-7d3e-8f40-5a6b7c8d9e0f", "job": "master-data-sync",
    "kind": "cron", "expression": "0 */15 * * * *", "timezone": "Asia/Kolkata",
    "misfire": "fire_once", "misfire_grace": "1m", "catch_up_limit": 100,
    "paused": false, "next_fire_at": "2026-11-24T09:15:00Z", "last_fired_at": "2026-11-24T09:00:00Z",
    "skipped": 0, "created_at": "2026-11-24T08:00:00Z", "updated_at": "2026-11-24T08:00:00Z"
}))]
pub(crate) struct TriggerView {
    id: Uuid,
    job: String,
    #[serde(flatten)]
    spec: TriggerSpec,
    paused: bool,
    next_fire_at: Option<DateTime<Utc>>,
    last_fired_at: Option<DateTime<Utc>>,
    /// Occurrences of this trigger recorded as skipped.
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
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Node)]
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
    #[schema(value_type = Option<ConsumerStatus>, nullable = false)]
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
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Skip)]
pub(crate) struct SkipView {
    id: Uuid,
    job: String,
    trigger_id: Option<Uuid>,
    scheduled_at: Option<DateTime<Utc>>,
    #[schema(value_type = SkipReason)]
    reason: String,
    /// For reason `calendar`: the calendar that excluded the occurrence.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    calendar: Option<String>,
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
            calendar: s.detail,
            recorded_at: s.recorded_at,
        }
    }
}

/// The leader of the cluster.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LeaderView {
    pub(crate) node: Option<String>,
    pub(crate) term: i64,
    pub(crate) since: Option<DateTime<Utc>>,
    pub(crate) lease_expires_at: DateTime<Utc>,
}

/// The cluster: its leader (null while none holds a valid lease), the current term, and every
/// known node, alive first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Cluster, example = json!({
    "leader": { "node": "pacer-1", "term": 7, "since": "2026-11-24T08:00:00Z",
                "lease_expires_at": "2026-11-24T09:00:06Z" },
    "term": 7,
    "nodes": [ { "id": "pacer-1", "address": "10.0.0.5:8080", "version": "0.1.0",
                 "started_at": "2026-11-24T08:00:00Z", "last_heartbeat_at": "2026-11-24T09:00:02Z",
                 "stopped_at": null, "alive": true,
                 "amqp": { "state": "connected", "since": "2026-11-24T08:00:01Z", "queue": "pacer.messages" } } ],
    "amqp": { "node": "pacer-1",
              "consumer": { "state": "connected", "since": "2026-11-24T08:00:01Z", "queue": "pacer.messages" } },
    "tables": [ { "table": "tasks", "rows": 1250000, "bytes": 780000000 },
                { "table": "task_attempts", "rows": 1300000, "bytes": 200000000 } ]
}))]
pub(crate) struct ClusterView {
    pub(crate) leader: Option<LeaderView>,
    pub(crate) term: i64,
    pub(crate) nodes: Vec<NodeView>,
    /// The RabbitMQ consumer of the node that answered; each node reports its own in `/readyz`.
    pub(crate) amqp: AmqpView,
    /// The size of every table that grows (and of `jobs` and `triggers`), what retention keeps
    /// in check: approximate rows from the database's statistics, and bytes on disk with
    /// indexes and TOAST.
    pub(crate) tables: Vec<TableSizeView>,
}

/// The size of one table.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TableSize)]
pub(crate) struct TableSizeView {
    pub(crate) table: String,
    /// Approximate: the live rows the database's statistics count.
    pub(crate) rows: i64,
    /// On disk, indexes and TOAST included.
    pub(crate) bytes: i64,
}

impl From<pacer_store::TableSize> for TableSizeView {
    fn from(size: pacer_store::TableSize) -> Self {
        Self {
            table: size.table,
            rows: size.rows,
            bytes: size.bytes,
        }
    }
}

/// A node's RabbitMQ consumer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = NodeConsumer)]
pub(crate) struct AmqpView {
    pub(crate) node: String,
    pub(crate) consumer: ConsumerStatus,
}

/// Whether the scheduler is in standby.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Scheduler)]
pub(crate) struct SchedulerView {
    pub(crate) paused: bool,
}

/// The next fire times of a trigger.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TriggerPreview)]
pub(crate) struct PreviewView {
    pub(crate) trigger: Uuid,
    /// The scheduled times of the next occurrences, excluded ones included.
    pub(crate) fire_times: Vec<DateTime<Utc>>,
    /// The same occurrences in detail: when each is sent (after jitter), or which calendar
    /// excludes it.
    pub(crate) occurrences: Vec<PreviewOccurrence>,
}

/// One upcoming occurrence of a trigger.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PreviewOccurrence {
    pub(crate) scheduled_at: DateTime<Utc>,
    /// When its task is sent: `scheduled_at` plus the trigger's jitter offset.
    pub(crate) fire_at: DateTime<Utc>,
    /// The calendar that excludes it: it will be recorded as a skip, not fired.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub(crate) excluded_by: Option<String>,
}

/// What deleting a job did.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DeletedJob, example = json!({ "deleted": "master-data-sync", "cancelled_tasks": 0 }))]
pub(crate) struct DeletedJobView {
    pub(crate) deleted: String,
    pub(crate) cancelled_tasks: u64,
}
