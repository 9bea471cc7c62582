//! End-to-end: a job's retry policy naming what is worth another try: the statuses it retries
//! (`on_status`, replacing the default set), those it never retries (`never_on_status`), and the
//! error codes a downstream reports with a failed callback (`on_errors`).

use std::time::Duration;

use pacer_tests::{FakeDownstream, PacerProcess, Reply, TestDb, attempts, outcomes};
use reqwest::Method;
use serde_json::json;

/// Generous: these waits cover a few dispatches and backoffs on a loaded machine.
const SETTLE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_retries_the_statuses_and_error_codes_it_names_and_no_others() {
    let db = TestDb::create().await;
    let failed = |code: &str| {
        json!({ "status": "failed", "message": "gave up",
                "error": { "code": code, "message": "the registry did not answer" } })
    };
    let upstream_timeout = failed("UpstreamTimeout");
    let bad_input = failed("BadInput");
    let downstream = FakeDownstream::start(move |request| match request.path.as_str() {
        // Not there yet twice, then taken and completed.
        "/missing" if request.task_seq < 2 => Reply::status(404),
        "/missing" => Reply::accept()
            .then_callback(Duration::from_millis(50), json!({ "status": "completed" })),
        "/busy" => Reply::status(503),
        "/throttled" => Reply::status(429),
        // A failure worth another try, then success.
        "/flaky" if request.task_seq == 0 => {
            Reply::accept().then_callback(Duration::from_millis(50), upstream_timeout.clone())
        }
        "/flaky" => Reply::accept()
            .then_callback(Duration::from_millis(50), json!({ "status": "completed" })),
        _ => Reply::accept().then_callback(Duration::from_millis(50), bad_input.clone()),
    })
    .await;
    let node = PacerProcess::start(db.url(), "node-a").await;
    let api = node.api();
    let retry = |extra: serde_json::Value| {
        let mut retry = json!({ "max_attempts": 3, "initial_backoff": "100ms", "jitter": 0.0 });
        retry
            .as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        retry
    };
    for (job, path, rules) in [
        ("not-found-yet", "/missing", json!({ "on_status": [404] })),
        ("busy-is-final", "/busy", json!({ "on_status": [404] })),
        (
            "no-throttling",
            "/throttled",
            json!({ "never_on_status": [429] }),
        ),
        (
            "flaky",
            "/flaky",
            json!({ "on_errors": ["UpstreamTimeout"] }),
        ),
        (
            "broken",
            "/broken",
            json!({ "on_errors": ["UpstreamTimeout"] }),
        ),
    ] {
        api.put_job(
            job,
            &json!({ "target": { "url": downstream.url(path) }, "dispatch_timeout": "2s",
                     "repoll_interval": "30s", "retry": retry(rules) }),
        )
        .await;
    }
    let missing = api.create_task_id("not-found-yet", &json!({})).await;
    let busy = api.create_task_id("busy-is-final", &json!({})).await;
    let throttled = api.create_task_id("no-throttling", &json!({})).await;
    let flaky = api.create_task_id("flaky", &json!({})).await;
    let broken = api.create_task_id("broken", &json!({})).await;

    // `on_status: [404]` retries a 404 …
    api.wait_for_state(&missing, "completed", SETTLE).await;
    let task = api.wait_for_attempts(&missing, 3, SETTLE).await;
    assert_eq!(
        outcomes(&task),
        ["transient_error", "transient_error", "accepted"]
    );
    // … and replaces the default set: a 503 is now final.
    let task = api.wait_for_state(&busy, "failed", SETTLE).await;
    assert_eq!(task["failure_reason"], "rejected");
    assert_eq!(outcomes(&task), ["permanent_error"]);
    assert_eq!(downstream.requests_for(&busy).len(), 1);
    // `never_on_status` carves a status out of the default set.
    let task = api.wait_for_state(&throttled, "failed", SETTLE).await;
    assert_eq!(task["failure_reason"], "rejected");
    assert_eq!(downstream.requests_for(&throttled).len(), 1);

    // A named code reported in a failed callback dispatches the same task again.
    let task = api.wait_for_state(&flaky, "completed", SETTLE).await;
    let requests = downstream.requests_for(&flaky);
    assert_eq!(requests.len(), 2, "{task:#}");
    for (n, request) in requests.iter().enumerate() {
        assert_eq!(request.idempotency_key(), flaky);
        assert_eq!(request.attempt(), i64::try_from(n + 1).expect("small"));
    }
    let first = &attempts(&task)[0];
    assert_eq!(first["error_code"], "UpstreamTimeout", "{task:#}");
    assert_eq!(
        task["last_error"], "UpstreamTimeout: the registry did not answer",
        "{task:#}"
    );
    // Any other code is final, and the failure names it.
    let task = api.wait_for_state(&broken, "failed", SETTLE).await;
    assert_eq!(task["failure_reason"], "reported");
    assert_eq!(task["last_error"], "BadInput: the registry did not answer");
    assert_eq!(downstream.requests_for(&broken).len(), 1);

    // A status 2xx cannot be named; a mistake is named with its index.
    let refused = api
        .request(
            Method::PUT,
            "/api/v1/jobs/bad-rules",
            Some(&json!({ "target": { "url": downstream.url("/x") },
                          "retry": { "on_status": [404, 204] } })),
            &[],
        )
        .await;
    let problem = refused.expect_problem(422);
    assert_eq!(
        problem["errors"][0]["field"], "retry.on_status[1]",
        "{problem:#}"
    );
}
