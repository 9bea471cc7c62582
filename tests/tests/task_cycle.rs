//! End-to-end: the life of a task on one node — dispatch, callback, re-poll until the hard
//! timeout, the callback state machine, and idempotent creation (DESIGN §3 promises 3, 4 and 7).

use std::time::Duration;

use chrono::{SecondsFormat, SubsecRound, Utc};
use pacer_tests::{FakeDownstream, PacerProcess, Reply, TestDb, attempts, outcomes, timestamp};
use serde_json::{Value, json};

/// Generous: these waits cover a dispatch or two on a loaded machine.
const SETTLE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_dispatched_once_and_completed_by_its_callback() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::sequence(vec![Reply::accept().then_callback(
        Duration::from_millis(100),
        json!({ "status": "completed", "message": "synced 42 rows", "result": { "rows": 42 } }),
    )])
    .await;
    let node = PacerProcess::start(db.url(), "node-a").await;
    let api = node.api();
    api.put_job(
        "master-data-sync",
        &json!({
            "target": { "url": downstream.url("/sync"), "headers": { "X-Tenant": "a" } },
            "payload": { "tables": ["centers"], "full": false },
            "repoll_interval": "30s",
            "dispatch_timeout": "5s",
            "timeout": "5m",
            "deadline": "1m",
        }),
    )
    .await;

    let created = api
        .create_task(
            "master-data-sync",
            &json!({ "payload": { "full": true, "since": "2026-01-01" } }),
        )
        .await;
    let body = created.expect_status(202);
    let id = body["id"].as_str().expect("the task has an id").to_owned();
    assert_eq!(created.location, Some(format!("/api/v1/tasks/{id}")));
    assert_eq!(body["job"], "master-data-sync");
    assert_eq!(body["origin"]["kind"], "api");
    assert_eq!(body["idempotency_key"], Value::Null);
    let merged = json!({ "tables": ["centers"], "full": true, "since": "2026-01-01" });
    assert_eq!(
        body["payload"], merged,
        "the task payload overlays the job's"
    );

    api.wait_for_state(&id, "completed", SETTLE).await;
    // The callback can land before the node records the answer to the dispatch.
    let task = api.wait_for_attempts(&id, 1, SETTLE).await;
    assert_eq!(task["result"], json!({ "rows": 42 }));
    assert_eq!(task["message"], "synced 42 rows");
    assert_eq!(task["failure_reason"], Value::Null);
    assert_eq!(task["last_error"], Value::Null);
    assert_eq!(task["claimed_by"], Value::Null);
    assert_eq!(task["next_dispatch_at"], Value::Null);
    assert_eq!(task["attempt"], 1);
    assert_eq!(task["overdue"], false);
    assert!(timestamp(&task["finished_at"]) >= timestamp(&task["started_at"]));
    assert_eq!(outcomes(&task), ["accepted"]);
    let attempt = &attempts(&task)[0];
    assert_eq!(attempt["number"], 1);
    assert_eq!(attempt["node"], "node-a");
    assert_eq!(attempt["http_status"], 202);
    assert_eq!(attempt["error"], Value::Null);
    assert!(attempt["latency_ms"].as_i64().is_some_and(|ms| ms >= 0));

    // The one dispatch carried the documented headers and body.
    let requests = downstream.requests_for(&id);
    assert_eq!(requests.len(), 1, "dispatched exactly once: {requests:#?}");
    let dispatch = &requests[0];
    assert_eq!(dispatch.method, "POST");
    assert_eq!(dispatch.path, "/sync");
    assert_eq!(dispatch.idempotency_key(), id);
    assert_eq!(dispatch.header("x-tenant"), Some("a"));
    assert!(
        dispatch
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json")),
        "{:?}",
        dispatch.headers
    );
    let sent = &dispatch.body;
    assert_eq!(sent["task_id"], id.as_str());
    assert_eq!(sent["job"], "master-data-sync");
    assert_eq!(sent["attempt"], 1);
    assert_eq!(sent["payload"], merged);
    assert_eq!(timestamp(&sent["scheduled_at"]), timestamp(&task["due_at"]));
    assert_eq!(
        timestamp(&sent["deadline_at"]),
        timestamp(&task["deadline_at"])
    );
    assert_eq!(
        timestamp(&task["deadline_at"]) - timestamp(&task["due_at"]),
        chrono::Duration::minutes(1)
    );
    assert_eq!(sent["last_success_at"], Value::Null, "no earlier success");
    assert_eq!(
        sent["callback"]["url"],
        format!("{}/api/v1/tasks/{id}/callback", node.url())
    );

    let callbacks = downstream.wait_for_callbacks(1, SETTLE).await;
    assert_eq!(callbacks.len(), 1);
    assert_eq!(callbacks[0].status, 200, "{:#}", callbacks[0].body);
    assert_eq!(callbacks[0].body["state"], "completed");

    let (state, attempt_rows): (String, i64) = sqlx::query_as(
        "select t.state, (select count(*) from task_attempts a where a.task_id = t.id)
         from tasks t where t.id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(db.pool())
    .await
    .expect("the task row is readable");
    assert_eq!((state.as_str(), attempt_rows), ("completed", 1));

    // The next task of the job learns when the last successful one started.
    let second = api.create_task_id("master-data-sync", &json!({})).await;
    api.wait_for_state(&second, "completed", SETTLE).await;
    let next = &downstream.requests_for(&second)[0];
    assert_eq!(
        timestamp(&next.body["last_success_at"]),
        timestamp(&task["started_at"])
    );
    assert_eq!(
        next.body["payload"],
        json!({ "tables": ["centers"], "full": false })
    );

    // A task created for later waits, unclaimed, until then.
    let not_before = (Utc::now() + chrono::Duration::seconds(2)).trunc_subsecs(3);
    let later = api
        .create_task(
            "master-data-sync",
            &json!({ "not_before": not_before.to_rfc3339_opts(SecondsFormat::Millis, true) }),
        )
        .await;
    let body = later.expect_status(202);
    assert_eq!(body["state"], "pending");
    assert_eq!(body["claimed_by"], Value::Null);
    assert_eq!(body["attempt"], 0);
    assert_eq!(timestamp(&body["due_at"]), not_before);
    let later = body["id"].as_str().expect("an id").to_owned();
    api.wait_for_state(&later, "completed", SETTLE).await;
    let task = api.wait_for_attempts(&later, 1, SETTLE).await;
    let dispatch = &downstream.requests_for(&later)[0];
    assert!(
        dispatch.received_at >= not_before,
        "dispatched at {}, before not_before {not_before}",
        dispatch.received_at
    );
    assert!(timestamp(&attempts(&task)[0]["started_at"]) >= not_before);
    assert_eq!(timestamp(&dispatch.body["scheduled_at"]), not_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_without_a_callback_is_repolled_with_the_same_key_until_it_times_out() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::sequence(vec![Reply::accept()]).await;
    let node = PacerProcess::start(db.url(), "node-a").await;
    let api = node.api();
    api.put_job(
        "silent",
        &json!({
            "target": { "url": downstream.url("/run") },
            "repoll_interval": "1s",
            "dispatch_timeout": "1s",
            "timeout": "4s",
            "deadline": "2s",
        }),
    )
    .await;
    let id = api.create_task_id("silent", &json!({})).await;

    let task = api.wait_for_state(&id, "failed", SETTLE).await;
    assert_eq!(task["failure_reason"], "timed_out");
    assert!(
        task["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out")),
        "{task:#}"
    );
    assert_eq!(
        task["overdue"], true,
        "the 2s deadline passed before the end"
    );
    assert!(
        timestamp(&task["finished_at"]) - timestamp(&task["due_at"])
            >= chrono::Duration::seconds(4),
        "failed no earlier than the 4s timeout: {task:#}"
    );
    assert_eq!(task["next_dispatch_at"], Value::Null);

    let requests = downstream.requests_for(&id);
    assert!(
        requests.len() >= 3,
        "re-dispatched every second until the timeout, got {} dispatches",
        requests.len()
    );
    for (n, request) in requests.iter().enumerate() {
        assert_eq!(
            request.idempotency_key(),
            id,
            "every re-poll has the same key"
        );
        assert_eq!(request.attempt(), i64::try_from(n + 1).expect("small"));
    }
    for pair in requests.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(800),
            "re-polls follow the 1s repoll interval, got a gap of {gap:?}"
        );
    }
    // Each dispatch was recorded; the timeout itself sends nothing.
    assert_eq!(task["attempt"], requests.len());
    let recorded = outcomes(&task);
    assert_eq!(recorded.len(), requests.len());
    assert!(recorded.iter().all(|o| o == "accepted"), "{recorded:?}");

    // The task is over: a late report is refused with the state it ended in.
    let late = api.callback(&id, &json!({ "status": "completed" })).await;
    assert_eq!(late.expect_problem(409)["state"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_are_idempotent_and_a_finished_task_never_changes() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::sequence(vec![Reply::accept()]).await;
    let node = PacerProcess::start(db.url(), "node-a").await;
    let api = node.api();
    api.put_job(
        "report",
        &json!({ "target": { "url": downstream.url("/report") }, "repoll_interval": "1m" }),
    )
    .await;
    let id = api.create_task_id("report", &json!({})).await;
    api.wait_for_state(&id, "processing", SETTLE).await;

    let progress = json!({ "done": 10, "total": 100 });
    let reported = api
        .callback(
            &id,
            &json!({ "status": "processing", "progress": progress, "message": "10%" }),
        )
        .await;
    let body = reported.expect_status(200);
    assert_eq!(body["state"], "processing");
    assert_eq!(body["progress"], progress);
    assert_eq!(body["message"], "10%");

    let completed = api
        .callback(
            &id,
            &json!({ "status": "completed", "message": "done", "result": { "rows": 100 } }),
        )
        .await;
    let done = completed.expect_status(200).clone();
    assert_eq!(done["state"], "completed");
    assert_eq!(done["result"], json!({ "rows": 100 }));
    assert!(done["finished_at"].is_string());

    // The same terminal report again: 200, and nothing changes, not even the timestamps.
    let repeated = api
        .callback(
            &id,
            &json!({ "status": "completed", "message": "again", "result": { "rows": 999 } }),
        )
        .await;
    let again = repeated.expect_status(200);
    for field in ["state", "result", "message", "finished_at", "updated_at"] {
        assert_eq!(again[field], done[field], "`{field}` changed on a repeat");
    }

    // A different report on a finished task: 409 naming the state it is in.
    for status in ["failed", "processing", "completed_with_errors", "cancelled"] {
        let refused = api.callback(&id, &json!({ "status": status })).await;
        let problem = refused.expect_problem(409);
        assert_eq!(problem["state"], "completed", "{status}: {problem:#}");
        assert_eq!(problem["task"]["id"], id.as_str());
        assert_eq!(problem["task"]["state"], "completed");
    }
    let cancel = api.cancel(&id).await;
    assert_eq!(cancel.expect_problem(409)["state"], "completed");

    let task = api.get_task(&id).await;
    assert_eq!(task["state"], "completed");
    assert_eq!(task["result"], json!({ "rows": 100 }));
    assert_eq!(task["message"], "done");
    assert_eq!(
        task["progress"], progress,
        "the last progress stays recorded"
    );
    assert_eq!(task["failure_reason"], Value::Null);
    assert_eq!(task["finished_at"], done["finished_at"]);
    assert_eq!(outcomes(&task), ["accepted"]);

    // Bad input is refused and changes nothing.
    let unknown = api
        .callback(
            "0190a0a0-0000-7000-8000-000000000000",
            &json!({ "status": "completed" }),
        )
        .await;
    unknown.expect_problem(404);
    let invalid = api.callback(&id, &json!({ "status": "done" })).await;
    let problem = invalid.expect_problem(422);
    assert!(
        problem["errors"][0]["field"]
            .as_str()
            .is_some_and(|f| f.contains("status")),
        "{problem:#}"
    );
    assert_eq!(api.get_task(&id).await["updated_at"], done["updated_at"]);

    // A cancelled task refuses a late completion the same way.
    let other = api.create_task_id("report", &json!({})).await;
    api.wait_for_state(&other, "processing", SETTLE).await;
    assert_eq!(
        api.cancel(&other).await.expect_status(200)["state"],
        "cancelled"
    );
    assert_eq!(
        api.cancel(&other).await.expect_status(200)["state"],
        "cancelled"
    );
    let late = api
        .callback(&other, &json!({ "status": "completed" }))
        .await;
    assert_eq!(late.expect_problem(409)["state"], "cancelled");
    let same = api
        .callback(&other, &json!({ "status": "cancelled" }))
        .await;
    assert_eq!(same.expect_status(200)["state"], "cancelled");
    let cancelled = api.get_task(&other).await;
    assert_eq!(cancelled["next_dispatch_at"], Value::Null);
    assert!(cancelled["finished_at"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_creates_one_task_however_often_it_is_sent() {
    let db = TestDb::create().await;
    // The callback goes out at once, so it races the node recording the dispatch's answer.
    let downstream = FakeDownstream::sequence(vec![
        Reply::accept().then_callback(Duration::ZERO, json!({ "status": "completed" })),
    ])
    .await;
    let node = PacerProcess::start(db.url(), "node-a").await;
    let api = node.api();
    for job in ["import", "export"] {
        api.put_job(
            job,
            &json!({ "target": { "url": downstream.url("/x") }, "repoll_interval": "1m" }),
        )
        .await;
    }

    let first = api
        .create_task(
            "import",
            &json!({ "idempotency_key": "order-42", "payload": { "n": 1 } }),
        )
        .await;
    let id = first.expect_status(202)["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    let repeat = api
        .create_task(
            "import",
            &json!({ "idempotency_key": "order-42", "payload": { "n": 2 } }),
        )
        .await;
    let existing = repeat.expect_status(200);
    assert_eq!(existing["id"], id.as_str());
    assert_eq!(
        existing["payload"],
        json!({ "n": 1 }),
        "the first request wins"
    );
    assert_eq!(existing["idempotency_key"], "order-42");
    assert_eq!(repeat.location, Some(format!("/api/v1/tasks/{id}")));

    let by_header = api
        .request(
            reqwest::Method::POST,
            "/api/v1/jobs/import/tasks",
            None,
            &[("Idempotency-Key", "order-42")],
        )
        .await;
    assert_eq!(by_header.expect_status(200)["id"], id.as_str());

    let conflicting = api
        .request(
            reqwest::Method::POST,
            "/api/v1/jobs/import/tasks",
            Some(&json!({ "idempotency_key": "order-43" })),
            &[("Idempotency-Key", "order-42")],
        )
        .await;
    let problem = conflicting.expect_problem(422);
    assert_eq!(problem["errors"][0]["field"], "idempotency_key");

    // Many at once with one key: one creates, the rest find it.
    let burst = futures_join_all((0..8).map(|_| {
        let api = api.clone();
        async move {
            api.create_task("import", &json!({ "idempotency_key": "burst" }))
                .await
        }
    }))
    .await;
    let created: Vec<_> = burst.iter().filter(|r| r.status == 202).collect();
    assert_eq!(created.len(), 1, "exactly one 202 in {burst:#?}");
    assert!(burst.iter().all(|r| r.status == 202 || r.status == 200));
    let burst_id = &created[0].body["id"];
    assert!(
        burst.iter().all(|r| &r.body["id"] == burst_id),
        "{burst:#?}"
    );

    // Keys are per job.
    let elsewhere = api
        .create_task_id("export", &json!({ "idempotency_key": "order-42" }))
        .await;
    assert_ne!(elsewhere, id);

    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "select job_name, idempotency_key, count(*) from tasks
         group by job_name, idempotency_key order by job_name, idempotency_key",
    )
    .fetch_all(db.pool())
    .await
    .expect("tasks are readable");
    let rows: Vec<(&str, &str, i64)> = rows
        .iter()
        .map(|(job, key, n)| (job.as_str(), key.as_str(), *n))
        .collect();
    assert_eq!(
        rows,
        [
            ("export", "order-42", 1),
            ("import", "burst", 1),
            ("import", "order-42", 1)
        ]
    );

    // Listing: newest first, by job, in pages.
    let page = api
        .request(
            reqwest::Method::GET,
            "/api/v1/tasks?job=import&limit=1",
            None,
            &[],
        )
        .await;
    let page = page.expect_status(200);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["items"][0]["id"], *burst_id, "the newest first");
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a full page has a cursor");
    let rest = api
        .request(
            reqwest::Method::GET,
            &format!("/api/v1/tasks?job=import&limit=10&cursor={cursor}"),
            None,
            &[],
        )
        .await;
    let rest = rest.expect_status(200);
    let ids: Vec<&Value> = rest["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|t| &t["id"])
        .collect();
    assert_eq!(ids, [&json!(id)]);
    assert_eq!(rest["next_cursor"], Value::Null, "the last page");

    // Each task ran once, whatever the order of callback and recorded answer.
    let burst_id = burst_id.as_str().expect("an id").to_owned();
    for task_id in [&id, &burst_id, &elsewhere] {
        api.wait_for_state(task_id, "completed", SETTLE).await;
        let task = api.wait_for_attempts(task_id, 1, SETTLE).await;
        assert_eq!(outcomes(&task), ["accepted"], "{task:#}");
        assert_eq!(downstream.requests_for(task_id).len(), 1);
    }
    let callbacks = downstream.wait_for_callbacks(3, SETTLE).await;
    assert!(callbacks.iter().all(|c| c.status == 200), "{callbacks:#?}");
}

/// Runs the futures concurrently and collects their outputs in order.
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.expect("a concurrent request does not panic"));
    }
    outputs
}
