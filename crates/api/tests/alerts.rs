//! The alerts API driven in-process against the real PostgreSQL: listing with filters,
//! acknowledging and resolving (with their idempotence and the audit log), and the documented
//! problem for every bad id, state, kind, cursor and body.

#[path = "support/state.rs"]
mod support;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;
use uuid::Uuid;

struct Reply {
    status: StatusCode,
    content_type: String,
    body: Value,
}

async fn call(
    router: &Router,
    method: Method,
    uri: &str,
    body: Option<&str>,
    roles: &[&str],
) -> Reply {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {}", support::token(roles)));
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .expect("request");
    let response = router.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().expect("ascii").to_owned())
        .unwrap_or_default();
    let bytes = to_bytes(response.into_body(), 1 << 20).await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    Reply {
        status,
        content_type,
        body,
    }
}

/// Asserts a problem+json reply of `kind` and returns the fields it names.
fn problem(reply: &Reply, status: StatusCode, kind: &str) -> Vec<String> {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.content_type, "application/problem+json");
    assert_eq!(reply.body["type"], kind, "{}", reply.body);
    assert_eq!(reply.body["status"], status.as_u16());
    reply.body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Writes an alert as the leader's evaluation would.
async fn insert_alert(pool: &PgPool, kind: &str, job: &str, subject: &str) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "insert into alerts (id, kind, severity, subject_key, job_name, summary)
         values ($1, $2, 'warning', $3, $4, 'something is wrong')",
    )
    .bind(id)
    .bind(kind)
    .bind(subject)
    .bind(job)
    .execute(pool)
    .await
    .expect("alert inserted");
    id
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn alerts_are_listed_acknowledged_and_resolved_once(pool: PgPool) {
    let (state, _) = support::state(pool.clone(), support::config(), vec![]);
    let router = pacer_api::router(state);
    let missed = insert_alert(&pool, "missed", "sync", "job:sync").await;
    let errors = insert_alert(&pool, "dispatch_errors", "other", "job:other").await;

    // A second open alert for the same kind and subject is refused by the database itself.
    let duplicate = sqlx::query(
        "insert into alerts (id, kind, severity, subject_key, summary)
         values ($1, 'missed', 'warning', 'job:sync', 'again')",
    )
    .bind(Uuid::now_v7())
    .execute(&pool)
    .await;
    assert!(duplicate.is_err(), "one open alert per kind and subject");

    let all = call(&router, Method::GET, "/api/v1/alerts", None, &["operator"]).await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    let ids: Vec<&str> = all.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|a| a["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        ids,
        [errors.to_string(), missed.to_string()],
        "newest first"
    );
    assert_eq!(all.body["next_cursor"], Value::Null);
    let first = &all.body["items"][1];
    assert_eq!(first["kind"], "missed");
    assert_eq!(first["severity"], "warning");
    assert_eq!(first["subject"], json!({ "task": null, "job": "sync" }));
    assert_eq!(first["state"], "open");
    assert_eq!(first["count"], 1);
    assert_eq!(first["acked_by"], Value::Null);

    let page = call(
        &router,
        Method::GET,
        "/api/v1/alerts?limit=1",
        None,
        &["operator"],
    )
    .await;
    assert_eq!(page.body["items"].as_array().map(Vec::len), Some(1));
    let cursor = page.body["next_cursor"]
        .as_str()
        .expect("a full page has a cursor");
    let next = call(
        &router,
        Method::GET,
        &format!("/api/v1/alerts?limit=1&cursor={cursor}"),
        None,
        &["operator"],
    )
    .await;
    assert_eq!(next.body["items"][0]["id"], missed.to_string());

    let by_kind = call(
        &router,
        Method::GET,
        "/api/v1/alerts?state=open&kind=missed&job=sync",
        None,
        &["operator"],
    )
    .await;
    assert_eq!(by_kind.body["items"].as_array().map(Vec::len), Some(1));

    // Acknowledge with a note: recorded with who did it, and again changes nothing.
    let ack_uri = format!("/api/v1/alerts/{missed}/ack");
    let acked = call(
        &router,
        Method::POST,
        &ack_uri,
        Some(r#"{"note":"looking"}"#),
        &["operator"],
    )
    .await;
    assert_eq!(acked.status, StatusCode::OK, "{}", acked.body);
    assert_eq!(acked.body["state"], "acked");
    assert_eq!(acked.body["acked_by"], "tester");
    assert_eq!(acked.body["ack_note"], "looking");
    let again = call(&router, Method::POST, &ack_uri, None, &["operator"]).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["acked_at"], acked.body["acked_at"]);

    let detail = call(
        &router,
        Method::GET,
        &format!("/api/v1/alerts/{missed}"),
        None,
        &["operator"],
    )
    .await;
    assert_eq!(detail.status, StatusCode::OK);
    assert_eq!(detail.body["deliveries"], json!([]));
    assert_eq!(detail.body["state"], "acked");

    // Resolve: final. Resolving again is a no-op; acknowledging a resolved alert is a conflict.
    let resolve_uri = format!("/api/v1/alerts/{missed}/resolve");
    let resolved = call(
        &router,
        Method::POST,
        &resolve_uri,
        Some(r#"{"note":"fixed upstream"}"#),
        &["operator"],
    )
    .await;
    assert_eq!(resolved.status, StatusCode::OK, "{}", resolved.body);
    assert_eq!(resolved.body["state"], "resolved");
    assert_eq!(resolved.body["resolve_note"], "fixed upstream");
    let again = call(&router, Method::POST, &resolve_uri, None, &["operator"]).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["resolved_at"], resolved.body["resolved_at"]);
    let late_ack = call(&router, Method::POST, &ack_uri, None, &["operator"]).await;
    problem(&late_ack, StatusCode::CONFLICT, "/problems/alert-resolved");

    // Once resolved, the same subject may open a new alert.
    insert_alert(&pool, "missed", "sync", "job:sync").await;
    let open = call(
        &router,
        Method::GET,
        "/api/v1/alerts?state=open",
        None,
        &["operator"],
    )
    .await;
    assert_eq!(open.body["items"].as_array().map(Vec::len), Some(2));

    let audit: Vec<String> = sqlx::query_scalar("select action from audit_log order by id")
        .fetch_all(&pool)
        .await
        .expect("audit");
    assert_eq!(
        audit,
        ["ack_alert", "resolve_alert"],
        "one entry per change"
    );
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn bad_alert_requests_get_problems_and_change_nothing(pool: PgPool) {
    let (state, _) = support::state(pool.clone(), support::config(), vec![]);
    let router = pacer_api::router(state);
    let id = insert_alert(&pool, "failed", "sync", "task:x").await;
    let operator = &["operator"];

    let bad = call(
        &router,
        Method::GET,
        "/api/v1/alerts?state=closed&kind=late&limit=0&cursor=x",
        None,
        operator,
    )
    .await;
    assert_eq!(
        problem(
            &bad,
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation"
        ),
        ["state", "kind", "cursor", "limit"]
    );
    let unknown = call(
        &router,
        Method::GET,
        "/api/v1/alerts?colour=red",
        None,
        operator,
    )
    .await;
    problem(
        &unknown,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/validation",
    );

    for uri in [
        "/api/v1/alerts/not-a-uuid",
        "/api/v1/alerts/not-a-uuid/ack",
        "/api/v1/alerts/not-a-uuid/resolve",
    ] {
        let method = if uri.ends_with("uuid") {
            Method::GET
        } else {
            Method::POST
        };
        let reply = call(&router, method, uri, None, operator).await;
        assert_eq!(
            problem(
                &reply,
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/validation"
            ),
            ["id"],
            "{uri}"
        );
    }
    let missing = Uuid::now_v7();
    for uri in [
        format!("/api/v1/alerts/{missing}"),
        format!("/api/v1/alerts/{missing}/ack"),
        format!("/api/v1/alerts/{missing}/resolve"),
    ] {
        let method = if uri.ends_with(&missing.to_string()) {
            Method::GET
        } else {
            Method::POST
        };
        let reply = call(&router, method, &uri, None, operator).await;
        problem(&reply, StatusCode::NOT_FOUND, "/problems/not-found");
    }

    let ack_uri = format!("/api/v1/alerts/{id}/ack");
    let unknown_field = call(
        &router,
        Method::POST,
        &ack_uri,
        Some(r#"{"comment":"x"}"#),
        operator,
    )
    .await;
    problem(
        &unknown_field,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/validation",
    );
    let long = json!({ "note": "x".repeat(2001) }).to_string();
    let too_long = call(&router, Method::POST, &ack_uri, Some(&long), operator).await;
    assert_eq!(
        problem(
            &too_long,
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation"
        ),
        ["note"]
    );
    let malformed = call(&router, Method::POST, &ack_uri, Some("{"), operator).await;
    problem(
        &malformed,
        StatusCode::BAD_REQUEST,
        "/problems/malformed-json",
    );
    let upstream = call(&router, Method::POST, &ack_uri, None, &["upstream"]).await;
    problem(&upstream, StatusCode::FORBIDDEN, "/problems/forbidden");

    let state: String = sqlx::query_scalar("select state from alerts where id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("state");
    assert_eq!(state, "open", "no bad request changed the alert");

    // A job may route only to configured sinks (here only the built-in `log`).
    let job = json!({
        "target": { "url": "http://svc/run" },
        "alerts": { "on_failure": ["log", "pager"], "on_overdue": ["bad name!"], "severity": { "overdue": "loud" } },
    });
    let refused = call(
        &router,
        Method::PUT,
        "/api/v1/jobs/sync",
        Some(&job.to_string()),
        &["admin"],
    )
    .await;
    problem(
        &refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/validation",
    );
    let job = json!({
        "target": { "url": "http://svc/run" },
        "alerts": { "on_failure": ["log", "pager"], "on_overdue": ["bad name!"] },
    });
    let refused = call(
        &router,
        Method::PUT,
        "/api/v1/jobs/sync",
        Some(&job.to_string()),
        &["admin"],
    )
    .await;
    assert_eq!(
        problem(
            &refused,
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation"
        ),
        ["alerts.on_overdue[0]"]
    );
    let job = json!({
        "target": { "url": "http://svc/run" },
        "alerts": { "on_failure": ["log", "pager"], "severity": { "failed": "warning" } },
    });
    let refused = call(
        &router,
        Method::PUT,
        "/api/v1/jobs/sync",
        Some(&job.to_string()),
        &["admin"],
    )
    .await;
    assert_eq!(
        problem(
            &refused,
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation"
        ),
        ["alerts.on_failure[1]"]
    );
    let job = json!({
        "target": { "url": "http://svc/run" },
        "alerts": { "on_failure": ["log"], "severity": { "failed": "warning" } },
    });
    let created = call(
        &router,
        Method::PUT,
        "/api/v1/jobs/sync",
        Some(&job.to_string()),
        &["admin"],
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(
        created.body["alerts"],
        json!({ "on_failure": ["log"], "severity": { "failed": "warning" } })
    );
}
