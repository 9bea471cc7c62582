//! Group commit of task creation on the real PostgreSQL: requests that arrive together share a
//! statement, yet each gets the answer it would have got alone.

use std::sync::Arc;

use pacer_domain::{JobInput, JobName, JobSpec, Span, TaskId};
use pacer_store::batch::Batcher;
use pacer_store::{CreatedTask, Job, KeptTask, NewTask, Origin, Store, TaskCreation};
use serde_json::{Value, json};
use sqlx::PgPool;

async fn job(store: &Store) -> Job {
    let input: JobInput = serde_json::from_value(json!({
        "target": { "url": "http://downstream.invalid/run" },
        "payload": { "from": "job" },
    }))
    .expect("job input");
    let spec = JobSpec::try_from(input).expect("valid job");
    let name: JobName = "sync".parse().expect("name");
    store.put_job(&name, &spec).await.expect("put job").job
}

fn kept(job: &Arc<Job>, key: Option<&str>, payload: Value, claim: bool) -> KeptTask {
    KeptTask {
        job: job.clone(),
        task: NewTask {
            id: TaskId::new(),
            origin: Origin::Api,
            idempotency_key: key.map(str::to_owned),
            payload,
            not_before: None,
            trace_context: None,
            actor: None,
            retry_of: None,
            notify: None,
        },
        claim: claim.then(|| Span::from_millis(1000)),
    }
}

/// Many creations at once, some repeating one idempotency key and one carrying a value the
/// database refuses: one task per key, every repeat answered with that task, the bad one refused
/// alone, and a claim for every task asked to be claimed.
#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn tasks_created_together_are_answered_as_if_created_alone(pool: PgPool) {
    let store = Store::new(pool.clone());
    let job = Arc::new(job(&store).await);
    let creation = Batcher::start(TaskCreation::new(store.clone(), "node-a"), 16, 2);
    let mut requests = Vec::new();
    for n in 0..60 {
        let key = (n % 6 == 0).then_some("same");
        requests.push(kept(&job, key, json!({ "n": n }), n % 2 == 0));
    }
    requests.push(kept(
        &job,
        None,
        json!({ "bad": "nul \u{0} inside" }),
        false,
    ));
    let handles: Vec<_> = requests
        .into_iter()
        .map(|request| {
            let creation = creation.clone();
            tokio::spawn(async move { creation.submit(request).await })
        })
        .collect();
    let mut answers = Vec::new();
    for handle in handles {
        answers.push(handle.await.expect("join"));
    }

    let (bad, answers) = answers.split_last().expect("answers");
    assert!(
        matches!(bad, Err(pacer_store::Error::InvalidData(_))),
        "{bad:?}"
    );
    let mut same = Vec::new();
    let mut claimed = 0;
    let mut created = 0;
    for (n, answer) in answers.iter().enumerate() {
        match answer.as_ref().expect("created").as_ref().expect("current") {
            CreatedTask::Created {
                id,
                task,
                claimed: claim,
            } => {
                created += 1;
                assert_eq!(task.id, *id);
                assert_eq!(task.payload["n"], n);
                claimed += usize::from(claim.is_some());
                assert_eq!(claim.is_some(), n % 2 == 0, "task {n}");
                if n % 6 == 0 {
                    same.push(*id);
                }
            }
            CreatedTask::Existing { id } => {
                assert_eq!(n % 6, 0, "only repeats of the key find a task");
                same.push(*id);
            }
            CreatedTask::Skipped { .. } => panic!("nothing is skipped under `allow`"),
        }
    }
    same.dedup();
    assert_eq!(same.len(), 1, "one task for the key: {same:?}");
    assert_eq!(created, 51);
    assert_eq!(claimed, 21);
    let stored: i64 = sqlx::query_scalar("select count(*) from tasks")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(stored, 51);
    let claims: i64 = sqlx::query_scalar("select count(*) from tasks where claimed_by = 'node-a'")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(claims, 21);

    // A kept definition that is no longer current creates nothing.
    sqlx::query("update jobs set paused = true")
        .execute(&pool)
        .await
        .expect("pause");
    let paused = creation
        .submit(kept(&job, None, json!({}), true))
        .await
        .expect("answer");
    assert!(paused.is_none());
}

/// Callbacks applied together answer as if applied one after the other: each task ends once,
/// a repeat is unchanged, a contradiction is refused, an unknown task is not found, and every
/// applied callback is in the task's history just before the state change it made.
#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn callbacks_applied_together_are_answered_as_if_applied_alone(pool: PgPool) {
    use pacer_domain::CallbackStatus;
    use pacer_domain::TaskState;
    use pacer_domain::dispatch::Report;
    use pacer_store::{ReportOutcome, Reporting};

    let store = Store::new(pool.clone());
    let job = Arc::new(job(&store).await);
    let mut ids = Vec::new();
    for n in 0..20 {
        let created = store
            .create_task(&job, kept(&job, None, json!({ "n": n }), false).task, None)
            .await
            .expect("create");
        let CreatedTask::Created { id, .. } = created else {
            panic!("expected a new task");
        };
        ids.push(id);
    }
    let report = |status| Report {
        status,
        progress: None,
        message: Some("done".into()),
        result: Some(json!({ "rows": 1 })),
        fingerprint: None,
        unchanged: false,
        error: None,
        retryable: false,
    };
    let mut requests = Vec::new();
    for id in &ids {
        requests.push((*id, report(CallbackStatus::Completed)));
    }
    // Each of the first five again, the same and contradicting; and a task nobody created.
    for id in &ids[..5] {
        requests.push((*id, report(CallbackStatus::Completed)));
        requests.push((*id, report(CallbackStatus::Failed)));
    }
    requests.push((TaskId::new(), report(CallbackStatus::Completed)));
    let answers = store.report_many(&requests).await.expect("reports");

    for (answer, id) in answers[..20].iter().zip(&ids) {
        let (outcome, task) = answer.as_ref().expect("applied");
        assert_eq!(*outcome, ReportOutcome::Applied(TaskState::Completed));
        assert_eq!(task.id, *id);
        assert_eq!(task.result, Some(json!({ "rows": 1 })));
        assert!(task.finished_at.is_some());
    }
    for pair in answers[20..30].chunks(2) {
        assert_eq!(
            pair[0].as_ref().expect("repeat").0,
            ReportOutcome::Unchanged(TaskState::Completed)
        );
        assert_eq!(
            pair[1].as_ref().expect("contradiction").0,
            ReportOutcome::Refused(TaskState::Completed)
        );
    }
    assert!(matches!(answers[30], Err(pacer_store::Error::NotFound(_))));

    let history: Vec<(String, Option<String>)> = sqlx::query_as(
        "select kind, coalesce(data ->> 'state', data ->> 'status') from events
         where task_id = $1 order by id",
    )
    .bind(ids[3].as_uuid())
    .fetch_all(&pool)
    .await
    .expect("history");
    let expected = [
        ("task.state", "pending"),
        ("task.callback", "completed"),
        ("task.state", "completed"),
    ];
    assert_eq!(
        history,
        expected.map(|(k, s)| (k.to_owned(), Some(s.to_owned())))
    );

    // Through a batcher, concurrently: the same answers.
    let reporting = Batcher::start(Reporting::new(store.clone()), 8, 2);
    let again: Vec<_> = ids
        .iter()
        .map(|id| {
            let reporting = reporting.clone();
            let request = (*id, report(CallbackStatus::Completed));
            tokio::spawn(async move { reporting.submit(request).await })
        })
        .collect();
    for handle in again {
        let (outcome, _) = handle
            .await
            .expect("join")
            .expect("written")
            .expect("answered");
        assert_eq!(outcome, ReportOutcome::Unchanged(TaskState::Completed));
    }
}
