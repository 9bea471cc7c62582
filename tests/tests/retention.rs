//! End-to-end: retention. With a short `retention.tasks`, the leader prunes finished tasks with
//! their attempts and events, keeps open tasks, the job's last completed run and the tasks of a
//! job whose own `retention` is longer; `pacer_pruned_rows_total` counts what went and
//! `GET /api/v1/cluster` shows the tables' sizes. A job's `retention` out of range is refused, and
//! so is a node configured with retention settings out of range. A leader killed in the middle
//! of pruning leaves every task whole, and the next leader finishes the work.

use std::time::Duration;

use pacer_tests::{
    FakeDownstream, NodeSettings, PacerProcess, Reply, TestDb, http_client, wait_until,
};
use pacer_tests::{TEST_SECRET, pacer_binary, signing_key_file};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

/// Generous: covers a node start, a few tasks and a few pruning passes on a loaded machine.
const SETTLE: Duration = Duration::from_secs(30);

async fn pruned_rows(node: &PacerProcess, table: &str) -> Option<f64> {
    let text = http_client()
        .get(format!("{}/metrics", node.url()))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let prefix = format!("pacer_pruned_rows_total{{table=\"{table}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_tasks_past_the_retention_go_with_their_history_and_the_floor_stays() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|request| match request.path.as_str() {
        // Accepted and never reported: the task stays processing.
        "/open" => Reply::accept(),
        // Refused: the task fails at once (a failed task is no job's last completed run).
        "/marker" => Reply::status(400),
        _ => Reply::accept()
            .then_callback(Duration::from_millis(20), json!({ "status": "completed" })),
    })
    .await;
    let settings = NodeSettings::new("retention-a")
        .env("PACER_RETENTION__TASKS", "2s")
        .env("PACER_RETENTION__INTERVAL", "200ms");
    let node = PacerProcess::start_with(db.url(), settings).await;
    let api = node.api();
    api.put_job(
        "brief",
        &json!({ "target": { "url": downstream.url("/brief") } }),
    )
    .await;
    let long = api
        .put_job(
            "long",
            &json!({ "target": { "url": downstream.url("/long") }, "retention": "1h" }),
        )
        .await;
    assert_eq!(long["retention"], "1h");
    api.put_job(
        "marker",
        &json!({ "target": { "url": downstream.url("/marker") }, "retry": { "max_attempts": 1 } }),
    )
    .await;
    api.put_job(
        "open",
        &json!({ "target": { "url": downstream.url("/open") }, "repoll_interval": "1h" }),
    )
    .await;

    // Out of range: refused, naming the field, and nothing changes.
    let refused = api
        .request(
            Method::PUT,
            "/api/v1/jobs/long",
            Some(&json!({ "target": { "url": downstream.url("/long") }, "retention": "10s" })),
            &[],
        )
        .await;
    let problem = refused.expect_problem(422);
    assert!(problem.to_string().contains("retention"), "{problem:#}");
    let long = api
        .request(Method::GET, "/api/v1/jobs/long", None, &[])
        .await;
    assert_eq!(long.expect_status(200)["retention"], "1h");

    let open = api.create_task_id("open", &json!({})).await;
    api.wait_for_state(&open, "processing", SETTLE).await;
    let long_first = api.create_task_id("long", &json!({})).await;
    api.wait_for_state(&long_first, "completed", SETTLE).await;
    let mut brief = vec![];
    for _ in 0..3 {
        let id = api.create_task_id("brief", &json!({})).await;
        api.wait_for_state(&id, "completed", SETTLE).await;
        brief.push(id);
    }
    let long_last = api.create_task_id("long", &json!({})).await;
    api.wait_for_state(&long_last, "completed", SETTLE).await;

    // The first two of `brief` go, with their attempts and events; the last completed stays.
    let status = |id: String| {
        let api = api.clone();
        async move {
            api.request(Method::GET, &format!("/api/v1/tasks/{id}"), None, &[])
                .await
                .status
        }
    };
    wait_until(
        "the brief job's older tasks to be pruned",
        SETTLE,
        || async {
            (status(brief[0].clone()).await == 404 && status(brief[1].clone()).await == 404)
                .then_some(())
        },
    )
    .await;
    for id in &brief[..2] {
        let uuid: Uuid = id.parse().expect("a task id");
        for sql in [
            "select count(*) from events where task_id = $1",
            "select count(*) from task_attempts where task_id = $1",
        ] {
            let left: i64 = sqlx::query_scalar(sql)
                .bind(uuid)
                .fetch_one(db.pool())
                .await
                .expect("count");
            assert_eq!(left, 0, "{sql} of {id}");
        }
    }
    // A task that fails after all the others: once it is pruned, a pass has run with every
    // other task past the default retention, and those it kept are kept for good.
    let marker = api.create_task_id("marker", &json!({})).await;
    api.wait_for_state(&marker, "failed", SETTLE).await;
    wait_until("the failed marker task to be pruned", SETTLE, || async {
        (status(marker.clone()).await == 404).then_some(())
    })
    .await;
    for id in [&brief[2], &open, &long_first, &long_last] {
        assert_eq!(status(id.clone()).await, 200, "{id} is kept");
    }
    let kept = api.get_task(&brief[2]).await;
    assert_eq!(
        kept["attempts"].as_array().map(Vec::len),
        Some(1),
        "{kept:#}"
    );

    let pruned = wait_until("pacer_pruned_rows_total to count them", SETTLE, || async {
        let tasks = pruned_rows(&node, "tasks").await?;
        let events = pruned_rows(&node, "events").await?;
        let attempts = pruned_rows(&node, "task_attempts").await?;
        (tasks >= 3.0 && attempts >= 3.0 && events >= 8.0).then_some((tasks, attempts, events))
    })
    .await;
    assert_eq!(
        pruned.0, 3.0,
        "only the two brief tasks and the marker: {pruned:?}"
    );

    // The leader exports the tables' sizes and how far behind pruning is (not at all).
    wait_until("the size and lag gauges", SETTLE, || async {
        let text = http_client()
            .get(format!("{}/metrics", node.url()))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let value = |prefix: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        let rows = value("pacer_rows{table=\"tasks\"} ")?;
        let bytes = value("pacer_bytes{table=\"events\"} ")?;
        let lag = value("pacer_prune_lag_seconds{table=\"tasks\"} ")?;
        (rows >= 0.0 && bytes > 0.0 && lag < 60.0).then_some(())
    })
    .await;

    // The cluster view shows the size of the tables that grow.
    let cluster = api.request(Method::GET, "/api/v1/cluster", None, &[]).await;
    let tables = cluster.expect_status(200)["tables"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let named = |name: &str| -> Value {
        tables
            .iter()
            .find(|t| t["table"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {tables:#?}"))
    };
    for name in ["tasks", "task_attempts", "events", "audit_log", "messages"] {
        let table = named(name);
        assert!(table["bytes"].as_i64().is_some_and(|b| b > 0), "{table}");
        assert!(table["rows"].as_i64().is_some_and(|r| r >= 0), "{table}");
    }
}

#[test]
fn a_node_refuses_retention_settings_out_of_range() {
    for (key, value, message) in [
        (
            "PACER_RETENTION__TASKS",
            "0s",
            "retention.tasks must be at least 1s",
        ),
        (
            "PACER_RETENTION__AUDIT",
            "500ms",
            "retention.audit must be at least 1s",
        ),
        (
            "PACER_RETENTION__BATCH_SIZE",
            "0",
            "retention.batch_size must be between 1 and 100000",
        ),
        (
            "PACER_RETENTION__BUDGET",
            "0s",
            "retention.budget must be at least 100ms",
        ),
        (
            "PACER_RETENTION__SHARE",
            "0",
            "retention.share must be between 0.01 and 1",
        ),
        (
            "PACER_RETENTION__SHARE",
            "1.5",
            "retention.share must be between 0.01 and 1",
        ),
        ("PACER_RETENTION__KEEP", "1d", "unknown field"),
    ] {
        let mut command = std::process::Command::new(pacer_binary());
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("PACER_") || name == "RUST_LOG" {
                command.env_remove(&*name);
            }
        }
        let output = command
            .arg("serve")
            .env("PACER_DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
            .env("PACER_LISTEN", "127.0.0.1:0")
            .env("PACER_JWT_HS256_SECRET", TEST_SECRET)
            .env("PACER_SIGNING_KEY_FILE", signing_key_file())
            .env(key, value)
            .output()
            .expect("pacer runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{key}={value}: {stderr}");
        assert!(stderr.contains(message), "{key}={value}: {stderr}");
    }
}

async fn scalar(db: &TestDb, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(db.pool())
        .await
        .expect(sql)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_while_pruning_leaves_every_task_whole_and_the_next_one_finishes() {
    const BACKLOG: i64 = 4_000;
    let db = TestDb::create().await;
    // Small batches, so the backlog takes many of them and the kill lands in the middle.
    let settings = |id: &str| {
        NodeSettings::new(id)
            .env("PACER_RETENTION__TASKS", "1d")
            .env("PACER_RETENTION__INTERVAL", "200ms")
            .env("PACER_RETENTION__BATCH_SIZE", "10")
    };
    let mut first = PacerProcess::start_with(db.url(), settings("prune-a")).await;
    first
        .api()
        .put_job(
            "backlog",
            &json!({ "target": { "url": "http://127.0.0.1:9/none" } }),
        )
        .await;
    // Two days of finished tasks, each with an attempt (and its event, written by the table's
    // trigger), in one statement: the leader may prune at any moment.
    sqlx::query(
        "with created as (
             insert into tasks (id, job_id, job_name, state, origin, payload, attempt, due_at,
                                started_at, finished_at, timeout_at, outcome_noticed)
             select gen_random_uuid(), j.id, j.name, 'completed', 'api', '{}', 1,
                    now() - interval '2 days' - i * interval '1 second',
                    now() - interval '2 days' - i * interval '1 second',
                    now() - interval '2 days' - i * interval '1 second',
                    now(), true
             from jobs j cross join generate_series(1, $1) i where j.name = 'backlog'
             returning id, started_at, finished_at
         )
         insert into task_attempts (task_id, number, node, started_at, finished_at, outcome)
         select id, 1, 'prune-a', started_at, finished_at, 'accepted' from created",
    )
    .bind(BACKLOG)
    .execute(db.pool())
    .await
    .expect("backlog");

    wait_until("the leader to start pruning", SETTLE, || async {
        (scalar(&db, "select count(*) from tasks").await < BACKLOG).then_some(())
    })
    .await;
    first.kill();
    let left = scalar(&db, "select count(*) from tasks").await;
    assert!(
        left > 1,
        "the kill landed before the backlog was gone: {left} left"
    );
    // Every batch went whole or not at all: no task without its attempt, no event without its
    // task.
    assert_eq!(
        scalar(
            &db,
            "select count(*) from tasks t
             where not exists (select 1 from task_attempts a where a.task_id = t.id)"
        )
        .await,
        0
    );
    assert_eq!(
        scalar(
            &db,
            "select count(*) from events e where e.task_id is not null
             and not exists (select 1 from tasks t where t.id = e.task_id)"
        )
        .await,
        0
    );

    // The next leader carries on to the end, and keeps the job's last completed run.
    let second = PacerProcess::start_with(db.url(), settings("prune-b")).await;
    wait_until("the next leader to finish pruning", SETTLE * 2, || async {
        (scalar(&db, "select count(*) from tasks").await == 1).then_some(())
    })
    .await;
    assert_eq!(
        scalar(
            &db,
            "select count(*) from tasks t join (select max(started_at) as latest from tasks) m
             on t.started_at = m.latest"
        )
        .await,
        1
    );
    assert_eq!(scalar(&db, "select count(*) from task_attempts").await, 1);
    drop(second);
}
