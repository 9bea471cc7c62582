//! Operator work on tasks beyond their life cycle: force-releasing a claim known to be dead,
//! finding failed tasks still to retry, the job summary, and the notices that tell a downstream a
//! task it was sent has been cancelled.

use chrono::{DateTime, Utc};
use pacer_domain::{JobSpec, Step, Target, TaskId, TaskState};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use crate::error::corrupt;
use crate::{Error, Job, Result, Store, TASKS_DUE_CHANNEL};

/// What force-releasing a task's claim did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// The claim held by `node` was dropped; the task is due again at once.
    Released { node: String, attempt: i32 },
    /// The task holds no claim; nothing changed.
    NotClaimed(TaskState),
}

/// A failed task that has not been retried yet.
#[derive(Debug, Clone)]
pub struct RetryCandidate {
    pub id: TaskId,
    pub payload: Value,
}

/// A task of a job, as the summary shows it.
#[derive(Debug, Clone)]
pub struct TaskBrief {
    pub id: TaskId,
    pub state: TaskState,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// How a job's recent tasks went.
#[derive(Debug, Clone)]
pub struct JobStats {
    /// The finished tasks looked at (at most the window).
    pub finished: i64,
    pub completed: i64,
    pub completed_with_errors: i64,
    pub failed: i64,
    pub cancelled: i64,
    /// Start to finish, over the finished tasks that started, in milliseconds.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub pending: i64,
    pub processing: i64,
    /// When the longest-waiting pending task fell due (its `due_at`), of those due by now.
    pub oldest_pending_at: Option<DateTime<Utc>>,
    pub last_run: Option<TaskBrief>,
    pub last_success: Option<TaskBrief>,
    /// Of the completed tasks looked at, those whose input was unchanged.
    pub unchanged: i64,
    /// When the job's latest task ended with its input unchanged.
    pub last_unchanged_at: Option<DateTime<Utc>>,
    /// The fingerprint its next task's input is compared with (`skip_if_unchanged`).
    pub fingerprint: Option<JobFingerprint>,
}

/// The fingerprint of a job's last completed run, as stored.
#[derive(Debug, Clone)]
pub struct JobFingerprint {
    pub fingerprint: String,
    /// The task (or run) whose completion stored it.
    pub task: Option<TaskId>,
    pub updated_at: DateTime<Utc>,
}

/// A cancelled task whose downstream is to be told.
#[derive(Debug, Clone)]
pub struct CancelNotice {
    pub id: TaskId,
    pub job_name: String,
    /// The job's current definition; `None` when the job has been deleted since.
    pub job: Option<JobSpec>,
    /// For a child of a run, the target of its step (its job has none of its own).
    pub child_target: Option<Target>,
}

struct BriefRow {
    id: Uuid,
    state: String,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

impl TryFrom<BriefRow> for TaskBrief {
    type Error = Error;

    fn try_from(r: BriefRow) -> Result<Self> {
        Ok(Self {
            id: r.id.into(),
            state: r.state.parse().map_err(corrupt)?,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
        })
    }
}

impl Store {
    /// Drops the claim on a task, whoever holds it: the dispatch in flight is recorded as
    /// abandoned, the task is due again at once, and the dispatchers are woken. For a claim an
    /// operator knows is dead (its node hung without dying); a live dispatch that still reports
    /// finds its claim token gone and changes nothing.
    pub async fn release_task(&self, id: TaskId) -> Result<Released> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query!(
            "select state, attempt, claim_token, claimed_by, claimed_at from tasks where id = $1 for update",
            id.as_uuid()
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(Error::NotFound("task"))?;
        let (Some(_), Some(node), Some(claimed_at)) =
            (row.claim_token, row.claimed_by, row.claimed_at)
        else {
            return Ok(Released::NotClaimed(row.state.parse().map_err(corrupt)?));
        };
        sqlx::query!(
            "update tasks set claim_token = null, claimed_by = null, claimed_at = null,
                 next_dispatch_at = least(now(), timeout_at), updated_at = now()
             where id = $1",
            id.as_uuid()
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "insert into task_attempts (task_id, number, node, started_at, outcome, error)
             values ($1, $2, $3, $4, 'abandoned', 'the claim was released by an operator')
             on conflict (task_id, number) do nothing",
            id.as_uuid(),
            row.attempt,
            node,
            claimed_at,
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!("select pg_notify($1, '')", TASKS_DUE_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Released::Released {
            node,
            attempt: row.attempt,
        })
    }

    /// Up to `limit` failed tasks of `job` that no task retries yet, oldest first. The children
    /// of a run are retried with their run, never on their own.
    pub async fn failed_without_retry(&self, job: &Job, limit: i64) -> Result<Vec<RetryCandidate>> {
        Ok(sqlx::query!(
            "select t.id, t.payload from tasks t
             where t.job_name = $1 and t.state = 'failed' and t.step is null
               and not exists (select 1 from tasks r where r.retry_of = t.id)
             order by t.id limit $2",
            job.name.as_str(),
            limit,
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| RetryCandidate {
            id: r.id.into(),
            payload: r.payload,
        })
        .collect())
    }

    /// The ids of the tasks that retry `id`, oldest first.
    pub async fn retries_of(&self, id: TaskId) -> Result<Vec<TaskId>> {
        Ok(sqlx::query_scalar!(
            "select id from tasks where retry_of = $1 order by id",
            id.as_uuid()
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(TaskId::from)
        .collect())
    }

    /// How the last `window` finished tasks of `job` went, its open tasks, its latest task and
    /// its latest success. For a job made of steps these are its runs; their children are not
    /// counted.
    pub async fn job_stats(&self, job: &Job, window: i64) -> Result<JobStats> {
        let recent = sqlx::query!(
            r#"with recent as (
                   select state, outcome, started_at, finished_at from tasks
                   where job_name = $1 and finished_at is not null and step is null
                   order by id desc limit $2
               )
               select count(*) as "finished!",
                      count(*) filter (where state = 'completed') as "completed!",
                      count(*) filter (where outcome = 'unchanged') as "unchanged!",
                      count(*) filter (where state = 'completed_with_errors') as "completed_with_errors!",
                      count(*) filter (where state = 'failed') as "failed!",
                      count(*) filter (where state = 'cancelled') as "cancelled!",
                      percentile_cont(0.5) within group (
                          order by extract(epoch from finished_at - started_at) * 1000)
                          filter (where started_at is not null) as p50_ms,
                      percentile_cont(0.95) within group (
                          order by extract(epoch from finished_at - started_at) * 1000)
                          filter (where started_at is not null) as p95_ms
               from recent"#,
            job.name.as_str(),
            window,
        )
        .fetch_one(&self.pool)
        .await?;
        let open = sqlx::query!(
            r#"select count(*) filter (where state = 'pending') as "pending!",
                      count(*) filter (where state = 'processing') as "processing!",
                      min(due_at) filter (where state = 'pending' and due_at <= now())
                          as oldest_pending_at
               from tasks
               where job_id = $1 and state in ('pending', 'processing') and step is null"#,
            job.id,
        )
        .fetch_one(&self.pool)
        .await?;
        let last_run = sqlx::query_as!(
            BriefRow,
            "select id, state, created_at, started_at, finished_at from tasks
             where job_name = $1 and step is null order by id desc limit 1",
            job.name.as_str(),
        )
        .fetch_optional(&self.pool)
        .await?
        .map(TaskBrief::try_from)
        .transpose()?;
        let last_success = sqlx::query_as!(
            BriefRow,
            "select id, state, created_at, started_at, finished_at from tasks
             where job_id = $1 and state = 'completed' and step is null
             order by started_at desc limit 1",
            job.id,
        )
        .fetch_optional(&self.pool)
        .await?
        .map(TaskBrief::try_from)
        .transpose()?;
        let last_unchanged_at = sqlx::query_scalar!(
            "select finished_at from tasks
             where job_id = $1 and outcome = 'unchanged' and step is null
             order by finished_at desc limit 1",
            job.id,
        )
        .fetch_optional(&self.pool)
        .await?
        .flatten();
        let fingerprint = self.job_fingerprint(job).await?;
        Ok(JobStats {
            unchanged: recent.unchanged,
            last_unchanged_at,
            fingerprint,
            finished: recent.finished,
            completed: recent.completed,
            completed_with_errors: recent.completed_with_errors,
            failed: recent.failed,
            cancelled: recent.cancelled,
            p50_ms: recent.p50_ms,
            p95_ms: recent.p95_ms,
            pending: open.pending,
            processing: open.processing,
            oldest_pending_at: open.oldest_pending_at,
            last_run,
            last_success,
        })
    }

    /// The fingerprint of `job`'s last completed run, if it has one.
    pub async fn job_fingerprint(&self, job: &Job) -> Result<Option<JobFingerprint>> {
        Ok(sqlx::query!(
            "select fingerprint, task_id, updated_at from job_fingerprints where job_id = $1",
            job.id,
        )
        .fetch_optional(&self.pool)
        .await?
        .map(|r| JobFingerprint {
            fingerprint: r.fingerprint,
            task: r.task_id.map(TaskId::from),
            updated_at: r.updated_at,
        }))
    }

    /// Forgets the fingerprint of `job`'s last completed run, so that its next task does its work
    /// whatever its input (it is dispatched with `last_fingerprint: null`). Returns the
    /// fingerprint it forgot, if there was one.
    pub async fn reset_fingerprint(&self, job: &Job) -> Result<Option<JobFingerprint>> {
        Ok(sqlx::query!(
            "delete from job_fingerprints where job_id = $1
             returning fingerprint, task_id, updated_at",
            job.id,
        )
        .fetch_optional(&self.pool)
        .await?
        .map(|r| JobFingerprint {
            fingerprint: r.fingerprint,
            task: r.task_id.map(TaskId::from),
            updated_at: r.updated_at,
        }))
    }

    /// Takes up to `limit` cancel notices. A notice is taken once, by one node (`skip locked`),
    /// and not given back: telling the downstream is best effort.
    pub async fn take_cancel_notices(&self, limit: i64) -> Result<Vec<CancelNotice>> {
        Ok(sqlx::query!(
            r#"with taken as (
                   select id from tasks where cancel_notice_at is not null
                   order by cancel_notice_at limit $1
                   for update skip locked
               )
               update tasks t set cancel_notice_at = null
               from taken where t.id = taken.id
               returning t.id, t.job_name,
                         (select j.spec from jobs j where j.id = t.job_id) as "spec: Json<JobSpec>",
                         t.child,
                         (select r.steps -> t.step from task_runs r
                          where r.task_id = t.run_id and t.step is not null) as "step: Json<Step>""#,
            limit,
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| CancelNotice {
            id: r.id.into(),
            job_name: r.job_name,
            job: r.spec.map(|s| s.0),
            child_target: r.step.and_then(|step| {
                let child = r.child.as_deref().unwrap_or_default();
                step.0.child_target(child).map(|(target, _)| target.clone())
            }),
        })
        .collect())
    }
}
