//! Upstream messages over REST, in-process against the real PostgreSQL: a task per subscribing
//! job, once per message, under each job's overlap policy; unrouted messages recorded; bad
//! messages refused with a problem naming the field, changing nothing.

#[path = "support/state.rs"]
mod support;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode, header};
use pacer_domain::{ConsumerState, ConsumerStatus};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

struct Api {
    router: Router,
}

struct Reply {
    status: StatusCode,
    content_type: String,
    location: Option<String>,
    body: Value,
}

impl Api {
    fn new(pool: PgPool, consumer: ConsumerState) -> Self {
        let (state, _) = support::state(pool, support::config(), vec![]);
        let status = ConsumerStatus {
            state: consumer,
            ..ConsumerStatus::disabled()
        };
        let state = state.with_consumer(tokio::sync::watch::channel(status).1);
        Self {
            router: pacer_api::router(state),
        }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
        roles: &[&str],
    ) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {}", support::token(roles)));
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
        let text = |name| {
            response
                .headers()
                .get(name)
                .map(|v: &header::HeaderValue| v.to_str().expect("ascii").to_owned())
        };
        let content_type = text(header::CONTENT_TYPE).unwrap_or_default();
        let location = text(header::LOCATION);
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

    async fn put_job(&self, name: &str, body: Value) -> Reply {
        self.call(
            Method::PUT,
            &format!("/api/v1/jobs/{name}"),
            Some(&body.to_string()),
            &[("content-type", "application/json")],
            &["admin"],
        )
        .await
    }

    /// Posts a message as an upstream.
    async fn message(&self, body: &str) -> Reply {
        self.call(
            Method::POST,
            "/api/v1/messages",
            Some(body),
            &[("content-type", "application/json")],
            &["upstream"],
        )
        .await
    }

    async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, None, &[], &["operator"]).await
    }
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

fn task_ids(reply: &Reply) -> Vec<(String, String)> {
    let mut ids: Vec<(String, String)> = reply.body["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| {
            (
                t["job"].as_str().expect("job").to_owned(),
                t["task_id"].as_str().expect("id").to_owned(),
            )
        })
        .collect();
    ids.sort();
    ids
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_message_creates_one_task_per_subscribing_job_once(pool: PgPool) {
    let api = Api::new(pool.clone(), ConsumerState::Disabled);
    let sync = json!({
        "target": { "url": "http://registry:8080/sync" },
        "payload": { "tables": ["centers"], "full": false },
        "on_messages": ["masterdata.changed"],
    });
    assert_eq!(api.put_job("sync", sync).await.status, StatusCode::CREATED);
    let audit = json!({
        "target": { "url": "http://audit:8080/run" },
        "overlap": "skip",
        "on_messages": ["masterdata.changed", "packet.uploaded"],
    });
    let reply = api.put_job("audit", audit).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(
        reply.body["on_messages"],
        json!(["masterdata.changed", "packet.uploaded"])
    );
    let bystander = json!({ "target": { "url": "http://other:8080/run" } });
    assert_eq!(
        api.put_job("bystander", bystander).await.status,
        StatusCode::CREATED
    );

    let message = json!({ "type": "masterdata.changed", "id": "evt-8812", "key": "centers",
                          "payload": { "full": true, "since": "2026-11-01" } })
    .to_string();
    let first = api.message(&message).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    assert_eq!(first.location.as_deref(), Some("/api/v1/messages/evt-8812"));
    assert_eq!(first.body["id"], "evt-8812");
    assert_eq!(first.body["duplicate"], false);
    assert_eq!(first.body["routed"], true);
    let created = task_ids(&first);
    assert_eq!(
        created
            .iter()
            .map(|(job, _)| job.as_str())
            .collect::<Vec<_>>(),
        ["audit", "sync"]
    );

    // Each task merges the message's payload over its job's and names the message.
    let sync_task = &created[1].1;
    let task = api.get(&format!("/api/v1/tasks/{sync_task}")).await;
    assert_eq!(task.status, StatusCode::OK);
    assert_eq!(
        task.body["payload"],
        json!({ "tables": ["centers"], "full": true, "since": "2026-11-01" })
    );
    assert_eq!(
        task.body["origin"],
        json!({ "kind": "message", "message_id": "evt-8812", "type": "masterdata.changed" })
    );

    // The same message again creates nothing and says so, with what the first one created.
    let again = api.message(&message).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["duplicate"], true);
    assert_eq!(task_ids(&again), created);
    assert_eq!(count(&pool, "select count(*) from tasks").await, 2);

    // Without an id, type + key + payload is the key, whatever the key order or spacing.
    let anonymous = api
        .message(r#"{"type": "packet.uploaded", "key": "p-1", "payload": {"a": 1, "b": [2]}}"#)
        .await;
    assert_eq!(anonymous.status, StatusCode::ACCEPTED);
    let digest = anonymous.body["id"].as_str().expect("id").to_owned();
    assert!(digest.starts_with("sha256:"), "{digest}");
    // The audit job still has its first task open: its overlap policy skips this one.
    assert_eq!(anonymous.body["tasks"], json!([]));
    assert_eq!(
        anonymous.body["skipped"],
        json!([{ "job": "audit", "reason": "overlap" }])
    );
    let same = api
        .message(r#"{"payload":{"b":[2],"a":1},"key":"p-1","type":"packet.uploaded"}"#)
        .await;
    assert_eq!(same.status, StatusCode::OK);
    assert_eq!(same.body["id"], digest.as_str());
    assert_eq!(same.body["duplicate"], true);
    let other_key = api
        .message(r#"{"type": "packet.uploaded", "payload": {"a": 1, "b": [2]}}"#)
        .await;
    assert_eq!(other_key.status, StatusCode::ACCEPTED);
    assert_ne!(other_key.body["id"], digest.as_str());
    let skips = api.get("/api/v1/skips?job=audit").await;
    assert_eq!(skips.body["items"].as_array().map(Vec::len), Some(2));

    // Nobody subscribes: accepted, recorded as unrouted, listed for operators.
    let unrouted = api
        .message(r#"{"type": "nobody.cares", "id": "evt-9"}"#)
        .await;
    assert_eq!(unrouted.status, StatusCode::ACCEPTED);
    assert_eq!(unrouted.body["routed"], false);
    assert_eq!(unrouted.body["tasks"], json!([]));
    let listed = api.get("/api/v1/messages?routed=false").await;
    assert_eq!(listed.status, StatusCode::OK);
    let ids: Vec<&str> = listed.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["evt-9"]);
    let all = api.get("/api/v1/messages?limit=2").await;
    assert_eq!(all.body["items"].as_array().map(Vec::len), Some(2));
    let cursor = all.body["next_cursor"].as_str().expect("cursor");
    let rest = api
        .get(&format!("/api/v1/messages?limit=10&cursor={cursor}"))
        .await;
    assert_eq!(rest.body["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(rest.body["next_cursor"], Value::Null);
    let one = api.get("/api/v1/messages/evt-8812").await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.body["source"], "api");
    assert_eq!(task_ids(&one), created);
    assert_eq!(
        api.get("/api/v1/messages/nope").await.status,
        StatusCode::NOT_FOUND
    );

    // A paused job gets no task and the message says why.
    let pause = api
        .call(
            Method::POST,
            "/api/v1/jobs/sync/pause",
            None,
            &[],
            &["operator"],
        )
        .await;
    assert_eq!(pause.status, StatusCode::OK);
    let paused = api
        .message(r#"{"type": "masterdata.changed", "id": "evt-10"}"#)
        .await;
    assert_eq!(paused.status, StatusCode::ACCEPTED);
    assert_eq!(paused.body["tasks"], json!([]));
    let mut reasons: Vec<(&str, &str)> = paused.body["skipped"]
        .as_array()
        .expect("skipped")
        .iter()
        .map(|s| {
            (
                s["job"].as_str().unwrap_or(""),
                s["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons, [("audit", "overlap"), ("sync", "job_paused")]);
    assert_eq!(count(&pool, "select count(*) from tasks").await, 2);
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn bad_messages_are_refused_naming_the_field_and_change_nothing(pool: PgPool) {
    let api = Api::new(pool.clone(), ConsumerState::Disabled);
    let field_of = |reply: &Reply| {
        reply.body["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["field"].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    for (body, fields) in [
        (r#"{"payload": {}}"#, vec!["type"]),
        (r#"{"type": "has space"}"#, vec!["type"]),
        (r#"{"type": "a", "payload": [1]}"#, vec!["payload"]),
        (r#"{"type": "a", "id": ""}"#, vec!["id"]),
        (r#"{"type": "a", "colour": "red"}"#, vec!["colour"]),
        (r#"{"type": 7}"#, vec!["type"]),
    ] {
        let reply = api.message(body).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(reply.content_type, "application/problem+json");
        assert_eq!(field_of(&reply), fields, "{body}: {}", reply.body);
    }
    let malformed = api.message(r#"{"type": "#).await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    let empty = api.message("").await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    let too_big = format!(
        r#"{{"type": "a", "payload": {{"x": "{}"}}}}"#,
        "y".repeat(5000)
    );
    assert_eq!(
        api.message(&too_big).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let text = api
        .call(
            Method::POST,
            "/api/v1/messages",
            Some("type=a"),
            &[("content-type", "text/plain")],
            &["upstream"],
        )
        .await;
    assert_eq!(text.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let downstream = api
        .call(
            Method::POST,
            "/api/v1/messages",
            Some(r#"{"type": "a"}"#),
            &[("content-type", "application/json")],
            &["downstream"],
        )
        .await;
    assert_eq!(downstream.status, StatusCode::FORBIDDEN);
    let listing = api
        .call(Method::GET, "/api/v1/messages", None, &[], &["upstream"])
        .await;
    assert_eq!(listing.status, StatusCode::FORBIDDEN);
    let bad_query = api.get("/api/v1/messages?routed=maybe&cursor=x").await;
    assert_eq!(bad_query.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field_of(&bad_query), ["routed", "cursor"]);
    assert_eq!(count(&pool, "select count(*) from messages").await, 0);
    assert_eq!(count(&pool, "select count(*) from tasks").await, 0);
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn an_amqp_target_needs_a_broker_and_valid_names(pool: PgPool) {
    let amqp_job = json!({
        "target": { "kind": "amqp", "exchange": "pacer.jobs", "routing_key": "sync.run" },
        "expect_callback": false,
    });
    let without = Api::new(pool.clone(), ConsumerState::Disabled);
    let refused = without.put_job("publish", amqp_job.clone()).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.body["errors"][0]["field"], "target.kind");
    assert_eq!(count(&pool, "select count(*) from jobs").await, 0);

    let with = Api::new(pool.clone(), ConsumerState::Connecting);
    let created = with.put_job("publish", amqp_job).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(
        created.body["target"],
        json!({ "kind": "amqp", "exchange": "pacer.jobs", "routing_key": "sync.run" })
    );
    let bad = with
        .put_job(
            "bad",
            json!({ "target": { "kind": "amqp", "exchange": "no spaces", "routing_key": "k", "url": "http://a" } }),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let bad = with
        .put_job(
            "bad",
            json!({ "target": { "kind": "amqp", "exchange": "no spaces", "routing_key": "k" } }),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.body["errors"][0]["field"], "target.exchange");

    // The consumer's state is reported, without making the node unready.
    let ready = with
        .call(Method::GET, "/readyz", None, &[], &["operator"])
        .await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body["amqp"]["state"], "connecting");
    let cluster = with.get("/api/v1/cluster").await;
    assert_eq!(cluster.body["amqp"]["consumer"]["state"], "connecting");
}
