//! The system under test: `pacer serve` processes started by the harness on a fresh database
//! (each logging to a file of the run), or a cluster already running at `--url`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::api::Api;
use crate::database::{self, BenchDb};

/// How long a node may take to migrate, bind and answer `/readyz`.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings every node started by the harness gets unless `--node-env` overrides them: a pool
/// large enough for the load, and the per-caller write limit out of the way (the harness is one
/// caller creating thousands of tasks a second).
pub(crate) const NODE_DEFAULTS: [(&str, &str); 4] = [
    ("PACER_DATABASE__MAX_CONNECTIONS", "16"),
    ("PACER_AUTH__RATE_LIMIT_PER_SECOND", "100000"),
    ("PACER_AUTH__RATE_LIMIT_BURST", "100000"),
    ("PACER_LOG__LEVEL", "info,sqlx=warn"),
];

/// Each node's share of this machine's cores, at least one: nodes started side by side split
/// the machine between them, as they would under containers' CPU limits, instead of each
/// running a thread per core.
fn worker_threads(nodes: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    (cores / nodes.max(1)).max(1)
}

/// The `pacer` binary: `--pacer-bin`, else `pacer` beside this executable (`target/<profile>/`).
pub(crate) fn pacer_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    let exe = std::env::current_exe().context("locating pacer-bench")?;
    let beside = exe.with_file_name("pacer");
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "the pacer binary was not found at {}; build it with \
         `cargo build --release -p pacer-server -p pacer-bench` or pass --pacer-bin",
        beside.display()
    )
}

/// The build profile of a binary under `target/<profile>/`.
pub(crate) fn profile_of(binary: &Path) -> String {
    binary.parent().and_then(Path::file_name).map_or_else(
        || "unknown".to_owned(),
        |p| p.to_string_lossy().into_owned(),
    )
}

/// How to start nodes: the binary, the database, credentials shared by all, the settings.
#[derive(Debug, Clone)]
pub(crate) struct Launcher {
    binary: PathBuf,
    database_url: String,
    secret: String,
    key_file: PathBuf,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
}

impl Launcher {
    /// Makes the run's credentials (an HS256 secret and a signing key from `pacer keygen`) in
    /// `run_dir`, where node logs also go.
    pub(crate) async fn new(
        binary: PathBuf,
        database_url: String,
        nodes: usize,
        extra_env: &[(String, String)],
        run_dir: &Path,
    ) -> Result<Self> {
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let secret = format!("pacer-bench-{}", uuid::Uuid::now_v7().simple());
        let keygen = clean_command(&binary).arg("keygen").output().await?;
        if !keygen.status.success() {
            bail!(
                "`pacer keygen` failed: {}",
                String::from_utf8_lossy(&keygen.stderr)
            );
        }
        let key_file = run_dir.join("signing.pem");
        std::fs::write(&key_file, &keygen.stdout)?;
        let mut env: Vec<(String, String)> = NODE_DEFAULTS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        env.push((
            "PACER_NODE__WORKER_THREADS".to_owned(),
            worker_threads(nodes).to_string(),
        ));
        for (key, value) in extra_env {
            env.retain(|(k, _)| k != key);
            env.push((key.clone(), value.clone()));
        }
        Ok(Self {
            binary,
            database_url,
            secret,
            key_file,
            env,
            log_dir: run_dir.to_owned(),
        })
    }

    /// An admin token for two hours, minted by `pacer token` with the run's secret.
    pub(crate) async fn admin_token(&self) -> Result<String> {
        let output = clean_command(&self.binary)
            .args(["token", "--role", "admin", "--sub", "bench", "--ttl", "2h"])
            .env("PACER_JWT_HS256_SECRET", &self.secret)
            .output()
            .await?;
        if !output.status.success() {
            bail!(
                "`pacer token` failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8(output.stdout)?.trim().to_owned())
    }

    /// The settings of the nodes, for the report.
    pub(crate) fn settings(&self) -> Value {
        self.env
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    /// Starts `pacer serve` as node `id` and waits until it answers `/readyz`.
    pub(crate) async fn start(&self, id: &str) -> Result<Node> {
        let log = self.log_dir.join(format!("{id}.log"));
        let file = std::fs::File::create(&log)?;
        let mut command = clean_command(&self.binary);
        command
            .arg("serve")
            .env("PACER_DATABASE_URL", &self.database_url)
            .env("PACER_LISTEN", "127.0.0.1:0")
            .env("PACER_NODE_ID", id)
            .env("PACER_LOG__FORMAT", "json")
            .env("PACER_JWT_HS256_SECRET", &self.secret)
            .env("PACER_SIGNING_KEY_FILE", &self.key_file)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let pid = child.id().context("the node exited at once")?;
        let mut node = Node {
            id: id.to_owned(),
            url: String::new(),
            pid,
            child,
            log,
        };
        node.url = node.wait_for_listening().await?;
        node.wait_until_ready().await?;
        Ok(node)
    }
}

/// A command for the `pacer` binary that inherits nothing that could change its behaviour.
fn clean_command(binary: &Path) -> Command {
    let mut command = Command::new(binary);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("PACER_") || key == "RUST_LOG" {
            command.env_remove(&*key);
        }
    }
    command
}

/// A running `pacer serve`, killed when dropped.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) id: String,
    pub(crate) url: String,
    pid: u32,
    child: Child,
    log: PathBuf,
}

impl Node {
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    async fn wait_for_listening(&mut self) -> Result<String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let found = text.lines().find_map(|line| {
                let line: Value = serde_json::from_str(line).ok()?;
                (line["message"] == "listening")
                    .then(|| line["address"].as_str().map(|a| format!("http://{a}")))
                    .flatten()
            });
            if let Some(url) = found {
                return Ok(url);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "node {} exited with {status} before listening; its log: {}",
                    self.id,
                    self.log.display()
                );
            }
            if Instant::now() >= deadline {
                bail!("node {} did not log `listening` in time", self.id);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_until_ready(&mut self) -> Result<()> {
        let client = reqwest::Client::new();
        let readyz = format!("{}/readyz", self.url);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(response) = client.get(&readyz).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("node {} did not become ready in time", self.id);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no drain, no resignation, no hand-back.
    pub(crate) async fn kill(&mut self) -> Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// Sends SIGTERM (the node drains and resigns) without waiting for it to exit.
    pub(crate) async fn signal_term(&self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit after a signal; kills it after that.
    /// Returns whether it exited on its own.
    pub(crate) async fn wait_exit(&mut self, timeout: Duration) -> Result<bool> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                status?;
                Ok(true)
            }
            Err(_) => {
                self.kill().await?;
                Ok(false)
            }
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `timeout`.
    pub(crate) async fn stop(&mut self, timeout: Duration) -> Result<bool> {
        if self.child.try_wait()?.is_some() {
            return Ok(true);
        }
        self.signal_term().await?;
        self.wait_exit(timeout).await
    }
}

/// What a workload runs against.
pub(crate) struct Target {
    /// Base URLs of the nodes' APIs.
    pub(crate) urls: Vec<String>,
    pub(crate) api: Api,
    /// The cluster's database, for reading results.
    pub(crate) pool: PgPool,
    /// A connection to another database of the same server, for its statistics views.
    pub(crate) stats: PgPool,
    /// The name of the cluster's database.
    pub(crate) database: String,
    /// Set when the harness started the nodes.
    pub(crate) managed: Option<Managed>,
    /// Jobs the workload defined, deleted at the end on a cluster the harness did not start.
    jobs: std::sync::Mutex<Vec<String>>,
}

/// Nodes and a database the harness started, and stops at the end.
pub(crate) struct Managed {
    pub(crate) launcher: Launcher,
    pub(crate) nodes: Vec<Node>,
    db: BenchDb,
    keep_database: bool,
}

/// How a target is made.
pub(crate) struct TargetSpec<'a> {
    pub(crate) binary: Option<&'a Path>,
    pub(crate) urls: &'a [String],
    pub(crate) token: Option<&'a str>,
    pub(crate) database_url: Option<&'a str>,
    pub(crate) admin_url: &'a str,
    pub(crate) nodes: usize,
    pub(crate) node_env: &'a [(String, String)],
    pub(crate) run_dir: &'a Path,
    pub(crate) keep_database: bool,
    /// Where a database created for the run is noted, so an interrupted run can drop it.
    pub(crate) created: &'a std::sync::Mutex<Vec<BenchDb>>,
}

impl Target {
    /// Starts `spec.nodes` nodes on a fresh database, or connects to the cluster at `--url`.
    pub(crate) async fn start(spec: TargetSpec<'_>) -> Result<Self> {
        if !spec.urls.is_empty() {
            let token = spec.token.context("--url needs --token (an admin token)")?;
            let database_url = spec
                .database_url
                .context("--url needs --database-url to read results")?;
            let pool = database::pool(database_url).await?;
            let database: String = sqlx::query_scalar("select current_database()::text")
                .fetch_one(&pool)
                .await?;
            return Ok(Self {
                urls: spec
                    .urls
                    .iter()
                    .map(|u| u.trim_end_matches('/').to_owned())
                    .collect(),
                api: Api::new(token)?,
                stats: pool.clone(),
                pool,
                database,
                managed: None,
                jobs: std::sync::Mutex::default(),
            });
        }
        let binary = pacer_binary(spec.binary)?;
        let db = BenchDb::create(spec.admin_url).await?;
        if !spec.keep_database {
            spec.created
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(db.clone());
        }
        let started = async {
            let launcher = Launcher::new(
                binary,
                db.url.clone(),
                spec.nodes,
                spec.node_env,
                spec.run_dir,
            )
            .await?;
            let token = launcher.admin_token().await?;
            // The first node migrates the database; the others then start side by side.
            let mut nodes = vec![launcher.start("node-1").await?];
            let mut others = tokio::task::JoinSet::new();
            for n in 2..=spec.nodes {
                let launcher = launcher.clone();
                others.spawn(async move { launcher.start(&format!("node-{n}")).await });
            }
            while let Some(node) = others.join_next().await {
                nodes.push(node??);
            }
            nodes.sort_by(|a, b| a.id.cmp(&b.id));
            anyhow::Ok((launcher, token, nodes))
        }
        .await;
        let (launcher, token, nodes) = match started {
            Ok(started) => started,
            Err(error) => {
                let _ = db.drop_database().await;
                return Err(error);
            }
        };
        Ok(Self {
            urls: nodes.iter().map(|n| n.url.clone()).collect(),
            api: Api::new(&token)?,
            pool: database::pool(&db.url).await?,
            stats: database::pool(spec.admin_url).await?,
            database: db.name.clone(),
            managed: Some(Managed {
                launcher,
                nodes,
                db,
                keep_database: spec.keep_database,
            }),
            jobs: std::sync::Mutex::default(),
        })
    }

    /// Notes a job the workload defined, to delete it from a cluster at `--url` at the end.
    pub(crate) fn note_job(&self, name: &str) {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(name.to_owned());
    }

    /// The base URL for the `i`-th request, spreading requests over the nodes.
    pub(crate) fn url(&self, i: usize) -> &str {
        &self.urls[i % self.urls.len()]
    }

    /// The nodes the harness started; an error for a cluster at `--url`.
    pub(crate) fn managed(&mut self) -> Result<&mut Managed> {
        self.managed
            .as_mut()
            .context("this workload kills or inspects nodes, so it needs nodes the harness starts (no --url)")
    }

    /// Describes the target for the report.
    pub(crate) fn describe(&self) -> Value {
        match &self.managed {
            Some(managed) => json!({
                "kind": "started by the harness",
                "nodes": managed.nodes.len(),
                "database": self.database,
                "node_settings": managed.launcher.settings(),
            }),
            None => json!({
                "kind": "existing cluster (--url)",
                "urls": self.urls,
                "database": self.database,
            }),
        }
    }

    /// Stops the nodes (SIGTERM, then SIGKILL after 15 s) and drops the database, unless
    /// `--keep-database`. On a cluster at `--url`, deletes the jobs the workload defined (and
    /// with them their triggers; their tasks stay as history).
    pub(crate) async fn shutdown(mut self) -> Result<()> {
        self.pool.close().await;
        self.stats.close().await;
        let Some(mut managed) = self.managed.take() else {
            let jobs = std::mem::take(
                &mut *self
                    .jobs
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            for job in jobs {
                self.api.delete_job(&self.urls[0], &job).await?;
            }
            return Ok(());
        };
        let mut stopping = tokio::task::JoinSet::new();
        for mut node in managed.nodes.drain(..) {
            stopping.spawn(async move { node.stop(Duration::from_secs(15)).await });
        }
        while let Some(stopped) = stopping.join_next().await {
            if let Err(error) = stopped.map_err(anyhow::Error::from).and_then(|r| r) {
                eprintln!("pacer-bench: stopping a node: {error:#}");
            }
        }
        if managed.keep_database {
            eprintln!("pacer-bench: kept database {}", managed.db.url);
            Ok(())
        } else {
            managed.db.drop_database().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::worker_threads;

    #[test]
    fn nodes_split_the_cores_and_each_keeps_one() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        assert_eq!(worker_threads(1), cores);
        assert_eq!(worker_threads(cores), 1);
        assert_eq!(worker_threads(cores * 4), 1);
        assert_eq!(worker_threads(0), cores);
    }
}
