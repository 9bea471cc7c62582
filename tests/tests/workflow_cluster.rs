//! End-to-end: workflows on a cluster of three real nodes. A `for_each` over 1,000 items keeps at
//! most `max_parallel` at the downstream while a node is killed, every item ends exactly once and
//! the next step starts once; retrying the errors of that run reruns exactly its 7 failed items
//! and the step after them; many runs whose last two children call back at once on different
//! nodes each start their next step exactly once; `on_failure: stop` cancels the siblings and
//! tells the downstream, `continue` goes on; a step's `deadline` raises an overdue alert naming
//! the run and the step.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pacer_tests::{
    Api, ConcurrencyProbe, FakeDownstream, NodeSettings, PacerProcess, Reply, TestDb, wait_until,
};
use reqwest::Method;
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(120);

async fn cluster(db: &TestDb, n: usize) -> Vec<PacerProcess> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let settings = NodeSettings::new(&format!("node-{i}"))
            .env("PACER_AUTH__RATE_LIMIT_PER_SECOND", "100000")
            .env("PACER_AUTH__RATE_LIMIT_BURST", "100000");
        nodes.push(PacerProcess::start_with(db.url(), settings).await);
    }
    nodes
}

async fn count(db: &TestDb, sql: &'static str, run: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(run)
        .fetch_one(db.pool())
        .await
        .expect("count")
}

/// Items whose id is a multiple of 143 fail in the first run: 0, 143, …, 858 — seven of 1,000.
fn fails(id: i64) -> bool {
    id % 143 == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_for_each_over_1000_items_survives_a_killed_node_and_its_errors_retry_alone() {
    let db = TestDb::create().await;
    // The first run seen at the list step is the one whose seven items fail; its retry's pass.
    let first_run: Arc<Mutex<Option<String>>> = Arc::default();
    let probe = ConcurrencyProbe::start_answering(Duration::from_millis(30), {
        let first_run = first_run.clone();
        move |body| {
            let run = body["run"].as_str().unwrap_or_default().to_owned();
            let mut first = first_run.lock().unwrap_or_else(PoisonError::into_inner);
            match body["step"].as_str() {
                Some("list") => {
                    first.get_or_insert(run);
                    let items: Vec<Value> = (0..1000)
                        .map(|i| json!({ "key": format!("p-{i}"), "id": i }))
                        .collect();
                    json!({ "status": "completed", "result": { "items": items } })
                }
                Some("ingest") => {
                    let id = body["item"]["id"].as_i64().unwrap_or(-1);
                    let status = if fails(id) && first.as_deref() == Some(run.as_str()) {
                        "failed"
                    } else {
                        "completed"
                    };
                    json!({ "status": status, "result": { "id": id } })
                }
                _ => json!({ "status": "completed", "result": { "reported": true } }),
            }
        }
    })
    .await;
    let mut nodes = cluster(&db, 3).await;
    let api = nodes[0].api();
    api.put_job(
        "item-sync",
        &json!({
            "steps": [
                { "name": "list", "target": { "url": probe.url("/list") } },
                { "name": "ingest", "for_each": "list", "max_parallel": 50,
                  "on_item_failure": "continue", "target": { "url": probe.url("/ingest") } },
                { "name": "report", "target": { "url": probe.url("/report") } } ],
            // A dispatch whose callback went to the killed node is sent again this soon.
            "repoll_interval": "2s",
            "timeout": "30m",
        }),
    )
    .await;
    let run = api.create_task_id("item-sync", &json!({})).await;

    // A third of the way through the fan-out, kill -9 a node that is dispatching items.
    wait_until("a third of the items done", SETTLE, || async {
        let done = count(
            &db,
            "select count(*) from tasks where run_id = $1::uuid and step = 1
               and state in ('completed', 'failed')",
            &run,
        )
        .await;
        (done >= 333).then_some(())
    })
    .await;
    let killed = nodes[2].node_id().to_owned();
    let _ = nodes[2].kill();
    let busy = count(
        &db,
        "select count(*) from task_attempts a join tasks t on t.id = a.task_id
         where t.run_id = $1::uuid and a.node = 'node-2'",
        &run,
    )
    .await;
    assert!(busy > 0, "the killed node {killed} had dispatched items");

    let task = api
        .wait_for_state(&run, "completed_with_errors", Duration::from_secs(300))
        .await;
    assert!(
        probe.max_open() <= 50,
        "at most max_parallel items at the downstream at once, saw {}",
        probe.max_open()
    );
    assert!(
        probe.max_open() >= 25,
        "the items ran in parallel ({} at most at once)",
        probe.max_open()
    );
    // Every item has one row, ended once: one terminal state event each.
    let items = count(
        &db,
        "select count(distinct child) from tasks where run_id = $1::uuid and step = 1",
        &run,
    )
    .await;
    assert_eq!(items, 1000);
    let rows = count(
        &db,
        "select count(*) from tasks where run_id = $1::uuid and step = 1",
        &run,
    )
    .await;
    assert_eq!(rows, 1000, "no item created twice");
    let endings: Vec<(String, i64)> = sqlx::query_as(
        "select t.child, count(e.id) from tasks t
         left join events e on e.task_id = t.id and e.kind = 'task.state'
              and e.data ->> 'state' in ('completed', 'completed_with_errors', 'failed', 'cancelled')
         where t.run_id = $1::uuid and t.step = 1
         group by t.child having count(e.id) <> 1",
    )
    .bind(&run)
    .fetch_all(db.pool())
    .await
    .expect("endings");
    assert!(
        endings.is_empty(),
        "items not ended exactly once: {endings:?}"
    );
    let steps = task["steps"].as_array().expect("steps");
    assert_eq!(steps[1]["counts"]["completed"], 993, "{steps:#?}");
    assert_eq!(steps[1]["counts"]["failed"], 7, "{steps:#?}");
    // The step after the fan-out started exactly once.
    let reports = count(
        &db,
        "select count(*) from tasks where run_id = $1::uuid and step = 2",
        &run,
    )
    .await;
    assert_eq!(reports, 1);
    assert_eq!(steps[2]["state"], "completed");

    // Retry errors: what will rerun is said first, then exactly the seven items and the report.
    let preview = api
        .request(
            Method::POST,
            &format!("/api/v1/tasks/{run}/retry?dry_run=true"),
            Some(&json!({ "only": "failed" })),
            &[],
        )
        .await;
    let preview = preview.expect_status(200).clone();
    let retry = api
        .request(
            Method::POST,
            &format!("/api/v1/tasks/{run}/retry"),
            Some(&json!({ "only": "failed" })),
            &[],
        )
        .await;
    let retry = retry.expect_status(202)["id"]
        .as_str()
        .expect("the retry's id")
        .to_owned();
    api.wait_for_state(&retry, "completed", SETTLE).await;
    let dispatched: HashSet<(String, String)> = sqlx::query_as(
        "select distinct o.name, t.child from tasks t
         join task_runs r on r.task_id = t.run_id
         cross join lateral (select r.steps -> t.step ->> 'name' as name) o
         where t.run_id = $1::uuid and t.step is not null and t.attempt > 0
           and t.message is distinct from 'reused from the retried run'",
    )
    .bind(&retry)
    .fetch_all(db.pool())
    .await
    .expect("rerun children")
    .into_iter()
    .collect();
    let mut expected: HashSet<(String, String)> = (0..1000)
        .filter(|i| fails(*i))
        .map(|i| ("ingest".to_owned(), format!("p-{i}")))
        .collect();
    expected.insert(("report".to_owned(), "report".to_owned()));
    assert_eq!(
        dispatched, expected,
        "only the failed items and the report reran"
    );
    assert_eq!(dispatched.len(), 8);
    assert!(
        preview.to_string().contains("p-143"),
        "the dry run names the items it would rerun: {preview}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_whose_last_two_children_call_back_at_once_start_their_next_step_once() {
    let db = TestDb::create().await;
    // Both children of a run are dispatched together and call back after the same pause: `a`
    // to node 1 and `b` to node 2, whichever node dispatched them, so the two endings of each
    // run are applied at the same moment by two nodes.
    let nodes = cluster(&db, 3).await;
    let (one, two) = (nodes[1].url().to_owned(), nodes[2].url().to_owned());
    let probe = ConcurrencyProbe::start_routing(
        Duration::from_millis(200),
        |body| json!({ "status": "completed", "result": { "child": body["child"] } }),
        move |body| match body["child"].as_str() {
            Some("a") => Some(one.clone()),
            Some("b") => Some(two.clone()),
            _ => None,
        },
    )
    .await;
    let api = nodes[0].api();
    api.put_job(
        "pairs",
        &json!({
            "steps": [
                { "name": "fan", "parallel": [
                    { "name": "a", "target": { "url": probe.url("/a") } },
                    { "name": "b", "target": { "url": probe.url("/b") } } ] },
                { "name": "after", "target": { "url": probe.url("/after") } } ],
            "repoll_interval": "1m",
        }),
    )
    .await;
    const RUNS: usize = 60;
    let mut runs = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        runs.push(api.create_task_id("pairs", &json!({})).await);
    }
    for run in &runs {
        api.wait_for_state(run, "completed", SETTLE).await;
    }
    let afters: Vec<(String, i64)> =
        sqlx::query_as("select run_id::text, count(*) from tasks where step = 1 group by run_id")
            .fetch_all(db.pool())
            .await
            .expect("after steps");
    assert_eq!(afters.len(), RUNS);
    assert!(
        afters.iter().all(|(_, n)| *n == 1),
        "a step started twice: {afters:?}"
    );
    // Every child dispatched once: three per run, none again.
    assert_eq!(probe.dispatches(), RUNS * 3);
    assert_eq!(probe.done(), RUNS * 3, "every callback was accepted");
}

async fn alerts(api: &Api, query: &str) -> Vec<Value> {
    let response = api
        .request(Method::GET, &format!("/api/v1/alerts?{query}"), None, &[])
        .await;
    response.expect_status(200)["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_stop_cancels_the_siblings_continue_goes_on_and_a_step_deadline_alerts() {
    let db = TestDb::create().await;
    // `slow` is held two seconds before it completes; `bad` fails at once; `stuck` never ends.
    let downstream = FakeDownstream::start(|request| match request.path.as_str() {
        "/slow" => Reply::accept().then_callback(
            Duration::from_secs(2),
            json!({ "status": "completed", "result": { "slow": true } }),
        ),
        "/bad" => Reply::status(200).json(json!({ "status": "failed", "message": "disk full" })),
        "/stuck" => Reply::accept(),
        _ => Reply::status(200).json(json!({ "status": "completed", "result": { "ok": 1 } })),
    })
    .await;
    let nodes = cluster(&db, 1).await;
    let api = nodes[0].api();
    for (job, on_failure) in [("stops", "stop"), ("goes-on", "continue")] {
        api.put_job(
            job,
            &json!({
                "steps": [
                    { "name": "upload", "on_failure": on_failure, "parallel": [
                        { "name": "slow", "target": { "url": downstream.url("/slow") } },
                        { "name": "bad", "target": { "url": downstream.url("/bad") } } ] },
                    { "name": "post", "target": { "url": downstream.url("/post") } } ],
                "repoll_interval": "1m",
            }),
        )
        .await;
    }
    let stopped = api.create_task_id("stops", &json!({})).await;
    let task = api.wait_for_state(&stopped, "failed", SETTLE).await;
    let reason = task["failure_reason"].to_string() + &task["message"].to_string();
    assert!(
        reason.contains("step `upload`") && reason.contains("`bad` (failed: disk full)"),
        "the reason names the step and the child: {task}"
    );
    let slow = task["steps"][0]["children"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "slow"))
        .cloned()
        .expect("the slow child");
    assert_eq!(slow["state"], "cancelled", "{task}");
    let slow_id = slow["id"].as_str().expect("id").to_owned();
    // The downstream that had the sibling is told it was cancelled; `post` never went out.
    wait_until("the cancel notice for the sibling", SETTLE, || async {
        downstream
            .requests_for(&slow_id)
            .iter()
            .any(|r| r.method == "DELETE")
            .then_some(())
    })
    .await;
    let failed_alert = wait_until("the run's failed alert", SETTLE, || async {
        alerts(&api, "kind=failed")
            .await
            .into_iter()
            .find(|a| a["subject"]["task"] == stopped.as_str())
    })
    .await;
    assert!(
        failed_alert["summary"]
            .as_str()
            .is_some_and(|s| s.contains("step `upload`")),
        "{failed_alert}"
    );

    let went_on = api.create_task_id("goes-on", &json!({})).await;
    api.wait_for_state(&went_on, "completed_with_errors", SETTLE)
        .await;
    let posts: Vec<_> = downstream
        .requests()
        .into_iter()
        .filter(|r| r.path == "/post")
        .collect();
    assert_eq!(posts.len(), 1, "only the run that went on reached `post`");
    assert_eq!(posts[0].body["run"], went_on.as_str());
    assert_eq!(
        posts[0].body["inputs"]["upload"]["slow"],
        json!({ "slow": true })
    );

    // A step's own deadline: its child still open a second after the step started is overdue,
    // and the alert says which run and step it belongs to.
    api.put_job(
        "deadlined",
        &json!({
            "steps": [
                { "name": "prepare", "target": { "url": downstream.url("/ok") } },
                { "name": "extract", "deadline": "1s", "target": { "url": downstream.url("/stuck") } } ],
            "repoll_interval": "1m",
        }),
    )
    .await;
    let late = api.create_task_id("deadlined", &json!({})).await;
    let overdue = wait_until("the step's overdue alert", SETTLE, || async {
        alerts(&api, "kind=overdue").await.into_iter().find(|a| {
            a["summary"]
                .as_str()
                .is_some_and(|s| s.contains(late.as_str()))
        })
    })
    .await;
    let summary = overdue["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("step `extract`, child `extract` of run"),
        "{summary}"
    );
    let run = api.get_task(&late).await;
    assert_eq!(run["state"], "processing", "the run itself has no deadline");
}
