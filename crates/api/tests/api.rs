//! The REST API driven in-process against the real PostgreSQL: job and task resources, the
//! callback rules, and bad input — each refused with a problem naming the field, changing nothing.

#[path = "support/state.rs"]
mod support;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

struct Api {
    router: Router,
    pool: PgPool,
}

struct Reply {
    status: StatusCode,
    content_type: String,
    location: Option<String>,
    body: Value,
}

impl Api {
    fn new(pool: PgPool) -> Self {
        let (state, _) = support::state(pool.clone(), support::config(), vec![]);
        Self {
            router: pacer_api::router(state),
            pool,
        }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<&str>,
        content_type: Option<&str>,
    ) -> Reply {
        let headers: Vec<(&str, &str)> = content_type
            .map(|c| ("content-type", c))
            .into_iter()
            .collect();
        self.call_with(method, uri, body, &headers).await
    }

    async fn call_with(
        &self,
        method: Method,
        uri: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        {
            request = request.header(
                "authorization",
                format!("Bearer {}", support::token(&["admin"])),
            );
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
            .expect("request");
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("response");
        let status = response.status();
        let header_text = |name| {
            response
                .headers()
                .get(name)
                .map(|v: &header::HeaderValue| v.to_str().expect("ascii").to_owned())
        };
        let content_type = header_text(header::CONTENT_TYPE).unwrap_or_default();
        let location = header_text(header::LOCATION);
        let bytes = to_bytes(response.into_body(), 1 << 20).await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        Reply {
            status,
            content_type,
            location,
            body,
        }
    }

    async fn json(&self, method: Method, uri: &str, body: Value) -> Reply {
        self.call(
            method,
            uri,
            Some(&body.to_string()),
            Some("application/json"),
        )
        .await
    }

    async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, None, None).await
    }

    async fn count(&self, table: &'static str) -> i64 {
        let sql = match table {
            "jobs" => "select count(*) from jobs",
            "tasks" => "select count(*) from tasks",
            _ => unreachable!("unknown table"),
        };
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }
}

fn job_body() -> Value {
    json!({
        "description": "Pull master data deltas",
        "target": { "url": "http://registry:8080/sync", "headers": { "X-Tenant": "a" } },
        "payload": { "tables": ["centers"] },
        "repoll_interval": "30s",
        "deadline": "15m",
        "timeout": "2h",
        "retry": { "max_attempts": 3 },
        "labels": { "team": "registration" },
    })
}

/// Asserts a problem+json reply and returns its field names.
fn problem(reply: &Reply, status: StatusCode, kind: &str) -> Vec<String> {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.content_type, "application/problem+json");
    assert_eq!(reply.body["type"], kind, "{}", reply.body);
    assert_eq!(reply.body["status"], status.as_u16());
    assert!(reply.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
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

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn jobs_are_created_replaced_idempotently_listed_and_deleted(pool: PgPool) {
    let api = Api::new(pool);
    let created = api
        .json(Method::PUT, "/api/v1/jobs/master-data", job_body())
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(
        created.location.as_deref(),
        Some("/api/v1/jobs/master-data")
    );
    assert_eq!(created.body["version"], 1);
    assert_eq!(created.body["repoll_interval"], "30s");
    assert_eq!(
        created.body["dispatch_timeout"], "10s",
        "defaults are filled in"
    );
    assert_eq!(created.body["retry"]["max_attempts"], 3);
    assert_eq!(created.body["expect_callback"], true);

    let same = api
        .json(Method::PUT, "/api/v1/jobs/master-data", job_body())
        .await;
    assert_eq!(same.status, StatusCode::OK);
    assert_eq!(
        same.body["version"], 1,
        "the same definition changes nothing"
    );
    assert_eq!(same.body["updated_at"], created.body["updated_at"]);

    let mut changed = job_body();
    changed["repoll_interval"] = json!("1m");
    let replaced = api
        .json(Method::PUT, "/api/v1/jobs/master-data", changed)
        .await;
    assert_eq!(replaced.body["version"], 2);
    assert_eq!(
        api.get("/api/v1/jobs/master-data").await.body["repoll_interval"],
        "1m"
    );

    api.json(Method::PUT, "/api/v1/jobs/another", job_body())
        .await;
    let page = api.get("/api/v1/jobs?limit=1").await;
    assert_eq!(page.body["items"][0]["name"], "another");
    let cursor = page.body["next_cursor"].as_str().expect("a cursor");
    assert_ne!(cursor, "another", "cursors are opaque");
    let next = api
        .get(&format!("/api/v1/jobs?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(next.body["items"][0]["name"], "master-data");
    assert_eq!(next.body["next_cursor"], Value::Null, "the last page");

    let task = api
        .call(Method::POST, "/api/v1/jobs/master-data/tasks", None, None)
        .await;
    assert_eq!(task.status, StatusCode::ACCEPTED);
    let refused = api
        .call(Method::DELETE, "/api/v1/jobs/master-data", None, None)
        .await;
    problem(
        &refused,
        StatusCode::CONFLICT,
        "/problems/job-has-open-tasks",
    );
    let deleted = api
        .call(
            Method::DELETE,
            "/api/v1/jobs/master-data?cancel_open_tasks=true",
            None,
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(deleted.body["cancelled_tasks"], 1);
    problem(
        &api.get("/api/v1/jobs/master-data").await,
        StatusCode::NOT_FOUND,
        "/problems/not-found",
    );
    let history = api
        .get(&format!(
            "/api/v1/tasks/{}",
            task.body["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(history.body["state"], "cancelled");
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn tasks_are_created_once_per_key_listed_newest_first_and_reported_on(pool: PgPool) {
    let api = Api::new(pool);
    api.json(Method::PUT, "/api/v1/jobs/sync", job_body()).await;
    let body = json!({ "payload": { "since": "2026-01-01" }, "idempotency_key": "evt-1" });
    let first = api
        .json(Method::POST, "/api/v1/jobs/sync/tasks", body.clone())
        .await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    let id = first.body["id"].as_str().expect("id").to_owned();
    assert_eq!(first.location, Some(format!("/api/v1/tasks/{id}")));
    assert_eq!(first.body["state"], "pending");
    assert_eq!(first.body["origin"]["kind"], "api");
    assert_eq!(
        first.body["payload"],
        json!({ "tables": ["centers"], "since": "2026-01-01" })
    );
    assert!(first.body["deadline_at"].is_string());

    let again = api
        .json(Method::POST, "/api/v1/jobs/sync/tasks", body)
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["id"], id.as_str());
    let keyed = [("idempotency-key", "evt-2")];
    let by_header = api
        .call_with(Method::POST, "/api/v1/jobs/sync/tasks", None, &keyed)
        .await;
    assert_eq!(by_header.status, StatusCode::ACCEPTED);
    assert_eq!(by_header.body["idempotency_key"], "evt-2");
    let by_header_again = api
        .call_with(Method::POST, "/api/v1/jobs/sync/tasks", None, &keyed)
        .await;
    assert_eq!(by_header_again.status, StatusCode::OK);
    assert_eq!(by_header_again.body["id"], by_header.body["id"]);
    let clash = api
        .call_with(
            Method::POST,
            "/api/v1/jobs/sync/tasks",
            Some(r#"{"idempotency_key": "evt-3"}"#),
            &[
                ("idempotency-key", "evt-4"),
                ("content-type", "application/json"),
            ],
        )
        .await;
    assert_eq!(
        problem(
            &clash,
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation"
        ),
        ["idempotency_key"]
    );
    assert_eq!(api.count("tasks").await, 2);

    let page = api.get("/api/v1/tasks?job=sync&limit=1").await;
    assert_eq!(
        page.body["items"][0]["id"], by_header.body["id"],
        "newest first"
    );
    let cursor = page.body["next_cursor"].as_str().expect("cursor");
    let rest = api
        .get(&format!("/api/v1/tasks?job=sync&limit=1&cursor={cursor}"))
        .await;
    assert_eq!(rest.body["items"][0]["id"], id.as_str());
    assert_eq!(
        api.get("/api/v1/tasks?state=completed").await.body["items"],
        json!([])
    );

    let uri = format!("/api/v1/tasks/{id}/callback");
    let progress = api
        .json(
            Method::POST,
            &uri,
            json!({ "status": "processing", "progress": { "done": 1, "total": 4 } }),
        )
        .await;
    assert_eq!(progress.status, StatusCode::OK);
    assert_eq!(progress.body["state"], "processing");
    assert_eq!(progress.body["progress"], json!({ "done": 1, "total": 4 }));
    let done = api
        .json(
            Method::POST,
            &uri,
            json!({ "status": "completed", "result": { "rows": 4 } }),
        )
        .await;
    assert_eq!(done.body["state"], "completed");
    let repeat = api
        .json(
            Method::POST,
            &uri,
            json!({ "status": "completed", "result": { "rows": 999 } }),
        )
        .await;
    assert_eq!(repeat.status, StatusCode::OK);
    assert_eq!(
        repeat.body["result"],
        json!({ "rows": 4 }),
        "a repeat changes nothing"
    );
    assert_eq!(repeat.body["finished_at"], done.body["finished_at"]);
    let late = api
        .json(Method::POST, &uri, json!({ "status": "failed" }))
        .await;
    problem(&late, StatusCode::CONFLICT, "/problems/task-terminal");
    assert_eq!(late.body["state"], "completed");
    assert_eq!(late.body["task"]["id"], id.as_str());
    let cancel = api
        .call(
            Method::POST,
            &format!("/api/v1/tasks/{id}/cancel"),
            None,
            None,
        )
        .await;
    problem(&cancel, StatusCode::CONFLICT, "/problems/task-terminal");
    let detail = api.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(detail.body["state"], "completed");
    assert_eq!(detail.body["attempts"], json!([]));
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn bad_job_definitions_are_refused_naming_the_field_and_change_nothing(pool: PgPool) {
    let api = Api::new(pool);
    let created = api.json(Method::PUT, "/api/v1/jobs/sync", job_body()).await;
    assert_eq!(created.status, StatusCode::CREATED);

    let put = |body: &'static str| {
        api.call(
            Method::PUT,
            "/api/v1/jobs/sync",
            Some(body),
            Some("application/json"),
        )
    };
    problem(
        &put("{\"target\": ").await,
        StatusCode::BAD_REQUEST,
        "/problems/malformed-json",
    );
    problem(
        &put("").await,
        StatusCode::BAD_REQUEST,
        "/problems/malformed-json",
    );

    let cases: [(Value, &str); 9] = [
        (
            json!({ "target": { "url": "http://a" }, "colour": "red" }),
            "colour",
        ),
        (
            json!({ "target": { "url": "http://a", "verb": "GET" } }),
            "target.verb",
        ),
        (json!({ "description": "no target" }), "target"),
        (
            json!({ "target": { "url": "http://a" }, "repoll_interval": "30 parsecs" }),
            "repoll_interval",
        ),
        (
            json!({ "target": { "url": "http://a" }, "timeout": 30 }),
            "timeout",
        ),
        (
            json!({ "target": { "url": "http://a" }, "retry": { "max_attempts": -1 } }),
            "retry.max_attempts",
        ),
        (
            json!({ "target": { "url": "http://a" }, "retry": { "max_attempts": 1000000 } }),
            "retry.max_attempts",
        ),
        (json!({ "target": { "url": "not a url" } }), "target.url"),
        (
            json!({ "target": { "url": "http://a" }, "dispatch_timeout": "0s" }),
            "dispatch_timeout",
        ),
    ];
    for (body, field) in cases {
        let reply = api
            .json(Method::PUT, "/api/v1/jobs/sync", body.clone())
            .await;
        let fields = problem(
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation",
        );
        assert_eq!(fields, [field], "{body}");
    }
    let bad_name = api.json(Method::PUT, "/api/v1/jobs/-bad", job_body()).await;
    assert_eq!(
        problem(
            &bad_name,
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation"
        ),
        ["name"]
    );
    let form = api
        .call(
            Method::PUT,
            "/api/v1/jobs/sync",
            Some("a=b"),
            Some("application/x-www-form-urlencoded"),
        )
        .await;
    problem(
        &form,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "/problems/unsupported-media-type",
    );
    let huge = json!({ "target": { "url": "http://a" }, "payload": { "blob": "x".repeat(5000) } });
    problem(
        &api.json(Method::PUT, "/api/v1/jobs/sync", huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "/problems/payload-too-large",
    );

    assert_eq!(api.count("jobs").await, 1);
    let job = api.get("/api/v1/jobs/sync").await;
    assert_eq!(job.body["version"], 1, "nothing was written");
    assert_eq!(job.body["updated_at"], created.body["updated_at"]);
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn bad_task_requests_are_refused_and_change_nothing(pool: PgPool) {
    let api = Api::new(pool);
    api.json(Method::PUT, "/api/v1/jobs/sync", job_body()).await;
    let task = api
        .call(Method::POST, "/api/v1/jobs/sync/tasks", None, None)
        .await;
    let id = task.body["id"].as_str().expect("id").to_owned();
    let before = api.get(&format!("/api/v1/tasks/{id}")).await.body;

    problem(
        &api.call(Method::POST, "/api/v1/jobs/nope/tasks", None, None)
            .await,
        StatusCode::NOT_FOUND,
        "/problems/not-found",
    );
    let bad_payload = api
        .json(
            Method::POST,
            "/api/v1/jobs/sync/tasks",
            json!({ "payload": [1] }),
        )
        .await;
    assert_eq!(
        problem(
            &bad_payload,
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation"
        ),
        ["payload"]
    );
    let bad_time = api
        .json(
            Method::POST,
            "/api/v1/jobs/sync/tasks",
            json!({ "not_before": "tomorrow" }),
        )
        .await;
    assert_eq!(
        problem(
            &bad_time,
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation"
        ),
        ["not_before"]
    );
    let bad_key = api
        .json(
            Method::POST,
            "/api/v1/jobs/sync/tasks",
            json!({ "idempotency_key": "" }),
        )
        .await;
    assert_eq!(
        problem(
            &bad_key,
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation"
        ),
        ["idempotency_key"]
    );

    let not_uuid = api.get("/api/v1/tasks/12345").await;
    assert_eq!(
        problem(
            &not_uuid,
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation"
        ),
        ["id"]
    );
    let unknown = api
        .get("/api/v1/tasks/01940000-0000-7000-8000-000000000000")
        .await;
    problem(&unknown, StatusCode::NOT_FOUND, "/problems/not-found");
    let unknown_callback = api
        .json(
            Method::POST,
            "/api/v1/tasks/01940000-0000-7000-8000-000000000000/callback",
            json!({ "status": "completed" }),
        )
        .await;
    problem(
        &unknown_callback,
        StatusCode::NOT_FOUND,
        "/problems/not-found",
    );

    let uri = format!("/api/v1/tasks/{id}/callback");
    let bad_status = api
        .json(Method::POST, &uri, json!({ "status": "done" }))
        .await;
    assert_eq!(
        problem(
            &bad_status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation"
        ),
        ["status"]
    );
    let extra = api
        .json(
            Method::POST,
            &uri,
            json!({ "status": "completed", "extra": 1 }),
        )
        .await;
    assert_eq!(
        problem(
            &extra,
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation"
        ),
        ["extra"]
    );
    let empty = api
        .call(Method::POST, &uri, None, Some("application/json"))
        .await;
    problem(&empty, StatusCode::BAD_REQUEST, "/problems/malformed-json");

    for query in [
        "limit=0",
        "limit=-5",
        "limit=100000",
        "limit=ten",
        "state=done",
        "cursor=xyz",
        "stat=failed",
    ] {
        let reply = api.get(&format!("/api/v1/tasks?{query}")).await;
        problem(
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation",
        );
    }
    problem(
        &api.get("/api/v1/nothing-here").await,
        StatusCode::NOT_FOUND,
        "/problems/not-found",
    );
    let wrong_method = api.call(Method::DELETE, "/api/v1/tasks", None, None).await;
    problem(
        &wrong_method,
        StatusCode::METHOD_NOT_ALLOWED,
        "/problems/method-not-allowed",
    );

    assert_eq!(api.count("tasks").await, 1);
    assert_eq!(
        api.get(&format!("/api/v1/tasks/{id}")).await.body,
        before,
        "nothing changed"
    );
}

/// Task creation keeps job definitions between requests; a kept definition must never be acted on
/// once the job has changed, however it changed (here partly behind this node's back, in SQL, as
/// another node would).
#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn task_creation_always_follows_the_current_job_definition(pool: PgPool) {
    let api = Api::new(pool.clone());
    api.json(Method::PUT, "/api/v1/jobs/sync", job_body()).await;
    let create = || api.call(Method::POST, "/api/v1/jobs/sync/tasks", None, None);
    let first = create().await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    assert_eq!(first.body["payload"], json!({ "tables": ["centers"] }));
    // The task as the creating request answered it is the task as stored.
    let id = first.body["id"].as_str().expect("id");
    let mut stored = api.get(&format!("/api/v1/tasks/{id}")).await.body;
    for detail in ["attempts", "history", "retries"] {
        stored.as_object_mut().expect("task").remove(detail);
    }
    assert_eq!(first.body, stored);

    let mut changed = job_body();
    changed["payload"] = json!({ "tables": ["sites"] });
    changed.as_object_mut().expect("job").remove("deadline");
    let put = api
        .json(Method::PUT, "/api/v1/jobs/sync", changed.clone())
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    let second = create().await;
    assert_eq!(second.status, StatusCode::ACCEPTED, "{}", second.body);
    assert_eq!(second.body["payload"], json!({ "tables": ["sites"] }));
    assert!(second.body["deadline_at"].is_null(), "{}", second.body);

    sqlx::query("update jobs set paused = true where name = 'sync'")
        .execute(&pool)
        .await
        .expect("pause behind the node's back");
    problem(
        &create().await,
        StatusCode::CONFLICT,
        "/problems/job-paused",
    );
    api.call(Method::POST, "/api/v1/jobs/sync/resume", None, None)
        .await;
    assert_eq!(create().await.status, StatusCode::ACCEPTED);

    // An overlap policy that refuses a second open task takes effect at once.
    changed["overlap"] = json!("skip");
    let put = api.json(Method::PUT, "/api/v1/jobs/sync", changed).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    problem(
        &create().await,
        StatusCode::CONFLICT,
        "/problems/overlap-skipped",
    );

    let before = api.count("tasks").await;
    sqlx::query("delete from jobs where name = 'sync'")
        .execute(&pool)
        .await
        .expect("delete behind the node's back");
    problem(
        &create().await,
        StatusCode::NOT_FOUND,
        "/problems/not-found",
    );
    api.json(Method::PUT, "/api/v1/jobs/sync", job_body()).await;
    let recreated = create().await;
    assert_eq!(recreated.status, StatusCode::ACCEPTED, "{}", recreated.body);
    assert_eq!(api.count("tasks").await, before + 1);
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn every_list_pages_alike_and_refuses_a_cursor_it_did_not_give(pool: PgPool) {
    let api = Api::new(pool);
    for name in ["a", "b", "c"] {
        let created = api
            .json(Method::PUT, &format!("/api/v1/jobs/{name}"), job_body())
            .await;
        assert!(created.status.is_success(), "{}", created.body);
        api.call(
            Method::POST,
            &format!("/api/v1/jobs/{name}/tasks"),
            None,
            None,
        )
        .await;
        api.json(
            Method::POST,
            "/api/v1/jobs/a/triggers",
            json!({ "kind": "interval", "every": format!("{}m", name.len() + 1) }),
        )
        .await;
    }
    let task_cursor = api.get("/api/v1/tasks?limit=1").await.body["next_cursor"]
        .as_str()
        .expect("a task cursor")
        .to_owned();
    let lists = [
        "/api/v1/jobs",
        "/api/v1/jobs/a/triggers",
        "/api/v1/tasks",
        "/api/v1/messages",
        "/api/v1/alerts",
        "/api/v1/skips",
        "/api/v1/audit",
    ];
    for list in lists {
        // A full page has a cursor, and the last page none, without an empty page between.
        let page = api.get(&format!("{list}?limit=1")).await;
        assert_eq!(page.status, StatusCode::OK, "{list}: {}", page.body);
        let items = page.body["items"].as_array().map_or(0, Vec::len);
        let mut seen = items;
        let mut cursor = page.body["next_cursor"].as_str().map(str::to_owned);
        while let Some(next) = cursor {
            let page = api.get(&format!("{list}?limit=1&cursor={next}")).await;
            assert_eq!(page.status, StatusCode::OK, "{list}: {}", page.body);
            let count = page.body["items"].as_array().map_or(0, Vec::len);
            assert_eq!(count, 1, "{list}: no empty page follows a cursor");
            seen += count;
            cursor = page.body["next_cursor"].as_str().map(str::to_owned);
        }
        let all = api.get(&format!("{list}?limit=500")).await;
        assert_eq!(all.body["next_cursor"], Value::Null, "{list}");
        assert_eq!(
            Some(seen),
            all.body["items"].as_array().map(Vec::len),
            "{list}: paging one by one sees every item once"
        );
        for bad in ["", "-1", "x", "another", "%00", "AAAAA", "a%20b"] {
            let reply = api.get(&format!("{list}?cursor={bad}")).await;
            assert_eq!(
                problem(
                    &reply,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "/problems/validation"
                ),
                ["cursor"],
                "{list}?cursor={bad}"
            );
        }
        let twice = api.get(&format!("{list}?limit=1&limit=2")).await;
        assert_eq!(twice.status, StatusCode::UNPROCESSABLE_ENTITY, "{list}");
    }
    // A cursor means a position of its own list: a task's is no message's.
    let reply = api
        .get(&format!("/api/v1/messages?cursor={task_cursor}"))
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
}
