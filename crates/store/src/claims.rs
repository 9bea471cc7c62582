//! Claims: taking due tasks for dispatch, recording what each dispatch came to, and handing
//! tasks back. Every write here is fenced by the claim token read when the task was claimed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pacer_domain::dispatch::AttemptOutcome;
use pacer_domain::{
    AfterDispatch, FailureReason, JobSpec, Span, Step, Target, TaskId, TaskOutcome, TaskState,
};
use serde_json::Value;
use serde_json::value::RawValue;
use sqlx::types::Json;
use uuid::Uuid;

use crate::error::corrupt;
use crate::runs::{advance_runs, lock_runs};
use crate::{Result, Store, TASKS_DUE_CHANNEL};

/// A task claimed by this node, with what its dispatch needs.
#[derive(Debug, Clone)]
pub struct ClaimedTask {
    pub id: TaskId,
    /// Fences every write about this dispatch.
    pub claim_token: Uuid,
    pub job_name: String,
    pub job_version: i32,
    /// The job's current definition.
    pub job: JobSpec,
    pub state: TaskState,
    /// The number of this dispatch (1 for the first).
    pub attempt: i32,
    pub consecutive_failures: i32,
    /// Failures the downstream reported that were retried so far (see
    /// [`pacer_domain::dispatch::after_failed_report`]).
    pub reported_failures: i32,
    pub payload: Value,
    /// The occurrence's scheduled time, or when the task became due.
    pub scheduled_at: DateTime<Utc>,
    /// When the task was meant to be sent: `scheduled_at` plus the trigger's jitter offset (the
    /// same as `scheduled_at` without jitter). Lateness counts from here.
    pub fire_at: DateTime<Utc>,
    pub deadline_at: Option<DateTime<Utc>>,
    pub timeout_at: DateTime<Utc>,
    pub claimed_at: DateTime<Utc>,
    /// The hard timeout had passed when the task was claimed: fail it, do not dispatch.
    pub timed_out: bool,
    /// The start of the job's latest completed task.
    pub last_success_at: Option<DateTime<Utc>>,
    /// The fingerprint of the job's last completed run (see `skip_if_unchanged`).
    pub last_fingerprint: Option<String>,
    /// The W3C `traceparent` the task was created under.
    pub trace_context: Option<String>,
    /// When to dispatch, from the claim: zero for a task that was due, the time left until it
    /// is due for one claimed ahead.
    pub dispatch_in: Duration,
    /// The task may be sent: it was claimed when due, or dispatched before. A task claimed ahead
    /// is not, until [`Store::mark_dispatched`] says its claim still holds.
    pub dispatched: bool,
    /// For a child of a run (a job made of steps): what its dispatch adds.
    pub child: Option<ChildWork>,
}

/// What the dispatch of a run's child carries beyond a task's: where it sits in its run, and the
/// target of its step (a job made of steps has none of its own).
#[derive(Debug, Clone)]
pub struct ChildWork {
    pub run: TaskId,
    /// The step's index in the job's steps.
    pub step: i32,
    pub step_name: String,
    /// The child's name in a `parallel` step, its item's key in a `for_each` step, the step's
    /// name otherwise.
    pub name: String,
    /// The item of a `for_each` child.
    pub item: Option<Value>,
    /// The results of the steps before this one, by step name, written out as JSON once for
    /// every child of the step this node claims (see [`InputsCache`]).
    pub inputs: Arc<RawValue>,
    /// Where it is dispatched; `None` only when the run's stored step no longer reads.
    pub target: Option<Target>,
    /// Its step has `skip_if_unchanged`.
    pub skip_if_unchanged: bool,
}

/// What one dispatch came to, ready to record.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub decision: AfterDispatch,
    pub attempt: AttemptOutcome,
    pub node: String,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    /// The error code the downstream reported in its answer's status body.
    pub error_code: Option<String>,
    pub latency: Duration,
}

/// What recording one dispatch's outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// The task still held the claim and took the outcome.
    pub applied: bool,
    /// How the task ended, when the outcome ended it with one (`unchanged`).
    pub outcome: Option<TaskOutcome>,
}

/// Whether a write of outcomes passes over tasks another transaction holds, or waits for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Locks {
    PassOver,
    WaitFor,
}

/// A claim this node gives back unfinished.
#[derive(Debug, Clone, Copy)]
pub struct ReleasedClaim {
    pub id: TaskId,
    pub claim_token: Uuid,
    pub attempt: i32,
    pub claimed_at: DateTime<Utc>,
    /// The task is a child of a run: ending it may advance the run.
    pub in_run: bool,
}

impl ClaimedTask {
    /// The claim this dispatch holds: what fences every write about it, and what is handed back
    /// when it ends unfinished.
    pub fn claim(&self) -> ReleasedClaim {
        ReleasedClaim {
            id: self.id,
            claim_token: self.claim_token,
            attempt: self.attempt,
            claimed_at: self.claimed_at,
            in_run: self.child.is_some(),
        }
    }

    /// Whether this dispatch compares its input with the last completed run's: a task of a job
    /// with `skip_if_unchanged`, or a child of a step with it. Its body then carries
    /// `last_fingerprint`.
    pub fn skips_if_unchanged(&self) -> bool {
        match &self.child {
            Some(child) => child.skip_if_unchanged,
            None => self.job.skip_if_unchanged,
        }
    }
}

/// The task ids and claim tokens of `claims`, one vector each for `unnest`.
fn ids_and_tokens(claims: &[ReleasedClaim]) -> (Vec<Uuid>, Vec<Uuid>) {
    claims
        .iter()
        .map(|c| (c.id.as_uuid(), c.claim_token))
        .unzip()
}

/// The child part of a claimed task, when it is a child of a run.
fn child_work(
    run: Option<Uuid>,
    step: Option<i32>,
    name: Option<String>,
    item: Option<Value>,
    definition: Option<Value>,
    inputs: Arc<RawValue>,
) -> Option<ChildWork> {
    let (run, step, name) = (run?, step?, name?);
    let definition: Option<Step> = definition.and_then(|d| serde_json::from_value(d).ok());
    let target = definition
        .as_ref()
        .and_then(|d| d.child_target(&name))
        .map(|(target, _)| target.clone());
    Some(ChildWork {
        run: run.into(),
        skip_if_unchanged: definition.as_ref().is_some_and(|d| d.skip_if_unchanged),
        step,
        step_name: definition.map(|d| d.name).unwrap_or_default(),
        name,
        item,
        inputs,
        target,
    })
}

/// The most (run, step) inputs a node keeps, and the most bytes they may come to (a run's inputs
/// are at most [`pacer_domain::workflow::MAX_INPUTS_BYTES`] written out).
const INPUTS_KEPT: usize = 64;
const INPUTS_KEPT_BYTES: usize = 16 * 1024 * 1024;

/// The inputs of the steps whose children this node claimed lately, by (run, step), written out
/// once. A run's inputs for a step are written once, when the run moves to that step, and never
/// change after, so what is kept stays true; the oldest are let go first.
#[derive(Debug, Default)]
pub(crate) struct InputsCache {
    kept: VecDeque<(Uuid, i32, Arc<RawValue>)>,
    bytes: usize,
}

impl InputsCache {
    fn get(&self, run: Uuid, step: i32) -> Option<Arc<RawValue>> {
        self.kept
            .iter()
            .rev()
            .find(|(r, s, _)| *r == run && *s == step)
            .map(|(_, _, inputs)| inputs.clone())
    }

    fn put(&mut self, run: Uuid, step: i32, inputs: Arc<RawValue>) {
        if self.get(run, step).is_some() {
            return;
        }
        self.bytes += inputs.get().len();
        self.kept.push_back((run, step, inputs));
        while self.kept.len() > INPUTS_KEPT || self.bytes > INPUTS_KEPT_BYTES {
            match self.kept.pop_front() {
                Some((_, _, gone)) => self.bytes -= gone.get().len(),
                None => break,
            }
        }
    }
}

/// `null`, the inputs of a child whose run has no steps recorded.
fn no_inputs() -> Arc<RawValue> {
    Arc::from(RawValue::NULL.to_owned())
}

impl Store {
    /// The inputs of the children `wanted` (run, step) claimed, in order: from the node's
    /// cache, or read once for the runs it lacks. A run read at another step than a child's
    /// (the run moved on since the claim; the child ended meanwhile) gives its current inputs, as
    /// a claim reading them with the child would.
    async fn child_inputs(&self, wanted: &[Option<(Uuid, i32)>]) -> Result<Vec<Arc<RawValue>>> {
        let cache = || self.inputs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut found: Vec<Option<Arc<RawValue>>> = {
            let cache = cache();
            wanted
                .iter()
                .map(|w| match w {
                    Some((run, step)) => cache.get(*run, *step),
                    None => Some(no_inputs()),
                })
                .collect()
        };
        let mut missing: Vec<Uuid> = wanted
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .filter_map(|(w, _)| w.map(|(run, _)| run))
            .collect();
        if missing.is_empty() {
            return Ok(found
                .into_iter()
                .map(|f| f.unwrap_or_else(no_inputs))
                .collect());
        }
        missing.sort_unstable();
        missing.dedup();
        let rows = sqlx::query!(
            "select task_id, step, inputs from task_runs where task_id = any($1)",
            &missing,
        )
        .fetch_all(&self.pool)
        .await?;
        // Written out as the dispatch body would write the parsed value: the body is unchanged.
        let mut read = Vec::with_capacity(rows.len());
        for row in rows {
            let inputs: Arc<RawValue> =
                Arc::from(serde_json::value::to_raw_value(&row.inputs).map_err(corrupt)?);
            read.push((row.task_id, row.step, inputs));
        }
        {
            let mut cache = cache();
            for (run, step, inputs) in &read {
                cache.put(*run, *step, inputs.clone());
            }
        }
        for (w, f) in wanted.iter().zip(found.iter_mut()) {
            if f.is_none()
                && let Some((run, step)) = w
            {
                *f = read
                    .iter()
                    .find(|(r, s, _)| r == run && s == step)
                    .or_else(|| read.iter().find(|(r, _, _)| r == run))
                    .map(|(_, _, inputs)| inputs.clone());
            }
        }
        Ok(found
            .into_iter()
            .map(|f| f.unwrap_or_else(no_inputs))
            .collect())
    }

    /// Claims up to `limit` due tasks for `node`, and tasks never dispatched that are due
    /// within `ahead` (see [`ClaimedTask::dispatch_in`]). Each claim's lease is the job's
    /// dispatch timeout plus `lease_margin` from the dispatch's time; if the node has not
    /// recorded an outcome by then, the task is due again and another claimer takes it.
    pub async fn claim_due(
        &self,
        node: &str,
        limit: i64,
        lease_margin: Span,
        ahead: Span,
    ) -> Result<Vec<ClaimedTask>> {
        let rows = sqlx::query_file!(
            "src/sql/claim_due.sql",
            node,
            limit,
            lease_margin.as_millis(),
            ahead.as_millis()
        )
        .fetch_all(&self.pool)
        .await?;
        let wanted: Vec<Option<(Uuid, i32)>> = rows
            .iter()
            .map(|r| match (r.run_id, r.step) {
                (Some(run), Some(step)) => Some((run, step)),
                _ => None,
            })
            .collect();
        let inputs = self.child_inputs(&wanted).await?;
        rows.into_iter()
            .zip(inputs)
            .map(|(r, inputs)| {
                Ok(ClaimedTask {
                    id: r.id.into(),
                    claim_token: r.claim_token,
                    job_name: r.job_name,
                    job_version: r.job_version,
                    job: r.spec.0,
                    state: r.state.parse().map_err(corrupt)?,
                    attempt: r.attempt,
                    consecutive_failures: r.consecutive_failures,
                    reported_failures: r.reported_failures,
                    payload: r.payload,
                    scheduled_at: r.scheduled_at,
                    fire_at: r.fire_at,
                    deadline_at: r.deadline_at,
                    timeout_at: r.timeout_at,
                    claimed_at: r.claimed_at,
                    timed_out: r.timed_out,
                    last_success_at: r.last_success_at,
                    last_fingerprint: r.last_fingerprint,
                    trace_context: r.trace_context,
                    dispatch_in: Duration::from_millis(
                        u64::try_from(r.dispatch_in_ms).unwrap_or_default(),
                    ),
                    dispatched: r.dispatched,
                    child: child_work(r.run_id, r.step, r.child, r.item, r.step_definition, inputs),
                })
            })
            .collect()
    }

    /// Records a dispatch's outcome. Returns false when the claim was no longer held (the task
    /// ended, was cancelled or was reclaimed meanwhile): the task is then left as it is, and only
    /// the attempt is recorded.
    pub async fn record_outcome(&self, task: &ClaimedTask, outcome: &Outcome) -> Result<bool> {
        let recorded = self
            .record_outcomes(&[(task.claim(), outcome.clone())])
            .await?;
        Ok(recorded.first().is_some_and(|r| r.applied))
    }

    /// Records the outcomes of several dispatches in one statement and one commit, in order;
    /// element `i` of the result says whether dispatch `i` still held its claim (see
    /// [`Store::record_outcome`]) and how it ended its task.
    ///
    /// The statement passes over tasks another transaction holds locked (a callback batch ending
    /// them) instead of waiting with its own locks held; those are recorded after it, in a
    /// transaction that waits for their locks first. So a callback and the answer to the same
    /// dispatch never wait on each other's whole batch.
    pub async fn record_outcomes(
        &self,
        outcomes: &[(ReleasedClaim, Outcome)],
    ) -> Result<Vec<Recorded>> {
        let mut recorded = Vec::with_capacity(outcomes.len());
        let mut skipped = Vec::new();
        for (i, (row, passed_over)) in self
            .record_outcomes_once(outcomes, Locks::PassOver)
            .await?
            .into_iter()
            .enumerate()
        {
            if passed_over {
                skipped.push(i);
            }
            recorded.push(row);
        }
        if !skipped.is_empty() {
            let again: Vec<(ReleasedClaim, Outcome)> =
                skipped.iter().map(|&i| outcomes[i].clone()).collect();
            let rows = self.record_outcomes_once(&again, Locks::WaitFor).await?;
            for (i, (row, _)) in skipped.into_iter().zip(rows) {
                recorded[i] = row;
            }
        }
        Ok(recorded)
    }

    /// One statement of [`Store::record_outcomes`]; each row says whether its task was passed
    /// over, locked by another transaction (never under [`Locks::WaitFor`], which locks them all
    /// first).
    async fn record_outcomes_once(
        &self,
        outcomes: &[(ReleasedClaim, Outcome)],
        locks: Locks,
    ) -> Result<Vec<(Recorded, bool)>> {
        let n = outcomes.len();
        let mut ids = Vec::with_capacity(n);
        let mut tokens = Vec::with_capacity(n);
        let mut states = Vec::with_capacity(n);
        let mut next_ms = Vec::with_capacity(n);
        let mut failures = Vec::with_capacity(n);
        let mut reasons = Vec::with_capacity(n);
        let mut errors = Vec::with_capacity(n);
        let mut progress = Vec::with_capacity(n);
        let mut messages = Vec::with_capacity(n);
        let mut results = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut nodes = Vec::with_capacity(n);
        let mut started = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        let mut statuses = Vec::with_capacity(n);
        let mut latencies = Vec::with_capacity(n);
        let mut fingerprints = Vec::with_capacity(n);
        let mut unchanged = Vec::with_capacity(n);
        let mut codes = Vec::with_capacity(n);
        let mut reported = Vec::with_capacity(n);
        for (claim, outcome) in outcomes {
            let decision = &outcome.decision;
            let report = decision.report.as_ref();
            ids.push(claim.id.as_uuid());
            tokens.push(claim.claim_token);
            states.push(decision.state.map(TaskState::as_str));
            next_ms.push(
                decision
                    .next_dispatch_in
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            );
            failures.push(i32::try_from(decision.consecutive_failures).unwrap_or(i32::MAX));
            reasons.push(decision.failure_reason.map(FailureReason::as_str));
            // Text from a downstream's response; PostgreSQL's text cannot hold NUL.
            errors.push(
                outcome
                    .error
                    .as_deref()
                    .map(|e| e.replace('\0', "\u{fffd}")),
            );
            progress.push(report.and_then(|r| r.progress.clone()));
            messages.push(
                report
                    .and_then(|r| r.message.as_deref())
                    .map(|m| m.replace('\0', "\u{fffd}")),
            );
            results.push(report.and_then(|r| r.result.clone()));
            attempts.push(claim.attempt);
            nodes.push(outcome.node.as_str());
            started.push(claim.claimed_at);
            kinds.push(outcome.attempt.as_str());
            statuses.push(outcome.http_status.map(i32::from));
            latencies.push(i64::try_from(outcome.latency.as_millis()).unwrap_or(i64::MAX));
            fingerprints.push(report.and_then(|r| r.fingerprint.as_deref()));
            unchanged.push(report.is_some_and(|r| r.unchanged));
            codes.push(
                outcome
                    .error_code
                    .as_deref()
                    .map(|c| c.replace('\0', "\u{fffd}")),
            );
            reported.push(
                decision
                    .reported_failures
                    .map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
            );
        }
        // Outcomes that end a task may end the last open child of a run's step: their runs are
        // locked before the tasks, and advanced after them, in the same transaction (see
        // `runs.rs`). A batch that ends nothing needs neither.
        let ending: Vec<Uuid> = outcomes
            .iter()
            .filter(|(claim, outcome)| claim.in_run && outcome.decision.next_dispatch_in.is_none())
            .map(|(claim, _)| claim.id.as_uuid())
            .collect();
        // One statement, expanded twice: on its own (the common case), or in a transaction with
        // the runs it advances.
        macro_rules! record {
            ($executor:expr) => {
                sqlx::query_file!(
                    "src/sql/record_outcomes.sql",
                    &ids,
                    &tokens,
                    &states as &[Option<&str>],
                    &next_ms as &[Option<i64>],
                    &failures,
                    &reasons as &[Option<&str>],
                    &errors as &[Option<String>],
                    &progress as &[Option<Value>],
                    &messages as &[Option<String>],
                    &results as &[Option<Value>],
                    &attempts,
                    &nodes as &[&str],
                    &started,
                    &kinds as &[&str],
                    &statuses as &[Option<i32>],
                    &latencies,
                    &fingerprints as &[Option<&str>],
                    &unchanged,
                    &codes as &[Option<String>],
                    &reported as &[Option<i32>],
                )
                .fetch_all($executor)
                .await?
                .into_iter()
                .map(|r| (r.id, r.applied, r.outcome))
                .collect::<Vec<_>>()
            };
        }
        let rows = if ending.is_empty() && locks == Locks::PassOver {
            record!(&self.batches)
        } else {
            let mut tx = self.batches.begin().await?;
            // Runs before their children, as every writer locks them.
            let runs = if ending.is_empty() {
                Vec::new()
            } else {
                lock_runs(&mut tx, &ending).await?
            };
            if locks == Locks::WaitFor {
                sqlx::query!(
                    "select id from tasks where id = any($1) order by id for update",
                    &ids
                )
                .fetch_all(&mut *tx)
                .await?;
            }
            let rows = record!(&mut *tx);
            advance_runs(&mut tx, &runs).await?;
            tx.commit().await?;
            rows
        };
        // A row for each task locked, and one more for each that took its outcome.
        let mut locked = HashSet::with_capacity(n);
        let mut applied = HashMap::new();
        for (id, took, outcome) in rows {
            if took {
                let outcome: Option<TaskOutcome> =
                    outcome.map(|o| o.parse()).transpose().map_err(corrupt)?;
                applied.insert(id, outcome);
            } else {
                locked.insert(id);
            }
        }
        Ok(ids
            .iter()
            .map(|id| {
                let recorded = Recorded {
                    applied: applied.contains_key(id),
                    outcome: applied.get(id).copied().flatten(),
                };
                (recorded, !locked.contains(id))
            })
            .collect())
    }

    /// Fails a claimed task whose hard timeout has passed. Returns false when the claim was no
    /// longer held.
    pub async fn fail_timed_out(&self, task: &ClaimedTask) -> Result<bool> {
        let message = format!(
            "timed out: still open {} after it was due",
            task.job.timeout
        );
        let mut tx = self.pool.begin().await?;
        // A child or a run timing out ends a run's child or the run: see `runs.rs`.
        let runs = if task.child.is_some() || task.job.is_workflow() {
            lock_runs(&mut tx, &[task.id.as_uuid()]).await?
        } else {
            Vec::new()
        };
        let updated = sqlx::query!(
            "update tasks set state = 'failed', failure_reason = 'timed_out', last_error = $3,
                 finished_at = now(), next_dispatch_at = null,
                 claim_token = null, claimed_by = null, claimed_at = null, updated_at = now()
             where id = $1 and claim_token = $2",
            task.id.as_uuid(),
            task.claim_token,
            message,
        )
        .execute(&mut *tx)
        .await?;
        advance_runs(&mut tx, &runs).await?;
        tx.commit().await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Hands unfinished claims back so any node dispatches them at once, records their attempts
    /// as interrupted, and wakes the dispatchers. Claims no longer held are skipped.
    pub async fn release_claims(&self, node: &str, claims: &[ReleasedClaim]) -> Result<u64> {
        if claims.is_empty() {
            return Ok(0);
        }
        let (ids, tokens) = ids_and_tokens(claims);
        let attempts: Vec<i32> = claims.iter().map(|c| c.attempt).collect();
        let started: Vec<DateTime<Utc>> = claims.iter().map(|c| c.claimed_at).collect();
        let released = sqlx::query_scalar!(
            r#"
            with released as (
                -- A claim taken ahead of its time goes back due at that time, not before.
                update tasks t set claim_token = null, claimed_by = null, claimed_at = null,
                    next_dispatch_at = greatest(least(now(), t.timeout_at), t.claimed_at),
                    updated_at = now()
                from unnest($1::uuid[], $2::uuid[]) as c(id, token)
                where t.id = c.id and t.claim_token = c.token
                returning t.id
            ),
            recorded as (
                insert into task_attempts (task_id, number, node, started_at, outcome, error)
                select c.id, c.attempt, $5, c.started, 'interrupted',
                       'the node shut down before the dispatch finished'
                from unnest($1::uuid[], $3::int[], $4::timestamptz[]) as c(id, attempt, started)
                where c.id in (select id from released)
                on conflict (task_id, number) do nothing
            )
            select count(*) as "released!"
            from released, lateral (select pg_notify($6, '')) n
            "#,
            &ids,
            &tokens,
            &attempts,
            &started,
            node,
            TASKS_DUE_CHANNEL,
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(released).unwrap_or_default())
    }

    /// Hands back claims taken ahead whose dispatch was never sent (the node is shutting down):
    /// each task is as it was before the claim, due at its time, for any node to claim ahead
    /// again. Element `i` is false when claim `i` was no longer held.
    pub async fn unclaim_unsent(&self, claims: &[ReleasedClaim]) -> Result<Vec<bool>> {
        let (ids, tokens) = ids_and_tokens(claims);
        let handed: Vec<Uuid> = sqlx::query_scalar!(
            r#"with handed as (
                   update tasks t set claim_token = null, claimed_by = null, claimed_at = null,
                       attempt = t.attempt - 1, started_at = null, dispatched = false,
                       next_dispatch_at = t.claimed_at, updated_at = now()
                   from unnest($1::uuid[], $2::uuid[]) as c(id, token)
                   where t.id = c.id and t.claim_token = c.token and t.attempt = 1
                   returning t.id
               )
               select h.id as "id!" from handed h, lateral (select pg_notify($3, '')) n"#,
            &ids,
            &tokens,
            TASKS_DUE_CHANNEL,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.iter().map(|id| handed.contains(id)).collect())
    }

    /// Marks the tasks of `claims` (taken ahead of their time) as being sent, where each claim
    /// still holds: element `i` is false when claim `i` was taken away (its task was withdrawn,
    /// cancelled, ended or handed over) since it was claimed, and the task must not be sent. Once
    /// marked, a task is no longer withdrawn.
    pub async fn mark_dispatched(&self, claims: &[ReleasedClaim]) -> Result<Vec<bool>> {
        let (ids, tokens) = ids_and_tokens(claims);
        // Rows are locked in id order, as every batched writer of tasks (and a withdrawal)
        // locks them, so two such statements wait for each other instead of deadlocking.
        let marked: Vec<Uuid> = sqlx::query_scalar!(
            r#"with locked as (
                   select t.id from tasks t
                   join unnest($1::uuid[], $2::uuid[]) as c(id, token)
                     on t.id = c.id and t.claim_token = c.token
                   order by t.id for update of t
               )
               update tasks t set dispatched = true
               from locked l where t.id = l.id
               returning t.id as "id!""#,
            &ids,
            &tokens,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.iter().map(|id| marked.contains(id)).collect())
    }

    /// How long until the next claim has work (zero if it has now): until the earliest open
    /// task is due, or is within `ahead` of it when it can be claimed ahead; `None` when no task
    /// is open.
    pub async fn next_due_in(&self, ahead: Span) -> Result<Option<Duration>> {
        let seconds = sqlx::query_file_scalar!("src/sql/next_due_in.sql", ahead.as_millis())
            .fetch_one(&self.pool)
            .await?;
        Ok(seconds.map(|s| Duration::from_secs_f64(s.max(0.0))))
    }
}
