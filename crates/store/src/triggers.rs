//! Triggers: create, read, replace, delete, pause and resume; and the history of skipped runs.
//! Every change notifies the firing loop, which may need to wake earlier.

use chrono::{DateTime, Utc};
use pacer_domain::{TriggerSpec, Withdrawal};
use sqlx::types::Json;
use uuid::Uuid;

use crate::withdrawal::{Scope, withdraw_fired_ahead};
use crate::{Error, Job, Result, Store, TRIGGERS_CHANNEL};

/// A stored trigger.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub id: Uuid,
    pub job_name: String,
    pub spec: TriggerSpec,
    pub paused: bool,
    /// Null once the trigger will never fire again.
    pub next_fire_at: Option<DateTime<Utc>>,
    pub last_fired_at: Option<DateTime<Utc>>,
    pub skip_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A run that got no task.
#[derive(Debug, Clone)]
pub struct SkippedRun {
    pub id: Uuid,
    pub job_name: String,
    pub trigger_id: Option<Uuid>,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub reason: String,
    /// For reason `calendar`, the calendar that excluded the occurrence.
    pub detail: Option<String>,
    pub recorded_at: DateTime<Utc>,
}

struct TriggerRow {
    id: Uuid,
    job_name: String,
    spec: Json<TriggerSpec>,
    paused: bool,
    next_fire_at: Option<DateTime<Utc>>,
    last_fired_at: Option<DateTime<Utc>>,
    skip_count: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<TriggerRow> for Trigger {
    fn from(r: TriggerRow) -> Self {
        Self {
            id: r.id,
            job_name: r.job_name,
            spec: r.spec.0,
            paused: r.paused,
            next_fire_at: r.next_fire_at,
            last_fired_at: r.last_fired_at,
            skip_count: r.skip_count,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

impl Store {
    /// The database clock, for computing fire times.
    pub async fn now(&self) -> Result<DateTime<Utc>> {
        Ok(sqlx::query_scalar!(r#"select now() as "now!""#)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Adds a trigger to `job`, first firing at `next_fire_at`.
    pub async fn create_trigger(
        &self,
        job: &Job,
        spec: &TriggerSpec,
        next_fire_at: Option<DateTime<Utc>>,
    ) -> Result<Trigger> {
        let row = sqlx::query_as!(
            TriggerRow,
            r#"with created as (
                   insert into triggers (id, job_id, spec, next_fire_at) values ($1, $2, $3, $4)
                   returning *
               )
               select c.id, $5::text as "job_name!", c.spec as "spec: Json<TriggerSpec>", c.paused,
                      c.next_fire_at, c.last_fired_at, c.skip_count, c.created_at, c.updated_at
               from created c, lateral (select pg_notify($6, '')) n"#,
            Uuid::now_v7(),
            job.id,
            Json(spec) as _,
            next_fire_at,
            job.name.as_str(),
            TRIGGERS_CHANNEL,
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.into())
    }

    /// Adds many triggers to `job` in one statement (each with its first fire time), in the
    /// order given; the firing loop is woken once.
    pub async fn create_triggers(
        &self,
        job: &Job,
        triggers: &[(TriggerSpec, Option<DateTime<Utc>>)],
    ) -> Result<Vec<Trigger>> {
        let ids: Vec<Uuid> = triggers.iter().map(|_| Uuid::now_v7()).collect();
        let specs: Vec<Json<&TriggerSpec>> = triggers.iter().map(|(spec, _)| Json(spec)).collect();
        let first: Vec<Option<DateTime<Utc>>> = triggers.iter().map(|(_, at)| *at).collect();
        let rows = sqlx::query_as!(
            TriggerRow,
            r#"with created as (
                   insert into triggers (id, job_id, spec, next_fire_at)
                   select n.id, $2, n.spec, n.next_fire_at
                   from unnest($1::uuid[], $3::jsonb[], $4::timestamptz[]) as n(id, spec, next_fire_at)
                   returning *
               ),
               notified as (select pg_notify($6, ''))
               select c.id, $5::text as "job_name!", c.spec as "spec: Json<TriggerSpec>", c.paused,
                      c.next_fire_at, c.last_fired_at, c.skip_count, c.created_at, c.updated_at
               from created c cross join notified
               order by c.id"#,
            &ids,
            job.id,
            &specs as &[Json<&TriggerSpec>],
            &first as &[Option<DateTime<Utc>>],
            job.name.as_str(),
            TRIGGERS_CHANNEL,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Trigger::from).collect())
    }

    /// The triggers of `job`, oldest first.
    pub async fn list_triggers(&self, job: &Job) -> Result<Vec<Trigger>> {
        let rows = sqlx::query_as!(
            TriggerRow,
            r#"select t.id, $2::text as "job_name!", t.spec as "spec: Json<TriggerSpec>", t.paused,
                      t.next_fire_at, t.last_fired_at, t.skip_count, t.created_at, t.updated_at
               from triggers t where t.job_id = $1 order by t.id"#,
            job.id,
            job.name.as_str(),
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Trigger::from).collect())
    }

    /// A page of `job`'s triggers in id order: at most `limit`, after the trigger `after`.
    pub async fn list_triggers_page(
        &self,
        job: &Job,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<Trigger>> {
        let rows = sqlx::query_as!(
            TriggerRow,
            r#"select t.id, $2::text as "job_name!", t.spec as "spec: Json<TriggerSpec>", t.paused,
                      t.next_fire_at, t.last_fired_at, t.skip_count, t.created_at, t.updated_at
               from triggers t
               where t.job_id = $1 and ($3::uuid is null or t.id > $3)
               order by t.id limit $4"#,
            job.id,
            job.name.as_str(),
            after,
            limit,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Trigger::from).collect())
    }

    /// One trigger of `job`.
    pub async fn get_trigger(&self, job: &Job, id: Uuid) -> Result<Trigger> {
        self.list_triggers(job)
            .await?
            .into_iter()
            .find(|t| t.id == id)
            .ok_or(Error::NotFound("trigger"))
    }

    /// Replaces a trigger's definition and its next fire time.
    pub async fn replace_trigger(
        &self,
        job: &Job,
        id: Uuid,
        spec: &TriggerSpec,
        next_fire_at: Option<DateTime<Utc>>,
    ) -> Result<Trigger> {
        let updated = sqlx::query_scalar!(
            r#"with updated as (
                   update triggers set spec = $3, next_fire_at = case when paused then next_fire_at else $4 end,
                       updated_at = now()
                   where id = $1 and job_id = $2 returning id
               )
               select count(*) as "count!" from updated, lateral (select pg_notify($5, '')) n"#,
            id,
            job.id,
            Json(spec) as _,
            next_fire_at,
            TRIGGERS_CHANNEL,
        )
        .fetch_one(&self.pool)
        .await?;
        self.updated_trigger(job, id, updated).await
    }

    /// The trigger after an update that matched `updated` rows.
    async fn updated_trigger(&self, job: &Job, id: Uuid, updated: i64) -> Result<Trigger> {
        if updated == 0 {
            return Err(Error::NotFound("trigger"));
        }
        self.get_trigger(job, id).await
    }

    /// Deletes a trigger. Tasks it created stay, but those fired ahead of their time and not yet
    /// sent are withdrawn with it.
    pub async fn delete_trigger(&self, job: &Job, id: Uuid) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // Withdrawn first: the tasks still name the trigger until it is gone.
        withdraw_fired_ahead(&mut tx, Scope::Trigger(id), Withdrawal::TriggerDeleted).await?;
        let deleted = sqlx::query!(
            "delete from triggers where id = $1 and job_id = $2",
            id,
            job.id
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if deleted == 0 {
            return Err(Error::NotFound("trigger"));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Pauses a trigger, withdrawing the tasks it fired ahead that were not sent yet, or resumes
    /// it to fire next at `next_fire_at` (occurrences while paused are not wanted, so the caller
    /// computes it from now).
    pub async fn set_trigger_paused(
        &self,
        job: &Job,
        id: Uuid,
        paused: bool,
        next_fire_at: Option<DateTime<Utc>>,
    ) -> Result<Trigger> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query_scalar!(
            r#"with updated as (
                   update triggers set paused = $3,
                       next_fire_at = case when $3 or paused = $3 then next_fire_at else $4 end,
                       updated_at = now()
                   where id = $1 and job_id = $2 returning id
               )
               select count(*) as "count!" from updated, lateral (select pg_notify($5, '')) n"#,
            id,
            job.id,
            paused,
            next_fire_at,
            TRIGGERS_CHANNEL,
        )
        .fetch_one(&mut *tx)
        .await?;
        if paused && updated > 0 {
            withdraw_fired_ahead(&mut tx, Scope::Trigger(id), Withdrawal::TriggerPaused).await?;
        }
        tx.commit().await?;
        self.updated_trigger(job, id, updated).await
    }

    /// Pauses a job (its triggers do not fire, it takes no new tasks, and the tasks its triggers
    /// fired ahead that were not sent yet are withdrawn) or resumes it, moving each trigger's next
    /// fire time to the given one (computed from now by the caller).
    pub async fn set_job_paused(
        &self,
        job: &Job,
        paused: bool,
        next_fire: &[(Uuid, Option<DateTime<Utc>>)],
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // The firing loop locks the triggers it fires, then (for some jobs) the job: locking in
        // the same order waits for a firing pass that read the job as running to commit its
        // tasks, which a pause then withdraws too, and never deadlocks with one.
        sqlx::query!(
            "select id from triggers where job_id = $1 order by id for update",
            job.id
        )
        .fetch_all(&mut *tx)
        .await?;
        let was_paused =
            sqlx::query_scalar!("select paused from jobs where id = $1 for update", job.id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(Error::NotFound("job"))?;
        if was_paused == paused {
            return Ok(());
        }
        sqlx::query!("update jobs set paused = $2 where id = $1", job.id, paused)
            .execute(&mut *tx)
            .await?;
        if paused {
            withdraw_fired_ahead(&mut tx, Scope::Job(job.id), Withdrawal::JobPaused).await?;
        } else {
            let ids: Vec<Uuid> = next_fire.iter().map(|(id, _)| *id).collect();
            let times: Vec<Option<DateTime<Utc>>> = next_fire.iter().map(|(_, at)| *at).collect();
            sqlx::query!(
                "update triggers t set next_fire_at = n.at, updated_at = now()
                 from unnest($1::uuid[], $2::timestamptz[]) as n(id, at)
                 where t.id = n.id and t.job_id = $3 and not t.paused",
                &ids,
                &times as &[Option<DateTime<Utc>>],
                job.id,
            )
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query!("select pg_notify($1, '')", TRIGGERS_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether `job` is paused.
    pub async fn job_paused(&self, job: &Job) -> Result<bool> {
        sqlx::query_scalar!("select paused from jobs where id = $1", job.id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(Error::NotFound("job"))
    }

    /// Skipped runs newest first, optionally of one job, one trigger or one reason; `before` is
    /// the cursor.
    pub async fn list_skipped_runs(
        &self,
        job: Option<&str>,
        trigger: Option<Uuid>,
        reason: Option<&str>,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<SkippedRun>> {
        Ok(sqlx::query_as!(
            SkippedRun,
            "select id, job_name, trigger_id, scheduled_at, reason, detail, recorded_at from skipped_runs
             where ($1::text is null or job_name = $1) and ($2::uuid is null or trigger_id = $2)
               and ($3::text is null or reason = $3) and ($4::uuid is null or id < $4)
             order by id desc limit $5",
            job,
            trigger,
            reason,
            before,
            limit,
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
