//! Concurrency limits on the real PostgreSQL: a limited job's tasks wait until admitted, never
//! more than the limit hold a slot, a slot is freed by the state change that ends its task
//! (whichever path ends it), a group's limit is shared by its jobs, admissions racing on separate
//! connections never hand out one slot twice, and switching a job's limits on and off brings its
//! open tasks in line.

use std::collections::HashSet;

use pacer_domain::{GroupName, GroupSpec, JobInput, JobName, JobSpec, Span, TaskId};
use pacer_store::{ClaimedTask, CreatedTask, Job, NewTask, Origin, Store, TaskReport};
use serde_json::{Value, json};
use sqlx::PgPool;

async fn job(store: &Store, name: &str, extra: Value) -> Job {
    let mut definition = json!({ "target": { "url": "http://downstream.test/run" } });
    for (key, value) in extra.as_object().expect("object") {
        definition[key] = value.clone();
    }
    let input: JobInput = serde_json::from_value(definition).expect("job input");
    let spec = JobSpec::try_from(input).expect("valid job");
    let name: JobName = name.parse().expect("name");
    store.put_job(&name, &spec).await.expect("put job").job
}

async fn group(store: &Store, name: &str, limit: u32) {
    let name: GroupName = name.parse().expect("group name");
    store
        .put_group(
            &name,
            &GroupSpec {
                limit,
                description: None,
            },
        )
        .await
        .expect("put group");
}

async fn create(store: &Store, job: &Job, n: usize) -> Vec<TaskId> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let task = NewTask::new(Origin::Api, json!({}));
        match store.create_task(job, task, None).await.expect("create") {
            CreatedTask::Created { id, .. } => ids.push(id),
            other => panic!("expected a new task, got {other:?}"),
        }
    }
    ids
}

async fn admit_and_claim(store: &Store) -> Vec<ClaimedTask> {
    store.admit_waiting().await.expect("admit");
    store
        .claim_due("node-a", 500, Span::from_secs(30), Span::from_millis(0))
        .await
        .expect("claim")
}

fn done() -> TaskReport {
    serde_json::from_value(json!({ "status": "completed" })).expect("a report")
}

async fn holders(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "select count(*) from tasks where holds_slot and state in ('pending', 'processing')",
    )
    .fetch_one(pool)
    .await
    .expect("count")
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_limited_job_never_has_more_than_its_limit_out_and_an_ending_frees_a_slot(pool: PgPool) {
    let store = Store::new(pool.clone());
    let limited = job(&store, "limited", json!({ "max_concurrency": 2 })).await;
    let free = job(&store, "free", json!({})).await;
    let ids = create(&store, &limited, 5).await;
    create(&store, &free, 3).await;

    // Before admission, no claim sees a waiting task: only the free job's.
    let claimed = store
        .claim_due("node-a", 500, Span::from_secs(30), Span::from_millis(0))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 3);
    assert!(claimed.iter().all(|t| t.job_name == "free"));
    let why = store
        .waiting_for(ids[0].as_uuid())
        .await
        .expect("waiting for")
        .expect("it waits");
    assert_eq!(why.max_concurrency, Some(2));

    // Admitted in due order, two at a time.
    let first = admit_and_claim(&store).await;
    let first_ids: HashSet<TaskId> = first.iter().map(|t| t.id).collect();
    assert_eq!(
        first_ids,
        ids[..2].iter().copied().collect(),
        "the two oldest, in due order"
    );
    assert!(admit_and_claim(&store).await.is_empty(), "no slot is free");
    assert_eq!(holders(&pool).await, 2);

    // A re-poll keeps the slot: the task is still processing.
    // An ending frees it in its own transaction: the next is admitted.
    store.report(first[0].id, &done()).await.expect("callback");
    assert_eq!(holders(&pool).await, 1);
    let next = admit_and_claim(&store).await;
    assert_eq!(next.iter().map(|t| t.id).collect::<Vec<_>>(), [ids[2]]);

    // An operator cancel frees a slot too.
    store.cancel_task(first[1].id).await.expect("cancel");
    let next = admit_and_claim(&store).await;
    assert_eq!(next.iter().map(|t| t.id).collect::<Vec<_>>(), [ids[3]]);
    assert_eq!(holders(&pool).await, 2);

    // A slot freed wakes the dispatchers and is an event of no group (the job has none).
    let released: i64 =
        sqlx::query_scalar("select count(*) from events where kind = 'group.released'")
            .fetch_one(&pool)
            .await
            .expect("events");
    assert_eq!(released, 0);
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_group_of_limit_one_excludes_the_tasks_of_all_its_jobs(pool: PgPool) {
    let store = Store::new(pool.clone());
    group(&store, "registration-client", 1).await;
    let a = job(
        &store,
        "a",
        json!({ "concurrency_group": "registration-client" }),
    )
    .await;
    let b = job(
        &store,
        "b",
        json!({ "concurrency_group": "registration-client" }),
    )
    .await;
    let a_ids = create(&store, &a, 2).await;
    let b_ids = create(&store, &b, 2).await;
    let mut order = Vec::new();
    for _ in 0..4 {
        let claimed = admit_and_claim(&store).await;
        assert_eq!(claimed.len(), 1, "one slot, one task at a time");
        assert!(
            admit_and_claim(&store).await.is_empty(),
            "nothing else while it is held"
        );
        let group = store
            .get_group(&"registration-client".parse().expect("name"))
            .await
            .expect("group");
        assert_eq!(group.holders.len(), 1);
        assert_eq!(group.holders[0].task_id, claimed[0].id.as_uuid());
        order.push(claimed[0].id);
        store
            .report(claimed[0].id, &done())
            .await
            .expect("callback");
    }
    let expected: HashSet<TaskId> = a_ids.iter().chain(&b_ids).copied().collect();
    assert_eq!(order.iter().copied().collect::<HashSet<_>>(), expected);
    let kinds: Vec<(String, i64)> = sqlx::query_as(
        "select kind, count(*) from events where kind like 'group.%' group by kind order by kind",
    )
    .fetch_all(&pool)
    .await
    .expect("events");
    assert_eq!(
        kinds,
        [("group.acquired".into(), 4), ("group.released".into(), 4)]
    );

    // A group a job names cannot be deleted; a job cannot name a group that does not exist.
    let name: GroupName = "registration-client".parse().expect("name");
    assert!(matches!(
        store.delete_group(&name).await,
        Err(pacer_store::Error::Conflict { .. })
    ));
    let input: JobInput = serde_json::from_value(json!({
        "target": { "url": "http://downstream.test/run" }, "concurrency_group": "nope"
    }))
    .expect("input");
    let spec = JobSpec::try_from(input).expect("valid");
    assert!(matches!(
        store.put_job(&"c".parse().expect("name"), &spec).await,
        Err(pacer_store::Error::Conflict { constraint }) if constraint == "jobs_concurrency_group_fkey"
    ));
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn admissions_racing_on_separate_connections_never_exceed_the_limit(pool: PgPool) {
    let store = Store::new(pool.clone());
    let limited = job(&store, "limited", json!({ "max_concurrency": 5 })).await;
    create(&store, &limited, 200).await;
    let mut ended = 0;
    while ended < 200 {
        // Four admitters at once, as four nodes would.
        let (a, b, c, d) = tokio::join!(
            store.admit_waiting(),
            store.admit_waiting(),
            store.admit_waiting(),
            store.admit_waiting()
        );
        for result in [a, b, c, d] {
            result.expect("admit");
        }
        assert!(holders(&pool).await <= 5, "never more than the limit");
        let claimed = store
            .claim_due("node-a", 500, Span::from_secs(30), Span::from_millis(0))
            .await
            .expect("claim");
        assert!(claimed.len() <= 5);
        assert!(!claimed.is_empty(), "every pass admits while tasks wait");
        for task in claimed {
            store.report(task.id, &done()).await.expect("callback");
            ended += 1;
        }
    }
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn switching_limits_on_and_off_brings_open_tasks_in_line(pool: PgPool) {
    let store = Store::new(pool.clone());
    let plain = job(&store, "switch", json!({})).await;
    create(&store, &plain, 3).await;
    let out = store
        .claim_due("node-a", 1, Span::from_secs(30), Span::from_millis(0))
        .await
        .expect("claim");
    assert_eq!(out.len(), 1);
    // On: the one already out holds a slot, the two never sent wait.
    job(&store, "switch", json!({ "max_concurrency": 1 })).await;
    assert_eq!(holders(&pool).await, 1);
    assert!(admit_and_claim(&store).await.is_empty());
    // Off: the waiting ones are due at once.
    job(&store, "switch", json!({})).await;
    let claimed = store
        .claim_due("node-a", 500, Span::from_secs(30), Span::from_millis(0))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 2);
}

/// Admits, claims, and starts the runs among what was claimed (as the dispatcher does); returns
/// the rest.
async fn admit_claim_and_start_runs(store: &Store) -> Vec<ClaimedTask> {
    let mut out = Vec::new();
    for task in admit_and_claim(store).await {
        if task.child.is_none() && task.job.is_workflow() {
            assert!(store.start_run(&task).await.expect("start run"));
        } else {
            out.push(task);
        }
    }
    out
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_step_naming_a_group_runs_its_children_within_the_group_limit(pool: PgPool) {
    let store = Store::new(pool.clone());
    group(&store, "uploads", 1).await;
    let children = |n: usize| {
        (0..n)
            .map(|i| {
                json!({ "name": format!("upload-{i}"),
                             "target": { "url": "http://downstream.test/up" } })
            })
            .collect::<Vec<_>>()
    };
    // The run holds its job's one slot; its children take the step's group's, one at a time.
    let job = job(
        &store,
        "sync",
        json!({ "target": null, "max_concurrency": 1, "steps": [
            { "name": "upload", "parallel": children(3), "concurrency_group": "uploads" }
        ] }),
    )
    .await;
    create(&store, &job, 1).await;
    let mut ended = 0;
    for _ in 0..10 {
        let due = admit_claim_and_start_runs(&store).await;
        let open_children: i64 = sqlx::query_scalar(
            "select count(*) from tasks where step is not null and holds_slot
               and state in ('pending', 'processing')",
        )
        .fetch_one(&pool)
        .await
        .expect("count");
        assert!(
            open_children <= 1,
            "the group's limit holds for a step's children"
        );
        assert!(due.len() <= 1);
        for task in due {
            assert!(task.child.is_some());
            store.report(task.id, &done()).await.expect("callback");
            ended += 1;
        }
        if ended == 3 {
            break;
        }
    }
    assert_eq!(ended, 3, "every child ran, one after another");
    let run_state: String =
        sqlx::query_scalar("select state from tasks where step is null and run_id = id")
            .fetch_one(&pool)
            .await
            .expect("run");
    assert_eq!(run_state, "completed");
    let released: i64 = sqlx::query_scalar(
        "select count(*) from events where kind = 'group.released' and data ->> 'group' = 'uploads'",
    )
    .fetch_one(&pool)
    .await
    .expect("events");
    assert_eq!(released, 3);
    // A group a step names is not deleted.
    assert!(matches!(
        store.delete_group(&"uploads".parse().expect("name")).await,
        Err(pacer_store::Error::Conflict { .. })
    ));
}
