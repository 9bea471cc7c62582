//! The state changes of a task that come from outside the dispatcher: a downstream's report
//! (callback) and an operator's cancel. Each is decided by the domain's state machine; the ones
//! that end tasks are written many to a statement (see `sql/finish_tasks.sql`).

use pacer_domain::dispatch::{ReportedFailure, after_failed_report};
use pacer_domain::{FailureReason, RetryPolicy, Span, TaskEvent, TaskId, TaskState, Transition};
use serde_json::Value;
use sqlx::types::Json;

use std::collections::HashSet;

use super::{ReportOutcome, Task, TaskReport, TaskRow, select_task, strip_nulls};
use crate::batch::BatchWrite;
use crate::error::corrupt;
use crate::events::{NewEvent, append_event};
use crate::runs::{advance_runs, lock_runs};
use crate::{CANCELS_CHANNEL, Error, Result, Store, TASKS_DUE_CHANNEL};

impl Store {
    /// Applies a downstream's report. Progress on an open task is recorded and counts as a
    /// heartbeat: the next re-poll moves to a full re-poll interval from now. Returns what the
    /// report did and the task as it stands after it.
    pub async fn report(&self, id: TaskId, report: &TaskReport) -> Result<(ReportOutcome, Task)> {
        if report.is_failure_to_weigh() {
            return self.report_failure(id, report).await;
        }
        self.apply_event(id, report.event(), Some(report)).await
    }

    /// Applies a `failed` report that names an error or asks to be retried: the job's retry
    /// policy decides (see [`after_failed_report`]) whether the task ends or waits `pending` to
    /// be dispatched again after a backoff. The attempt the report is about keeps the error code;
    /// the task's `last_error` shows it. A repeat of a report already retried for the task's
    /// current attempt changes nothing.
    async fn report_failure(
        &self,
        id: TaskId,
        report: &TaskReport,
    ) -> Result<(ReportOutcome, Task)> {
        let mut tx = self.pool.begin().await?;
        // A run's lock comes before its tasks' (see `runs.rs`): the failure may end a child.
        let runs = lock_runs(&mut tx, &[id.as_uuid()]).await?;
        let row = sqlx::query!(
            r#"select t.state, t.job_name, t.attempt, t.consecutive_failures, t.reported_failures,
                      t.reported_attempt, j.spec -> 'retry' as "retry: Json<RetryPolicy>"
               from tasks t left join jobs j on j.id = t.job_id
               where t.id = $1 for update of t"#,
            id.as_uuid()
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(Error::NotFound("task"))?;
        let state: TaskState = row.state.parse().map_err(corrupt)?;
        if state.is_terminal() {
            drop(tx);
            return self.settle(id, report.event(), Some(report)).await;
        }
        if state == TaskState::Pending && row.reported_attempt == Some(row.attempt) {
            let task = select_task(&mut tx, id).await?;
            return Ok((ReportOutcome::Unchanged(state), task));
        }
        let retry = row.retry.map(|r| r.0).unwrap_or_default();
        let decision = after_failed_report(
            u32::try_from(row.consecutive_failures).unwrap_or_default(),
            u32::try_from(row.reported_failures).unwrap_or_default(),
            &retry,
            report,
            rand::random(),
        );
        let error = report
            .error
            .as_ref()
            .map(|e| e.text().replace('\0', "\u{fffd}"));
        // The callback may come before its dispatch's answer is recorded: the attempt's row is
        // then written here, and the answer's record fills in the rest and keeps the code.
        sqlx::query!(
            "insert into task_attempts (task_id, number, node, started_at, outcome, error, error_code)
             select t.id, t.attempt, coalesce(t.claimed_by, 'unknown'), coalesce(t.claimed_at, now()),
                    'accepted', $3, $2
             from tasks t where t.id = $1 and t.attempt > 0
             on conflict (task_id, number) do update set
                 error_code = excluded.error_code, error = coalesce(excluded.error, task_attempts.error)",
            id.as_uuid(),
            report.error_code(),
            error,
        )
        .execute(&mut *tx)
        .await?;
        let outcome = match decision {
            ReportedFailure::Fail(reason) => {
                let end = Ending {
                    id,
                    event: report.event(),
                    next: TaskState::Failed,
                    report: Some(report),
                    reason: Some(reason),
                    error: error.as_deref(),
                };
                finish_tasks(&mut tx, &[end], &[state.as_str()]).await?;
                advance_runs(&mut tx, &runs).await?;
                ReportOutcome::Applied(TaskState::Failed)
            }
            ReportedFailure::Retry {
                after,
                consecutive_failures,
                reported_failures,
            } => {
                let next = match state.apply(TaskEvent::ReportedRetry) {
                    Transition::To(next) => next,
                    _ => return Err(corrupt("an open task refused a retried failure")),
                };
                let event = NewEvent {
                    kind: "task.callback",
                    job_name: Some(&row.job_name),
                    task_id: Some(id),
                    data: callback_event(report),
                };
                append_event(&mut tx, &event).await?;
                // Clearing the claim fences off a dispatch still in flight, as an ending does;
                // the task is due again after the backoff, for any node to claim.
                sqlx::query!(
                    "update tasks set state = $2,
                         next_dispatch_at = least(now() + $3::bigint * interval '1 millisecond', timeout_at),
                         consecutive_failures = $4, reported_failures = $5,
                         reported_attempt = attempt, last_error = coalesce($6, last_error),
                         progress = coalesce($7, progress), message = coalesce($8, message),
                         claim_token = null, claimed_by = null, claimed_at = null,
                         last_heartbeat_at = now(), updated_at = now()
                     where id = $1",
                    id.as_uuid(),
                    next.as_str(),
                    i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
                    i32::try_from(consecutive_failures).unwrap_or(i32::MAX),
                    i32::try_from(reported_failures).unwrap_or(i32::MAX),
                    error.as_deref(),
                    report.progress.as_ref(),
                    report.message.as_deref(),
                )
                .execute(&mut *tx)
                .await?;
                sqlx::query!("select pg_notify($1, '')", TASKS_DUE_CHANNEL)
                    .execute(&mut *tx)
                    .await?;
                ReportOutcome::Applied(next)
            }
        };
        let task = select_task(&mut tx, id).await?;
        tx.commit().await?;
        Ok((outcome, task))
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
                && !report.is_failure_to_weigh()
                && from.get_or_insert_with(|| states.clone()) == &states
                && tasks.insert(*id)
            {
                batch.push(i);
                ends.push(Ending {
                    id: *id,
                    event,
                    next,
                    report: Some(report),
                    reason: None,
                    error: None,
                });
            }
        }
        if let Some(from) = from {
            // The runs of children ending here are locked first and advanced after (see
            // `runs.rs`), in the same transaction.
            let ids: Vec<_> = ends.iter().map(|end| end.id.as_uuid()).collect();
            let mut tx = self.batches.begin().await?;
            let runs = lock_runs(&mut tx, &ids).await?;
            let finished = finish_tasks(&mut tx, &ends, &from).await?;
            advance_runs(&mut tx, &runs).await?;
            tx.commit().await?;
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
                None => self.report(*id, report).await,
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
            reason: None,
            error: None,
        };
        let mut tx = self.pool.begin().await?;
        let runs = lock_runs(&mut tx, &[id.as_uuid()]).await?;
        let Some(task) = finish_tasks(&mut tx, &[end], &from).await?.pop().flatten() else {
            drop(tx);
            return self.settle(id, event, report).await;
        };
        let runs = if event == TaskEvent::Cancel && runs.is_empty() {
            // A run cancelled while it was being started had no run to lock a moment ago; the
            // start committed first (the cancel waited for its row), so its children exist now
            // and are cancelled with it.
            lock_runs(&mut tx, &[id.as_uuid()]).await?
        } else {
            runs
        };
        advance_runs(&mut tx, &runs).await?;
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
        // A run's lock comes before its tasks' (see `runs.rs`).
        let runs = lock_runs(&mut tx, &[id.as_uuid()]).await?;
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
                    reason: None,
                    error: None,
                };
                finish_tasks(&mut tx, &[end], &[state.as_str()]).await?;
                advance_runs(&mut tx, &runs).await?;
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
    /// Why it fails, when not `reported` (the default for a `failed` report).
    reason: Option<FailureReason>,
    /// The task's `last_error`: the error the report named.
    error: Option<&'a str>,
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
    let mut fingerprints = Vec::with_capacity(n);
    let mut unchanged = Vec::with_capacity(n);
    let mut errors = Vec::with_capacity(n);
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
        reasons.push(
            (end.next == TaskState::Failed)
                .then(|| end.reason.unwrap_or(FailureReason::Reported).as_str()),
        );
        errors.push(end.error);
        cancels.push(end.event == TaskEvent::Cancel);
        events.push(report.map(callback_event));
        fingerprints.push(report.and_then(|r| r.fingerprint.as_deref()));
        unchanged.push(report.is_some_and(|r| r.unchanged));
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
        &fingerprints as &[Option<&str>],
        &unchanged,
        &errors as &[Option<&str>],
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
        "fingerprint": report.fingerprint,
        "unchanged": report.unchanged.then_some(true),
        "error": report.error,
        "retryable": report.retryable.then_some(true),
    }))
}
