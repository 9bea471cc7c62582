//! Retrying the failures a downstream reports with an error code its job names, on the real
//! PostgreSQL: through a callback and through a status body, for a task and for a run's child.

use std::time::Duration;

use pacer_domain::dispatch::{AttemptOutcome, DispatchOutcome, Report, ReportedError};
use pacer_domain::{
    CallbackStatus, JobInput, JobName, JobSpec, Span, TaskId, TaskState, after_dispatch,
};
use pacer_store::{ClaimedTask, CreatedTask, Job, NewTask, Origin, Outcome, ReportOutcome, Store};
use serde_json::{Value, json};
use sqlx::PgPool;

async fn job(store: &Store, name: &str, definition: Value) -> Job {
    let input: JobInput = serde_json::from_value(definition).expect("job input");
    let spec = JobSpec::try_from(input).expect("valid job");
    let name: JobName = name.parse().expect("name");
    store.put_job(&name, &spec).await.expect("put job").job
}

fn retrying() -> Value {
    json!({ "max_attempts": 3, "initial_backoff": "10ms", "jitter": 0.0,
            "on_errors": ["UpstreamTimeout"] })
}

async fn create(store: &Store, job: &Job) -> TaskId {
    match store
        .create_task(job, NewTask::new(Origin::Api, json!({})), None)
        .await
        .expect("create")
    {
        CreatedTask::Created { id, .. } => id,
        other => panic!("expected a new task, got {other:?}"),
    }
}

/// Claims for `node` until a task comes back or the deadline passes.
async fn claim_when_due(store: &Store) -> ClaimedTask {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut claimed = store
            .claim_due("node-a", 1, Span::from_secs(30), Span::from_millis(0))
            .await
            .expect("claim");
        if let Some(task) = claimed.pop() {
            return task;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing became claimable"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn recorded_outcome(task: &ClaimedTask, answer: DispatchOutcome) -> Outcome {
    let decision = after_dispatch(
        task.state,
        u32::try_from(task.consecutive_failures).expect("count"),
        u32::try_from(task.reported_failures).expect("count"),
        &task.job,
        &answer,
        0.5,
    );
    Outcome {
        attempt: decision.attempt.unwrap_or_else(|| answer.attempt_outcome()),
        node: "node-a".to_owned(),
        http_status: answer.http_status(),
        error: decision.reported_error(),
        error_code: decision.error_code().map(str::to_owned),
        latency: Duration::from_millis(5),
        decision,
    }
}

/// Claims the task and records an accepted dispatch: it is `processing`.
async fn dispatch(store: &Store) -> ClaimedTask {
    let task = claim_when_due(store).await;
    let accepted = recorded_outcome(
        &task,
        DispatchOutcome::Accepted {
            status: 202,
            report: None,
        },
    );
    assert!(
        store
            .record_outcome(&task, &accepted)
            .await
            .expect("record")
    );
    task
}

fn failed(code: &str) -> Report {
    Report {
        status: CallbackStatus::Failed,
        progress: None,
        message: Some("gave up".into()),
        result: None,
        error: Some(Box::new(ReportedError {
            code: code.into(),
            message: Some("the registry did not answer in 30s".into()),
        })),
        retryable: false,
        fingerprint: None,
        unchanged: false,
    }
}

async fn states(pool: &PgPool, id: TaskId) -> Vec<String> {
    sqlx::query_scalar::<_, String>(
        "select data ->> 'state' from events where task_id = $1 and kind = 'task.state' order by id",
    )
    .bind(id.as_uuid())
    .fetch_all(pool)
    .await
    .expect("events")
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_reported_failure_with_a_named_code_is_dispatched_again_until_the_attempts_run_out(
    pool: PgPool,
) {
    let store = Store::new(pool.clone());
    let job = job(
        &store,
        "sync",
        json!({ "target": { "url": "http://downstream.invalid/run" }, "retry": retrying() }),
    )
    .await;
    let id = create(&store, &job).await;

    for attempt in 1..=2 {
        let claimed = dispatch(&store).await;
        assert_eq!(claimed.attempt, attempt);
        let (outcome, task) = store
            .report(id, &failed("UpstreamTimeout"))
            .await
            .expect("report");
        assert_eq!(outcome, ReportOutcome::Applied(TaskState::Pending));
        assert_eq!(task.state, TaskState::Pending);
        assert!(task.next_dispatch_at.is_some(), "due again after a backoff");
        assert_eq!(task.claimed_by, None);
        assert_eq!(
            task.last_error.as_deref(),
            Some("UpstreamTimeout: the registry did not answer in 30s")
        );
        // The downstream repeating its callback changes nothing.
        let (repeat, _) = store
            .report(id, &failed("UpstreamTimeout"))
            .await
            .expect("repeat");
        assert_eq!(repeat, ReportOutcome::Unchanged(TaskState::Pending));
    }

    dispatch(&store).await;
    let (outcome, task) = store
        .report(id, &failed("UpstreamTimeout"))
        .await
        .expect("last report");
    assert_eq!(outcome, ReportOutcome::Applied(TaskState::Failed));
    assert_eq!(task.failure_reason.as_deref(), Some("attempts_exhausted"));
    assert_eq!(
        task.last_error.as_deref(),
        Some("UpstreamTimeout: the registry did not answer in 30s")
    );

    let attempts = store.task_attempts(id).await.expect("attempts");
    assert_eq!(attempts.len(), 3);
    for attempt in &attempts {
        assert_eq!(attempt.error_code.as_deref(), Some("UpstreamTimeout"));
    }
    assert_eq!(
        states(&pool, id).await,
        [
            "pending",
            "processing",
            "pending",
            "processing",
            "pending",
            "processing",
            "failed"
        ]
    );
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn an_unnamed_code_is_final_and_a_status_body_is_weighed_like_a_callback(pool: PgPool) {
    let store = Store::new(pool.clone());
    let job = job(
        &store,
        "sync",
        json!({ "target": { "url": "http://downstream.invalid/run" }, "retry": retrying() }),
    )
    .await;

    // A code the job does not name ends the task, and the failure names it.
    let first = create(&store, &job).await;
    dispatch(&store).await;
    let (outcome, task) = store
        .report(first, &failed("BadInput"))
        .await
        .expect("report");
    assert_eq!(outcome, ReportOutcome::Applied(TaskState::Failed));
    assert_eq!(task.failure_reason.as_deref(), Some("reported"));
    assert_eq!(
        task.last_error.as_deref(),
        Some("BadInput: the registry did not answer in 30s")
    );

    // `retryable: true` retries whatever the code; the answer's own status body is weighed the
    // same way, and the attempt counts as a transient error.
    let second = create(&store, &job).await;
    let claimed = claim_when_due(&store).await;
    assert_eq!(claimed.id, second);
    let answer = DispatchOutcome::Accepted {
        status: 200,
        report: Some(Report {
            retryable: true,
            ..failed("Throttled")
        }),
    };
    let recorded = recorded_outcome(&claimed, answer);
    assert!(
        store
            .record_outcome(&claimed, &recorded)
            .await
            .expect("record")
    );
    let task = store.get_task(second).await.expect("task");
    assert_eq!(task.state, TaskState::Pending);
    assert_eq!(
        task.last_error.as_deref(),
        Some("Throttled: the registry did not answer in 30s")
    );
    let attempts = store.task_attempts(second).await.expect("attempts");
    assert_eq!(attempts[0].outcome, AttemptOutcome::TransientError.as_str());
    assert_eq!(attempts[0].error_code.as_deref(), Some("Throttled"));

    // The next attempt's answer completes it.
    let again = claim_when_due(&store).await;
    assert_eq!(
        (again.id, again.attempt, again.reported_failures),
        (second, 2, 1)
    );
    let done = DispatchOutcome::Accepted {
        status: 200,
        report: Some(Report {
            status: CallbackStatus::Completed,
            progress: None,
            message: None,
            result: None,
            error: None,
            retryable: false,
            fingerprint: None,
            unchanged: false,
        }),
    };
    let recorded = recorded_outcome(&again, done);
    assert!(
        store
            .record_outcome(&again, &recorded)
            .await
            .expect("record")
    );
    assert_eq!(
        store.get_task(second).await.expect("task").state,
        TaskState::Completed
    );
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_retried_child_keeps_its_run_open(pool: PgPool) {
    let store = Store::new(pool.clone());
    let job = job(
        &store,
        "timetable",
        json!({ "retry": retrying(), "steps": [
            { "name": "upload", "target": { "url": "http://core.invalid/timetable" } } ] }),
    )
    .await;
    let run = create(&store, &job).await;
    let started = claim_when_due(&store).await;
    assert_eq!(started.id, run);
    assert!(store.start_run(&started).await.expect("start run"));

    let child = dispatch(&store).await;
    assert_eq!(child.child.as_ref().map(|c| c.run), Some(run));
    let (outcome, _) = store
        .report(child.id, &failed("UpstreamTimeout"))
        .await
        .expect("report");
    assert_eq!(outcome, ReportOutcome::Applied(TaskState::Pending));
    let run_state = store.get_task(run).await.expect("run").state;
    assert!(!run_state.is_terminal(), "the run goes on: {run_state}");

    let again = dispatch(&store).await;
    assert_eq!((again.id, again.attempt), (child.id, 2));
    let completed = Report {
        status: CallbackStatus::Completed,
        progress: None,
        message: None,
        result: Some(json!({ "rows": 3 })),
        error: None,
        retryable: false,
        fingerprint: None,
        unchanged: false,
    };
    store.report(child.id, &completed).await.expect("report");
    assert_eq!(
        store.get_task(run).await.expect("run").state,
        TaskState::Completed
    );
}
