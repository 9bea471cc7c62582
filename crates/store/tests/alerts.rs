//! Alerts on the real PostgreSQL: the evaluation is fenced by the leader's term, what it marks as
//! seen commits or vanishes with the alerts it raised, repeats count into the open alert, and the
//! delivery queue hands each delivery to one claimer and records every attempt.

use std::time::Duration;

use pacer_domain::{AlertKind, AlertState, JobInput, JobName, JobSpec, Severity, TaskId};
use pacer_store::{
    AlertChange, CreatedTask, DeliveryOutcome, DeliveryState, NewAlert, NewDelivery, NewTask,
    Origin, Store,
};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

async fn overdue_task(store: &Store, pool: &PgPool) -> Uuid {
    let input: JobInput = serde_json::from_value(json!({
        "target": { "url": "http://downstream.invalid/run" },
        "deadline": "1m",
    }))
    .expect("job input");
    let spec = JobSpec::try_from(input).expect("valid job");
    let name: JobName = "sync".parse().expect("name");
    let job = store.put_job(&name, &spec).await.expect("put job").job;
    let task = NewTask {
        id: TaskId::new(),
        origin: Origin::Api,
        idempotency_key: None,
        payload: json!({}),
        not_before: None,
        trace_context: None,
        actor: None,
        retry_of: None,
        notify: None,
    };
    let CreatedTask::Created { id, .. } = store.create_task(&job, task, None).await.expect("task")
    else {
        panic!("created");
    };
    sqlx::query("update tasks set deadline_at = now() - interval '1 second' where id = $1")
        .bind(id.as_uuid())
        .execute(pool)
        .await
        .expect("deadline moved into the past");
    id.as_uuid()
}

fn overdue(task: Uuid) -> NewAlert {
    NewAlert {
        kind: AlertKind::Overdue,
        severity: Severity::Warning,
        task_id: Some(task),
        job_name: Some("sync".into()),
        node_id: None,
        summary: "late".into(),
        count: 1,
    }
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn the_evaluation_is_fenced_and_its_marks_commit_with_its_alerts(pool: PgPool) {
    let store = Store::new(pool.clone());
    let tenure = store
        .acquire_lease("a", 60_000, false)
        .await
        .expect("acquire")
        .expect("held");
    assert!(
        store
            .begin_alerting("a", tenure.term + 1)
            .await
            .expect("begin")
            .is_none()
    );
    assert!(
        store
            .begin_alerting("b", tenure.term)
            .await
            .expect("begin")
            .is_none()
    );
    let task = overdue_task(&store, &pool).await;
    assert!(store.alert_work_due(5, 10_000).await.expect("due"));

    // A pass that does not commit leaves the task unnoticed.
    let mut tx = store
        .begin_alerting("a", tenure.term)
        .await
        .expect("begin")
        .expect("held");
    assert_eq!(tx.take_overdue(10).await.expect("take").len(), 1);
    tx.rollback().await.expect("rollback");

    let mut tx = store
        .begin_alerting("a", tenure.term)
        .await
        .expect("begin")
        .expect("held");
    let seen = tx.take_overdue(10).await.expect("take");
    assert_eq!(seen.iter().map(|t| t.task_id).collect::<Vec<_>>(), [task]);
    let first = tx.raise(&overdue(task), 3_600_000).await.expect("raise");
    assert!(first.opened && first.notify);
    let repeat = tx.raise(&overdue(task), 3_600_000).await.expect("raise");
    assert!(
        !repeat.opened && !repeat.notify,
        "a repeat within the interval is only counted"
    );
    assert_eq!(repeat.alert.id, first.alert.id);
    assert_eq!(repeat.alert.count, 2);
    tx.commit().await.expect("commit");

    // The next evaluation starts once a 1 ms re-notify interval has passed on the database clock.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let passed: bool = sqlx::query_scalar(
            "select clock_timestamp() > max(notified_at) + interval '1 millisecond' from alerts",
        )
        .fetch_one(&pool)
        .await
        .expect("clock");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the clock stood still"
        );
        if passed {
            break;
        }
        tokio::task::yield_now().await;
    }
    let mut tx = store
        .begin_alerting("a", tenure.term)
        .await
        .expect("begin")
        .expect("held");
    assert!(
        tx.take_overdue(10).await.expect("take").is_empty(),
        "noticed once"
    );
    // With the re-notify interval passed, a repeat of an open alert notifies again...
    let again = tx.raise(&overdue(task), 1).await.expect("raise");
    assert!(!again.opened && again.notify);
    tx.commit().await.expect("commit");
    // ...but not once acknowledged.
    let acked = store
        .ack_alert(first.alert.id, "op", None)
        .await
        .expect("ack");
    assert!(matches!(acked, AlertChange::Applied(ref a) if a.state == AlertState::Acked));
    let mut tx = store
        .begin_alerting("a", tenure.term)
        .await
        .expect("begin")
        .expect("held");
    let quiet = tx.raise(&overdue(task), 1).await.expect("raise");
    assert!(!quiet.notify && quiet.alert.count == 4);
    tx.commit().await.expect("commit");

    // Resolved, the next repeat opens a new alert.
    store
        .resolve_alert(first.alert.id, "op", Some("done"))
        .await
        .expect("resolve");
    let mut tx = store
        .begin_alerting("a", tenure.term)
        .await
        .expect("begin")
        .expect("held");
    let reopened = tx.raise(&overdue(task), 1).await.expect("raise");
    assert!(reopened.opened && reopened.alert.id != first.alert.id);
    tx.commit().await.expect("commit");

    // The task ending resolves its open overdue alert.
    store.cancel_task(TaskId::from(task)).await.expect("cancel");
    let mut tx = store
        .begin_alerting("a", tenure.term)
        .await
        .expect("begin")
        .expect("held");
    let cleared = tx.resolve_cleared().await.expect("resolve");
    assert_eq!(
        cleared.iter().map(|a| a.id).collect::<Vec<_>>(),
        [reopened.alert.id]
    );
    tx.commit().await.expect("commit");
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn each_delivery_goes_to_one_claimer_and_every_attempt_is_recorded(pool: PgPool) {
    let store = Store::new(pool.clone());
    let tenure = store
        .acquire_lease("a", 60_000, false)
        .await
        .expect("acquire")
        .expect("held");
    let mut tx = store
        .begin_alerting("a", tenure.term)
        .await
        .expect("begin")
        .expect("held");
    let alert = tx
        .raise(
            &NewAlert {
                kind: AlertKind::NodeLost,
                severity: Severity::Critical,
                task_id: None,
                job_name: None,
                node_id: Some("n1".into()),
                summary: "gone".into(),
                count: 1,
            },
            0,
        )
        .await
        .expect("raise");
    let deliveries: Vec<NewDelivery> = (0..3)
        .map(|i| NewDelivery {
            alert_id: Some(alert.alert.id),
            event: "alert.opened".into(),
            task_id: None,
            job_name: None,
            sink: format!("sink-{i}"),
            sink_kind: "webhook".into(),
            url: "http://sink.invalid/".into(),
            secret: None,
            body: json!({ "i": i }),
            max_attempts: 2,
        })
        .collect();
    tx.enqueue(&deliveries).await.expect("enqueue");
    tx.commit().await.expect("commit");

    let (a, b) = tokio::join!(
        store.claim_deliveries("x", 2, 60_000),
        store.claim_deliveries("y", 2, 60_000)
    );
    let (a, b) = (a.expect("claim"), b.expect("claim"));
    assert_eq!(a.len() + b.len(), 3, "every delivery claimed once");
    let mut ids: Vec<Uuid> = a.iter().chain(&b).map(|d| d.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    assert!(
        store
            .claim_deliveries("z", 10, 60_000)
            .await
            .expect("claim")
            .is_empty()
    );

    let outcome = |delivered: bool| DeliveryOutcome {
        node: "x".into(),
        delivered,
        http_status: Some(if delivered { 200 } else { 500 }),
        error: (!delivered).then(|| "the sink answered 500".into()),
        latency: Duration::from_millis(3),
        retry_in: Duration::ZERO,
    };
    // Which claimer got which is a race; the outcomes below go by queue order (the id).
    let mut all: Vec<_> = a.iter().chain(&b).cloned().collect();
    all.sort_by_key(|d| d.id);
    assert_eq!(
        store
            .record_delivery(&all[0], &outcome(true))
            .await
            .expect("record"),
        DeliveryState::Delivered
    );
    assert_eq!(
        store
            .record_delivery(&all[1], &outcome(false))
            .await
            .expect("record"),
        DeliveryState::Pending
    );
    // A second attempt of the failed one, then out of attempts.
    let retry = store
        .claim_deliveries("y", 10, 60_000)
        .await
        .expect("claim");
    assert_eq!(retry.iter().map(|d| d.id).collect::<Vec<_>>(), [all[1].id]);
    assert_eq!(retry[0].attempt, 2);
    assert_eq!(retry[0].body, all[1].body, "the same body on every attempt");
    assert_eq!(
        store
            .record_delivery(&retry[0], &outcome(false))
            .await
            .expect("record"),
        DeliveryState::Failed
    );
    // A claim whose lease ran out and was taken over writes nothing but its attempt.
    sqlx::query("update alert_deliveries set next_attempt_at = now() where id = $1")
        .bind(all[2].id)
        .execute(&pool)
        .await
        .expect("lease expired");
    let taken = store
        .claim_deliveries("z", 10, 60_000)
        .await
        .expect("claim");
    assert_eq!(taken.len(), 1);
    assert_eq!(
        store
            .record_delivery(&all[2], &outcome(true))
            .await
            .expect("record"),
        DeliveryState::Lost
    );

    let detail = store
        .alert_deliveries(alert.alert.id)
        .await
        .expect("deliveries");
    let states: Vec<(&str, i32, usize)> = detail
        .iter()
        .map(|d| (d.state.as_str(), d.attempts, d.tries.len()))
        .collect();
    assert_eq!(
        states,
        [("delivered", 1, 1), ("failed", 2, 2), ("pending", 2, 1)]
    );
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_completed_task_needs_evaluation_only_when_its_job_has_success_watchers(pool: PgPool) {
    let store = Store::new(pool.clone());
    let mut noticed = Vec::new();
    for (name, alerts) in [
        ("plain", json!({})),
        ("watched", json!({ "on_success": ["log"] })),
    ] {
        let input: JobInput = serde_json::from_value(json!({
            "target": { "url": "http://downstream.invalid/run" },
            "alerts": alerts,
        }))
        .expect("job input");
        let spec = JobSpec::try_from(input).expect("valid job");
        let job_name: JobName = name.parse().expect("name");
        let job = store.put_job(&job_name, &spec).await.expect("put job").job;
        let task = NewTask {
            id: TaskId::new(),
            origin: Origin::Api,
            idempotency_key: None,
            payload: json!({}),
            not_before: None,
            trace_context: None,
            actor: None,
            retry_of: None,
            notify: None,
        };
        let CreatedTask::Created { id, .. } =
            store.create_task(&job, task, None).await.expect("task")
        else {
            panic!("created");
        };
        let report: pacer_store::TaskReport =
            serde_json::from_value(json!({ "status": "completed" })).expect("report");
        store.report(id, &report).await.expect("report");
        let seen: bool = sqlx::query_scalar("select outcome_noticed from tasks where id = $1")
            .bind(id.as_uuid())
            .fetch_one(&pool)
            .await
            .expect("row");
        noticed.push(seen);
    }
    assert_eq!(
        noticed,
        [true, false],
        "only the watched job's completion waits for the leader"
    );
}
