//! Creating tasks: one at a time under the job's overlap policy, or many in one statement for jobs
//! that allow overlap (see `sql/insert_tasks.sql`), idempotent per job and key; a task due now may
//! be created already claimed by the node that asked.

use chrono::{DateTime, Utc};
use pacer_domain::firing::Admission;
use pacer_domain::{OverlapPolicy, Span, TaskId, TaskState};
use serde_json::Value;
use uuid::Uuid;

use std::sync::Arc;

use super::{CreatedTask, NewTask, Task};
use crate::batch::BatchWrite;
use crate::error::corrupt;
use crate::firing::open_work;
use crate::{ClaimedTask, Error, Job, Result, Store};

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
    let mut notify = Vec::with_capacity(n);
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
        notify.push(task.notify.as_ref());
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
        &notify as &[Option<&Value>],
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
                reported_failures: 0,
                payload: task.payload.clone(),
                scheduled_at: due_at,
                fire_at: due_at,
                deadline_at: row.deadline_at,
                timeout_at,
                claimed_at,
                timed_out: false,
                last_success_at: row.last_success_at,
                last_fingerprint: row.last_fingerprint,
                trace_context: task.trace_context.clone(),
                dispatch_in: std::time::Duration::ZERO,
                dispatched: true,
                child: None,
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
            fingerprint: None,
            outcome: None,
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
