//! End-to-end: what each kind of downstream answer does to a task (DESIGN §6's response table):
//! transient errors retried with backoff and `Retry-After`, permanent errors and exhausted retries
//! failing the task, and 2xx answers that finish it without a callback.

use std::time::Duration;

use pacer_tests::{FakeDownstream, PacerProcess, Reply, TestDb, attempts, outcomes};
use serde_json::{Value, json};

/// Generous: these waits cover a few dispatches and backoffs on a loaded machine.
const SETTLE: Duration = Duration::from_secs(30);

fn http_statuses(task: &Value) -> Vec<Option<i64>> {
    attempts(task)
        .iter()
        .map(|a| a["http_status"].as_i64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_are_retried_and_an_accepted_dispatch_resets_the_count() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::sequence(vec![
        Reply::status(503).json(json!({ "error": "warming up" })),
        Reply::status(503).header("retry-after", "1"),
        Reply::accept(),
        Reply::status(503),
        Reply::status(500),
        Reply::accept().then_callback(Duration::from_millis(50), json!({ "status": "completed" })),
    ])
    .await;
    let node = PacerProcess::start(db.url(), "node-a").await;
    let api = node.api();
    // Three transient errors in a row would fail the task; the accepted third dispatch in
    // between resets the count, so four errors in all are survived.
    api.put_job(
        "flaky",
        &json!({
            "target": { "url": downstream.url("/flaky") },
            "repoll_interval": "1s",
            "dispatch_timeout": "2s",
            "timeout": "1m",
            "retry": {
                "max_attempts": 3, "initial_backoff": "100ms", "max_backoff": "1s",
                "multiplier": 2.0, "jitter": 0.0
            },
        }),
    )
    .await;
    let id = api.create_task_id("flaky", &json!({})).await;

    api.wait_for_state(&id, "completed", SETTLE).await;
    let task = api.wait_for_attempts(&id, 6, SETTLE).await;
    assert_eq!(
        outcomes(&task),
        [
            "transient_error",
            "transient_error",
            "accepted",
            "transient_error",
            "transient_error",
            "accepted"
        ]
    );
    assert_eq!(
        http_statuses(&task),
        [
            Some(503),
            Some(503),
            Some(202),
            Some(503),
            Some(500),
            Some(202)
        ]
    );
    let first = &attempts(&task)[0];
    assert!(
        first["error"]
            .as_str()
            .is_some_and(|e| e.contains("503") && e.contains("warming up")),
        "the error names the status and the answer: {first:#}"
    );
    assert_eq!(task["failure_reason"], Value::Null);
    assert_eq!(task["attempt"], 6);

    let requests = downstream.requests_for(&id);
    assert_eq!(requests.len(), 6);
    for (n, request) in requests.iter().enumerate() {
        assert_eq!(request.idempotency_key(), id);
        assert_eq!(request.attempt(), i64::try_from(n + 1).expect("small"));
    }
    // Retry-After: 1 outweighs the 200 ms backoff; the accepted dispatch waits the repoll
    // interval (1 s) rather than a backoff.
    for (after, why) in [(1, "Retry-After"), (2, "repoll_interval")] {
        let gap = requests[after + 1].at - requests[after].at;
        assert!(
            gap >= Duration::from_millis(900),
            "{why} honoured, got a gap of {gap:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_and_exhausted_retries_fail_the_task() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|request| match request.path.as_str() {
        "/reject" => Reply::status(400).json(json!({ "error": "unknown tenant" })),
        _ => Reply::status(503),
    })
    .await;
    // A port nothing listens on: every dispatch there is a connection error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let node = PacerProcess::start(db.url(), "node-a").await;
    let api = node.api();
    let retry = json!({ "max_attempts": 3, "initial_backoff": "100ms", "jitter": 0.0 });
    for (job, url) in [
        ("rejected", downstream.url("/reject")),
        ("busy", downstream.url("/busy")),
        ("unreachable", format!("http://{closed}/run")),
    ] {
        api.put_job(
            job,
            &json!({ "target": { "url": url }, "dispatch_timeout": "1s", "retry": retry }),
        )
        .await;
    }
    let rejected = api.create_task_id("rejected", &json!({})).await;
    let busy = api.create_task_id("busy", &json!({})).await;
    let unreachable = api.create_task_id("unreachable", &json!({})).await;

    let task = api.wait_for_state(&rejected, "failed", SETTLE).await;
    assert_eq!(task["failure_reason"], "rejected");
    assert!(
        task["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("400") && e.contains("unknown tenant")),
        "{task:#}"
    );
    assert_eq!(outcomes(&task), ["permanent_error"]);
    assert_eq!(http_statuses(&task), [Some(400)]);
    assert_eq!(
        downstream.requests_for(&rejected).len(),
        1,
        "a permanent error is not retried"
    );

    let task = api.wait_for_state(&busy, "failed", SETTLE).await;
    assert_eq!(task["failure_reason"], "attempts_exhausted");
    assert!(
        task["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("503")),
        "{task:#}"
    );
    assert_eq!(outcomes(&task), ["transient_error"; 3]);
    assert_eq!(http_statuses(&task), [Some(503); 3]);
    assert_eq!(downstream.requests_for(&busy).len(), 3);

    let task = api.wait_for_state(&unreachable, "failed", SETTLE).await;
    assert_eq!(task["failure_reason"], "attempts_exhausted");
    assert_eq!(outcomes(&task), ["transient_error"; 3]);
    assert_eq!(
        http_statuses(&task),
        [None; 3],
        "no answer, no status: {task:#}"
    );
    assert!(
        attempts(&task)
            .iter()
            .all(|a| a["error"].as_str().is_some_and(|e| !e.is_empty())),
        "{task:#}"
    );

    for id in [&rejected, &busy, &unreachable] {
        let task = api.get_task(id).await;
        assert_eq!(task["next_dispatch_at"], Value::Null, "{task:#}");
        assert_eq!(task["claimed_by"], Value::Null, "{task:#}");
        assert!(task["finished_at"].is_string(), "{task:#}");
        let late = api.callback(id, &json!({ "status": "completed" })).await;
        assert_eq!(late.expect_problem(409)["state"], "failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2xx_answer_can_finish_a_task_without_a_callback() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|request| match request.path.as_str() {
        "/webhook" => Reply::status(200),
        "/sync-ok" => Reply::status(200)
            .json(json!({ "status": "completed", "message": "synced", "result": { "rows": 7 } })),
        "/sync-bad" => {
            Reply::status(200).json(json!({ "status": "failed", "message": "bad input" }))
        }
        // Already running there: 409 first, then accepted with a callback.
        _ if request.task_seq == 0 => Reply::status(409),
        _ => Reply::accept().then_callback(Duration::ZERO, json!({ "status": "completed" })),
    })
    .await;
    let node = PacerProcess::start(db.url(), "node-a").await;
    let api = node.api();
    for (job, path, expect_callback) in [
        ("webhook", "/webhook", false),
        ("sync-ok", "/sync-ok", true),
        ("sync-bad", "/sync-bad", true),
        ("elsewhere", "/elsewhere", true),
    ] {
        api.put_job(
            job,
            &json!({
                "target": { "url": downstream.url(path) },
                "repoll_interval": "1s",
                "expect_callback": expect_callback,
            }),
        )
        .await;
    }
    let webhook = api.create_task_id("webhook", &json!({})).await;
    let sync_ok = api.create_task_id("sync-ok", &json!({})).await;
    let sync_bad = api.create_task_id("sync-bad", &json!({})).await;
    let elsewhere = api.create_task_id("elsewhere", &json!({})).await;

    let task = api.wait_for_state(&webhook, "completed", SETTLE).await;
    assert_eq!(outcomes(&task), ["accepted"]);
    assert_eq!(http_statuses(&task), [Some(200)]);
    assert_eq!(task["result"], Value::Null);

    let task = api.wait_for_state(&sync_ok, "completed", SETTLE).await;
    assert_eq!(task["result"], json!({ "rows": 7 }));
    assert_eq!(task["message"], "synced");
    assert_eq!(outcomes(&task), ["accepted"]);

    let task = api.wait_for_state(&sync_bad, "failed", SETTLE).await;
    assert_eq!(task["failure_reason"], "reported");
    assert_eq!(task["message"], "bad input");
    assert_eq!(outcomes(&task), ["accepted"]);

    api.wait_for_state(&elsewhere, "completed", SETTLE).await;
    let task = api.wait_for_attempts(&elsewhere, 2, SETTLE).await;
    assert_eq!(outcomes(&task), ["already_running", "accepted"]);
    assert_eq!(http_statuses(&task), [Some(409), Some(202)]);
    let requests = downstream.requests_for(&elsewhere);
    assert_eq!(requests.len(), 2);
    assert!(
        requests[1].at - requests[0].at >= Duration::from_millis(900),
        "a 409 is re-polled after the repoll interval, not retried at once"
    );

    for id in [&webhook, &sync_ok, &sync_bad] {
        assert_eq!(downstream.requests_for(id).len(), 1, "task {id}");
    }
    // A plain webhook is handed no callback credential; a job that expects a callback is.
    let sent = &downstream.requests_for(&webhook)[0].body;
    assert!(sent.get("callback").is_none(), "{sent:#}");
    assert_eq!(sent["task_id"], webhook.as_str());
    let sent = &downstream.requests_for(&sync_ok)[0].body;
    assert!(sent["callback"]["token"].as_str().is_some(), "{sent:#}");
    // Only the `elsewhere` task needed a callback.
    let callbacks = downstream.wait_for_callbacks(1, SETTLE).await;
    assert_eq!(callbacks.len(), 1, "{callbacks:#?}");
    assert!(
        callbacks[0].url.contains(elsewhere.as_str()),
        "{callbacks:#?}"
    );
    assert_eq!(callbacks[0].status, 200, "{callbacks:#?}");
}
