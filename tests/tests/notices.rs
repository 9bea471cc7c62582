//! End-to-end: completion notices (`notify` on task creation). A task's creator hears once that
//! it finished, however often the downstream repeats its callback and even when the node that
//! applied the callback dies right after its commit; a `notify.url` outside the configured
//! prefixes is refused and creates nothing.

use std::time::Duration;

use pacer_tests::{Api, FakeDownstream, NodeSettings, PacerProcess, Reply, TestDb, wait_until};
use reqwest::Method;
use serde_json::{Value, json};

/// Generous: a node start and a claim lease running out on a loaded machine.
const SETTLE: Duration = Duration::from_secs(60);

/// The secret notices are signed with in these tests.
const NOTICE_SECRET: &str = "a-notice-secret";

/// A node that may notify URLs under `prefix`, with short notice timeouts and backoff.
fn notifying(node_id: &str, prefix: &str) -> NodeSettings {
    NodeSettings::new(node_id)
        .env("PACER_NOTIFY__ALLOWED_URLS", &format!(r#"["{prefix}"]"#))
        .env("PACER_NOTIFY__TIMEOUT", "2s")
        .env("PACER_NOTIFY__INITIAL_BACKOFF", "200ms")
        .env("PACER_NOTIFY__MAX_BACKOFF", "500ms")
        .env("PACER_SECRETS__NOTICE_SECRET", NOTICE_SECRET)
}

async fn notice_rows(
    db: &TestDb,
    id: &str,
) -> Vec<(String, Option<chrono::DateTime<chrono::Utc>>)> {
    sqlx::query_as("select event, delivered_at from task_notices where task_id = $1::uuid")
        .bind(id)
        .fetch_all(db.pool())
        .await
        .expect("notices")
}

/// Checks the `pacer-signature` header (`t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`).
fn signature_is_valid(header: &str, body: &[u8]) -> bool {
    let mut parts = header.split(',');
    let (Some(t), Some(v1)) = (
        parts.next().and_then(|p| p.strip_prefix("t=")),
        parts.next().and_then(|p| p.strip_prefix("v1=")),
    ) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, NOTICE_SECRET.as_bytes());
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    let tag = ring::hmac::sign(&key, &message);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    hex == v1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_task_is_noticed_once_despite_repeated_callbacks_and_a_killed_node() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|_| Reply::accept()).await;
    // The first notice request is held open past the notifier's timeout: whichever node sent it
    // must try again (or, killed, leave it to the other node once its claim's lease runs out).
    let receiver = FakeDownstream::start(|r| {
        if r.seq == 0 {
            Reply::hang()
        } else {
            Reply::status(204)
        }
    })
    .await;
    let prefix = receiver.url("/rip/");
    let mut node_a = PacerProcess::start_with(db.url(), notifying("node-a", &prefix)).await;
    let node_b = PacerProcess::start_with(db.url(), notifying("node-b", &prefix)).await;
    let (api_a, api_b) = (node_a.api(), node_b.api());
    api_a
        .put_job(
            "sync",
            &json!({ "target": { "url": downstream.url("/run") }, "repoll_interval": "1h" }),
        )
        .await;
    let id = api_a
        .create_task_id(
            "sync",
            &json!({
                "notify": {
                    "url": receiver.url("/rip/sync-done"),
                    "events": ["finished"],
                    "auth": { "kind": "hmac", "secret": "notice_secret" },
                },
            }),
        )
        .await;
    downstream.wait_for_requests(&id, 1, SETTLE).await;
    api_a.wait_for_state(&id, "processing", SETTLE).await;

    let done = json!({ "status": "completed", "result": { "rows": 12 } });
    api_a.callback(&id, &done).await.expect_status(200);
    // Node A applied it and dies right after its commit.
    node_a.kill();
    // The downstream repeats its callback, to the node still up, twice.
    for _ in 0..2 {
        let repeated = api_b.callback(&id, &done).await;
        assert!(
            matches!(repeated.status, 200 | 409),
            "a repeated callback changes nothing: {} {:#}",
            repeated.status,
            repeated.body
        );
    }

    let task = wait_until("the notice delivered", SETTLE, || async {
        let task = api_b.get_task(&id).await;
        let delivered = task["notices"][0]["delivered_at"].is_string();
        delivered.then_some(task)
    })
    .await;
    let notices = task["notices"].as_array().expect("notices");
    assert_eq!(notices.len(), 1, "exactly one notice: {notices:#?}");
    assert_eq!(notices[0]["event"], "finished");
    assert_eq!(notices[0]["state"], "completed");
    assert!(
        notices[0]["attempts"].as_i64().unwrap_or(0) >= 2,
        "the hung attempt counted: {notices:#?}"
    );
    assert_eq!(notice_rows(&db, &id).await.len(), 1);

    let received = receiver.requests();
    assert!(
        received.len() >= 2,
        "the hung request and the one accepted: {received:#?}"
    );
    for request in &received {
        assert_eq!(request.path, "/rip/sync-done");
        assert_eq!(
            request.idempotency_key(),
            format!("{id}:finished"),
            "every attempt carries the same key"
        );
        assert!(
            signature_is_valid(
                request.header("pacer-signature").unwrap_or_default(),
                &request.raw
            ),
            "signed with the named secret"
        );
        assert_eq!(request.body["event"], "finished");
        assert_eq!(request.body["task"]["id"], json!(id));
        assert_eq!(request.body["task"]["state"], "completed");
        assert_eq!(request.body["task"]["result"], json!({ "rows": 12 }));
    }
    // Nothing more is sent once the receiver accepted it. A second task's notice is the
    // witness: once it is delivered, the notifier has looked again since the first one.
    let accepted = received.len();
    let witness = api_b
        .create_task_id(
            "sync",
            &json!({ "notify": { "url": receiver.url("/rip/witness"), "events": ["finished"],
                                 "auth": { "kind": "hmac", "secret": "notice_secret" } } }),
        )
        .await;
    downstream.wait_for_requests(&witness, 1, SETTLE).await;
    api_b.wait_for_state(&witness, "processing", SETTLE).await;
    api_b.callback(&witness, &done).await.expect_status(200);
    wait_until("the witness's notice delivered", SETTLE, || async {
        let task = api_b.get_task(&witness).await;
        task["notices"][0]["delivered_at"].is_string().then_some(())
    })
    .await;
    assert_eq!(
        receiver
            .requests()
            .iter()
            .filter(|r| r.path == "/rip/sync-done")
            .count(),
        accepted,
        "no notice after the accepted one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_notices_follow_every_state_change_and_use_the_jobs_auth() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|_| Reply::accept()).await;
    let receiver = FakeDownstream::start(|_| Reply::status(200)).await;
    let node = PacerProcess::start_with(db.url(), notifying("node-a", &receiver.url("/"))).await;
    let api = node.api();
    api.put_job(
        "sync",
        &json!({
            "target": {
                "url": downstream.url("/run"),
                "auth": { "kind": "hmac", "secret": "notice_secret" },
            },
            "repoll_interval": "1h",
        }),
    )
    .await;
    let id = api
        .create_task_id(
            "sync",
            &json!({ "notify": { "url": receiver.url("/hook"), "events": ["state", "finished"] } }),
        )
        .await;
    api.wait_for_state(&id, "processing", SETTLE).await;
    api.callback(&id, &json!({ "status": "failed", "message": "disk full" }))
        .await
        .expect_status(200);
    let received = wait_until("three notices", SETTLE, || async {
        let received = receiver.requests();
        (received.len() >= 3).then_some(received)
    })
    .await;
    let mut keys: Vec<String> = received
        .iter()
        .map(|r| r.idempotency_key().to_owned())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            format!("{id}:finished"),
            format!("{id}:state.failed.1"),
            format!("{id}:state.processing.1"),
        ]
    );
    for request in &received {
        assert!(
            signature_is_valid(
                request.header("pacer-signature").unwrap_or_default(),
                &request.raw
            ),
            "signed with the job's outbound auth"
        );
    }
    // An operator's retry is noticed to the same receiver, naming the task it retries.
    let retried = api
        .request(
            Method::POST,
            &format!("/api/v1/tasks/{id}/retry"),
            None,
            &[],
        )
        .await;
    let retry = retried.expect_status(202)["id"]
        .as_str()
        .expect("id")
        .to_owned();
    api.wait_for_state(&retry, "processing", SETTLE).await;
    api.callback(&retry, &json!({ "status": "completed" }))
        .await
        .expect_status(200);
    let finished = wait_until("the retry's finished notice", SETTLE, || async {
        receiver
            .requests()
            .into_iter()
            .find(|r| r.idempotency_key() == format!("{retry}:finished"))
    })
    .await;
    assert_eq!(finished.body["task"]["retry_of"], json!(id));
    assert_eq!(finished.body["task"]["state"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_url_outside_the_allowed_prefixes_is_refused_and_nothing_is_created() {
    let db = TestDb::create().await;
    let node =
        PacerProcess::start_with(db.url(), notifying("node-a", "https://rip.example/")).await;
    let api: Api = node.api();
    api.put_job(
        "sync",
        &json!({ "target": { "url": "http://127.0.0.1:9/run" }, "repoll_interval": "1h" }),
    )
    .await;
    for url in [
        "https://evil.example/hook",
        "https://rip.example.evil.example/hook",
        "http://rip.example/hook",
    ] {
        let refused = api
            .create_task("sync", &json!({ "notify": { "url": url } }))
            .await;
        let problem = refused.expect_problem(422);
        let text = problem.to_string();
        assert!(text.contains("notify.url"), "names the field: {problem:#}");
    }
    // Nor may its auth send Pacer to a token endpoint elsewhere, or name a secret not configured.
    for (auth, field) in [
        (
            json!({ "kind": "oauth2", "token_url": "https://evil.example/token", "client_id": "c", "client_secret": "notice_secret" }),
            "notify.auth.kind",
        ),
        (
            json!({ "kind": "hmac", "secret": "missing" }),
            "notify.auth.secret",
        ),
    ] {
        let refused = api
            .create_task(
                "sync",
                &json!({ "notify": { "url": "https://rip.example/done", "auth": auth } }),
            )
            .await;
        let problem = refused.expect_problem(422);
        assert!(
            problem.to_string().contains(field),
            "names {field}: {problem:#}"
        );
    }
    let listed = api
        .request(Method::GET, "/api/v1/tasks?job=sync", None, &[])
        .await;
    let items: &Value = &listed.expect_status(200)["items"];
    assert_eq!(items, &json!([]), "nothing was created");
    let count: i64 = sqlx::query_scalar("select count(*) from tasks")
        .fetch_one(db.pool())
        .await
        .expect("count");
    assert_eq!(count, 0);
    // Under the prefix, it is taken.
    api.create_task_id(
        "sync",
        &json!({ "notify": { "url": "https://rip.example/done" } }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_notify_gets_a_notice_for_each_task_it_creates() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|_| Reply::accept()).await;
    let receiver = FakeDownstream::start(|_| Reply::status(200)).await;
    let node = PacerProcess::start_with(db.url(), notifying("node-a", &receiver.url("/"))).await;
    let api = node.api();
    for job in ["sync", "audit"] {
        api.put_job(
            job,
            &json!({
                "target": { "url": downstream.url("/run") },
                "repoll_interval": "1h",
                "on_messages": ["masterdata.changed"],
            }),
        )
        .await;
    }
    let refused = api
        .request(
            Method::POST,
            "/api/v1/messages",
            Some(&json!({ "type": "masterdata.changed", "id": "m-0",
                          "notify": { "url": "https://elsewhere.example/" } })),
            &[],
        )
        .await;
    assert!(
        refused
            .expect_problem(422)
            .to_string()
            .contains("notify.url")
    );
    let sent = api
        .request(
            Method::POST,
            "/api/v1/messages",
            Some(&json!({ "type": "masterdata.changed", "id": "m-1",
                          "notify": { "url": receiver.url("/done") } })),
            &[],
        )
        .await;
    let tasks: Vec<String> = sent.expect_status(202)["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["task_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(tasks.len(), 2);
    for id in &tasks {
        api.wait_for_state(id, "processing", SETTLE).await;
        api.callback(id, &json!({ "status": "completed" }))
            .await
            .expect_status(200);
    }
    let received = wait_until("a notice per task", SETTLE, || async {
        let received = receiver.requests();
        (received.len() >= 2).then_some(received)
    })
    .await;
    let mut keys: Vec<String> = received
        .iter()
        .map(|r| r.idempotency_key().to_owned())
        .collect();
    keys.sort();
    let mut want: Vec<String> = tasks.iter().map(|id| format!("{id}:finished")).collect();
    want.sort();
    assert_eq!(keys, want);
    let count: i64 = sqlx::query_scalar("select count(*) from messages where id = 'm-0'")
        .fetch_one(db.pool())
        .await
        .expect("count");
    assert_eq!(count, 0, "the refused message was not received");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_steps_is_noticed_as_the_run_not_per_child() {
    let db = TestDb::create().await;
    let downstream =
        FakeDownstream::start(|_| Reply::status(200).json(json!({ "status": "completed" }))).await;
    let receiver = FakeDownstream::start(|_| Reply::status(200)).await;
    let node = PacerProcess::start_with(db.url(), notifying("node-a", &receiver.url("/"))).await;
    let api = node.api();
    api.put_job(
        "extraction",
        &json!({
            "steps": [
                { "name": "download", "target": { "url": downstream.url("/download") } },
                { "name": "upload", "target": { "url": downstream.url("/upload") } },
            ],
        }),
    )
    .await;
    let run = api
        .create_task_id(
            "extraction",
            &json!({ "notify": { "url": receiver.url("/done"), "events": ["finished", "state"] } }),
        )
        .await;
    api.wait_for_state(&run, "completed", SETTLE).await;
    assert_eq!(downstream.requests().len(), 2, "both steps ran");
    let task = wait_until("the run's finished notice delivered", SETTLE, || async {
        let task = api.get_task(&run).await;
        let notices = task["notices"].as_array().cloned().unwrap_or_default();
        notices
            .iter()
            .any(|n| n["event"] == "finished" && n["delivered_at"].is_string())
            .then_some(task)
    })
    .await;
    let events: Vec<&str> = task["notices"]
        .as_array()
        .expect("notices")
        .iter()
        .filter_map(|n| n["event"].as_str())
        .collect();
    assert!(events.contains(&"state.completed.1"), "{events:?}");
    let children: i64 =
        sqlx::query_scalar("select count(*) from task_notices where task_id <> $1::uuid")
            .bind(&run)
            .fetch_one(db.pool())
            .await
            .expect("count");
    assert_eq!(children, 0, "the run's children are not noticed");
    for request in receiver.requests() {
        assert!(
            request.idempotency_key().starts_with(&format!("{run}:")),
            "only the run is noticed: {}",
            request.idempotency_key()
        );
    }
}
