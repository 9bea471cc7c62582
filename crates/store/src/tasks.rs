//! Tasks: creation (idempotent per job and key), reads, and the state changes that come from
//! outside the dispatcher — callbacks and cancellation — each decided by the domain's state machine
//! under a row lock.

use chrono::{DateTime, Utc};
use pacer_domain::dispatch::Report;
use pacer_domain::firing::Admission;
use pacer_domain::{
    FailureReason, OverlapPolicy, SkipReason, Span, TaskEvent, TaskId, TaskState, Transition,
};
use serde_json::Value;
use uuid::Uuid;

use std::collections::HashSet;
use std::sync::Arc;

use crate::batch::BatchWrite;
use crate::error::corrupt;
use crate::events::{NewEvent, append_event};
use crate::firing::open_work;
use crate::{CANCELS_CHANNEL, ClaimedTask, Error, Job, Result, Store};

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
        })
    }
}

impl Store {
    /// Creates a task for `job`, or finds the one that already has this idempotency key, under
    /// the job's overlap policy.
    ///
    /// With `claim_for = Some((node, lease_margin))` and the task due now, the task is created
    /// claimed by `node`, which must dispatch it: creation and claim share one commit.
    pub async fn create_task(
        &self,
        job: &Job,
        task: NewTask,
        claim_for: Option<(&str, Span)>,
    ) -> Result<CreatedTask> {
        if job.spec.overlap == OverlapPolicy::Allow {
            return insert_task(
                &mut *self.pool.acquire().await?,
                job,
                task,
                claim_for,
                None,
                None,
            )
            .await;
        }
        let mut tx = self.pool.begin().await?;
        let created = admit_task(&mut tx, job, task, claim_for, None).await?;
        tx.commit().await?;
        Ok(created)
    }

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
            "select number, node, started_at, finished_at, outcome, http_status, error, latency_ms
             from task_attempts where task_id = $1 order by number",
            id.as_uuid()
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Applies a downstream's report. Progress on an open task is recorded and counts as a
    /// heartbeat: the next re-poll moves to a full re-poll interval from now. Returns what the
    /// report did and the task as it stands after it.
    pub async fn report(&self, id: TaskId, report: &TaskReport) -> Result<(ReportOutcome, Task)> {
        self.apply_event(id, report.event(), Some(report)).await
    }

    /// Applies several downstreams' reports, answering for each in order as [`Store::report`]
    /// would. The reports that end their task (each task's first) are written in one statement
    /// and one commit; the rest one by one after them.
    pub async fn report_many(
        &self,
        reports: &[(TaskId, TaskReport)],
    ) -> Result<Vec<Result<(ReportOutcome, Task)>>> {
        let mut answers: Vec<Option<Result<(ReportOutcome, Task)>>> =
            reports.iter().map(|_| None).collect();
        let mut tasks = HashSet::new();
        let mut batch = Vec::new();
        let mut ends = Vec::new();
        let mut from = None;
        for (i, (id, report)) in reports.iter().enumerate() {
            let event = report.event();
            if let Some((states, next)) = ending(event)
                && from.get_or_insert_with(|| states.clone()) == &states
                && tasks.insert(*id)
            {
                batch.push(i);
                ends.push(Ending {
                    id: *id,
                    event,
                    next,
                    report: Some(report),
                });
            }
        }
        if let Some(from) = from {
            let mut conn = self.batches.acquire().await?;
            let finished = finish_tasks(&mut conn, &ends, &from).await?;
            for ((i, end), task) in batch.into_iter().zip(&ends).zip(finished) {
                answers[i] = Some(match task {
                    Some(task) => Ok((ReportOutcome::Applied(end.next), task)),
                    None => self.settle(end.id, end.event, end.report).await,
                });
            }
        }
        let mut settled = Vec::with_capacity(reports.len());
        for ((id, report), answer) in reports.iter().zip(answers) {
            settled.push(match answer {
                Some(answer) => answer,
                None => self.apply_event(*id, report.event(), Some(report)).await,
            });
        }
        Ok(settled)
    }

    /// Cancels an open task. Cancelling a cancelled task changes nothing.
    pub async fn cancel_task(&self, id: TaskId) -> Result<(ReportOutcome, Task)> {
        self.apply_event(id, TaskEvent::Cancel, None).await
    }

    async fn apply_event(
        &self,
        id: TaskId,
        event: TaskEvent,
        report: Option<&TaskReport>,
    ) -> Result<(ReportOutcome, Task)> {
        let Some((from, next)) = ending(event) else {
            return self.apply_locked(id, event, report).await;
        };
        let end = Ending {
            id,
            event,
            next,
            report,
        };
        let mut tx = self.pool.begin().await?;
        let Some(task) = finish_tasks(&mut tx, &[end], &from).await?.pop().flatten() else {
            drop(tx);
            return self.settle(id, event, report).await;
        };
        notify_cancel(&mut tx, event).await?;
        tx.commit().await?;
        Ok((ReportOutcome::Applied(next), task))
    }

    /// The answer to an ending event that matched no open task: the task is missing, or already
    /// final (a repeat, or a contradiction).
    async fn settle(
        &self,
        id: TaskId,
        event: TaskEvent,
        report: Option<&TaskReport>,
    ) -> Result<(ReportOutcome, Task)> {
        let task = self.get_task(id).await?;
        match task.state.apply(event) {
            Transition::Unchanged => Ok((ReportOutcome::Unchanged(task.state), task)),
            Transition::Refused => Ok((ReportOutcome::Refused(task.state), task)),
            Transition::To(_) => self.apply_locked(id, event, report).await,
        }
    }

    /// Applies an event under the task's row lock: one that may leave the task open (progress),
    /// or an ending one that found the task in a state it had not expected.
    async fn apply_locked(
        &self,
        id: TaskId,
        event: TaskEvent,
        report: Option<&TaskReport>,
    ) -> Result<(ReportOutcome, Task)> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query!(
            r#"select t.state, t.job_name, j.spec ->> 'repoll_interval' as repoll_interval
               from tasks t left join jobs j on j.id = t.job_id
               where t.id = $1 for update of t"#,
            id.as_uuid()
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(Error::NotFound("task"))?;
        let state: TaskState = row.state.parse().map_err(corrupt)?;
        let outcome = match state.apply(event) {
            Transition::Unchanged => ReportOutcome::Unchanged(state),
            Transition::Refused => ReportOutcome::Refused(state),
            Transition::To(next) if next.is_terminal() => {
                // The row is locked in this state: the statement that ends tasks (with the
                // callback's event) ends it from here.
                let end = Ending {
                    id,
                    event,
                    next,
                    report,
                };
                finish_tasks(&mut tx, &[end], &[state.as_str()]).await?;
                notify_cancel(&mut tx, event).await?;
                ReportOutcome::Applied(next)
            }
            Transition::To(next) => {
                if let Some(report) = report {
                    // The callback itself, instead of a state change.
                    let event = NewEvent {
                        kind: "task.callback",
                        job_name: Some(&row.job_name),
                        task_id: Some(id),
                        data: callback_event(report),
                    };
                    append_event(&mut tx, &event).await?;
                }
                // Only the re-poll interval is needed, not the whole definition.
                let repoll = row
                    .repoll_interval
                    .and_then(|text| text.parse::<Span>().ok())
                    .unwrap_or(pacer_domain::job::defaults::REPOLL_INTERVAL);
                // While a dispatch holds the claim, `next_dispatch_at` is its lease and must stay.
                sqlx::query!(
                    "update tasks set state = $2,
                         progress = coalesce($3, progress), message = coalesce($4, message),
                         last_heartbeat_at = now(), updated_at = now(),
                         next_dispatch_at = case when claim_token is null
                             then least(now() + $5::bigint * interval '1 millisecond', timeout_at)
                             else next_dispatch_at end
                     where id = $1",
                    id.as_uuid(),
                    next.as_str(),
                    report.and_then(|r| r.progress.as_ref()),
                    report.and_then(|r| r.message.as_deref()),
                    repoll.as_millis(),
                )
                .execute(&mut *tx)
                .await?;
                ReportOutcome::Applied(next)
            }
        };
        let task = select_task(&mut tx, id).await?;
        tx.commit().await?;
        Ok((outcome, task))
    }
}

/// Wakes the cancel notifiers, which tell the downstream of a cancelled task that a dispatch went
/// out to (best effort, by whichever node takes the notice); delivered when `conn`'s transaction
/// commits.
async fn notify_cancel(conn: &mut sqlx::PgConnection, event: TaskEvent) -> Result<()> {
    if event == TaskEvent::Cancel {
        sqlx::query!("select pg_notify($1, '')", CANCELS_CHANNEL)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// An event ending a task.
struct Ending<'a> {
    id: TaskId,
    event: TaskEvent,
    /// The final state it moves the task to.
    next: TaskState,
    report: Option<&'a TaskReport>,
}

/// Ends tasks in one statement (see `sql/finish_tasks.sql`); `from` is the states every one of the
/// events ends a task from, and the ids are distinct. For each, in order, the task as it ended, or
/// `None` when it was not open.
async fn finish_tasks(
    conn: &mut sqlx::PgConnection,
    ends: &[Ending<'_>],
    from: &[&str],
) -> Result<Vec<Option<Task>>> {
    let n = ends.len();
    let mut ids = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut progress = Vec::with_capacity(n);
    let mut messages = Vec::with_capacity(n);
    let mut results = Vec::with_capacity(n);
    let mut reasons = Vec::with_capacity(n);
    let mut cancels = Vec::with_capacity(n);
    let mut events = Vec::with_capacity(n);
    for end in ends {
        let report = end.report;
        ids.push(end.id.as_uuid());
        states.push(end.next.as_str());
        progress.push(report.and_then(|r| r.progress.as_ref()));
        messages.push(match end.event {
            TaskEvent::Cancel => Some("cancelled by an operator"),
            _ => report.and_then(|r| r.message.as_deref()),
        });
        results.push(report.and_then(|r| r.result.as_ref()));
        reasons.push((end.next == TaskState::Failed).then_some(FailureReason::Reported.as_str()));
        cancels.push(end.event == TaskEvent::Cancel);
        events.push(report.map(callback_event));
    }
    let rows = sqlx::query_file_as!(
        TaskRow,
        "src/sql/finish_tasks.sql",
        &ids,
        &states as &[&str],
        &progress as &[Option<&Value>],
        &messages as &[Option<&str>],
        &results as &[Option<&Value>],
        &reasons as &[Option<&str>],
        &cancels,
        from as &[&str],
        &events as &[Option<Value>],
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut finished: Vec<Option<Task>> = ends.iter().map(|_| None).collect();
    for row in rows {
        let slot = ids
            .iter()
            .position(|id| *id == row.id)
            .and_then(|i| finished.get_mut(i))
            .ok_or_else(|| corrupt("finishing tasks answered for a task it was not given"))?;
        *slot = Some(Task::try_from(row)?);
    }
    Ok(finished)
}

/// Reports written in batches: the write behind a callback [`Batcher`](crate::batch::Batcher).
#[derive(Debug)]
pub struct Reporting {
    store: Store,
}

impl Reporting {
    /// Writes reports through `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

impl BatchWrite for Reporting {
    type Item = (TaskId, TaskReport);
    type Output = Result<(ReportOutcome, Task)>;

    async fn write(&self, items: &[(TaskId, TaskReport)]) -> Result<Vec<Self::Output>> {
        self.store.report_many(items).await
    }
}

/// The states `event` ends a task from and the final state it moves them to, or `None` for an
/// event that may leave a task open.
fn ending(event: TaskEvent) -> Option<(Vec<&'static str>, TaskState)> {
    let mut from = Vec::new();
    let mut next = None;
    for state in TaskState::ALL {
        if let Transition::To(to) = state.apply(event) {
            if !to.is_terminal() || next.is_some_and(|n| n != to) {
                return None;
            }
            next = Some(to);
            from.push(state.as_str());
        }
    }
    Some((from, next?))
}

/// The `task.callback` event of a report.
fn callback_event(report: &TaskReport) -> Value {
    strip_nulls(serde_json::json!({
        "status": report.status,
        "progress": report.progress,
        "message": report.message,
        "result": report.result,
    }))
}

/// The task with this id, inside a transaction.
async fn select_task(conn: &mut sqlx::PgConnection, id: TaskId) -> Result<Task> {
    sqlx::query_file_as!(TaskRow, "src/sql/select_task.sql", id.as_uuid())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(Error::NotFound("task"))?
        .try_into()
}

/// The message a task is created for: its id (the deduplication key) and type.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FromMessage<'a> {
    pub(crate) id: &'a str,
    pub(crate) kind: &'a str,
}

/// Creates a task for a job whose overlap policy is not `allow`, inside the caller's transaction:
/// the job's row is locked first, so every creation of a task of this job (here, in firing, on
/// any node) sees the open work of the others.
pub(crate) async fn admit_task(
    tx: &mut sqlx::PgConnection,
    job: &Job,
    task: NewTask,
    claim_for: Option<(&str, Span)>,
    message: Option<FromMessage<'_>>,
) -> Result<CreatedTask> {
    let open = open_work(&mut *tx, &[job.id])
        .await?
        .remove(&job.id)
        .unwrap_or_default();
    if let Some(key) = task.idempotency_key.as_deref() {
        let existing = sqlx::query_scalar!(
            "select id from tasks where job_id = $1 and idempotency_key = $2",
            job.id,
            key,
        )
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(id) = existing {
            return Ok(CreatedTask::Existing { id: id.into() });
        }
    }
    Ok(match job.spec.overlap.admit(open.work) {
        Admission::Refuse(reason) => {
            sqlx::query!(
                "insert into skipped_runs (id, job_id, job_name, reason) values ($1, $2, $3, $4)",
                Uuid::now_v7(),
                job.id,
                job.name.as_str(),
                reason.as_str(),
            )
            .execute(&mut *tx)
            .await?;
            CreatedTask::Skipped {
                reason,
                open_task: open.running_task.map(TaskId::from),
            }
        }
        Admission::Wait => {
            insert_task(&mut *tx, job, task, None, open.running_task, message).await?
        }
        Admission::Replace => {
            // A replaced task that reached its downstream is withdrawn there too: the cancel
            // notifiers' poll finds the notice.
            sqlx::query!(
                "update tasks set state = 'cancelled', finished_at = now(), next_dispatch_at = null,
                     claim_token = null, claimed_by = null, claimed_at = null, waits_for = null,
                     message = 'cancelled: replaced by a newer run (overlap policy replace)', updated_at = now(),
                     cancel_notice_at = case when dispatched then now() end
                 where job_id = $1 and state in ('pending', 'processing')",
                job.id,
            )
            .execute(&mut *tx)
            .await?;
            insert_task(&mut *tx, job, task, claim_for, None, message).await?
        }
        Admission::Start => insert_task(&mut *tx, job, task, claim_for, None, message).await?,
    })
}

/// A task to insert, with what it is inserted for.
pub(crate) struct Insert<'a> {
    pub(crate) job: &'a Job,
    pub(crate) task: &'a NewTask,
    /// Claim it for this node, with this lease margin, when it is due now.
    pub(crate) claim_for: Option<(&'a str, Span)>,
    /// Queue it behind this open task (overlap policy `buffer_one`).
    pub(crate) waits_for: Option<Uuid>,
    pub(crate) message: Option<FromMessage<'a>>,
    /// Insert it only while the job still has this version and is not paused.
    pub(crate) version: Option<i32>,
}

/// Inserts a task (see `sql/insert_tasks.sql`), claimed for `claim_for` when due now, or queued
/// behind `waits_for`.
pub(crate) async fn insert_task(
    conn: &mut sqlx::PgConnection,
    job: &Job,
    task: NewTask,
    claim_for: Option<(&str, Span)>,
    waits_for: Option<Uuid>,
    message: Option<FromMessage<'_>>,
) -> Result<CreatedTask> {
    let insert = Insert {
        job,
        task: &task,
        claim_for,
        waits_for,
        message,
        version: None,
    };
    insert_tasks(conn, vec![insert])
        .await?
        .pop()
        .flatten()
        .ok_or(Error::NotFound("task"))
}

/// Inserts tasks in one statement (see `sql/insert_tasks.sql`). For each, in order, what came of
/// it, or `None` when it was checked against a job version that is no longer current.
pub(crate) async fn insert_tasks(
    conn: &mut sqlx::PgConnection,
    inserts: Vec<Insert<'_>>,
) -> Result<Vec<Option<CreatedTask>>> {
    let n = inserts.len();
    let mut ids = Vec::with_capacity(n);
    let mut job_ids = Vec::with_capacity(n);
    let mut job_names = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut origins = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut not_before = Vec::with_capacity(n);
    let mut deadline_ms = Vec::with_capacity(n);
    let mut timeout_ms = Vec::with_capacity(n);
    let mut nodes = Vec::with_capacity(n);
    let mut lease_ms = Vec::with_capacity(n);
    let mut waits_for = Vec::with_capacity(n);
    let mut traces = Vec::with_capacity(n);
    let mut actors = Vec::with_capacity(n);
    let mut retry_of = Vec::with_capacity(n);
    let mut message_ids = Vec::with_capacity(n);
    let mut message_types = Vec::with_capacity(n);
    for insert in &inserts {
        let (job, task) = (insert.job, &insert.task);
        ids.push(task.id.as_uuid());
        job_ids.push(job.id);
        job_names.push(job.name.as_str());
        versions.push(insert.version);
        origins.push(task.origin.as_str());
        keys.push(task.idempotency_key.as_deref());
        payloads.push(&task.payload);
        not_before.push(task.not_before);
        deadline_ms.push(job.spec.deadline.map(|d| d.as_millis()));
        timeout_ms.push(job.spec.timeout.as_millis());
        nodes.push(insert.claim_for.map(|(node, _)| node));
        lease_ms.push(
            insert
                .claim_for
                .map(|(_, margin)| margin.as_millis() + job.spec.dispatch_timeout.as_millis()),
        );
        waits_for.push(insert.waits_for);
        traces.push(task.trace_context.as_deref());
        actors.push(task.actor.as_deref());
        retry_of.push(task.retry_of.map(|id| id.as_uuid()));
        message_ids.push(insert.message.map(|m| m.id));
        message_types.push(insert.message.map(|m| m.kind));
    }
    let rows = sqlx::query_file!(
        "src/sql/insert_tasks.sql",
        &ids,
        &job_ids,
        &job_names as &[&str],
        &versions as &[Option<i32>],
        &origins as &[&str],
        &keys as &[Option<&str>],
        &payloads as &[&Value],
        &not_before as &[Option<DateTime<Utc>>],
        &deadline_ms as &[Option<i64>],
        &timeout_ms,
        &nodes as &[Option<&str>],
        &lease_ms as &[Option<i64>],
        &waits_for as &[Option<Uuid>],
        &traces as &[Option<&str>],
        &actors as &[Option<&str>],
        &retry_of as &[Option<Uuid>],
        &message_ids as &[Option<&str>],
        &message_types as &[Option<&str>],
    )
    .fetch_all(&mut *conn)
    .await?;
    if rows.len() != n {
        return Err(corrupt(
            "the task insert answered for a different number of tasks",
        ));
    }
    let mut created = Vec::with_capacity(n);
    for (insert, row) in inserts.into_iter().zip(rows) {
        if !row.current {
            created.push(None);
            continue;
        }
        let (
            Some(id),
            Some(due_at),
            Some(timeout_at),
            Some(attempt),
            Some(created_at),
            Some(updated_at),
        ) = (
            row.inserted,
            row.due_at,
            row.timeout_at,
            row.attempt,
            row.created_at,
            row.updated_at,
        )
        else {
            // An idempotent repeat. A task with the same key inserted by this same statement was
            // not visible to it: look again.
            let existing = match row.existing {
                Some(id) => Some(id),
                None => {
                    sqlx::query_scalar!(
                        "select id from tasks where job_id = $1 and idempotency_key = $2",
                        insert.job.id,
                        insert.task.idempotency_key.as_deref(),
                    )
                    .fetch_optional(&mut *conn)
                    .await?
                }
            };
            let id = existing.ok_or(Error::NotFound("task"))?;
            created.push(Some(CreatedTask::Existing { id: id.into() }));
            continue;
        };
        let Insert {
            job,
            task,
            waits_for,
            message,
            ..
        } = insert;
        let claimed = match (row.claim_token, row.claimed_at) {
            (Some(claim_token), Some(claimed_at)) => Some(Box::new(ClaimedTask {
                id: task.id,
                claim_token,
                job_name: job.name.to_string(),
                job_version: job.version,
                job: job.spec.clone(),
                state: TaskState::Pending,
                attempt,
                consecutive_failures: 0,
                payload: task.payload.clone(),
                scheduled_at: due_at,
                fire_at: due_at,
                deadline_at: row.deadline_at,
                timeout_at,
                claimed_at,
                timed_out: false,
                last_success_at: row.last_success_at,
                trace_context: task.trace_context.clone(),
                dispatch_in: std::time::Duration::ZERO,
                dispatched: true,
            })),
            _ => None,
        };
        let view = Task {
            id: task.id,
            job_name: job.name.to_string(),
            state: TaskState::Pending,
            origin: task.origin.as_str().to_owned(),
            idempotency_key: task.idempotency_key.clone(),
            payload: task.payload.clone(),
            attempt,
            created_at,
            due_at,
            trigger_id: None,
            scheduled_at: None,
            waits_for: waits_for.map(TaskId::from),
            actor: task.actor.clone(),
            retry_of: task.retry_of,
            message_id: message.map(|m| m.id.to_owned()),
            message_type: message.map(|m| m.kind.to_owned()),
            started_at: row.started_at,
            finished_at: None,
            next_dispatch_at: row.next_dispatch_at,
            deadline_at: row.deadline_at,
            timeout_at,
            claimed_by: row.claimed_by,
            overdue: row.overdue,
            progress: None,
            message: None,
            result: None,
            last_error: None,
            failure_reason: None,
            updated_at,
        };
        created.push(Some(CreatedTask::Created {
            id: id.into(),
            task: Box::new(view),
            claimed,
        }));
    }
    Ok(created)
}

/// A task for a job whose definition the caller read earlier (and may have kept), created
/// together with others in one statement by a [`Batcher`](crate::batch::Batcher) of
/// [`TaskCreation`]. The task is written only while the job still has `job.version` and is not
/// paused; the answer `None` says the job is paused, gone or changed: read it again. For a job
/// whose overlap policy is `allow` (admission under another policy needs the job read afresh).
#[derive(Debug)]
pub struct KeptTask {
    pub job: Arc<Job>,
    pub task: NewTask,
    /// Claim it for the batcher's node, with this lease margin, when it is due now.
    pub claim: Option<Span>,
}

/// Creates [`KeptTask`]s in batches for one node: the write behind a task-creation
/// [`Batcher`](crate::batch::Batcher).
#[derive(Debug)]
pub struct TaskCreation {
    store: Store,
    node: Arc<str>,
}

impl TaskCreation {
    /// Creates tasks claimed (when asked) for `node`.
    pub fn new(store: Store, node: &str) -> Self {
        Self {
            store,
            node: node.into(),
        }
    }
}

impl BatchWrite for TaskCreation {
    type Item = KeptTask;
    /// `None`: the job is paused, gone or changed; read it again.
    type Output = Option<CreatedTask>;

    async fn write(&self, items: &[KeptTask]) -> Result<Vec<Option<CreatedTask>>> {
        let inserts = items
            .iter()
            .map(|kept| Insert {
                job: &kept.job,
                task: &kept.task,
                claim_for: kept.claim.map(|margin| (&*self.node, margin)),
                waits_for: None,
                message: None,
                version: Some(kept.job.version),
            })
            .collect();
        let mut conn = self.store.batches.acquire().await?;
        insert_tasks(&mut conn, inserts).await
    }
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
