//! Completion notices and event subscriptions in the store: a state change of a task created
//! with `notify` writes its notice in the same commit, once per event however often the change
//! is reported; notices are claimed once and recorded; a subscription starts at the present,
//! keeps its position when replaced, and shows its lag.

use std::time::Duration;

use pacer_domain::dispatch::Report;
use pacer_domain::{
    CallbackStatus, JobInput, JobName, JobSpec, SubscriptionInput, SubscriptionSpec, TaskId,
};
use pacer_store::{CreatedTask, EventFilter, Job, NewEvent, NewTask, Origin, Store};
use serde_json::{Value, json};
use sqlx::PgPool;

async fn job(store: &Store, name: &str, labels: Value) -> Job {
    let input: JobInput = serde_json::from_value(json!({
        "target": { "url": "http://downstream.invalid/run" },
        "repoll_interval": "30s",
        "labels": labels,
    }))
    .expect("job input");
    let spec = JobSpec::try_from(input).expect("valid job");
    let name: JobName = name.parse().expect("name");
    store.put_job(&name, &spec).await.expect("put job").job
}

async fn create(store: &Store, job: &Job, notify: Option<Value>) -> TaskId {
    let task = NewTask {
        notify,
        ..NewTask::new(Origin::Api, json!({}))
    };
    match store.create_task(job, task, None).await.expect("create") {
        CreatedTask::Created { id, .. } => id,
        other => panic!("not created: {other:?}"),
    }
}

fn report(status: CallbackStatus) -> Report {
    Report {
        status,
        progress: None,
        message: None,
        result: None,
        fingerprint: None,
        unchanged: false,
        error: None,
        retryable: false,
    }
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_finished_task_owes_one_notice_however_often_it_is_reported(pool: PgPool) {
    let store = Store::new(pool);
    let job = job(&store, "sync", json!({})).await;
    let notify = json!({ "url": "https://rip.example/done", "events": ["finished"], "auth": { "kind": "none" } });
    let noticed = create(&store, &job, Some(notify)).await;
    let silent = create(&store, &job, None).await;
    assert_eq!(
        store.next_notice_in().await.expect("next notice"),
        None,
        "no notice waits: the notifier sleeps its whole poll interval"
    );
    for id in [noticed, silent] {
        store
            .report(id, &report(CallbackStatus::Processing))
            .await
            .expect("processing");
    }
    assert!(
        store
            .task_notices(noticed)
            .await
            .expect("notices")
            .is_empty(),
        "not finished yet"
    );
    for _ in 0..3 {
        for id in [noticed, silent] {
            store
                .report(id, &report(CallbackStatus::Completed))
                .await
                .expect("completed");
        }
    }
    let notices = store.task_notices(noticed).await.expect("notices");
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(
        store.next_notice_in().await.expect("next notice"),
        Some(Duration::ZERO),
        "the notice is due now"
    );
    assert_eq!(notices[0].event, "finished");
    assert_eq!(notices[0].state, "completed");
    assert!(
        store
            .task_notices(silent)
            .await
            .expect("notices")
            .is_empty()
    );

    // Claimed once: a second claimer finds nothing while the first holds it.
    let claimed = store.claim_notices("a", 10, 60_000).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].task_id, noticed);
    assert_eq!(claimed[0].notify["url"], "https://rip.example/done");
    assert!(
        store
            .claim_notices("b", 10, 60_000)
            .await
            .expect("claim")
            .is_empty()
    );
    // A failed attempt is due again after its backoff, then delivered.
    assert!(
        store
            .record_notice(&claimed[0], Some("answered 503"), Some(Duration::ZERO))
            .await
            .expect("record")
    );
    let again = store.claim_notices("b", 10, 60_000).await.expect("claim");
    assert_eq!(again[0].attempt, 2);
    assert!(
        !store
            .record_notice(&claimed[0], None, None)
            .await
            .expect("record"),
        "a claim taken over records nothing"
    );
    assert!(
        store
            .record_notice(&again[0], None, None)
            .await
            .expect("record")
    );
    assert_eq!(
        store.next_notice_in().await.expect("next notice"),
        None,
        "nothing is waiting once the notice is delivered"
    );
    let notice = &store.task_notices(noticed).await.expect("notices")[0];
    assert_eq!(notice.attempts, 2);
    assert!(notice.delivered_at.is_some());
    assert_eq!(notice.last_error.as_deref(), Some("answered 503"));
    assert!(
        store
            .claim_notices("a", 10, 0)
            .await
            .expect("claim")
            .is_empty()
    );
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_subscription_starts_at_the_present_and_shows_its_lag(pool: PgPool) {
    let store = Store::new(pool);
    let intake = job(&store, "intake", json!({ "team": "registration" })).await;
    let billing = job(&store, "billing", json!({ "team": "finance" })).await;
    create(&store, &intake, None).await;
    let input: SubscriptionInput = serde_json::from_value(json!({
        "url": "https://team.example/events",
        "labels": { "team": "registration" },
        "events": ["task.state"],
    }))
    .expect("input");
    let spec = SubscriptionSpec::try_from(input).expect("valid");
    assert!(store.put_subscription("team", &spec).await.expect("put"));
    let subscription = store.get_subscription("team").await.expect("get");
    let start = subscription.cursor.expect("a position");
    let filter = subscription.filter();
    assert_eq!(
        store.events_lag(start, &filter).await.expect("lag").events,
        0,
        "starts at the present"
    );

    create(&store, &intake, None).await;
    create(&store, &billing, None).await;
    store
        .append_event(&NewEvent {
            kind: "task.callback",
            job_name: Some("intake"),
            task_id: None,
            data: json!({}),
        })
        .await
        .expect("append");
    let lag = store.events_lag(start, &filter).await.expect("lag");
    assert_eq!(lag.events, 1, "only the labelled job's task.state");
    assert!(lag.oldest_at.is_some());
    let all = store
        .events_lag(start, &EventFilter::default())
        .await
        .expect("lag");
    assert_eq!(all.events, 3);

    let batch = store.events_after(start, &filter, 100).await.expect("read");
    assert_eq!(batch.events.len(), 1);
    assert!(
        store
            .subscription_delivered("team", batch.next, 1)
            .await
            .expect("delivered")
    );
    store
        .subscription_failed("team", "answered 503")
        .await
        .expect("failed");
    // Replaced: keeps its position.
    assert!(!store.put_subscription("team", &spec).await.expect("put"));
    let shown = store.get_subscription("team").await.expect("get");
    assert_eq!(shown.cursor, Some(batch.next));
    assert_eq!(shown.delivered_events, 1);
    assert_eq!(shown.consecutive_failures, 1);
    assert_eq!(
        store
            .events_lag(batch.next, &filter)
            .await
            .expect("lag")
            .events,
        0
    );

    store.delete_subscription("team").await.expect("delete");
    assert!(store.get_subscription("team").await.is_err());
    assert!(
        !store
            .subscription_delivered("team", batch.next, 1)
            .await
            .expect("gone")
    );
    assert_eq!(
        store
            .event_cursor("subscription:team")
            .await
            .expect("cursor"),
        None
    );
}
