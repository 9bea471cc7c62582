//! The event log: leader changes recorded with the lease, commit-safe reading order, the stored
//! consumer position, and retention.

use pacer_store::{EventCursor, EventFilter, NewEvent, Prunable, Store, append_event};
use serde_json::json;
use sqlx::PgPool;

fn kinds(events: &[pacer_store::Event]) -> Vec<(String, serde_json::Value)> {
    events
        .iter()
        .map(|e| (e.kind.clone(), e.data.clone()))
        .collect()
}

/// Reads once nothing is held back any more. Transactions of other databases on the same server
/// (other tests) hold events back for a moment too.
async fn read_settled(
    store: &Store,
    after: EventCursor,
    filter: &EventFilter,
) -> pacer_store::EventBatch {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let batch = store.events_after(after, filter, 100).await.expect("read");
        if !batch.held_back || tokio::time::Instant::now() >= deadline {
            return batch;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_new_leader_term_and_a_resignation_are_events_and_a_renewal_is_not(pool: PgPool) {
    let store = Store::new(pool);
    let tenure = store
        .acquire_lease("a", 60_000, false)
        .await
        .expect("acquire")
        .expect("free lease");
    store
        .acquire_lease("a", 60_000, false)
        .await
        .expect("renew")
        .expect("held");
    assert!(store.resign_lease("a", tenure.term).await.expect("resign"));
    let batch = read_settled(&store, EventCursor::START, &EventFilter::default()).await;
    assert_eq!(
        kinds(&batch.events),
        [
            (
                "leader.changed".to_owned(),
                json!({ "node": "a", "term": tenure.term })
            ),
            (
                "leader.resigned".to_owned(),
                json!({ "node": "a", "term": tenure.term })
            ),
        ]
    );
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn an_event_is_held_back_until_every_older_transaction_has_finished(pool: PgPool) {
    let store = Store::new(pool.clone());
    let event = |kind: &'static str| NewEvent {
        kind,
        job_name: Some("sync"),
        task_id: None,
        data: json!({}),
    };
    // `early` takes its transaction id (and its event id) first but commits last.
    let mut early = pool.begin().await.expect("begin");
    append_event(&mut early, &event("early"))
        .await
        .expect("append");
    store.append_event(&event("late")).await.expect("append");
    let all = EventFilter::default();
    let held = store
        .events_after(EventCursor::START, &all, 100)
        .await
        .expect("read");
    assert!(held.events.is_empty(), "{:?}", held.events);
    assert!(
        held.held_back,
        "a committed event waits for the older transaction"
    );
    early.commit().await.expect("commit");
    let batch = read_settled(&store, held.next, &all).await;
    let order: Vec<&str> = batch.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(order, ["early", "late"]);
    assert!(batch.events[0].id < batch.events[1].id);
    let after = store
        .events_after(batch.next, &all, 100)
        .await
        .expect("read");
    assert!(after.events.is_empty(), "nothing is delivered twice");
    let only = EventFilter::job("other");
    assert!(
        store
            .events_after(EventCursor::START, &only, 100)
            .await
            .expect("read")
            .events
            .is_empty()
    );

    // A consumer's stored position never moves back.
    let last = batch.events[1].cursor();
    store
        .save_event_cursor("webhook", last)
        .await
        .expect("save");
    store
        .save_event_cursor("webhook", EventCursor::START)
        .await
        .expect("save");
    assert_eq!(
        store.event_cursor("webhook").await.expect("read"),
        Some(last)
    );
    assert_eq!(
        last.to_string().parse::<EventCursor>().expect("parse"),
        last
    );
    assert!("12".parse::<EventCursor>().is_err());

    // Retention: only events older than it are pruned.
    sqlx::query("update events set at = now() - interval '2 hours' where kind = 'early'")
        .execute(&pool)
        .await
        .expect("age");
    let tenure = store
        .acquire_lease("n1", 60_000, true)
        .await
        .expect("lease")
        .expect("held");
    assert_eq!(
        store
            .prune("n1", tenure.term, Prunable::Events, 3_600_000, 100)
            .await
            .expect("prune"),
        Some(1)
    );
    let left = read_settled(&store, EventCursor::START, &all).await;
    let left: Vec<&str> = left
        .events
        .iter()
        .map(|e| e.kind.as_str())
        .filter(|kind| *kind != "leader.changed")
        .collect();
    assert_eq!(left, ["late"]);
}

/// Transactions that started after the newest commit have ids at or past the snapshot's `xmax`;
/// they must not push the horizon back before the log, nor hold back events older than them.
#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn writers_that_overlap_hold_back_only_what_they_may_still_commit(pool: PgPool) {
    let store = Store::new(pool.clone());
    let event = |kind: &'static str| NewEvent {
        kind,
        job_name: Some("sync"),
        task_id: None,
        data: json!({}),
    };
    store.append_event(&event("before")).await.expect("append");
    // Two writers that take transaction ids after the newest commit and stay open.
    let mut first = pool.begin().await.expect("begin");
    let mut second = pool.begin().await.expect("begin");
    let first_id: i64 = sqlx::query_scalar("select pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *first)
        .await
        .expect("xid");
    let _: i64 = sqlx::query_scalar("select pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *second)
        .await
        .expect("xid");

    let before: i64 = sqlx::query_scalar("select tx from events where kind = 'before'")
        .fetch_one(&pool)
        .await
        .expect("tx");
    let horizon = store.event_horizon().await.expect("horizon");
    assert!(
        before <= horizon.tx && horizon.tx < first_id,
        "the horizon {} lies between the last commit {before} and the oldest open writer {first_id}",
        horizon.tx
    );
    let all = EventFilter::default();
    let read = store
        .events_after(EventCursor::START, &all, 100)
        .await
        .expect("read");
    let kinds: Vec<&str> = read.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["before"], "what committed before them is readable");
    first.rollback().await.expect("rollback");
    second.rollback().await.expect("rollback");
}

/// The `task.state` events of the tasks with `ids`, as (task, previous, state), in log order.
async fn state_events(
    pool: &PgPool,
    ids: &[uuid::Uuid],
) -> Vec<(uuid::Uuid, Option<String>, String)> {
    sqlx::query_as(
        "select task_id, data ->> 'previous', data ->> 'state' from events
         where kind = 'task.state' and task_id = any($1) order by id",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
    .expect("events are readable")
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn every_state_change_in_a_statement_is_one_event_and_other_updates_are_none(pool: PgPool) {
    let job = uuid::Uuid::now_v7();
    sqlx::query(
        "insert into jobs (id, name, spec, dispatch_timeout_ms)
         values ($1, 'sync', '{\"target\": {\"url\": \"http://127.0.0.1:9/\"}}', 10000)",
    )
    .bind(job)
    .execute(&pool)
    .await
    .expect("a job");
    let ids: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::now_v7()).collect();
    sqlx::query(
        "insert into tasks (id, job_id, job_name, origin, payload, due_at, timeout_at, next_dispatch_at)
         select id, $2, 'sync', 'api', '{}', now(), now() + interval '1 hour', now()
         from unnest($1::uuid[]) as id",
    )
    .bind(&ids)
    .bind(job)
    .execute(&pool)
    .await
    .expect("three tasks");
    let created: Vec<_> = ids
        .iter()
        .map(|id| (*id, None, "pending".to_owned()))
        .collect();
    assert_eq!(state_events(&pool, &ids).await, created);

    // A claim, a heartbeat, a progress report: updates that leave the state as it is.
    sqlx::query(
        "update tasks set claim_token = gen_random_uuid(), claimed_by = 'node-a', claimed_at = now(),
             progress = '{\"done\": 1}' where id = any($1)",
    )
    .bind(&ids)
    .execute(&pool)
    .await
    .expect("a claim");
    assert_eq!(state_events(&pool, &ids).await, created);

    // One statement moves two tasks on and leaves the third: two events, each with its previous
    // state, in id order.
    sqlx::query(
        "update tasks set
             state = case when id = $2 then 'processing' when id = $3 then 'cancelled' else state end,
             next_dispatch_at = case when id = $3 then null else next_dispatch_at end,
             finished_at = case when id = $3 then now() end
         where id = any($1)",
    )
    .bind(&ids)
    .bind(ids[2])
    .bind(ids[0])
    .execute(&pool)
    .await
    .expect("a batch of state changes");
    let mut expected = created;
    expected.push((ids[0], Some("pending".to_owned()), "cancelled".to_owned()));
    expected.push((ids[2], Some("pending".to_owned()), "processing".to_owned()));
    assert_eq!(state_events(&pool, &ids).await, expected);
}
