//! The store's claim and fencing guarantees on the real PostgreSQL: concurrent claimers never
//! share a task, an expired claim is taken over, and a stale claim token writes nothing.

use std::collections::HashSet;
use std::time::Duration;

use pacer_domain::dispatch::{AttemptOutcome, DispatchOutcome, Report};
use pacer_domain::{
    CallbackStatus, JobInput, JobName, JobSpec, Span, TaskId, TaskState, after_dispatch,
};
use pacer_store::{ClaimedTask, CreatedTask, Job, NewTask, Origin, Outcome, ReportOutcome, Store};
use serde_json::json;
use sqlx::PgPool;

async fn job(store: &Store, dispatch_timeout: &str) -> Job {
    let input: JobInput = serde_json::from_value(json!({
        "target": { "url": "http://downstream.invalid/run" },
        "payload": { "from": "job" },
        "dispatch_timeout": dispatch_timeout,
        "repoll_interval": "30s",
    }))
    .expect("job input");
    let spec = JobSpec::try_from(input).expect("valid job");
    let name: JobName = "sync".parse().expect("name");
    store.put_job(&name, &spec).await.expect("put job").job
}

fn new_task(key: Option<&str>) -> NewTask {
    NewTask {
        id: TaskId::new(),
        origin: Origin::Api,
        idempotency_key: key.map(str::to_owned),
        payload: json!({ "n": 1 }),
        not_before: None,
        trace_context: None,
        actor: None,
        retry_of: None,
        notify: None,
    }
}

async fn create(store: &Store, job: &Job) -> TaskId {
    match store
        .create_task(job, new_task(None), None)
        .await
        .expect("create")
    {
        CreatedTask::Created {
            id, claimed: None, ..
        } => id,
        other => panic!("expected an unclaimed new task, got {other:?}"),
    }
}

fn accepted(task: &ClaimedTask, node: &str) -> Outcome {
    let outcome = DispatchOutcome::Accepted {
        status: 202,
        report: None,
    };
    Outcome {
        decision: after_dispatch(task.state, 0, 0, &task.job, &outcome, 0.5),
        attempt: AttemptOutcome::Accepted,
        node: node.to_owned(),
        http_status: Some(202),
        error: None,
        error_code: None,
        latency: Duration::from_millis(5),
    }
}

/// Asks `check` every 20 ms until it gives a value, failing after 10 s.
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Claims for `node` until a task comes back or the deadline passes.
async fn claim_when_due(store: &Store, node: &str) -> ClaimedTask {
    wait_for(&format!("nothing became claimable for {node}"), || async {
        store
            .claim_due(node, 1, Span::from_millis(0), Span::from_millis(0))
            .await
            .expect("claim")
            .pop()
    })
    .await
}

/// Claims `n` tasks due now for `node-a`, however many looks it takes.
async fn claim_all(store: &Store, n: usize) -> Vec<ClaimedTask> {
    let wanted = i64::try_from(n).expect("small");
    let mut claimed = Vec::new();
    while claimed.len() < n {
        claimed.extend(
            store
                .claim_due("node-a", wanted, Span::from_millis(0), Span::from_millis(0))
                .await
                .expect("claim"),
        );
    }
    claimed
}

/// How many tasks are in each state, by state.
async fn states(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("select state, count(*) from tasks group by state order by state")
        .fetch_all(pool)
        .await
        .expect("states")
}

async fn attempts(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from task_attempts")
        .fetch_one(pool)
        .await
        .expect("attempts")
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn concurrent_claimers_never_get_the_same_task(pool: PgPool) {
    let store = Store::new(pool);
    let job = job(&store, "10s").await;
    let mut created = HashSet::new();
    for _ in 0..200 {
        created.insert(create(&store, &job).await);
    }
    let claimers = (0..4).map(|n| {
        let store = store.clone();
        tokio::spawn(async move {
            let node = format!("node-{n}");
            let mut mine = Vec::new();
            loop {
                let batch = store
                    .claim_due(&node, 7, Span::from_secs(10), Span::from_millis(0))
                    .await
                    .expect("claim");
                if batch.is_empty() {
                    return mine;
                }
                mine.extend(batch.into_iter().map(|t| (t.id, node.clone(), t.attempt)));
            }
        })
    });
    let mut seen = HashSet::new();
    for claimer in claimers {
        for (id, node, attempt) in claimer.await.expect("claimer") {
            assert!(
                seen.insert(id),
                "task {id} claimed twice (second time by {node})"
            );
            assert_eq!(attempt, 1);
        }
    }
    assert_eq!(seen, created, "every task claimed exactly once");
    assert!(
        store
            .claim_due("late", 10, Span::from_secs(10), Span::from_millis(0))
            .await
            .expect("claim")
            .is_empty()
    );
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn an_expired_claim_is_reclaimed_and_a_stale_owner_writes_nothing(pool: PgPool) {
    let store = Store::new(pool.clone());
    let job = job(&store, "200ms").await;
    let id = create(&store, &job).await;

    let first = claim_when_due(&store, "node-a").await;
    assert_eq!((first.id, first.attempt), (id, 1));
    assert!(
        store
            .claim_due("node-b", 10, Span::from_millis(0), Span::from_millis(0))
            .await
            .expect("claim")
            .is_empty(),
        "a live claim is not claimable"
    );

    // node-a goes silent; once its 200 ms lease runs out, node-b takes the task over.
    let second = claim_when_due(&store, "node-b").await;
    assert_eq!((second.id, second.attempt), (id, 2));
    assert_ne!(second.claim_token, first.claim_token);
    let attempts = store.task_attempts(id).await.expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (attempts[0].number, attempts[0].node.as_str()),
        (1, "node-a")
    );
    assert_eq!(attempts[0].outcome, "abandoned");

    // node-a wakes up and reports: its claim token is stale, so the task is left alone...
    let applied = store
        .record_outcome(&first, &accepted(&first, "node-a"))
        .await
        .expect("record");
    assert!(!applied, "a stale claim must not write the task");
    let task = store.get_task(id).await.expect("task");
    assert_eq!(task.state, TaskState::Pending);
    assert_eq!(task.claimed_by.as_deref(), Some("node-b"));
    // ...but what its dispatch actually got is recorded on its attempt.
    let attempts = store.task_attempts(id).await.expect("attempts");
    assert_eq!(attempts[0].outcome, "accepted");

    let applied = store
        .record_outcome(&second, &accepted(&second, "node-b"))
        .await
        .expect("record");
    assert!(applied, "the current claim writes");
    let task = store.get_task(id).await.expect("task");
    assert_eq!(task.state, TaskState::Processing);
    assert_eq!(task.claimed_by, None);
    assert_eq!(task.attempt, 2);
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_callback_ending_the_task_fences_off_the_dispatch_in_flight(pool: PgPool) {
    let store = Store::new(pool);
    let job = job(&store, "10s").await;
    let id = create(&store, &job).await;
    let claimed = claim_when_due(&store, "node-a").await;

    let report = Report {
        status: CallbackStatus::Completed,
        progress: None,
        message: Some("done".into()),
        result: Some(json!({ "rows": 3 })),
        fingerprint: None,
        unchanged: false,
        error: None,
        retryable: false,
    };
    assert_eq!(
        store.report(id, &report).await.expect("report").0,
        ReportOutcome::Applied(TaskState::Completed)
    );
    assert_eq!(
        store.report(id, &report).await.expect("repeat").0,
        ReportOutcome::Unchanged(TaskState::Completed)
    );
    let failed = Report {
        status: CallbackStatus::Failed,
        ..report.clone()
    };
    assert_eq!(
        store.report(id, &failed).await.expect("late").0,
        ReportOutcome::Refused(TaskState::Completed)
    );

    let applied = store
        .record_outcome(&claimed, &accepted(&claimed, "node-a"))
        .await
        .expect("record");
    assert!(!applied);
    let task = store.get_task(id).await.expect("task");
    assert_eq!(task.state, TaskState::Completed);
    assert_eq!(task.result, Some(json!({ "rows": 3 })));
    assert_eq!(task.next_dispatch_at, None);
    assert!(task.finished_at.is_some());
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn the_same_idempotency_key_never_creates_a_second_task(pool: PgPool) {
    let store = Store::new(pool.clone());
    let job = job(&store, "10s").await;
    let first = store
        .create_task(
            &job,
            new_task(Some("evt-1")),
            Some(("node-a", Span::from_secs(5))),
        )
        .await;
    let CreatedTask::Created {
        id,
        claimed: Some(claimed),
        ..
    } = first.expect("create")
    else {
        panic!("a task due now is created claimed when asked");
    };
    assert_eq!(
        (claimed.id, claimed.attempt, claimed.state),
        (id, 1, TaskState::Pending)
    );
    let again = store
        .create_task(&job, new_task(Some("evt-1")), None)
        .await
        .expect("again");
    assert!(matches!(again, CreatedTask::Existing { id: existing } if existing == id));
    let other = store
        .create_task(&job, new_task(Some("evt-2")), None)
        .await
        .expect("other");
    assert!(matches!(other, CreatedTask::Created { id: other, .. } if other != id));
    let count: i64 = sqlx::query_scalar("select count(*) from tasks")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(count, 2);
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn released_claims_are_due_at_once_and_recorded_as_interrupted(pool: PgPool) {
    let store = Store::new(pool);
    let job = job(&store, "10s").await;
    let id = create(&store, &job).await;
    let claimed = claim_when_due(&store, "node-a").await;
    let release = claimed.claim();
    assert_eq!(
        store
            .release_claims("node-a", &[release])
            .await
            .expect("release"),
        1
    );
    assert_eq!(
        store
            .release_claims("node-a", &[release])
            .await
            .expect("again"),
        0,
        "a claim is released once"
    );
    let again = store
        .claim_due("node-b", 10, Span::from_secs(5), Span::from_millis(0))
        .await
        .expect("claim");
    assert_eq!(
        again.len(),
        1,
        "released work is claimable without waiting for the lease"
    );
    assert_eq!(again[0].attempt, 2);
    let attempts = store.task_attempts(id).await.expect("attempts");
    assert_eq!(attempts[0].outcome, "interrupted");
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn deleting_a_job_with_open_tasks_needs_consent_and_keeps_history(pool: PgPool) {
    let store = Store::new(pool);
    let job = job(&store, "10s").await;
    let id = create(&store, &job).await;
    let refused = store.delete_job(&job.name, false).await;
    assert!(matches!(refused, Err(pacer_store::Error::Conflict { .. })));
    assert_eq!(
        store.get_task(id).await.expect("task").state,
        TaskState::Pending
    );
    let deleted = store.delete_job(&job.name, true).await.expect("delete");
    assert_eq!(deleted.cancelled_tasks, 1);
    let task = store.get_task(id).await.expect("history stays");
    assert_eq!(task.state, TaskState::Cancelled);
    assert!(matches!(
        store.get_job(&job.name).await,
        Err(pacer_store::Error::NotFound(_))
    ));
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_node_of_the_previous_release_starts_on_a_newer_schema(pool: PgPool) {
    // A newer release applied a migration this one does not know.
    sqlx::query(
        "insert into _sqlx_migrations (version, description, success, checksum, execution_time)
         values (99991231000000, 'from a newer release', true, '\\x00', 0)",
    )
    .execute(&pool)
    .await
    .expect("newer migration");
    let store = Store::new(pool);
    store
        .migrate()
        .await
        .expect("a newer migration does not stop this release");
    assert!(store.is_ready().await.expect("ready"));
}

fn transient(task: &ClaimedTask, node: &str, error: &str) -> Outcome {
    let outcome = DispatchOutcome::Transient {
        status: Some(503),
        error: error.to_owned(),
        retry_after: None,
    };
    Outcome {
        decision: after_dispatch(task.state, 0, 0, &task.job, &outcome, 0.5),
        attempt: AttemptOutcome::TransientError,
        node: node.to_owned(),
        http_status: Some(503),
        error: Some(error.to_owned()),
        error_code: None,
        latency: Duration::from_millis(5),
    }
}

async fn streak(pool: &PgPool, job: &Job) -> (i32, i32, Option<String>) {
    sqlx::query_as("select errors, noticed, last_error from dispatch_streaks where job_id = $1")
        .bind(job.id)
        .fetch_one(pool)
        .await
        .expect("streak")
}

/// Outcomes recorded together are applied as if one after the other: each task takes its own,
/// one whose claim moved on is left alone, and each job's streak of transient errors counts only
/// the errors after its last good answer in the batch.
#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_batch_of_outcomes_is_recorded_as_if_in_sequence(pool: PgPool) {
    let store = Store::new(pool.clone());
    let a = job(&store, "10s").await;
    let b = store
        .put_job(&"other".parse().expect("name"), &a.spec)
        .await
        .expect("put job")
        .job;
    for (job, errors, noticed) in [(&a, 5, 5), (&b, 2, 1)] {
        sqlx::query("insert into dispatch_streaks (job_id, errors, noticed) values ($1, $2, $3)")
            .bind(job.id)
            .bind(errors)
            .bind(noticed)
            .execute(&pool)
            .await
            .expect("streak");
    }
    for job in [&a, &a, &a, &a, &b, &b, &b] {
        create(&store, job).await;
    }
    let claimed = claim_all(&store, 7).await;
    let (of_a, of_b): (Vec<_>, Vec<_>) = claimed.iter().partition(|t| t.job_name == "sync");
    let mut moved = of_b[2].claim();
    moved.claim_token = uuid::Uuid::now_v7();
    let batch = vec![
        (of_a[0].claim(), transient(of_a[0], "node-a", "a1")),
        (of_b[0].claim(), transient(of_b[0], "node-a", "b1")),
        (of_a[1].claim(), accepted(of_a[1], "node-a")),
        (of_a[2].claim(), transient(of_a[2], "node-a", "a3")),
        (moved, accepted(of_b[2], "node-a")),
        (of_b[1].claim(), transient(of_b[1], "node-a", "b2")),
        (of_a[3].claim(), transient(of_a[3], "node-a", "a4")),
    ];
    let recorded = store.record_outcomes(&batch).await.expect("record");
    let applied: Vec<bool> = recorded.iter().map(|r| r.applied).collect();
    assert_eq!(applied, [true, true, true, true, false, true, true]);

    // Job a answered well in the middle: its stored streak ended there, two errors came after.
    assert_eq!(streak(&pool, &a).await, (2, 0, Some("a4".into())));
    // Job b answered well through the dispatch whose claim had moved on (the answer still shows
    // the downstream up), and failed once after it.
    assert_eq!(streak(&pool, &b).await, (1, 0, Some("b2".into())));
    assert_eq!(
        attempts(&pool).await,
        7,
        "every dispatch's attempt is recorded, moved or not"
    );
    assert_eq!(
        states(&pool).await,
        [("pending".to_owned(), 6), ("processing".to_owned(), 1)]
    );
}

/// A batch of outcomes does not wait for a task another transaction holds (a callback batch
/// ending it): the rest of the batch is written and committed at once, and the held one is
/// recorded once its holder commits, against the state that holder left.
#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_batch_of_outcomes_passes_over_a_task_another_write_holds(pool: PgPool) {
    let store = Store::new(pool.clone());
    let job = job(&store, "10s").await;
    for _ in 0..3 {
        create(&store, &job).await;
    }
    let mut claimed = claim_all(&store, 3).await;
    claimed.sort_by_key(|t| t.id.as_uuid());
    let held = claimed[1].id.as_uuid();

    // Another writer holds the middle task, and ends it, as a callback would.
    let mut holder = pool.begin().await.expect("begin");
    sqlx::query("select id from tasks where id = $1 for update")
        .bind(held)
        .execute(&mut *holder)
        .await
        .expect("lock");
    sqlx::query(
        "update tasks set state = 'completed', finished_at = now(), next_dispatch_at = null,
             claim_token = null, claimed_by = null, claimed_at = null where id = $1",
    )
    .bind(held)
    .execute(&mut *holder)
    .await
    .expect("end");

    let batch: Vec<_> = claimed
        .iter()
        .map(|t| (t.claim(), accepted(t, "node-a")))
        .collect();
    let recording = tokio::spawn({
        let store = store.clone();
        async move { store.record_outcomes(&batch).await }
    });
    // The other two are committed while the middle one is still held.
    wait_for(
        "the tasks nobody else held were not recorded while one was held",
        || async {
            let processing: i64 =
                sqlx::query_scalar("select count(*) from tasks where state = 'processing'")
                    .fetch_one(&pool)
                    .await
                    .expect("count");
            (processing == 2).then_some(())
        },
    )
    .await;
    assert!(
        !recording.is_finished(),
        "the held task is not yet recorded"
    );
    holder.commit().await.expect("commit");

    let recorded = recording.await.expect("join").expect("record");
    let applied: Vec<bool> = recorded.iter().map(|r| r.applied).collect();
    assert_eq!(
        applied,
        [true, false, true],
        "the held task's claim was gone once its holder committed"
    );
    assert_eq!(
        states(&pool).await,
        [("completed".to_owned(), 1), ("processing".to_owned(), 2)]
    );
    assert_eq!(
        attempts(&pool).await,
        3,
        "every dispatch's attempt is recorded, held or not"
    );
}
