//! End-to-end: jobs made of steps on a real node — a timetable extraction whose parallel
//! children are both dispatched before either finishes and whose later steps receive the earlier
//! ones' results as `inputs`, and an item sync fanning out over 200 items that never has more
//! than `max_parallel` of them at the downstream at once.

use std::time::Duration;

use pacer_tests::{FakeDownstream, PacerProcess, Reply, TestDb, pacer_binary, token};
use reqwest::Method;
use serde_json::{Value, json};

/// Generous: these waits cover several dispatches on a loaded machine.
const SETTLE: Duration = Duration::from_secs(60);

/// A synchronous completion: the answer's body is the callback.
fn done(result: Value) -> Value {
    json!({ "status": "completed", "result": result })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timetable_workflow_runs_its_steps_in_order_with_their_inputs() {
    let db = TestDb::create().await;
    // Each upload child is held a second at the downstream before it completes, so both are
    // dispatched before either finishes; `download` completes by callback, the rest by answer.
    let downstream = FakeDownstream::start(|request| match request.path.as_str() {
        "/download" => Reply::accept().then_callback(
            Duration::from_millis(100),
            json!({ "status": "completed", "result": { "files": 3 } }),
        ),
        "/verify" => Reply::status(200).json(done(json!({ "ok": true }))),
        "/timetable" | "/faculty" => Reply::status(200).after(Duration::from_secs(1)).json(done(
            json!({ "uploaded": request.path.trim_start_matches('/') }),
        )),
        _ => Reply::status(200).json(done(json!({ "finished": true }))),
    })
    .await;
    let node = PacerProcess::start(db.url(), "node-a").await;
    let api = node.api();
    api.put_job(
        "timetable-extraction",
        &json!({
            "steps": [
                { "name": "download", "target": { "url": downstream.url("/download") } },
                { "name": "verify", "target": { "url": downstream.url("/verify") } },
                { "name": "upload", "parallel": [
                    { "name": "timetable", "target": { "url": downstream.url("/timetable") } },
                    { "name": "faculty", "target": { "url": downstream.url("/faculty") },
                      "payload": { "full": true } } ] },
                { "name": "post-upload", "target": { "url": downstream.url("/done") } } ],
            "payload": { "term": "2026-w" },
            "overlap": "skip",
            "timeout": "5m",
        }),
    )
    .await;
    // A bad definition is refused whole, each bad field named.
    let refused = api
        .request(
            Method::PUT,
            "/api/v1/jobs/broken-workflow",
            Some(&json!({ "steps": [
                { "name": "a", "target": { "url": "http://x/a" } },
                { "name": "a", "parallel": [] },
                { "name": "c", "for_each": "later", "max_parallel": 0, "target": { "url": "http://x/c" } } ] })),
            &[],
        )
        .await;
    let problem = refused.expect_problem(422);
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "steps[1].name",
            "steps[1].parallel",
            "steps[2].for_each",
            "steps[2].max_parallel"
        ]
    );

    let run = api.create_task_id("timetable-extraction", &json!({})).await;
    let task = api.wait_for_state(&run, "completed", SETTLE).await;

    let requests = downstream.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths.len(), 5, "each child dispatched once: {paths:?}");
    assert_eq!(&paths[..2], ["/download", "/verify"]);
    assert_eq!(paths[4], "/done");
    let uploads: Vec<_> = requests
        .iter()
        .filter(|r| r.path == "/timetable" || r.path == "/faculty")
        .collect();
    assert_eq!(uploads.len(), 2);
    let apart = if uploads[0].at > uploads[1].at {
        uploads[0].at - uploads[1].at
    } else {
        uploads[1].at - uploads[0].at
    };
    assert!(
        apart < Duration::from_secs(1),
        "both parallel children were dispatched before either answered ({apart:?} apart)"
    );
    let faculty = uploads
        .iter()
        .find(|r| r.path == "/faculty")
        .expect("faculty");
    assert_eq!(faculty.body["run"], run.as_str());
    assert_eq!(faculty.body["step"], "upload");
    assert_eq!(faculty.body["child"], "faculty");
    assert_eq!(
        faculty.body["payload"],
        json!({ "term": "2026-w", "full": true })
    );
    assert_eq!(
        faculty.body["inputs"],
        json!({ "download": { "files": 3 }, "verify": { "ok": true } })
    );
    let last = &requests[4].body;
    assert_eq!(
        last["inputs"]["upload"],
        json!({ "timetable": { "uploaded": "timetable" }, "faculty": { "uploaded": "faculty" } })
    );
    assert!(last.get("item").is_none());

    // The run shows its steps, its progress and a summary of how they ended.
    let steps = task["steps"].as_array().expect("a run shows its steps");
    let names: Vec<&str> = steps.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["download", "verify", "upload", "post-upload"]);
    assert!(
        steps.iter().all(|s| s["state"] == "completed"),
        "{steps:#?}"
    );
    assert_eq!(steps[2]["kind"], "parallel");
    assert_eq!(steps[2]["children"].as_array().map(Vec::len), Some(2));
    assert_eq!(task["progress"], json!({ "done": 5, "total": 5 }));
    assert_eq!(task["result"]["result"], json!({ "finished": true }));

    // `pacer tasks tree` draws the same run.
    let tree = std::process::Command::new(pacer_binary())
        .args(["tasks", "tree", &run])
        .env("PACER_URL", node.url())
        .env("PACER_TOKEN", token(&["operator"]))
        .output()
        .expect("pacer runs");
    let text = String::from_utf8_lossy(&tree.stdout);
    assert!(tree.status.success(), "{tree:?}");
    assert!(text.contains("(5 done of 5)"), "{text}");
    assert!(
        text.contains("  upload [parallel] completed (completed 2)"),
        "{text}"
    );
    assert!(text.contains("    faculty completed "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_for_each_over_200_items_keeps_at_most_max_parallel_at_the_downstream() {
    let db = TestDb::create().await;
    const HOLD: Duration = Duration::from_millis(150);
    let downstream = FakeDownstream::start(|request| match request.path.as_str() {
        "/list" => {
            let items: Vec<Value> = (0..200)
                .map(|i| json!({ "key": format!("p-{i}"), "id": i }))
                .collect();
            Reply::status(200).json(done(json!({ "items": items })))
        }
        _ => {
            // Item 13 fails; under `continue` the others go on.
            let status = if request.body["item"]["id"] == 13 {
                "failed"
            } else {
                "completed"
            };
            Reply::status(200).after(HOLD).json(json!({
                "status": status, "result": { "id": request.body["item"]["id"] } }))
        }
    })
    .await;
    let node = PacerProcess::start(db.url(), "node-a").await;
    let api = node.api();
    api.put_job(
        "item-sync",
        &json!({
            "steps": [
                { "name": "list", "target": { "url": downstream.url("/list") } },
                { "name": "ingest", "for_each": "list", "max_parallel": 20,
                  "on_item_failure": "continue", "target": { "url": downstream.url("/ingest") } } ],
            "timeout": "10m",
        }),
    )
    .await;
    let run = api.create_task_id("item-sync", &json!({})).await;
    let task = api
        .wait_for_state(&run, "completed_with_errors", SETTLE)
        .await;

    let items: Vec<_> = downstream
        .requests()
        .into_iter()
        .filter(|r| r.path == "/ingest")
        .collect();
    assert_eq!(items.len(), 200, "every item dispatched exactly once");
    let mut keys: Vec<String> = items
        .iter()
        .filter_map(|r| r.body["child"].as_str().map(str::to_owned))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 200);
    // An item is at the downstream from its arrival until it is answered `HOLD` later; Pacer
    // releases the next item only after recording that answer, so these intervals overlap at
    // most `max_parallel` deep.
    let mut most = 0;
    for r in &items {
        let open = items
            .iter()
            .filter(|o| o.at <= r.at && r.at < o.at + HOLD)
            .count();
        most = most.max(open);
    }
    assert!(
        most <= 20,
        "{most} items were open at the downstream at once"
    );
    assert!(
        most >= 10,
        "the items ran in parallel ({most} at most at once)"
    );

    let steps = task["steps"].as_array().expect("steps");
    assert_eq!(steps[1]["kind"], "for_each");
    assert_eq!(steps[1]["counts"]["completed"], 199);
    assert_eq!(steps[1]["counts"]["failed"], 1);
    let failed = api
        .request(
            Method::GET,
            &format!("/api/v1/tasks/{run}/children?step=ingest&state=failed"),
            None,
            &[],
        )
        .await;
    let page = failed.expect_status(200);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["items"][0]["name"], "p-13");
    // A child is retried with its run, never on its own.
    let child = page["items"][0]["id"].as_str().expect("the child's id");
    let refused = api
        .request(
            Method::POST,
            &format!("/api/v1/tasks/{child}/retry"),
            None,
            &[],
        )
        .await;
    refused.expect_problem(422);

    // Retrying the errors reruns the failed item alone.
    let retried = api
        .request(
            Method::POST,
            &format!("/api/v1/tasks/{run}/retry"),
            Some(&json!({ "only": "failed" })),
            &[],
        )
        .await;
    let retry = retried.expect_status(202)["id"]
        .as_str()
        .expect("the retry's id")
        .to_owned();
    api.wait_for_state(&retry, "completed_with_errors", SETTLE)
        .await;
    let rerun: Vec<_> = downstream
        .requests()
        .into_iter()
        .filter(|r| r.body["run"] == retry.as_str())
        .collect();
    assert_eq!(rerun.len(), 1, "only the failed item ran again");
    assert_eq!(rerun[0].body["child"], "p-13");
}
