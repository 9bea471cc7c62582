//! The dispatcher on its own, on the real PostgreSQL, against an in-process downstream: a task
//! is sent at its time and not before; a task claimed ahead and withdrawn is never sent; a
//! stopping node hands back what it claimed ahead at once and another node sends it on time; a
//! drain waits for in-flight dispatches up to its deadline and hands back the rest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use chrono::{DateTime, Utc};
use pacer_auth::signing::Keyset;
use pacer_domain::{JobInput, JobName, JobSpec, Span, TaskId, TriggerInput, TriggerSpec};
use pacer_engine::{DispatchConfig, DispatchSettings, Dispatcher, Outbound};
use pacer_store::{CreatedTask, Job, NewTask, Origin, Store};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Generous: these waits cover claims and dispatches on a loaded two-core machine.
const SETTLE: Duration = Duration::from_secs(20);

/// One request the downstream received: the task, and when it arrived on the wall clock.
#[derive(Debug, Clone)]
struct Received {
    task: String,
    at: DateTime<Utc>,
}

/// An in-process downstream: answers `200` after the delay its path names (`/now`, `/slow`,
/// `/hang`) and records every request.
#[derive(Clone, Default)]
struct Downstream {
    received: Arc<Mutex<Vec<Received>>>,
    base: String,
}

impl Downstream {
    async fn start() -> Self {
        async fn answer(
            State((received, delay)): State<(Arc<Mutex<Vec<Received>>>, Duration)>,
            body: axum::Json<Value>,
        ) -> StatusCode {
            received
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Received {
                    task: body["task_id"].as_str().unwrap_or_default().to_owned(),
                    at: Utc::now(),
                });
            tokio::time::sleep(delay).await;
            StatusCode::OK
        }
        let received = Arc::new(Mutex::new(Vec::new()));
        let route = |delay: Duration| post(answer).with_state((received.clone(), delay));
        let app = Router::new()
            .route("/now", route(Duration::ZERO))
            .route("/slow", route(Duration::from_secs(1)))
            .route("/hang", route(Duration::from_secs(600)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bound");
        let base = format!("http://{}", listener.local_addr().expect("an address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { received, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A job posting to `url`, ended by a 2xx answer (no callback).
async fn job(store: &Store, name: &str, url: &str) -> Job {
    let input: JobInput = serde_json::from_value(json!({
        "target": { "url": url },
        "expect_callback": false,
        "dispatch_timeout": "60s",
    }))
    .expect("job input");
    let spec = JobSpec::try_from(input).expect("valid job");
    let name: JobName = name.parse().expect("name");
    store.put_job(&name, &spec).await.expect("put job").job
}

/// A task of `job` due at `at` (now when `None`).
async fn task(store: &Store, job: &Job, at: Option<DateTime<Utc>>) -> TaskId {
    let created = store
        .create_task(
            job,
            NewTask {
                not_before: at,
                ..NewTask::new(Origin::Api, json!({}))
            },
            None,
        )
        .await
        .expect("task");
    match created {
        CreatedTask::Created { id, .. } => id,
        other => panic!("not created: {other:?}"),
    }
}

/// `millis` after the database's now.
async fn in_millis(store: &Store, millis: i64) -> DateTime<Utc> {
    let now = store.now().await.expect("now");
    now + chrono::Duration::milliseconds(millis)
}

/// A running dispatcher named `node`, claiming `claim_ahead` before tasks are due.
struct Running {
    stop: CancellationToken,
    handle: JoinHandle<pacer_engine::Result<()>>,
}

fn start(store: &Store, node: &str, claim_ahead: Span, drain_timeout: Span) -> Running {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = DispatchConfig {
        node_id: node.to_owned(),
        public_url: "http://127.0.0.1:9".to_owned(),
        settings: DispatchSettings {
            poll_interval: Span::from_millis(100),
            lease_margin: Span::from_secs(1),
            drain_timeout,
            ..DispatchSettings::default()
        },
        claim_ahead,
        max_response_bytes: 4096,
    };
    let outbound = Outbound::new(Keyset::generate("pacer"), HashMap::new());
    let client = pacer_engine::http_client().expect("a client");
    let dispatcher = Dispatcher::new(config, store.clone(), client, outbound);
    let stop = CancellationToken::new();
    let handle = tokio::spawn(dispatcher.run(stop.clone()));
    Running { stop, handle }
}

impl Running {
    /// Stops the dispatcher and waits for it to have drained; how long that took.
    async fn stop(self) -> Duration {
        let started = Instant::now();
        self.stop.cancel();
        tokio::time::timeout(SETTLE, self.handle)
            .await
            .expect("stopped in time")
            .expect("the dispatcher ran")
            .expect("the dispatcher stopped cleanly");
        started.elapsed()
    }
}

/// The task's state, claim holder and attempt outcomes, in order.
async fn task_row(pool: &PgPool, id: TaskId) -> (String, Option<String>, Vec<String>) {
    let (state, claimed_by): (String, Option<String>) =
        sqlx::query_as("select state, claimed_by from tasks where id = $1")
            .bind(id.as_uuid())
            .fetch_one(pool)
            .await
            .expect("task");
    let outcomes: Vec<String> =
        sqlx::query_scalar("select outcome from task_attempts where task_id = $1 order by number")
            .bind(id.as_uuid())
            .fetch_all(pool)
            .await
            .expect("attempts");
    (state, claimed_by, outcomes)
}

async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `id` is claimed, and returns by whom.
async fn claimed_by(pool: &PgPool, id: TaskId) -> String {
    wait_for("the task to be claimed", || async {
        task_row(pool, id).await.1
    })
    .await
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_task_claimed_ahead_is_sent_at_its_time_and_not_before(pool: PgPool) {
    let store = Store::new(pool.clone());
    let downstream = Downstream::start().await;
    let job = job(&store, "timely", &downstream.url("/now")).await;
    let at = in_millis(&store, 1500).await;
    let id = task(&store, &job, Some(at)).await;
    let node = start(&store, "a", Span::from_secs(5), Span::from_secs(5));

    // Claimed well before its time, and held.
    assert_eq!(claimed_by(&pool, id).await, "a");
    assert!(store.now().await.expect("now") < at, "claimed ahead");
    let sent = wait_for("the dispatch", || async {
        downstream.received().first().cloned()
    })
    .await;
    assert_eq!(sent.task, id.to_string());
    assert!(sent.at >= at, "sent at {} for a task due at {at}", sent.at);
    let (state, claim, outcomes) = wait_for("the outcome", || async {
        let row = task_row(&pool, id).await;
        (row.0 == "completed").then_some(row)
    })
    .await;
    assert_eq!(
        (state.as_str(), claim, outcomes),
        ("completed", None, vec!["accepted".to_owned()])
    );
    node.stop().await;
    assert_eq!(downstream.received().len(), 1, "sent once");
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_paused_jobs_task_claimed_ahead_is_withdrawn_and_never_sent(pool: PgPool) {
    let store = Store::new(pool.clone());
    let downstream = Downstream::start().await;
    let job = job(&store, "paused", &downstream.url("/now")).await;
    let at = in_millis(&store, 2500).await;
    let input: TriggerInput =
        serde_json::from_value(json!({ "kind": "once", "at": at })).expect("trigger input");
    let spec = TriggerSpec::try_from(input).expect("valid trigger");
    store
        .create_trigger(&job, &spec, Some(at))
        .await
        .expect("trigger");
    let term = store
        .acquire_lease("leader", 60_000, false)
        .await
        .expect("lease")
        .expect("held")
        .term;
    store
        .fire_due("leader", term, 10, Span::from_secs(10))
        .await
        .expect("fired ahead");
    let id: TaskId = sqlx::query_scalar::<_, uuid::Uuid>("select id from tasks")
        .fetch_one(&pool)
        .await
        .expect("the fired task")
        .into();
    let node = start(&store, "a", Span::from_secs(10), Span::from_secs(5));
    assert_eq!(claimed_by(&pool, id).await, "a");

    store.set_job_paused(&job, true, &[]).await.expect("paused");
    assert!(
        store.now().await.expect("now") < at,
        "paused before its time"
    );
    // Past its time, and past a claim's check, it was never sent.
    wait_for("the task's time to pass", || async {
        (store.now().await.expect("now") > at + chrono::Duration::seconds(1)).then_some(())
    })
    .await;
    let (state, claim, outcomes) = task_row(&pool, id).await;
    assert_eq!(
        (state.as_str(), claim, outcomes.len()),
        ("cancelled", None, 0)
    );
    node.stop().await;
    assert!(
        downstream.received().is_empty(),
        "a withdrawn task was sent"
    );
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_stopping_node_hands_back_what_it_claimed_ahead_and_another_sends_it_on_time(
    pool: PgPool,
) {
    let store = Store::new(pool.clone());
    let downstream = Downstream::start().await;
    let job = job(&store, "handed", &downstream.url("/now")).await;
    let at = in_millis(&store, 4000).await;
    let id = task(&store, &job, Some(at)).await;

    // A long drain: a node keeping the task to send it itself would still be running at its time.
    let first = start(&store, "first", Span::from_secs(10), Span::from_secs(30));
    assert_eq!(claimed_by(&pool, id).await, "first");
    first.stop().await;
    assert!(
        store.now().await.expect("now") < at,
        "the first node stopped at once, well before the task's time"
    );
    let (state, claim, outcomes) = task_row(&pool, id).await;
    assert_eq!(
        (state.as_str(), claim, outcomes.len()),
        ("pending", None, 0)
    );
    assert!(downstream.received().is_empty());

    let second = start(&store, "second", Span::from_secs(10), Span::from_secs(5));
    let sent = wait_for("the dispatch", || async {
        downstream.received().first().cloned()
    })
    .await;
    assert!(sent.at >= at, "sent at {} for a task due at {at}", sent.at);
    wait_for("the outcome", || async {
        (task_row(&pool, id).await.0 == "completed").then_some(())
    })
    .await;
    second.stop().await;
    assert_eq!(downstream.received().len(), 1, "sent once");
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_drain_waits_for_dispatches_in_flight_up_to_its_deadline(pool: PgPool) {
    let store = Store::new(pool.clone());
    let downstream = Downstream::start().await;
    let slow = job(&store, "slow", &downstream.url("/slow")).await;
    let hung = job(&store, "hung", &downstream.url("/hang")).await;
    let node = start(&store, "a", Span::from_secs(0), Span::from_secs(3));
    let finishing = task(&store, &slow, None).await;
    let stuck = task(&store, &hung, None).await;
    wait_for("both dispatches to be out", || async {
        (downstream.received().len() == 2).then_some(())
    })
    .await;

    let drained = node.stop().await;
    // The slow dispatch finished within the drain and its outcome is written; the hung one is
    // handed back at the deadline, its attempt recorded as interrupted.
    assert!(
        drained >= Duration::from_secs(2),
        "stopped after {drained:?}, before the drain's deadline"
    );
    let (state, claim, outcomes) = task_row(&pool, finishing).await;
    assert_eq!(
        (state.as_str(), claim, outcomes),
        ("completed", None, vec!["accepted".to_owned()])
    );
    let (state, claim, outcomes) = task_row(&pool, stuck).await;
    assert_eq!(
        (state.as_str(), claim, outcomes),
        ("pending", None, vec!["interrupted".to_owned()])
    );
}
