//! Concurrency limits: the groups (create or replace, read, list, delete), the admission pass
//! that gives waiting tasks their slots, and why a task waits.
//!
//! Every admission runs under one cluster-wide advisory lock, and counts the slots held (open
//! tasks that hold one) after taking it: two nodes never hand out the same free slot, and a slot
//! freed by a commit before the lock was granted is seen. A slot is freed by the state change
//! that ends its task, whichever code path makes it, because ending the task is what stops it
//! being counted.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use pacer_domain::concurrency::{Holders, Waiting, admit};
use pacer_domain::{GroupName, GroupSpec, JobSpec};
use uuid::Uuid;

use crate::{Error, Result, Store, TASKS_DUE_CHANNEL};

/// The advisory lock every admission, and every change of a job's limits, holds.
pub(crate) const ADMISSION_LOCK: i64 = 0x7061_6365_7201;

/// Most waiting tasks of one job looked at in one admission pass; a job allowed more slots than
/// this at once fills them over several passes.
const ADMIT_PER_JOB: i64 = 200;

/// A concurrency group with what it holds now.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub spec: GroupSpec,
    /// The tasks holding its slots, oldest claim first.
    pub holders: Vec<SlotHolder>,
    /// Tasks due and waiting for one of its slots.
    pub waiting: i64,
    /// The jobs in the group.
    pub jobs: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A task holding a slot.
#[derive(Debug, Clone)]
pub struct SlotHolder {
    pub task_id: Uuid,
    pub job_name: String,
    pub state: String,
}

/// Why a waiting task waits.
#[derive(Debug, Clone)]
pub struct WaitingFor {
    /// The task's job's group, if it names one.
    pub group: Option<String>,
    /// The group's limit.
    pub group_limit: Option<u32>,
    /// The job's own limit, if it sets one.
    pub max_concurrency: Option<u32>,
    /// The tasks holding the slots it waits for: its group's, or else its job's.
    pub holders: Vec<SlotHolder>,
}

/// What an admission pass did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Admitted {
    /// Tasks given a slot (or let go, their job no longer limited).
    pub admitted: u64,
    /// Some job had every task one pass looks at admitted, and may have slots for more: look
    /// again at once.
    pub more: bool,
}

impl Store {
    /// Creates or replaces a group; true when it is new.
    pub async fn put_group(&self, name: &GroupName, spec: &GroupSpec) -> Result<bool> {
        let created = sqlx::query_scalar!(
            r#"insert into concurrency_groups (name, "limit", description) values ($1, $2, $3)
               on conflict (name) do update set "limit" = excluded."limit",
                   description = excluded.description,
                   updated_at = case when (concurrency_groups."limit", concurrency_groups.description)
                                          is distinct from (excluded."limit", excluded.description)
                                     then now() else concurrency_groups.updated_at end
               returning (xmax = 0) as "created!""#,
            name.as_str(),
            i32::try_from(spec.limit).unwrap_or(i32::MAX),
            spec.description,
        )
        .fetch_one(&self.pool)
        .await?;
        // A raised limit has slots to hand out at once.
        sqlx::query!("select pg_notify($1, '')", TASKS_DUE_CHANNEL)
            .execute(&self.pool)
            .await?;
        Ok(created)
    }

    /// Deletes a group no job names; `Conflict` while one does.
    pub async fn delete_group(&self, name: &GroupName) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // Locked first: a job written meanwhile that names it in a step waits for this
        // transaction (see `put_job`), and then finds it gone.
        let found = sqlx::query_scalar!(
            "select name from concurrency_groups where name = $1 for update",
            name.as_str()
        )
        .fetch_optional(&mut *tx)
        .await?;
        if found.is_none() {
            return Err(Error::NotFound("concurrency group"));
        }
        let named_by_a_step = sqlx::query_scalar!(
            r#"select exists (select 1 from jobs
                              where spec -> 'steps' @> jsonb_build_array(
                                        jsonb_build_object('concurrency_group', $1::text)))
                   as "named!""#,
            name.as_str()
        )
        .fetch_one(&mut *tx)
        .await?;
        if named_by_a_step {
            return Err(Error::Conflict {
                constraint: "jobs_concurrency_group_fkey".into(),
            });
        }
        sqlx::query!(
            "delete from concurrency_groups where name = $1",
            name.as_str()
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// One group, with its holders and waiting count.
    pub async fn get_group(&self, name: &GroupName) -> Result<Group> {
        self.groups(Some(name.as_str()))
            .await?
            .pop()
            .ok_or(Error::NotFound("concurrency group"))
    }

    /// Every group in name order, with its holders and waiting count.
    pub async fn list_groups(&self) -> Result<Vec<Group>> {
        self.groups(None).await
    }

    async fn groups(&self, only: Option<&str>) -> Result<Vec<Group>> {
        let rows = sqlx::query!(
            r#"select g.name, g."limit", g.description, g.created_at, g.updated_at,
                      coalesce((select array_agg(j.name order by j.name) from jobs j
                                where j.concurrency_group = g.name
                                   or j.spec -> 'steps' @> jsonb_build_array(
                                          jsonb_build_object('concurrency_group', g.name))),
                               '{}') as "jobs!",
                      (select count(*) from task_limits t
                       where t.concurrency_group = g.name and t.waiting and t.state = 'pending'
                         and not t.held and t.due_at <= now()) as "waiting!"
               from concurrency_groups g
               where $1::text is null or g.name = $1
               order by g.name"#,
            only,
        )
        .fetch_all(&self.pool)
        .await?;
        let names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
        let mut holders = self.group_holders(&names).await?;
        Ok(rows
            .into_iter()
            .map(|r| Group {
                holders: holders.remove(&r.name).unwrap_or_default(),
                spec: GroupSpec {
                    limit: u32::try_from(r.limit).unwrap_or_default(),
                    description: r.description,
                },
                name: r.name,
                waiting: r.waiting,
                jobs: r.jobs,
                created_at: r.created_at,
                updated_at: r.updated_at,
            })
            .collect())
    }

    async fn group_holders(&self, groups: &[String]) -> Result<HashMap<String, Vec<SlotHolder>>> {
        let rows = sqlx::query!(
            r#"select t.concurrency_group as "group!", t.id as "id!", t.job_name as "job_name!",
                      t.state as "state!"
               from task_limits t
               where t.holds_slot and t.state in ('pending', 'processing')
                 and t.concurrency_group = any($1)
               order by t.started_at nulls last, t.id"#,
            groups,
        )
        .fetch_all(&self.pool)
        .await?;
        let mut holders: HashMap<String, Vec<SlotHolder>> = HashMap::new();
        for r in rows {
            holders.entry(r.group).or_default().push(SlotHolder {
                task_id: r.id,
                job_name: r.job_name,
                state: r.state,
            });
        }
        Ok(holders)
    }

    /// Why the task `id` waits for a slot; `None` when it does not.
    pub async fn waiting_for(&self, id: Uuid) -> Result<Option<WaitingFor>> {
        let Some(row) = sqlx::query!(
            r#"select t.job_id as "job_id!", t.concurrency_group, t.max_concurrency,
                      g."limit" as "group_limit?"
               from task_limits t
               left join concurrency_groups g on g.name = t.concurrency_group
               where t.id = $1 and t.waiting and t.state = 'pending'"#,
            id,
        )
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let group = row.concurrency_group;
        let holders = match &group {
            Some(group) => self
                .group_holders(std::slice::from_ref(group))
                .await?
                .remove(group)
                .unwrap_or_default(),
            None => sqlx::query!(
                r#"select t.id, t.job_name, t.state from tasks t
                   where t.job_id = $1 and t.holds_slot and t.state in ('pending', 'processing')
                     and t.step is null
                   order by t.started_at nulls last, t.id"#,
                row.job_id,
            )
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|r| SlotHolder {
                task_id: r.id,
                job_name: r.job_name,
                state: r.state,
            })
            .collect(),
        };
        Ok(Some(WaitingFor {
            group,
            group_limit: row.group_limit.and_then(|l| u32::try_from(l).ok()),
            max_concurrency: row.max_concurrency.and_then(|n| u32::try_from(n).ok()),
            holders,
        }))
    }

    /// Gives due waiting tasks the slots their jobs and groups have free, in due order, and
    /// makes them due now. Costs one index probe when nothing waits.
    pub async fn admit_waiting(&self) -> Result<Admitted> {
        let any = sqlx::query_scalar!(
            r#"select exists (select 1 from tasks
                              where waiting and state = 'pending' and due_at <= now()
                                and not held) as "any!""#
        )
        .fetch_one(&self.pool)
        .await?;
        if !any {
            return Ok(Admitted::default());
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query!("select pg_advisory_xact_lock($1)", ADMISSION_LOCK)
            .execute(&mut *tx)
            .await?;
        // Per job, its first waiting tasks in due order: a long queue of one job never hides
        // another job's tasks from the pass.
        let waiting = sqlx::query!(
            r#"select w.id as "id!", w.limit_key as "limit_key!", w.concurrency_group,
                      w.max_concurrency
               from (select distinct job_id from tasks
                     where waiting and state = 'pending' and due_at <= now() and not held) q
               cross join lateral (
                   select t.id, t.due_at, t.limit_key, t.concurrency_group, t.max_concurrency
                   from task_limits t
                   where t.job_id = q.job_id and t.waiting and t.state = 'pending'
                     and t.due_at <= now() and t.waits_for is null and not t.held
                   order by t.due_at, t.id limit $1
               ) w
               order by w.due_at, w.id"#,
            ADMIT_PER_JOB,
        )
        .fetch_all(&mut *tx)
        .await?;
        let held = sqlx::query!(
            r#"select t.limit_key as "limit_key!", t.concurrency_group, count(*) as "n!"
               from task_limits t
               where t.holds_slot and t.state in ('pending', 'processing')
               group by t.limit_key, t.concurrency_group"#
        )
        .fetch_all(&mut *tx)
        .await?;
        let limits = sqlx::query!(r#"select name, "limit" from concurrency_groups"#)
            .fetch_all(&mut *tx)
            .await?;
        let mut holders = Holders::default();
        for h in held {
            let n = u32::try_from(h.n).unwrap_or(u32::MAX);
            *holders.per_job.entry(h.limit_key).or_default() += n;
            if let Some(group) = h.concurrency_group {
                *holders.per_group.entry(group).or_default() += n;
            }
        }
        holders.group_limits = limits
            .into_iter()
            .map(|l| (l.name, u32::try_from(l.limit).unwrap_or_default()))
            .collect();
        let candidates: Vec<Waiting<Uuid>> = waiting
            .iter()
            .map(|w| Waiting {
                task: w.id,
                job: w.limit_key.clone(),
                job_limit: w.max_concurrency.and_then(|n| u32::try_from(n).ok()),
                group: w.concurrency_group.clone(),
            })
            .collect();
        let chosen = admit(&candidates, &holders);
        // Every task a job's window held was admitted: it may have more slots for the next ones.
        let mut admitted_per_job: HashMap<&str, i64> = HashMap::new();
        let chosen_set: std::collections::HashSet<Uuid> = chosen.iter().copied().collect();
        for w in candidates.iter().filter(|w| chosen_set.contains(&w.task)) {
            *admitted_per_job.entry(w.job.as_str()).or_default() += 1;
        }
        let more = admitted_per_job.values().any(|&n| n >= ADMIT_PER_JOB);
        if chosen.is_empty() {
            tx.commit().await?;
            return Ok(Admitted::default());
        }
        // A task whose job is no longer limited is let go without a slot.
        let admitted = sqlx::query_scalar!(
            r#"with admitted as (
                   update tasks t set waiting = false,
                       holds_slot = l.max_concurrency is not null or l.concurrency_group is not null,
                       next_dispatch_at = greatest(t.due_at, now()), updated_at = now()
                   from task_limits l
                   where t.id = any($1) and l.id = t.id and t.waiting and t.state = 'pending'
                   returning t.id, t.job_name, l.concurrency_group, t.holds_slot
               ),
               acquired as (
                   insert into events (kind, job_name, task_id, data)
                   select 'group.acquired', a.job_name, a.id,
                          jsonb_build_object('group', a.concurrency_group)
                   from admitted a
                   where a.holds_slot and a.concurrency_group is not null
                   order by a.id
               )
               select count(*) as "n!" from admitted, lateral (select pg_notify($2, '')) n"#,
            &chosen,
            TASKS_DUE_CHANNEL,
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Admitted {
            admitted: u64::try_from(admitted).unwrap_or_default(),
            more,
        })
    }
}

/// Brings the open tasks of a job whose limits were just switched on or off in line, in the
/// transaction that changed them: switched on, its tasks never sent wait for a slot and those
/// already out hold one (they are counted from now); switched off, its waiting tasks are due.
pub(crate) async fn limits_changed(
    conn: &mut sqlx::PgConnection,
    job_id: Uuid,
    limited: bool,
) -> Result<()> {
    sqlx::query!("select pg_advisory_xact_lock($1)", ADMISSION_LOCK)
        .execute(&mut *conn)
        .await?;
    if limited {
        sqlx::query!(
            "update tasks set
                 waiting = not dispatched and claim_token is null,
                 holds_slot = dispatched or claim_token is not null,
                 next_dispatch_at = case when not dispatched and claim_token is null
                                         then timeout_at else next_dispatch_at end,
                 updated_at = now()
             where job_id = $1 and state in ('pending', 'processing') and step is null
               and not waiting and not holds_slot",
            job_id,
        )
        .execute(&mut *conn)
        .await?;
    } else {
        sqlx::query!(
            "update tasks set waiting = false,
                 next_dispatch_at = case when waits_for is null then greatest(due_at, now())
                                         else next_dispatch_at end,
                 updated_at = now()
             where job_id = $1 and waiting and state = 'pending'",
            job_id,
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query!("select pg_notify($1, '')", TASKS_DUE_CHANNEL)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Refuses (as the job's own group is, by its foreign key) a job whose steps name a group that
/// does not exist; the groups stay locked against deletion until the job's transaction ends.
pub(crate) async fn check_step_groups(conn: &mut sqlx::PgConnection, spec: &JobSpec) -> Result<()> {
    let named: Vec<String> = spec
        .steps
        .iter()
        .filter_map(|step| step.concurrency_group.as_ref())
        .map(|group| group.as_str().to_owned())
        .collect();
    if named.is_empty() {
        return Ok(());
    }
    let found = sqlx::query_scalar!(
        "select name from concurrency_groups where name = any($1) for key share",
        &named,
    )
    .fetch_all(&mut *conn)
    .await?;
    if named.iter().all(|name| found.contains(name)) {
        Ok(())
    } else {
        Err(Error::Conflict {
            constraint: "jobs_concurrency_group_fkey".into(),
        })
    }
}
