//! `PacerProcess`: the built `pacer` binary running `serve` on port 0 against a test database,
//! with its log lines kept for assertions. Killed when dropped; its logs are printed when the
//! test is failing.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::time::Instant;

use crate::api::Api;
use crate::wait::wait_until;

/// How long a node may take to migrate, bind and report ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `pacer` binary: `$PACER_BIN`, else `debug/pacer` under `$CARGO_TARGET_DIR`, else beside
/// this test executable's directory (`target/debug/deps/..`). Build it with
/// `cargo build -p pacer-server`.
pub fn pacer_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PACER_BIN") {
        return path.into();
    }
    let mut candidates = Vec::new();
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        let target = PathBuf::from(target);
        // A relative target directory is relative to the workspace, where cargo was run.
        let target = if target.is_relative() {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(target)
        } else {
            target
        };
        candidates.push(target.join("debug").join("pacer"));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(profile_dir) = exe.parent().and_then(|deps| deps.parent())
    {
        candidates.push(profile_dir.join("pacer"));
    }
    let binary = candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "the pacer binary was not found (looked at {candidates:?}); \
                 build it with `cargo build -p pacer-server` or set PACER_BIN"
            )
        });
    static WARNED: Once = Once::new();
    WARNED.call_once(|| warn_if_stale(&binary));
    binary
}

/// Says so (in the test's output, shown when it fails) when a source file of the workspace is
/// newer than the binary: `cargo nextest run -p pacer-tests` does not rebuild `pacer`.
fn warn_if_stale(binary: &Path) {
    fn newest(path: &Path) -> Option<SystemTime> {
        let meta = std::fs::metadata(path).ok()?;
        if !meta.is_dir() {
            return meta.modified().ok();
        }
        std::fs::read_dir(path)
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|entry| newest(&entry.path()))
            .max()
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok();
    let sources = [workspace.join("crates"), workspace.join("migrations")]
        .iter()
        .filter_map(|dir| newest(dir))
        .max();
    if let (Some(built), Some(sources)) = (built, sources)
        && sources > built
    {
        eprintln!(
            "warning: {} is older than the workspace sources; \
             run `cargo build -p pacer-server` to test the current code",
            binary.display()
        );
    }
}

/// How to start a node; every setting is passed as a `PACER_…` environment variable.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    node_id: String,
    env: Vec<(String, String)>,
}

impl NodeSettings {
    /// A node named `node_id` with test-friendly timings: a 200 ms poll, the minimum lease
    /// margin (1 s) and a 2 s drain; and at most 10 database connections (the recommended
    /// floor), so that the nodes of tests running side by side stay within the test server's
    /// `max_connections`.
    pub fn new(node_id: &str) -> Self {
        Self {
            node_id: node_id.to_owned(),
            env: vec![
                ("PACER_DISPATCH__POLL_INTERVAL".into(), "200ms".into()),
                ("PACER_DISPATCH__LEASE_MARGIN".into(), "1s".into()),
                ("PACER_DISPATCH__DRAIN_TIMEOUT".into(), "2s".into()),
                ("PACER_DATABASE__MAX_CONNECTIONS".into(), "10".into()),
            ],
        }
    }

    /// Sets (or overrides) one `PACER_…` variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Sets how long a shutdown waits for in-flight dispatches.
    pub fn drain_timeout(self, span: &str) -> Self {
        self.env("PACER_DISPATCH__DRAIN_TIMEOUT", span)
    }
}

/// Lines a child process wrote, shared with the threads reading its pipes.
type Lines = Arc<Mutex<Vec<String>>>;

/// A running `pacer serve`.
pub struct PacerProcess {
    child: Child,
    node_id: String,
    url: String,
    stdout: Lines,
    stderr: Lines,
    exit: Option<ExitStatus>,
}

impl PacerProcess {
    /// Starts a node on `database_url` with the default [`NodeSettings`] and waits until it is
    /// ready.
    pub async fn start(database_url: &str, node_id: &str) -> Self {
        Self::start_with(database_url, NodeSettings::new(node_id)).await
    }

    /// Starts a node and waits (up to 60 s) for its `listening` log line and a 200 from
    /// `/readyz`.
    pub async fn start_with(database_url: &str, settings: NodeSettings) -> Self {
        let binary = pacer_binary();
        let mut command = Command::new(&binary);
        command.arg("serve");
        // Nothing from the outer environment may change the node's behaviour or its log format.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("PACER_") || key == "RUST_LOG" {
                command.env_remove(&*key);
            }
        }
        command
            .env("PACER_DATABASE_URL", database_url)
            .env("PACER_LISTEN", "127.0.0.1:0")
            .env("PACER_NODE_ID", &settings.node_id)
            .env("PACER_LOG__FORMAT", "json")
            .env("PACER_LOG__LEVEL", "info,sqlx=warn")
            .env("PACER_JWT_HS256_SECRET", crate::TEST_SECRET)
            .env("PACER_SIGNING_KEY_FILE", crate::signing_key_file())
            .envs(settings.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let stdout = collect_lines(child.stdout.take().expect("stdout is piped"));
        let stderr = collect_lines(child.stderr.take().expect("stderr is piped"));
        let mut process = Self {
            child,
            node_id: settings.node_id,
            url: String::new(),
            stdout,
            stderr,
            exit: None,
        };
        process.url = process.wait_for_listening().await;
        process.wait_until_ready().await;
        process
    }

    async fn wait_for_listening(&mut self) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let found = self.logs().into_iter().find_map(|line| {
                (line["message"] == "listening")
                    .then(|| line["address"].as_str().map(|a| format!("http://{a}")))
                    .flatten()
            });
            if let Some(url) = found {
                return url;
            }
            if let Some(status) = self.try_exit() {
                panic!(
                    "pacer {} exited with {status} before listening\n{}",
                    self.node_id,
                    self.output()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "pacer {} did not log `listening` within {START_TIMEOUT:?}\n{}",
                    self.node_id,
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn wait_until_ready(&self) {
        let client = crate::http_client();
        let readyz = format!("{}/readyz", self.url);
        let what = format!("pacer {} to answer 200 on /readyz", self.node_id);
        wait_until(&what, START_TIMEOUT, || async {
            let response = client.get(&readyz).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
    }

    /// The node's base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The node's id, as recorded on claims and attempts.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// A client for this node's REST API.
    pub fn api(&self) -> Api {
        Api::new(&self.url)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL (no drain, no hand-back) and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.try_exit() {
            return status;
        }
        self.child.kill().expect("SIGKILL is delivered");
        let status = self.child.wait().expect("the killed process is reaped");
        self.exit = Some(status);
        status
    }

    /// Sends SIGTERM: the node drains and exits on its own (see [`Self::wait_exit`]).
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends `signal` (a name as `kill(1)` takes it: `TERM`, `STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit and returns its status; panics with the
    /// node's output if it is still running then.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "pacer {} did not exit within {timeout:?}\n{}",
                    self.node_id,
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The exit status once the process has exited on its own or been killed; `None` while it
    /// runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.try_exit()
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("the child can be polled");
        }
        self.exit
    }

    /// Every JSON log line written to stdout so far (other lines are skipped).
    pub fn logs(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The JSON log lines whose `message` is `message`.
    pub fn logs_with_message(&self, message: &str) -> Vec<Value> {
        self.logs()
            .into_iter()
            .filter(|line| line["message"] == message)
            .collect()
    }

    /// Everything the process wrote, for failure messages.
    pub fn output(&self) -> String {
        let stdout = self.stdout.lock().unwrap_or_else(PoisonError::into_inner);
        let stderr = self.stderr.lock().unwrap_or_else(PoisonError::into_inner);
        format!(
            "--- pacer {} stdout ---\n{}\n--- pacer {} stderr ---\n{}",
            self.node_id,
            stdout.join("\n"),
            self.node_id,
            stderr.join("\n")
        )
    }
}

impl Drop for PacerProcess {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.output());
        }
    }
}

/// Reads `pipe` line by line on a thread until it closes, keeping every line.
fn collect_lines(pipe: impl Read + Send + 'static) -> Lines {
    let lines: Lines = Arc::default();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line);
        }
    });
    lines
}
