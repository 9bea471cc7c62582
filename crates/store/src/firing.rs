//! Firing: the leader turns due occurrences into tasks (or recorded skips) and advances each
//! trigger, all in one transaction fenced by the leader's term. Also the leader's sweep.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use pacer_domain::firing::{Admission, OpenWork, plan_excluding};
use pacer_domain::{Calendars, JobSpec, OverlapPolicy, SkipReason, Span, TaskId, TriggerSpec};
use sqlx::types::Json;
use uuid::Uuid;

use crate::calendars::load_calendars;
use crate::{Result, Store, TASKS_DUE_CHANNEL};

/// What one firing pass did.
#[derive(Debug, Clone, PartialEq)]
pub enum Fired {
    /// The term is no longer the lease's: nothing was written.
    Fenced,
    /// The scheduler is in standby: nothing fires.
    Standby,
    /// This many triggers were due; they created `tasks` tasks and recorded `skips` skips.
    Done {
        triggers: usize,
        tasks: usize,
        skips: usize,
        /// How late each created task was: created − fire time (the scheduled time plus any
        /// jitter), in seconds (database clock); negative for a task fired ahead.
        lateness: Vec<f64>,
        /// The skips by reason.
        skip_reasons: Vec<(SkipReason, usize)>,
    },
}

/// What the sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Swept {
    /// Claims of dead or stopped nodes made due again at once.
    pub orphaned_claims: u64,
    /// Tasks queued under `buffer_one` released because the task they waited for finished.
    pub released: u64,
}

struct DueTrigger {
    id: Uuid,
    job_id: Uuid,
    job_name: String,
    spec: TriggerSpec,
    job: JobSpec,
    next_fire_at: DateTime<Utc>,
}

/// Columns of the tasks a pass creates, one vector per column for `unnest`.
#[derive(Default)]
struct NewTasks {
    ids: Vec<Uuid>,
    job_ids: Vec<Uuid>,
    job_names: Vec<String>,
    trigger_ids: Vec<Uuid>,
    scheduled: Vec<DateTime<Utc>>,
    /// The jittered fire time, or null when it is the scheduled time.
    fire_at: Vec<Option<DateTime<Utc>>>,
    payloads: Vec<serde_json::Value>,
    deadline_ms: Vec<Option<i64>>,
    timeout_ms: Vec<i64>,
    waits_for: Vec<Option<Uuid>>,
    /// The job has concurrency limits: the task waits for a slot.
    waiting: Vec<bool>,
}

#[derive(Default)]
struct Skips {
    ids: Vec<Uuid>,
    job_ids: Vec<Uuid>,
    job_names: Vec<String>,
    trigger_ids: Vec<Uuid>,
    scheduled: Vec<DateTime<Utc>>,
    reasons: Vec<SkipReason>,
    /// The excluding calendar of a `calendar` skip.
    details: Vec<Option<String>>,
}

impl Skips {
    fn push(&mut self, trigger: &DueTrigger, at: DateTime<Utc>, reason: SkipReason) {
        self.push_detailed(trigger, at, reason, None);
    }

    fn push_detailed(
        &mut self,
        trigger: &DueTrigger,
        at: DateTime<Utc>,
        reason: SkipReason,
        detail: Option<String>,
    ) {
        self.details.push(detail);
        self.ids.push(Uuid::now_v7());
        self.job_ids.push(trigger.job_id);
        self.job_names.push(trigger.job_name.clone());
        self.trigger_ids.push(trigger.id);
        self.scheduled.push(at);
        self.reasons.push(reason);
    }
}

/// The open work of a job, and one running task a queued task can wait for.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Open {
    pub(crate) work: OpenWork,
    pub(crate) running_task: Option<Uuid>,
}

/// The open work of `jobs` (sorted, distinct), read under the job rows' locks so that firing and
/// task creation through the API, on any node, serialise per job.
pub(crate) async fn open_work(
    conn: &mut sqlx::PgConnection,
    jobs: &[Uuid],
) -> Result<HashMap<Uuid, Open>> {
    if jobs.is_empty() {
        return Ok(HashMap::new());
    }
    sqlx::query!(
        "select id from jobs where id = any($1) order by id for update",
        jobs
    )
    .fetch_all(&mut *conn)
    .await?;
    let rows = sqlx::query!(
        r#"select job_id as "job_id!",
                  count(*) filter (where waits_for is null) as "running!",
                  count(*) filter (where waits_for is not null) as "waiting!",
                  max(id::text) filter (where waits_for is null) as running_task
           from tasks where job_id = any($1) and state in ('pending', 'processing')
             -- A run's children are the run's work, not the job's: the run stands for them.
             and step is null
           group by job_id"#,
        jobs,
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let open = Open {
                work: OpenWork {
                    running: r.running > 0,
                    waiting: r.waiting > 0,
                },
                running_task: r.running_task.and_then(|id| id.parse().ok()),
            };
            (r.job_id, open)
        })
        .collect())
}

impl Store {
    /// Fires up to `limit` due triggers as leader `node` under `term`. The occurrences of jobs
    /// that allow overlap are fired up to `ahead` before they are due: their tasks are created
    /// due at the scheduled time, so a node can claim them early and dispatch them on the dot.
    /// Other jobs fire when due, so that their overlap decision sees the open work of that time.
    pub async fn fire_due(&self, node: &str, term: i64, limit: i64, ahead: Span) -> Result<Fired> {
        let ahead_ms = ahead.as_millis();
        // A plain read first: with nothing due, an idle leader takes no lock and writes nothing.
        let due_now = sqlx::query_scalar!(
            r#"select exists (select 1 from triggers
                              where next_fire_at <= now() + $1::bigint * interval '1 millisecond'
                                and not paused) as "due!""#,
            ahead_ms,
        )
        .fetch_one(&self.pool)
        .await?;
        if !due_now {
            return Ok(Fired::Done {
                triggers: 0,
                tasks: 0,
                skips: 0,
                lateness: vec![],
                skip_reasons: vec![],
            });
        }
        let mut tx = self.pool.begin().await?;
        // Fencing: the share lock on the lease row lasts until commit, so no other node can take
        // the lease over meanwhile, and a stale term or an expired lease finds no row at all.
        let now = sqlx::query_scalar!(
            r#"select now() as "now!" from leader_lease
               where id and holder = $1 and term = $2 and expires_at > clock_timestamp() for share"#,
            node,
            term,
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(now) = now else {
            return Ok(Fired::Fenced);
        };
        // Shared, so a standby waits for this pass, and then withdraws what it fired ahead.
        if sqlx::query_scalar!("select paused from scheduler_state where id for share")
            .fetch_one(&mut *tx)
            .await?
        {
            return Ok(Fired::Standby);
        }
        // `skip locked` only matters if two leaders overlapped, which fencing rules out; it keeps a
        // pass from ever waiting on a trigger row an API call is updating.
        let due: Vec<DueTrigger> = sqlx::query!(
            r#"select t.id, t.job_id, j.name as job_name, t.spec as "spec: Json<TriggerSpec>",
                      j.spec as "job: Json<JobSpec>", t.next_fire_at as "next_fire_at!"
               from triggers t join jobs j on j.id = t.job_id
               where t.next_fire_at <= now() + $2::bigint * interval '1 millisecond'
                 and (t.next_fire_at <= now() or coalesce(j.spec->>'overlap', 'allow') = 'allow')
                 and not t.paused and not j.paused
               order by t.next_fire_at limit $1
               for update of t skip locked"#,
            limit,
            ahead_ms,
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| DueTrigger {
            id: r.id,
            job_id: r.job_id,
            job_name: r.job_name,
            spec: r.spec.0,
            job: r.job.0,
            next_fire_at: r.next_fire_at,
        })
        .collect();
        if due.is_empty() {
            return Ok(Fired::Done {
                triggers: 0,
                tasks: 0,
                skips: 0,
                lateness: vec![],
                skip_reasons: vec![],
            });
        }

        let mut guarded: Vec<Uuid> = due
            .iter()
            .filter(|t| t.job.overlap != OverlapPolicy::Allow)
            .map(|t| t.job_id)
            .collect();
        guarded.sort();
        guarded.dedup();
        let mut open = open_work(&mut tx, &guarded).await?;
        // Read in this transaction: a calendar changed before it holds for every occurrence
        // this pass fires.
        let calendars = if due.iter().any(|t| !t.spec.calendars.is_empty()) {
            load_calendars(&mut tx).await?
        } else {
            Calendars::new()
        };
        let horizon = now + chrono::Duration::milliseconds(ahead_ms);
        let mut tasks = NewTasks::default();
        let mut skips = Skips::default();
        let mut replace_jobs = Vec::new();
        let (mut trigger_ids, mut next_fire, mut fired_any, mut skip_counts) =
            (vec![], vec![], vec![], vec![]);
        for trigger in &due {
            let skips_before = skips.ids.len();
            let tasks_before = tasks.ids.len();
            let planned = match trigger.spec.timetable() {
                Ok(timetable) => plan_excluding(
                    trigger.next_fire_at,
                    now,
                    if trigger.job.overlap == OverlapPolicy::Allow {
                        horizon
                    } else {
                        now
                    },
                    trigger.spec.misfire_rule(),
                    |at| timetable.next_after(at),
                    |at| {
                        calendars
                            .excluded_by(&trigger.spec.calendars, at)
                            .map(str::to_owned)
                    },
                ),
                Err(error) => {
                    // Validated on write, so only a hand-edited row lands here: stop it firing.
                    tracing::error!(trigger.id = %trigger.id, %error, "trigger has an invalid schedule; disabling it");
                    pacer_domain::firing::Plan {
                        fire: vec![],
                        skip: vec![],
                        excluded: vec![],
                        next_fire_at: None,
                    }
                }
            };
            for (at, reason) in &planned.skip {
                skips.push(trigger, *at, *reason);
            }
            for (at, calendar) in planned.excluded {
                skips.push_detailed(trigger, at, SkipReason::Calendar, Some(calendar));
            }
            let job_open = open.entry(trigger.job_id).or_default();
            for at in planned.fire {
                let admission = trigger.job.overlap.admit(job_open.work);
                job_open.work = trigger.job.overlap.after(job_open.work, admission);
                let waits_for = match admission {
                    Admission::Refuse(reason) => {
                        skips.push(trigger, at, reason);
                        continue;
                    }
                    Admission::Replace => {
                        replace_jobs.push(trigger.job_id);
                        None
                    }
                    Admission::Wait => job_open.running_task,
                    Admission::Start => None,
                };
                let id = TaskId::new().as_uuid();
                if waits_for.is_none() {
                    job_open.running_task = Some(id);
                }
                tasks.ids.push(id);
                tasks.job_ids.push(trigger.job_id);
                tasks.job_names.push(trigger.job_name.clone());
                tasks.trigger_ids.push(trigger.id);
                tasks.scheduled.push(at);
                let fire_at = trigger.spec.fire_at(trigger.id, at);
                tasks.fire_at.push((fire_at != at).then_some(fire_at));
                tasks.payloads.push(trigger.job.task_payload(None));
                tasks
                    .deadline_ms
                    .push(trigger.job.deadline.map(|d| d.as_millis()));
                tasks.timeout_ms.push(trigger.job.timeout.as_millis());
                tasks.waits_for.push(waits_for);
                tasks.waiting.push(trigger.job.is_limited());
            }
            trigger_ids.push(trigger.id);
            next_fire.push(planned.next_fire_at);
            fired_any.push(tasks.ids.len() > tasks_before);
            skip_counts.push(i64::try_from(skips.ids.len() - skips_before).unwrap_or(i64::MAX));
        }

        if !replace_jobs.is_empty() {
            // Replace cancels what was open before this pass; tasks created below are new. A
            // cancelled task that reached its downstream is withdrawn there (cancel notice).
            sqlx::query!(
                "update tasks set state = 'cancelled', finished_at = now(), next_dispatch_at = null,
                     claim_token = null, claimed_by = null, claimed_at = null, waits_for = null,
                     message = 'cancelled: replaced by a newer run (overlap policy replace)', updated_at = now(),
                         cancel_notice_at = case when dispatched then now() end
                 where job_id = any($1) and state in ('pending', 'processing')",
                &replace_jobs,
            )
            .execute(&mut *tx)
            .await?;
        }
        let created = sqlx::query_scalar!(
            r#"with inserted as (
                   insert into tasks (id, job_id, job_name, origin, payload, due_at, scheduled_at,
                                      trigger_id, fired_term, deadline_at, timeout_at,
                                      next_dispatch_at, waits_for, fire_at, waiting)
                   select n.id, n.job_id, n.job_name, 'trigger', n.payload, d.due_at, n.scheduled_at,
                          n.trigger_id, $10, d.due_at + n.deadline_ms * interval '1 millisecond',
                          d.due_at + n.timeout_ms * interval '1 millisecond',
                          case when n.waits_for is null and not n.waiting then d.due_at
                               else d.due_at + n.timeout_ms * interval '1 millisecond' end,
                          n.waits_for, n.fire_at, n.waiting
                   -- A task fired ahead is due at its (jittered) fire time; any other at once.
                   -- One of a job with concurrency limits waits for a slot from then.
                   from unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::timestamptz[],
                               $6::jsonb[], $7::bigint[], $8::bigint[], $9::uuid[], $12::timestamptz[],
                               $13::bool[])
                        as n(id, job_id, job_name, trigger_id, scheduled_at, payload, deadline_ms, timeout_ms, waits_for, fire_at, waiting),
                        lateral (select greatest(now(), coalesce(n.fire_at, n.scheduled_at)) as due_at) d
                   on conflict (trigger_id, scheduled_at) where trigger_id is not null do nothing
                   returning waits_for,
                             extract(epoch from now() - coalesce(fire_at, scheduled_at))::float8 as lateness
               )
               select coalesce(array_agg(inserted.lateness), '{}') as "lateness!: Vec<f64>"
               from inserted
               cross join lateral (
                   select case when inserted.waits_for is null then pg_notify($11, '') end
               ) n"#,
            &tasks.ids,
            &tasks.job_ids,
            &tasks.job_names,
            &tasks.trigger_ids,
            &tasks.scheduled,
            &tasks.payloads,
            &tasks.deadline_ms as &[Option<i64>],
            &tasks.timeout_ms,
            &tasks.waits_for as &[Option<Uuid>],
            term,
            TASKS_DUE_CHANNEL,
            &tasks.fire_at as &[Option<DateTime<Utc>>],
            &tasks.waiting,
        )
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query!(
            // A calendar's exclusion is wanted, not missed: recorded and counted, but already
            // `noticed`, so it raises no `missed` alert.
            "insert into skipped_runs (id, job_id, job_name, trigger_id, scheduled_at, reason, fired_term, detail, noticed)
             select s.id, s.job_id, s.job_name, s.trigger_id, s.scheduled_at, s.reason, $7, s.detail,
                    s.reason = 'calendar'
             from unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::timestamptz[], $6::text[], $8::text[])
                  as s(id, job_id, job_name, trigger_id, scheduled_at, reason, detail)
             on conflict on constraint skipped_runs_occurrence_key do nothing",
            &skips.ids,
            &skips.job_ids,
            &skips.job_names,
            &skips.trigger_ids,
            &skips.scheduled,
            &skips.reasons.iter().map(|r| r.as_str().to_owned()).collect::<Vec<_>>(),
            term,
            &skips.details as &[Option<String>],
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "update triggers t set next_fire_at = n.next_fire_at,
                 last_fired_at = case when n.fired then now() else t.last_fired_at end,
                 skip_count = t.skip_count + n.skips
             from unnest($1::uuid[], $2::timestamptz[], $3::bool[], $4::bigint[])
                  as n(id, next_fire_at, fired, skips)
             where t.id = n.id",
            &trigger_ids,
            &next_fire as &[Option<DateTime<Utc>>],
            &fired_any,
            &skip_counts,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut skip_reasons: Vec<(SkipReason, usize)> = Vec::new();
        for reason in &skips.reasons {
            match skip_reasons.iter_mut().find(|(r, _)| r == reason) {
                Some((_, count)) => *count += 1,
                None => skip_reasons.push((*reason, 1)),
            }
        }
        Ok(Fired::Done {
            triggers: due.len(),
            tasks: created.len(),
            skips: skips.ids.len(),
            lateness: created,
            skip_reasons,
        })
    }

    /// How long until the next firing pass has work (zero if it has now): until the earliest
    /// active trigger is due, or is within `ahead` of it when its job allows overlap.
    pub async fn next_fire_in(&self, ahead: Span) -> Result<Option<std::time::Duration>> {
        let seconds = sqlx::query_scalar!(
            r#"select extract(epoch from min(
                          t.next_fire_at - case when coalesce(j.spec->>'overlap', 'allow') = 'allow'
                                                then $1::bigint * interval '1 millisecond'
                                                else interval '0' end) - now())::float8 as seconds
               from triggers t join jobs j on j.id = t.job_id
               where t.next_fire_at is not null and not t.paused and not j.paused"#,
            ahead.as_millis(),
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(seconds.map(|s| std::time::Duration::from_secs_f64(s.max(0.0))))
    }

    /// The leader's sweep: claims held by nodes that are dead (no heartbeat for `dead_after_ms`)
    /// or stopped are made due at once, so they are taken over without waiting for their leases;
    /// tasks queued under `buffer_one` start once the task they wait for has finished.
    pub async fn sweep(&self, dead_after_ms: i64) -> Result<Swept> {
        let orphaned_claims =
            sqlx::query_file_scalar!("src/sql/sweep_orphaned_claims.sql", dead_after_ms)
                .fetch_one(&self.pool)
                .await?;
        let released = sqlx::query_file_scalar!("src/sql/sweep_waits_released.sql")
            .fetch_one(&self.pool)
            .await?;
        if orphaned_claims + released > 0 {
            sqlx::query!("select pg_notify($1, '')", TASKS_DUE_CHANNEL)
                .execute(&self.pool)
                .await?;
        }
        Ok(Swept {
            orphaned_claims: u64::try_from(orphaned_claims).unwrap_or_default(),
            released: u64::try_from(released).unwrap_or_default(),
        })
    }
}
