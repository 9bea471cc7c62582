//! End-to-end: the dispatch path keeps no one waiting and tells no one of work they never had.
//! A downstream's callback and a health check on one kept-alive connection are answered while a
//! burst of a thousand dispatches is out; and pausing the scheduler again and again just before
//! fired-ahead tasks are due withdraws them without a single cancel notice for a task its
//! downstream never saw.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pacer_tests::{FakeDownstream, NodeSettings, PacerProcess, Reply, TestDb, wait_until};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Generous: these waits cover node starts, a thousand task creations and firing passes on a
/// loaded two-core machine.
const SETTLE: Duration = Duration::from_secs(60);

/// How many dispatches are due at the burst's instant.
const BURST: usize = 1000;

/// How long the burst's downstream holds each request before answering: the burst is still out
/// for this long after its instant.
const BURST_ANSWER: Duration = Duration::from_secs(8);

async fn db_now(db: &TestDb) -> DateTime<Utc> {
    sqlx::query_scalar("select now()")
        .fetch_one(db.pool())
        .await
        .expect("the database answers")
}

/// One HTTP/1.1 connection kept open, as a downstream's client keeps it.
struct Connection {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Connection {
    async fn open(base: &str) -> Self {
        let address = base.trim_start_matches("http://");
        let (read, writer) = TcpStream::connect(address)
            .await
            .expect("connected")
            .into_split();
        Self {
            reader: BufReader::new(read),
            writer,
        }
    }

    /// Sends one request and reads its answer: the status and the JSON body (if any).
    async fn ask(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nhost: pacer\r\ncontent-length: {}\r\n",
            body.len()
        );
        if let Some(token) = token {
            request.push_str(&format!("authorization: Bearer {token}\r\n"));
        }
        if !body.is_empty() {
            request.push_str("content-type: application/json\r\n");
        }
        request.push_str("\r\n");
        request.push_str(&body);
        self.writer
            .write_all(request.as_bytes())
            .await
            .expect("written");
        let mut status_line = String::new();
        self.reader
            .read_line(&mut status_line)
            .await
            .expect("read the status line");
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("an HTTP status line: {status_line:?}"));
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).await.expect("a header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().expect("a length");
            }
        }
        let mut body = vec![0; length];
        self.reader
            .read_exact(&mut body)
            .await
            .expect("read the body");
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_and_a_health_check_are_answered_while_a_burst_is_out() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|request| match request.path.as_str() {
        "/burst" => Reply::status(200).after(BURST_ANSWER),
        _ => Reply::accept(),
    })
    .await;
    // Every dispatch of the burst out at once, and room for one caller to create it quickly.
    let settings = NodeSettings::new("burst")
        .env("PACER_DISPATCH__CONCURRENCY", "2000")
        .env("PACER_DATABASE__MAX_CONNECTIONS", "16")
        .env("PACER_AUTH__RATE_LIMIT_PER_SECOND", "100000")
        .env("PACER_AUTH__RATE_LIMIT_BURST", "100000");
    let node = PacerProcess::start_with(db.url(), settings).await;
    let api = node.api();
    api.put_job(
        "burst",
        &json!({
            "target": { "url": downstream.url("/burst") },
            "expect_callback": false,
            "dispatch_timeout": "60s",
        }),
    )
    .await;
    api.put_job(
        "reported",
        &json!({ "target": { "url": downstream.url("/reported") } }),
    )
    .await;

    // A task whose downstream will report on it during the burst, with the credential it was
    // handed.
    let reported = api.create_task_id("reported", &json!({})).await;
    let dispatch = downstream.wait_for_requests(&reported, 1, SETTLE).await[0].clone();
    let token = dispatch.body["callback"]["token"]
        .as_str()
        .expect("a callback token")
        .to_owned();

    let now = db_now(&db).await;
    let at = DateTime::from_timestamp_millis(now.timestamp_millis() + 20_000).expect("an instant");
    let mut creating = tokio::task::JoinSet::new();
    for chunk in 0..20 {
        let api = api.clone();
        creating.spawn(async move {
            for _ in 0..BURST / 20 {
                api.create_task("burst", &json!({ "not_before": at }))
                    .await
                    .expect_status(202);
            }
            chunk
        });
    }
    while let Some(created) = creating.join_next().await {
        created.expect("the tasks were created");
    }
    assert!(
        db_now(&db).await < at - chrono::Duration::seconds(1),
        "the burst was created before its instant"
    );

    let mut connection = Connection::open(node.url()).await;
    // The connection has carried a callback before, as a downstream's does.
    let (status, _) = connection.ask("GET", "/healthz", None, None).await;
    assert_eq!(status, 200);

    wait_until("the burst to be under way", SETTLE, || async {
        let out = downstream
            .requests()
            .iter()
            .filter(|r| r.path == "/burst")
            .count();
        (out >= BURST / 4).then_some(())
    })
    .await;
    let started = tokio::time::Instant::now();
    let (status, task) = connection
        .ask(
            "POST",
            &format!("/api/v1/tasks/{reported}/callback"),
            Some(&token),
            Some(&json!({ "status": "completed", "result": { "rows": 3 } })),
        )
        .await;
    let callback_answered = started.elapsed();
    assert_eq!((status, task["state"].as_str()), (200, Some("completed")));
    let (status, _) = connection.ask("GET", "/healthz", None, None).await;
    let health_answered = started.elapsed();
    assert_eq!(status, 200);

    // Both were answered, the callback's state committed, while every request of the burst was
    // still waiting for its downstream's answer: nothing waited for the burst to be out.
    let first_burst_answer = downstream
        .requests()
        .iter()
        .filter(|r| r.path == "/burst")
        .map(|r| r.at)
        .min()
        .expect("the burst was sent")
        + BURST_ANSWER;
    assert!(
        tokio::time::Instant::now() < first_burst_answer,
        "answered only once the burst's answers came back"
    );
    let stored = api.get_task(&reported).await;
    assert_eq!(stored["state"], "completed");
    eprintln!(
        "during the burst: callback answered in {callback_answered:?}, health check in {health_answered:?}"
    );

    // The burst goes out whole: each task once, none before its instant.
    let burst = wait_until("the whole burst to be sent", SETTLE, || async {
        let burst: Vec<_> = downstream
            .requests()
            .into_iter()
            .filter(|r| r.path == "/burst")
            .collect();
        (burst.len() >= BURST).then_some(burst)
    })
    .await;
    let tasks: HashSet<&str> = burst.iter().map(|r| r.idempotency_key()).collect();
    assert_eq!((burst.len(), tasks.len()), (BURST, BURST));
    assert!(burst.iter().all(|r| r.received_at >= at), "none early");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_the_scheduler_just_before_fired_ahead_tasks_are_due_notices_no_one() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|_| Reply::status(200)).await;
    let node = PacerProcess::start(db.url(), "pauses").await;
    let api = node.api();
    api.put_job(
        "ticks",
        &json!({ "target": { "url": downstream.url("/ticks") }, "expect_callback": false }),
    )
    .await;
    for _ in 0..50 {
        api.request(
            Method::POST,
            "/api/v1/jobs/ticks/triggers",
            Some(&json!({ "kind": "interval", "every": "1s" })),
            &[],
        )
        .await
        .expect_status(201);
    }
    wait_until("the triggers to fire", SETTLE, || async {
        (!downstream.requests().is_empty()).then_some(())
    })
    .await;

    // Pause at 620 ms past a second, when the next second's occurrences are fired (500 ms
    // ahead) and held by the node, but not yet marked for sending (250 ms before their time);
    // resume a little later; again and again.
    for _ in 0..5 {
        let now = db_now(&db).await;
        let next_second = now.timestamp_millis() / 1000 * 1000 + 1000;
        let pause_at = next_second + 620;
        let wait = u64::try_from(pause_at - now.timestamp_millis()).unwrap_or_default();
        tokio::time::sleep(Duration::from_millis(wait)).await;
        api.request(Method::POST, "/api/v1/scheduler/pause", None, &[])
            .await
            .expect_status(200);
        api.request(Method::POST, "/api/v1/scheduler/resume", None, &[])
            .await
            .expect_status(200);
    }
    api.request(Method::POST, "/api/v1/scheduler/pause", None, &[])
        .await
        .expect_status(200);

    // Every task ends; the withdrawn ones were never sent.
    let withdrawn: Vec<String> = wait_until("every task to end", SETTLE, || async {
        let open: i64 =
            sqlx::query_scalar("select count(*) from tasks where state in ('pending', 'processing')")
                .fetch_one(db.pool())
                .await
                .expect("tasks");
        if open > 0 {
            return None;
        }
        let withdrawn: Vec<String> = sqlx::query_scalar(
            "select id::text from tasks
             where state = 'cancelled' and message like 'cancelled: the scheduler entered standby%'",
        )
        .fetch_all(db.pool())
        .await
        .expect("tasks");
        Some(withdrawn)
    })
    .await;
    assert!(
        !withdrawn.is_empty(),
        "some occurrences fired ahead were withdrawn by a pause"
    );
    // Give cancel notices, if any were wrongly asked for, their chance to arrive: the notifier
    // is woken at once and polls every 5 s.
    let notices_looked_for = tokio::time::Instant::now() + Duration::from_secs(6);
    let withdrawn: HashSet<String> = withdrawn.into_iter().collect();
    loop {
        let requests = downstream.requests();
        let sent: HashSet<&str> = requests
            .iter()
            .filter(|r| r.method == "POST")
            .map(|r| r.idempotency_key())
            .collect();
        let notices: Vec<&str> = requests
            .iter()
            .filter(|r| r.method == "DELETE")
            .map(|r| r.task_id())
            .collect();
        assert!(
            notices.iter().all(|task| sent.contains(task)),
            "a cancel notice for a task never dispatched: {notices:?}"
        );
        assert!(
            withdrawn.iter().all(|task| !sent.contains(task.as_str())),
            "a withdrawn task was dispatched"
        );
        if tokio::time::Instant::now() >= notices_looked_for {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let cancels = downstream
        .requests()
        .iter()
        .filter(|r| r.method == "DELETE")
        .count();
    eprintln!(
        "{} tasks withdrawn by pauses; {cancels} cancel notices, all for dispatched tasks",
        withdrawn.len()
    );
}
