//! Message ingest on the real PostgreSQL: the same message arriving on several nodes at once is
//! recorded once and creates its tasks once, and concurrent messages respect each job's overlap
//! policy.

use pacer_domain::{JobInput, JobName, JobSpec, Message, MessageInput, MessageSource};
use pacer_store::{Prunable, Store};
use serde_json::{Value, json};
use sqlx::PgPool;

async fn put_job(store: &Store, name: &str, spec: Value) {
    let input: JobInput = serde_json::from_value(spec).expect("job input");
    let spec = JobSpec::try_from(input).expect("valid job");
    let name: JobName = name.parse().expect("name");
    store.put_job(&name, &spec).await.expect("put job");
}

fn message(body: Value) -> Message {
    let input: MessageInput = serde_json::from_value(body).expect("message input");
    Message::try_from(input).expect("valid message")
}

async fn scalar(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("query")
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn the_same_message_arriving_at_once_everywhere_creates_its_tasks_once(pool: PgPool) {
    let store = Store::new(pool.clone());
    let subscribed = |overlap: &str| {
        json!({
            "target": { "url": "http://downstream.invalid/run" },
            "overlap": overlap,
            "on_messages": ["masterdata.changed"],
        })
    };
    put_job(&store, "free", subscribed("allow")).await;
    put_job(&store, "single", subscribed("skip")).await;

    let same = message(json!({ "type": "masterdata.changed", "id": "evt-1" }));
    let mut arrivals = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (store, same) = (store.clone(), same.clone());
        arrivals.spawn(async move {
            store
                .ingest_message(&same, MessageSource::Amqp, None)
                .await
                .expect("ingest")
        });
    }
    let results = arrivals.join_all().await;
    let firsts: Vec<_> = results.iter().filter(|r| !r.duplicate).collect();
    assert_eq!(firsts.len(), 1, "exactly one arrival records the message");
    assert_eq!(firsts[0].created, 2);
    for duplicate in results.iter().filter(|r| r.duplicate) {
        assert_eq!(duplicate.message.routes, firsts[0].message.routes);
        assert_eq!(duplicate.created, 0);
    }
    assert_eq!(scalar(&pool, "select count(*) from messages").await, 1);
    assert_eq!(scalar(&pool, "select count(*) from tasks").await, 2);

    // Different messages at once: `free` gets a task for each, `single` (overlap skip) keeps
    // its one open task and records a skip for each of the others.
    let mut arrivals = tokio::task::JoinSet::new();
    for n in 0..6 {
        let store = store.clone();
        let different = message(json!({ "type": "masterdata.changed", "id": format!("evt-x{n}") }));
        arrivals.spawn(async move {
            store
                .ingest_message(&different, MessageSource::Api, None)
                .await
                .expect("ingest")
        });
    }
    let results = arrivals.join_all().await;
    assert!(results.iter().all(|r| !r.duplicate && r.created == 1));
    assert_eq!(
        scalar(&pool, "select count(*) from tasks where job_name = 'free'").await,
        7
    );
    assert_eq!(
        scalar(
            &pool,
            "select count(*) from tasks where job_name = 'single'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(
            &pool,
            "select count(*) from skipped_runs where job_name = 'single' and reason = 'overlap'"
        )
        .await,
        6
    );
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_message_the_database_refuses_as_data_is_invalid_and_writes_nothing(pool: PgPool) {
    let store = Store::new(pool.clone());
    put_job(
        &store,
        "free",
        json!({
            "target": { "url": "http://downstream.invalid/run" },
            "on_messages": ["masterdata.changed"],
        }),
    )
    .await;
    // PostgreSQL's jsonb has no place for a NUL character.
    let bad = message(json!({ "type": "masterdata.changed", "payload": { "name": "a\u{0}b" } }));
    let refused = store.ingest_message(&bad, MessageSource::Amqp, None).await;
    assert!(
        matches!(refused, Err(pacer_store::Error::InvalidData(_))),
        "{refused:?}"
    );
    assert_eq!(scalar(&pool, "select count(*) from messages").await, 0);
    assert_eq!(scalar(&pool, "select count(*) from tasks").await, 0);
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn messages_past_the_retention_are_pruned_and_their_tasks_keep_the_type(pool: PgPool) {
    let store = Store::new(pool.clone());
    put_job(
        &store,
        "free",
        json!({
            "target": { "url": "http://downstream.invalid/run" },
            "on_messages": ["masterdata.changed"],
        }),
    )
    .await;
    for id in ["old", "new"] {
        let sent = message(json!({ "type": "masterdata.changed", "id": id }));
        store
            .ingest_message(&sent, MessageSource::Api, None)
            .await
            .expect("ingest");
    }
    sqlx::query("update messages set received_at = now() - interval '2 hours' where id = 'old'")
        .execute(&pool)
        .await
        .expect("age");

    let tenure = store
        .acquire_lease("n1", 60_000, true)
        .await
        .expect("lease")
        .expect("held");
    let pruned = store
        .prune("n1", tenure.term, Prunable::Messages, 3_600_000, 100)
        .await
        .expect("prune");
    assert_eq!(pruned, Some(1));
    let left: Vec<String> = sqlx::query_scalar("select id from messages")
        .fetch_all(&pool)
        .await
        .expect("messages");
    assert_eq!(left, ["new"]);
    assert_eq!(
        scalar(
            &pool,
            "select count(*) from tasks where message_id is null and message_type = 'masterdata.changed'"
        )
        .await,
        1,
        "the old message's task keeps its type"
    );
    // Its deduplication ended with it: the same id is a new message now.
    let again = message(json!({ "type": "masterdata.changed", "id": "old" }));
    let ingested = store
        .ingest_message(&again, MessageSource::Api, None)
        .await
        .expect("ingest");
    assert!(!ingested.duplicate);
}

/// PostgreSQL writes a large float in `jsonb` as its exact decimal expansion; reading it back must
/// give the same number, not a decoding error that would poison every read of the row.
#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn the_largest_float_in_a_payload_reads_back_as_written(pool: PgPool) {
    let store = Store::new(pool.clone());
    put_job(
        &store,
        "free",
        json!({
            "target": { "url": "http://downstream.invalid/run" },
            "on_messages": ["masterdata.changed"],
        }),
    )
    .await;
    let sent =
        message(json!({ "type": "masterdata.changed", "id": "big", "payload": { "n": f64::MAX } }));
    store
        .ingest_message(&sent, MessageSource::Api, None)
        .await
        .expect("ingest");
    let stored = store.get_message("big").await.expect("read back");
    assert_eq!(stored.payload["n"].as_f64(), Some(f64::MAX));
}
