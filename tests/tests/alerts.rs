//! End-to-end: alerts (DESIGN §7). Late and failing work reaches an operator once: an overdue
//! task opens one alert and one webhook delivery and resolves itself when it completes; failures
//! raise one alert per task and one per streak of dispatch errors; a sink that is down gets each
//! notification exactly once when it recovers, across a node restart; a killed node is reported,
//! a stopped one is not.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pacer_tests::{
    Api, FakeDownstream, NodeSettings, PacerProcess, Reply, TestDb, timestamp, wait_until,
};
use reqwest::Method;
use serde_json::{Value, json};

/// Generous: these waits cover a node start and a few evaluation passes on a loaded machine.
const SETTLE: Duration = Duration::from_secs(30);

/// The secret the test sink verifies signatures with.
const SINK_SECRET: &str = "a-sink-secret";

/// A node whose alerts go to one webhook sink at `sink_url`, signed with [`SINK_SECRET`].
fn with_sink(node_id: &str, sink_url: &str) -> NodeSettings {
    NodeSettings::new(node_id)
        .env(
            "PACER_ALERTS__SINKS",
            &format!(r#"[{{name="ops", url="{sink_url}", secret="sink_secret"}}]"#),
        )
        .env("PACER_SECRETS__SINK_SECRET", SINK_SECRET)
        .env("PACER_ALERTS__DELIVERY_INITIAL_BACKOFF", "100ms")
        .env("PACER_ALERTS__DELIVERY_MAX_BACKOFF", "300ms")
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

async fn wait_for_alerts(api: &Api, query: &str, count: usize) -> Vec<Value> {
    let what = format!("{count} alert(s) matching `{query}`");
    wait_until(&what, SETTLE, || async {
        let found = alerts(api, query).await;
        (found.len() >= count).then_some(found)
    })
    .await
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
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SINK_SECRET.as_bytes());
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    let tag = ring::hmac::sign(&key, &message);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    hex == v1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdue_task_opens_one_alert_with_one_delivery_and_a_late_completion_resolves_it() {
    let db = TestDb::create().await;
    let sink = FakeDownstream::start(|_| Reply::status(204)).await;
    let watchers = FakeDownstream::start(|_| Reply::status(200)).await;
    // The downstream takes the task and never calls back.
    let downstream = FakeDownstream::start(|_| Reply::accept()).await;
    let sinks = format!(
        r#"[{{name="ops", url="{}", secret="sink_secret"}}, {{name="watchers", kind="slack", url="{}", all_alerts=false}}]"#,
        sink.url("/hooks"),
        watchers.url("/slack"),
    );
    let settings = with_sink("node-a", "").env("PACER_ALERTS__SINKS", &sinks);
    let node = PacerProcess::start_with(db.url(), settings).await;
    let api = node.api();
    api.put_job(
        "nightly",
        &json!({
            "target": { "url": downstream.url("/run") },
            "deadline": "1s",
            "repoll_interval": "1m",
            "alerts": {
                "on_overdue": ["ops"],
                "on_success": ["watchers"],
                "severity": { "overdue": "critical" },
            },
        }),
    )
    .await;
    let id = api.create_task_id("nightly", &json!({})).await;
    downstream.wait_for_requests(&id, 1, SETTLE).await;

    let found = wait_for_alerts(&api, "kind=overdue", 1).await;
    let [alert] = found.as_slice() else {
        panic!("one overdue alert: {found:#?}")
    };
    assert_eq!(alert["subject"], json!({ "task": id, "job": "nightly" }));
    assert_eq!(alert["state"], "open");
    assert_eq!(alert["severity"], "critical", "the job's override");
    assert_eq!(alert["count"], 1);
    let task = api.get_task(&id).await;
    assert_eq!(task["overdue"], true);
    let late = timestamp(&alert["opened_at"]) - timestamp(&task["deadline_at"]);
    assert!(
        late >= chrono::Duration::zero() && late < chrono::Duration::seconds(5),
        "noticed within a few seconds of the deadline (database clock): {late}"
    );

    let received = wait_until("the overdue notification at the sink", SETTLE, || async {
        let received = sink.requests();
        (!received.is_empty()).then_some(received)
    })
    .await;
    let notification = &received[0];
    assert_eq!(notification.path, "/hooks");
    assert_eq!(notification.body["event"], "alert.opened");
    assert_eq!(notification.body["alert"]["id"], alert["id"]);
    assert_eq!(notification.body["alert"]["kind"], "overdue");
    assert_eq!(notification.body["alert"]["subject"]["task"], id.as_str());
    assert!(notification.header("pacer-delivery-id").is_some());
    assert_eq!(notification.header("pacer-event"), Some("alert.opened"));
    let signature = notification.header("pacer-signature").expect("signed");
    assert!(
        signature_is_valid(signature, &notification.raw),
        "{signature}"
    );

    // The task carries on and completes late: the alert resolves itself, and the job's
    // watchers hear about the completion in one line.
    api.callback(
        &id,
        &json!({ "status": "completed", "message": "synced 42 records" }),
    )
    .await
    .expect_status(200);
    let told = wait_until(
        "the success notice at the watchers' sink",
        SETTLE,
        || async {
            let received = watchers.requests();
            (!received.is_empty()).then_some(received)
        },
    )
    .await;
    assert_eq!(told.len(), 1, "{told:#?}");
    assert_eq!(told[0].header("pacer-event"), Some("task.completed"));
    assert_eq!(
        told[0].body,
        json!({ "text": format!("job nightly: task {id} completed: synced 42 records") })
    );
    let alert_uri = format!("/api/v1/alerts/{}", alert["id"].as_str().expect("id"));
    let resolved = wait_until("the overdue alert to resolve", SETTLE, || async {
        let detail = api.request(Method::GET, &alert_uri, None, &[]).await;
        (detail.body["state"] == "resolved").then_some(detail.body)
    })
    .await;
    assert_eq!(resolved["resolved_by"], "pacer");
    let deliveries = resolved["deliveries"].as_array().expect("deliveries");
    assert_eq!(deliveries.len(), 1, "{resolved:#}");
    assert_eq!(deliveries[0]["state"], "delivered");
    assert_eq!(deliveries[0]["sink"], "ops");
    assert_eq!(deliveries[0]["tries"][0]["http_status"], 204);
    assert_eq!(sink.requests().len(), 1, "exactly one webhook delivery");
    assert_eq!(
        alerts(&api, "kind=overdue").await.len(),
        1,
        "no second alert"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_count_into_the_open_alert_and_notify_again_only_after_the_interval_until_acked() {
    let db = TestDb::create().await;
    let sink = FakeDownstream::start(|_| Reply::status(204)).await;
    let downstream = FakeDownstream::start(|_| Reply::accept()).await;
    let settings =
        with_sink("node-a", &sink.url("/hooks")).env("PACER_ALERTS__RENOTIFY_INTERVAL", "2s");
    let node = PacerProcess::start_with(db.url(), settings).await;
    let api = node.api();
    api.put_job(
        "single",
        &json!({ "target": { "url": downstream.url("/run") }, "overlap": "skip" }),
    )
    .await;
    api.create_task_id("single", &json!({})).await;
    // Each further request is skipped by the overlap policy while the first task is open.
    let skip = || async {
        api.create_task("single", &json!({}))
            .await
            .expect_problem(409);
    };
    skip().await;
    let opened = wait_for_alerts(&api, "kind=missed&job=single", 1).await;
    assert_eq!(
        opened[0]["subject"],
        json!({ "task": null, "job": "single" })
    );
    assert_eq!(opened[0]["severity"], "warning");
    let alert_uri = format!("/api/v1/alerts/{}", opened[0]["id"].as_str().expect("id"));
    let events = || {
        sink.requests()
            .iter()
            .map(|r| r.header("pacer-event").unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    wait_until("the first notification", SETTLE, || async {
        (events() == ["alert.opened"]).then_some(())
    })
    .await;

    // Repeats count into the same alert; once the interval has passed, one of them notifies.
    wait_until("a re-notification", SETTLE, || async {
        skip().await;
        events()
            .contains(&"alert.renotified".to_owned())
            .then_some(())
    })
    .await;
    let before = api.request(Method::GET, &alert_uri, None, &[]).await.body;
    assert!(
        before["count"].as_i64().is_some_and(|c| c >= 2),
        "{before:#}"
    );
    assert_eq!(
        alerts(&api, "kind=missed").await.len(),
        1,
        "never a second alert"
    );

    // Acknowledged: repeats are still counted, but nobody is told again.
    api.request(
        Method::POST,
        &format!("{alert_uri}/ack"),
        Some(&json!({ "note": "on it" })),
        &[],
    )
    .await
    .expect_status(200);
    let told = events().len();
    let seen = before["count"].as_i64().unwrap_or_default();
    let counted = wait_until("repeats after the acknowledgement", SETTLE, || async {
        skip().await;
        let alert = api.request(Method::GET, &alert_uri, None, &[]).await.body;
        let count = alert["count"].as_i64().unwrap_or_default();
        // Longer than the re-notify interval since the last notification.
        let quiet = chrono::Utc::now() - timestamp(&alert["notified_at"]);
        (count >= seen + 3 && quiet > chrono::Duration::seconds(3)).then_some(alert)
    })
    .await;
    assert_eq!(counted["state"], "acked");
    assert_eq!(events().len(), told, "no notification once acknowledged");
    // Every skip is counted into the alert exactly once.
    wait_until("every skip to be counted", SETTLE, || async {
        let skips: i64 = sqlx::query_scalar("select count(*) from skipped_runs")
            .fetch_one(db.pool())
            .await
            .expect("skips are countable");
        let alert = api.request(Method::GET, &alert_uri, None, &[]).await.body;
        (alert["count"].as_i64() == Some(skips)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_raises_one_alert_per_task_and_one_for_the_error_streak() {
    let db = TestDb::create().await;
    let down = FakeDownstream::start(|_| Reply::status(503)).await;
    let refusing = FakeDownstream::start(|_| Reply::status(400)).await;
    let node = PacerProcess::start_with(
        db.url(),
        NodeSettings::new("node-a").env("PACER_ALERTS__DISPATCH_ERRORS_THRESHOLD", "3"),
    )
    .await;
    let api = node.api();
    api.put_job(
        "flaky",
        &json!({
            "target": { "url": down.url("/run") },
            "retry": { "max_attempts": 2, "initial_backoff": "10ms", "jitter": 0.0 },
        }),
    )
    .await;
    api.put_job(
        "strict",
        &json!({ "target": { "url": refusing.url("/run") } }),
    )
    .await;
    let mut failed = Vec::new();
    for _ in 0..3 {
        let id = api.create_task_id("flaky", &json!({})).await;
        api.wait_for_state(&id, "failed", SETTLE).await;
        failed.push(id);
    }
    let rejected = api.create_task_id("strict", &json!({})).await;
    api.wait_for_state(&rejected, "failed", SETTLE).await;

    let found = wait_for_alerts(&api, "kind=failed&job=flaky", 3).await;
    let mut subjects: Vec<&str> = found
        .iter()
        .map(|a| a["subject"]["task"].as_str().expect("task"))
        .collect();
    subjects.sort_unstable();
    let mut expected: Vec<&str> = failed.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(subjects, expected, "one failed alert per task");
    assert!(
        found
            .iter()
            .all(|a| a["severity"] == "critical" && a["count"] == 1)
    );
    assert!(
        found[0]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("attempts_exhausted")),
        "{found:#?}"
    );
    let strict = wait_for_alerts(&api, "kind=failed&job=strict", 1).await;
    assert_eq!(strict[0]["subject"]["task"], rejected.as_str());

    // Six transient errors in a row: one alert for the streak, counted, not one per attempt.
    let streak = wait_for_alerts(&api, "kind=dispatch_errors", 1).await;
    assert_eq!(streak.len(), 1, "{streak:#?}");
    assert_eq!(
        streak[0]["subject"],
        json!({ "task": null, "job": "flaky" })
    );
    assert_eq!(streak[0]["state"], "open");
    let attempts: i64 =
        sqlx::query_scalar("select count(*) from task_attempts where outcome = 'transient_error'")
            .fetch_one(db.pool())
            .await
            .expect("attempts are countable");
    assert_eq!(attempts, 6);
    let rows: i64 = sqlx::query_scalar("select count(*) from alerts")
        .fetch_one(db.pool())
        .await
        .expect("alerts are countable");
    assert_eq!(rows, 5, "3 failed + 1 rejected + 1 streak");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_is_down_gets_each_notification_once_it_recovers_across_a_restart() {
    let db = TestDb::create().await;
    let up = Arc::new(AtomicBool::new(false));
    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = {
        let (up, accepted) = (up.clone(), accepted.clone());
        FakeDownstream::start(move |request| {
            if up.load(Ordering::SeqCst) {
                let id = request.header("pacer-delivery-id").unwrap_or_default();
                accepted
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(id.to_owned());
                Reply::status(200)
            } else {
                Reply::status(500)
            }
        })
        .await
    };
    let refusing = FakeDownstream::start(|_| Reply::status(400)).await;
    let mut node_a =
        PacerProcess::start_with(db.url(), with_sink("node-a", &sink.url("/hooks"))).await;
    node_a
        .api()
        .put_job(
            "strict",
            &json!({ "target": { "url": refusing.url("/run") } }),
        )
        .await;
    for _ in 0..2 {
        let id = node_a.api().create_task_id("strict", &json!({})).await;
        node_a.api().wait_for_state(&id, "failed", SETTLE).await;
    }
    // Both notifications are tried and refused at least twice each while the sink is down.
    wait_until(
        "retries of both notifications against the sink that is down",
        SETTLE,
        || async {
            let mut tries: std::collections::HashMap<String, usize> =
                std::collections::HashMap::new();
            for request in sink.requests() {
                let id = request.header("pacer-delivery-id").unwrap_or_default();
                *tries.entry(id.to_owned()).or_default() += 1;
            }
            (tries.len() == 2 && tries.values().all(|n| *n >= 2)).then_some(())
        },
    )
    .await;

    node_a.terminate();
    node_a.wait_exit(SETTLE).await;
    let node_b = PacerProcess::start_with(db.url(), with_sink("node-b", &sink.url("/hooks"))).await;
    up.store(true, Ordering::SeqCst);

    let api = node_b.api();
    let delivered = wait_until("both deliveries to be delivered", SETTLE, || async {
        let alerts = alerts(&api, "kind=failed").await;
        let mut deliveries = Vec::new();
        for alert in &alerts {
            let uri = format!(
                "/api/v1/alerts/{}",
                alert["id"].as_str().unwrap_or_default()
            );
            let detail = api.request(Method::GET, &uri, None, &[]).await;
            deliveries.extend(
                detail.body["deliveries"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            );
        }
        (deliveries.len() == 2 && deliveries.iter().all(|d| d["state"] == "delivered"))
            .then_some(deliveries)
    })
    .await;
    let mut accepted = accepted
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    accepted.sort();
    let mut ids: Vec<String> = delivered
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    assert_eq!(accepted, ids, "each notification arrived exactly once");
    for delivery in &delivered {
        let tries = delivery["tries"].as_array().expect("tries");
        assert!(tries.len() >= 2, "retried before it arrived: {delivery:#}");
        assert_eq!(tries.last().expect("a try")["http_status"], 200);
        assert!(
            tries[..tries.len() - 1]
                .iter()
                .all(|t| t["http_status"] == 500)
        );
        assert_eq!(
            delivery["attempts"].as_i64(),
            Some(tries.len() as i64),
            "every attempt is recorded: {delivery:#}"
        );
    }
    // Retries of one notification carry the same id and the same bytes.
    let requests = sink.requests();
    for id in &ids {
        let same: Vec<_> = requests
            .iter()
            .filter(|r| r.header("pacer-delivery-id") == Some(id.as_str()))
            .collect();
        assert!(same.windows(2).all(|w| w[0].raw == w[1].raw), "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_reported_lost_and_a_stopped_one_is_not() {
    let db = TestDb::create().await;
    let settings = |id: &str| {
        NodeSettings::new(id)
            .env("PACER_CLUSTER__HEARTBEAT_INTERVAL", "300ms")
            .env("PACER_CLUSTER__DEAD_AFTER", "2s")
    };
    let leader = PacerProcess::start_with(db.url(), settings("node-a")).await;
    let api = leader.api();
    // node-a started first on an empty database, so it leads.
    wait_until("node-a to lead", SETTLE, || async {
        let cluster = api.request(Method::GET, "/api/v1/cluster", None, &[]).await;
        (cluster.body["leader"]["node"] == "node-a").then_some(())
    })
    .await;

    let mut stopped = PacerProcess::start_with(db.url(), settings("node-b")).await;
    stopped.terminate();
    stopped.wait_exit(SETTLE).await;
    let mut killed = PacerProcess::start_with(db.url(), settings("node-c")).await;
    // Killed only once it has heartbeat: a node the cluster never saw cannot be lost.
    wait_until("node-c to heartbeat", SETTLE, || async {
        let cluster = api.request(Method::GET, "/api/v1/cluster", None, &[]).await;
        let nodes = cluster.body["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        nodes
            .iter()
            .any(|n| n["id"] == "node-c" && n["alive"] == true)
            .then_some(())
    })
    .await;
    killed.kill();

    let lost = wait_for_alerts(&api, "kind=node_lost", 1).await;
    assert_eq!(lost.len(), 1, "{lost:#?}");
    assert_eq!(lost[0]["subject"]["node"], "node-c");
    assert_eq!(lost[0]["severity"], "critical");
    // node-b stopped before node-c was killed, so it would have been reported by now.
    let rows: i64 = sqlx::query_scalar("select count(*) from alerts where node_id = 'node-b'")
        .fetch_one(db.pool())
        .await
        .expect("alerts are countable");
    assert_eq!(rows, 0, "a clean shutdown raises nothing");
    let logged = leader.logs_with_message("alert opened");
    assert!(
        logged.iter().any(|l| l["node.id"] == "node-c"),
        "the log sink wrote it: {logged:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_missed_or_raised_twice_when_the_leader_is_killed() {
    let db = TestDb::create().await;
    let sink = FakeDownstream::start(|_| Reply::status(204)).await;
    let refusing = FakeDownstream::start(|_| Reply::status(400)).await;
    let settings = |id: &str| {
        with_sink(id, &sink.url("/hooks"))
            .env("PACER_CLUSTER__HEARTBEAT_INTERVAL", "300ms")
            .env("PACER_CLUSTER__DEAD_AFTER", "2s")
            .env("PACER_CLUSTER__LEASE_TTL", "2s")
    };
    let mut leader = PacerProcess::start_with(db.url(), settings("node-a")).await;
    wait_until("node-a to lead", SETTLE, || async {
        let cluster = leader
            .api()
            .request(Method::GET, "/api/v1/cluster", None, &[])
            .await;
        (cluster.body["leader"]["node"] == "node-a").then_some(())
    })
    .await;
    let follower = PacerProcess::start_with(db.url(), settings("node-b")).await;
    let api = follower.api();
    api.put_job(
        "strict",
        &json!({ "target": { "url": refusing.url("/run") } }),
    )
    .await;

    // Tasks fail on node-b before, while and after the leader dies.
    let mut failed = Vec::new();
    for round in 0..12 {
        if round == 4 {
            leader.kill();
        }
        let id = api.create_task_id("strict", &json!({})).await;
        api.wait_for_state(&id, "failed", SETTLE).await;
        failed.push(id);
    }

    let found = wait_for_alerts(&api, "kind=failed&limit=100", failed.len()).await;
    let mut subjects: Vec<&str> = found
        .iter()
        .map(|a| a["subject"]["task"].as_str().expect("task"))
        .collect();
    subjects.sort_unstable();
    let mut expected: Vec<&str> = failed.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(subjects, expected, "exactly one alert per failed task");
    assert!(found.iter().all(|a| a["count"] == 1), "{found:#?}");
    wait_for_alerts(&api, "kind=node_lost", 1).await;

    // One delivery per alert, each delivered once.
    let per_alert: Vec<(String, i64, i64)> =
        wait_until("every delivery to arrive", SETTLE, || async {
            let rows: Vec<(String, i64, i64)> = sqlx::query_as(
                "select a.id::text, count(d.id), count(d.id) filter (where d.state = 'delivered')
             from alerts a left join alert_deliveries d on d.alert_id = a.id
             group by a.id",
            )
            .fetch_all(db.pool())
            .await
            .expect("deliveries are countable");
            rows.iter()
                .all(|(_, _, delivered)| *delivered == 1)
                .then_some(rows)
        })
        .await;
    assert!(
        per_alert.iter().all(|(_, queued, _)| *queued == 1),
        "{per_alert:?}"
    );
    let mut delivery_ids: Vec<String> = sink
        .requests()
        .iter()
        .map(|r| r.header("pacer-delivery-id").unwrap_or_default().to_owned())
        .collect();
    let arrived = delivery_ids.len();
    delivery_ids.sort();
    delivery_ids.dedup();
    // Only a delivery in flight on the killed node may arrive twice (same id); none is lost.
    assert_eq!(
        delivery_ids.len(),
        per_alert.len(),
        "every notification arrived"
    );
    assert!(arrived <= delivery_ids.len() + 1, "{arrived} requests");
}
