//! One trace follows a task across services: the upstream request (its `traceparent` honoured),
//! the dispatch (a `traceparent` sent downstream) and the downstream's callback, all exported over
//! OTLP/HTTP to a receiver run by the test; also with logs turned down to `warn`, since traces
//! have a filter of their own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use pacer_tests::{FakeDownstream, NodeSettings, PacerProcess, Reply, TestDb, wait_until};
use reqwest::Method;
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(20);

/// Spans received over OTLP/HTTP JSON: (trace id, span name).
async fn otlp_receiver(spans: Arc<Mutex<Vec<(String, String)>>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let app = Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let spans = spans.clone();
            async move {
                let export: Value = serde_json::from_slice(&body).expect("OTLP JSON");
                let mut received = spans.lock().expect("spans");
                for resource in export["resourceSpans"].as_array().into_iter().flatten() {
                    for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                        for span in scope["spans"].as_array().into_iter().flatten() {
                            let trace = span["traceId"].as_str().unwrap_or_default().to_lowercase();
                            received.push((
                                trace,
                                span["name"].as_str().unwrap_or_default().to_owned(),
                            ));
                        }
                    }
                }
                "{}"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    format!("http://{address}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_task_from_request_to_callback() {
    follow_one_trace("info,sqlx=warn").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_logs_down_to_warn_keeps_the_trace_and_its_traceparent() {
    // `pacer::node=info` only so the test reads the node's `listening` line; the request and
    // dispatch spans (of `pacer_api` and `pacer_engine`) are below the log level.
    follow_one_trace("warn,pacer::node=info").await;
}

/// Creates a task under a known trace, with the node's log level at `log_level`, and checks that
/// its dispatch carries that trace and that the request, dispatch and callback spans are exported.
async fn follow_one_trace(log_level: &str) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let endpoint = otlp_receiver(spans.clone()).await;
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|_| {
        Reply::accept().then_callback(Duration::from_millis(50), json!({ "status": "completed" }))
    })
    .await;
    let settings = NodeSettings::new("node-a")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("PACER_LOG__LEVEL", log_level);
    let node = PacerProcess::start_with(db.url(), settings).await;
    let api = node.api();
    api.put_job(
        "traced",
        &json!({ "target": { "url": downstream.url("/work") } }),
    )
    .await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let created = api
        .request(
            Method::POST,
            "/api/v1/jobs/traced/tasks",
            Some(&json!({})),
            &[("traceparent", &traceparent)],
        )
        .await;
    let task = created.expect_status(202)["id"]
        .as_str()
        .expect("id")
        .to_owned();
    api.wait_for_state(&task, "completed", SETTLE).await;

    let dispatch = &downstream.wait_for_requests(&task, 1, SETTLE).await[0];
    let sent = dispatch
        .header("traceparent")
        .expect("the dispatch carries a traceparent");
    assert_eq!(
        sent.split('-').nth(1),
        Some(trace_id),
        "the downstream sees the upstream's trace: {sent}"
    );
    assert_ne!(
        sent, traceparent,
        "the dispatch is a span of its own within that trace"
    );
    downstream.wait_for_callbacks(1, SETTLE).await;

    let names = wait_until("the task's spans to be exported", SETTLE, || async {
        let names: Vec<String> = spans
            .lock()
            .expect("spans")
            .iter()
            .filter(|(trace, _)| trace == trace_id)
            .map(|(_, name)| name.clone())
            .collect();
        let complete = names.iter().any(|n| n == "POST /api/v1/jobs/{name}/tasks")
            && names.iter().any(|n| n == "dispatch")
            && names
                .iter()
                .any(|n| n == "POST /api/v1/tasks/{id}/callback");
        complete.then_some(names)
    })
    .await;
    assert!(!names.is_empty());
    if log_level.starts_with("warn") {
        assert!(
            node.logs_with_message("dispatched").is_empty(),
            "the log level is in force: no info line about the dispatch"
        );
    }
    let others = spans
        .lock()
        .expect("spans")
        .iter()
        .filter(|(trace, _)| trace != trace_id)
        .count();
    eprintln!("spans of the task's trace: {names:?}; spans of other traces: {others}");
}
