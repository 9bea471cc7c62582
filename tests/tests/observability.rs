//! Observability on real nodes: `/metrics` is strict Prometheus text whose series follow a task's
//! life and a trigger's firings with bounded labels only, and `/readyz` follows the node's
//! database away and back while the node keeps running.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pacer_tests::{
    FakeDownstream, NodeSettings, PacerProcess, Reply, TestDb, http_client, wait_until,
};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use exposition::{Exposition, Kind};

/// Generous: these waits cover a dispatch, a firing or a reconnection on a loaded machine.
const SETTLE: Duration = Duration::from_secs(15);

/// The families Pacer documents, with their type and the label names of their samples (a
/// histogram's `le` aside).
const DOCUMENTED: &[(&str, Kind, &[&str])] = &[
    (
        "pacer_http_requests_total",
        Kind::Counter,
        &["method", "route", "status"],
    ),
    (
        "pacer_http_request_duration_seconds",
        Kind::Histogram,
        &["method", "route"],
    ),
    ("pacer_tasks_created_total", Kind::Counter, &["origin"]),
    ("pacer_occurrences_fired_total", Kind::Counter, &[]),
    (
        "pacer_occurrence_creation_lateness_seconds",
        Kind::Histogram,
        &[],
    ),
    ("pacer_dispatch_lateness_seconds", Kind::Histogram, &[]),
    ("pacer_callback_apply_seconds", Kind::Histogram, &[]),
    ("pacer_skips_total", Kind::Counter, &["reason"]),
    (
        "pacer_dispatches_total",
        Kind::Counter,
        &["pacer_job", "outcome"],
    ),
    (
        "pacer_dispatch_duration_seconds",
        Kind::Histogram,
        &["pacer_job", "outcome"],
    ),
    (
        "pacer_callbacks_total",
        Kind::Counter,
        &["result", "status"],
    ),
    ("pacer_tasks_open", Kind::Gauge, &["state"]),
    ("pacer_leader", Kind::Gauge, &[]),
    ("pacer_leader_term", Kind::Gauge, &[]),
    ("pacer_heartbeat_age_seconds", Kind::Gauge, &[]),
    ("pacer_db_pool_connections", Kind::Gauge, &["state"]),
    ("pacer_db_pool_max_connections", Kind::Gauge, &[]),
    ("pacer_build_info", Kind::Gauge, &["version"]),
    ("pacer_alerts_open", Kind::Gauge, &["kind"]),
];

const OUTCOMES: &[&str] = &[
    "accepted",
    "already_running",
    "transient_error",
    "permanent_error",
];
const SIZED_TABLES: &[&str] = &[
    "tasks",
    "task_attempts",
    "task_runs",
    "events",
    "messages",
    "skipped_runs",
    "alerts",
    "alert_deliveries",
    "alert_delivery_attempts",
    "audit_log",
    "jobs",
    "triggers",
];
const PRUNED_TABLES: &[&str] = &[
    "tasks",
    "task_attempts",
    "events",
    "messages",
    "skipped_runs",
    "alerts",
    "alert_deliveries",
    "audit_log",
];
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "other",
];

/// The values each enumerated label of a documented family may take. `job` (bounded by the jobs
/// that exist) and `route` (a template) are checked on their own.
const ENUMERATED: &[(&str, &str, &[&str])] = &[
    ("pacer_job_tasks", "state", &["pending", "processing"]),
    (
        "pacer_tasks_created_total",
        "origin",
        &["api", "trigger", "message"],
    ),
    ("pacer_messages_total", "source", &["api", "amqp"]),
    (
        "pacer_messages_total",
        "result",
        &["routed", "unrouted", "duplicate", "rejected"],
    ),
    (
        "pacer_skips_total",
        "reason",
        &[
            "misfire",
            "coalesced",
            "catch_up_limit",
            "overlap",
            "buffer_full",
        ],
    ),
    ("pacer_dispatches_total", "outcome", OUTCOMES),
    ("pacer_dispatch_duration_seconds", "outcome", OUTCOMES),
    (
        "pacer_callbacks_total",
        "status",
        &[
            "processing",
            "completed",
            "completed_with_errors",
            "failed",
            "cancelled",
        ],
    ),
    (
        "pacer_callbacks_total",
        "result",
        &["applied", "unchanged", "refused"],
    ),
    ("pacer_tasks_open", "state", &["pending", "processing"]),
    (
        "pacer_alerts_open",
        "kind",
        &[
            "overdue",
            "failed",
            "missed",
            "dispatch_errors",
            "node_lost",
            "stale",
        ],
    ),
    ("pacer_db_pool_connections", "state", &["idle", "in_use"]),
    ("pacer_rows", "table", SIZED_TABLES),
    ("pacer_bytes", "table", SIZED_TABLES),
    ("pacer_pruned_rows_total", "table", PRUNED_TABLES),
    ("pacer_prune_lag_seconds", "table", PRUNED_TABLES),
    ("pacer_http_requests_total", "method", METHODS),
    ("pacer_http_request_duration_seconds", "method", METHODS),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_strict_prometheus_text_that_counts_tasks_and_firings_with_bounded_labels() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|request| match request.path.as_str() {
        "/cycle" => Reply::accept()
            .then_callback(Duration::from_millis(50), json!({ "status": "completed" })),
        "/tick" => Reply::status(200),
        // `/solo`: accepted and never reported, so the task stays processing.
        _ => Reply::accept(),
    })
    .await;
    let settings = NodeSettings::new("obs-a").env("PACER_DATABASE__MAX_CONNECTIONS", "7");
    let node = PacerProcess::start_with(db.url(), settings).await;
    let api = node.api();
    api.put_job(
        "obs-cycle",
        &json!({ "target": { "url": downstream.url("/cycle") }, "repoll_interval": "1m" }),
    )
    .await;
    api.put_job(
        "obs-tick",
        &json!({ "target": { "url": downstream.url("/tick") }, "expect_callback": false }),
    )
    .await;
    api.put_job(
        "obs-solo",
        &json!({ "target": { "url": downstream.url("/solo") }, "overlap": "skip", "repoll_interval": "1m" }),
    )
    .await;
    let before = scrape(&node).await;

    // One task through its whole cycle, then the same report again and a conflicting one.
    let task = api.create_task_id("obs-cycle", &json!({})).await;
    api.wait_for_state(&task, "completed", SETTLE).await;
    downstream.wait_for_callbacks(1, SETTLE).await;
    api.callback(&task, &json!({ "status": "completed" }))
        .await
        .expect_status(200);
    api.callback(&task, &json!({ "status": "failed" }))
        .await
        .expect_problem(409);

    // A trigger firing every second, until two of its tasks have been dispatched (a task is
    // created ahead of its time, and would be withdrawn by the pause below).
    api.request(
        Method::POST,
        "/api/v1/jobs/obs-tick/triggers",
        Some(&json!({ "kind": "interval", "every": "1s" })),
        &[],
    )
    .await
    .expect_status(201);
    let ticks = wait_until("the trigger's tasks to be dispatched", SETTLE, || async {
        let page = api
            .request(Method::GET, "/api/v1/tasks?job=obs-tick", None, &[])
            .await;
        let tasks: Vec<Value> = page.expect_status(200)["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t["state"] != "pending")
            .collect();
        (tasks.len() >= 2).then_some(tasks)
    })
    .await;
    assert!(
        ticks.iter().all(|t| t["origin"]["kind"] == "trigger"),
        "{ticks:#?}"
    );
    api.request(Method::POST, "/api/v1/jobs/obs-tick/pause", None, &[])
        .await
        .expect_status(200);

    // A task left processing, and a second one the overlap policy skips.
    let solo = api.create_task_id("obs-solo", &json!({})).await;
    api.wait_for_state(&solo, "processing", SETTLE).await;
    let skipped = api.create_task("obs-solo", &json!({})).await;
    assert_eq!(
        skipped.expect_problem(409)["type"],
        "/problems/overlap-skipped"
    );
    let skips = api
        .request(Method::GET, "/api/v1/skips?job=obs-solo", None, &[])
        .await;
    assert_eq!(
        skips.expect_status(200)["items"][0]["reason"],
        "overlap",
        "the skipped run is recorded: {:#}",
        skips.body
    );

    // Requests whose raw form holds ids, a query or an unknown path, and one with a made-up
    // method from a caller without credentials.
    let stranger = uuid::Uuid::now_v7().to_string();
    api.request(Method::GET, &format!("/api/v1/tasks/{stranger}"), None, &[])
        .await
        .expect_problem(404);
    let unknown_path = api
        .request(
            Method::GET,
            &format!("/api/v1/nothing/{stranger}/here"),
            None,
            &[],
        )
        .await;
    assert_eq!(unknown_path.status, 404, "{:#}", unknown_path.body);
    api.request(
        Method::GET,
        &format!("/api/v1/tasks?job=obs-{stranger}"),
        None,
        &[],
    )
    .await
    .expect_status(200);
    let made_up = format!("BREW{}", uuid::Uuid::now_v7().simple()).to_uppercase();
    let brewed = api
        .with_token(None)
        .request(
            Method::from_bytes(made_up.as_bytes()).expect("a token is a method"),
            "/api/v1/jobs",
            None,
            &[],
        )
        .await;
    assert_eq!(brewed.status, 405, "{:#}", brewed.body);

    let route_counter = |route: &'static str, method: &'static str, status: &'static str| {
        Series::new(
            "pacer_http_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    let expected = [
        Series::new("pacer_tasks_created_total", &[("origin", "api")]).grew_by(2.0),
        Series::new("pacer_tasks_created_total", &[("origin", "trigger")]).grew_at_least(2.0),
        Series::new("pacer_occurrences_fired_total", &[]).grew_at_least(2.0),
        Series::new("pacer_occurrence_creation_lateness_seconds_count", &[]).grew_at_least(2.0),
        // Every first dispatch: the task created by the API and the trigger's.
        Series::new("pacer_dispatch_lateness_seconds_count", &[]).grew_at_least(3.0),
        // None went out early.
        Series::new(
            "pacer_dispatch_lateness_seconds_bucket",
            &[("le", "-0.001")],
        )
        .grew_by(0.0),
        Series::new("pacer_callback_apply_seconds_count", &[]).grew_by(1.0),
        Series::new(
            "pacer_dispatches_total",
            &[("pacer_job", "obs-cycle"), ("outcome", "accepted")],
        )
        .grew_by(1.0),
        Series::new(
            "pacer_dispatch_duration_seconds_count",
            &[("pacer_job", "obs-cycle"), ("outcome", "accepted")],
        )
        .grew_by(1.0),
        Series::new("pacer_dispatches_total", &[("pacer_job", "obs-tick")]).grew_at_least(2.0),
        Series::new(
            "pacer_callbacks_total",
            &[("status", "completed"), ("result", "applied")],
        )
        .grew_by(1.0),
        Series::new(
            "pacer_callbacks_total",
            &[("status", "completed"), ("result", "unchanged")],
        )
        .grew_by(1.0),
        Series::new(
            "pacer_callbacks_total",
            &[("status", "failed"), ("result", "refused")],
        )
        .grew_by(1.0),
        Series::new("pacer_skips_total", &[("reason", "overlap")]).grew_by(1.0),
        route_counter("/api/v1/jobs/{name}/tasks", "POST", "202").grew_by(2.0),
        route_counter("/api/v1/jobs/{name}/tasks", "POST", "409").grew_by(1.0),
        Series::new(
            "pacer_http_request_duration_seconds_count",
            &[("route", "/api/v1/jobs/{name}/tasks"), ("method", "POST")],
        )
        .grew_by(3.0),
        route_counter("/api/v1/tasks/{id}", "GET", "404").grew_by(1.0),
        route_counter("/api/v1/tasks/{id}/callback", "POST", "409").grew_by(1.0),
        route_counter("unmatched", "GET", "404").grew_at_least(1.0),
        Series::new("pacer_leader", &[]).is(1.0),
        Series::new("pacer_leader_term", &[]).at_least(1.0),
        Series::new("pacer_tasks_open", &[("state", "processing")]).at_least(1.0),
        Series::new("pacer_db_pool_max_connections", &[]).is(7.0),
        Series::new(
            "pacer_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
        )
        .is(1.0),
    ];
    let after = wait_for_metrics(&node, "the counters to follow the work", |now| {
        expected
            .iter()
            .filter_map(|check| check.failure(&before, now))
            .collect()
    })
    .await;

    assert_documented(&after);
    let pool = |state: &str| after.value("pacer_db_pool_connections", &[("state", state)]);
    assert!(
        pool("in_use") + pool("idle") <= 7.0,
        "the pool holds at most its maximum:\n{}",
        after.without_buckets()
    );
    let heartbeat = after.value("pacer_heartbeat_age_seconds", &[]);
    assert!(
        (0.0..10.0).contains(&heartbeat),
        "a live node heartbeats every 2 s, yet its heartbeat is {heartbeat} s old"
    );

    // Every label value is bounded: no ids, raw paths, query strings or made-up methods.
    let forbidden: Vec<&str> = [task.as_str(), solo.as_str(), stranger.as_str(), &made_up]
        .into_iter()
        .chain(ticks.iter().filter_map(|t| t["id"].as_str()))
        .collect();
    let routes = assert_bounded_labels(&after, &forbidden);
    for route in [
        "/api/v1/jobs/{name}",
        "/api/v1/jobs/{name}/tasks",
        "/api/v1/jobs/{name}/triggers",
        "/api/v1/tasks/{id}",
        "/api/v1/tasks/{id}/callback",
        "/api/v1/tasks",
        "unmatched",
    ] {
        assert!(
            routes.contains(route),
            "no requests counted for {route}: {routes:?}"
        );
    }

    // The open-task gauge comes down again once the task ends.
    api.cancel(&solo).await.expect_status(200);
    wait_for_metrics(&node, "no task to be processing", |now| {
        let open = now.value("pacer_tasks_open", &[("state", "processing")]);
        (open != 0.0)
            .then(|| format!("pacer_tasks_open{{state=\"processing\"}} is {open}"))
            .into_iter()
            .collect()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database_away_and_back_and_the_node_carries_on() {
    let db = TestDb::create().await;
    let mut proxy = DbProxy::start(db.url()).await;
    let downstream = FakeDownstream::start(|_| {
        Reply::accept().then_callback(Duration::from_millis(20), json!({ "status": "completed" }))
    })
    .await;
    let settings = NodeSettings::new("obs-db")
        .env("PACER_DATABASE__ACQUIRE_TIMEOUT", "1s")
        .env("PACER_CLUSTER__HEARTBEAT_INTERVAL", "500ms")
        .env("PACER_CLUSTER__LEASE_TTL", "2s");
    let mut node = PacerProcess::start_with(proxy.url(), settings).await;
    let api = node.api();
    api.put_job(
        "obs-db",
        &json!({ "target": { "url": downstream.url("/db") }, "repoll_interval": "1m" }),
    )
    .await;
    let first = api.create_task_id("obs-db", &json!({})).await;
    api.wait_for_state(&first, "completed", SETTLE).await;
    wait_for_metrics(&node, "the node to lead", |now| {
        Series::new("pacer_leader", &[])
            .is(1.0)
            .failure(now, now)
            .into_iter()
            .collect()
    })
    .await;
    let (status, ready) = readyz(&node).await;
    assert_eq!((status, &ready["database"]["status"]), (200, &json!("ok")));

    // The database goes away: its connections close and its port refuses new ones.
    proxy.refuse().await;
    assert_unready(&node).await;
    // Scraping needs no database: the node reports that it stepped down and stopped heartbeating.
    wait_for_metrics(
        &node,
        "the node to step down and its heartbeat to age",
        |now| {
            [
                Series::new("pacer_leader", &[]).is(0.0),
                Series::new("pacer_heartbeat_age_seconds", &[]).at_least(1.5),
            ]
            .iter()
            .filter_map(|check| check.failure(now, now))
            .collect()
        },
    )
    .await;
    assert_unavailable(&api).await;
    assert_eq!(
        node.exit_status(),
        None,
        "the node exited without its database"
    );

    proxy.resume().await;
    assert_serves_again(&node, &downstream).await;
    wait_for_metrics(&node, "the node to lead and heartbeat again", |now| {
        [
            Series::new("pacer_leader", &[]).is(1.0),
            Series::new("pacer_heartbeat_age_seconds", &[]).at_most(1.5),
        ]
        .iter()
        .filter_map(|check| check.failure(now, now))
        .collect()
    })
    .await;

    // Now something in front of the database (a pooler, a load balancer) takes each connection
    // and hangs up at once, as it does while the server behind it is down.
    let made = proxy.connections_made();
    proxy.hang_up();
    assert_unready(&node).await;
    assert_unavailable(&api).await;
    proxy.resume().await;
    assert_serves_again(&node, &downstream).await;
    assert!(
        proxy.connections_made() > made,
        "the node reconnected through the proxy"
    );
    assert_eq!(node.exit_status(), None, "the node is still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_answers_within_a_second_when_the_database_never_answers() {
    let db = TestDb::create().await;
    let mut proxy = DbProxy::start(db.url()).await;
    // The default acquire timeout (5 s): longer than a readiness probe waits.
    let mut node = PacerProcess::start_with(proxy.url(), NodeSettings::new("obs-hole")).await;
    let (status, ready) = readyz(&node).await;
    assert_eq!((status, &ready["database"]["status"]), (200, &json!("ok")));

    proxy.black_hole();
    for _ in 0..3 {
        let asked = Instant::now();
        let (status, body) = readyz(&node).await;
        let answered_in = asked.elapsed();
        assert!(
            answered_in < Duration::from_secs(1),
            "/readyz took {answered_in:?} against a database that never answers"
        );
        assert_eq!(status, 503, "{body:#}");
        assert_eq!(body["status"], "not ready", "{body:#}");
        assert_eq!(body["database"]["status"], "unreachable", "{body:#}");
    }

    proxy.resume().await;
    wait_until("/readyz to answer 200 again", SETTLE, || async {
        let (status, body) = readyz(&node).await;
        (status == 200 && body["database"]["status"] == "ok").then_some(())
    })
    .await;
    assert_eq!(node.exit_status(), None, "the node is still running");
}

/// Waits for `/readyz` to answer 503 naming the database unreachable, each answer within a few
/// seconds (the acquire timeout is 1 s), never the 30 s request timeout.
async fn assert_unready(node: &PacerProcess) {
    let (answered_in, unready) = wait_until("/readyz to answer 503", SETTLE, || async {
        let asked = Instant::now();
        let (status, body) = readyz(node).await;
        (status == 503).then(|| (asked.elapsed(), body))
    })
    .await;
    assert_eq!(unready["status"], "not ready", "{unready:#}");
    assert_eq!(unready["database"]["status"], "unreachable", "{unready:#}");
    assert!(
        answered_in < Duration::from_secs(5),
        "with a 1 s acquire timeout, /readyz took {answered_in:?} to answer"
    );
}

/// A request that needs the database is refused as unavailable (503), not as a server error.
async fn assert_unavailable(api: &pacer_tests::Api) {
    let refused = api.create_task("obs-db", &json!({})).await;
    assert_eq!(
        refused.expect_problem(503)["type"],
        "/problems/unavailable",
        "a request that needs the database is refused as unavailable"
    );
}

/// Waits for `/readyz` to answer 200 again, then runs a task through its cycle.
async fn assert_serves_again(node: &PacerProcess, downstream: &FakeDownstream) {
    wait_until("/readyz to answer 200 again", SETTLE, || async {
        let (status, body) = readyz(node).await;
        (status == 200 && body["database"]["status"] == "ok").then_some(())
    })
    .await;
    let api = node.api();
    let task = api.create_task_id("obs-db", &json!({})).await;
    api.wait_for_state(&task, "completed", SETTLE).await;
    downstream.wait_for_requests(&task, 1, SETTLE).await;
}

/// Every documented family is exported with its type, a HELP line and exactly its labels.
fn assert_documented(exposition: &Exposition) {
    for (name, kind, labels) in DOCUMENTED {
        let family = exposition
            .families
            .get(*name)
            .unwrap_or_else(|| panic!("{name} is not exported:\n{}", exposition.without_buckets()));
        assert_eq!(family.kind, Some(*kind), "the TYPE of {name}");
        assert!(
            family.help.as_deref().is_some_and(|h| !h.is_empty()),
            "{name} has a HELP line"
        );
        let expected: BTreeSet<&str> = labels.iter().copied().collect();
        for sample in exposition.samples_of(name) {
            let names: BTreeSet<&str> = sample
                .labels
                .keys()
                .map(String::as_str)
                .filter(|l| *l != "le")
                .collect();
            assert_eq!(names, expected, "the labels of {sample:?}");
        }
    }
}

/// No label value contains a `forbidden` string or looks like an id, every route is a
/// template, and every enumerated label holds one of its values. Returns the routes seen.
fn assert_bounded_labels<'a>(exposition: &'a Exposition, forbidden: &[&str]) -> BTreeSet<&'a str> {
    let mut routes = BTreeSet::new();
    for sample in &exposition.samples {
        let family = exposition.family_of(&sample.name);
        for (label, value) in &sample.labels {
            let what = format!("{label}={value:?} of {}", sample.name);
            assert!(
                !forbidden.iter().any(|f| value.contains(f)) && !looks_like_an_id(value),
                "{what} holds a value from a request (an id, a path or a method)"
            );
            if label == "route" {
                assert!(is_route_template(value), "{what} is not a route template");
                routes.insert(value.as_str());
            }
            if label == "status" && family == "pacer_http_requests_total" {
                assert!(
                    value.len() == 3 && value.bytes().all(|b| b.is_ascii_digit()),
                    "{what} is not an HTTP status"
                );
            } else if label == "pacer_job" && family.starts_with("pacer_dispatch") {
                assert!(
                    ["obs-cycle", "obs-tick", "obs-solo"].contains(&value.as_str()),
                    "{what} names no job"
                );
            } else if let Some((_, _, allowed)) = ENUMERATED
                .iter()
                .find(|(f, l, _)| *f == family && l == label)
            {
                assert!(
                    allowed.contains(&value.as_str()),
                    "{what} is none of {allowed:?}"
                );
            }
        }
    }
    routes
}

/// `GET /readyz`: its status and JSON body.
async fn readyz(node: &PacerProcess) -> (u16, Value) {
    let response = http_client()
        .get(format!("{}/readyz", node.url()))
        .send()
        .await
        .expect("/readyz answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("/readyz answers JSON"))
}

/// `GET /metrics` without credentials, parsed strictly; panics with the text when it is not
/// valid Prometheus text exposition.
async fn scrape(node: &PacerProcess) -> Exposition {
    let response = http_client()
        .get(format!("{}/metrics", node.url()))
        .send()
        .await
        .expect("/metrics answers");
    assert_eq!(
        response.status().as_u16(),
        200,
        "/metrics needs no credentials"
    );
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain")
            && content_type
                .split(';')
                .filter_map(|p| p.trim().strip_prefix("version="))
                .all(|v| v == "0.0.4"),
        "/metrics is text/plain (version 0.0.4), not {content_type:?}"
    );
    let text = response.text().await.expect("/metrics has a body");
    exposition::parse(&text)
        .unwrap_or_else(|e| panic!("/metrics is not valid Prometheus text: {e}\n{text}"))
}

/// Scrapes until `unmet` finds nothing wrong and returns that scrape; panics with what is still
/// wrong, and the last scrape, after [`SETTLE`].
async fn wait_for_metrics(
    node: &PacerProcess,
    what: &str,
    unmet: impl Fn(&Exposition) -> Vec<String>,
) -> Exposition {
    let deadline = Instant::now() + SETTLE;
    loop {
        let now = scrape(node).await;
        let wrong = unmet(&now);
        if wrong.is_empty() {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {SETTLE:?} waiting for {what}:\n  {}\n{}",
            wrong.join("\n  "),
            now.without_buckets()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One expectation on the sum of the samples named `name` that carry `labels`.
struct Series {
    name: &'static str,
    labels: Vec<(&'static str, &'static str)>,
    expect: Expect,
}

enum Expect {
    GrewBy(f64),
    GrewAtLeast(f64),
    Is(f64),
    AtLeast(f64),
    AtMost(f64),
}

impl Series {
    fn new(name: &'static str, labels: &[(&'static str, &'static str)]) -> Self {
        Self {
            name,
            labels: labels.to_vec(),
            expect: Expect::AtLeast(f64::NEG_INFINITY),
        }
    }

    fn grew_by(self, delta: f64) -> Self {
        self.expecting(Expect::GrewBy(delta))
    }

    fn grew_at_least(self, delta: f64) -> Self {
        self.expecting(Expect::GrewAtLeast(delta))
    }

    fn is(self, value: f64) -> Self {
        self.expecting(Expect::Is(value))
    }

    fn at_least(self, value: f64) -> Self {
        self.expecting(Expect::AtLeast(value))
    }

    fn at_most(self, value: f64) -> Self {
        self.expecting(Expect::AtMost(value))
    }

    fn expecting(mut self, expect: Expect) -> Self {
        self.expect = expect;
        self
    }

    /// What is wrong with this series in `now` (compared with `before`), if anything. A value
    /// (not a change) must be exported: a missing gauge is not zero.
    fn failure(&self, before: &Exposition, now: &Exposition) -> Option<String> {
        let was = before.value(self.name, &self.labels);
        let is = now.value(self.name, &self.labels);
        let exported = now.has(self.name, &self.labels);
        let selector = format!("{}{:?}", self.name, self.labels);
        let ok = match self.expect {
            Expect::GrewBy(delta) => is - was == delta,
            Expect::GrewAtLeast(delta) => is - was >= delta,
            Expect::Is(value) => exported && is == value,
            Expect::AtLeast(value) => exported && is >= value,
            Expect::AtMost(value) => exported && is <= value,
        };
        let wanted = match self.expect {
            Expect::GrewBy(delta) => format!("to grow by {delta}"),
            Expect::GrewAtLeast(delta) => format!("to grow by at least {delta}"),
            Expect::Is(value) => format!("to be {value}"),
            Expect::AtLeast(value) => format!("to be at least {value}"),
            Expect::AtMost(value) => format!("to be at most {value}"),
        };
        (!ok).then(|| {
            format!("{selector}: expected {wanted}; was {was}, now {is} (exported: {exported})")
        })
    }
}

/// A UUID in any of its usual spellings, or a long run of hex digits.
fn looks_like_an_id(value: &str) -> bool {
    let hex_run = value
        .split(|c: char| !c.is_ascii_hexdigit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    hex_run >= 12 || uuid::Uuid::try_parse(value).is_ok()
}

/// `unmatched`, or a path whose segments are literal words or `{placeholder}`s, never ids.
fn is_route_template(route: &str) -> bool {
    if route == "unmatched" {
        return true;
    }
    let Some(path) = route.strip_prefix('/') else {
        return false;
    };
    path.split('/').all(|segment| {
        let placeholder = segment
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .is_some_and(|name| {
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            });
        let word = !segment.is_empty()
            && segment.bytes().any(|b| b.is_ascii_alphabetic())
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !looks_like_an_id(segment);
        placeholder || word
    })
}

/// A TCP proxy in front of PostgreSQL that can take the database away: close every connection
/// through it and then refuse new ones (the port closed) or take each and hang up at once.
struct DbProxy {
    url: String,
    address: SocketAddr,
    upstream: String,
    state: Arc<Mutex<ProxyState>>,
    accept: Option<JoinHandle<()>>,
}

struct ProxyState {
    forwarding: bool,
    /// Connections accepted and never answered, while the proxy is a black hole.
    held: Option<Vec<TcpStream>>,
    connections: Vec<AbortHandle>,
    made: usize,
}

impl DbProxy {
    /// A proxy to the server of `database_url`, on a free local port.
    async fn start(database_url: &str) -> Self {
        let (scheme, rest) = database_url
            .split_once("://")
            .expect("the database URL has a scheme");
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        let (user, server) = match authority.rsplit_once('@') {
            Some((user, server)) => (format!("{user}@"), server),
            None => (String::new(), authority),
        };
        let upstream = if server.contains(':') {
            server.to_owned()
        } else {
            format!("{server}:5432")
        };
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the proxy binds a free port");
        let address = listener.local_addr().expect("the proxy has an address");
        let state = Arc::new(Mutex::new(ProxyState {
            forwarding: true,
            held: None,
            connections: Vec::new(),
            made: 0,
        }));
        let accept = tokio::spawn(accept(listener, upstream.clone(), state.clone()));
        Self {
            url: format!("{scheme}://{user}{address}{path}"),
            address,
            upstream,
            state,
            accept: Some(accept),
        }
    }

    /// The database URL through the proxy.
    fn url(&self) -> &str {
        &self.url
    }

    /// Closes every connection and the port: new connections are refused.
    async fn refuse(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            // Awaiting the aborted task drops its listener, so the port is closed on return.
            let _ = accept.await;
        }
        self.hang_up();
    }

    /// Closes every connection, and each new one as soon as it is made.
    fn hang_up(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.forwarding = false;
        for connection in state.connections.drain(..) {
            connection.abort();
        }
    }

    /// Closes every connection, then accepts each new one and never answers on it, as a
    /// server that hangs (or a firewall that drops packets after the handshake) does.
    fn black_hole(&self) {
        self.hang_up();
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .held = Some(Vec::new());
    }

    /// Forwards connections again, on the same port.
    async fn resume(&mut self) {
        {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.forwarding = true;
            state.held = None;
        }
        if self.accept.is_none() {
            let listener = TcpListener::bind(self.address)
                .await
                .expect("the proxy binds its port again");
            let accept = accept(listener, self.upstream.clone(), self.state.clone());
            self.accept = Some(tokio::spawn(accept));
        }
    }

    /// How many connections were forwarded so far.
    fn connections_made(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .made
    }
}

impl Drop for DbProxy {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        self.hang_up();
    }
}

/// Accepts connections on `listener` and relays each to `upstream` while forwarding.
async fn accept(listener: TcpListener, upstream: String, state: Arc<Mutex<ProxyState>>) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        // Deciding and registering under one lock, so `hang_up` closes every connection it
        // did not turn away.
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = state.held.as_mut() {
            held.push(client);
            continue;
        }
        if !state.forwarding {
            drop(client);
            continue;
        }
        let upstream = upstream.clone();
        let relay = tokio::spawn(async move {
            if let Ok(mut server) = TcpStream::connect(&upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
        state.connections.retain(|c| !c.is_finished());
        state.connections.push(relay.abort_handle());
        state.made += 1;
    }
}

/// A strict parser of the Prometheus text exposition format (version 0.0.4).
mod exposition {
    use std::cmp::Ordering;
    use std::collections::{BTreeMap, BTreeSet};

    /// A metric family's `# TYPE`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Kind {
        Counter,
        Gauge,
        Histogram,
        Summary,
        Untyped,
    }

    /// What the `# HELP` and `# TYPE` lines say about one family.
    #[derive(Debug, Default)]
    pub(super) struct Family {
        pub(super) kind: Option<Kind>,
        pub(super) help: Option<String>,
    }

    /// One sample line.
    #[derive(Debug, Clone)]
    pub(super) struct Sample {
        pub(super) name: String,
        pub(super) labels: BTreeMap<String, String>,
        pub(super) value: f64,
    }

    /// A whole exposition, with its text for failure messages.
    #[derive(Debug, Default)]
    pub(super) struct Exposition {
        pub(super) text: String,
        pub(super) families: BTreeMap<String, Family>,
        pub(super) samples: Vec<Sample>,
    }

    impl Exposition {
        /// The samples of family `family` (a histogram's buckets, sum and count included).
        pub(super) fn samples_of<'a>(
            &'a self,
            family: &'a str,
        ) -> impl Iterator<Item = &'a Sample> {
            self.samples
                .iter()
                .filter(move |s| family_of(&self.families, &s.name) == family)
        }

        fn matching<'a>(
            &'a self,
            name: &'a str,
            labels: &'a [(&str, &str)],
        ) -> impl Iterator<Item = &'a Sample> {
            self.samples.iter().filter(move |s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|have| have == v))
            })
        }

        /// The text without its `_bucket` lines, for shorter failure messages.
        pub(super) fn without_buckets(&self) -> String {
            self.text
                .lines()
                .filter(|line| !line.contains("_bucket{"))
                .collect::<Vec<_>>()
                .join("\n")
        }

        /// The family a sample named `name` belongs to.
        pub(super) fn family_of<'a>(&self, name: &'a str) -> &'a str {
            family_of(&self.families, name)
        }

        /// The sum of the samples named `name` carrying `labels` (others may be present too);
        /// 0 when there are none, as for a counter not yet incremented.
        pub(super) fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
            // Adding 0 turns the empty sum, -0, into 0.
            self.matching(name, labels).map(|s| s.value).sum::<f64>() + 0.0
        }

        /// Whether any sample named `name` carries `labels`.
        pub(super) fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
            self.matching(name, labels).next().is_some()
        }
    }

    /// The family a sample named `name` belongs to: a histogram's or summary's base name for its
    /// suffixed samples, else the name itself.
    fn family_of<'a>(families: &BTreeMap<String, Family>, name: &'a str) -> &'a str {
        for (suffix, kinds) in [
            ("_bucket", &[Kind::Histogram][..]),
            ("_sum", &[Kind::Histogram, Kind::Summary][..]),
            ("_count", &[Kind::Histogram, Kind::Summary][..]),
        ] {
            if let Some(base) = name.strip_suffix(suffix)
                && families
                    .get(base)
                    .and_then(|f| f.kind)
                    .is_some_and(|k| kinds.contains(&k))
            {
                return base;
            }
        }
        name
    }

    fn is_metric_name(name: &str) -> bool {
        let mut bytes = name.bytes();
        bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
    }

    fn is_label_name(name: &str) -> bool {
        let mut bytes = name.bytes();
        bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.starts_with("__")
    }

    /// A float as Go's `ParseFloat` reads it in this format (`+Inf`, `-Inf`, `NaN` included).
    fn parse_float(token: &str) -> Result<f64, String> {
        let plain = token
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
        if plain || ["+Inf", "-Inf", "Inf", "NaN"].contains(&token) {
            token
                .parse()
                .map_err(|_| format!("{token:?} is not a number"))
        } else {
            Err(format!("{token:?} is not a number"))
        }
    }

    /// Reads `text` up to an unescaped `"`, undoing `\\`, `\"` and `\n`; returns the value and
    /// the rest after the quote.
    fn quoted(text: &str) -> Result<(String, &str), String> {
        let mut value = String::new();
        let mut chars = text.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return Ok((value, &text[i + 1..])),
                '\\' => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => {
                        return Err(format!(
                            "invalid escape \\{} in a label value",
                            other.map_or(String::new(), |(_, c)| c.to_string())
                        ));
                    }
                },
                '\n' => return Err("a label value spans lines".into()),
                c => value.push(c),
            }
        }
        Err("a label value is not closed".into())
    }

    /// `{name="value",…}` at the start of `text`; returns the labels and the rest.
    fn labels(text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
        let mut labels = BTreeMap::new();
        let mut rest = text.trim_start_matches([' ', '\t']);
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                return Ok((labels, after));
            }
            let (name, after) = rest
                .split_once('=')
                .ok_or_else(|| format!("a label has no `=`: {rest:?}"))?;
            let name = name.trim_matches([' ', '\t']);
            if !is_label_name(name) {
                return Err(format!("{name:?} is not a valid label name"));
            }
            let after = after
                .trim_start_matches([' ', '\t'])
                .strip_prefix('"')
                .ok_or_else(|| format!("the value of label {name} is not quoted"))?;
            let (value, after) = quoted(after)?;
            if labels.insert(name.to_owned(), value).is_some() {
                return Err(format!("label {name} appears twice"));
            }
            let after = after.trim_start_matches([' ', '\t']);
            rest = match after.strip_prefix(',') {
                Some(next) => next.trim_start_matches([' ', '\t']),
                None if after.starts_with('}') => after,
                None => return Err(format!("expected `,` or `}}` after label {name}")),
            };
        }
    }

    /// Parses `text`, checking the grammar, that each family's lines form one group after its
    /// `# HELP`/`# TYPE`, that no series repeats, that counters are never negative, and that
    /// every histogram has cumulative buckets ending in `+Inf` that equals its `_count`.
    pub(super) fn parse(text: &str) -> Result<Exposition, String> {
        if !text.is_empty() && !text.ends_with('\n') {
            return Err("the last line does not end with a line feed".into());
        }
        let mut exposition = Exposition {
            text: text.to_owned(),
            ..Exposition::default()
        };
        let mut current: Option<String> = None;
        let mut closed = BTreeSet::new();
        let mut with_samples = BTreeSet::new();
        let mut series = BTreeSet::new();
        for (number, line) in text.lines().enumerate() {
            let at = |error: String| format!("line {}: {error}: {line:?}", number + 1);
            if line.trim_matches([' ', '\t']).is_empty() {
                continue;
            }
            let family = if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment
                    .trim_start_matches([' ', '\t'])
                    .splitn(3, [' ', '\t']);
                let keyword = words.next().unwrap_or_default();
                if keyword != "HELP" && keyword != "TYPE" {
                    continue;
                }
                let name = words.next().unwrap_or_default();
                if !is_metric_name(name) {
                    return Err(at(format!("{name:?} is not a valid metric name")));
                }
                let rest = words.next().unwrap_or_default();
                if with_samples.contains(name) {
                    return Err(at(format!("# {keyword} {name} comes after its samples")));
                }
                let entry = exposition.families.entry(name.to_owned()).or_default();
                if keyword == "HELP" {
                    let help = unescape_help(rest).map_err(at)?;
                    if entry.help.replace(help).is_some() {
                        return Err(at(format!("a second # HELP for {name}")));
                    }
                } else {
                    let kind = match rest.trim_end_matches([' ', '\t']) {
                        "counter" => Kind::Counter,
                        "gauge" => Kind::Gauge,
                        "histogram" => Kind::Histogram,
                        "summary" => Kind::Summary,
                        "untyped" => Kind::Untyped,
                        other => return Err(at(format!("unknown type {other:?}"))),
                    };
                    if entry.kind.replace(kind).is_some() {
                        return Err(at(format!("a second # TYPE for {name}")));
                    }
                }
                name.to_owned()
            } else {
                let name_end = line
                    .find(['{', ' ', '\t'])
                    .ok_or_else(|| at("a sample without a value".into()))?;
                let name = &line[..name_end];
                if !is_metric_name(name) {
                    return Err(at(format!("{name:?} is not a valid metric name")));
                }
                let (labels, rest) = match line[name_end..].strip_prefix('{') {
                    Some(rest) => labels(rest).map_err(at)?,
                    None => (BTreeMap::new(), &line[name_end..]),
                };
                if !rest.starts_with([' ', '\t']) {
                    return Err(at("no blank between the series and its value".into()));
                }
                let mut tokens = rest.split([' ', '\t']).filter(|t| !t.is_empty());
                let value = parse_float(tokens.next().unwrap_or_default()).map_err(at)?;
                if let Some(timestamp) = tokens.next() {
                    timestamp
                        .parse::<i64>()
                        .map_err(|_| at(format!("{timestamp:?} is not a timestamp")))?;
                }
                if tokens.next().is_some() {
                    return Err(at("trailing text after the value".into()));
                }
                let family = family_of(&exposition.families, name).to_owned();
                let kind = exposition.families.get(&family).and_then(|f| f.kind);
                if kind == Some(Kind::Histogram) && name == family {
                    return Err(at(format!(
                        "histogram {family} has a sample without a suffix"
                    )));
                }
                if labels.contains_key("le") != name.ends_with("_bucket")
                    && kind == Some(Kind::Histogram)
                {
                    return Err(at("only a histogram's _bucket samples carry `le`".into()));
                }
                if kind == Some(Kind::Counter) && (value.is_nan() || value < 0.0) {
                    return Err(at(format!("counter {name} is {value}")));
                }
                if !series.insert((name.to_owned(), labels.clone())) {
                    return Err(at("the same series appears twice".into()));
                }
                with_samples.insert(family.clone());
                exposition.samples.push(Sample {
                    name: name.to_owned(),
                    labels,
                    value,
                });
                family
            };
            if current.as_deref() != Some(family.as_str()) {
                if closed.contains(&family) {
                    return Err(at(format!("the lines of {family} are not one group")));
                }
                if let Some(previous) = current.replace(family) {
                    closed.insert(previous);
                }
            }
        }
        check_histograms(&exposition)?;
        Ok(exposition)
    }

    /// Undoes `\\` and `\n` in a HELP text; any other escape is an error.
    fn unescape_help(text: &str) -> Result<String, String> {
        let mut help = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('\\') => help.push('\\'),
                    Some('n') => help.push('\n'),
                    other => {
                        return Err(format!("invalid escape \\{} in HELP", other.unwrap_or(' ')));
                    }
                },
                c => help.push(c),
            }
        }
        Ok(help)
    }

    /// Each histogram series: buckets in increasing `le`, cumulative, the last `+Inf` and equal
    /// to `_count`, with a `_sum`.
    fn check_histograms(exposition: &Exposition) -> Result<(), String> {
        #[derive(Default)]
        struct Parts {
            buckets: Vec<(f64, f64)>,
            sum: Option<f64>,
            count: Option<f64>,
        }
        let histograms = exposition
            .families
            .iter()
            .filter(|(_, f)| f.kind == Some(Kind::Histogram));
        for (family, _) in histograms {
            let mut series: BTreeMap<Vec<(String, String)>, Parts> = BTreeMap::new();
            for sample in exposition.samples_of(family) {
                let key = sample
                    .labels
                    .iter()
                    .filter(|(k, _)| *k != "le")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let parts = series.entry(key).or_default();
                let suffix = &sample.name[family.len()..];
                match suffix {
                    "_bucket" => {
                        let le = parse_float(&sample.labels["le"])
                            .map_err(|e| format!("{family}: bad le: {e}"))?;
                        parts.buckets.push((le, sample.value));
                    }
                    "_sum" => parts.sum = Some(sample.value),
                    _ => parts.count = Some(sample.value),
                }
            }
            for (labels, parts) in series {
                let name = format!("{family}{labels:?}");
                let (Some(_), Some(count)) = (parts.sum, parts.count) else {
                    return Err(format!("{name} lacks its _sum or _count"));
                };
                let Some(&(last_le, last)) = parts.buckets.last() else {
                    return Err(format!("{name} has no buckets"));
                };
                if last_le != f64::INFINITY {
                    return Err(format!("{name} does not end with an le=\"+Inf\" bucket"));
                }
                for pair in parts.buckets.windows(2) {
                    if pair[0].0.partial_cmp(&pair[1].0) != Some(Ordering::Less) {
                        return Err(format!("{name}: the buckets' le do not increase"));
                    }
                    if pair[0]
                        .1
                        .partial_cmp(&pair[1].1)
                        .is_none_or(Ordering::is_gt)
                    {
                        return Err(format!("{name}: the buckets are not cumulative"));
                    }
                }
                if last != count {
                    return Err(format!(
                        "{name}: the +Inf bucket is {last}, _count is {count}"
                    ));
                }
            }
        }
        Ok(())
    }

    #[test]
    fn a_well_formed_exposition_parses_with_its_escapes_and_histograms() {
        let text = concat!(
            "# A comment.\n",
            "# HELP requests_total Requests \\\\ served,\\nby route.\n",
            "# TYPE requests_total counter\n",
            "requests_total{route=\"/a/{id}\",note=\"say \\\"hi\\\"\\\\\\n\",} 3 1700000000000\n",
            "requests_total{route=\"/b\"} 0\n",
            "\n",
            "# TYPE latency_seconds histogram\n",
            "latency_seconds_bucket{le=\"0.5\"} 1\n",
            "latency_seconds_bucket{le=\"1\"} 2\n",
            "latency_seconds_bucket{le=\"+Inf\"} 2\n",
            "latency_seconds_sum 0.75\n",
            "latency_seconds_count 2\n",
            "up_ness NaN\n",
        );
        let parsed = parse(text).expect("a valid exposition parses");
        let family = &parsed.families["requests_total"];
        assert_eq!(family.kind, Some(Kind::Counter));
        assert_eq!(
            family.help.as_deref(),
            Some("Requests \\ served,\nby route.")
        );
        assert_eq!(parsed.samples[0].labels["note"], "say \"hi\"\\\n");
        assert_eq!(parsed.value("requests_total", &[]), 3.0);
        assert_eq!(parsed.value("latency_seconds_count", &[]), 2.0);
        assert_eq!(parsed.samples_of("latency_seconds").count(), 5);
        assert!(parsed.value("up_ness", &[]).is_nan());
        assert!(!parsed.has("missing_total", &[]));
    }

    #[test]
    fn a_malformed_exposition_is_refused_with_a_reason() {
        let histogram = |buckets: &str, count: u32| {
            format!("# TYPE h histogram\n{buckets}h_sum 1\nh_count {count}\n")
        };
        let cases = [
            ("no final line feed", "a 1".to_owned(), "line feed"),
            ("a bad escape", "a{l=\"\\t\"} 1\n".into(), "invalid escape"),
            ("an unquoted value", "a{l=x} 1\n".into(), "not quoted"),
            ("an unclosed value", "a{l=\"x} 1\n".into(), "not closed"),
            ("a reserved label", "a{__l=\"x\"} 1\n".into(), "label name"),
            ("a repeated label", "a{l=\"x\",l=\"y\"} 1\n".into(), "twice"),
            ("a bad name", "1a 1\n".into(), "metric name"),
            ("a bad value", "a one\n".into(), "not a number"),
            ("no value", "a{l=\"x\"}\n".into(), "blank"),
            ("trailing text", "a 1 2 3\n".into(), "trailing"),
            (
                "a repeated series",
                "a{l=\"x\"} 1\na{l=\"x\"} 2\n".into(),
                "twice",
            ),
            (
                "split groups",
                "a 1\nb 1\na{l=\"x\"} 2\n".into(),
                "one group",
            ),
            (
                "TYPE after samples",
                "a 1\n# TYPE a gauge\n".into(),
                "after its samples",
            ),
            (
                "two TYPEs",
                "# TYPE a gauge\n# TYPE a gauge\n".into(),
                "second",
            ),
            ("an unknown type", "# TYPE a meter\n".into(), "unknown type"),
            (
                "a negative counter",
                "# TYPE c counter\nc -1\n".into(),
                "counter",
            ),
            (
                "decreasing buckets",
                histogram("h_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n", 1),
                "cumulative",
            ),
            (
                "unsorted buckets",
                histogram(
                    "h_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\n",
                    1,
                ),
                "increase",
            ),
            (
                "+Inf unlike _count",
                histogram("h_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\n", 2),
                "_count",
            ),
            ("no +Inf", histogram("h_bucket{le=\"1\"} 1\n", 1), "+Inf"),
            ("no buckets", histogram("", 1), "no buckets"),
            (
                "a bare histogram sample",
                "# TYPE h histogram\nh 1\n".into(),
                "without a suffix",
            ),
        ];
        for (case, text, reason) in cases {
            match parse(&text) {
                Ok(_) => panic!("{case}: accepted {text:?}"),
                Err(error) => assert!(error.contains(reason), "{case}: {error}"),
            }
        }
    }
}

#[test]
fn ids_and_raw_paths_are_not_route_templates() {
    for route in [
        "/api/v1/tasks/{id}",
        "/api/v1/jobs/{name}/tasks",
        "/.well-known/jwks.json",
        "/metrics",
        "unmatched",
    ] {
        assert!(is_route_template(route), "{route}");
    }
    for route in [
        "/api/v1/tasks/0190b6f2-6f1e-7c3a-9b1d-2f4e5a6b7c8d",
        "/api/v1/tasks/0190b6f26f1e7c3a9b1d2f4e5a6b7c8d/cancel",
        "/api/v1/jobs/42",
        "/api/v1/tasks?job=x",
        "api/v1/jobs",
        "/api//jobs",
        "/api/v1/jobs/{Name}",
    ] {
        assert!(!is_route_template(route), "{route}");
    }
    assert!(looks_like_an_id("0190b6f2-6f1e-7c3a-9b1d-2f4e5a6b7c8d"));
    assert!(!looks_like_an_id("completed_with_errors"));
}
