//! End-to-end: event subscriptions. A subscriber that was down gets every matching event
//! afterwards, in order per task, none lost and none of other jobs; a slow subscriber does not
//! delay a fast one; subscriptions are created, shown with their lag and failures, and deleted
//! through the API while the leader runs.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pacer_tests::{Api, FakeDownstream, PacerProcess, Reply, TestDb, wait_until};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::time::Instant;

const SETTLE: Duration = Duration::from_secs(60);

/// Events a receiver accepted, in the order it accepted them (repeats included).
#[derive(Clone, Default)]
struct Accepted(Arc<Mutex<Vec<Value>>>);

impl Accepted {
    fn push_batch(&self, body: &Value) {
        let mut events = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        events.extend(body["events"].as_array().cloned().unwrap_or_default());
    }

    fn events(&self) -> Vec<Value> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Event ids, first occurrences only, in order.
    fn ids(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.events()
            .iter()
            .filter_map(|e| e["id"].as_str().map(str::to_owned))
            .filter(|id| seen.insert(id.clone()))
            .collect()
    }
}

async fn put_subscription(api: &Api, name: &str, body: &Value) -> Value {
    let response = api
        .request(
            Method::PUT,
            &format!("/api/v1/subscriptions/{name}"),
            Some(body),
            &[],
        )
        .await;
    response.expect_status(201).clone()
}

async fn get_subscription(api: &Api, name: &str) -> Value {
    api.request(
        Method::GET,
        &format!("/api/v1/subscriptions/{name}"),
        None,
        &[],
    )
    .await
    .expect_status(200)
    .clone()
}

/// The `task.state` events of `job`'s tasks in the log, in log order: (event id, task id).
async fn logged(db: &TestDb, job: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "select tx || '-' || id, task_id::text from events
         where kind = 'task.state' and job_name = $1 order by tx, id",
    )
    .bind(job)
    .fetch_all(db.pool())
    .await
    .expect("events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_down_for_20s_gets_every_event_afterwards_in_order_none_lost() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|_| Reply::accept()).await;
    let up = Arc::new(AtomicBool::new(false));
    let accepted = Accepted::default();
    let receiver = {
        let (up, accepted) = (up.clone(), accepted.clone());
        FakeDownstream::start(move |request| {
            if up.load(Ordering::SeqCst) {
                accepted.push_batch(&request.body);
                Reply::status(204)
            } else {
                Reply::status(503)
            }
        })
        .await
    };
    let node = PacerProcess::start(db.url(), "node-a").await;
    let api = node.api();
    for (job, team) in [("intake", "registration"), ("billing", "finance")] {
        api.put_job(
            job,
            &json!({
                "target": { "url": downstream.url("/run") },
                "repoll_interval": "1h",
                "labels": { "team": team },
            }),
        )
        .await;
    }
    let created = put_subscription(
        &api,
        "registration",
        &json!({
            "url": receiver.url("/events"),
            "labels": { "team": "registration" },
            "events": ["task.state"],
        }),
    )
    .await;
    assert_eq!(created["labels"], json!({ "team": "registration" }));
    let down_since = Instant::now();

    // While the subscriber is down: tasks of both jobs run to completion.
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            api.create_task_id("intake", &json!({ "payload": { "i": i } }))
                .await,
        );
        api.create_task_id("billing", &json!({})).await;
    }
    for id in &ids {
        api.wait_for_state(id, "processing", SETTLE).await;
        api.callback(id, &json!({ "status": "completed" }))
            .await
            .expect_status(200);
    }
    let behind = wait_until(
        "the subscription shows its failures and lag",
        SETTLE,
        || async {
            let s = get_subscription(&api, "registration").await;
            let failing = s["consecutive_failures"].as_i64().unwrap_or(0) >= 1;
            let lagging = s["lag"]["events"].as_i64().unwrap_or(0) >= 12;
            (failing && lagging).then_some(s)
        },
    )
    .await;
    assert!(
        behind["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("503")),
        "{behind:#}"
    );
    assert!(
        behind["lag"]["oldest_age_seconds"].as_f64().is_some(),
        "{behind:#}"
    );
    assert!(accepted.events().is_empty());

    // Down for 20 s in all, then back.
    tokio::time::sleep_until(down_since + Duration::from_secs(20)).await;
    up.store(true, Ordering::SeqCst);
    // One more task after it is back.
    let late = api.create_task_id("intake", &json!({})).await;
    ids.push(late.clone());
    api.wait_for_state(&late, "processing", SETTLE).await;

    let expected = wait_until(
        "every event of the job's tasks at the subscriber",
        SETTLE,
        || async {
            let logged = logged(&db, "intake").await;
            let have: HashSet<String> = accepted.ids().into_iter().collect();
            (logged.len() >= 4 * 3 + 2 && logged.iter().all(|(id, _)| have.contains(id)))
                .then_some(logged)
        },
    )
    .await;
    let events = accepted.events();
    // Nothing of the other job, and only the kind asked for.
    for event in &events {
        assert_eq!(event["job"], "intake", "{event:#}");
        assert_eq!(event["kind"], "task.state", "{event:#}");
    }
    // In order per task: each task's events arrive in the order the log holds them.
    let mut per_task: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in accepted.ids() {
        let task = events
            .iter()
            .find(|e| e["id"] == json!(id))
            .and_then(|e| e["task"].as_str())
            .expect("a task event names its task")
            .to_owned();
        per_task.entry(task).or_default().push(id);
    }
    for (task, want) in expected.iter().fold(
        BTreeMap::<String, Vec<String>>::new(),
        |mut m, (id, task)| {
            m.entry(task.clone()).or_default().push(id.clone());
            m
        },
    ) {
        assert_eq!(
            per_task.get(&task),
            Some(&want),
            "task {task}'s events in log order"
        );
    }
    for id in &ids[..4] {
        let states: Vec<&str> = events
            .iter()
            .filter(|e| e["task"] == json!(id))
            .map(|e| e["data"]["state"].as_str().unwrap_or_default())
            .collect();
        let mut firsts = states.clone();
        firsts.dedup();
        assert_eq!(
            firsts,
            ["pending", "processing", "completed"],
            "task {id}: {states:?}"
        );
    }
    let caught_up = wait_until("the subscription caught up", SETTLE, || async {
        let s = get_subscription(&api, "registration").await;
        (s["lag"]["events"] == 0 && s["consecutive_failures"] == 0).then_some(s)
    })
    .await;
    assert!(
        caught_up["delivered_events"].as_i64().unwrap_or(0) >= 14,
        "{caught_up:#}"
    );
    assert!(caught_up["delivered_at"].is_string());

    // Deleted, it receives nothing more. A second subscription to the same events is the
    // witness: once it has been pushed the new task's events, so would the deleted one have been.
    let witness = FakeDownstream::start(|_| Reply::status(204)).await;
    put_subscription(
        &api,
        "witness",
        &json!({
            "url": witness.url("/events"),
            "labels": { "team": "registration" },
            "events": ["task.state"],
        }),
    )
    .await;
    api.request(
        Method::DELETE,
        "/api/v1/subscriptions/registration",
        None,
        &[],
    )
    .await
    .expect_status(204);
    let sent = receiver.requests().len();
    let after = api.create_task_id("intake", &json!({})).await;
    api.wait_for_state(&after, "processing", SETTLE).await;
    wait_until(
        "the witness pushed the new task's events",
        SETTLE,
        || async {
            let states: HashSet<String> = witness
                .requests()
                .iter()
                .flat_map(|r| r.body["events"].as_array().cloned().unwrap_or_default())
                .filter(|e| e["task"] == json!(after))
                .filter_map(|e| e["data"]["state"].as_str().map(str::to_owned))
                .collect();
            (states.contains("pending") && states.contains("processing")).then_some(())
        },
    )
    .await;
    assert_eq!(
        receiver.requests().len(),
        sent,
        "a deleted subscription is not pushed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_does_not_delay_a_fast_one() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|_| Reply::accept()).await;
    let (slow_seen, fast_seen) = (Accepted::default(), Accepted::default());
    let slow = {
        let seen = slow_seen.clone();
        FakeDownstream::start(move |request| {
            seen.push_batch(&request.body);
            Reply::status(200).after(Duration::from_secs(2))
        })
        .await
    };
    let fast = {
        let seen = fast_seen.clone();
        FakeDownstream::start(move |request| {
            seen.push_batch(&request.body);
            Reply::status(200)
        })
        .await
    };
    let node = PacerProcess::start(db.url(), "node-a").await;
    let api = node.api();
    api.put_job(
        "intake",
        &json!({ "target": { "url": downstream.url("/run") }, "repoll_interval": "1h" }),
    )
    .await;
    for (name, receiver) in [("slow", &slow), ("fast", &fast)] {
        put_subscription(
            &api,
            name,
            &json!({ "url": receiver.url("/events"), "jobs": ["intake"], "batch_size": 1 }),
        )
        .await;
    }
    // One event each per request: the slow subscriber takes 2 s per event.
    let first = api.create_task_id("intake", &json!({})).await;
    wait_until("the slow subscriber's first request", SETTLE, || async {
        slow_seen
            .events()
            .iter()
            .any(|e| e["task"] == json!(first))
            .then_some(())
    })
    .await;
    let started = Instant::now();
    let mut later = Vec::new();
    for _ in 0..3 {
        later.push(api.create_task_id("intake", &json!({})).await);
    }
    wait_until(
        "the fast subscriber has every task's creation",
        SETTLE,
        || async {
            let events = fast_seen.events();
            later
                .iter()
                .all(|id| {
                    events
                        .iter()
                        .any(|e| e["task"] == json!(id) && e["data"]["state"] == "pending")
                })
                .then_some(())
        },
    )
    .await;
    let fast_took = started.elapsed();
    let slow_events = slow_seen.events().len();
    // Every event the fast one got so far, the slow one gets in 2 s each.
    let fast_events = fast_seen.events().len();
    assert!(
        slow_events < fast_events,
        "the slow subscriber is behind ({slow_events} events) while the fast one has {fast_events}, after {fast_took:?}"
    );
    // And the slow one still gets them all, in its own time.
    wait_until("the slow subscriber catches up", SETTLE, || async {
        let events = slow_seen.events();
        later
            .iter()
            .all(|id| events.iter().any(|e| e["task"] == json!(id)))
            .then_some(())
    })
    .await;
    let listed = api
        .request(Method::GET, "/api/v1/subscriptions", None, &[])
        .await;
    let names: Vec<&str> = listed.expect_status(200)["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["fast", "slow"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_with_bad_filters_is_refused_and_nothing_is_created() {
    let db = TestDb::create().await;
    let node = PacerProcess::start(db.url(), "node-a").await;
    let api = node.api();
    for (body, field) in [
        (json!({ "url": "ftp://x.example/" }), "url"),
        (
            json!({ "url": "https://x.example/", "jobs": ["a"], "labels": { "t": "x" } }),
            "jobs",
        ),
        (
            json!({ "url": "https://x.example/", "events": ["Task State"] }),
            "events[0]",
        ),
        (
            json!({ "url": "https://x.example/", "auth": { "kind": "hmac", "secret": "missing" } }),
            "auth.secret",
        ),
    ] {
        let refused = api
            .request(Method::PUT, "/api/v1/subscriptions/team", Some(&body), &[])
            .await;
        let problem = refused.expect_problem(422);
        assert!(
            problem.to_string().contains(&format!("\"{field}\"")),
            "names {field}: {problem:#}"
        );
    }
    api.request(Method::GET, "/api/v1/subscriptions/team", None, &[])
        .await
        .expect_problem(404);
}
