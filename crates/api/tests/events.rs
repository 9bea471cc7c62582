//! The live event stream, driven in-process against the real PostgreSQL: a client sees a task go
//! pending → processing → completed, and after a disconnect resumes with `Last-Event-ID` without
//! missing an event, even while other transactions write events concurrently.

#[path = "support/state.rs"]
mod support;

use std::time::Duration;

use axum::Router;
use axum::body::{Body, BodyDataStream};
use axum::http::{Method, Request, StatusCode};
use futures_util::StreamExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

/// How long a test waits for an event before failing.
const DEADLINE: Duration = Duration::from_secs(20);

struct Client {
    router: Router,
}

/// One SSE event as received.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    event: String,
    data: Value,
}

/// A connected event stream.
struct Stream {
    body: BodyDataStream,
    buffer: String,
    /// The last position announced without an event (`id:` alone).
    position: Option<String>,
}

impl Stream {
    /// The next event (comments and keep-alives skipped), or a panic at the deadline.
    async fn next(&mut self) -> Received {
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let frame: String = self.buffer.drain(..end + 2).collect();
                    let (mut id, mut event, mut data) =
                        (String::new(), String::new(), String::new());
                    for line in frame.lines() {
                        if let Some(v) = line.strip_prefix("id:") {
                            id = v.trim().to_owned();
                        } else if let Some(v) = line.strip_prefix("event:") {
                            event = v.trim().to_owned();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push_str(v.trim());
                        }
                    }
                    if data.is_empty() {
                        if !id.is_empty() && event.is_empty() {
                            self.position = Some(id);
                        }
                        continue;
                    }
                    return Received {
                        id,
                        event,
                        data: serde_json::from_str(&data).expect("JSON data"),
                    };
                }
                let chunk = self
                    .body
                    .next()
                    .await
                    .expect("the stream stays open")
                    .expect("chunk");
                self.buffer
                    .push_str(std::str::from_utf8(&chunk).expect("utf-8"));
            }
        })
        .await
        .expect("an event before the deadline")
    }

    /// The position a stream started at the present announces before any event.
    async fn position(&mut self) -> String {
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(position) = self.position.take() {
                    return position;
                }
                if let Some(end) = self.buffer.find("\n\n") {
                    let frame: String = self.buffer.drain(..end + 2).collect();
                    let id = frame.lines().find_map(|l| l.strip_prefix("id:"));
                    let bare = frame.lines().all(|l| l.starts_with("id:") || l.is_empty());
                    if let (Some(id), true) = (id, bare) {
                        return id.trim().to_owned();
                    }
                    continue;
                }
                let chunk = self
                    .body
                    .next()
                    .await
                    .expect("the stream stays open")
                    .expect("chunk");
                self.buffer
                    .push_str(std::str::from_utf8(&chunk).expect("utf-8"));
            }
        })
        .await
        .expect("a position before the deadline")
    }

    /// The next event of `task`, skipping others.
    async fn next_of(&mut self, task: &str) -> Received {
        loop {
            let event = self.next().await;
            if event.data["task"] == task {
                return event;
            }
        }
    }
}

impl Client {
    fn new(pool: PgPool) -> Self {
        let (state, _) = support::state(pool, support::config(), vec![]);
        Self {
            router: pacer_api::router(state),
        }
    }

    async fn call(&self, method: Method, uri: &str, body: Option<Value>, role: &str) -> Value {
        let mut request = Request::builder().method(method).uri(uri).header(
            "authorization",
            format!("Bearer {}", support::token(&[role])),
        );
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .expect("request");
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("response");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert!(status.is_success(), "{uri}: {status} {body}");
        body
    }

    async fn connect(&self, query: &str, last_event_id: Option<&str>) -> Stream {
        let mut request = Request::builder()
            .uri(format!("/api/v1/events{query}"))
            .header(
                "authorization",
                format!("Bearer {}", support::token(&["operator"])),
            );
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"].to_str().expect("ascii"),
            "text/event-stream"
        );
        Stream {
            body: response.into_body().into_data_stream(),
            buffer: String::new(),
            position: None,
        }
    }

    async fn setup(&self) {
        for job in ["sync", "other"] {
            self.call(
                Method::PUT,
                &format!("/api/v1/jobs/{job}"),
                Some(json!({ "target": { "url": "http://registry:8080/sync" } })),
                "admin",
            )
            .await;
        }
    }

    async fn create(&self, job: &str) -> String {
        let task = self
            .call(
                Method::POST,
                &format!("/api/v1/jobs/{job}/tasks"),
                None,
                "upstream",
            )
            .await;
        task["id"].as_str().expect("id").to_owned()
    }

    async fn report(&self, task: &str, status: &str) {
        self.call(
            Method::POST,
            &format!("/api/v1/tasks/{task}/callback"),
            Some(json!({ "status": status })),
            "downstream",
        )
        .await;
    }
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_client_sees_a_task_go_pending_processing_completed(pool: PgPool) {
    let client = Client::new(pool);
    client.setup().await;
    let mut stream = client.connect("?job=sync&kind=task.state", None).await;
    // Another job's events are filtered out.
    client.create("other").await;
    let task = client.create("sync").await;
    client.report(&task, "processing").await;
    client.report(&task, "completed").await;

    let mut states = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let event = stream.next().await;
        assert_eq!(event.event, "task.state");
        assert_eq!(event.data["job"], "sync", "{:?}", event.data);
        assert_eq!(event.data["task"], task.as_str());
        assert_eq!(event.data["id"], event.id.as_str());
        states.push(
            event.data["data"]["state"]
                .as_str()
                .expect("state")
                .to_owned(),
        );
        ids.push(event.id);
    }
    assert_eq!(states, ["pending", "processing", "completed"]);
    assert_eq!(
        ids.iter().collect::<std::collections::HashSet<_>>().len(),
        3,
        "ids are distinct"
    );

    let bad = client
        .router
        .clone()
        .oneshot(
            Request::builder()
                .uri("/api/v1/events")
                .header(
                    "authorization",
                    format!("Bearer {}", support::token(&["operator"])),
                )
                .header("last-event-id", "yesterday")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let forbidden = client
        .router
        .clone()
        .oneshot(
            Request::builder()
                .uri("/api/v1/events")
                .header(
                    "authorization",
                    format!("Bearer {}", support::token(&["upstream"])),
                )
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_client_resumes_with_last_event_id_and_misses_nothing(pool: PgPool) {
    let client = Client::new(pool.clone());
    client.setup().await;
    let mut stream = client.connect("?kind=task.state", None).await;
    let task = client.create("sync").await;
    let pending = stream.next_of(&task).await;
    assert_eq!(pending.data["data"]["state"], "pending");
    client.report(&task, "processing").await;
    let processing = stream.next_of(&task).await;
    assert_eq!(processing.data["data"]["state"], "processing");
    drop(stream);

    // While the client is away: the task completes, and many other tasks are created by
    // concurrent writers, some in transactions that take their event ids early and commit late.
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let pool = pool.clone();
        writers.spawn(async move {
            let mut created = Vec::new();
            for _ in 0..10 {
                let mut tx = pool.begin().await.expect("begin");
                let id = uuid::Uuid::now_v7();
                sqlx::query(
                    "insert into tasks (id, job_id, job_name, origin, payload, due_at, next_dispatch_at, timeout_at)
                     select $1, id, name, 'api', '{}', now(), now(), now() + interval '1 hour'
                     from jobs where name = 'other'",
                )
                .bind(id)
                .execute(&mut *tx)
                .await
                .expect("insert");
                tokio::time::sleep(Duration::from_millis(5)).await;
                tx.commit().await.expect("commit");
                created.push(id.to_string());
            }
            created
        });
    }
    client.report(&task, "completed").await;
    // The client comes back while the writers are still at it, and reads as they write, past
    // transactions that have taken smaller ids but not yet committed.
    let mut resumed = client
        .connect("?kind=task.state", Some(&processing.id))
        .await;
    let task_id = task.clone();
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut completed = None;
        while seen.len() < 40 || completed.is_none() {
            let event = resumed.next().await;
            if event.data["task"] == task_id.as_str() {
                completed = Some(event.data["data"]["state"].clone());
            } else {
                seen.push(event.data["task"].as_str().expect("task").to_owned());
            }
        }
        (seen, completed)
    });
    let mut others = Vec::new();
    while let Some(created) = writers.join_next().await {
        others.extend(created.expect("writer"));
    }
    let (mut seen, completed) = reader.await.expect("reader");
    assert_eq!(
        completed,
        Some(json!("completed")),
        "the event after the last one seen"
    );
    seen.sort();
    others.sort();
    assert_eq!(seen, others, "every concurrent task's creation, once each");

    // A client that starts without Last-Event-ID sees only what happens from then on.
    let mut fresh = client.connect("?kind=task.state", None).await;
    let later = client.create("sync").await;
    let first = fresh.next().await;
    assert_eq!(first.data["task"], later.as_str());
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_client_that_drops_before_any_event_resumes_from_the_announced_start(pool: PgPool) {
    let client = Client::new(pool);
    client.setup().await;
    let mut stream = client.connect("?job=sync&kind=task.state", None).await;
    let start = stream.position().await;
    drop(stream);
    // Created while the client is away.
    let task = client.create("sync").await;
    let mut resumed = client
        .connect("?job=sync&kind=task.state", Some(&start))
        .await;
    let event = resumed.next().await;
    assert_eq!(event.data["task"], task.as_str());
    assert_eq!(event.data["data"]["state"], "pending");
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn the_stream_filters_by_several_jobs_and_by_job_labels(pool: PgPool) {
    let client = Client::new(pool);
    for (job, team) in [
        ("intake", "registration"),
        ("upload", "registration"),
        ("billing", "finance"),
    ] {
        client
            .call(
                Method::PUT,
                &format!("/api/v1/jobs/{job}"),
                Some(json!({
                    "target": { "url": "http://registry:8080/sync" },
                    "labels": { "team": team },
                })),
                "admin",
            )
            .await;
    }
    let mut by_label = client
        .connect("?label=team:registration&kind=task.state", None)
        .await;
    let mut by_jobs = client.connect("?job=billing,upload", None).await;
    let billing = client.create("billing").await;
    let intake = client.create("intake").await;
    let upload = client.create("upload").await;

    let mut labelled = Vec::new();
    for _ in 0..2 {
        labelled.push(by_label.next().await.data["task"].clone());
    }
    assert_eq!(
        labelled,
        [json!(intake), json!(upload)],
        "not billing's {billing}"
    );
    let mut listed = Vec::new();
    for _ in 0..2 {
        listed.push(by_jobs.next().await.data["task"].clone());
    }
    assert_eq!(listed, [json!(billing), json!(upload)]);
}
