//! Job definitions: create or replace, read, list, delete.

use chrono::{DateTime, Utc};
use pacer_domain::{JobName, JobSpec};
use sqlx::types::Json;
use uuid::Uuid;

use crate::concurrency::{check_step_groups, limits_changed};
use crate::error::corrupt;
use crate::{Error, Result, Store};

/// A stored job.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: Uuid,
    pub name: JobName,
    /// Grows by one each time the definition changes.
    pub version: i32,
    pub spec: JobSpec,
    /// A paused job's triggers do not fire and it takes no new tasks.
    pub paused: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// For a job with `freshness`: until when its data counts as fresh, from the start of its
    /// last completed run (or since it began watching, before any).
    pub fresh_until: Option<DateTime<Utc>>,
}

/// The result of a create-or-replace.
#[derive(Debug, Clone)]
pub struct PutJob {
    pub job: Job,
    /// True when the job did not exist before.
    pub created: bool,
}

/// The result of deleting a job.
/// One job's open tasks (see [`Store::workload`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobWorkload {
    pub job: String,
    pub pending: i64,
    pub processing: i64,
    /// When the longest-waiting pending task that is due fell due; none when no pending task is
    /// due.
    pub oldest_pending_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy)]
pub struct DeletedJob {
    /// Open tasks cancelled along with the job.
    pub cancelled_tasks: u64,
}

/// A `jobs` row as selected.
pub(crate) struct JobRow {
    pub(crate) id: Uuid,
    pub(crate) name: String,
    pub(crate) version: i32,
    pub(crate) spec: Json<JobSpec>,
    pub(crate) paused: bool,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) fresh_until: Option<DateTime<Utc>>,
}

impl TryFrom<JobRow> for Job {
    type Error = Error;

    fn try_from(row: JobRow) -> Result<Self> {
        let name = row
            .name
            .parse()
            .map_err(|_| corrupt(format!("job name {:?}", row.name)))?;
        Ok(Job {
            id: row.id,
            name,
            version: row.version,
            spec: row.spec.0,
            paused: row.paused,
            created_at: row.created_at,
            updated_at: row.updated_at,
            fresh_until: row.fresh_until,
        })
    }
}

impl Store {
    /// Creates the job or replaces its definition. Writing the same definition again changes
    /// nothing, not even the version.
    /// A job naming a concurrency group that does not exist is refused as a `Conflict` on
    /// `jobs_concurrency_group_fkey`. A change that switches the job's concurrency limits on or
    /// off brings its open tasks in line in the same transaction.
    pub async fn put_job(&self, name: &JobName, spec: &JobSpec) -> Result<PutJob> {
        let mut tx = self.pool.begin().await?;
        check_step_groups(&mut tx, spec).await?;
        let was_limited = sqlx::query_scalar!(
            "select limited from jobs where name = $1 for update",
            name.as_str()
        )
        .fetch_optional(&mut *tx)
        .await?;
        let row = sqlx::query!(
            r#"
            insert into jobs (id, name, spec, dispatch_timeout_ms, freshness_ms, fresh_since,
                              retention_ms)
            values ($1, $2, $3, $4, $5, case when $5::bigint is not null then now() end, $6)
            on conflict (name) do update set
                spec = excluded.spec,
                dispatch_timeout_ms = excluded.dispatch_timeout_ms,
                freshness_ms = excluded.freshness_ms,
                retention_ms = excluded.retention_ms,
                -- A job begins watching its freshness when the field appears; a new value keeps
                -- the start.
                fresh_since = case when excluded.freshness_ms is not null
                                   then coalesce(jobs.fresh_since, now()) end,
                version = jobs.version + (jobs.spec is distinct from excluded.spec)::int,
                updated_at = case when jobs.spec is distinct from excluded.spec
                                  then now() else jobs.updated_at end
            -- xmax is zero only on a freshly inserted row version
            returning id, name, version, spec as "spec: Json<JobSpec>", paused, created_at, updated_at,
                      (xmax = 0) as "created!",
                      case when jobs.freshness_ms is not null then
                    coalesce((select max(s.started_at) from tasks s
                              where s.job_id = jobs.id and s.state = 'completed' and s.step is null),
                             jobs.fresh_since, jobs.created_at)
                    + jobs.freshness_ms * interval '1 millisecond' end as fresh_until
            "#,
            Uuid::now_v7(),
            name.as_str(),
            Json(spec) as _,
            spec.dispatch_timeout.as_millis(),
            spec.freshness.map(|f| f.as_millis()),
            spec.retention.map(|r| r.as_millis()),
        )
        .fetch_one(&mut *tx)
        .await?;
        if was_limited.is_some_and(|was| was != spec.is_limited()) {
            limits_changed(&mut tx, row.id, spec.is_limited()).await?;
        }
        tx.commit().await?;
        let created = row.created;
        let job = Job::try_from(JobRow {
            id: row.id,
            name: row.name,
            version: row.version,
            spec: row.spec,
            paused: row.paused,
            created_at: row.created_at,
            updated_at: row.updated_at,
            fresh_until: row.fresh_until,
        })?;
        Ok(PutJob { job, created })
    }

    /// The job with this name.
    pub async fn get_job(&self, name: &JobName) -> Result<Job> {
        sqlx::query_as!(
            JobRow,
            r#"select id, name, version, spec as "spec: Json<JobSpec>", paused, created_at, updated_at,
                      case when j.freshness_ms is not null then
                    coalesce((select max(s.started_at) from tasks s
                              where s.job_id = j.id and s.state = 'completed' and s.step is null),
                             j.fresh_since, j.created_at)
                    + j.freshness_ms * interval '1 millisecond' end as fresh_until
               from jobs j where name = $1"#,
            name.as_str(),
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or(Error::NotFound("job"))?
        .try_into()
    }

    /// Jobs in name order, after `after` when paging.
    pub async fn list_jobs(&self, after: Option<&str>, limit: i64) -> Result<Vec<Job>> {
        sqlx::query_as!(
            JobRow,
            r#"select id, name, version, spec as "spec: Json<JobSpec>", paused, created_at, updated_at,
                      case when j.freshness_ms is not null then
                    coalesce((select max(s.started_at) from tasks s
                              where s.job_id = j.id and s.state = 'completed' and s.step is null),
                             j.fresh_since, j.created_at)
                    + j.freshness_ms * interval '1 millisecond' end as fresh_until
               from jobs j where ($1::text is null or name > $1) order by name limit $2"#,
            after,
            limit,
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(Job::try_from)
        .collect()
    }

    /// The start of each job's last completed run, for jobs that completed one (the gauge
    /// `pacer_job_last_success_timestamp_seconds`).
    pub async fn last_successes(&self) -> Result<Vec<(String, DateTime<Utc>)>> {
        let rows = sqlx::query!(
            r#"select j.name, s.started_at as "started_at!"
               from jobs j
               cross join lateral (
                   select started_at from tasks t
                   where t.job_id = j.id and t.state = 'completed' and t.step is null
                     and t.started_at is not null
                   order by started_at desc limit 1
               ) s"#
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.name, r.started_at)).collect())
    }

    /// Every job's open tasks: how many are pending and processing, and when the longest-waiting
    /// pending task that is due fell due (the gauges `pacer_job_tasks` and
    /// `pacer_job_oldest_pending_seconds`). One grouped scan of the open tasks through the
    /// partial index on `next_dispatch_at`, which only open tasks have.
    pub async fn workload(&self) -> Result<Vec<JobWorkload>> {
        let rows = sqlx::query!(
            r#"select j.name,
                      coalesce(o.pending, 0) as "pending!",
                      coalesce(o.processing, 0) as "processing!",
                      o.oldest_pending_at
               from jobs j
               left join (
                   select job_id,
                          count(*) filter (where state = 'pending') as pending,
                          count(*) filter (where state = 'processing') as processing,
                          min(due_at) filter (where state = 'pending' and due_at <= now())
                              as oldest_pending_at
                   from tasks
                   where next_dispatch_at is not null
                   group by job_id
               ) o on o.job_id = j.id
               order by j.name"#
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| JobWorkload {
                job: r.name,
                pending: r.pending,
                processing: r.processing,
                oldest_pending_at: r.oldest_pending_at,
            })
            .collect())
    }

    /// Deletes a job. A job with open tasks is deleted only with `cancel_open_tasks`, which
    /// cancels them in the same transaction; its finished tasks stay as history.
    pub async fn delete_job(&self, name: &JobName, cancel_open_tasks: bool) -> Result<DeletedJob> {
        let mut tx = self.pool.begin().await?;
        // The job's triggers first, then the job, in the order a firing pass takes them (it
        // locks the due triggers, then their jobs): taken the other way round, the two
        // transactions would wait for each other.
        sqlx::query!(
            "select t.id from triggers t join jobs j on j.id = t.job_id
             where j.name = $1 order by t.id for update of t",
            name.as_str()
        )
        .fetch_all(&mut *tx)
        .await?;
        // The row lock serialises against concurrent task inserts, whose foreign-key check
        // takes a share lock on the same row: either they commit first and are cancelled here,
        // or they fail on the vanished job.
        let id = sqlx::query_scalar!(
            "select id from jobs where name = $1 for update",
            name.as_str()
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(Error::NotFound("job"))?;
        let open = sqlx::query_scalar!(
            r#"select count(*) as "count!" from tasks
               where job_id = $1 and state in ('pending', 'processing')"#,
            id
        )
        .fetch_one(&mut *tx)
        .await?;
        if open > 0 && !cancel_open_tasks {
            return Err(Error::Conflict {
                constraint: "jobs_open_tasks".into(),
            });
        }
        // Rows locked in id order, as every batched writer of tasks locks them (a callback
        // ending some of these tasks meanwhile waits or is waited for, never deadlocks).
        let cancelled = sqlx::query!(
            r#"with locked as (
                   select id from tasks
                   where job_id = $1 and state in ('pending', 'processing')
                   order by id for update
               )
               update tasks t set state = 'cancelled', finished_at = now(),
                   next_dispatch_at = null, claim_token = null, claimed_by = null,
                   claimed_at = null, message = 'cancelled: the job was deleted',
                   updated_at = now()
               from locked l where t.id = l.id"#,
            id
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // The triggers go in a statement of their own, before the job: their tasks' `trigger_id`
        // is cleared by it. Left to the job's cascade, the same statement would also clear the
        // tasks' `job_id`, and the foreign-key check of a task cancelled above (changed in this
        // transaction, so checked again) would see its trigger gone before its `trigger_id`
        // was cleared.
        sqlx::query!("delete from triggers where job_id = $1", id)
            .execute(&mut *tx)
            .await?;
        sqlx::query!("delete from jobs where id = $1", id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(DeletedJob {
            cancelled_tasks: cancelled,
        })
    }
}
