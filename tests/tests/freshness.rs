//! End-to-end: data freshness. A job with `freshness` whose last completed run started longer ago
//! than that raises one `stale` alert, resolved by the next completed run; the job shows until
//! when its data is fresh, and `/metrics` the start of its last completed run.

use std::time::Duration;

use pacer_tests::{
    Api, FakeDownstream, PacerProcess, Reply, TestDb, http_client, timestamp, wait_until,
};
use reqwest::Method;
use serde_json::{Value, json};

/// Generous: these waits cover a node start and a few evaluation passes on a loaded machine.
const SETTLE: Duration = Duration::from_secs(30);

async fn stale_alerts(api: &Api, state: &str) -> Vec<Value> {
    let response = api
        .request(
            Method::GET,
            &format!("/api/v1/alerts?kind=stale&job=timetable&state={state}"),
            None,
            &[],
        )
        .await;
    response.expect_status(200)["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn wait_for_stale(api: &Api, state: &str, what: &str) -> Vec<Value> {
    wait_until(what, SETTLE, || async {
        let found = stale_alerts(api, state).await;
        (!found.is_empty()).then_some(found)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_data_gets_old_raises_one_stale_alert_until_a_run_completes() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|_| {
        Reply::accept().then_callback(Duration::from_millis(50), json!({ "status": "completed" }))
    })
    .await;
    let node = PacerProcess::start(db.url(), "node-a").await;
    let api = node.api();
    let job = api
        .put_job(
            "timetable",
            &json!({ "target": { "url": downstream.url("/timetable") }, "freshness": "3s" }),
        )
        .await;
    assert_eq!(job["freshness"], "3s");
    assert!(job["fresh_until"].is_string(), "{job:#}");

    // Before any completed run, the data is stale once the job has watched it that long.
    let opened = wait_for_stale(&api, "open", "a stale alert to open").await;
    assert_eq!(opened.len(), 1, "{opened:#?}");
    let first = &opened[0];
    assert_eq!(first["subject"]["job"], "timetable");
    assert_eq!(first["severity"], "warning");
    assert!(
        first["summary"]
            .as_str()
            .is_some_and(|s| s.contains("has completed no run")),
        "{first:#}"
    );

    // A completed run resolves it, and moves `fresh_until` past its start.
    let id = api.create_task_id("timetable", &json!({})).await;
    let task = api.wait_for_state(&id, "completed", SETTLE).await;
    let resolved = wait_for_stale(&api, "resolved", "the stale alert to resolve").await;
    assert_eq!(resolved.len(), 1, "{resolved:#?}");
    assert_eq!(resolved[0]["id"], first["id"]);
    assert_eq!(
        resolved[0]["count"], 1,
        "one alert, counted once: {resolved:#?}"
    );
    let job = api
        .request(Method::GET, "/api/v1/jobs/timetable", None, &[])
        .await
        .expect_status(200)
        .clone();
    assert!(
        timestamp(&job["fresh_until"]) > timestamp(&task["started_at"]),
        "{job:#} {task:#}"
    );

    // The leader reports the start of the last completed run for Prometheus.
    wait_until("the last success gauge", SETTLE, || async {
        let text = http_client()
            .get(format!("{}/metrics", node.url()))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .any(|l| {
                l.starts_with("pacer_job_last_success_timestamp_seconds{pacer_job=\"timetable\"}")
            })
            .then_some(())
    })
    .await;

    // Without another run, the data goes stale again: a new alert opens.
    let again = wait_for_stale(&api, "open", "a second stale alert to open").await;
    assert_eq!(again.len(), 1);
    assert_ne!(again[0]["id"], first["id"]);
    assert!(
        again[0]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("last completed a run started at")),
        "{again:#?}"
    );
}
