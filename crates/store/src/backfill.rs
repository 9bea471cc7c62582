//! Backfill: tasks for a trigger's past occurrences that have none, created through the same
//! occurrence key as the firing pass, so a backfill repeated, or racing the trigger itself,
//! never makes a second task for an occurrence.

use chrono::{DateTime, Utc};
use pacer_domain::TaskId;
use uuid::Uuid;

use crate::{Error, Job, Result, Store, TASKS_DUE_CHANNEL};

/// What a backfill did, or would do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backfilled {
    /// The tasks created (for a dry run: the occurrences that would get one, with no id).
    pub created: Vec<(DateTime<Utc>, Option<TaskId>)>,
    /// Occurrences that already had a task.
    pub existing: Vec<DateTime<Utc>>,
}

impl Store {
    /// Creates a task (origin `backfill`, due now) for each of `occurrences` of trigger
    /// `trigger` of `job` that has none. With `serial`, each new task waits for the one before
    /// it, so they run one after another, oldest first. With `dry_run`, nothing is written.
    pub async fn backfill(
        &self,
        job: &Job,
        trigger: Uuid,
        occurrences: &[DateTime<Utc>],
        serial: bool,
        dry_run: bool,
    ) -> Result<Backfilled> {
        let mut tx = self.pool.begin().await?;
        // The trigger row first, in the mode the tasks' foreign key checks take anyway: taken
        // only there, after the inserts waited on the firing pass's rows, the firing pass (which
        // holds the trigger `for update` while it inserts) and the backfill would each wait for
        // the other. Taken first, a firing pass in progress finishes before the backfill reads
        // what exists, and a later one passes over this trigger (`skip locked`) until the
        // backfill commits, firing it on its next pass.
        sqlx::query_scalar!(
            "select id from triggers where id = $1 and job_id = $2 for key share",
            trigger,
            job.id
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(Error::NotFound("trigger"))?;
        let existing: Vec<DateTime<Utc>> = sqlx::query_scalar!(
            r#"select scheduled_at as "scheduled_at!" from tasks
               where trigger_id = $1 and scheduled_at = any($2)"#,
            trigger,
            occurrences,
        )
        .fetch_all(&mut *tx)
        .await?;
        let missing: Vec<DateTime<Utc>> = occurrences
            .iter()
            .filter(|at| !existing.contains(at))
            .copied()
            .collect();
        if dry_run || missing.is_empty() {
            return Ok(Backfilled {
                created: missing.into_iter().map(|at| (at, None)).collect(),
                existing,
            });
        }
        let ids: Vec<Uuid> = missing.iter().map(|_| TaskId::new().as_uuid()).collect();
        let waits_for: Vec<Option<Uuid>> = if serial {
            std::iter::once(None)
                .chain(ids.iter().map(|id| Some(*id)))
                .take(ids.len())
                .collect()
        } else {
            vec![None; ids.len()]
        };
        // Racing the firing pass (or another backfill) is safe: the loser's row conflicts on
        // the occurrence key and is not inserted. Under `serial`, a row that lost would leave
        // the next one waiting for a task that does not exist; the foreign key refuses that,
        // and the whole backfill is refused as a conflict, to be sent again.
        let created = sqlx::query!(
            r#"with inserted as (
                   insert into tasks (id, job_id, job_name, origin, payload, due_at, scheduled_at,
                                      trigger_id, deadline_at, timeout_at, next_dispatch_at, waits_for,
                                      waiting)
                   select n.id, $2, $3, 'backfill', $4, now(), n.scheduled_at, $5,
                          now() + $6::bigint * interval '1 millisecond',
                          now() + $7::bigint * interval '1 millisecond',
                          case when n.waits_for is null and not $11 then now()
                               else now() + $7::bigint * interval '1 millisecond' end,
                          n.waits_for, $11
                   from unnest($1::uuid[], $8::timestamptz[], $9::uuid[])
                        as n(id, scheduled_at, waits_for)
                   on conflict (trigger_id, scheduled_at) where trigger_id is not null do nothing
                   returning id, scheduled_at
               )
               select i.id, i.scheduled_at as "scheduled_at!"
               from inserted i, lateral (select pg_notify($10, '')) n
               order by i.scheduled_at"#,
            &ids,
            job.id,
            job.name.as_str(),
            job.spec.task_payload(None),
            trigger,
            job.spec.deadline.map(|d| d.as_millis()),
            job.spec.timeout.as_millis(),
            &missing,
            &waits_for as &[Option<Uuid>],
            TASKS_DUE_CHANNEL,
            job.spec.is_limited(),
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut existing = existing;
        existing.extend(
            missing
                .iter()
                .filter(|at| !created.iter().any(|c| c.scheduled_at == **at)),
        );
        existing.sort();
        Ok(Backfilled {
            created: created
                .into_iter()
                .map(|c| (c.scheduled_at, Some(c.id.into())))
                .collect(),
            existing,
        })
    }
}
