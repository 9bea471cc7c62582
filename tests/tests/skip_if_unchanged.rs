//! End-to-end: skip if unchanged on a real node. A task whose downstream reports the fingerprint
//! of the job's last completed run ends `completed` with outcome `unchanged`, visible in the task,
//! the task listing, the job summary and the metrics; a workflow run ends at its skip step, and a
//! run whose later step fails does not move the fingerprint; an operator's reset forces the next
//! run through.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pacer_tests::{
    FakeDownstream, PacerProcess, Reply, TestDb, http_client, pacer_binary, token, wait_until,
};
use reqwest::Method;
use serde_json::{Value, json};

/// Generous: these waits cover several dispatches on a loaded machine.
const SETTLE: Duration = Duration::from_secs(60);

/// What the downstream finds its input to be, every time: the same document.
const FINGERPRINT: &str = "sha256:9f86d081884c7d65";

/// A synchronous completion carrying the input's fingerprint.
fn done_with_fingerprint() -> Value {
    json!({ "status": "completed", "fingerprint": FINGERPRINT, "result": { "rows": 3 } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_input_ends_the_task_unchanged_until_an_operator_resets_the_fingerprint() {
    let db = TestDb::create().await;
    let downstream =
        FakeDownstream::start(|_| Reply::status(200).json(done_with_fingerprint())).await;
    let node = PacerProcess::start(db.url(), "node-a").await;
    let api = node.api();
    api.put_job(
        "timetable",
        &json!({ "target": { "url": downstream.url("/download") }, "skip_if_unchanged": true }),
    )
    .await;

    // The first task has nothing to compare with: it does its work.
    let first = api.create_task_id("timetable", &json!({})).await;
    let task = api.wait_for_state(&first, "completed", SETTLE).await;
    assert_eq!(task["outcome"], Value::Null);
    assert_eq!(task["fingerprint"], FINGERPRINT);
    assert_eq!(
        downstream.requests_for(&first)[0].body["last_fingerprint"],
        Value::Null,
        "a skip_if_unchanged job's dispatch carries last_fingerprint, null at first"
    );

    // The same input again: completed, unchanged.
    let second = api.create_task_id("timetable", &json!({})).await;
    let task = api.wait_for_state(&second, "completed", SETTLE).await;
    assert_eq!(task["outcome"], "unchanged");
    assert_eq!(
        downstream.requests_for(&second)[0].body["last_fingerprint"],
        FINGERPRINT
    );
    let history: Vec<&Value> = task["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "task.state" && e["data"]["state"] == "completed")
        .collect();
    assert_eq!(history.len(), 1, "{:#}", task["history"]);
    assert_eq!(history[0]["data"]["outcome"], "unchanged");

    let listed = api
        .request(Method::GET, "/api/v1/tasks?outcome=unchanged", None, &[])
        .await;
    let ids: Vec<&str> = listed.expect_status(200)["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(ids, [second.as_str()]);
    let refused = api
        .request(Method::GET, "/api/v1/tasks?outcome=skipped", None, &[])
        .await;
    assert_eq!(refused.expect_problem(422)["errors"][0]["field"], "outcome");

    let summary = api
        .request(Method::GET, "/api/v1/jobs/timetable/summary", None, &[])
        .await;
    let unchanged = &summary.expect_status(200)["unchanged"];
    assert_eq!(unchanged["recent"], 1);
    assert!(unchanged["last_at"].is_string(), "{unchanged:#}");
    assert_eq!(unchanged["fingerprint"]["fingerprint"], FINGERPRINT);
    assert_eq!(unchanged["fingerprint"]["task"], first.as_str());

    // Counted just after the state commits: wait for the scrape to show it.
    wait_until("the unchanged task to be counted", SETTLE, || async {
        let metrics = http_client()
            .get(format!("{}/metrics", node.url()))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        metrics
            .contains(r#"pacer_tasks_unchanged_total{pacer_job="timetable"} 1"#)
            .then_some(())
    })
    .await;

    // A fingerprint that is too long is refused by name, and changes nothing.
    let too_long = api
        .callback(
            &first,
            &json!({ "status": "completed", "fingerprint": "x".repeat(257) }),
        )
        .await;
    assert_eq!(
        too_long.expect_problem(422)["errors"][0]["field"],
        "fingerprint"
    );

    // An operator's reset forces the next task through, and is audited.
    let reset = api
        .request(
            Method::POST,
            "/api/v1/jobs/timetable/fingerprint/reset",
            None,
            &[],
        )
        .await;
    assert_eq!(
        reset.expect_status(200)["previous"]["fingerprint"],
        FINGERPRINT
    );
    let audit = api
        .request(
            Method::GET,
            "/api/v1/audit?action=reset_fingerprint",
            None,
            &[],
        )
        .await;
    let entries = audit.expect_status(200)["items"].clone();
    assert_eq!(entries[0]["target"], "job:timetable", "{entries:#}");
    assert_eq!(entries[0]["before"]["fingerprint"], FINGERPRINT);
    let third = api.create_task_id("timetable", &json!({})).await;
    let task = api.wait_for_state(&third, "completed", SETTLE).await;
    assert_eq!(task["outcome"], Value::Null, "a reset job runs in full");
    assert_eq!(
        downstream.requests_for(&third)[0].body["last_fingerprint"],
        Value::Null
    );

    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_ends_unchanged_at_its_skip_step_and_a_failed_run_keeps_the_fingerprint() {
    let db = TestDb::create().await;
    let publish_fails = Arc::new(AtomicBool::new(true));
    let fails = publish_fails.clone();
    let downstream = FakeDownstream::start(move |request| match request.path.as_str() {
        "/download" => Reply::status(200).json(done_with_fingerprint()),
        _ if fails.load(Ordering::SeqCst) => Reply::status(200)
            .json(json!({ "status": "failed", "message": "the publisher is down" })),
        _ => Reply::status(200).json(json!({ "status": "completed" })),
    })
    .await;
    let node = PacerProcess::start(db.url(), "node-a").await;
    let api = node.api();
    api.put_job(
        "timetable-extraction",
        &json!({
            "steps": [
                { "name": "download", "skip_if_unchanged": true,
                  "target": { "url": downstream.url("/download") } },
                { "name": "publish", "target": { "url": downstream.url("/publish") } } ],
            "timeout": "5m",
        }),
    )
    .await;
    let download_bodies = || -> Vec<Value> {
        downstream
            .requests()
            .into_iter()
            .filter(|r| r.path == "/download")
            .map(|r| r.body)
            .collect()
    };
    let publishes = || {
        downstream
            .requests()
            .iter()
            .filter(|r| r.path == "/publish")
            .count()
    };

    // The publish step fails: the run fails, and the download's fingerprint stays with it.
    let failed = api.create_task_id("timetable-extraction", &json!({})).await;
    api.wait_for_state(&failed, "failed", SETTLE).await;
    let summary = api
        .request(
            Method::GET,
            "/api/v1/jobs/timetable-extraction/summary",
            None,
            &[],
        )
        .await;
    assert_eq!(
        summary.expect_status(200)["unchanged"]["fingerprint"],
        Value::Null,
        "a run whose later step failed does not move the fingerprint"
    );

    // The next run compares with nothing, so it runs in full; it completes and its fingerprint
    // becomes the job's.
    publish_fails.store(false, Ordering::SeqCst);
    let completed = api.create_task_id("timetable-extraction", &json!({})).await;
    let run = api.wait_for_state(&completed, "completed", SETTLE).await;
    assert_eq!(run["outcome"], Value::Null);
    assert_eq!(run["fingerprint"], FINGERPRINT);
    assert_eq!(publishes(), 2);
    let bodies = download_bodies();
    assert_eq!(bodies.len(), 2);
    assert!(
        bodies.iter().all(|b| b["last_fingerprint"] == Value::Null),
        "{bodies:#?}"
    );

    // The same input again: the run ends unchanged at download, and publish never runs.
    let unchanged = api.create_task_id("timetable-extraction", &json!({})).await;
    let run = api.wait_for_state(&unchanged, "completed", SETTLE).await;
    assert_eq!(run["outcome"], "unchanged");
    assert_eq!(download_bodies()[2]["last_fingerprint"], FINGERPRINT);
    assert_eq!(publishes(), 2, "no step after an unchanged one runs");
    let steps = run["steps"].as_array().cloned().unwrap_or_default();
    assert_eq!(steps.len(), 2, "{:#}", run["steps"]);

    // The CLI's reset forces the next run through all its steps.
    let mut cli = Command::new(pacer_binary());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PACER_") {
            cli.env_remove(key);
        }
    }
    let output = cli
        .args([
            "jobs",
            "reset-fingerprint",
            "timetable-extraction",
            "--output",
            "json",
        ])
        .env("PACER_URL", node.url())
        .env("PACER_TOKEN", token(&["operator"]))
        .output()
        .expect("pacer runs");
    assert!(output.status.success(), "{output:#?}");
    let reset: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    assert_eq!(reset["previous"]["fingerprint"], FINGERPRINT);
    let forced = api.create_task_id("timetable-extraction", &json!({})).await;
    let run = api.wait_for_state(&forced, "completed", SETTLE).await;
    assert_eq!(run["outcome"], Value::Null);
    assert_eq!(download_bodies()[3]["last_fingerprint"], Value::Null);
    assert_eq!(publishes(), 3, "a reset run runs every step");

    drop(node);
}
