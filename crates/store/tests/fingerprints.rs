//! Skip if unchanged on the real PostgreSQL: a task whose downstream reports the fingerprint of
//! the job's last completed run ends `completed` with outcome `unchanged`, by callback or in the
//! answer to its dispatch; the stored fingerprint moves only when a run completes; a workflow run
//! ends at its `skip_if_unchanged` step and keeps its fingerprint until it completes; a reset
//! forgets it.

use std::time::Duration;

use pacer_domain::dispatch::{AttemptOutcome, DispatchOutcome, Report};
use pacer_domain::{
    CallbackStatus, JobInput, JobName, JobSpec, Span, TaskId, TaskOutcome, TaskState,
    after_dispatch,
};
use pacer_store::{ClaimedTask, CreatedTask, Job, NewTask, Origin, Outcome, Store, TaskFilter};
use serde_json::{Value, json};
use sqlx::PgPool;

async fn job(store: &Store, name: &str, definition: Value) -> Job {
    let input: JobInput = serde_json::from_value(definition).expect("job input");
    let spec = JobSpec::try_from(input).expect("valid job");
    let name: JobName = name.parse().expect("name");
    store.put_job(&name, &spec).await.expect("put job").job
}

async fn create(store: &Store, job: &Job) -> TaskId {
    let task = NewTask::new(Origin::Api, json!({}));
    match store.create_task(job, task, None).await.expect("create") {
        CreatedTask::Created { id, .. } => id,
        other => panic!("expected a new task, got {other:?}"),
    }
}

/// Claims everything due; runs among them are started (as the dispatcher does), the rest are
/// returned for the test to end.
async fn claim(store: &Store) -> Vec<ClaimedTask> {
    let mut claimed = Vec::new();
    loop {
        let due = store
            .claim_due("node-a", 100, Span::from_secs(30), Span::from_millis(0))
            .await
            .expect("claim");
        if due.is_empty() {
            return claimed;
        }
        for task in due {
            if task.job.is_workflow() && task.child.is_none() {
                assert!(store.start_run(&task).await.expect("start run"));
            } else {
                claimed.push(task);
            }
        }
    }
}

/// Claims the one task due.
async fn claim_one(store: &Store) -> ClaimedTask {
    let mut claimed = claim(store).await;
    assert_eq!(claimed.len(), 1, "one task due");
    claimed.remove(0)
}

fn report(status: CallbackStatus, fingerprint: Option<&str>, unchanged: bool) -> Report {
    Report {
        status,
        progress: None,
        message: None,
        result: Some(json!({ "rows": 3 })),
        fingerprint: fingerprint.map(Box::from),
        unchanged,
        error: None,
        retryable: false,
    }
}

/// A dispatch answered `200` with `report` in its body.
fn answered(task: &ClaimedTask, report: Report) -> Outcome {
    let outcome = DispatchOutcome::Accepted {
        status: 200,
        report: Some(report),
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

async fn stored(store: &Store, job: &Job) -> Option<String> {
    store
        .job_fingerprint(job)
        .await
        .expect("fingerprint")
        .map(|f| f.fingerprint)
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_task_reporting_the_last_completed_fingerprint_ends_unchanged(pool: PgPool) {
    let store = Store::new(pool.clone());
    let job = job(
        &store,
        "timetable",
        json!({ "target": { "url": "http://timetable.invalid/download" },
                "skip_if_unchanged": true }),
    )
    .await;

    // The first task has nothing to compare with: it does its work, and its fingerprint becomes
    // the job's when it completes.
    let first = create(&store, &job).await;
    let claimed = claim_one(&store).await;
    assert!(claimed.skips_if_unchanged());
    assert_eq!(claimed.last_fingerprint, None);
    let (_, task) = store
        .report(
            first,
            &report(CallbackStatus::Completed, Some("sha256:a"), false),
        )
        .await
        .expect("report");
    assert_eq!(task.state, TaskState::Completed);
    assert_eq!(task.outcome, None);
    assert_eq!(task.fingerprint.as_deref(), Some("sha256:a"));
    assert_eq!(stored(&store, &job).await.as_deref(), Some("sha256:a"));

    // The same input again, answered in the body of the dispatch: unchanged.
    let second = create(&store, &job).await;
    let claimed = claim_one(&store).await;
    assert_eq!(claimed.last_fingerprint.as_deref(), Some("sha256:a"));
    let recorded = store
        .record_outcomes(&[(
            claimed.claim(),
            answered(
                &claimed,
                report(CallbackStatus::Completed, Some("sha256:a"), false),
            ),
        )])
        .await
        .expect("record");
    assert!(recorded[0].applied);
    assert_eq!(recorded[0].outcome, Some(TaskOutcome::Unchanged));
    let task = store.get_task(second).await.expect("task");
    assert_eq!(
        (task.state, task.outcome),
        (TaskState::Completed, Some(TaskOutcome::Unchanged))
    );

    // A new input that completes only with errors does not move the fingerprint.
    let third = create(&store, &job).await;
    claim_one(&store).await;
    let (_, task) = store
        .report(
            third,
            &report(CallbackStatus::CompletedWithErrors, Some("sha256:b"), false),
        )
        .await
        .expect("report");
    assert_eq!(task.outcome, None);
    assert_eq!(stored(&store, &job).await.as_deref(), Some("sha256:a"));

    // A downstream may say so outright.
    let fourth = create(&store, &job).await;
    claim_one(&store).await;
    let (_, task) = store
        .report(fourth, &report(CallbackStatus::Completed, None, true))
        .await
        .expect("report");
    assert_eq!(task.outcome, Some(TaskOutcome::Unchanged));

    // Visible in the listing filter and in the summary.
    let filter = TaskFilter {
        outcome: Some(TaskOutcome::Unchanged),
        limit: 10,
        ..TaskFilter::default()
    };
    let unchanged: Vec<TaskId> = store
        .list_tasks(&filter)
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(unchanged, [fourth, second]);
    let stats = store.job_stats(&job, 100).await.expect("stats");
    assert_eq!(stats.unchanged, 2);
    assert!(stats.last_unchanged_at.is_some());
    assert_eq!(
        stats.fingerprint.map(|f| (f.fingerprint, f.task)),
        Some(("sha256:a".to_owned(), Some(first)))
    );

    // The event stream carries the outcome with the state change.
    let outcomes: Vec<Option<String>> = sqlx::query_scalar(
        "select data ->> 'outcome' from events
         where task_id = $1 and kind = 'task.state' and data ->> 'state' = 'completed'",
    )
    .bind(second.as_uuid())
    .fetch_all(&pool)
    .await
    .expect("events");
    assert_eq!(outcomes, [Some("unchanged".to_owned())]);

    // A reset forgets the fingerprint: the next task goes through with the same input.
    let previous = store.reset_fingerprint(&job).await.expect("reset");
    assert_eq!(previous.map(|f| f.fingerprint).as_deref(), Some("sha256:a"));
    assert!(
        store
            .reset_fingerprint(&job)
            .await
            .expect("reset")
            .is_none()
    );
    let fifth = create(&store, &job).await;
    let claimed = claim_one(&store).await;
    assert_eq!(claimed.last_fingerprint, None);
    let (_, task) = store
        .report(
            fifth,
            &report(CallbackStatus::Completed, Some("sha256:a"), false),
        )
        .await
        .expect("report");
    assert_eq!(task.outcome, None, "nothing to compare with after a reset");
    assert_eq!(stored(&store, &job).await.as_deref(), Some("sha256:a"));
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_job_without_skip_if_unchanged_ignores_fingerprints(pool: PgPool) {
    let store = Store::new(pool);
    let job = job(
        &store,
        "plain",
        json!({ "target": { "url": "http://plain.invalid/run" } }),
    )
    .await;
    for _ in 0..2 {
        let id = create(&store, &job).await;
        let claimed = claim_one(&store).await;
        assert!(!claimed.skips_if_unchanged());
        let (_, task) = store
            .report(
                id,
                &report(CallbackStatus::Completed, Some("sha256:a"), true),
            )
            .await
            .expect("report");
        assert_eq!((task.state, task.outcome), (TaskState::Completed, None));
        assert_eq!(task.fingerprint, None);
    }
    assert_eq!(stored(&store, &job).await, None);
}

/// The children of `run` by step name and state, in creation order.
async fn children_of(pool: &PgPool, run: TaskId) -> Vec<(String, String)> {
    sqlx::query_as::<_, (String, String)>(
        "select child, state from tasks where run_id = $1 and step is not null order by id",
    )
    .bind(run.as_uuid())
    .fetch_all(pool)
    .await
    .expect("children")
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_run_ends_unchanged_at_its_skip_step_and_moves_the_fingerprint_only_when_it_completes(
    pool: PgPool,
) {
    let store = Store::new(pool.clone());
    let job = job(
        &store,
        "extraction",
        json!({ "steps": [
            { "name": "download", "skip_if_unchanged": true,
              "target": { "url": "http://extractor.invalid/download" } },
            { "name": "publish", "target": { "url": "http://extractor.invalid/publish" } } ] }),
    )
    .await;

    // A run whose later step fails keeps its fingerprint to itself.
    let failed = create(&store, &job).await;
    let download = claim_one(&store).await;
    assert!(download.skips_if_unchanged());
    assert_eq!(download.last_fingerprint, None);
    store
        .report(
            download.id,
            &report(CallbackStatus::Completed, Some("sha256:a"), false),
        )
        .await
        .expect("download");
    let publish = claim_one(&store).await;
    assert!(!publish.skips_if_unchanged());
    store
        .report(publish.id, &report(CallbackStatus::Failed, None, false))
        .await
        .expect("publish");
    assert_eq!(
        store.get_task(failed).await.expect("run").state,
        TaskState::Failed
    );
    assert_eq!(
        stored(&store, &job).await,
        None,
        "a failed run moves nothing"
    );

    // A run that completes makes its skip step's fingerprint the job's.
    let completed = create(&store, &job).await;
    let download = claim_one(&store).await;
    assert_eq!(download.last_fingerprint, None);
    let recorded = store
        .record_outcomes(&[(
            download.claim(),
            answered(
                &download,
                report(CallbackStatus::Completed, Some("sha256:a"), false),
            ),
        )])
        .await
        .expect("record");
    assert_eq!(recorded[0].outcome, None);
    let publish = claim_one(&store).await;
    store
        .report(publish.id, &report(CallbackStatus::Completed, None, false))
        .await
        .expect("publish");
    let run = store.get_task(completed).await.expect("run");
    assert_eq!((run.state, run.outcome), (TaskState::Completed, None));
    assert_eq!(run.fingerprint.as_deref(), Some("sha256:a"));
    assert_eq!(stored(&store, &job).await.as_deref(), Some("sha256:a"));

    // The same input again: the run ends unchanged at its first step, and publish never runs.
    let unchanged = create(&store, &job).await;
    let download = claim_one(&store).await;
    assert_eq!(download.last_fingerprint.as_deref(), Some("sha256:a"));
    let (_, child) = store
        .report(
            download.id,
            &report(CallbackStatus::Completed, Some("sha256:a"), false),
        )
        .await
        .expect("download");
    assert_eq!(child.outcome, Some(TaskOutcome::Unchanged));
    let run = store.get_task(unchanged).await.expect("run");
    assert_eq!(
        (run.state, run.outcome),
        (TaskState::Completed, Some(TaskOutcome::Unchanged))
    );
    assert!(
        run.message
            .as_deref()
            .is_some_and(|m| m.contains("download")),
        "{:?}",
        run.message
    );
    assert_eq!(
        children_of(&pool, unchanged).await,
        [("download".to_owned(), "completed".to_owned())]
    );
    assert!(claim(&store).await.is_empty(), "nothing left to dispatch");
    assert_eq!(stored(&store, &job).await.as_deref(), Some("sha256:a"));
}
