//! Leadership and firing on the real PostgreSQL: the lease elects one leader with a growing term,
//! a stale term writes nothing, every occurrence gets exactly one outcome, and the overlap
//! policies hold for fired and requested tasks alike.

use std::time::Duration;

use chrono::{DateTime, Utc};
use pacer_domain::{JobInput, JobName, JobSpec, Span, TriggerInput, TriggerSpec};
use pacer_store::{CreatedTask, Fired, Job, NewTask, Origin, Store, Tenure};
use serde_json::{Value, json};
use sqlx::PgPool;

async fn job(store: &Store, name: &str, extra: Value) -> Job {
    let mut body = json!({ "target": { "url": "http://downstream.invalid/run" } });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let input: JobInput = serde_json::from_value(body).expect("job input");
    let spec = JobSpec::try_from(input).expect("valid job");
    let name: JobName = name.parse().expect("name");
    store.put_job(&name, &spec).await.expect("put job").job
}

fn trigger(body: Value) -> TriggerSpec {
    let input: TriggerInput = serde_json::from_value(body).expect("trigger input");
    TriggerSpec::try_from(input).expect("valid trigger")
}

fn api_task() -> NewTask {
    NewTask::new(Origin::Api, json!({}))
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// Takes the lease as node "a" and returns its term.
async fn lead(store: &Store) -> i64 {
    store
        .acquire_lease("a", 60_000, false)
        .await
        .expect("lease")
        .expect("held")
        .term
}

/// Whole seconds `ago` before the database's now.
async fn seconds_ago(store: &Store, ago: i64) -> DateTime<Utc> {
    let now = store.now().await.expect("now");
    DateTime::from_timestamp(now.timestamp() - ago, 0).expect("instant")
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn the_lease_elects_one_leader_and_every_new_tenure_grows_the_term(pool: PgPool) {
    let store = Store::new(pool.clone());
    let first = store
        .acquire_lease("a", 60_000, false)
        .await
        .expect("acquire");
    assert_eq!(first, Some(Tenure { term: 1, new: true }));
    assert_eq!(
        store.acquire_lease("b", 60_000, false).await.expect("b"),
        None,
        "a holds the lease"
    );
    assert_eq!(
        store
            .acquire_lease("a", 60_000, true)
            .await
            .expect("restarted"),
        Some(Tenure { term: 2, new: true }),
        "a process that holds no tenure starts a new term, even under the same node id"
    );
    assert_eq!(
        store
            .acquire_lease("a", 60_000, false)
            .await
            .expect("renew"),
        Some(Tenure {
            term: 2,
            new: false
        })
    );

    // A resign under a stale term does nothing; under the current term it frees the lease.
    assert!(!store.resign_lease("a", 1).await.expect("stale resign"));
    assert!(store.resign_lease("a", 2).await.expect("resign"));
    assert_eq!(
        store.acquire_lease("b", 200, false).await.expect("b"),
        Some(Tenure { term: 3, new: true })
    );

    // b lets its 200 ms lease lapse; a takes over with a higher term.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let taken = loop {
        if let Some(tenure) = store.acquire_lease("a", 60_000, false).await.expect("a") {
            break tenure;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expired lease was never taken over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(taken, Tenure { term: 4, new: true });
    let lease = store.lease().await.expect("lease");
    assert_eq!(
        (lease.holder.as_deref(), lease.term, lease.valid),
        (Some("a"), 4, true)
    );
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_fenced_term_fires_nothing_and_occurrences_are_never_doubled(pool: PgPool) {
    let store = Store::new(pool.clone());
    let job = job(&store, "tick", json!({})).await;
    let start = seconds_ago(&store, 5).await;
    let spec = trigger(json!({ "kind": "interval", "every": "1s", "start_at": start }));
    store
        .create_trigger(&job, &spec, Some(start))
        .await
        .expect("trigger");

    assert_eq!(
        store
            .fire_due("a", 1, 100, Span::from_millis(0))
            .await
            .expect("fire"),
        Fired::Fenced,
        "no lease, no firing"
    );
    assert_eq!(count(&pool, "select count(*) from tasks").await, 0);

    let term = lead(&store).await;
    let Fired::Done {
        triggers: 1,
        tasks,
        skips: 0,
        ref lateness,
        ..
    } = store
        .fire_due("a", term, 100, Span::from_millis(0))
        .await
        .expect("fire")
    else {
        panic!("one due trigger expected");
    };
    assert!(tasks >= 6, "the 5 seconds since start_at and now: {tasks}");
    assert_eq!(
        lateness.len(),
        tasks,
        "one lateness sample per created task"
    );
    assert!(
        lateness.iter().all(|l| (0.0..60.0).contains(l)),
        "{lateness:?}"
    );
    let fired_term: i64 = sqlx::query_scalar("select min(fired_term) from tasks")
        .fetch_one(&pool)
        .await
        .expect("term");
    assert_eq!(fired_term, term);

    // Another node takes over; the old term is fenced off and writes nothing.
    assert!(store.resign_lease("a", term).await.expect("resign"));
    let newer = store
        .acquire_lease("b", 60_000, false)
        .await
        .expect("lease")
        .expect("held")
        .term;
    assert!(newer > term);
    // Rewind the trigger so work is due: what stops the old term is the fence, not idleness.
    sqlx::query("update triggers set next_fire_at = $1")
        .bind(start)
        .execute(&pool)
        .await
        .expect("rewind");
    let before = count(&pool, "select count(*) from tasks").await;
    assert_eq!(
        store
            .fire_due("a", term, 100, Span::from_millis(0))
            .await
            .expect("stale"),
        Fired::Fenced
    );
    assert_eq!(
        store
            .fire_due("b", term, 100, Span::from_millis(0))
            .await
            .expect("wrong term"),
        Fired::Fenced
    );
    assert_eq!(count(&pool, "select count(*) from tasks").await, before);

    // Even a replayed occurrence cannot make a second task: the unique key refuses it.
    let Fired::Done { tasks: again, .. } = store
        .fire_due("b", newer, 100, Span::from_millis(0))
        .await
        .expect("fire")
    else {
        panic!("the new leader fires");
    };
    let total = count(&pool, "select count(*) from tasks").await;
    assert_eq!(
        i64::try_from(again).expect("small"),
        total - before,
        "only new occurrences count"
    );
    let distinct = count(&pool, "select count(distinct scheduled_at) from tasks").await;
    assert_eq!(distinct, total, "one task per occurrence");
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn missed_occurrences_follow_the_misfire_policy_and_are_recorded(pool: PgPool) {
    let store = Store::new(pool.clone());
    let term = lead(&store).await;
    let start = seconds_ago(&store, 600).await;
    for (name, policy) in [
        ("skip", "skip"),
        ("once", "fire_once"),
        ("catch", "catch_up"),
    ] {
        let job = job(&store, name, json!({})).await;
        let spec = trigger(json!({
            "kind": "interval", "every": "1m", "start_at": start,
            "misfire": policy, "misfire_grace": "5s", "catch_up_limit": 3,
        }));
        store
            .create_trigger(&job, &spec, Some(start))
            .await
            .expect("trigger");
    }
    store
        .fire_due("a", term, 100, Span::from_millis(0))
        .await
        .expect("fire");

    let outcomes = |job: &'static str| {
        let pool = pool.clone();
        async move {
            let tasks: i64 = sqlx::query_scalar("select count(*) from tasks where job_name = $1")
                .bind(job)
                .fetch_one(&pool)
                .await
                .expect("tasks");
            let skips: Vec<String> = sqlx::query_scalar(
                "select reason from skipped_runs where job_name = $1 order by scheduled_at",
            )
            .bind(job)
            .fetch_all(&pool)
            .await
            .expect("skips");
            (tasks, skips)
        }
    };
    // Ten minutes at one a minute: occurrences 0..=10 (the last possibly on time).
    let (tasks, skips) = outcomes("skip").await;
    assert!(
        tasks <= 1 && skips.iter().all(|r| r == "misfire"),
        "{tasks} {skips:?}"
    );
    assert_eq!(tasks + i64::try_from(skips.len()).expect("len"), 11);
    let (tasks, skips) = outcomes("once").await;
    assert!(
        (1..=2).contains(&tasks),
        "one for all missed (and one on time): {tasks}"
    );
    assert!(skips.iter().all(|r| r == "coalesced"));
    assert_eq!(tasks + i64::try_from(skips.len()).expect("len"), 11);
    let (tasks, skips) = outcomes("catch").await;
    assert!(
        (3..=4).contains(&tasks),
        "the latest three missed (and one on time): {tasks}"
    );
    assert!(skips.iter().all(|r| r == "catch_up_limit"));
    assert_eq!(tasks + i64::try_from(skips.len()).expect("len"), 11);

    let skipped_total: i64 = sqlx::query_scalar("select sum(skip_count)::bigint from triggers")
        .fetch_one(&pool)
        .await
        .expect("counters");
    assert_eq!(
        skipped_total,
        count(&pool, "select count(*) from skipped_runs").await
    );
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn overlap_policies_hold_for_requested_and_fired_tasks(pool: PgPool) {
    let store = Store::new(pool.clone());
    let single = job(&store, "single", json!({ "overlap": "skip" })).await;
    let CreatedTask::Created { id: first, .. } = store
        .create_task(&single, api_task(), None)
        .await
        .expect("first")
    else {
        panic!("the first task starts");
    };
    let second = store
        .create_task(&single, api_task(), None)
        .await
        .expect("second");
    assert!(matches!(second, CreatedTask::Skipped { open_task: Some(open), .. } if open == first));

    let term = lead(&store).await;
    let now = seconds_ago(&store, 0).await;
    let spec = trigger(json!({ "kind": "interval", "every": "1s", "start_at": now }));
    store
        .create_trigger(&single, &spec, Some(now))
        .await
        .expect("trigger");
    store
        .fire_due("a", term, 100, Span::from_millis(0))
        .await
        .expect("fire");
    assert_eq!(
        count(
            &pool,
            "select count(*) from tasks where job_name = 'single'"
        )
        .await,
        1
    );
    let reasons: Vec<String> =
        sqlx::query_scalar("select reason from skipped_runs where job_name = 'single'")
            .fetch_all(&pool)
            .await
            .expect("skips");
    assert!(
        reasons.len() >= 2 && reasons.iter().all(|r| r == "overlap"),
        "{reasons:?}"
    );

    let queued = job(&store, "queued", json!({ "overlap": "buffer_one" })).await;
    let CreatedTask::Created { id: running, .. } = store
        .create_task(&queued, api_task(), None)
        .await
        .expect("1")
    else {
        panic!("starts");
    };
    let CreatedTask::Created { id: waiting, .. } = store
        .create_task(&queued, api_task(), None)
        .await
        .expect("2")
    else {
        panic!("queues");
    };
    let third = store
        .create_task(&queued, api_task(), None)
        .await
        .expect("3");
    assert!(matches!(
        third,
        CreatedTask::Skipped {
            reason: pacer_domain::SkipReason::BufferFull,
            ..
        }
    ));
    let task = store.get_task(waiting).await.expect("waiting");
    assert_eq!(task.waits_for, Some(running));
    assert!(
        store
            .claim_due("n", 10, Span::from_secs(5), Span::from_millis(0))
            .await
            .expect("claim")
            .iter()
            .all(|t| t.id != waiting)
    );
    assert_eq!(
        store.sweep(10_000).await.expect("sweep").released,
        0,
        "its predecessor is still open"
    );
    store.cancel_task(running).await.expect("cancel");
    assert_eq!(store.sweep(10_000).await.expect("sweep").released, 1);
    let task = store.get_task(waiting).await.expect("released");
    assert_eq!(task.waits_for, None);
    assert!(
        store
            .claim_due("n", 10, Span::from_secs(5), Span::from_millis(0))
            .await
            .expect("claim")
            .iter()
            .any(|t| t.id == waiting)
    );

    let latest = job(&store, "latest", json!({ "overlap": "replace" })).await;
    let CreatedTask::Created { id: old, .. } = store
        .create_task(&latest, api_task(), None)
        .await
        .expect("old")
    else {
        panic!("starts");
    };
    let CreatedTask::Created { id: new, .. } = store
        .create_task(&latest, api_task(), None)
        .await
        .expect("new")
    else {
        panic!("replaces");
    };
    assert_eq!(
        store.get_task(old).await.expect("old").state,
        pacer_domain::TaskState::Cancelled
    );
    assert_eq!(
        store.get_task(new).await.expect("new").state,
        pacer_domain::TaskState::Pending
    );
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn claims_of_dead_nodes_are_swept_back_at_once(pool: PgPool) {
    let store = Store::new(pool.clone());
    let job = job(&store, "work", json!({ "dispatch_timeout": "10m" })).await;
    store
        .create_task(&job, api_task(), Some(("ghost", Span::from_secs(60))))
        .await
        .expect("claimed");
    store
        .heartbeat("ghost", "http://ghost", "0.1.0")
        .await
        .expect("beat");
    assert_eq!(
        store.sweep(60_000).await.expect("sweep").orphaned_claims,
        0,
        "a live node keeps its claims"
    );
    assert!(
        store
            .claim_due("other", 10, Span::from_secs(5), Span::from_millis(0))
            .await
            .expect("claim")
            .is_empty()
    );
    sqlx::query("update nodes set last_heartbeat_at = now() - interval '1 minute'")
        .execute(&pool)
        .await
        .expect("age");
    assert_eq!(store.sweep(10_000).await.expect("sweep").orphaned_claims, 1);
    let taken = store
        .claim_due("other", 10, Span::from_secs(5), Span::from_millis(0))
        .await
        .expect("claim");
    assert_eq!(
        taken.len(),
        1,
        "the dead node's claim is taken over without waiting 10 minutes"
    );
    let nodes = store.nodes(10_000).await.expect("nodes");
    assert_eq!(nodes.len(), 1);
    assert!(!nodes[0].alive);
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_leader_stuck_inside_a_firing_transaction_cannot_block_a_takeover(pool: PgPool) {
    use sqlx::Connection;
    let store = Store::new(pool.clone());
    let term = store
        .acquire_lease("a", 300, false)
        .await
        .expect("lease")
        .expect("held")
        .term;

    // Node a's session, as Pacer connects it, stops inside a firing transaction while holding
    // the share lock on the lease row (the process was paused, or the network cut).
    let options = (*pool.connect_options())
        .clone()
        .options([("idle_in_transaction_session_timeout", "500ms")]);
    let mut stuck = sqlx::PgConnection::connect_with(&options)
        .await
        .expect("connect");
    sqlx::query("begin")
        .execute(&mut stuck)
        .await
        .expect("begin");
    sqlx::query("select 1 from leader_lease where id for share")
        .execute(&mut stuck)
        .await
        .expect("lock");

    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(10);
    let taken = loop {
        if let Some(tenure) = store.acquire_lease("b", 60_000, false).await.expect("b") {
            break tenure;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stuck session blocked the takeover"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(taken.term > term && taken.new);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "taken over after {:?}",
        started.elapsed()
    );
    let lease = store.lease().await.expect("lease");
    assert!(
        lease.valid,
        "a lease computed after waiting for the lock is not born expired"
    );
    assert_eq!(lease.holder.as_deref(), Some("b"));
    assert!(
        sqlx::query("select 1").execute(&mut stuck).await.is_err(),
        "the server ended the stuck session"
    );
}

/// A `once` trigger of `job` due `in_secs` after the database's now (whole milliseconds).
async fn once_in(store: &Store, job: &Job, in_secs: i64) -> (uuid::Uuid, DateTime<Utc>) {
    let now = store.now().await.expect("now");
    let at =
        DateTime::from_timestamp_millis(now.timestamp_millis() + in_secs * 1000).expect("instant");
    let spec = trigger(json!({ "kind": "once", "at": at }));
    let created = store
        .create_trigger(job, &spec, Some(at))
        .await
        .expect("trigger");
    (created.id, at)
}

/// Each task of `job`: (scheduled_at, state, next_dispatch_at, message, a cancel notice is due).
async fn fired_tasks(
    pool: &PgPool,
    job: &str,
) -> Vec<(
    DateTime<Utc>,
    String,
    Option<DateTime<Utc>>,
    Option<String>,
    bool,
)> {
    sqlx::query_as(
        "select scheduled_at, state, next_dispatch_at, message, cancel_notice_at is not null
         from tasks where job_name = $1 order by scheduled_at",
    )
    .bind(job)
    .fetch_all(pool)
    .await
    .expect("tasks")
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn occurrences_that_may_overlap_fire_and_are_claimed_ahead_and_a_pause_withdraws_them(
    pool: PgPool,
) {
    let store = Store::new(pool.clone());
    let term = lead(&store).await;
    let ahead = Span::from_secs(60);
    let free = job(&store, "free", json!({})).await;
    let guarded = job(&store, "guarded", json!({ "overlap": "skip" })).await;
    let (free_trigger, at) = once_in(&store, &free, 30).await;
    let (guarded_trigger, guarded_at) = once_in(&store, &guarded, 30).await;

    let Fired::Done {
        triggers,
        tasks,
        ref lateness,
        ..
    } = store.fire_due("a", term, 100, ahead).await.expect("fire")
    else {
        panic!("the leader fires");
    };
    assert_eq!(
        (triggers, tasks),
        (1, 1),
        "only the job that allows overlap fires ahead"
    );
    assert!(
        lateness[0] < -25.0,
        "created about 30 s ahead: {lateness:?}"
    );
    let (due_at, scheduled_at, next_dispatch_at): (DateTime<Utc>, DateTime<Utc>, DateTime<Utc>) =
        sqlx::query_as("select due_at, scheduled_at, next_dispatch_at from tasks")
            .fetch_one(&pool)
            .await
            .expect("task");
    assert_eq!((due_at, scheduled_at, next_dispatch_at), (at, at, at));
    let guarded_next: Option<DateTime<Utc>> =
        sqlx::query_scalar("select next_fire_at from triggers where id = $1")
            .bind(guarded_trigger)
            .fetch_one(&pool)
            .await
            .expect("guarded trigger");
    assert_eq!(
        guarded_next,
        Some(guarded_at),
        "the guarded job waits for its time"
    );
    let next = store
        .next_fire_in(ahead)
        .await
        .expect("next fire")
        .expect("one trigger left");
    assert!(
        next > Duration::from_secs(20),
        "the guarded trigger does not wake the leader ahead: {next:?}"
    );

    // Claimed only within the window, with the time left until it is due.
    let margin = Span::from_secs(1);
    assert!(
        store
            .claim_due("n", 10, margin, Span::from_millis(0))
            .await
            .expect("claim")
            .is_empty()
    );
    assert_eq!(
        store.next_due_in(ahead).await.expect("due in"),
        Some(Duration::ZERO)
    );
    let claimed = store
        .claim_due("n", 10, margin, ahead)
        .await
        .expect("claim ahead");
    assert_eq!(claimed.len(), 1);
    let task = &claimed[0];
    assert!(
        task.dispatch_in > Duration::from_secs(20) && task.dispatch_in <= Duration::from_secs(30),
        "{:?}",
        task.dispatch_in
    );
    assert_eq!(
        (
            task.claimed_at,
            task.attempt,
            task.timed_out,
            task.dispatched
        ),
        (at, 1, false, false),
        "claimed ahead: not to be sent before its node marks it"
    );
    assert!(
        store
            .claim_due("other", 10, margin, ahead)
            .await
            .expect("claim again")
            .is_empty(),
        "a claim taken ahead is held like any other"
    );

    // A node shutting down hands back what it has not sent: as before the claim, due at its time.
    assert_eq!(
        store
            .unclaim_unsent(&[task.claim()])
            .await
            .expect("hand back"),
        vec![true]
    );
    let (attempt, token, next): (i32, Option<uuid::Uuid>, Option<DateTime<Utc>>) =
        sqlx::query_as("select attempt, claim_token, next_dispatch_at from tasks")
            .fetch_one(&pool)
            .await
            .expect("task");
    assert_eq!((attempt, token, next), (0, None, Some(at)));
    assert_eq!(
        store.unclaim_unsent(&[task.claim()]).await.expect("again"),
        vec![false],
        "a claim no longer held is left alone"
    );
    let claimed = store
        .claim_due("n", 10, margin, ahead)
        .await
        .expect("claimed ahead again");
    assert_eq!(claimed.len(), 1);
    let task = &claimed[0];
    assert_eq!((task.claimed_at, task.attempt), (at, 1));

    // The claimer stops: the sweep makes its claim due again at the task's time, not at once.
    store
        .heartbeat("n", "http://n", "test")
        .await
        .expect("heartbeat");
    store.node_stopped("n").await.expect("stopped");
    assert_eq!(store.sweep(10_000).await.expect("sweep").orphaned_claims, 1);
    let rows = fired_tasks(&pool, "free").await;
    assert_eq!(rows[0].2, Some(at));

    // The trigger is paused before the task was ever sent: it is withdrawn, the downstream
    // never saw it and is not told, and a mark with the old claim finds it gone.
    store
        .set_trigger_paused(&free, free_trigger, true, None)
        .await
        .expect("pause");
    let rows = fired_tasks(&pool, "free").await;
    assert_eq!(
        (rows[0].1.as_str(), rows[0].2, rows[0].4),
        ("cancelled", None, false),
        "withdrawn unsent: no cancel notice"
    );
    assert_eq!(
        rows[0].3.as_deref(),
        Some("cancelled: its trigger was paused before its scheduled time")
    );
    assert_eq!(
        store.mark_dispatched(&[task.claim()]).await.expect("mark"),
        vec![false]
    );
    let (attempt, attempts): (i32, i64) = sqlx::query_as(
        "select attempt, (select count(*) from task_attempts) from tasks where job_name = 'free'",
    )
    .fetch_one(&pool)
    .await
    .expect("task");
    assert_eq!((attempt, attempts), (0, 0), "no attempt was ever made");
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_task_marked_for_sending_stands_through_a_pause_and_its_cancel_is_noticed(pool: PgPool) {
    let store = Store::new(pool.clone());
    let term = lead(&store).await;
    let free = job(&store, "free", json!({})).await;
    let (trigger, at) = once_in(&store, &free, 30).await;
    let ahead = Span::from_secs(60);
    store.fire_due("a", term, 100, ahead).await.expect("fire");
    let claimed = store
        .claim_due("n", 10, Span::from_secs(1), ahead)
        .await
        .expect("claim ahead");
    assert_eq!(
        store
            .mark_dispatched(&[claimed[0].claim()])
            .await
            .expect("mark"),
        vec![true]
    );
    // Marked: the node is sending it, so a pause no longer withdraws it.
    store
        .set_trigger_paused(&free, trigger, true, None)
        .await
        .expect("pause");
    store
        .set_job_paused(&free, true, &[])
        .await
        .expect("pause job");
    store.set_scheduler_paused(true).await.expect("standby");
    let rows = fired_tasks(&pool, "free").await;
    assert_eq!((rows[0].0, rows[0].1.as_str()), (at, "pending"));
    // An operator's cancel of it reaches the downstream, which may have it.
    store.cancel_task(claimed[0].id).await.expect("cancel");
    let rows = fired_tasks(&pool, "free").await;
    assert_eq!((rows[0].1.as_str(), rows[0].4), ("cancelled", true));
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_job_pause_standby_and_trigger_delete_withdraw_only_tasks_not_yet_due(pool: PgPool) {
    let store = Store::new(pool.clone());
    let term = lead(&store).await;
    let paused = job(&store, "paused", json!({})).await;
    let standby = job(&store, "standby", json!({})).await;
    let deleted = job(&store, "deleted", json!({})).await;
    once_in(&store, &paused, -1).await;
    once_in(&store, &paused, 30).await;
    once_in(&store, &standby, 30).await;
    let (gone, _) = once_in(&store, &deleted, 30).await;
    let Fired::Done { tasks, .. } = store
        .fire_due("a", term, 100, Span::from_secs(60))
        .await
        .expect("fire")
    else {
        panic!("the leader fires");
    };
    assert_eq!(tasks, 4);

    store
        .set_job_paused(&paused, true, &[])
        .await
        .expect("pause job");
    let rows = fired_tasks(&pool, "paused").await;
    let states: Vec<(&str, Option<&str>, bool)> = rows
        .iter()
        .map(|r| (r.1.as_str(), r.3.as_deref(), r.4))
        .collect();
    assert_eq!(
        states,
        vec![
            ("pending", None, false),
            (
                "cancelled",
                Some("cancelled: its job was paused before its scheduled time"),
                false
            ),
        ],
        "the task already due stands; the one ahead, never claimed, is withdrawn without notice"
    );

    store.delete_trigger(&deleted, gone).await.expect("delete");
    let rows = fired_tasks(&pool, "deleted").await;
    assert_eq!(
        (rows[0].1.as_str(), rows[0].3.as_deref()),
        (
            "cancelled",
            Some("cancelled: its trigger was deleted before its scheduled time")
        )
    );
    assert_eq!(
        count(&pool, "select count(*) from triggers").await,
        3,
        "the delete went ahead"
    );

    store.set_scheduler_paused(true).await.expect("standby");
    store.set_scheduler_paused(false).await.expect("resume");
    let rows = fired_tasks(&pool, "standby").await;
    assert_eq!(
        (rows[0].1.as_str(), rows[0].3.as_deref()),
        (
            "cancelled",
            Some("cancelled: the scheduler entered standby before its scheduled time")
        )
    );
    let events = count(
        &pool,
        "select count(*) from events where kind = 'task.state' and data->>'state' = 'cancelled'",
    )
    .await;
    assert_eq!(events, 3, "each withdrawal is in the event log");
}
