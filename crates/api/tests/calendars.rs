//! Calendars and backfill through the API, in-process on the real PostgreSQL: a calendar is
//! created, replaced, listed and deleted; bad rules, unknown includes, self-inclusion, deleting
//! one in use and over-long backfills are refused with a problem naming the cause, and nothing
//! is written.

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
        Self(pacer_api::router(
            support::state(pool, support::config(), vec![]).0,
        ))
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
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("json")
        };
        (status, body)
    }
}

fn fields(problem: &Value) -> Vec<&str> {
    problem["errors"]
        .as_array()
        .map(|errors| errors.iter().filter_map(|e| e["field"].as_str()).collect())
        .unwrap_or_default()
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn calendars_are_kept_validated_and_refused_while_in_use(pool: PgPool) {
    let api = Api::new(pool.clone());
    let (status, created) = api
        .send(
            Method::PUT,
            "/api/v1/calendars/holidays",
            Some(json!({ "timezone": "Europe/Berlin", "exclude": [
                { "kind": "yearly", "date": "--12-25" },
                { "kind": "daily", "from": "22:00", "to": "02:00" } ] })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["name"], "holidays");
    assert_eq!(created["exclude"][1]["to"], "02:00");
    let (status, replaced) = api
        .send(
            Method::PUT,
            "/api/v1/calendars/holidays",
            Some(json!({ "exclude": [ { "kind": "date", "date": "2026-12-24" } ] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(replaced["timezone"], "UTC");

    let (status, problem) = api
        .send(
            Method::PUT,
            "/api/v1/calendars/broken",
            Some(
                json!({ "timezone": "Mars/Olympus", "include": ["nowhere"], "exclude": [
                { "kind": "date", "date": "24.12.2026" } ] }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&problem), ["timezone"]);
    let (status, problem) = api
        .send(
            Method::PUT,
            "/api/v1/calendars/broken",
            Some(json!({ "include": ["nowhere"], "exclude": [
                { "kind": "date", "date": "24.12.2026" } ] })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&problem), ["exclude[0].date"]);
    // A window's duration is refused under its own name, whether it does not parse or is
    // longer than any duration may be.
    let (status, problem) = api
        .send(
            Method::PUT,
            "/api/v1/calendars/broken",
            Some(json!({ "exclude": [
                { "kind": "cron", "expression": "0 0 2 * * SUN", "duration": "895703928m" },
                { "kind": "cron", "expression": "0 0 2 * * SUN", "duration": "two hours" } ] })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        fields(&problem),
        ["exclude[0].duration", "exclude[1].duration"]
    );
    let (status, windowed) = api
        .send(
            Method::PUT,
            "/api/v1/calendars/windowed",
            Some(json!({ "exclude": [
                { "kind": "cron", "expression": "0 0 2 * * SUN", "duration": " 90m " } ] })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{windowed}");
    assert_eq!(
        windowed["exclude"][0]["duration"], "1h30m",
        "a window's duration is kept in canonical form"
    );
    let (status, problem) = api
        .send(
            Method::PUT,
            "/api/v1/calendars/broken",
            Some(json!({ "include": ["nowhere"] })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&problem), ["include[0]"]);
    let (status, _) = api
        .send(Method::PUT, "/api/v1/calendars/broken", Some(json!([null])))
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "an array is not a calendar"
    );
    let (status, _) = api
        .send(
            Method::PUT,
            "/api/v1/calendars/all",
            Some(json!({ "include": ["holidays"] })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, problem) = api
        .send(
            Method::PUT,
            "/api/v1/calendars/holidays",
            Some(json!({ "include": ["all"] })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("holidays includes all includes holidays")),
        "{problem}"
    );

    let (status, page) = api
        .send(Method::GET, "/api/v1/calendars?limit=1", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"][0]["name"], "all");
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let (_, next) = api
        .send(
            Method::GET,
            &format!("/api/v1/calendars?cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(next["items"][0]["name"], "holidays");
    assert!(next["next_cursor"].is_null());

    // A trigger names it; deleting it is refused, then forced.
    let (status, _) = api
        .send(
            Method::PUT,
            "/api/v1/jobs/sync",
            Some(json!({ "target": { "url": "http://downstream.invalid/run" } })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, trigger) = api
        .send(
            Method::POST,
            "/api/v1/jobs/sync/triggers",
            Some(
                json!({ "kind": "cron", "expression": "0 0 1 * * *", "calendars": ["all"],
                         "jitter": "10m" }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{trigger}");
    let id = trigger["id"].as_str().expect("id").to_owned();
    let (status, problem) = api
        .send(Method::DELETE, "/api/v1/calendars/all", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem["type"], "/problems/calendar-in-use");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&format!("trigger sync/{id}"))),
        "{problem}"
    );
    let (status, _) = api
        .send(Method::DELETE, "/api/v1/calendars/all?force=true", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api.send(Method::GET, "/api/v1/calendars/all", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Backfills: the range must be in the past, in order, and hold at most 1000 occurrences.
    let backfill = format!("/api/v1/jobs/sync/triggers/{id}/backfill");
    for (body, field) in [
        (
            json!({ "from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z" }),
            "to",
        ),
        (
            json!({ "from": "2026-01-01T00:00:00Z", "to": "2999-01-01T00:00:00Z" }),
            "to",
        ),
        (
            json!({ "from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z" }),
            "to",
        ),
        (json!({ "from": "2026-01-01T00:00:00Z" }), "to"),
    ] {
        let (status, problem) = api.send(Method::POST, &backfill, Some(body.clone())).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {problem}"
        );
        assert_eq!(fields(&problem), [field], "{body}: {problem}");
    }
    let (status, dry) = api
        .send(
            Method::POST,
            "/api/v1/jobs/sync/backfill",
            Some(
                json!({ "from": "2026-01-01T00:00:00Z", "to": "2026-01-04T00:00:00Z",
                         "dry_run": true }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(
        dry["triggers"][0]["created"].as_array().map(Vec::len),
        Some(3)
    );
    let tasks: i64 = sqlx::query_scalar("select count(*) from tasks")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(tasks, 0, "a dry run writes nothing");
}
