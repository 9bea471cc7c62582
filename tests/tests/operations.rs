//! End-to-end: operator actions on real nodes — a cancel told to the downstream with a `DELETE`,
//! whose next callback is refused; a job deleted while its triggers fire — and the event log
//! pushed to a webhook (retried until accepted) and streamed to a client as Server-Sent Events,
//! resumed on another node.

use std::time::Duration;

use pacer_tests::{FakeDownstream, NodeSettings, PacerProcess, Reply, TestDb, wait_until};
use reqwest::Method;
use serde_json::{Value, json};

/// Generous: these waits cover a dispatch or two on a loaded machine.
const SETTLE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_is_sent_downstream_and_the_next_callback_is_refused() {
    let db = TestDb::create().await;
    // Accepts the dispatch and never calls back; answers the cancellation 204.
    let downstream = FakeDownstream::start(|request| {
        if request.method == "DELETE" {
            Reply::status(204)
        } else {
            Reply::accept()
        }
    })
    .await;
    let node = PacerProcess::start(db.url(), "node-a").await;
    let api = node.api();
    api.put_job(
        "export",
        &json!({
            "target": {
                "url": downstream.url("/export"),
                "cancel_url": downstream.url("/export/{task_id}"),
                "headers": { "X-Tenant": "a" },
            },
            "repoll_interval": "1h",
        }),
    )
    .await;
    let id = api.create_task_id("export", &json!({})).await;
    api.wait_for_state(&id, "processing", SETTLE).await;

    let cancelled = api.cancel(&id).await;
    assert_eq!(cancelled.expect_status(200)["state"], "cancelled");
    let delete = wait_until("the cancel notice", SETTLE, || async {
        downstream
            .requests_for(&id)
            .into_iter()
            .find(|r| r.method == "DELETE")
    })
    .await;
    assert_eq!(delete.path, format!("/export/{id}"));
    assert_eq!(delete.idempotency_key(), id);
    assert_eq!(delete.header("x-tenant"), Some("a"));
    assert_eq!(delete.body["task_id"], id.as_str());
    assert_eq!(delete.body["state"], "cancelled");

    let late = api.callback(&id, &json!({ "status": "completed" })).await;
    let problem = late.expect_problem(409);
    assert_eq!(problem["state"], "cancelled");
    let deletes = downstream
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .count();
    assert_eq!(deletes, 1, "one notice, sent once");
}

/// Reads Server-Sent Events from a live response.
struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

impl EventStream {
    async fn next(&mut self) -> (String, Value) {
        tokio::time::timeout(SETTLE, async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let frame: String = self.buffer.drain(..end + 2).collect();
                    let id = frame
                        .lines()
                        .find_map(|l| l.strip_prefix("id:"))
                        .map(|v| v.trim().to_owned());
                    let data = frame
                        .lines()
                        .find_map(|l| l.strip_prefix("data:"))
                        .map(|v| v.trim().to_owned());
                    if let (Some(id), Some(data)) = (id, data) {
                        return (id, serde_json::from_str(&data).expect("JSON data"));
                    }
                    continue;
                }
                let chunk = self
                    .response
                    .chunk()
                    .await
                    .expect("the stream reads")
                    .expect("the stream stays open");
                self.buffer
                    .push_str(std::str::from_utf8(&chunk).expect("utf-8"));
            }
        })
        .await
        .expect("an event before the deadline")
    }
}

/// A job whose triggers are firing, with triggered tasks still open at the downstream, is
/// deleted with `cancel_open_tasks` at the first request, at whatever point of the second it
/// lands: its open tasks are cancelled, its triggers go, and its tasks stay as history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_deleted_at_once_while_its_triggers_fire() {
    const ROUNDS: usize = 5;
    const TRIGGERS: usize = 300;
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|_| Reply::accept()).await;
    let node = PacerProcess::start(db.url(), "node-a").await;
    let api = node.api();
    let triggers: Vec<Value> = (0..TRIGGERS)
        .map(|_| json!({"kind": "interval", "every": "1s"}))
        .collect();
    for round in 0..ROUNDS {
        let job = format!("busy-{round}");
        api.put_job(
            &job,
            &json!({
                // Accepted and never called back: the tasks stay open.
                "target": {"url": downstream.url("/busy")},
                "repoll_interval": "1h",
            }),
        )
        .await;
        api.request(
            Method::POST,
            &format!("/api/v1/jobs/{job}/triggers:batch"),
            Some(&json!({"triggers": triggers})),
            &[],
        )
        .await
        .expect_status(201);
        // Fired at least twice, so the next pass may be under way at any point of the second.
        wait_until("the triggers to fire twice", SETTLE, || async {
            let fired: i64 = sqlx::query_scalar("select count(*) from tasks where job_name = $1")
                .bind(&job)
                .fetch_one(db.pool())
                .await
                .expect("tasks are readable");
            (fired >= 2 * TRIGGERS as i64).then_some(())
        })
        .await;
        // Land at a different point of the second each round (on the database clock, whose
        // whole seconds the firing passes follow): within 100 ms after 170 ms × round.
        let point = i64::try_from(170 * round).expect("a small offset") % 1000;
        wait_until("the round's point of the second", SETTLE, || async {
            let millis: i64 = sqlx::query_scalar(
                "select (extract(epoch from clock_timestamp()) * 1000)::bigint % 1000",
            )
            .fetch_one(db.pool())
            .await
            .expect("the database answers");
            ((millis - point).rem_euclid(1000) < 100).then_some(())
        })
        .await;
        let deleted = api
            .request(
                Method::DELETE,
                &format!("/api/v1/jobs/{job}?cancel_open_tasks=true"),
                None,
                &[],
            )
            .await;
        assert_eq!(
            deleted.status, 200,
            "round {round}: deleting the job while it fires answered {}: {}",
            deleted.status, deleted.body
        );
        let left: i64 = sqlx::query_scalar(
            "select count(*) from triggers t join jobs j on j.id = t.job_id where j.name = $1",
        )
        .bind(&job)
        .fetch_one(db.pool())
        .await
        .expect("triggers are readable");
        assert_eq!(left, 0, "round {round}: the job's triggers went with it");
        assert!(
            deleted.body["cancelled_tasks"].as_u64().unwrap_or_default() > 0,
            "round {round}: the open tasks were cancelled: {}",
            deleted.body
        );
        let open: i64 = sqlx::query_scalar(
            "select count(*) from tasks where job_name = $1 and state in ('pending', 'processing')",
        )
        .bind(&job)
        .fetch_one(db.pool())
        .await
        .expect("tasks are readable");
        assert_eq!(
            open, 0,
            "round {round}: no task of the deleted job is left open"
        );
    }
}

async fn connect(node: &PacerProcess, query: &str) -> EventStream {
    let response = pacer_tests::http_client()
        .get(format!("{}/api/v1/events{query}", node.url()))
        .bearer_auth(pacer_tests::token(&["operator"]))
        .send()
        .await
        .expect("the event stream connects");
    assert_eq!(response.status(), 200);
    EventStream {
        response,
        buffer: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_streamed_to_clients_and_pushed_to_the_webhook() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::sequence(vec![
        Reply::accept().then_callback(Duration::from_millis(200), json!({ "status": "completed" })),
    ])
    .await;
    // The webhook refuses its first batch, then accepts: the batch is sent again.
    let receiver = FakeDownstream::start(|request| {
        if request.seq == 0 {
            Reply::status(503)
        } else {
            Reply::status(200)
        }
    })
    .await;
    let settings = NodeSettings::new("node-a")
        .env("PACER_EVENTS__WEBHOOK__URL", &receiver.url("/events"))
        .env("PACER_EVENTS__WEBHOOK__BATCH_SIZE", "50");
    let node = PacerProcess::start_with(db.url(), settings).await;
    let api = node.api();
    api.put_job(
        "sync",
        &json!({ "target": { "url": downstream.url("/sync") }, "repoll_interval": "1h" }),
    )
    .await;
    // The webhook duty starts with leadership; wait until it has stored where it starts.
    wait_until("the webhook's starting position", SETTLE, || async {
        let stored: Option<i64> =
            sqlx::query_scalar("select last_id from event_cursors where name = 'webhook'")
                .fetch_optional(db.pool())
                .await
                .expect("cursor");
        stored.map(|_| ())
    })
    .await;

    let mut stream = connect(&node, "?job=sync&kind=task.state").await;
    let id = api.create_task_id("sync", &json!({})).await;
    api.wait_for_state(&id, "completed", SETTLE).await;
    let mut states = Vec::new();
    let mut last_id = String::new();
    while states.len() < 3 {
        let (event_id, event) = stream.next().await;
        assert_eq!(event["task"], id.as_str());
        states.push(event["data"]["state"].as_str().expect("state").to_owned());
        last_id = event_id;
    }
    assert_eq!(states, ["pending", "processing", "completed"]);

    // A replay of the whole log holds the node's leader change too.
    let mut replay = connect(&node, "?kind=leader.changed&last_event_id=0-0").await;
    let (_, leader) = replay.next().await;
    assert_eq!(leader["data"]["node"], "node-a");
    assert!(leader["data"]["term"].as_i64().is_some_and(|t| t >= 1));

    // A resume after the last event seen, on another node, waits for the next one.
    let other = PacerProcess::start(db.url(), "node-b").await;
    let mut resumed = connect(
        &other,
        &format!("?job=sync&kind=task.state&last_event_id={last_id}"),
    )
    .await;
    let second = api.create_task_id("sync", &json!({})).await;
    let (_, next) = resumed.next().await;
    assert_eq!(
        next["task"],
        second.as_str(),
        "nothing repeated, nothing skipped"
    );

    // The webhook got every state change of the first task, in order, after one refusal.
    let pushed = wait_until(
        "the webhook to accept the task's events",
        SETTLE,
        || async {
            let accepted: Vec<Value> = receiver
                .requests()
                .into_iter()
                .skip(1)
                .flat_map(|r| r.body["events"].as_array().cloned().unwrap_or_default())
                .filter(|e| e["task"] == id.as_str() && e["kind"] == "task.state")
                .collect();
            (accepted.len() >= 3).then_some(accepted)
        },
    )
    .await;
    let pushed_states: Vec<&str> = pushed
        .iter()
        .map(|e| e["data"]["state"].as_str().expect("state"))
        .collect();
    assert_eq!(pushed_states, ["pending", "processing", "completed"]);
    let requests = receiver.requests();
    assert_eq!(requests[0].method, "POST");
    assert_eq!(
        requests[0].body, requests[1].body,
        "the refused batch is sent again as it was"
    );
    assert_eq!(requests[0].idempotency_key(), requests[1].idempotency_key());
}
