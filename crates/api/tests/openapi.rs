//! The OpenAPI document: served as generated, committed as generated, true to the routes'
//! security, and the docs UI served from the binary. Odd input that a fuzzer sends gets a
//! problem, never a plain-text rejection.

#[path = "support/state.rs"]
mod support;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

struct Reply {
    status: StatusCode,
    content_type: String,
    location: Option<String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

fn router(pool: PgPool) -> Router {
    let (state, _) = support::state(pool, support::config(), vec![]);
    pacer_api::router(state)
}

async fn call(
    router: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Reply {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .expect("request");
    let response = router.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let text_header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = text_header(header::CONTENT_TYPE).unwrap_or_default();
    let location = text_header(header::LOCATION);
    let body = to_bytes(response.into_body(), 8 * 1024 * 1024)
        .await
        .expect("body")
        .to_vec();
    Reply {
        status,
        content_type,
        location,
        body,
    }
}

/// Only the status of an authorized call: the body is never read, so a stream does not hold the
/// test up.
async fn status(
    router: &Router,
    method: Method,
    uri: &str,
    token: &str,
    body: Option<&str>,
) -> StatusCode {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .expect("request");
    router
        .clone()
        .oneshot(request)
        .await
        .expect("response")
        .status()
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn the_served_document_is_the_generated_one_and_the_committed_one(pool: PgPool) {
    let router = router(pool);
    let served = call(&router, Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(served.status, StatusCode::OK);
    assert!(served.content_type.starts_with("application/json"));
    let printed = pacer_api::document_json();
    let printed_value: Value = serde_json::from_str(&printed).expect("the document is JSON");
    assert_eq!(
        served.json(),
        printed_value,
        "/api/openapi.json differs from `pacer openapi`"
    );
    assert_eq!(printed_value["openapi"], "3.1.0");

    let committed_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi/openapi.json");
    let committed = std::fs::read_to_string(committed_path).unwrap_or_default();
    assert!(
        committed == printed,
        "openapi/openapi.json is stale: run `cargo run -- openapi --output openapi/openapi.json`"
    );
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn the_docs_ui_is_served_from_the_binary(pool: PgPool) {
    let router = router(pool);
    let redirect = call(&router, Method::GET, "/docs", None, None).await;
    assert!(redirect.status.is_redirection(), "{}", redirect.status);
    assert_eq!(redirect.location.as_deref(), Some("/docs/"));

    let index = call(&router, Method::GET, "/docs/", None, None).await;
    assert_eq!(index.status, StatusCode::OK);
    assert!(index.content_type.starts_with("text/html"));
    let html = String::from_utf8_lossy(&index.body);
    assert!(html.contains("swagger-ui"), "{html}");
    // Everything the page loads comes from this server, so the UI works offline.
    for external in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
        assert!(
            !html.contains(external),
            "the page loads {external}…: {html}"
        );
    }
    for asset in [
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "swagger-ui.css",
    ] {
        assert!(html.contains(asset), "the page does not load {asset}");
        let reply = call(&router, Method::GET, &format!("/docs/{asset}"), None, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{asset}");
        assert!(
            reply.body.len() > 10_000,
            "{asset} is {} bytes",
            reply.body.len()
        );
    }
    let initializer = call(
        &router,
        Method::GET,
        "/docs/swagger-initializer.js",
        None,
        None,
    )
    .await;
    assert_eq!(initializer.status, StatusCode::OK);
    let script = String::from_utf8_lossy(&initializer.body);
    assert!(script.contains("/api/openapi.json"), "{script}");
    let missing = call(&router, Method::GET, "/docs/no-such-asset.js", None, None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.content_type, "application/problem+json");
    assert!(
        script.contains(r#""validatorUrl": "none""#),
        "the UI would send the document to an online validator: {script}"
    );
}

/// Every operation is reachable at its documented path and method, refuses a call without a
/// token exactly when the document says it needs one, and answers with a documented status.
#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn every_documented_operation_is_served_with_the_documented_security(pool: PgPool) {
    let router = router(pool);
    let document: Value = serde_json::from_str(&pacer_api::document_json()).expect("JSON");
    let paths = document["paths"].as_object().expect("paths");
    let mut checked = 0;
    for (path, item) in paths {
        if path == "/metrics" {
            continue; // served by the node beside the API
        }
        let uri = path
            .replace("{name}", "no-such-job")
            .replace("{id}", "00000000-0000-7000-8000-000000000000");
        for (method, operation) in item.as_object().expect("path item") {
            let method: Method = method.to_uppercase().parse().expect("method");
            let body = operation.get("requestBody").map(|_| "{}");
            let secured = operation
                .get("security")
                .and_then(Value::as_array)
                .is_some_and(|s| !s.is_empty());
            let reply = call(&router, method.clone(), &uri, None, body).await;
            let documented = operation["responses"]
                .as_object()
                .expect("responses")
                .contains_key(reply.status.as_str());
            assert!(
                documented,
                "{method} {path} answered an undocumented {}",
                reply.status
            );
            if secured {
                assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{method} {path}");
                assert_eq!(reply.content_type, "application/problem+json");
                let admin = support::token(&["admin"]);
                let status = status(&router, method.clone(), &uri, &admin, body).await;
                assert!(
                    operation["responses"]
                        .as_object()
                        .expect("responses")
                        .contains_key(status.as_str()),
                    "{method} {path} with a token answered an undocumented {status}"
                );
            } else {
                assert_ne!(reply.status, StatusCode::UNAUTHORIZED, "{method} {path}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 28, "only {checked} operations");
}

/// What a fuzzer sends: undecodable path segments, huge numbers, `null` bodies. Each gets a
/// problem (or works), never a plain-text rejection or a 500.
#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn odd_input_gets_a_problem(pool: PgPool) {
    let router = router(pool);
    let admin = support::token(&["admin"]);
    let admin = Some(admin.as_str());
    let job = json!({ "target": { "url": "http://downstream.test/run" } }).to_string();
    let put = call(&router, Method::PUT, "/api/v1/jobs/sync", admin, Some(&job)).await;
    assert_eq!(put.status, StatusCode::CREATED);

    for (method, uri, body, status) in [
        (
            Method::GET,
            "/api/v1/jobs/%FF",
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::GET,
            "/api/v1/tasks/%FF%FE",
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::GET,
            "/api/v1/jobs/sync/triggers/%C3%28",
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::GET,
            "/api/v1/tasks?limit=99999999999999999999999",
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::GET,
            "/api/v1/jobs/sync/triggers/00000000-0000-7000-8000-000000000000/preview?count=-1",
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::PUT,
            "/api/v1/jobs/sync",
            Some(r#"{"target": {"url": "http://a"}, "retry": {"max_attempts": 1e999}}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/api/v1/jobs/sync",
            Some(r#"{"target": {"url": "http://a"}, "retry": {"max_attempts": 99999999999}}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/api/v1/jobs/sync/tasks",
            Some("null"),
            StatusCode::ACCEPTED,
        ),
        // PostgreSQL stores no NUL character: refused up front, not failed on at the insert.
        (
            Method::GET,
            "/api/v1/skips?job=a%00b",
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::GET,
            "/api/v1/jobs?cursor=%00",
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::PUT,
            "/api/v1/jobs/sync",
            Some(r#"{"target": {"url": "http://a"}, "description": "a\u0000b"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/api/v1/jobs/sync/tasks",
            Some(r#"{"payload": {"list": ["ok", "\u0000"]}}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/api/v1/jobs/sync/tasks",
            Some(r#"{"payload": {"escaped": "\\u0000 is text"}}"#),
            StatusCode::ACCEPTED,
        ),
    ] {
        let reply = call(&router, method.clone(), uri, admin, body).await;
        assert_eq!(reply.status, status, "{method} {uri}: {:?}", reply.json());
        if !status.is_success() {
            assert_eq!(
                reply.content_type, "application/problem+json",
                "{method} {uri}"
            );
            assert_eq!(reply.json()["status"], status.as_u16(), "{method} {uri}");
        }
    }
    let reply = call(
        &router,
        Method::POST,
        "/api/v1/jobs/sync/tasks",
        admin,
        Some(r#"{"payload": {"list": ["ok", "\u0000"]}}"#),
    )
    .await;
    assert_eq!(reply.json()["errors"][0]["field"], "payload.list.1");
}

/// Each of these was allowed by the document and refused by the server; the document now states
/// the server's rule, and the server takes what the document allows.
#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn the_document_states_what_the_server_accepts(pool: PgPool) {
    let document = pacer_api::document();
    let document = serde_json::to_value(&document).expect("a JSON document");
    let schemas = &document["components"]["schemas"];
    let retry = &schemas["RetryInput"]["properties"];
    assert_eq!(
        (
            &retry["max_attempts"]["minimum"],
            &retry["max_attempts"]["maximum"]
        ),
        (&json!(1), &json!(1000))
    );
    assert_eq!(retry["multiplier"]["minimum"].as_f64(), Some(1.0));
    assert_eq!(retry["jitter"]["maximum"].as_f64(), Some(1.0));
    let triggers = schemas["TriggerInput"]["oneOf"]
        .as_array()
        .expect("one schema per kind");
    for kind in triggers {
        let limit = &kind["properties"]["catch_up_limit"];
        assert_eq!(
            (&limit["minimum"], &limit["maximum"]),
            (&json!(1), &json!(10_000))
        );
    }
    let message = &schemas["MessageInput"];
    assert_eq!(
        message["required"],
        json!(["type"]),
        "a message needs a type"
    );
    assert!(
        message["properties"]["type"].get("oneOf").is_none(),
        "`type` is not nullable: {}",
        message["properties"]["type"]
    );
    assert_eq!(message["properties"]["id"]["minLength"], json!(1));
    let tasks = &document["paths"]["/api/v1/tasks"]["get"]["parameters"];
    let cursor = tasks
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "cursor"))
        .expect("a cursor parameter");
    assert_eq!(cursor["schema"]["pattern"], "^tk\\.[A-Za-z0-9_-]{22}$");
    assert_eq!(cursor["schema"]["minLength"], json!(25));

    // What JSON Schema calls an integer, the server takes as one.
    let router = router(pool);
    let admin = support::token(&["admin"]);
    let put = call(
        &router,
        Method::PUT,
        "/api/v1/jobs/sync",
        Some(&admin),
        Some(r#"{"target": {"url": "http://a"}, "retry": {"max_attempts": 3.0}}"#),
    )
    .await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.json());
    assert_eq!(put.json()["retry"]["max_attempts"], 3);
    let trigger = call(
        &router,
        Method::POST,
        "/api/v1/jobs/sync/triggers",
        Some(&admin),
        Some(r#"{"kind": "interval", "every": "1h", "catch_up_limit": 81.0}"#),
    )
    .await;
    assert_eq!(trigger.status, StatusCode::CREATED, "{}", trigger.json());
    assert_eq!(trigger.json()["catch_up_limit"], 81);
    for body in [
        r#"{"kind": "interval", "every": "1h", "catch_up_limit": 81.5}"#,
        r#"{"kind": "interval", "every": "1h", "catch_up_limit": -1}"#,
    ] {
        let refused = call(
            &router,
            Method::POST,
            "/api/v1/jobs/sync/triggers",
            Some(&admin),
            Some(body),
        )
        .await;
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(refused.json()["errors"][0]["field"], "catch_up_limit");
    }
    // Each event id is checked, the query's too when the header is sent.
    let request = Request::builder()
        .uri("/api/v1/events?last_event_id=Inf")
        .header(header::AUTHORIZATION, format!("Bearer {admin}"))
        .header("last-event-id", "1-2")
        .body(Body::empty())
        .expect("request");
    let response = router.clone().oneshot(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
}
