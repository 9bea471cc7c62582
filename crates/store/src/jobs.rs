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
}

/// The result of a create-or-replace.
#[derive(Debug, Clone)]
pub struct PutJob {
    pub job: Job,
    /// True when the job did not exist before.
    pub created: bool,
}

/// The result of deleting a job.
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
            insert into jobs (id, name, spec, dispatch_timeout_ms)
            values ($1, $2, $3, $4)
            on conflict (name) do update set
                spec = excluded.spec,
                dispatch_timeout_ms = excluded.dispatch_timeout_ms,
                version = jobs.version + (jobs.spec is distinct from excluded.spec)::int,
                updated_at = case when jobs.spec is distinct from excluded.spec
                                  then now() else jobs.updated_at end
            -- xmax is zero only on a freshly inserted row version
            returning id, name, version, spec as "spec: Json<JobSpec>", paused, created_at, updated_at,
                      (xmax = 0) as "created!"
            "#,
            Uuid::now_v7(),
            name.as_str(),
            Json(spec) as _,
            spec.dispatch_timeout.as_millis(),
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
        })?;
        Ok(PutJob { job, created })
    }

    /// The job with this name.
    pub async fn get_job(&self, name: &JobName) -> Result<Job> {
        sqlx::query_as!(
            JobRow,
            r#"select id, name, version, spec as "spec: Json<JobSpec>", paused, created_at, updated_at
               from jobs where name = $1"#,
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
            r#"select id, name, version, spec as "spec: Json<JobSpec>", paused, created_at, updated_at
               from jobs where ($1::text is null or name > $1) order by name limit $2"#,
            after,
            limit,
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(Job::try_from)
        .collect()
    }

    /// Deletes a job. A job with open tasks is deleted only with `cancel_open_tasks`, which
    /// cancels them in the same transaction; its finished tasks stay as history.
    pub async fn delete_job(&self, name: &JobName, cancel_open_tasks: bool) -> Result<DeletedJob> {
        let mut tx = self.pool.begin().await?;
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
        let cancelled = sqlx::query!(
            r#"update tasks set state = 'cancelled', finished_at = now(), next_dispatch_at = null,
                   claim_token = null, claimed_by = null, claimed_at = null,
                   message = 'cancelled: the job was deleted', updated_at = now()
               where job_id = $1 and state in ('pending', 'processing')"#,
            id
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query!("delete from jobs where id = $1", id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(DeletedJob {
            cancelled_tasks: cancelled,
        })
    }
}
