//! End-to-end: workload metrics for autoscaling. The leader reports every job's pending and
//! processing tasks (`pacer_job_tasks`) and how long its longest-waiting due task has waited
//! (`pacer_job_oldest_pending_seconds`), and a job's summary says when that task fell due.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use pacer_tests::{
    FakeDownstream, PacerProcess, Reply, TestDb, http_client, timestamp, wait_until,
};
use reqwest::Method;
use serde_json::json;

/// Generous: these waits cover a node start and a few gauge rounds (every 10 s) on a loaded
/// machine.
const SETTLE: Duration = Duration::from_secs(45);

/// The samples of `/metrics` whose name is `name`, by their labels as written.
async fn samples(node: &PacerProcess, name: &str) -> Option<HashMap<String, f64>> {
    let text = http_client()
        .get(format!("{}/metrics", node.url()))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        text.lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(name)?.strip_prefix('{')?;
                let (labels, value) = rest.split_once("} ")?;
                Some((labels.to_owned(), value.trim().parse().ok()?))
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_counts_and_the_oldest_wait_are_reported_per_job() {
    let db = TestDb::create().await;
    // Accepts each dispatch and never calls back: a dispatched task stays processing.
    let downstream = FakeDownstream::start(|_| Reply::accept()).await;
    let node = PacerProcess::start(db.url(), "node-a").await;
    let api = node.api();
    let started = Utc::now();

    // One task at a time: the first is processing, the other three wait, due.
    api.put_job(
        "backlog",
        &json!({ "target": { "url": downstream.url("/backlog") }, "max_concurrency": 1 }),
    )
    .await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(api.create_task_id("backlog", &json!({})).await);
    }
    // A task not due for an hour counts as pending but has not waited yet.
    api.put_job(
        "later",
        &json!({ "target": { "url": downstream.url("/later") } }),
    )
    .await;
    let not_before = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    api.create_task_id("later", &json!({ "not_before": not_before }))
        .await;
    api.put_job(
        "idle",
        &json!({ "target": { "url": downstream.url("/idle") } }),
    )
    .await;

    let summary = wait_until("one backlog task processing", SETTLE, || async {
        let summary = api
            .request(Method::GET, "/api/v1/jobs/backlog/summary", None, &[])
            .await
            .expect_status(200)
            .clone();
        (summary["open"]["processing"] == 1).then_some(summary)
    })
    .await;
    assert_eq!(summary["open"]["pending"], 3, "{summary:#}");
    let oldest = timestamp(&summary["open"]["oldest_pending_at"]);
    assert!(
        oldest >= started - chrono::Duration::seconds(1) && oldest <= Utc::now(),
        "{summary:#}"
    );
    let later = api
        .request(Method::GET, "/api/v1/jobs/later/summary", None, &[])
        .await
        .expect_status(200)
        .clone();
    assert_eq!(later["open"]["pending"], 1, "{later:#}");
    assert!(later["open"]["oldest_pending_at"].is_null(), "{later:#}");

    // The leader's gauges agree, typed and described.
    let (tasks_gauge, oldest_gauge) = wait_until("the workload gauges", SETTLE, || async {
        let tasks = samples(&node, "pacer_job_tasks").await?;
        let oldest = samples(&node, "pacer_job_oldest_pending_seconds").await?;
        let pending = tasks.get(r#"pacer_job="backlog",state="pending""#)?;
        let processing = tasks.get(r#"pacer_job="backlog",state="processing""#)?;
        (*pending == 3.0
            && *processing == 1.0
            && tasks.contains_key(r#"pacer_job="idle",state="pending""#))
        .then_some((tasks, oldest))
    })
    .await;
    let text = http_client()
        .get(format!("{}/metrics", node.url()))
        .send()
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("text");
    for name in ["pacer_job_tasks", "pacer_job_oldest_pending_seconds"] {
        assert!(text.contains(&format!("# TYPE {name} gauge\n")), "{text}");
        assert!(text.contains(&format!("# HELP {name} ")), "{text}");
    }
    assert_eq!(tasks_gauge[r#"pacer_job="later",state="pending""#], 1.0);
    assert_eq!(tasks_gauge[r#"pacer_job="idle",state="pending""#], 0.0);
    assert_eq!(tasks_gauge[r#"pacer_job="idle",state="processing""#], 0.0);
    let waited = oldest_gauge[r#"pacer_job="backlog""#];
    let bound = (Utc::now() - started).as_seconds_f64() + 1.0;
    assert!(
        waited > 0.0 && waited <= bound,
        "{waited} not in (0, {bound}]"
    );
    assert_eq!(oldest_gauge[r#"pacer_job="later""#], 0.0);
    assert_eq!(oldest_gauge[r#"pacer_job="idle""#], 0.0);

    // Once the backlog is gone, its gauges fall to zero.
    for task in &tasks {
        api.cancel(task).await.expect_status(200);
    }
    wait_until("the backlog gauges to fall to zero", SETTLE, || async {
        let tasks = samples(&node, "pacer_job_tasks").await?;
        let oldest = samples(&node, "pacer_job_oldest_pending_seconds").await?;
        (tasks.get(r#"pacer_job="backlog",state="pending""#) == Some(&0.0)
            && tasks.get(r#"pacer_job="backlog",state="processing""#) == Some(&0.0)
            && oldest.get(r#"pacer_job="backlog""#) == Some(&0.0))
        .then_some(())
    })
    .await;
}
