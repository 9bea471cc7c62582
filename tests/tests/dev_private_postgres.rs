//! End-to-end: `pacer dev` where no PostgreSQL answers. It starts a private throw-away cluster
//! with the installed server programs, on a Unix socket in a temporary directory, serves the
//! example job from it, and removes the directory when stopped with SIGTERM; with
//! `--keep-data` the data outlives the process and the next start reuses it. With a server
//! answering, it uses that one and starts nothing. The machine's
//! server on 127.0.0.1:5432 is never touched: the URL given points at a closed port.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pacer_tests::{TestDb, http_client, pacer_binary, wait_until};
use serde_json::{Value, json};

/// initdb, the server's start and the node's: generous on a loaded machine.
const START: Duration = Duration::from_secs(90);
const SETTLE: Duration = Duration::from_secs(30);

/// Nothing listens on port 1.
const NOBODY: &str = "postgres://postgres@127.0.0.1:1/pacer";

struct Dev {
    child: Child,
    output: Arc<Mutex<String>>,
    base: String,
    token: String,
}

fn collect(stream: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            let mut text = into.lock().unwrap_or_else(PoisonError::into_inner);
            text.push_str(&line);
            text.push('\n');
        }
    });
}

impl Dev {
    /// Starts `pacer dev` with `args` and waits for its tour (the node serves by then).
    async fn start(args: &[&str]) -> Self {
        let mut command = Command::new(pacer_binary());
        command.arg("dev").args(args);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("PACER_") || key == "RUST_LOG" {
                command.env_remove(&*key);
            }
        }
        let mut child = command
            .env("PACER_LISTEN", "127.0.0.1:0")
            .env("PACER_LOG__LEVEL", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pacer dev starts");
        let output = Arc::new(Mutex::new(String::new()));
        collect(child.stdout.take().expect("stdout"), output.clone());
        collect(child.stderr.take().expect("stderr"), output.clone());
        let mut dev = Self {
            child,
            output,
            base: String::new(),
            token: String::new(),
        };
        let text = dev.wait_for("Press Ctrl-C to stop.").await;
        dev.base = after(&text, "Pacer dev node ready on ", " ");
        dev.token = after(&text, "export PACER_TOKEN=", "\n");
        dev
    }

    fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn wait_for(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + START;
        loop {
            let text = self.output();
            if text.contains(needle) {
                return text;
            }
            if let Some(status) = self.child.try_wait().expect("pollable") {
                panic!("pacer dev exited with {status} before `{needle}`:\n{text}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no `{needle}` within {START:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The private cluster's directory, as `pacer dev` announced it.
    fn directory(&self) -> PathBuf {
        PathBuf::from(after(&self.output(), "(on a Unix socket only) in ", ","))
    }

    /// Creates a task of the example job and waits until the demo downstream completed it.
    async fn complete_a_task(&self) -> String {
        let client = http_client();
        let created: Value = client
            .post(format!("{}/api/v1/jobs/example/tasks", self.base))
            .bearer_auth(&self.token)
            .json(&json!({ "payload": { "name": "world" } }))
            .send()
            .await
            .expect("the node answers")
            .json()
            .await
            .expect("json");
        let id = created["id"].as_str().expect("a task id").to_owned();
        let task = self.task(&id);
        let done = wait_until("the example task to complete", SETTLE, || async {
            let task = task.await_value().await;
            (task["state"] == "completed").then_some(task)
        })
        .await;
        assert_eq!(done["result"], json!({ "greeted": "world" }));
        id
    }

    fn task(&self, id: &str) -> TaskLookup {
        TaskLookup {
            url: format!("{}/api/v1/tasks/{id}", self.base),
            token: self.token.clone(),
        }
    }

    async fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success());
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            if let Some(status) = self.child.try_wait().expect("pollable") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "pacer dev did not exit within {SETTLE:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
    }
}

struct TaskLookup {
    url: String,
    token: String,
}

impl TaskLookup {
    async fn await_value(&self) -> Value {
        let response = http_client()
            .get(&self.url)
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("the node answers");
        response.json().await.unwrap_or(Value::Null)
    }
}

/// The text after `start` up to `end`, in `text`.
fn after(text: &str, start: &str, end: &str) -> String {
    let (_, rest) = text
        .split_once(start)
        .unwrap_or_else(|| panic!("`{start}` in:\n{text}"));
    rest.split_once(end)
        .map_or(rest, |(found, _)| found)
        .trim()
        .to_owned()
}

fn has_socket(dir: &Path) -> bool {
    dir.join(".s.PGSQL.5432").exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_server_pacer_dev_runs_on_a_private_cluster_removed_at_sigterm() {
    let mut dev = Dev::start(&["--database-url", NOBODY]).await;
    let dir = dev.directory();
    assert!(
        dir.starts_with(std::env::temp_dir()),
        "a temporary directory: {}",
        dir.display()
    );
    assert!(has_socket(&dir), "the server's socket in {}", dir.display());
    // postmaster.pid: line 5 is the socket directory, line 6 the first TCP address (none).
    let pid_file = std::fs::read_to_string(dir.join("data/postmaster.pid")).expect("running");
    let lines: Vec<&str> = pid_file.lines().collect();
    assert_eq!(
        lines.get(4).copied(),
        Some(dir.to_str().expect("utf-8")),
        "{pid_file}"
    );
    assert_eq!(
        lines.get(5).map(|l| l.trim()),
        Some(""),
        "no TCP address: {pid_file}"
    );
    assert!(
        dev.output()
            .contains("No PostgreSQL answers at 127.0.0.1:1"),
        "{}",
        dev.output()
    );
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if root {
        assert!(
            dev.output()
                .contains("the private PostgreSQL runs as the `postgres` user"),
            "running as root is said: {}",
            dev.output()
        );
    }
    let healthz = http_client()
        .get(format!("{}/readyz", dev.base))
        .send()
        .await
        .expect("the node answers");
    assert!(healthz.status().is_success());
    dev.complete_a_task().await;

    let status = dev.terminate().await;
    assert!(status.success(), "{status}:\n{}", dev.output());
    assert!(
        !dir.exists(),
        "{} is removed at exit:\n{}",
        dir.display(),
        dev.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_server_answering_pacer_dev_uses_it_and_starts_no_cluster() {
    let db = TestDb::create().await;
    let mut dev = Dev::start(&["--database-url", db.url()]).await;
    assert!(
        !dev.output().contains("No PostgreSQL answers"),
        "{}",
        dev.output()
    );
    let id = dev.complete_a_task().await;
    let row: (String,) = sqlx::query_as("select state from tasks where id = $1::uuid")
        .bind(&id)
        .fetch_one(db.pool())
        .await
        .expect("the task is in the given database");
    assert_eq!(row.0, "completed");
    assert!(dev.terminate().await.success(), "{}", dev.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_data_keeps_the_private_cluster_and_the_next_start_reuses_it() {
    let kept = std::env::temp_dir().join(format!("pacer-kept-{}", uuid::Uuid::now_v7().simple()));
    let kept_arg = kept.display().to_string();
    let mut first = Dev::start(&["--database-url", NOBODY, "--keep-data", &kept_arg]).await;
    let first_dir = first.directory();
    let id = first.complete_a_task().await;
    assert!(first.terminate().await.success(), "{}", first.output());
    assert!(!first_dir.exists(), "the socket directory goes");
    assert!(kept.join("PG_VERSION").is_file(), "the data stays");

    let mut second = Dev::start(&["--database-url", NOBODY, "--keep-data", &kept_arg]).await;
    assert!(
        second.output().contains("reusing the kept PostgreSQL data"),
        "{}",
        second.output()
    );
    let task = second.task(&id).await_value().await;
    assert_eq!(task["state"], "completed", "the first run's task: {task:#}");
    assert!(second.terminate().await.success(), "{}", second.output());
    assert!(kept.join("PG_VERSION").is_file());
    std::fs::remove_dir_all(&kept).expect("the kept data is removed by the test");
}
