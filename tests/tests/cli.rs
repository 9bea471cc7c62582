//! The `pacer` CLI against a running node: `apply` and `export` round trips (no change and no
//! write the second time, `--prune`, a bad file changes nothing), and the verbs over the REST
//! API with their tables, their JSON, their error output and their exit codes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use pacer_tests::{Api, FakeDownstream, PacerProcess, Reply, TestDb, pacer_binary, token};
use reqwest::Method;
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(20);

/// What one `pacer` command did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

/// Runs `pacer args…` against `url` with `token` (nothing else from the environment).
fn pacer(url: &str, token: Option<&str>, args: &[&str]) -> Run {
    let mut command = Command::new(pacer_binary());
    command.args(args);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("PACER_") || key == "RUST_LOG" {
            command.env_remove(&*key);
        }
    }
    command.env("PACER_URL", url);
    if let Some(token) = token {
        command.env("PACER_TOKEN", token);
    }
    let output = command.output().expect("pacer runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A scratch directory for jobs files, removed at the end of the test.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "pacer-cli-{name}-{}",
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    fn write(&self, file: &str, text: &str) -> String {
        let path = self.0.join(file);
        std::fs::write(&path, text).expect("write jobs file");
        path.to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/jobs.yaml")
}

/// How many admin and operator actions the audit log holds: every write the API makes.
async fn writes(api: &Api) -> usize {
    let page = api
        .request(Method::GET, "/api/v1/audit?limit=500", None, &[])
        .await;
    page.expect_status(200)["items"]
        .as_array()
        .map_or(0, Vec::len)
}

async fn triggers(api: &Api, job: &str) -> Vec<Value> {
    let page = api
        .request(
            Method::GET,
            &format!("/api/v1/jobs/{job}/triggers"),
            None,
            &[],
        )
        .await;
    page.expect_status(200)["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn job_names(api: &Api) -> Vec<String> {
    let page = api.request(Method::GET, "/api/v1/jobs", None, &[]).await;
    page.expect_status(200)["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|j| j["name"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_export_apply_changes_nothing_prune_deletes_and_a_bad_file_changes_nothing() {
    let db = TestDb::create().await;
    let node = PacerProcess::start(db.url(), "cli-apply").await;
    let api = node.api();
    let admin = token(&["admin"]);
    let url = node.url();
    let pacer = |args: &[&str]| pacer(url, Some(&admin), args);
    let scratch = Scratch::new("apply");
    let example = example();
    let example = example.to_str().expect("utf-8 path");

    // The committed example applies: a concurrency group, three jobs and their four triggers.
    let first = pacer(&["apply", "-f", example]).ok();
    assert!(
        first.stdout.contains("+ job master-data-sync"),
        "{first:#?}"
    );
    assert!(
        first
            .stdout
            .contains("8 to create, 0 to change, 0 to delete"),
        "{first:#?}"
    );
    let mut names = job_names(&api).await;
    names.sort();
    assert_eq!(
        names,
        ["heartbeat-webhook", "master-data-sync", "nightly-item-sync"]
    );
    assert_eq!(triggers(&api, "nightly-item-sync").await.len(), 2);

    // Export, apply the export, apply the example again: no change reported, no write made.
    let exported = pacer(&["export"]).ok();
    assert!(
        exported.stdout.contains("name: master-data-sync"),
        "{exported:#?}"
    );
    let export_file = scratch.write("exported.yaml", &exported.stdout);
    let before = writes(&api).await;
    let trigger_before = triggers(&api, "heartbeat-webhook").await;
    for file in [export_file.as_str(), example] {
        let again = pacer(&["apply", "-f", file]).ok();
        assert!(
            again.stdout.contains("No changes: 3 job(s) already match."),
            "{file}: {again:#?}"
        );
    }
    assert_eq!(writes(&api).await, before, "a second apply writes nothing");
    assert_eq!(triggers(&api, "heartbeat-webhook").await, trigger_before);
    let as_json = pacer(&["export", "--output", "json"]).ok().json();
    assert_eq!(as_json.as_array().map(Vec::len), Some(4));
    assert_eq!(as_json[0]["concurrency_group"], "registry");
    let again = pacer(&["apply", "-f", example, "--output", "json"])
        .ok()
        .json();
    assert_eq!(again["changes"], json!([]));
    assert_eq!(again["counts"]["unchanged_jobs"], 3);

    // A changed file: the dry run shows the changes field by field and makes none; applying
    // changes the trigger in place (same id).
    let example_text = std::fs::read_to_string(example).expect("example");
    let changed = scratch.write(
        "changed.yaml",
        &example_text
            .replace("every: 5m", "every: 10m")
            .replace("timeout: 6h", "timeout: 8h"),
    );
    let dry = pacer(&["apply", "-f", &changed, "--dry-run"]).ok();
    assert!(dry.stdout.contains(r#"timeout: "6h" → "8h""#), "{dry:#?}");
    assert!(dry.stdout.contains(r#"every: "5m" → "10m""#), "{dry:#?}");
    assert!(dry.stdout.contains("0 to create, 2 to change, 0 to delete"));
    assert_eq!(writes(&api).await, before, "a dry run writes nothing");
    pacer(&["apply", "-f", &changed]).ok();
    let trigger_after = triggers(&api, "heartbeat-webhook").await;
    assert_eq!(trigger_after.len(), 1);
    assert_eq!(trigger_after[0]["id"], trigger_before[0]["id"]);
    assert_eq!(trigger_after[0]["every"], "10m");
    let job = api
        .request(Method::GET, "/api/v1/jobs/nightly-item-sync", None, &[])
        .await;
    assert_eq!(job.expect_status(200)["timeout"], "8h");

    // A file naming one job: without --prune the others stay; with it they go.
    let one = pacer(&["export", "master-data-sync"]).ok();
    let one_file = scratch.write("one.yaml", &one.stdout);
    let kept = pacer(&["apply", "-f", &one_file]).ok();
    assert!(kept.stdout.contains("No changes: 1 job(s)"), "{kept:#?}");
    let dry_prune = pacer(&["apply", "-f", &one_file, "--prune", "--dry-run"]).ok();
    assert!(
        dry_prune.stdout.contains("- job heartbeat-webhook")
            && dry_prune.stdout.contains("- job nightly-item-sync"),
        "{dry_prune:#?}"
    );
    assert_eq!(job_names(&api).await.len(), 3);
    pacer(&["apply", "-f", &one_file, "--prune"]).ok();
    assert_eq!(job_names(&api).await, ["master-data-sync"]);
    assert!(
        one.stdout.starts_with("- concurrency_group: registry"),
        "a job's export carries the group it names: {one:#?}"
    );

    // Bad files change nothing and name the file, the job and the field.
    let before = writes(&api).await;
    let invalid = scratch.write(
        "invalid.yaml",
        r#"
- name: fresh
  target: { url: "http://127.0.0.1:9/x" }
- name: master-data-sync
  target: { url: "http://127.0.0.1:9/x" }
  colour: blue
  triggers:
    - { kind: cron, expression: "61 * * * *" }
"#,
    );
    let refused = pacer(&["apply", "-f", &invalid]);
    assert_eq!(refused.code, 4, "{refused:#?}");
    assert!(
        refused
            .stderr
            .contains("invalid.yaml: job `master-data-sync`: colour: unknown field `colour`"),
        "{refused:#?}"
    );
    assert!(
        refused
            .stderr
            .contains("invalid.yaml: job `master-data-sync`: triggers[0].expression: "),
        "{refused:#?}"
    );
    // Only the server knows its secrets: it vets every job before the first write.
    let secret = scratch.write(
        "secret.yaml",
        r#"
- name: fresh
  target: { url: "http://127.0.0.1:9/x" }
- name: master-data-sync
  target: { url: "http://127.0.0.1:9/x", auth: { kind: bearer, secret: not_configured } }
"#,
    );
    let refused = pacer(&["apply", "-f", &secret]);
    assert_eq!(refused.code, 4, "{refused:#?}");
    assert!(
        refused.stderr.contains(
            "secret.yaml: job `master-data-sync`: target.auth.secret: no secret named `not_configured`"
        ),
        "{refused:#?}"
    );
    let broken = scratch.write("broken.yaml", "- name: [unclosed\n");
    let refused = pacer(&["apply", "-f", &broken]);
    assert_eq!(refused.code, 4, "{refused:#?}");
    assert!(refused.stderr.contains("broken.yaml: not valid YAML"));
    let missing = pacer(&["apply", "-f", "/nonexistent/jobs.yaml"]);
    assert_eq!(missing.code, 2, "{missing:#?}");
    assert_eq!(writes(&api).await, before, "a refused file writes nothing");
    assert_eq!(job_names(&api).await, ["master-data-sync"]);

    // A directory applies all its files.
    let dir = Scratch::new("apply-dir");
    dir.write("a.yaml", &one.stdout);
    dir.write(
        "b.yml",
        "- name: from-b\n  target: { url: \"http://127.0.0.1:9/b\" }\n",
    );
    let applied = pacer(&["apply", "-f", &dir.0.to_string_lossy()]).ok();
    assert!(
        applied.stdout.contains("+ job from-b") && !applied.stdout.contains("master-data-sync"),
        "{applied:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verbs_print_tables_or_json_and_exit_with_a_code_per_kind_of_failure() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|_| Reply::accept()).await;
    let node = PacerProcess::start(db.url(), "cli-verbs").await;
    let api = node.api();
    let admin = token(&["admin"]);
    let url = node.url();
    let pacer = |args: &[&str]| pacer(url, Some(&admin), args);
    let scratch = Scratch::new("verbs");
    let jobs = scratch.write(
        "jobs.yaml",
        &format!(
            "- name: sync\n  target: {{ url: \"{}\" }}\n  triggers:\n    - {{ kind: cron, expression: \"0 0 9 * * *\", timezone: Europe/Berlin }}\n",
            downstream.url("/sync")
        ),
    );
    pacer(&["apply", "-f", &jobs]).ok();

    // Jobs: a table with a header row, JSON unchanged, pause and resume.
    let list = pacer(&["jobs", "list"]).ok();
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("TARGET"),
        "{list:#?}"
    );
    assert!(
        lines[1].starts_with("sync ") && lines[1].contains("/sync"),
        "{list:#?}"
    );
    let list = pacer(&["jobs", "list", "--output", "json"]).ok().json();
    assert_eq!(list["items"][0]["name"], "sync");
    assert!(list["next_cursor"].is_null());
    let get = pacer(&["jobs", "get", "sync"]).ok();
    assert!(get.stdout.contains("name: sync"), "{get:#?}");
    assert_eq!(
        pacer(&["jobs", "get", "sync", "--output", "json"])
            .ok()
            .json()["version"],
        1
    );
    let paused = pacer(&["jobs", "pause", "sync"]).ok();
    assert_eq!(paused.stdout.trim(), "job sync is paused");
    let resumed = pacer(&["jobs", "resume", "sync", "--output", "json"])
        .ok()
        .json();
    assert_eq!(resumed["paused"], false);

    // Triggers: the list and a preview of the next fire times.
    let listed = pacer(&["triggers", "list", "sync"]).ok();
    assert!(
        listed.stdout.contains("cron 0 0 9 * * * (Europe/Berlin)"),
        "{listed:#?}"
    );
    let trigger = pacer(&["triggers", "list", "sync", "--output", "json"])
        .ok()
        .json()["items"][0]["id"]
        .as_str()
        .expect("trigger id")
        .to_owned();
    // The list pages like the others: a page with more after it names the (opaque) cursor of
    // the next one, and the last page none.
    api.request(
        Method::POST,
        "/api/v1/jobs/sync/triggers",
        Some(&json!({ "kind": "interval", "every": "1h" })),
        &[],
    )
    .await
    .expect_status(201);
    let first = pacer(&[
        "triggers", "list", "sync", "--limit", "1", "--output", "json",
    ])
    .ok()
    .json();
    let cursor = first["next_cursor"].as_str().expect("a cursor").to_owned();
    assert!(cursor.starts_with("tr."), "{first:#}");
    let table = pacer(&["triggers", "list", "sync", "--limit", "1"]).ok();
    assert!(
        table.stdout.contains(&format!("(more: --cursor {cursor})")),
        "{table:#?}"
    );
    let rest = pacer(&[
        "triggers", "list", "sync", "--cursor", &cursor, "--output", "json",
    ])
    .ok()
    .json();
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(1), "{rest:#}");
    assert_eq!(rest["next_cursor"], Value::Null, "{rest:#}");
    let preview = pacer(&["triggers", "preview", "sync", &trigger, "--count", "3"]).ok();
    let times: Vec<&str> = preview.stdout.lines().collect();
    assert_eq!(times.len(), 3, "{preview:#?}");
    assert!(
        times
            .iter()
            .all(|t| t.ends_with(":00:00Z") && t.len() == 20),
        "{preview:#?}"
    );

    // Tasks: listed, shown, cancelled; cancelling a finished one is a conflict (exit 5).
    let open = api.create_task_id("sync", &json!({})).await;
    let done = api.create_task_id("sync", &json!({})).await;
    api.wait_for_state(&done, "processing", SETTLE).await;
    api.callback(&done, &json!({ "status": "completed" }))
        .await
        .expect_status(200);
    let tasks = pacer(&["tasks", "list", "--job", "sync"]).ok();
    assert!(
        tasks
            .stdout
            .lines()
            .next()
            .is_some_and(|h| h.starts_with("ID"))
    );
    assert!(
        tasks.stdout.contains(&open) && tasks.stdout.contains(&done),
        "{tasks:#?}"
    );
    let completed = pacer(&["tasks", "list", "--state", "completed", "--output", "json"])
        .ok()
        .json();
    assert_eq!(completed["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(completed["items"][0]["id"], done.as_str());
    let shown = pacer(&["tasks", "get", &done, "--output", "json"])
        .ok()
        .json();
    assert_eq!(shown["state"], "completed");
    let cancelled = pacer(&["tasks", "cancel", &open]).ok();
    assert!(cancelled.stdout.contains("cancelled"), "{cancelled:#?}");
    let conflict = pacer(&["tasks", "cancel", &done]);
    assert_eq!(conflict.code, 5, "{conflict:#?}");
    assert!(conflict.stderr.contains("409 Conflict"), "{conflict:#?}");
    assert!(
        conflict.stderr.contains("current state: completed"),
        "{conflict:#?}"
    );
    assert!(conflict.stdout.is_empty());

    // The cluster.
    let status = pacer(&["cluster", "status"]).ok();
    assert!(
        status.stdout.starts_with("leader: cli-verbs (term "),
        "{status:#?}"
    );
    let status = pacer(&["cluster", "status", "--output", "json"])
        .ok()
        .json();
    assert_eq!(status["nodes"][0]["id"], "cli-verbs");

    // Errors: the HTTP status and the problem on stderr, and an exit code per kind.
    let missing = pacer(&["jobs", "get", "nope"]);
    assert_eq!(missing.code, 3, "{missing:#?}");
    assert_eq!(
        missing.stderr,
        "pacer: GET /api/v1/jobs/nope: 404 Not Found (Not found) [/problems/not-found]\n  job nope not found\n"
    );
    let invalid = pacer(&["tasks", "get", "not-a-uuid"]);
    assert_eq!(invalid.code, 4, "{invalid:#?}");
    assert!(
        invalid.stderr.contains("422 Unprocessable Entity")
            && invalid
                .stderr
                .contains("\n  id: `not-a-uuid` is not a task id"),
        "{invalid:#?}"
    );
    let preview = pacer(&["triggers", "preview", "sync", &trigger, "--count", "1000"]);
    assert_eq!(preview.code, 4, "{preview:#?}");
    assert!(preview.stderr.contains("count: must be"), "{preview:#?}");
    let anonymous = self::pacer(url, None, &["jobs", "list"]);
    assert_eq!(anonymous.code, 6, "{anonymous:#?}");
    assert!(
        anonymous.stderr.contains("401 Unauthorized"),
        "{anonymous:#?}"
    );
    let operator = token(&["operator"]);
    let moved = scratch.write(
        "moved.yaml",
        "- name: sync\n  target: { url: \"http://127.0.0.1:9/moved\" }\n",
    );
    let forbidden = self::pacer(url, Some(&operator), &["apply", "-f", &moved]);
    assert_eq!(forbidden.code, 6, "{forbidden:#?}");
    assert!(forbidden.stderr.contains("403 Forbidden"), "{forbidden:#?}");
    let unreachable = self::pacer("http://127.0.0.1:1", Some(&admin), &["jobs", "list"]);
    assert_eq!(unreachable.code, 1, "{unreachable:#?}");
    assert!(
        unreachable.stderr.contains("cannot reach the server"),
        "{unreachable:#?}"
    );
    let usage = pacer(&["jobs", "frobnicate"]);
    assert_eq!(usage.code, 2, "{usage:#?}");
    let bad_url = self::pacer("not a url", Some(&admin), &["jobs", "list"]);
    assert_eq!(bad_url.code, 2, "{bad_url:#?}");
}

/// One request the stand-in server received.
#[derive(Debug, Clone)]
struct Seen {
    route: String,
    query: Option<String>,
    last_event_id: Option<String>,
    body: Value,
}

type Log = Arc<Mutex<Vec<Seen>>>;

fn record(log: &Log, uri: &Uri, query: Option<String>, headers: &HeaderMap, body: &str) {
    log.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Seen {
            route: uri.path().to_owned(),
            query,
            last_event_id: headers
                .get("last-event-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: serde_json::from_str(body).unwrap_or(Value::Null),
        });
}

async fn stand_in(
    State(log): State<Log>,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: String,
) -> Response {
    record(&log, &uri, query, &headers, &body);
    let task = |id: &str, origin: &str| {
        json!({ "id": id, "job": "sync", "state": "pending", "origin": { "kind": origin },
                "attempt": 0, "created_at": "2026-12-01T09:00:00.123Z", "finished_at": null,
                "overdue": false })
    };
    let alert = |state: &str| {
        json!({ "id": "a1", "kind": "failed", "severity": "critical",
                "subject": { "task": "t1", "job": "sync" }, "state": state, "count": 2,
                "summary": "task t1 of sync failed",
                "opened_at": "2026-12-01T09:00:00Z", "last_seen_at": "2026-12-01T09:05:00Z",
                "acked_by": null })
    };
    let json_reply = |status: StatusCode, value: Value| {
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            value.to_string(),
        )
            .into_response()
    };
    match uri.path() {
        "/api/v1/jobs/sync/run" => json_reply(StatusCode::ACCEPTED, task("t2", "manual")),
        "/api/v1/tasks/t1/retry" => json_reply(StatusCode::ACCEPTED, task("t3", "retry")),
        "/api/v1/tasks" => json_reply(
            StatusCode::OK,
            json!({ "items": [task("t1", "manual")], "next_cursor": "c2" }),
        ),
        "/api/v1/alerts" => json_reply(
            StatusCode::OK,
            json!({ "items": [alert("open")], "next_cursor": null }),
        ),
        "/api/v1/alerts/a1/ack" => json_reply(StatusCode::OK, alert("acked")),
        "/api/v1/alerts/a1/resolve" => json_reply(StatusCode::OK, alert("resolved")),
        "/api/v1/events" if headers.get("last-event-id").is_none() => (
            [(header::CONTENT_TYPE, "text/event-stream")],
            ": hello\n\nid: 1\nevent: task.created\ndata: {\"task\":\"t1\",\"at\":\"2026-12-01T09:00:00Z\"}\n\n\
             id: 2\nevent: task.completed\ndata: {\"task\":\"t1\"}\n\n",
        )
            .into_response(),
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "application/problem+json")],
            json!({ "type": "/problems/unauthenticated", "title": "Unauthenticated",
                    "status": 401, "detail": "the token expired" })
            .to_string(),
        )
            .into_response(),
    }
}

/// The routes other parts of the API are adding (run, retry, the origin filter, alerts, the
/// event stream) exercised against a stand-in that answers with their documented shapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbs_over_routes_of_the_operator_api_send_and_read_the_documented_shapes() {
    let log: Log = Arc::default();
    let app = Router::new()
        .route("/api/v1/jobs/sync/run", post(stand_in))
        .route("/api/v1/tasks/t1/retry", post(stand_in))
        .route("/api/v1/tasks", get(stand_in))
        .route("/api/v1/alerts", get(stand_in))
        .route("/api/v1/alerts/a1/ack", post(stand_in))
        .route("/api/v1/alerts/a1/resolve", post(stand_in))
        .route("/api/v1/events", get(stand_in))
        .with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let pacer = |args: &[&str]| pacer(&url, Some("t0ken"), args);
    let seen = |route: &str| -> Vec<Seen> {
        log.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|s| s.route == route)
            .cloned()
            .collect()
    };

    let run = pacer(&[
        "jobs",
        "run",
        "sync",
        "--payload",
        r#"{"since": "2026-12-01"}"#,
    ])
    .ok();
    assert_eq!(run.stdout.trim(), "task t2 created for job sync (pending)");
    assert_eq!(
        seen("/api/v1/jobs/sync/run")[0].body,
        json!({ "payload": { "since": "2026-12-01" } })
    );
    let bad_payload = pacer(&["jobs", "run", "sync", "--payload", "[1]"]);
    assert_eq!(bad_payload.code, 2, "{bad_payload:#?}");

    let retry = pacer(&["tasks", "retry", "t1", "--output", "json"])
        .ok()
        .json();
    assert_eq!(retry["id"], "t3");

    let tasks = pacer(&["tasks", "list", "--origin", "manual", "--state", "failed"]).ok();
    assert_eq!(
        seen("/api/v1/tasks")[0].query.as_deref(),
        Some("state=failed&origin=manual")
    );
    assert!(tasks.stdout.contains("t1  sync"), "{tasks:#?}");
    assert!(tasks.stdout.contains("2026-12-01T09:00:00Z"), "{tasks:#?}");
    assert!(
        tasks.stdout.ends_with("(more: --cursor c2)\n"),
        "{tasks:#?}"
    );

    let alerts = pacer(&["alerts", "list", "--state", "open", "--job", "sync"]).ok();
    assert_eq!(
        seen("/api/v1/alerts")[0].query.as_deref(),
        Some("state=open&job=sync")
    );
    let header_row = alerts.stdout.lines().next().unwrap_or_default();
    assert!(
        header_row.starts_with("ID") && header_row.contains("SEVERITY"),
        "{alerts:#?}"
    );
    assert!(alerts.stdout.contains("failed") && alerts.stdout.contains("critical"));
    assert!(
        alerts.stdout.contains("job sync, task t1")
            && alerts.stdout.contains("task t1 of sync failed"),
        "{alerts:#?}"
    );
    let ack = pacer(&["alerts", "ack", "a1", "--note", "looking"]).ok();
    assert_eq!(ack.stdout.trim(), "alert a1 (failed) is acked");
    assert_eq!(
        seen("/api/v1/alerts/a1/ack")[0].body,
        json!({ "note": "looking" })
    );
    let resolved = pacer(&["alerts", "resolve", "a1", "--output", "json"])
        .ok()
        .json();
    assert_eq!(resolved["state"], "resolved");
    assert_eq!(
        seen("/api/v1/alerts/a1/resolve")[0].body,
        json!({ "note": null })
    );

    // The stream: two events, then the connection ends; the CLI resumes after event 2 and
    // stops at the refusal of its token.
    let events = pacer(&["events", "--output", "json"]);
    assert_eq!(events.code, 6, "{events:#?}");
    let lines: Vec<Value> = events
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{events:#?}");
    assert_eq!(lines[0]["event"], "task.created");
    assert_eq!(lines[0]["data"]["task"], "t1");
    assert_eq!(lines[1]["id"], "2");
    let connections = seen("/api/v1/events");
    assert_eq!(connections.len(), 2);
    assert_eq!(connections[1].last_event_id.as_deref(), Some("2"));
    assert!(events.stderr.contains("401 Unauthorized"), "{events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calendars_apply_before_their_triggers_and_the_calendar_and_backfill_verbs_work() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|_| Reply::accept()).await;
    let node = PacerProcess::start(db.url(), "cli-calendars").await;
    let api = node.api();
    let admin = token(&["admin"]);
    let url = node.url();
    let pacer = |args: &[&str]| pacer(url, Some(&admin), args);
    let scratch = Scratch::new("calendars");
    // The job comes first in the file, the calendars after, one including the other: apply
    // writes the calendars first, the included one before the one that includes it.
    let file = scratch.write(
        "jobs.yaml",
        &format!(
            "- name: nightly\n  target: {{ url: \"{}\" }}\n  triggers:\n    - {{ kind: cron, expression: \"0 0 * * * *\", calendars: [maintenance], jitter: 5s }}\n\
             - calendar: maintenance\n  timezone: Europe/Berlin\n  include: [holidays]\n  exclude:\n    - {{ kind: cron, expression: \"0 0 2 * * SUN\", duration: 2h }}\n\
             - calendar: holidays\n  exclude:\n    - {{ kind: yearly, date: \"--12-25\" }}\n",
            downstream.url("/nightly")
        ),
    );
    let applied = pacer(&["apply", "-f", &file]).ok();
    assert!(
        applied.stdout.contains("+ calendar maintenance")
            && applied.stdout.contains("+ calendar holidays"),
        "{applied:#?}"
    );
    let trigger = &triggers(&api, "nightly").await[0];
    assert_eq!(trigger["calendars"], json!(["maintenance"]));
    assert_eq!(trigger["jitter"], "5s");
    let before = writes(&api).await;
    let again = pacer(&["apply", "-f", &file]).ok();
    assert!(
        again.stdout.contains("calendar maintenance (unchanged)"),
        "{again:#?}"
    );
    assert_eq!(
        writes(&api).await,
        before,
        "the second apply writes nothing"
    );
    let exported = pacer(&["export"]).ok();
    assert!(
        exported.stdout.starts_with("- calendar: holidays"),
        "{exported:#?}"
    );
    let round_trip = scratch.write("exported.yaml", &exported.stdout);
    let replayed = pacer(&["apply", "-f", &round_trip]).ok();
    assert!(!replayed.stdout.contains("+ calendar"), "{replayed:#?}");
    assert_eq!(
        writes(&api).await,
        before,
        "applying the export writes nothing"
    );

    let list = pacer(&["calendars", "list"]).ok();
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{list:#?}");
    assert!(lines[1].starts_with("holidays"), "{list:#?}");
    assert!(
        lines[2].starts_with("maintenance") && lines[2].contains("Europe/Berlin"),
        "{list:#?}"
    );
    let shown = pacer(&["calendars", "get", "maintenance", "--output", "json"])
        .ok()
        .json();
    assert_eq!(shown["include"], json!(["holidays"]));
    let body = scratch.write(
        "weekend.yaml",
        "exclude:\n  - { kind: weekdays, days: [sat, sun] }\n",
    );
    pacer(&["calendars", "put", "weekend", "-f", &body]).ok();
    let refused = pacer(&["calendars", "delete", "holidays"]);
    assert_eq!(refused.code, 5, "{refused:#?}");
    assert!(refused.stderr.contains("calendar-in-use"), "{refused:#?}");
    pacer(&["calendars", "delete", "weekend"]).ok();

    // A dry-run backfill of the job over the three last whole hours lists the occurrences it
    // would create; a real one creates them; a second creates nothing.
    let hour = chrono::Utc::now().timestamp() / 3600 * 3600;
    let at = |seconds: i64| {
        chrono::DateTime::from_timestamp(seconds, 0)
            .expect("an instant")
            .to_rfc3339()
    };
    let (from, to) = (at(hour - 3 * 3600 - 1), at(hour - 1));
    let id = trigger["id"].as_str().expect("an id");
    let dry = pacer(&[
        "triggers",
        "backfill",
        "nightly",
        id,
        "--from",
        &from,
        "--to",
        &to,
        "--dry-run",
    ])
    .ok();
    assert!(dry.stdout.contains("would create"), "{dry:#?}");
    let done = pacer(&[
        "triggers", "backfill", "nightly", "--from", &from, "--to", &to, "--output", "json",
    ])
    .ok()
    .json();
    let created = done["triggers"][0]["created"]
        .as_array()
        .map_or(0, Vec::len);
    let excluded = done["triggers"][0]["excluded"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(created + excluded, 3, "{done}");
    let again = pacer(&[
        "triggers", "backfill", "nightly", id, "--from", &from, "--to", &to, "--output", "json",
    ])
    .ok()
    .json();
    assert_eq!(again["created"], json!([]));
    assert_eq!(again["existing"].as_array().map(Vec::len), Some(created));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_calendars_apply_before_their_jobs_prune_after_them_and_export_applies_on_an_empty_cluster()
 {
    let db = TestDb::create().await;
    let node = PacerProcess::start(db.url(), "cli-groups").await;
    let api = node.api();
    let admin = token(&["admin"]);
    let url = node.url();
    let pacer = |args: &[&str]| pacer(url, Some(&admin), args);
    let scratch = Scratch::new("groups");
    let group = |name: &str| {
        let api = &api;
        let path = format!("/api/v1/concurrency-groups/{name}");
        async move { api.request(Method::GET, &path, None, &[]).await }
    };
    // The job comes first and names a group and a calendar declared after it.
    let declared = |limit: u32| {
        format!(
            "- name: sync\n  target: {{ url: \"http://127.0.0.1:9/sync\" }}\n  concurrency_group: registry\n  triggers:\n    - {{ kind: cron, expression: \"0 0 3 * * *\", calendars: [holidays] }}\n\
             - concurrency_group: registry\n  limit: {limit}\n  description: one sync at a time\n\
             - calendar: holidays\n  exclude:\n    - {{ kind: yearly, date: \"--12-25\" }}\n"
        )
    };
    let file = scratch.write("jobs.yaml", &declared(1));
    let start = writes(&api).await;

    // A dry run shows every creation, and the JSON plan lists the calendar and the group.
    let dry = pacer(&["apply", "-f", &file, "--dry-run"]).ok();
    for line in [
        "+ calendar holidays",
        "+ concurrency_group registry",
        "+ job sync",
    ] {
        assert!(dry.stdout.contains(line), "{line}: {dry:#?}");
    }
    assert!(
        dry.stdout.contains("4 to create, 0 to change, 0 to delete"),
        "{dry:#?}"
    );
    let plan = pacer(&["apply", "-f", &file, "--dry-run", "--output", "json"])
        .ok()
        .json();
    let changes = plan["changes"].as_array().expect("changes");
    assert_eq!(changes[0]["action"], "create_calendar", "{plan:#}");
    assert_eq!(changes[0]["calendar"], "holidays");
    assert_eq!(changes[1]["action"], "create_concurrency_group", "{plan:#}");
    assert_eq!(changes[1]["concurrency_group"], "registry");
    assert_eq!(
        changes[1]["definition"],
        json!({ "limit": 1, "description": "one sync at a time" })
    );
    assert_eq!(changes[2]["action"], "create_job");
    assert_eq!(plan["counts"]["create"], 4);
    assert_eq!(
        group("registry").await.status,
        404,
        "a dry run creates nothing"
    );
    assert_eq!(writes(&api).await, start);

    // Applying creates the group before the job that names it.
    let applied = pacer(&["apply", "-f", &file]).ok();
    assert!(
        applied.stdout.contains("Applied 4 change(s)."),
        "{applied:#?}"
    );
    let registry = group("registry").await;
    assert_eq!(registry.expect_status(200)["limit"], 1);
    assert_eq!(registry.body["jobs"], json!(["sync"]));

    // Again: unchanged, nothing written; the JSON plan says what was left alone.
    let before = writes(&api).await;
    let again = pacer(&["apply", "-f", &file]).ok();
    assert!(
        again
            .stdout
            .contains("  concurrency_group registry (unchanged)")
            && again.stdout.contains("No changes: 1 job(s) already match."),
        "{again:#?}"
    );
    let plan = pacer(&["apply", "-f", &file, "--output", "json"])
        .ok()
        .json();
    assert_eq!(plan["changes"], json!([]));
    assert_eq!(
        plan["unchanged_resources"],
        json!({ "calendar": ["holidays"], "concurrency_group": ["registry"], "subscription": [] })
    );
    assert_eq!(
        writes(&api).await,
        before,
        "an unchanged group is not written"
    );

    // A changed limit is shown field by field and updated in place.
    let file = scratch.write("jobs.yaml", &declared(2));
    let changed = pacer(&["apply", "-f", &file]).ok();
    assert!(
        changed.stdout.contains("~ concurrency_group registry")
            && changed.stdout.contains("limit: 1 → 2")
            && changed
                .stdout
                .contains("0 to create, 1 to change, 0 to delete"),
        "{changed:#?}"
    );
    assert_eq!(group("registry").await.expect_status(200)["limit"], 2);

    // One job's export carries the calendar and the group it needs: on an empty cluster it
    // creates everything, and applying it again there changes nothing.
    let exported = pacer(&["export", "sync"]).ok();
    assert!(
        exported.stdout.contains("- calendar: holidays")
            && exported.stdout.contains("- concurrency_group: registry"),
        "{exported:#?}"
    );
    let export_file = scratch.write("exported.yaml", &exported.stdout);
    let fresh_db = TestDb::create().await;
    let fresh = PacerProcess::start(fresh_db.url(), "cli-groups-fresh").await;
    let on_fresh = |args: &[&str]| crate::pacer(fresh.url(), Some(&admin), args);
    let created = on_fresh(&["apply", "-f", &export_file]).ok();
    for line in [
        "+ calendar holidays",
        "+ concurrency_group registry",
        "+ job sync",
    ] {
        assert!(created.stdout.contains(line), "{line}: {created:#?}");
    }
    let replayed = on_fresh(&["apply", "-f", &export_file]).ok();
    assert!(
        replayed
            .stdout
            .contains("No changes: 1 job(s) already match."),
        "{replayed:#?}"
    );
    let everything = pacer(&["export", "--output", "json"]).ok().json();
    assert_eq!(
        everything.as_array().map(Vec::len),
        Some(3),
        "{everything:#}"
    );
    assert_eq!(everything[0]["calendar"], "holidays", "{everything:#}");
    assert_eq!(everything[1]["concurrency_group"], "registry");
    assert_eq!(everything[1]["limit"], 2);
    assert_eq!(everything[2]["name"], "sync");
    drop(fresh);

    // --prune deletes the calendar and the group no file declares, after the jobs.
    api.request(
        Method::PUT,
        "/api/v1/calendars/weekend",
        Some(&json!({ "exclude": [{ "kind": "weekdays", "days": ["sat", "sun"] }] })),
        &[],
    )
    .await
    .expect_status(201);
    api.request(
        Method::PUT,
        "/api/v1/concurrency-groups/spare",
        Some(&json!({ "limit": 3 })),
        &[],
    )
    .await;
    assert_eq!(group("spare").await.status, 200);
    let dry = pacer(&[
        "apply",
        "-f",
        &file,
        "--prune",
        "--dry-run",
        "--output",
        "json",
    ])
    .ok()
    .json();
    assert_eq!(
        dry["changes"],
        json!([
            { "action": "delete_calendar", "calendar": "weekend" },
            { "action": "delete_concurrency_group", "concurrency_group": "spare" },
        ])
    );
    let pruned = pacer(&["apply", "-f", &file, "--prune"]).ok();
    assert!(
        pruned.stdout.contains("- calendar weekend")
            && pruned.stdout.contains("- concurrency_group spare")
            && pruned.stdout.contains("Applied 2 change(s)."),
        "{pruned:#?}"
    );
    assert_eq!(group("spare").await.status, 404);
    let weekend = api
        .request(Method::GET, "/api/v1/calendars/weekend", None, &[])
        .await;
    assert_eq!(weekend.status, 404);
    assert_eq!(
        group("registry").await.status,
        200,
        "a declared group stays"
    );

    // A calendar a trigger still names is refused by the server: apply says which and fails.
    let only_job = scratch.write(
        "only-job.yaml",
        "- name: sync\n  target: { url: \"http://127.0.0.1:9/sync\" }\n  concurrency_group: registry\n  triggers:\n    - { kind: cron, expression: \"0 0 3 * * *\", calendars: [holidays] }\n",
    );
    let refused = pacer(&["apply", "-f", &only_job, "--prune"]);
    assert_eq!(refused.code, 5, "{refused:#?}");
    assert!(
        refused
            .stderr
            .contains("calendar `holidays` was not pruned: the server still has it in use")
            && refused.stderr.contains("calendar-in-use"),
        "{refused:#?}"
    );
    let holidays = api
        .request(Method::GET, "/api/v1/calendars/holidays", None, &[])
        .await;
    assert_eq!(holidays.status, 200);
}

/// A `pacer` command left running (`--watch`): its standard output line by line.
struct Watching {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Watching {
    fn start(url: &str, token: &str, args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut command = Command::new(pacer_binary());
        command.args(args);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("PACER_") || key == "RUST_LOG" {
                command.env_remove(&*key);
            }
        }
        command
            .env("PACER_URL", url)
            .env("PACER_TOKEN", token)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        let mut child = command.spawn().expect("pacer starts");
        let stdout = child.stdout.take().expect("stdout");
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The next line, waiting at most `timeout`; None once the output has ended.
    fn next_line(&self, timeout: Duration) -> Option<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Some(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("no output from the watching pacer within {timeout:?}")
            }
        }
    }

    /// Waits for the process to exit by itself, at most `timeout`: its exit code.
    fn wait(mut self, timeout: Duration) -> i32 {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code().unwrap_or(-1);
            }
            if std::time::Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("the watching pacer did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn yaml(run: &Run) -> Value {
    serde_saphyr::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not YAML ({e}): {run:#?}"))
}

fn assert_code(run: &Run, code: i32) {
    assert_eq!(run.code, code, "expected exit code {code}: {run:#?}");
    assert!(run.stderr.starts_with("pacer: ") || code == 2, "{run:#?}");
}

/// Every operator verb against a real node, with real objects: jobs, triggers, tasks, a run of
/// a job made of steps, messages, skips, alerts, the scheduler, the audit log, groups and
/// calendars; tables, `-o json`, `-o yaml`, `--watch`, the exit codes, and the completions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operator_verb_works_against_a_real_node() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|_| Reply::accept()).await;
    let node = PacerProcess::start(db.url(), "cli-every-verb").await;
    let api = node.api();
    let admin = token(&["admin"]);
    let url = node.url();
    let pacer = |args: &[&str]| pacer(url, Some(&admin), args);
    let scratch = Scratch::new("every-verb");

    // Completions name the nouns and the verbs.
    let bash = pacer(&["completions", "bash"]).ok();
    for word in [
        "complete -F",
        "scheduler",
        "retry-failed",
        "children",
        "messages",
    ] {
        assert!(
            bash.stdout.contains(word),
            "{word}: {}",
            &bash.stdout[..200]
        );
    }
    for shell in ["zsh", "fish"] {
        let script = pacer(&["completions", shell]).ok();
        assert!(script.stdout.contains("run-all"), "{shell}");
    }

    // Who am I.
    let me = pacer(&["whoami", "-o", "json"]).ok().json();
    assert_eq!(me["subject"], "e2e");
    assert!(pacer(&["whoami"]).ok().stdout.starts_with("e2e (issuer "));

    // Jobs from files: a dry run changes nothing, a bad one is refused with exit code 4.
    let sync = scratch.write(
        "sync.yaml",
        &format!(
            "target: {{ url: \"{}\" }}\non_messages: [item.changed]\n",
            downstream.url("/sync")
        ),
    );
    let dry = pacer(&["jobs", "put", "sync", "-f", &sync, "--dry-run"]).ok();
    assert_eq!(dry.stdout.trim(), "job sync is valid; nothing was changed");
    assert_code(&pacer(&["jobs", "get", "sync"]), 3);
    let saved = pacer(&["jobs", "put", "sync", "-f", &sync]).ok();
    assert_eq!(saved.stdout.trim(), "job sync saved (version 1)");
    let solo = scratch.write(
        "solo.json",
        &json!({ "target": { "url": downstream.url("/solo") }, "overlap": "skip" }).to_string(),
    );
    pacer(&["jobs", "put", "solo", "-f", &solo]).ok();
    let bad = scratch.write("bad.yaml", "target: { url: \"http://x\" }\ntimeout: nope\n");
    let refused = pacer(&["jobs", "put", "bad", "-f", &bad]);
    assert_code(&refused, 4);
    assert!(refused.stderr.contains("timeout"), "{refused:#?}");
    assert_code(
        &pacer(&["jobs", "put", "bad", "-f", "/nonexistent/job.yaml"]),
        2,
    );
    let declared = scratch.write(
        "declared.yaml",
        &format!(
            "- name: solo\n  target: {{ url: \"{}\" }}\n",
            downstream.url("/other")
        ),
    );
    let plan = yaml(&pacer(&["apply", "-f", &declared, "--dry-run", "-o", "yaml"]).ok());
    assert_eq!(plan["changes"][0]["job"], "solo", "{plan:#?}");
    let listed = yaml(&pacer(&["jobs", "list", "-o", "yaml"]).ok());
    assert_eq!(listed["items"][0]["name"], "solo");
    assert_eq!(listed["items"][1]["name"], "sync");

    // Triggers: create from flags, show, pause, resume, replace, delete.
    let created = pacer(&["triggers", "create", "sync", "--every", "1h", "-o", "json"])
        .ok()
        .json();
    let trigger = created["id"].as_str().expect("a trigger id").to_owned();
    assert_eq!(created["every"], "1h");
    let cron = pacer(&[
        "triggers",
        "create",
        "sync",
        "--cron",
        "0 0 9 * * *",
        "--timezone",
        "Europe/Berlin",
    ])
    .ok();
    assert!(
        cron.stdout
            .contains("created: cron 0 0 9 * * * (Europe/Berlin)"),
        "{cron:#?}"
    );
    let shown = yaml(&pacer(&["triggers", "get", "sync", &trigger, "-o", "yaml"]).ok());
    assert_eq!(shown["kind"], "interval");
    assert_eq!(shown["id"], trigger.as_str());
    let paused = pacer(&["triggers", "pause", "sync", &trigger]).ok();
    assert_eq!(
        paused.stdout.trim(),
        format!("trigger {trigger} of job sync is paused")
    );
    let resumed = pacer(&["triggers", "resume", "sync", &trigger, "-o", "json"])
        .ok()
        .json();
    assert_eq!(resumed["paused"], false);
    let replaced = pacer(&[
        "triggers", "put", "sync", &trigger, "--every", "2h", "-o", "json",
    ])
    .ok()
    .json();
    assert_eq!(
        (replaced["id"].as_str(), &replaced["every"]),
        (Some(trigger.as_str()), &json!("2h"))
    );
    assert_code(
        &pacer(&["triggers", "create", "sync", "--every", "nonsense"]),
        4,
    );
    assert_code(&pacer(&["triggers", "create", "sync"]), 2);
    let deleted = pacer(&["triggers", "delete", "sync", &trigger]).ok();
    assert_eq!(
        deleted.stdout.trim(),
        format!("trigger {trigger} of job sync deleted")
    );
    assert_code(&pacer(&["triggers", "get", "sync", &trigger]), 3);
    assert_code(&pacer(&["triggers", "pause", "sync", &trigger]), 3);

    // Tasks: create, watch until it ends, report, release.
    let task = pacer(&[
        "tasks",
        "create",
        "sync",
        "--payload",
        r#"{"table": "centers"}"#,
        "-o",
        "json",
    ])
    .ok()
    .json();
    let task = task["id"].as_str().expect("a task id").to_owned();
    api.wait_for_state(&task, "processing", SETTLE).await;
    let watching = Watching::start(
        url,
        &admin,
        &[
            "tasks",
            "get",
            &task,
            "--watch",
            "--interval",
            "1s",
            "-o",
            "json",
        ],
    );
    let first: Value = serde_json::from_str(&watching.next_line(SETTLE).expect("a first view"))
        .expect("a JSON line");
    assert_eq!(first["state"], "processing");
    let reported = pacer(&[
        "tasks",
        "report",
        &task,
        "--status",
        "completed",
        "--message",
        "done",
    ])
    .ok();
    assert_eq!(
        reported.stdout.trim(),
        format!("task {task} of job sync: completed")
    );
    let mut last = first;
    while let Some(line) = watching.next_line(SETTLE) {
        last = serde_json::from_str(&line).expect("a JSON line");
    }
    assert_eq!(last["state"], "completed", "the watch ends with the task");
    assert_eq!(watching.wait(SETTLE), 0);
    assert_code(&pacer(&["tasks", "release", &task]), 5);
    let missing = uuid::Uuid::now_v7().to_string();
    assert_code(&pacer(&["tasks", "get", &missing, "--watch"]), 3);
    assert_code(&pacer(&["tasks", "report", &task, "--status", "bogus"]), 4);

    let failing = pacer(&["tasks", "create", "sync", "-o", "json"])
        .ok()
        .json()["id"]
        .as_str()
        .expect("a task id")
        .to_owned();
    api.wait_for_state(&failing, "processing", SETTLE).await;
    pacer(&[
        "tasks",
        "report",
        &failing,
        "--status",
        "failed",
        "--error-code",
        "boom",
        "--error-message",
        "it broke",
    ])
    .ok();
    let retried = pacer(&["jobs", "retry-failed", "sync", "-o", "json"])
        .ok()
        .json();
    assert_eq!(
        retried["retried"][0]["task"],
        failing.as_str(),
        "{retried:#}"
    );
    let retry = retried["retried"][0]["retry"]
        .as_str()
        .expect("the retry's id")
        .to_owned();
    api.wait_for_state(&retry, "processing", SETTLE).await;
    // A dispatch that hangs holds a claim; releasing it hands the task back.
    let hanging = FakeDownstream::start(|_| Reply::hang()).await;
    let stuck = scratch.write(
        "stuck.json",
        &json!({ "target": { "url": hanging.url("/stuck") } }).to_string(),
    );
    pacer(&["jobs", "put", "stuck", "-f", &stuck]).ok();
    let held = pacer(&["jobs", "run", "stuck", "-o", "json"]).ok().json()["id"]
        .as_str()
        .expect("a task id")
        .to_owned();
    hanging.wait_for_requests(&held, 1, SETTLE).await;
    let released = pacer(&["tasks", "release", &held]).ok();
    assert!(
        released
            .stdout
            .starts_with(&format!("released: task {held} of job stuck")),
        "{released:#?}"
    );
    let by_state = pacer(&[
        "tasks", "list", "--job", "sync", "--state", "failed", "-o", "yaml",
    ])
    .ok();
    assert_eq!(yaml(&by_state)["items"][0]["id"], failing.as_str());

    // The alert the failure opened: listed, watched, shown, acknowledged, resolved.
    let alert = pacer_tests::wait_until("the failure's alert", SETTLE, || async {
        let alerts = pacer(&[
            "alerts", "list", "--job", "sync", "--kind", "failed", "-o", "json",
        ])
        .ok()
        .json();
        alerts["items"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    let shown = pacer(&["alerts", "get", &alert, "-o", "json"]).ok().json();
    assert_eq!(shown["kind"], "failed");
    assert!(shown["deliveries"].is_array(), "{shown:#}");
    let watching = Watching::start(
        url,
        &admin,
        &["alerts", "list", "--watch", "--interval", "1s"],
    );
    let mut frames: Vec<Vec<String>> = Vec::new();
    while frames.len() < 3 {
        let line = watching.next_line(SETTLE).expect("the watch goes on");
        if line.starts_with("every 1s, ") {
            frames.push(Vec::new());
        } else if let Some(frame) = frames.last_mut() {
            frame.push(line);
        }
    }
    drop(watching);
    for frame in &frames[..2] {
        assert!(
            frame
                .iter()
                .any(|l| l.starts_with("ID") && l.contains("SEVERITY"))
                && frame
                    .iter()
                    .any(|l| l.starts_with(alert.as_str()) && l.contains("failed")),
            "{frames:#?}"
        );
    }
    let acked = pacer(&["alerts", "ack", &alert, "--note", "looking"]).ok();
    assert!(acked.stdout.ends_with("is acked\n"), "{acked:#?}");
    pacer(&["alerts", "resolve", &alert]).ok();
    assert_code(
        &pacer(&["alerts", "get", &uuid::Uuid::now_v7().to_string()]),
        3,
    );

    // The job's summary, once and watched.
    let summary = pacer(&["jobs", "summary", "sync"]).ok();
    assert!(
        summary.stdout.starts_with("job:           sync\n")
            && summary.stdout.contains("open:          "),
        "{summary:#?}"
    );
    let figures = pacer(&["jobs", "summary", "sync", "--window", "2", "-o", "json"])
        .ok()
        .json();
    assert_eq!(figures["job"], "sync");
    assert_eq!(figures["recent"]["failed"], 1, "{figures:#}");
    let watching = Watching::start(
        url,
        &admin,
        &[
            "jobs",
            "summary",
            "sync",
            "-w",
            "--interval",
            "1s",
            "-o",
            "yaml",
        ],
    );
    let mut documents = 0;
    while documents < 2 {
        if watching.next_line(SETTLE).expect("the watch goes on") == "---" {
            documents += 1;
        }
    }
    // Ctrl-C ends a watch, successfully.
    let interrupted = Command::new("kill")
        .args(["-INT", &watching.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(interrupted.success());
    assert_eq!(watching.wait(SETTLE), 0);

    // Messages: sent, listed, shown.
    let message = pacer(&[
        "messages",
        "send",
        "--type",
        "item.changed",
        "--key",
        "centers",
        "--payload",
        r#"{"since": "2026-12-01"}"#,
        "-o",
        "json",
    ])
    .ok()
    .json();
    assert_eq!(message["routed"], true, "{message:#}");
    let message_id = message["id"].as_str().expect("a message id").to_owned();
    let messages = pacer(&["messages", "list", "--type", "item.changed"]).ok();
    assert!(
        messages.stdout.starts_with("ID") && messages.stdout.contains(&message_id),
        "{messages:#?}"
    );
    let shown = yaml(&pacer(&["messages", "get", &message_id, "-o", "yaml"]).ok());
    assert_eq!(shown["key"], "centers");
    assert_code(&pacer(&["messages", "get", "no-such-message"]), 3);
    let unrouted = pacer(&["messages", "list", "--routed", "false", "-o", "json"])
        .ok()
        .json();
    assert_eq!(unrouted["items"], json!([]), "{unrouted:#}");

    // The scheduler: standby and back, and running every job while `solo` has an open task:
    // refused by its overlap policy and recorded as a skip.
    let standby = pacer(&["scheduler", "standby"]).ok();
    assert_eq!(
        standby.stdout.trim(),
        "scheduler is in standby: no trigger fires"
    );
    assert_eq!(
        pacer(&["scheduler", "status", "-o", "json"]).ok().json()["paused"],
        true
    );
    assert_eq!(
        yaml(&pacer(&["scheduler", "resume", "-o", "yaml"]).ok())["paused"],
        false
    );
    pacer(&["scheduler", "pause"]).ok();
    assert_eq!(
        pacer(&["scheduler", "resume"]).ok().stdout.trim(),
        "scheduler is running"
    );
    pacer(&["jobs", "run", "solo"]).ok();
    pacer(&["jobs", "pause", "stuck"]).ok();
    let ran = pacer(&["scheduler", "run-all"]).ok();
    assert!(
        ran.stdout.starts_with("JOB")
            && ran.stdout.contains("skipped (overlap")
            && ran.stdout.contains("stuck  paused, not run"),
        "{ran:#?}"
    );
    let ran = pacer(&["scheduler", "run-all", "-o", "json"]).ok().json();
    assert_eq!(ran["skipped"][0]["job"], "solo", "{ran:#}");
    let skips = pacer(&["skips", "list", "--job", "solo"]).ok();
    assert!(
        skips.stdout.starts_with("RECORDED") && skips.stdout.contains("overlap"),
        "{skips:#?}"
    );
    let skips = pacer(&["skips", "list", "--reason", "overlap", "-o", "json"])
        .ok()
        .json();
    assert_eq!(
        skips["items"].as_array().map(Vec::len),
        Some(2),
        "{skips:#}"
    );
    assert_code(&pacer(&["skips", "list", "--reason", "nope"]), 4);

    // A run of a job made of steps: its children by step and state, the tasks of the run, the
    // tree, and what retrying its failures would run again.
    let flow = scratch.write(
        "flow.json",
        &json!({ "steps": [{ "name": "fan", "parallel": [
            { "name": "a", "target": { "url": downstream.url("/a") } },
            { "name": "b", "target": { "url": downstream.url("/b") } } ] }] })
        .to_string(),
    );
    pacer(&["jobs", "put", "flow", "-f", &flow]).ok();
    let run = pacer(&["jobs", "run", "flow", "-o", "json"]).ok().json()["id"]
        .as_str()
        .expect("a run id")
        .to_owned();
    let children =
        pacer_tests::wait_until("the run's children to be dispatched", SETTLE, || async {
            let page = pacer(&["tasks", "children", &run, "-o", "json"])
                .ok()
                .json();
            let items = page["items"].as_array().cloned().unwrap_or_default();
            (items.len() == 2 && items.iter().all(|c| c["state"] == "processing")).then_some(items)
        })
        .await;
    let child = |name: &str| {
        children
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["id"].as_str())
            .expect("a child")
            .to_owned()
    };
    let (a, b) = (child("a"), child("b"));
    pacer(&["tasks", "report", &a, "--status", "completed"]).ok();
    pacer(&[
        "tasks",
        "report",
        &b,
        "--status",
        "failed",
        "--error-code",
        "boom",
    ])
    .ok();
    api.wait_for_state(&run, "failed", SETTLE).await;
    let failed = pacer(&[
        "tasks", "children", &run, "--step", "fan", "--state", "failed",
    ])
    .ok();
    let lines: Vec<&str> = failed.stdout.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("STEP"),
        "{failed:#?}"
    );
    assert_eq!(lines.len(), 2, "{failed:#?}");
    assert!(
        lines[1].starts_with(&b) && lines[1].contains("boom"),
        "{failed:#?}"
    );
    let of_run = pacer(&["tasks", "list", "--run", &run, "-o", "json"])
        .ok()
        .json();
    let mut ids: Vec<&str> = of_run["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["id"].as_str())
        .collect();
    ids.sort_unstable();
    let mut expected = vec![a.as_str(), b.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected, "{of_run:#}");
    let tree = pacer(&["tasks", "tree", &run]).ok();
    assert!(tree.stdout.contains("  fan [parallel] failed"), "{tree:#?}");
    let plan = pacer(&["tasks", "retry", &run, "--only-failed", "--dry-run"]).ok();
    assert!(plan.stdout.contains("  fan: 1 (reuses 1): b"), "{plan:#?}");
    assert_code(
        &pacer(&["tasks", "children", &uuid::Uuid::now_v7().to_string()]),
        3,
    );

    // Groups and calendars.
    pacer(&["groups", "put", "registry", "--limit", "2"]).ok();
    assert_eq!(
        yaml(&pacer(&["groups", "get", "registry", "-o", "yaml"]).ok())["limit"],
        2
    );
    assert!(pacer(&["groups", "list"]).ok().stdout.contains("registry"));
    pacer(&["groups", "delete", "registry"]).ok();
    let weekend = scratch.write(
        "weekend.yaml",
        "exclude:\n  - { kind: weekdays, days: [sat, sun] }\n",
    );
    pacer(&["calendars", "put", "weekend", "-f", &weekend]).ok();
    assert!(
        pacer(&["calendars", "list"])
            .ok()
            .stdout
            .contains("weekend")
    );
    assert_eq!(
        yaml(&pacer(&["calendars", "get", "weekend", "-o", "yaml"]).ok())["name"],
        "weekend"
    );
    pacer(&["calendars", "delete", "weekend"]).ok();

    // The audit log names what was done, by whom.
    let audit = pacer(&["audit", "list", "--actor", "e2e", "-o", "json"])
        .ok()
        .json();
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.iter().any(|a| a.contains("trigger")), "{actions:?}");
    let pauses = pacer(&["audit", "list", "--action", "pause_trigger", "-o", "json"])
        .ok()
        .json();
    assert_eq!(
        pauses["items"].as_array().map(Vec::len),
        Some(1),
        "{pauses:#}"
    );
    assert_eq!(
        pauses["items"][0]["target"],
        format!("trigger:sync/{trigger}"),
        "{pauses:#}"
    );
    let table = pacer(&["audit", "list", "--limit", "3"]).ok();
    assert!(
        table.stdout.starts_with("AT") && table.stdout.contains("(more: --cursor "),
        "{table:#?}"
    );

    // Deleting a job with open tasks is refused until they are cancelled with it.
    assert_code(&pacer(&["jobs", "delete", "sync"]), 5);
    let gone = pacer(&[
        "jobs",
        "delete",
        "sync",
        "--cancel-open-tasks",
        "-o",
        "json",
    ])
    .ok()
    .json();
    assert_eq!(gone["deleted"], "sync");
    assert!(
        gone["cancelled_tasks"].as_u64().is_some_and(|n| n >= 1),
        "{gone:#}"
    );
    assert_code(&pacer(&["jobs", "summary", "sync"]), 3);

    // Unreachable: exit code 1, for the new nouns as for the old.
    for args in [
        &["scheduler", "status"][..],
        &["skips", "list"],
        &["audit", "list"],
    ] {
        let unreachable = self::pacer("http://127.0.0.1:1", Some(&admin), args);
        assert_code(&unreachable, 1);
        assert!(
            unreachable.stderr.contains("cannot reach the server"),
            "{unreachable:#?}"
        );
    }
    let operator = token(&["operator"]);
    let forbidden = self::pacer(url, Some(&operator), &["jobs", "delete", "solo"]);
    assert_code(&forbidden, 6);
}
