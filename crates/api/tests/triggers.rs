//! Triggers, pausing and the cluster view through the API, in-process on the real PostgreSQL;
//! bad trigger definitions are refused naming the field, with nothing written.

#[path = "support/state.rs"]
mod support;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

struct Api(Router);

impl Api {
    fn new(pool: PgPool) -> Self {
        let config = pacer_api::ApiConfig {
            body_limit: 64 * 1024,
            ..support::config()
        };
        Self(pacer_api::router(support::state(pool, config, vec![]).0))
    }

    async fn send(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri).header(
            "authorization",
            format!("Bearer {}", support::token(&["admin"])),
        );
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let response = self
            .0
            .clone()
            .oneshot(request.body(body).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let bytes = to_bytes(response.into_body(), 1 << 20).await.expect("body");
        (
            status,
            if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("json")
            },
        )
    }
}

async fn triggers_in_db(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from triggers")
        .fetch_one(pool)
        .await
        .expect("count")
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn triggers_are_defined_previewed_paused_and_removed(pool: PgPool) {
    let api = Api::new(pool.clone());
    api.send(
        Method::PUT,
        "/api/v1/jobs/sync",
        Some(json!({ "target": { "url": "http://a" } })),
    )
    .await;

    let (status, cron) = api
        .send(
            Method::POST,
            "/api/v1/jobs/sync/triggers",
            Some(json!({ "kind": "cron", "expression": "0 */15 * * * *", "timezone": "Asia/Kolkata" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{cron}");
    assert_eq!(cron["misfire"], "fire_once");
    assert_eq!(cron["misfire_grace"], "1m");
    assert!(cron["next_fire_at"].is_string());
    let id = cron["id"].as_str().expect("id").to_owned();
    let base = format!("/api/v1/jobs/sync/triggers/{id}");

    let (status, preview) = api
        .send(Method::GET, &format!("{base}/preview?count=3"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let times: Vec<chrono::DateTime<chrono::Utc>> =
        serde_json::from_value(preview["fire_times"].clone()).expect("times");
    assert_eq!(times.len(), 3);
    assert!(
        times.windows(2).all(|w| (w[1] - w[0]).num_minutes() == 15),
        "{times:?}"
    );
    assert!(
        times.iter().all(|t| t.timestamp() % 900 == 0),
        "Kolkata is UTC+5:30, so quarters align"
    );

    let (_, paused) = api.send(Method::POST, &format!("{base}/pause"), None).await;
    assert_eq!(paused["paused"], true);
    let (_, resumed) = api
        .send(Method::POST, &format!("{base}/resume"), None)
        .await;
    assert_eq!(resumed["paused"], false);
    assert!(resumed["next_fire_at"].is_string());

    let (status, replaced) = api
        .send(
            Method::PUT,
            &base,
            Some(json!({ "kind": "interval", "every": "90s", "misfire": "skip" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(
        (replaced["kind"].as_str(), replaced["every"].as_str()),
        (Some("interval"), Some("1m30s"))
    );

    let (_, once) = api
        .send(
            Method::POST,
            "/api/v1/jobs/sync/triggers",
            Some(json!({ "kind": "once", "at": "2030-01-01T09:00:00Z" })),
        )
        .await;
    assert_eq!(once["next_fire_at"], "2030-01-01T09:00:00Z");
    let (_, list) = api
        .send(Method::GET, "/api/v1/jobs/sync/triggers", None)
        .await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2));

    let (status, _) = api.send(Method::DELETE, &base, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api.send(Method::GET, &base, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(triggers_in_db(&pool).await, 1);
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_once_trigger_in_the_past_is_due_at_once_and_never_silent(pool: PgPool) {
    let api = Api::new(pool.clone());
    api.send(
        Method::PUT,
        "/api/v1/jobs/sync",
        Some(json!({ "target": { "url": "http://a" } })),
    )
    .await;
    let (status, never) = api
        .send(
            Method::POST,
            "/api/v1/jobs/sync/triggers",
            Some(json!({ "kind": "cron", "expression": "0 0 0 30 2 *" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        never["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("never fires")),
        "the problem says why: {never}"
    );
    let (status, once) = api
        .send(
            Method::POST,
            "/api/v1/jobs/sync/triggers",
            Some(json!({ "kind": "once", "at": "2001-01-01T00:00:00Z" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{once}");
    // Due now: the leader finds it late and applies its misfire policy (a task under the
    // default `fire_once`).
    assert_eq!(once["next_fire_at"], "2001-01-01T00:00:00Z");
    let id = once["id"].as_str().expect("id");
    let (status, replaced) = api
        .send(
            Method::PUT,
            &format!("/api/v1/jobs/sync/triggers/{id}"),
            Some(json!({ "kind": "once", "at": "2002-01-01T00:00:00Z", "misfire": "skip" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(replaced["next_fire_at"], "2002-01-01T00:00:00Z");
    assert_eq!(triggers_in_db(&pool).await, 1);
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn bad_triggers_are_refused_naming_the_field_and_nothing_is_written(pool: PgPool) {
    let api = Api::new(pool.clone());
    api.send(
        Method::PUT,
        "/api/v1/jobs/sync",
        Some(json!({ "target": { "url": "http://a" } })),
    )
    .await;
    let cases = [
        (
            json!({ "kind": "cron", "expression": "61 * * * *" }),
            "expression",
        ),
        (
            json!({ "kind": "cron", "expression": "* * *" }),
            "expression",
        ),
        (
            json!({ "kind": "cron", "expression": "0 9 * * *", "timezone": "Mars/Olympus" }),
            "timezone",
        ),
        (json!({ "kind": "cron" }), "expression"),
        (json!({ "kind": "interval", "every": "0s" }), "every"),
        (json!({ "kind": "interval", "every": "soon" }), "every"),
        (
            json!({ "kind": "interval", "every": "1m", "at": "2030-01-01T00:00:00Z" }),
            "at",
        ),
        (json!({ "kind": "once" }), "at"),
        (
            json!({ "kind": "interval", "every": "1m", "start_at": "2030-01-02T00:00:00Z", "end_at": "2030-01-01T00:00:00Z" }),
            "end_at",
        ),
        (
            json!({ "kind": "interval", "every": "1m", "misfire": "sometimes" }),
            "misfire",
        ),
        (
            json!({ "kind": "interval", "every": "1m", "catch_up_limit": 0 }),
            "catch_up_limit",
        ),
        (
            json!({ "kind": "cron", "expression": "0 0 0 30 2 *" }),
            "expression",
        ),
        (
            json!({ "kind": "cron", "expression": "0 0 31 4 *" }),
            "expression",
        ),
        (
            json!({ "kind": "cron", "expression": "0 0 * * *", "end_at": "2001-01-01T00:00:00Z" }),
            "end_at",
        ),
        (
            json!({ "kind": "once", "at": "2030-01-01T00:00:00Z", "end_at": "2029-01-01T00:00:00Z" }),
            "at",
        ),
        (json!({ "kind": "weekly" }), "kind"),
        (
            json!({ "kind": "interval", "every": "1m", "colour": "red" }),
            "colour",
        ),
    ];
    for (body, field) in cases {
        let (status, problem) = api
            .send(
                Method::POST,
                "/api/v1/jobs/sync/triggers",
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {problem}"
        );
        assert_eq!(problem["type"], "/problems/validation");
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .filter_map(|e| e["field"].as_str())
            .collect();
        assert!(
            fields.contains(&field),
            "{body}: expected {field} in {fields:?}"
        );
    }
    let (status, created) = api
        .send(
            Method::POST,
            "/api/v1/jobs/sync/triggers",
            Some(json!({ "kind": "interval", "every": "1m" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let base = format!(
        "/api/v1/jobs/sync/triggers/{}",
        created["id"].as_str().expect("id")
    );
    for count in ["0", "101", "many"] {
        let (status, problem) = api
            .send(Method::GET, &format!("{base}/preview?count={count}"), None)
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "count={count}");
        assert_eq!(problem["errors"][0]["field"], "count");
    }
    let (status, _) = api
        .send(
            Method::PUT,
            &base,
            Some(json!({ "kind": "interval", "every": "0s" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, unchanged) = api.send(Method::GET, &base, None).await;
    assert_eq!(
        unchanged["every"], "1m",
        "a refused replace changes nothing"
    );
    let (status, _) = api
        .send(Method::GET, "/api/v1/jobs/sync/triggers/not-a-uuid", None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = api
        .send(
            Method::POST,
            "/api/v1/jobs/nope/triggers",
            Some(json!({ "kind": "interval", "every": "1m" })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(triggers_in_db(&pool).await, 1);
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn paused_and_single_instance_jobs_refuse_new_tasks_clearly(pool: PgPool) {
    let api = Api::new(pool.clone());
    api.send(
        Method::PUT,
        "/api/v1/jobs/sync",
        Some(json!({ "target": { "url": "http://a" }, "overlap": "skip" })),
    )
    .await;
    let (status, first) = api
        .send(Method::POST, "/api/v1/jobs/sync/tasks", None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, problem) = api
        .send(Method::POST, "/api/v1/jobs/sync/tasks", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem["type"], "/problems/overlap-skipped");
    assert!(
        problem["detail"]
            .as_str()
            .expect("detail")
            .contains(first["id"].as_str().expect("id"))
    );
    let (_, skips) = api.send(Method::GET, "/api/v1/skips?job=sync", None).await;
    assert_eq!(skips["items"][0]["reason"], "overlap");

    let (_, paused) = api
        .send(Method::POST, "/api/v1/jobs/sync/pause", None)
        .await;
    assert_eq!(paused["paused"], true);
    let (status, problem) = api
        .send(Method::POST, "/api/v1/jobs/sync/tasks", None)
        .await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (StatusCode::CONFLICT, Some("/problems/job-paused"))
    );
    let (_, resumed) = api
        .send(Method::POST, "/api/v1/jobs/sync/resume", None)
        .await;
    assert_eq!(resumed["paused"], false);

    let (_, scheduler) = api
        .send(Method::POST, "/api/v1/scheduler/pause", None)
        .await;
    assert_eq!(scheduler["paused"], true);
    let (_, scheduler) = api.send(Method::GET, "/api/v1/scheduler", None).await;
    assert_eq!(scheduler["paused"], true);
    api.send(Method::POST, "/api/v1/scheduler/resume", None)
        .await;
    let (_, cluster) = api.send(Method::GET, "/api/v1/cluster", None).await;
    assert_eq!(
        cluster["leader"],
        Value::Null,
        "no node holds the lease here"
    );
    assert_eq!(cluster["nodes"], json!([]));
    let tasks: i64 = sqlx::query_scalar("select count(*) from tasks")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(tasks, 1);
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_jobs_triggers_are_listed_a_bounded_page_at_a_time(pool: PgPool) {
    let api = Api::new(pool);
    let job = json!({ "target": { "url": "http://downstream.test/run" } });
    let (status, _) = api.send(Method::PUT, "/api/v1/jobs/paged", Some(job)).await;
    assert_eq!(status, StatusCode::CREATED);
    let mut created = Vec::new();
    for hour in 0..5 {
        let trigger = json!({ "kind": "cron", "expression": format!("0 {hour} * * *") });
        let (status, body) = api
            .send(Method::POST, "/api/v1/jobs/paged/triggers", Some(trigger))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        created.push(body["id"].as_str().expect("id").to_owned());
    }
    created.sort();

    let mut listed = Vec::new();
    let mut uri = "/api/v1/jobs/paged/triggers?limit=2".to_owned();
    loop {
        let (status, page) = api.send(Method::GET, &uri, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 2);
        listed.extend(
            items
                .iter()
                .map(|t| t["id"].as_str().expect("id").to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/api/v1/jobs/paged/triggers?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(listed, created, "every trigger once, in id order");

    for bad in ["limit=0", "limit=1001", "cursor=nope", "colour=red"] {
        let (status, problem) = api
            .send(
                Method::GET,
                &format!("/api/v1/jobs/paged/triggers?{bad}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {problem}");
    }
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn skips_are_listed_by_reason_and_an_unknown_reason_is_refused_naming_the_field(
    pool: PgPool,
) {
    let api = Api::new(pool.clone());
    api.send(
        Method::PUT,
        "/api/v1/jobs/sync",
        Some(json!({ "target": { "url": "http://a" }, "overlap": "skip" })),
    )
    .await;
    // One overlap skip through the API, then skips of two other reasons as the leader records
    // them.
    api.send(Method::POST, "/api/v1/jobs/sync/tasks", None)
        .await;
    let (status, _) = api
        .send(Method::POST, "/api/v1/jobs/sync/tasks", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    for (reason, detail) in [("calendar", Some("holidays")), ("misfire", None)] {
        sqlx::query(
            "insert into skipped_runs (id, job_name, scheduled_at, reason, detail)
             values ($1, 'sync', now(), $2, $3)",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(reason)
        .bind(detail)
        .execute(&pool)
        .await
        .expect("a skip");
    }
    let (_, all) = api.send(Method::GET, "/api/v1/skips", None).await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(3), "{all}");

    let (status, calendar) = api
        .send(Method::GET, "/api/v1/skips?reason=calendar&job=sync", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let items = calendar["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{calendar}");
    assert_eq!(items[0]["reason"], "calendar");
    assert_eq!(items[0]["calendar"], "holidays");
    let (_, overlap) = api
        .send(Method::GET, "/api/v1/skips?reason=overlap", None)
        .await;
    assert_eq!(overlap["items"][0]["reason"], "overlap");
    assert_eq!(overlap["items"].as_array().map(Vec::len), Some(1));
    let (_, none) = api
        .send(Method::GET, "/api/v1/skips?reason=buffer_full", None)
        .await;
    assert_eq!(none["items"], json!([]));
    let (_, other_job) = api
        .send(Method::GET, "/api/v1/skips?reason=misfire&job=other", None)
        .await;
    assert_eq!(other_job["items"], json!([]));

    let (status, problem) = api
        .send(Method::GET, "/api/v1/skips?reason=job_paused", None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "reason");
    assert!(
        problem["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("buffer_full")),
        "the refusal lists the reasons: {problem}"
    );
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_batch_of_triggers_is_validated_whole_and_written_together(pool: PgPool) {
    let api = Api::new(pool.clone());
    api.send(
        Method::PUT,
        "/api/v1/jobs/sync",
        Some(json!({ "target": { "url": "http://a" } })),
    )
    .await;
    let good: Vec<Value> = (0..500)
        .map(|i| json!({ "kind": "interval", "every": format!("{}s", 10 + i) }))
        .collect();

    // One bad definition among good ones: nothing is written, each bad field named by index.
    let mut mixed = good.clone();
    mixed[3] = json!({ "kind": "cron", "expression": "not a cron" });
    mixed[7] = json!({ "kind": "cron", "expression": "0 0 * * * *", "calendars": ["nope"] });
    let (status, problem) = api
        .send(
            Method::POST,
            "/api/v1/jobs/sync/triggers:batch",
            Some(json!({ "triggers": mixed })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(fields, ["triggers[3].expression"]);
    assert_eq!(triggers_in_db(&pool).await, 0);
    mixed[3] = good[3].clone();
    let (status, problem) = api
        .send(
            Method::POST,
            "/api/v1/jobs/sync/triggers:batch",
            Some(json!({ "triggers": mixed })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "triggers[7].calendars[0]");
    assert_eq!(triggers_in_db(&pool).await, 0);
    let (status, _) = api
        .send(
            Method::POST,
            "/api/v1/jobs/sync/triggers:batch",
            Some(json!({ "triggers": [] })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = api
        .send(
            Method::POST,
            "/api/v1/jobs/nope/triggers:batch",
            Some(json!({ "triggers": good[..1] })),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // All good: all written, in order, each with its first fire time.
    let (status, created) = api
        .send(
            Method::POST,
            "/api/v1/jobs/sync/triggers:batch",
            Some(json!({ "triggers": good })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let items = created["items"].as_array().expect("items");
    assert_eq!(items.len(), 500);
    assert_eq!(items[0]["every"], "10s");
    assert_eq!(items[499]["every"], "8m29s");
    assert!(items.iter().all(|t| t["next_fire_at"].is_string()));
    assert_eq!(triggers_in_db(&pool).await, 500);
    let audited: i64 = sqlx::query_scalar(
        "select count(*) from audit_log where action = 'create_triggers'
           and (after ->> 'count')::int = 500",
    )
    .fetch_one(&pool)
    .await
    .expect("audit");
    assert_eq!(audited, 1, "one audit entry for the batch");
}
