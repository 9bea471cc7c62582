//! Tasks: what a task is, and reading tasks. Creating them (idempotent per job and key, under
//! the overlap policy) is in `creation`; the state changes that come from outside the dispatcher
//! (callbacks and cancellation), each decided by the domain's state machine, are in `reports`.

mod creation;
mod reports;

use chrono::{DateTime, Utc};
use pacer_domain::dispatch::Report;
use pacer_domain::{SkipReason, TaskId, TaskOutcome, TaskState};
use serde_json::Value;
use uuid::Uuid;

use crate::error::corrupt;
use crate::{ClaimedTask, Error, Result, Store};

pub(crate) use creation::{FromMessage, admit_task, insert_task};
pub use creation::{KeptTask, TaskCreation};
pub use reports::Reporting;

/// How a task came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Created by a REST call.
    Api,
    /// Run now by an operator.
    Manual,
    /// An occurrence of a trigger.
    Trigger,
    /// An upstream message.
    Message,
    /// A retry of an earlier task.
    Retry,
    /// A past occurrence of a trigger, created by a backfill.
    Backfill,
}

impl std::str::FromStr for Origin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "api" => Origin::Api,
            "manual" => Origin::Manual,
            "trigger" => Origin::Trigger,
            "message" => Origin::Message,
            "retry" => Origin::Retry,
            "backfill" => Origin::Backfill,
            other => {
                return Err(format!(
                    "unknown origin `{other}`; one of api, manual, trigger, message, retry, backfill"
                ));
            }
        })
    }
}

impl Origin {
    /// The database and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Api => "api",
            Origin::Manual => "manual",
            Origin::Trigger => "trigger",
            Origin::Message => "message",
            Origin::Retry => "retry",
            Origin::Backfill => "backfill",
        }
    }
}

/// A task to create.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: TaskId,
    pub origin: Origin,
    pub idempotency_key: Option<String>,
    pub payload: Value,
    /// Not dispatched before this instant; now when absent.
    pub not_before: Option<DateTime<Utc>>,
    /// The W3C `traceparent` of the request creating it.
    pub trace_context: Option<String>,
    /// The operator who ran it now (origin `manual`).
    pub actor: Option<String>,
    /// The task it retries (origin `retry`).
    pub retry_of: Option<TaskId>,
    /// Who to tell when it ends (or at every state change): `{url, events, auth}`, checked by
    /// the caller.
    pub notify: Option<Value>,
}

impl NewTask {
    /// A task of `origin` with `payload`, due now, with nothing else set.
    pub fn new(origin: Origin, payload: Value) -> Self {
        Self {
            id: TaskId::new(),
            origin,
            idempotency_key: None,
            payload,
            not_before: None,
            trace_context: None,
            actor: None,
            retry_of: None,
            notify: None,
        }
    }
}

/// What creating a task did.
#[derive(Debug)]
pub enum CreatedTask {
    /// A new task; claimed for the calling node when it asked and the task is due now.
    Created {
        id: TaskId,
        /// The task as inserted.
        task: Box<Task>,
        claimed: Option<Box<ClaimedTask>>,
    },
    /// The job already had a task with this idempotency key; nothing was written.
    Existing { id: TaskId },
    /// The job's overlap policy refused the task; the skip was recorded.
    Skipped {
        reason: SkipReason,
        open_task: Option<TaskId>,
    },
}

/// A task as stored.
#[derive(Debug, Clone)]
pub struct Task {
    pub id: TaskId,
    pub job_name: String,
    pub state: TaskState,
    pub origin: String,
    pub idempotency_key: Option<String>,
    pub payload: Value,
    pub attempt: i32,
    pub created_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    /// The trigger whose occurrence created the task.
    pub trigger_id: Option<Uuid>,
    /// The occurrence's scheduled time.
    pub scheduled_at: Option<DateTime<Utc>>,
    /// The open task this one is queued behind (overlap policy `buffer_one`).
    pub waits_for: Option<TaskId>,
    /// The operator who ran it now (origin `manual`).
    pub actor: Option<String>,
    /// The task it retries (origin `retry`).
    pub retry_of: Option<TaskId>,
    /// The message that created the task (origin `message`): its id and type.
    pub message_id: Option<String>,
    pub message_type: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub next_dispatch_at: Option<DateTime<Utc>>,
    pub deadline_at: Option<DateTime<Utc>>,
    pub timeout_at: DateTime<Utc>,
    pub claimed_by: Option<String>,
    pub overdue: bool,
    pub progress: Option<Value>,
    pub message: Option<String>,
    pub result: Option<Value>,
    pub last_error: Option<String>,
    pub failure_reason: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// What the downstream last reported about its input (`skip_if_unchanged`); a run's is its
    /// skip step's, once the run completed.
    pub fingerprint: Option<String>,
    /// How a completed task ended beyond its state: `unchanged` when its input equalled the last
    /// completed run's.
    pub outcome: Option<TaskOutcome>,
}

/// One dispatch of a task.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub number: i32,
    pub node: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcome: String,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    /// The error code the downstream reported for this attempt.
    pub error_code: Option<String>,
    pub latency_ms: Option<i64>,
}

/// Which tasks to list, newest first. Every filter is optional; they combine with `and`.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub job: Option<String>,
    /// Tasks in any of these states; all states when empty.
    pub states: Vec<TaskState>,
    pub origin: Option<Origin>,
    /// Created at or after this instant.
    pub created_after: Option<DateTime<Utc>>,
    /// Created before this instant.
    pub created_before: Option<DateTime<Utc>>,
    /// Finished at or after this instant.
    pub finished_after: Option<DateTime<Utc>>,
    /// Finished before this instant.
    pub finished_before: Option<DateTime<Utc>>,
    /// Only tasks past (true) or within (false) their deadline.
    pub overdue: Option<bool>,
    /// Only tasks that ended with this outcome.
    pub outcome: Option<TaskOutcome>,
    /// The children of this run; without it, runs and single tasks (no children).
    pub run: Option<TaskId>,
    /// Keyset cursor: only tasks older than this one.
    pub before: Option<TaskId>,
    pub limit: i64,
}

/// A report on a task from outside the dispatcher.
pub type TaskReport = Report;

/// What a callback or cancellation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// The task moved to (or, for progress, stayed in) this state.
    Applied(TaskState),
    /// A repeat of what already happened; nothing changed.
    Unchanged(TaskState),
    /// The task is terminal in this state and the report contradicts it; nothing changed.
    Refused(TaskState),
}

/// A `tasks` row as the task queries select it.
struct TaskRow {
    id: Uuid,
    job_name: String,
    state: String,
    origin: String,
    idempotency_key: Option<String>,
    payload: Value,
    attempt: i32,
    created_at: DateTime<Utc>,
    due_at: DateTime<Utc>,
    trigger_id: Option<Uuid>,
    scheduled_at: Option<DateTime<Utc>>,
    waits_for: Option<Uuid>,
    actor: Option<String>,
    retry_of: Option<Uuid>,
    message_id: Option<String>,
    message_type: Option<String>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    next_dispatch_at: Option<DateTime<Utc>>,
    deadline_at: Option<DateTime<Utc>>,
    timeout_at: DateTime<Utc>,
    claimed_by: Option<String>,
    progress: Option<Value>,
    message: Option<String>,
    result: Option<Value>,
    last_error: Option<String>,
    failure_reason: Option<String>,
    updated_at: DateTime<Utc>,
    fingerprint: Option<String>,
    outcome: Option<String>,
    overdue: bool,
}

impl TryFrom<TaskRow> for Task {
    type Error = Error;

    fn try_from(r: TaskRow) -> Result<Self> {
        Ok(Task {
            id: r.id.into(),
            job_name: r.job_name,
            state: r.state.parse().map_err(corrupt)?,
            origin: r.origin,
            idempotency_key: r.idempotency_key,
            payload: r.payload,
            attempt: r.attempt,
            created_at: r.created_at,
            due_at: r.due_at,
            trigger_id: r.trigger_id,
            scheduled_at: r.scheduled_at,
            waits_for: r.waits_for.map(TaskId::from),
            actor: r.actor,
            retry_of: r.retry_of.map(TaskId::from),
            message_id: r.message_id,
            message_type: r.message_type,
            started_at: r.started_at,
            finished_at: r.finished_at,
            next_dispatch_at: r.next_dispatch_at,
            deadline_at: r.deadline_at,
            timeout_at: r.timeout_at,
            claimed_by: r.claimed_by,
            overdue: r.overdue,
            progress: r.progress,
            message: r.message,
            result: r.result,
            last_error: r.last_error,
            failure_reason: r.failure_reason,
            updated_at: r.updated_at,
            fingerprint: r.fingerprint,
            outcome: r.outcome.map(|o| o.parse()).transpose().map_err(corrupt)?,
        })
    }
}

impl Store {
    /// The task with this id.
    pub async fn get_task(&self, id: TaskId) -> Result<Task> {
        select_task(&mut *self.pool.acquire().await?, id).await
    }

    /// Tasks matching `filter`, newest first.
    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        let (one_state, states) = match filter.states.as_slice() {
            [] => (None, None),
            [one] => (Some(one.as_str()), None),
            many => (
                None,
                Some(
                    many.iter()
                        .map(|s| s.as_str().to_owned())
                        .collect::<Vec<_>>(),
                ),
            ),
        };
        let mut tx = self.pool.begin().await?;
        // The filters are optional parameters: a cached generic plan could use no index for them,
        // so this statement is planned with the values given, every time.
        sqlx::query!("set local plan_cache_mode = force_custom_plan")
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query_file_as!(
            TaskRow,
            "src/sql/select_tasks.sql",
            filter.job.as_deref(),
            one_state,
            filter.before.map(|id| id.as_uuid()),
            filter.limit,
            filter.origin.map(Origin::as_str),
            filter.created_after,
            filter.created_before,
            filter.finished_after,
            filter.finished_before,
            filter.overdue,
            states.as_deref(),
            filter.outcome.map(TaskOutcome::as_str),
            filter.run.map(|id| id.as_uuid()),
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.into_iter().map(Task::try_from).collect()
    }

    /// The task's attempts in order.
    pub async fn task_attempts(&self, id: TaskId) -> Result<Vec<Attempt>> {
        Ok(sqlx::query_as!(
            Attempt,
            "select number, node, started_at, finished_at, outcome, http_status, error, error_code,
                    latency_ms
             from task_attempts where task_id = $1 order by number",
            id.as_uuid()
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

/// The task with this id, inside a transaction.
async fn select_task(conn: &mut sqlx::PgConnection, id: TaskId) -> Result<Task> {
    sqlx::query_file_as!(TaskRow, "src/sql/select_task.sql", id.as_uuid())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(Error::NotFound("task"))?
        .try_into()
}

/// An object without its null members.
fn strip_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        other => other,
    }
}
