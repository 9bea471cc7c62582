//! Runs made of steps: starting a run, and advancing it exactly once per step as its children end.
//!
//! The protocol: every transaction that ends a child of a run, or a run itself (a callback, a
//! cancel, a batch of dispatch outcomes, a timeout), first locks the run's `task_runs` row with
//! [`lock_runs`] (in run id order, before any task row), then ends its tasks, then calls
//! [`advance_runs`]. The lock makes the enders of one run take turns for the whole of their
//! transactions; under READ COMMITTED each statement after the lock sees everything the enders
//! before it committed. So the ender that ends a step's last open child is exactly the one that
//! finds the step done, and it creates the next step's children (under the unique key
//! (run, step, child)) and moves the run's step counter, conditioned on the step it read, in the
//! same transaction; the others find a child still open, or the step already moved on. No state
//! exists in which every child of a step has ended and nobody advanced: whichever ending commits
//! last saw all the others.

use chrono::{DateTime, Utc};
use pacer_domain::workflow::{MAX_INPUTS_BYTES, StepKind, decide, items_of};
use pacer_domain::{Step, StepTally, StepVerdict, TaskId, TaskOutcome, TaskState};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::error::corrupt;
use crate::{ClaimedTask, Result, Store, TASKS_DUE_CHANNEL};

/// Where a started run stands, as the API shows it.
#[derive(Debug, Clone)]
pub struct RunView {
    /// The step the run is at (the last one once it ended).
    pub step: i32,
    /// The step definitions the run started with.
    pub steps: Vec<Step>,
    /// Each step's children counted by state, in step order (steps not reached count nothing).
    pub tallies: Vec<StepTally>,
    /// The earlier run whose completed children this one reuses (retry errors), while it does.
    pub reuse_from: Option<TaskId>,
}

/// One child of a run, as listed by the API.
#[derive(Debug, Clone)]
pub struct RunChild {
    pub id: TaskId,
    pub step: i32,
    /// The child's name in a `parallel` step, its item's key in a `for_each` step, the step's
    /// name otherwise.
    pub name: String,
    pub state: TaskState,
    pub attempt: i32,
    pub item: Option<Value>,
    pub result: Option<Value>,
    pub message: Option<String>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// What retrying the errors of a run would do at one step of the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryStep {
    pub name: String,
    /// Children that completed in the retried run and are reused, not dispatched again.
    pub reused: u64,
    /// How many children run again; `None` when the step runs in full (every child it will
    /// have, a `for_each` step's as many as its list holds then).
    pub rerun: Option<u64>,
    /// The first [`RETRY_PLAN_NAMES`] children that run again, by name, when `rerun` counts.
    pub children: Vec<String>,
}

/// The most children a retry plan names per step.
pub const RETRY_PLAN_NAMES: i32 = 100;

impl Store {
    /// What retrying only the errors of run `old` would rerun, step by step, for the job's
    /// current `steps` (reuse matches children by step and child name, as the retry does): the
    /// steps up to the first one with a child to rerun reuse what completed; from that step on,
    /// every later step runs in full.
    pub async fn retry_errors_plan(&self, old: TaskId, steps: &[Step]) -> Result<Vec<RetryStep>> {
        let rows = sqlx::query!(
            r#"select o.steps -> t.step ->> 'name' as "name!",
                      count(*) filter (where t.state in ('completed', 'completed_with_errors'))
                          as "reused!",
                      count(*) filter (where t.state not in ('completed', 'completed_with_errors'))
                          as "rerun!",
                      coalesce((array_agg(t.child order by t.id) filter (
                          where t.state not in ('completed', 'completed_with_errors')))[1:$2],
                          '{}') as "children!"
               from tasks t join task_runs o on o.task_id = t.run_id
               where t.run_id = $1 and t.step is not null
               group by 1"#,
            old.as_uuid(),
            RETRY_PLAN_NAMES,
        )
        .fetch_all(&self.pool)
        .await?;
        let mut in_full = false;
        let mut plan = Vec::with_capacity(steps.len());
        for step in steps {
            let found = rows.iter().find(|r| r.name == step.name);
            let planned = match found {
                Some(row) if !in_full => {
                    in_full = row.rerun > 0;
                    RetryStep {
                        name: step.name.clone(),
                        reused: u64::try_from(row.reused).unwrap_or_default(),
                        rerun: Some(u64::try_from(row.rerun).unwrap_or_default()),
                        children: row.children.clone(),
                    }
                }
                _ => {
                    // Never reached by the retried run, or after a step that reruns: in full.
                    in_full = true;
                    RetryStep {
                        name: step.name.clone(),
                        reused: 0,
                        rerun: None,
                        children: Vec::new(),
                    }
                }
            };
            plan.push(planned);
        }
        Ok(plan)
    }

    /// Starts the run a dispatcher claimed instead of dispatching it: records the job's steps
    /// with it, creates its first step's children and moves it to `processing`, not due again
    /// before its timeout. Fenced by the claim; false when the claim is no longer held (the run
    /// was cancelled, or reclaimed). Starting a run twice changes nothing.
    pub async fn start_run(&self, run: &ClaimedTask) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let held = sqlx::query_scalar!(
            "select payload from tasks where id = $1 and claim_token = $2 for update",
            run.id.as_uuid(),
            run.claim_token,
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(payload) = held else {
            return Ok(false);
        };
        let steps = serde_json::to_value(&run.job.steps).map_err(corrupt)?;
        // A retry of a run's errors (its key says so) reuses the retried run's completed
        // children. A run started before has its row already: nothing more to do.
        let started = sqlx::query_scalar!(
            "insert into task_runs (task_id, steps, step, reuse_from)
             select t.id, $2, 0,
                    case when t.idempotency_key = 'retry-errors:' || t.retry_of::text
                         then t.retry_of end
             from tasks t where t.id = $1
             on conflict (task_id) do nothing
             returning reuse_from",
            run.id.as_uuid(),
            steps,
        )
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query!(
            "update tasks set state = 'processing', run_id = id, next_dispatch_at = timeout_at,
                 claim_token = null, claimed_by = null, claimed_at = null,
                 started_at = coalesce(started_at, now()), updated_at = now()
             where id = $1",
            run.id.as_uuid(),
        )
        .execute(&mut *tx)
        .await?;
        if let Some(reuse_from) = started {
            let first = run
                .job
                .steps
                .first()
                .ok_or_else(|| corrupt("a run of a job without steps"))?;
            let reuse = reuse_from.map(TaskId::from);
            let runs = RunRow {
                id: run.id,
                payload: &payload,
                timeout_at: run.timeout_at,
            };
            match create_children(&mut tx, &runs, 0, first, &Value::Object(Map::new()), reuse)
                .await?
            {
                Ok(_) => advance_run(&mut tx, run.id.as_uuid()).await?,
                Err(reason) => {
                    end_run(&mut tx, run.id.as_uuid(), TaskState::Failed, &reason).await?
                }
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    /// A run's steps and their children's counts; `None` for a task that is no run, or a run not
    /// started yet.
    pub async fn run_view(&self, id: TaskId) -> Result<Option<RunView>> {
        let Some(row) = sqlx::query!(
            "select steps, step, reuse_from from task_runs where task_id = $1 and step >= 0",
            id.as_uuid(),
        )
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let steps: Vec<Step> = serde_json::from_value(row.steps).map_err(corrupt)?;
        let tallies = tallies(&mut *self.pool.acquire().await?, id.as_uuid(), steps.len()).await?;
        Ok(Some(RunView {
            step: row.step,
            steps,
            tallies,
            reuse_from: row.reuse_from.map(TaskId::from),
        }))
    }

    /// The run `id` is a child of, if it is one.
    pub async fn run_of(&self, id: TaskId) -> Result<Option<TaskId>> {
        Ok(sqlx::query_scalar!(
            r#"select run_id as "run_id!" from tasks
               where id = $1 and step is not null"#,
            id.as_uuid(),
        )
        .fetch_optional(&self.pool)
        .await?
        .map(TaskId::from))
    }

    /// A page of a run's children in creation order, after `after` (a child's id), optionally of
    /// one step and in one state.
    pub async fn run_children(
        &self,
        run: TaskId,
        step: Option<i32>,
        state: Option<TaskState>,
        after: Option<TaskId>,
        limit: i64,
    ) -> Result<Vec<RunChild>> {
        let rows = sqlx::query!(
            r#"select id, step as "step!", child as "child!", state, attempt, item, result, message,
                      last_error, created_at, finished_at
               from tasks
               where run_id = $1 and step is not null
                 and ($2::int is null or step = $2) and ($3::text is null or state = $3)
                 and ($4::uuid is null or id > $4)
               order by id
               limit $5"#,
            run.as_uuid(),
            step,
            state.map(TaskState::as_str),
            after.map(|id| id.as_uuid()),
            limit,
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(RunChild {
                    id: r.id.into(),
                    step: r.step,
                    name: r.child,
                    state: r.state.parse().map_err(corrupt)?,
                    attempt: r.attempt,
                    item: r.item,
                    result: r.result,
                    message: r.message,
                    last_error: r.last_error,
                    created_at: r.created_at,
                    finished_at: r.finished_at,
                })
            })
            .collect()
    }
}

/// The idempotency key of a task retrying the errors of run `old`: a run created under it
/// reuses the results of `old`'s completed children (see [`Store::start_run`]). The key rides on
/// the task from its creation, on whichever node creates it, so the run cannot start without it.
pub fn retry_errors_key(old: TaskId) -> String {
    format!("retry-errors:{old}")
}

/// Locks the runs the tasks `ids` belong to (each child's run, or the run itself), in run id order
/// so that two transactions locking several runs never deadlock. Call it before touching any of
/// the tasks, and pass what it returns to [`advance_runs`] once they have ended. Plain tasks belong
/// to no run: for them it finds nothing and costs one index lookup per task.
pub(crate) async fn lock_runs(conn: &mut sqlx::PgConnection, ids: &[Uuid]) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_file_scalar!("src/sql/lock_runs.sql", ids)
        .fetch_all(&mut *conn)
        .await?)
}

/// Advances each of `runs` as far as its children allow; the caller holds their locks (see
/// [`lock_runs`]) and has ended the tasks it was ending.
pub(crate) async fn advance_runs(conn: &mut sqlx::PgConnection, runs: &[Uuid]) -> Result<()> {
    for run in runs {
        advance_run(conn, *run).await?;
    }
    Ok(())
}

/// What [`create_children`] needs of a run.
struct RunRow<'a> {
    id: TaskId,
    payload: &'a Value,
    timeout_at: DateTime<Utc>,
}

/// Decides what a locked run does next, and does it: a run that ended has its open children
/// cancelled; a run whose current step's children have all ended moves to its next step (and on,
/// while a step has nothing to wait for) or ends; a `for_each` step releases held items into the
/// slots its ended ones freed.
async fn advance_run(conn: &mut sqlx::PgConnection, run: Uuid) -> Result<()> {
    let Some(row) = sqlx::query!(
        r#"select r.steps, r.step, r.reuse_from, t.state, t.payload, t.timeout_at
           from task_runs r join tasks t on t.id = r.task_id
           where r.task_id = $1"#,
        run,
    )
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(());
    };
    let state: TaskState = row.state.parse().map_err(corrupt)?;
    if state.is_terminal() {
        // The run was cancelled, timed out or failed: nothing of it may go on.
        cancel_open_children(
            conn,
            run,
            &format!("cancelled: its run ended {}", state.as_str()),
        )
        .await?;
        return Ok(());
    }
    let steps: Vec<Step> = serde_json::from_value(row.steps).map_err(corrupt)?;
    // The earlier steps' results, read only when the run advances: most endings wait.
    let mut inputs: Option<Value> = None;
    let mut reuse = row.reuse_from.map(TaskId::from);
    let mut index = row.step;
    let this = RunRow {
        id: run.into(),
        payload: &row.payload,
        timeout_at: row.timeout_at,
    };
    loop {
        let at = usize::try_from(index).map_err(corrupt)?;
        let step = steps
            .get(at)
            .ok_or_else(|| corrupt("a run is at a step it does not have"))?;
        let cap = match step.kind() {
            Some(StepKind::ForEach { max_parallel, .. }) => i64::from(max_parallel),
            _ => i64::try_from(pacer_domain::workflow::MAX_PARALLEL_CHILDREN).unwrap_or(i64::MAX),
        };
        let tally = step_tally(conn, run, index, cap, step.skip_if_unchanged).await?;
        match decide(step, &tally) {
            StepVerdict::Wait { release } => {
                if release > 0 {
                    release_held(conn, run, index, release).await?;
                }
                return Ok(());
            }
            StepVerdict::Fail { reason } => {
                let reason = format!("{reason}: {}", broken_children(conn, run, index).await?);
                end_run(conn, run, TaskState::Failed, &reason).await?;
                return Ok(());
            }
            StepVerdict::Unchanged => {
                // The job's fingerprint stays: it is the one the step's input equalled.
                let summary = run_summary(conn, run, &steps, Value::Null).await?;
                let reason = format!(
                    "input unchanged at step `{}`: the steps after it did not run",
                    step.name
                );
                let end = RunEnd {
                    state: TaskState::Completed,
                    reason: Some(&reason),
                    result: Some(&summary),
                    outcome: Some(TaskOutcome::Unchanged),
                };
                finish_run(conn, run, &end).await?;
                return Ok(());
            }
            StepVerdict::Advance { .. } => {}
        }
        let result = step_result(conn, run, index, step).await?;
        if at + 1 == steps.len() {
            let summary = run_summary(conn, run, &steps, result).await?;
            let broken = sqlx::query_scalar!(
                r#"select count(*) as "n!" from tasks
                   where run_id = $1 and step is not null and state <> 'completed'"#,
                run,
            )
            .fetch_one(&mut *conn)
            .await?;
            let state = if broken > 0 {
                TaskState::CompletedWithErrors
            } else {
                TaskState::Completed
            };
            let end = RunEnd {
                state,
                reason: None,
                result: Some(&summary),
                outcome: None,
            };
            finish_run(conn, run, &end).await?;
            if state == TaskState::Completed {
                store_fingerprint(conn, run).await?;
            }
            return Ok(());
        }
        let inputs = match &mut inputs {
            Some(inputs) => inputs,
            None => inputs.insert(
                sqlx::query_scalar!("select inputs from task_runs where task_id = $1", run)
                    .fetch_one(&mut *conn)
                    .await?,
            ),
        };
        if let Some(map) = inputs.as_object_mut() {
            map.insert(step.name.clone(), result);
        }
        let size = serde_json::to_vec(&*inputs).map_or(usize::MAX, |v| v.len());
        if size > MAX_INPUTS_BYTES {
            let reason = format!(
                "the results of the steps before step `{}` come to {size} bytes, more than the \
                 {MAX_INPUTS_BYTES} bytes a child's inputs may carry",
                steps[at + 1].name
            );
            end_run(conn, run, TaskState::Failed, &reason).await?;
            return Ok(());
        }
        let next = index + 1;
        let next_step = &steps[at + 1];
        let created = create_children(conn, &this, next, next_step, inputs, reuse).await?;
        let rerun = match created {
            Ok(rerun) => rerun,
            Err(reason) => {
                end_run(conn, run, TaskState::Failed, &reason).await?;
                return Ok(());
            }
        };
        if rerun > 0 {
            // From the first step that reruns anything, every later step reruns in full.
            reuse = None;
        }
        // Conditioned on the step read under the lock: a second advance of the same step (which
        // the lock rules out) would match nothing and fail loudly rather than skip a step.
        let moved = sqlx::query!(
            "update task_runs set step = $2, inputs = $3, reuse_from = $4, updated_at = now()
             where task_id = $1 and step = $5",
            run,
            next,
            &*inputs,
            reuse.map(|id| id.as_uuid()),
            index,
        )
        .execute(&mut *conn)
        .await?;
        if moved.rows_affected() != 1 {
            return Err(corrupt("a run's step moved under its lock"));
        }
        index = next;
    }
}

/// The first few failed or cancelled children of a step, named with how they ended, for the
/// reason their run fails with: "`faculty` (failed: 500 Internal Server Error)".
async fn broken_children(conn: &mut sqlx::PgConnection, run: Uuid, step: i32) -> Result<String> {
    const NAMED: i64 = 5;
    let rows = sqlx::query!(
        r#"select child as "child!", state, coalesce(last_error, message, failure_reason) as why
           from tasks
           where run_id = $1 and step = $2 and state in ('failed', 'cancelled')
           order by finished_at, id limit $3"#,
        run,
        step,
        NAMED + 1,
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut named: Vec<String> = rows
        .iter()
        .take(usize::try_from(NAMED).unwrap_or_default())
        .map(|r| match r.why.as_deref() {
            Some(why) => format!("`{}` ({}: {})", r.child, r.state, clip(why, 120)),
            None => format!("`{}` ({})", r.child, r.state),
        })
        .collect();
    if rows.len() > named.len() {
        named.push("…".to_owned());
    }
    Ok(named.join(", "))
}

/// `text` cut to at most `max` characters, with an ellipsis when cut.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// What [`decide`] needs of one step of a run (see `sql/step_tally.sql`), each count bounded by
/// `cap`.
async fn step_tally(
    conn: &mut sqlx::PgConnection,
    run: Uuid,
    step: i32,
    cap: i64,
    skip_if_unchanged: bool,
) -> Result<StepTally> {
    let row = sqlx::query_file!("src/sql/step_tally.sql", run, step, cap, skip_if_unchanged,)
        .fetch_one(&mut *conn)
        .await?;
    let n = |count: i64| u64::try_from(count).unwrap_or_default();
    Ok(StepTally {
        pending: n(row.pending),
        processing: n(row.processing),
        held: n(row.held),
        failed: n(row.failed),
        cancelled: n(row.cancelled),
        completed_with_errors: u64::from(row.with_errors),
        completed: 0,
        unchanged: n(row.unchanged),
    })
}

/// Every step's tally, in step order.
async fn tallies(conn: &mut sqlx::PgConnection, run: Uuid, steps: usize) -> Result<Vec<StepTally>> {
    let rows = sqlx::query!(
        r#"select step as "step!", state, held, count(*) as "n!" from tasks
           where run_id = $1 and step is not null group by step, state, held"#,
        run,
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut tallies = vec![StepTally::default(); steps];
    for r in rows {
        let state: TaskState = r.state.parse().map_err(corrupt)?;
        if let Some(tally) = usize::try_from(r.step)
            .ok()
            .and_then(|i| tallies.get_mut(i))
        {
            tally.add(state, r.held, u64::try_from(r.n).unwrap_or_default());
        }
    }
    Ok(tallies)
}

/// Makes up to `n` held items of a `for_each` step due now, oldest first.
async fn release_held(conn: &mut sqlx::PgConnection, run: Uuid, step: i32, n: u64) -> Result<()> {
    // One statement, one round trip under the run's lock: the first held items in creation
    // order (the partial index on held items gives them in order), and the dispatchers told.
    sqlx::query!(
        // An item waiting for a concurrency slot too is only now due for admission.
        r#"with released as (
               update tasks set held = false, updated_at = now(),
                   next_dispatch_at = case when waiting then next_dispatch_at else now() end,
                   due_at = case when waiting then now() else due_at end
               where id in (select id from tasks
                            where run_id = $1 and step = $2 and held and state = 'pending'
                            order by id limit $3)
               returning id
           )
           select pg_notify($4, '') as "notified"
           from (select count(*) as n from released) r where r.n > 0"#,
        run,
        step,
        i64::try_from(n).unwrap_or(i64::MAX),
        TASKS_DUE_CHANNEL,
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(())
}

/// What a finished step hands later steps as its entry in `inputs`: a single child's result; a
/// `parallel` step's results by child name; a `for_each` step's results by item key (items
/// without a result left out).
async fn step_result(
    conn: &mut sqlx::PgConnection,
    run: Uuid,
    step: i32,
    definition: &Step,
) -> Result<Value> {
    let rows = sqlx::query!(
        r#"select child as "child!", result from tasks
           where run_id = $1 and step = $2 order by id"#,
        run,
        step,
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(match definition.kind() {
        Some(StepKind::Single(_)) => rows
            .into_iter()
            .next()
            .and_then(|r| r.result)
            .unwrap_or(Value::Null),
        _ => Value::Object(
            rows.into_iter()
                .filter_map(|r| r.result.map(|result| (r.child, result)))
                .collect(),
        ),
    })
}

/// The result a run ends with: each step's children by state, and the last step's result.
async fn run_summary(
    conn: &mut sqlx::PgConnection,
    run: Uuid,
    steps: &[Step],
    last: Value,
) -> Result<Value> {
    let tallies = tallies(conn, run, steps.len()).await?;
    let steps: Vec<Value> = steps
        .iter()
        .zip(&tallies)
        .map(|(step, tally)| json!({ "name": step.name, "counts": tally.by_state() }))
        .collect();
    Ok(json!({ "steps": steps, "result": last }))
}

/// Creates the children of step `index` of a run (see `sql/insert_children.sql`): one for a
/// single-target step, one per child of a `parallel` step, one per item of a `for_each` step
/// (those beyond its `max_parallel` held). With `reuse`, a child that completed in that earlier
/// run is created already ended with its result. Returns how many children will run, or the
/// reason the run fails instead (a `for_each` over a result without items).
async fn create_children(
    conn: &mut sqlx::PgConnection,
    run: &RunRow<'_>,
    index: i32,
    step: &Step,
    inputs: &Value,
    reuse: Option<TaskId>,
) -> Result<Result<u64, String>> {
    let base = run.payload.as_object().cloned().unwrap_or_default();
    let overlay = |extra: Option<&Value>| {
        let mut payload = base.clone();
        if let Some(extra) = extra.and_then(Value::as_object) {
            payload.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Value::Object(payload)
    };
    let mut names = Vec::new();
    let mut payloads = Vec::new();
    let mut items = Vec::new();
    let mut held = Vec::new();
    match step.kind() {
        Some(StepKind::Single(_)) => {
            names.push(step.name.clone());
            payloads.push(overlay(step.payload.as_ref()));
            items.push(None);
            held.push(false);
        }
        Some(StepKind::Parallel(children)) => {
            for child in children {
                names.push(child.name.clone());
                payloads.push(overlay(child.payload.as_ref()));
                items.push(None);
                held.push(false);
            }
        }
        Some(StepKind::ForEach {
            source,
            max_parallel,
            ..
        }) => {
            let list = match items_of(source, inputs.get(source)) {
                Ok(list) => list,
                Err(reason) => return Ok(Err(format!("step `{}`: {reason}", step.name))),
            };
            let payload = overlay(step.payload.as_ref());
            for (i, (key, item)) in list.into_iter().enumerate() {
                names.push(key);
                payloads.push(payload.clone());
                items.push(Some(item));
                held.push(i >= usize::try_from(max_parallel).unwrap_or(usize::MAX));
            }
        }
        None => return Err(corrupt("a run has a step that never passed validation")),
    }
    let ids: Vec<Uuid> = names.iter().map(|_| Uuid::now_v7()).collect();
    let rows = sqlx::query_file!(
        "src/sql/insert_children.sql",
        run.id.as_uuid(),
        index,
        &ids,
        &names,
        &payloads,
        &items as &[Option<Value>],
        &held,
        reuse.map(|id| id.as_uuid()),
        step.name,
        run.timeout_at,
        step.concurrency_group.is_some(),
        step.deadline.map(|d| d.as_millis()),
    )
    .fetch_all(&mut *conn)
    .await?;
    let reused = rows.iter().filter(|r| r.reused).count();
    let rerun = rows.len() - reused;
    // Held items are not due; when reuse ended some children outright, a later advance releases
    // held ones into their slots.
    if rerun > 0 {
        sqlx::query!("select pg_notify($1, '')", TASKS_DUE_CHANNEL)
            .execute(&mut *conn)
            .await?;
    }
    Ok(Ok(u64::try_from(rerun).unwrap_or_default()))
}

/// Fails or ends a run with `reason`, and cancels its open children.
async fn end_run(
    conn: &mut sqlx::PgConnection,
    run: Uuid,
    state: TaskState,
    reason: &str,
) -> Result<()> {
    let steps = sqlx::query_scalar!("select steps from task_runs where task_id = $1", run)
        .fetch_optional(&mut *conn)
        .await?
        .map(serde_json::from_value::<Vec<Step>>)
        .transpose()
        .map_err(corrupt)?
        .unwrap_or_default();
    let summary = run_summary(conn, run, &steps, Value::Null).await?;
    let end = RunEnd {
        state,
        reason: Some(reason),
        result: Some(&summary),
        outcome: None,
    };
    finish_run(conn, run, &end).await?;
    cancel_open_children(conn, run, &format!("cancelled: {reason}")).await
}

/// How a run ends.
struct RunEnd<'a> {
    state: TaskState,
    reason: Option<&'a str>,
    result: Option<&'a Value>,
    outcome: Option<TaskOutcome>,
}

/// Writes a run's final state.
async fn finish_run(conn: &mut sqlx::PgConnection, run: Uuid, end: &RunEnd<'_>) -> Result<()> {
    sqlx::query!(
        "update tasks set state = $2, finished_at = now(), next_dispatch_at = null,
             claim_token = null, claimed_by = null, claimed_at = null,
             message = coalesce($3, message), last_error = case when $2 = 'failed' then $3 end,
             result = coalesce($4, result), outcome = $5, updated_at = now()
         where id = $1 and state in ('pending', 'processing')",
        run,
        end.state.as_str(),
        end.reason,
        end.result,
        end.outcome.map(TaskOutcome::as_str),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A run that completed makes the fingerprint its `skip_if_unchanged` step's child reported its
/// own and its job's: the input the next run compares with. Only the children of such steps keep
/// a fingerprint (see `sql/finish_tasks.sql`), and only a completed run gets this far, so a run
/// that failed at a later step leaves the job's fingerprint where it was.
async fn store_fingerprint(conn: &mut sqlx::PgConnection, run: Uuid) -> Result<()> {
    sqlx::query!(
        "with kept as (
             select c.fingerprint from tasks c
             where c.run_id = $1 and c.step is not null and c.fingerprint is not null
             order by c.step desc, c.finished_at desc limit 1
         ),
         run as (
             update tasks t set fingerprint = kept.fingerprint
             from kept where t.id = $1
             returning t.job_id, t.fingerprint
         )
         insert into job_fingerprints (job_id, fingerprint, task_id)
         select job_id, fingerprint, $1 from run where job_id is not null
         on conflict (job_id) do update set
             fingerprint = excluded.fingerprint, task_id = excluded.task_id, updated_at = now()",
        run,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Cancels every open child of a run; a child a dispatch went out to has its downstream told.
async fn cancel_open_children(
    conn: &mut sqlx::PgConnection,
    run: Uuid,
    message: &str,
) -> Result<()> {
    let cancelled = sqlx::query!(
        "update tasks set state = 'cancelled', finished_at = now(), next_dispatch_at = null,
             claim_token = null, claimed_by = null, claimed_at = null, held = false,
             message = $2, updated_at = now(),
             cancel_notice_at = case when dispatched then now() end
         where id in (select id from tasks
                      where run_id = $1 and step is not null and state in ('pending', 'processing')
                      order by id for update)",
        run,
        message,
    )
    .execute(&mut *conn)
    .await?;
    if cancelled.rows_affected() > 0 {
        sqlx::query!("select pg_notify($1, '')", crate::CANCELS_CHANNEL)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
