//! End-to-end: nodes dying or stopping mid-dispatch (DESIGN §3 promise 2, "no task is ever lost
//! or stuck"). A killed node's claim is taken over once its lease runs out; a stopping node
//! drains what it can and hands back the rest at once.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pacer_tests::{
    FakeDownstream, NodeSettings, PacerProcess, Reply, TestDb, attempts, outcomes, wait_until,
};
use serde_json::{Value, json};
use tokio::time::Instant;

/// Generous: these waits cover a node start and a dispatch or two on a loaded machine.
const SETTLE: Duration = Duration::from_secs(30);

/// The task's row as the database holds it: state, claimant, whether it is due now, and how
/// long after the claim it is due again (the lease, while claimed).
async fn task_row(db: &TestDb, id: &str) -> (String, Option<String>, bool, Option<f64>) {
    sqlx::query_as(
        "select state, claimed_by, coalesce(next_dispatch_at <= now(), false),
                extract(epoch from next_dispatch_at - claimed_at)::float8
         from tasks where id = $1::uuid",
    )
    .bind(id)
    .fetch_one(db.pool())
    .await
    .expect("the task row is readable")
}

fn started_at(attempt: &Value) -> DateTime<Utc> {
    pacer_tests::timestamp(&attempt["started_at"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_lost_with_its_node_is_taken_over_after_the_lease() {
    let db = TestDb::create().await;
    // The first dispatch is held open until the node is gone; the second completes.
    let downstream = FakeDownstream::sequence(vec![
        Reply::hang(),
        Reply::accept().then_callback(
            Duration::from_millis(50),
            json!({ "status": "completed", "result": { "by": "second dispatch" } }),
        ),
    ])
    .await;
    let mut node_a = PacerProcess::start(db.url(), "node-a").await;
    // Lease = dispatch_timeout 3s + lease margin 1s.
    node_a
        .api()
        .put_job(
            "sync",
            &json!({
                "target": { "url": downstream.url("/sync") },
                "dispatch_timeout": "3s",
                "repoll_interval": "1m",
            }),
        )
        .await;
    let id = node_a.api().create_task_id("sync", &json!({})).await;
    downstream.wait_for_requests(&id, 1, SETTLE).await;

    let status = node_a.kill();
    assert_eq!(status.signal(), Some(9), "killed, not exited: {status:?}");
    let (state, claimed_by, _, lease) = task_row(&db, &id).await;
    assert_eq!(state, "pending");
    assert_eq!(
        claimed_by.as_deref(),
        Some("node-a"),
        "the dead node still holds the claim"
    );
    assert_eq!(lease, Some(4.0), "due again when the 4s lease runs out");

    let node_b = PacerProcess::start(db.url(), "node-b").await;
    let api = node_b.api();
    api.wait_for_state(&id, "completed", SETTLE).await;
    let task = api.wait_for_attempts(&id, 2, SETTLE).await;
    assert_eq!(task["result"], json!({ "by": "second dispatch" }));
    assert_eq!(outcomes(&task), ["abandoned", "accepted"]);
    let [lost, taken_over] = attempts(&task) else {
        panic!("two attempts expected: {task:#}")
    };
    assert_eq!(
        (&lost["number"], &lost["node"]),
        (&json!(1), &json!("node-a"))
    );
    assert_eq!(
        (&taken_over["number"], &taken_over["node"]),
        (&json!(2), &json!("node-b"))
    );
    assert!(
        started_at(taken_over) - started_at(lost) >= chrono::Duration::seconds(4),
        "taken over only once the 4s lease ran out (database clock): {task:#}"
    );

    let requests = downstream.requests_for(&id);
    assert_eq!(requests.len(), 2, "dispatched once per node: {requests:#?}");
    assert!(requests.iter().all(|r| r.idempotency_key() == id));
    assert_eq!(
        requests.iter().map(|r| r.attempt()).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(
        requests[1].body["callback"]["url"],
        format!("{}/api/v1/tasks/{id}/callback", node_b.url()),
        "the callback goes to the node that dispatched"
    );
    let callbacks = downstream.wait_for_callbacks(1, SETTLE).await;
    assert_eq!(callbacks.len(), 1);
    assert_eq!(callbacks[0].status, 200, "{callbacks:#?}");

    // Exactly one outcome: one task row, one terminal state that no longer moves.
    let tasks: i64 = sqlx::query_scalar("select count(*) from tasks")
        .fetch_one(db.pool())
        .await
        .expect("tasks are countable");
    assert_eq!(tasks, 1);
    let late = api.callback(&id, &json!({ "status": "failed" })).await;
    assert_eq!(late.expect_problem(409)["state"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_drains_then_hands_back_what_did_not_finish() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|request| match request.path.as_str() {
        // Answers within the drain timeout, with the task's final status.
        "/quick" => Reply::status(200)
            .json(json!({ "status": "completed", "result": { "quick": true } }))
            .after(Duration::from_millis(500)),
        // Accepted during the drain, then calls back to the draining node.
        "/late" => Reply::accept()
            .after(Duration::from_millis(300))
            .then_callback(
                Duration::from_millis(700),
                json!({ "status": "completed", "result": { "late": true } }),
            ),
        // Outlasts the drain on its first dispatch; completes on the next.
        _ if request.task_seq == 0 => Reply::hang(),
        _ => Reply::accept()
            .then_callback(Duration::from_millis(50), json!({ "status": "completed" })),
    })
    .await;
    let mut node_a =
        PacerProcess::start_with(db.url(), NodeSettings::new("node-a").drain_timeout("5s")).await;
    let api_a = node_a.api();
    // A 31s lease: the hand-back, not the lease, must bring the slow task back.
    for (job, path) in [("quick", "/quick"), ("slow", "/slow"), ("late", "/late")] {
        api_a
            .put_job(
                job,
                &json!({
                    "target": { "url": downstream.url(path) },
                    "dispatch_timeout": "30s",
                    "repoll_interval": "1m",
                }),
            )
            .await;
    }
    let quick = api_a.create_task_id("quick", &json!({})).await;
    let slow = api_a.create_task_id("slow", &json!({})).await;
    downstream.wait_for_requests(&quick, 1, SETTLE).await;
    downstream.wait_for_requests(&slow, 1, SETTLE).await;

    let late = api_a.create_task_id("late", &json!({})).await;
    downstream.wait_for_requests(&late, 1, SETTLE).await;

    let stopping = Instant::now();
    node_a.terminate();
    // While it drains, the node tells load balancers it is not ready, yet still takes callbacks.
    wait_until("node-a to report draining", SETTLE, || async {
        let ready = api_a
            .request(reqwest::Method::GET, "/readyz", None, &[])
            .await;
        (ready.status == 503 && ready.body["status"] == "draining").then_some(())
    })
    .await;
    let callbacks = downstream.wait_for_callbacks(1, SETTLE).await;
    assert_eq!(
        callbacks[0].status, 200,
        "a callback during the drain lands: {callbacks:?}"
    );
    assert_eq!(callbacks[0].body["state"], "completed");
    let status = node_a.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "a drained node exits 0: {status:?}\n{}",
        node_a.output()
    );
    assert!(
        stopping.elapsed() >= Duration::from_secs(4),
        "the node waited for its in-flight dispatches, stopped after {:?}",
        stopping.elapsed()
    );
    let handed_back = node_a.logs_with_message("handed unfinished dispatches back");
    assert_eq!(handed_back.len(), 1, "{}", node_a.output());
    assert_eq!(handed_back[0]["released"], 1);
    assert_eq!(node_a.logs_with_message("stopped").len(), 1);

    // The quick dispatch finished during the drain; the slow one is free for any node now.
    let (state, claimed_by, _, _) = task_row(&db, &quick).await;
    assert_eq!((state.as_str(), claimed_by), ("completed", None));
    let (state, _, _, _) = task_row(&db, &late).await;
    assert_eq!(
        state, "completed",
        "the callback received while draining was recorded"
    );
    let (state, claimed_by, due, _) = task_row(&db, &slow).await;
    assert_eq!((state.as_str(), claimed_by), ("pending", None));
    assert!(due, "a handed-back task is due at once");

    let mut node_b =
        PacerProcess::start_with(db.url(), NodeSettings::new("node-b").drain_timeout("1m")).await;
    let api = node_b.api();
    let task = api.wait_for_state(&quick, "completed", SETTLE).await;
    assert_eq!(task["result"], json!({ "quick": true }));
    assert_eq!(outcomes(&task), ["accepted"]);
    assert_eq!(attempts(&task)[0]["node"], "node-a");

    api.wait_for_state(&slow, "completed", SETTLE).await;
    let task = api.wait_for_attempts(&slow, 2, SETTLE).await;
    assert_eq!(outcomes(&task), ["interrupted", "accepted"]);
    let [interrupted, resumed] = attempts(&task) else {
        panic!("two attempts expected: {task:#}")
    };
    assert_eq!(interrupted["node"], "node-a");
    assert_eq!(resumed["node"], "node-b");
    assert!(
        started_at(resumed) - started_at(interrupted) < chrono::Duration::seconds(31),
        "dispatched again before the old lease would have run out: {task:#}"
    );
    let requests = downstream.requests_for(&slow);
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(|r| r.idempotency_key() == slow));
    assert_eq!(downstream.requests_for(&quick).len(), 1);

    // A second signal stops a draining node at once, whatever it still waits for.
    let stuck = api.create_task_id("slow", &json!({})).await;
    downstream.wait_for_requests(&stuck, 1, SETTLE).await;
    node_b.terminate();
    wait_until("node-b to start draining", SETTLE, || async {
        (!node_b
            .logs_with_message("signal received; draining (send again to exit at once)")
            .is_empty())
        .then_some(())
    })
    .await;
    node_b.terminate();
    let status = node_b.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(130), "{status:?}\n{}", node_b.output());
}
