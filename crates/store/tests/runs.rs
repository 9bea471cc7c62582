//! Runs made of steps on the real PostgreSQL: a step advances exactly once however its last
//! children end (callbacks and dispatch outcomes racing on separate connections), a `for_each`
//! step never has more than `max_parallel` items open, `on_failure: stop` and
//! `on_item_failure: continue` end runs as they say, and a retry of a run's errors reruns exactly
//! what failed.

use std::collections::HashMap;
use std::time::Duration;

use pacer_domain::dispatch::{AttemptOutcome, DispatchOutcome, Report};
use pacer_domain::{CallbackStatus, JobInput, JobName, JobSpec, Span, TaskId, after_dispatch};
use pacer_store::{ClaimedTask, CreatedTask, Job, NewTask, Origin, Outcome, Store};
use serde_json::{Value, json};
use sqlx::PgPool;

async fn job(store: &Store, name: &str, definition: Value) -> Job {
    let input: JobInput = serde_json::from_value(definition).expect("job input");
    let spec = JobSpec::try_from(input).expect("valid job");
    let name: JobName = name.parse().expect("name");
    store.put_job(&name, &spec).await.expect("put job").job
}

fn new_task(key: Option<String>, retry_of: Option<TaskId>) -> NewTask {
    NewTask {
        id: TaskId::new(),
        origin: if retry_of.is_some() {
            Origin::Retry
        } else {
            Origin::Api
        },
        idempotency_key: key,
        payload: json!({ "from": "run" }),
        not_before: None,
        trace_context: None,
        actor: None,
        retry_of,
        notify: None,
    }
}

async fn create(store: &Store, job: &Job, task: NewTask) -> TaskId {
    match store.create_task(job, task, None).await.expect("create") {
        CreatedTask::Created { id, .. } => id,
        other => panic!("expected a new task, got {other:?}"),
    }
}

/// Claims everything due; runs among them are started (as the dispatcher does), children are
/// returned for the test to end.
async fn claim_children(store: &Store) -> Vec<ClaimedTask> {
    let mut children = Vec::new();
    loop {
        let claimed = store
            .claim_due("node-a", 500, Span::from_secs(30), Span::from_millis(0))
            .await
            .expect("claim");
        if claimed.is_empty() {
            return children;
        }
        for task in claimed {
            if task.child.is_some() {
                children.push(task);
            } else {
                assert!(task.job.is_workflow(), "only runs and children here");
                assert!(store.start_run(&task).await.expect("start run"));
            }
        }
    }
}

fn report(status: CallbackStatus, result: Option<Value>) -> Report {
    Report {
        status,
        progress: None,
        message: None,
        result,
        fingerprint: None,
        unchanged: false,
        error: None,
        retryable: false,
    }
}

/// A dispatch answered with a final status in its body: the outcome path of a batch.
fn answered(task: &ClaimedTask, status: CallbackStatus) -> Outcome {
    let outcome = DispatchOutcome::Accepted {
        status: 200,
        report: Some(report(status, Some(json!({ "by": "outcome" })))),
    };
    Outcome {
        decision: after_dispatch(task.state, 0, 0, &task.job, &outcome, 0.5),
        attempt: AttemptOutcome::Accepted,
        node: "node-a".to_owned(),
        http_status: Some(200),
        error: None,
        error_code: None,
        latency: Duration::from_millis(5),
    }
}

async fn state_of(pool: &PgPool, id: TaskId) -> String {
    sqlx::query_scalar::<_, String>("select state from tasks where id = $1")
        .bind(id.as_uuid())
        .fetch_one(pool)
        .await
        .expect("state")
}

/// (step, child, state) of every child of `run`, in creation order.
async fn children_of(pool: &PgPool, run: TaskId) -> Vec<(i32, String, String)> {
    sqlx::query_as::<_, (i32, String, String)>(
        "select step, child, state from tasks where run_id = $1 and step is not null order by id",
    )
    .bind(run.as_uuid())
    .fetch_all(pool)
    .await
    .expect("children")
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_step_advances_exactly_once_when_its_last_children_end_at_the_same_time(pool: PgPool) {
    let store = Store::new(pool.clone());
    let job = job(
        &store,
        "timetable",
        json!({ "steps": [
            { "name": "upload", "parallel": [
                { "name": "timetable", "target": { "url": "http://core.invalid/timetable" } },
                { "name": "faculty", "target": { "url": "http://core.invalid/faculty" },
                  "payload": { "full": true } } ] },
            { "name": "post-upload", "target": { "url": "http://extractor.invalid/done" } } ] }),
    )
    .await;
    let mut runs = Vec::new();
    for _ in 0..40 {
        runs.push(create(&store, &job, new_task(None, None)).await);
    }
    let children = claim_children(&store).await;
    assert_eq!(children.len(), 80, "two children per run, both due at once");
    let faculty = children
        .iter()
        .find(|c| c.child.as_ref().is_some_and(|w| w.name == "faculty"))
        .expect("a faculty child");
    assert_eq!(faculty.payload, json!({ "from": "run", "full": true }));
    assert_eq!(
        faculty
            .child
            .as_ref()
            .and_then(|w| w.target.as_ref())
            .and_then(|t| t.http())
            .map(|t| t.url.as_str()),
        Some("http://core.invalid/faculty")
    );
    // Each run's two children end at the same moment from separate connections: for half of
    // the runs both by callback, for the other half one by callback and one by a dispatch
    // outcome batch.
    let mut by_run: HashMap<TaskId, Vec<ClaimedTask>> = HashMap::new();
    for child in children {
        let run = child.child.as_ref().expect("child").run;
        by_run.entry(run).or_default().push(child);
    }
    let mut endings = Vec::new();
    for (i, (_, pair)) in by_run.into_iter().enumerate() {
        for (j, child) in pair.into_iter().enumerate() {
            let store = store.clone();
            endings.push(tokio::spawn(async move {
                if i % 2 == 1 && j == 1 {
                    let outcome = answered(&child, CallbackStatus::Completed);
                    let recorded = store
                        .record_outcomes(&[(child.claim(), outcome)])
                        .await
                        .expect("record");
                    assert!(recorded[0].applied);
                } else {
                    let result =
                        Some(json!({ "child": child.child.as_ref().map(|c| c.name.clone()) }));
                    store
                        .report(child.id, &report(CallbackStatus::Completed, result))
                        .await
                        .expect("report");
                }
            }));
        }
    }
    for ending in endings {
        ending.await.expect("ending");
    }
    for run in &runs {
        let children = children_of(&pool, *run).await;
        let next: Vec<_> = children.iter().filter(|(step, ..)| *step == 1).collect();
        assert_eq!(
            next.len(),
            1,
            "run {run}: the next step was created exactly once, never zero or twice"
        );
        assert_eq!(next[0].1, "post-upload");
        assert_eq!(state_of(&pool, *run).await, "processing");
    }
    // The next step's children carry the earlier step's results as inputs, by child name.
    let post = claim_children(&store).await;
    assert_eq!(post.len(), runs.len());
    let inputs: Value =
        serde_json::from_str(post[0].child.as_ref().expect("child").inputs.get()).expect("json");
    assert!(inputs["upload"]["timetable"].is_object(), "{inputs}");
    assert!(inputs["upload"]["faculty"].is_object(), "{inputs}");
    for child in post {
        store
            .report(
                child.id,
                &report(CallbackStatus::Completed, Some(json!({ "ok": 1 }))),
            )
            .await
            .expect("report");
    }
    for run in &runs {
        assert_eq!(state_of(&pool, *run).await, "completed");
    }
    // A child's state changes in the event log name its run, step and child.
    let events: Vec<Value> = sqlx::query_scalar(
        "select e.data from events e join tasks t on t.id = e.task_id
         where t.run_id = $1 and t.step = 0 and t.child = 'faculty' and e.kind = 'task.state'
         order by e.id",
    )
    .bind(runs[0].as_uuid())
    .fetch_all(&pool)
    .await
    .expect("events");
    assert_eq!(events.len(), 2, "created, then completed: {events:?}");
    for event in &events {
        assert_eq!(event["run"], runs[0].to_string());
        assert_eq!(event["step"], "upload");
        assert_eq!(event["child"], "faculty");
    }
    let view = store.run_view(runs[0]).await.expect("view").expect("a run");
    assert_eq!(view.tallies[0].completed, 2);
    assert_eq!(view.tallies[1].completed, 1);
}

fn item_sync(max_parallel: u32, on_item_failure: &str) -> Value {
    json!({ "steps": [
        { "name": "list", "target": { "url": "http://iis.invalid/projects" } },
        { "name": "ingest", "for_each": "list", "max_parallel": max_parallel,
          "on_item_failure": on_item_failure, "target": { "url": "http://iis.invalid/ingest" } } ] })
}

/// Completes the run's first (`list`) child with `n` items.
async fn list_items(store: &Store, n: usize) {
    let list = claim_children(store).await;
    assert_eq!(list.len(), 1);
    let items: Vec<Value> = (0..n)
        .map(|i| json!({ "key": format!("item-{i}") }))
        .collect();
    store
        .report(
            list[0].id,
            &report(CallbackStatus::Completed, Some(json!({ "items": items }))),
        )
        .await
        .expect("report list");
}

async fn open_released(pool: &PgPool, run: TaskId) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "select count(*) from tasks where run_id = $1 and step = 1
         and state in ('pending', 'processing') and not held",
    )
    .bind(run.as_uuid())
    .fetch_one(pool)
    .await
    .expect("count")
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_for_each_step_keeps_at_most_max_parallel_items_open_and_continues_past_failures(
    pool: PgPool,
) {
    let store = Store::new(pool.clone());
    let job = job(&store, "items", item_sync(3, "continue")).await;
    let run = create(&store, &job, new_task(None, None)).await;
    list_items(&store, 10).await;
    assert_eq!(
        children_of(&pool, run).await.len(),
        11,
        "every item up front"
    );
    let mut seen = 0;
    loop {
        assert!(open_released(&pool, run).await <= 3);
        let due = claim_children(&store).await;
        if due.is_empty() {
            break;
        }
        assert!(due.len() <= 3, "{} items due at once", due.len());
        // Two at a time end concurrently; item-4 fails.
        let mut endings = Vec::new();
        for child in due {
            seen += 1;
            let item = child
                .child
                .as_ref()
                .and_then(|c| c.item.clone())
                .expect("item");
            let store = store.clone();
            endings.push(tokio::spawn(async move {
                let status = if item["key"] == "item-4" {
                    CallbackStatus::Failed
                } else {
                    CallbackStatus::Completed
                };
                store
                    .report(child.id, &report(status, Some(json!({ "item": item }))))
                    .await
                    .expect("report");
            }));
        }
        for ending in endings {
            ending.await.expect("ending");
        }
    }
    assert_eq!(seen, 10, "every item dispatched once");
    assert_eq!(state_of(&pool, run).await, "completed_with_errors");
    let task = store.get_task(run).await.expect("run");
    let summary = task.result.expect("a summary");
    assert_eq!(summary["steps"][1]["counts"]["completed"], 9);
    assert_eq!(summary["steps"][1]["counts"]["failed"], 1);
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_failed_child_stops_its_run_and_cancels_its_siblings(pool: PgPool) {
    let store = Store::new(pool.clone());
    let job = job(
        &store,
        "stops",
        json!({ "steps": [
            { "name": "upload", "parallel": [
                { "name": "a", "target": { "url": "http://core.invalid/a" } },
                { "name": "b", "target": { "url": "http://core.invalid/b" } } ] },
            { "name": "after", "target": { "url": "http://core.invalid/after" } } ] }),
    )
    .await;
    let run = create(&store, &job, new_task(None, None)).await;
    let children = claim_children(&store).await;
    let a = children
        .iter()
        .find(|c| c.child.as_ref().is_some_and(|w| w.name == "a"))
        .expect("a");
    store
        .record_outcomes(&[(a.claim(), answered(a, CallbackStatus::Failed))])
        .await
        .expect("record");
    assert_eq!(state_of(&pool, run).await, "failed");
    let states = children_of(&pool, run).await;
    assert_eq!(
        states,
        [
            (0, "a".to_owned(), "failed".to_owned()),
            (0, "b".to_owned(), "cancelled".to_owned())
        ],
        "the sibling is cancelled and no later step starts"
    );
    let task = store.get_task(run).await.expect("run");
    assert!(task.message.unwrap_or_default().contains("step `upload`"));
    // The cancelled sibling's downstream, its step's target, is to be told.
    let notices = store.take_cancel_notices(10).await.expect("notices");
    assert_eq!(notices.len(), 1);
    assert_eq!(
        notices[0]
            .child_target
            .as_ref()
            .and_then(|t| t.http())
            .map(|t| t.url.as_str()),
        Some("http://core.invalid/b")
    );

    // An operator's cancel of a run cancels its open children.
    let run = create(&store, &job, new_task(None, None)).await;
    assert_eq!(claim_children(&store).await.len(), 2);
    store.cancel_task(run).await.expect("cancel");
    let states: Vec<_> = children_of(&pool, run)
        .await
        .into_iter()
        .map(|(_, _, state)| state)
        .collect();
    assert_eq!(states, ["cancelled", "cancelled"]);
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn retrying_a_runs_errors_reruns_exactly_the_failed_items(pool: PgPool) {
    let store = Store::new(pool.clone());
    let job = job(&store, "items", item_sync(2, "continue")).await;
    let run = create(&store, &job, new_task(None, None)).await;
    list_items(&store, 6).await;
    loop {
        let due = claim_children(&store).await;
        if due.is_empty() {
            break;
        }
        for child in due {
            let key = child
                .child
                .as_ref()
                .map(|c| c.name.clone())
                .unwrap_or_default();
            let status = if key == "item-1" || key == "item-4" {
                CallbackStatus::Failed
            } else {
                CallbackStatus::Completed
            };
            store
                .report(child.id, &report(status, Some(json!({ "key": key }))))
                .await
                .expect("report");
        }
    }
    assert_eq!(state_of(&pool, run).await, "completed_with_errors");

    let retry = create(
        &store,
        &job,
        new_task(Some(pacer_store::retry_errors_key(run)), Some(run)),
    )
    .await;
    let rerun = claim_children(&store).await;
    let mut keys: Vec<String> = rerun
        .iter()
        .map(|c| c.child.as_ref().map(|w| w.name.clone()).unwrap_or_default())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["item-1", "item-4"],
        "only the failed items run again"
    );
    let children = children_of(&pool, retry).await;
    assert_eq!(
        children.len(),
        7,
        "the list and every item, reused or rerun"
    );
    assert_eq!(children[0], (0, "list".to_owned(), "completed".to_owned()));
    for child in rerun {
        store
            .report(child.id, &report(CallbackStatus::Completed, None))
            .await
            .expect("report");
    }
    assert_eq!(state_of(&pool, retry).await, "completed");
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_run_whose_inputs_would_pass_the_limit_fails_instead_of_truncating_them(pool: PgPool) {
    let store = Store::new(pool.clone());
    let job = job(
        &store,
        "big",
        json!({ "steps": [
            { "name": "extract", "target": { "url": "http://x.invalid/extract" } },
            { "name": "load", "target": { "url": "http://x.invalid/load" } } ] }),
    )
    .await;
    let run = create(&store, &job, new_task(None, None)).await;
    let extract = claim_children(&store).await;
    let big = "x".repeat(300 * 1024);
    store
        .report(
            extract[0].id,
            &report(CallbackStatus::Completed, Some(json!({ "blob": big }))),
        )
        .await
        .expect("report");
    assert_eq!(state_of(&pool, run).await, "failed");
    let task = store.get_task(run).await.expect("run");
    let message = task.message.unwrap_or_default();
    assert!(
        message.contains("step `load`") && message.contains("262144"),
        "{message}"
    );
    assert_eq!(
        children_of(&pool, run).await.len(),
        1,
        "the next step never started"
    );
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_run_that_times_out_fails_and_cancels_its_open_children(pool: PgPool) {
    let store = Store::new(pool.clone());
    let job = job(
        &store,
        "slow",
        json!({ "steps": [
            { "name": "upload", "parallel": [
                { "name": "a", "target": { "url": "http://x.invalid/a" } },
                { "name": "b", "target": { "url": "http://x.invalid/b" } } ] } ],
            "timeout": "1s" }),
    )
    .await;
    let run = create(&store, &job, new_task(None, None)).await;
    let children = claim_children(&store).await;
    assert_eq!(children.len(), 2);
    // Child `a` is accepted and stays open; once the timeout passes, the run (and its children,
    // which share its timeout) are claimed as timed out.
    let a = &children[0];
    let accepted = DispatchOutcome::Accepted {
        status: 202,
        report: None,
    };
    let outcome = Outcome {
        decision: after_dispatch(a.state, 0, 0, &a.job, &accepted, 0.5),
        attempt: AttemptOutcome::Accepted,
        node: "node-a".to_owned(),
        http_status: Some(202),
        error: None,
        error_code: None,
        latency: Duration::from_millis(5),
    };
    store
        .record_outcomes(&[(a.claim(), outcome)])
        .await
        .expect("record");
    // Claimed once its timeout has passed: look until it is, with a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut due = Vec::new();
    while !due.iter().any(|t: &ClaimedTask| t.id == run) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run never became due at its timeout"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        due.extend(
            store
                .claim_due("node-a", 10, Span::from_secs(30), Span::from_millis(0))
                .await
                .expect("claim"),
        );
    }
    let the_run = due
        .iter()
        .find(|t| t.id == run)
        .expect("the run is due at its timeout");
    assert!(the_run.timed_out);
    assert!(store.fail_timed_out(the_run).await.expect("time out"));
    assert_eq!(state_of(&pool, run).await, "failed");
    let states: Vec<_> = children_of(&pool, run)
        .await
        .into_iter()
        .map(|(_, _, state)| state)
        .collect();
    assert!(
        states.iter().all(|s| s == "cancelled" || s == "failed"),
        "no child of a timed-out run stays open: {states:?}"
    );
}

/// A job's own tasks are its runs, never their children, wherever they are counted: a finished
/// run is its job's last success (in a child's dispatch and in the job's freshness), and it is
/// pruned with its children once past retention, the newest completed run kept as the floor.
#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_finished_run_is_its_jobs_last_success_and_is_pruned_with_its_children(pool: PgPool) {
    const DAY_MS: i64 = 86_400_000;
    let store = Store::new(pool.clone());
    let job = job(
        &store,
        "nightly",
        json!({ "steps": [{ "name": "sync", "target": { "url": "http://sync.invalid/run" } }],
                "freshness": "6h" }),
    )
    .await;
    let mut runs = Vec::new();
    for _ in 0..2 {
        let last_success = match runs.last() {
            Some(run) => Some(started_at(&pool, *run).await),
            None => None,
        };
        let run = create(&store, &job, new_task(None, None)).await;
        for child in claim_children(&store).await {
            assert_eq!(
                child.last_success_at, last_success,
                "a child carries the start of its job's last completed run"
            );
            store
                .report(child.id, &report(CallbackStatus::Completed, None))
                .await
                .expect("report");
        }
        assert_eq!(state_of(&pool, run).await, "completed");
        runs.push(run);
    }
    let name: JobName = "nightly".parse().expect("name");
    let viewed = store.get_job(&name).await.expect("job");
    assert_eq!(
        viewed.fresh_until,
        Some(started_at(&pool, runs[1]).await + chrono::Duration::hours(6)),
        "the job is fresh for 6 h from its last completed run"
    );

    // Both runs finished three days ago, their outcomes seen by alerting: the older goes with
    // its child, the newer stays.
    sqlx::query(
        "update tasks set finished_at = now() - interval '3 days', outcome_noticed = true
         where job_id = $1",
    )
    .bind(job.id)
    .execute(&pool)
    .await
    .expect("age");
    let term = store
        .acquire_lease("node-a", 60_000, true)
        .await
        .expect("lease")
        .expect("held")
        .term;
    let pruned = store
        .prune_tasks("node-a", term, DAY_MS, 100)
        .await
        .expect("prune")
        .expect("not fenced");
    assert_eq!(
        (pruned.roots, pruned.tasks),
        (1, 2),
        "the older run and its one child: {pruned:?}"
    );
    let left: Vec<uuid::Uuid> =
        sqlx::query_scalar("select id from tasks where job_id = $1 and step is null order by id")
            .bind(job.id)
            .fetch_all(&pool)
            .await
            .expect("left");
    assert_eq!(left, vec![runs[1].as_uuid()]);
    assert_eq!(children_of(&pool, runs[0]).await, vec![]);
    assert_eq!(children_of(&pool, runs[1]).await.len(), 1);
}

async fn started_at(pool: &PgPool, id: TaskId) -> chrono::DateTime<chrono::Utc> {
    sqlx::query_scalar("select started_at from tasks where id = $1")
        .bind(id.as_uuid())
        .fetch_one(pool)
        .await
        .expect("started_at")
}
