//! The workloads and what they share: the run's settings ([`Bench`]), defining the benchmark
//! job, creating triggers, checking every occurrence of interval triggers against the tasks and
//! skips recorded for it, and sampling CPU while a workload runs.

pub(crate) mod concurrency;
pub(crate) mod failover;
pub(crate) mod firing;
pub(crate) mod history;
pub(crate) mod idle;
pub(crate) mod oneshot;
pub(crate) mod smoke;
pub(crate) mod soak;
pub(crate) mod throughput;
pub(crate) mod workflow;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use clap::Args;
use serde_json::{Value, json};
use sqlx::{PgPool, Row as _};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use crate::Common;
use crate::api::for_each_concurrent;
use crate::cluster::{Target, TargetSpec, pacer_binary, profile_of};
use crate::database::{self, BenchDb};
use crate::downstream::Downstream;
use crate::parse_span;
use crate::system::{self, CpuTimes};

/// The run: common settings, where its files go, when it started.
pub(crate) struct Bench {
    pub(crate) common: Common,
    pub(crate) out_dir: PathBuf,
    /// `20261130T071203Z`, naming this run's files.
    pub(crate) stamp: String,
    pub(crate) started: DateTime<Utc>,
    /// Databases created for the run, dropped if it is interrupted.
    created: Mutex<Vec<BenchDb>>,
}

impl Bench {
    pub(crate) fn new(common: Common) -> Result<Self> {
        let out_dir = match &common.out_dir {
            Some(dir) => dir.clone(),
            // target/<profile>/pacer-bench → target/bench
            None => std::env::current_exe()?
                .parent()
                .and_then(|profile| profile.parent())
                .map_or_else(|| PathBuf::from("target"), PathBuf::from)
                .join("bench"),
        };
        let started = Utc::now();
        Ok(Self {
            common,
            out_dir,
            stamp: started.format("%Y%m%dT%H%M%SZ").to_string(),
            started,
            created: Mutex::default(),
        })
    }

    /// Starts the target of `workload`: `default_nodes` nodes unless `--nodes` says otherwise,
    /// or the cluster at `--url`.
    pub(crate) async fn target(&self, workload: &str, default_nodes: usize) -> Result<Target> {
        self.target_with(workload, default_nodes, &[]).await
    }

    /// [`Bench::target`] with `settings` (`PACER_…` variables) for every node started, before
    /// the `--node-env` ones (which win).
    pub(crate) async fn target_with(
        &self,
        workload: &str,
        default_nodes: usize,
        settings: &[(String, String)],
    ) -> Result<Target> {
        let node_env: Vec<(String, String)> = settings
            .iter()
            .chain(&self.common.node_env)
            .cloned()
            .collect();
        let run_dir = self.out_dir.join(format!("{workload}-{}", self.stamp));
        let nodes = self.common.nodes.unwrap_or(default_nodes).max(1);
        eprintln!(
            "pacer-bench: {workload}: starting {}",
            if self.common.url.is_empty() {
                format!("{nodes} node(s); logs in {}", run_dir.display())
            } else {
                format!("against {}", self.common.url.join(", "))
            }
        );
        Target::start(TargetSpec {
            binary: self.common.pacer_bin.as_deref(),
            urls: &self.common.url,
            token: self.common.token.as_deref(),
            database_url: self.common.database_url.as_deref(),
            admin_url: &self.common.admin_url,
            nodes,
            node_env: &node_env,
            run_dir: &run_dir,
            keep_database: self.common.keep_database,
            created: &self.created,
        })
        .await
    }

    /// What the figures were measured on: machine, PostgreSQL, build profiles, commit, target,
    /// and how busy the machine was just before the workload started (it may be shared).
    pub(crate) async fn environment(&self, target: &Target) -> Result<Value> {
        let postgres = database::server_version(&target.pool).await?;
        let pacer_profile = match &target.managed {
            Some(_) => profile_of(&pacer_binary(self.common.pacer_bin.as_deref())?),
            None => "unknown (existing cluster)".to_owned(),
        };
        let before = CpuTimes::read()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let busy = CpuTimes::read()?.busy_since(&before);
        Ok(json!({
            "machine": system::machine(),
            "machine_busy_percent_before_start": crate::stats::round(busy),
            "postgres": postgres,
            "pacer_profile": pacer_profile,
            "bench_profile": if cfg!(debug_assertions) { "debug" } else { "release" },
            "commit": system::git_commit(),
            "target": target.describe(),
        }))
    }

    /// A connection URL for server-wide settings and statistics: the maintenance database of the
    /// local server, or the cluster's own database for `--url`.
    pub(crate) fn server_url(&self) -> &str {
        match (&self.common.url.is_empty(), &self.common.database_url) {
            (false, Some(url)) => url,
            _ => &self.common.admin_url,
        }
    }

    /// Runs `work` against `target`, then always stops the target; an interrupt (Ctrl-C)
    /// stops the work and cleans up too.
    pub(crate) async fn run_on<T>(
        &self,
        target: Target,
        work: impl AsyncFnOnce(&mut Target) -> Result<T>,
    ) -> Result<T> {
        let mut target = target;
        let result = tokio::select! {
            result = work(&mut target) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        let stopped = target.shutdown().await;
        self.created
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let value = result?;
        stopped?;
        Ok(value)
    }
}

impl Drop for Bench {
    /// A database still noted here belongs to a run that failed before it could drop it.
    fn drop(&mut self) {
        let left: Vec<BenchDb> =
            std::mem::take(&mut *self.created.lock().unwrap_or_else(PoisonError::into_inner));
        if left.is_empty() {
            return;
        }
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                for db in left {
                    let _ = db.drop_database().await;
                }
            });
            Some(())
        })
        .join();
    }
}

/// A job the workload defined.
#[derive(Debug, Clone)]
pub(crate) struct BenchJob {
    pub(crate) name: String,
    pub(crate) id: Uuid,
}

/// Defines a job named `<prefix>-<random>` dispatching to `downstream`: with a callback, or
/// completed by the dispatch's 2xx alone. Re-polls, retries and timeouts stay at values no
/// healthy run reaches.
pub(crate) async fn define_job(
    target: &Target,
    downstream: &Downstream,
    prefix: &str,
    expect_callback: bool,
) -> Result<BenchJob> {
    define_job_with(target, downstream, prefix, expect_callback, json!({})).await
}

/// [`define_job`] with `extra` fields laid over the definition.
pub(crate) async fn define_job_with(
    target: &Target,
    downstream: &Downstream,
    prefix: &str,
    expect_callback: bool,
    extra: Value,
) -> Result<BenchJob> {
    let id = Uuid::now_v7().simple().to_string();
    let name = format!("{prefix}-{}", &id[id.len() - 8..]);
    let url = if expect_callback {
        downstream.callback_url()
    } else {
        downstream.accept_url()
    };
    let mut spec = json!({
        "description": "pacer-bench",
        "target": { "url": url },
        "expect_callback": expect_callback,
        "repoll_interval": "30s",
        "dispatch_timeout": "10s",
        "timeout": "1h",
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    target.api.put_job(target.url(0), &name, &spec).await?;
    target.note_job(&name);
    let id: Uuid = sqlx::query_scalar("select id from jobs where name = $1")
        .bind(&name)
        .fetch_one(&target.pool)
        .await
        .context("reading the job's id")?;
    Ok(BenchJob { name, id })
}

/// How many triggers one `POST …/triggers:batch` of the harness creates.
const TRIGGER_BATCH: usize = 1_000;

/// Creates one trigger per spec on `job`, in batches of [`TRIGGER_BATCH`] spread over the nodes;
/// returns how long each batch took.
pub(crate) async fn create_triggers(
    target: &Target,
    job: &BenchJob,
    specs: Vec<Value>,
    concurrency: usize,
) -> Result<Vec<Duration>> {
    let api = target.api.clone();
    let urls = target.urls.clone();
    let name = job.name.clone();
    let batches: Arc<Vec<Vec<Value>>> =
        Arc::new(specs.chunks(TRIGGER_BATCH).map(<[Value]>::to_vec).collect());
    let count = batches.len();
    for_each_concurrent(count, concurrency.min(4), move |i| {
        let (api, batches, name) = (api.clone(), batches.clone(), name.clone());
        let url = urls[i % urls.len()].clone();
        async move { api.create_triggers(&url, &name, &batches[i]).await }
    })
    .await
}

/// Every occurrence of a job's interval triggers in a window, and what each became.
#[derive(Debug, Clone, Default)]
pub(crate) struct Occurrences {
    /// Triggers × occurrences of each in the window.
    pub(crate) expected: u64,
    /// The tasks created for occurrences in the window.
    pub(crate) tasks: Vec<OccurrenceTask>,
    /// Occurrences recorded as skipped, by reason.
    pub(crate) skips: BTreeMap<String, u64>,
    /// Occurrences with neither a task nor a skip.
    pub(crate) missing: u64,
    /// Outcomes beyond the first for one occurrence (the unique key should make this 0).
    pub(crate) duplicates: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct OccurrenceTask {
    pub(crate) id: Uuid,
    pub(crate) scheduled_at: DateTime<Utc>,
    /// When it was meant to go out: `scheduled_at` plus the trigger's jitter offset.
    pub(crate) fire_at: DateTime<Utc>,
    pub(crate) created_at: DateTime<Utc>,
}

impl Occurrences {
    /// Reads what the job's triggers, each firing every `every` seconds (aligned to the Unix
    /// epoch), produced from `first` to `last`.
    pub(crate) async fn read(
        pool: &PgPool,
        job: &BenchJob,
        first: DateTime<Utc>,
        last: DateTime<Utc>,
        every: i64,
    ) -> Result<Self> {
        let triggers: Vec<Uuid> = sqlx::query_scalar("select id from triggers where job_id = $1")
            .bind(job.id)
            .fetch_all(pool)
            .await?;
        let task_rows = sqlx::query(
            "select id, trigger_id, scheduled_at, coalesce(fire_at, scheduled_at) as fire_at, created_at from tasks
             where job_id = $1 and scheduled_at between $2 and $3",
        )
        .bind(job.id)
        .bind(first)
        .bind(last)
        .fetch_all(pool)
        .await?;
        let skip_rows = sqlx::query(
            "select trigger_id, scheduled_at, reason from skipped_runs
             where job_id = $1 and scheduled_at between $2 and $3",
        )
        .bind(job.id)
        .bind(first)
        .bind(last)
        .fetch_all(pool)
        .await?;
        let mut outcomes: HashMap<(Uuid, i64), u64> = HashMap::new();
        let mut tasks = Vec::with_capacity(task_rows.len());
        for row in task_rows {
            let trigger: Option<Uuid> = row.get("trigger_id");
            let scheduled_at: DateTime<Utc> = row.get("scheduled_at");
            if let Some(trigger) = trigger {
                *outcomes
                    .entry((trigger, scheduled_at.timestamp_millis()))
                    .or_default() += 1;
            }
            tasks.push(OccurrenceTask {
                id: row.get("id"),
                scheduled_at,
                fire_at: row.get("fire_at"),
                created_at: row.get("created_at"),
            });
        }
        let mut skips = BTreeMap::new();
        for row in skip_rows {
            let trigger: Option<Uuid> = row.get("trigger_id");
            let scheduled_at: DateTime<Utc> = row.get("scheduled_at");
            let reason: String = row.get("reason");
            if let Some(trigger) = trigger {
                *outcomes
                    .entry((trigger, scheduled_at.timestamp_millis()))
                    .or_default() += 1;
            }
            *skips.entry(reason).or_default() += 1;
        }
        let mut expected = 0;
        let mut missing = 0;
        let every = every.max(1);
        for trigger in &triggers {
            let mut second = ceil_to(first, every).timestamp();
            while second <= last.timestamp() {
                expected += 1;
                if !outcomes.contains_key(&(*trigger, second * 1000)) {
                    missing += 1;
                }
                second += every;
            }
        }
        let duplicates = outcomes.values().map(|n| n.saturating_sub(1)).sum();
        Ok(Self {
            expected,
            tasks,
            skips,
            missing,
            duplicates,
        })
    }

    /// How many occurrences have an outcome (task or skip) so far: a cheap count for waiting.
    pub(crate) async fn count_outcomes(
        pool: &PgPool,
        job: &BenchJob,
        first: DateTime<Utc>,
        last: DateTime<Utc>,
    ) -> Result<u64> {
        let count: i64 = sqlx::query_scalar(
            "select (select count(*) from tasks where job_id = $1 and scheduled_at between $2 and $3)
                  + (select count(*) from skipped_runs where job_id = $1 and scheduled_at between $2 and $3)",
        )
        .bind(job.id)
        .bind(first)
        .bind(last)
        .fetch_one(pool)
        .await?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    pub(crate) fn skipped(&self) -> u64 {
        self.skips.values().sum()
    }
}

/// Milliseconds from `earlier` to `later`.
pub(crate) fn millis(later: DateTime<Utc>, earlier: DateTime<Utc>) -> f64 {
    (later - earlier)
        .num_microseconds()
        .map_or(f64::MAX, |us| us as f64 / 1000.0)
}

/// The whole second at or before `t`.
pub(crate) fn floor_second(t: DateTime<Utc>) -> DateTime<Utc> {
    floor_to(t, 1)
}

/// The first multiple of `every` seconds since the Unix epoch at or after `t`.
pub(crate) fn ceil_to(t: DateTime<Utc>, every: i64) -> DateTime<Utc> {
    let floor = floor_to(t, every);
    if floor == t {
        t
    } else {
        floor + chrono::Duration::seconds(every.max(1))
    }
}

/// The last multiple of `every` seconds since the Unix epoch at or before `t`.
pub(crate) fn floor_to(t: DateTime<Utc>, every: i64) -> DateTime<Utc> {
    let every = every.max(1);
    DateTime::from_timestamp(t.timestamp().div_euclid(every) * every, 0).unwrap_or(t)
}

/// Checks `check` every `every` until it returns `Some` or `timeout` passes (then `None`).
pub(crate) async fn wait_for<T, F, Fut>(
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Samples, every second while a workload runs, how busy the machine's cores are and how much
/// CPU each node used, for the raw file.
pub(crate) struct Sampler {
    stop: Arc<Notify>,
    handle: JoinHandle<Vec<Value>>,
}

impl Sampler {
    /// Starts sampling; `pids` names the processes to follow (nodes by id).
    pub(crate) fn start(pids: Vec<(String, u32)>) -> Self {
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        let handle = tokio::spawn(async move {
            let started = Instant::now();
            let mut samples = Vec::new();
            let mut last_machine = CpuTimes::read().ok();
            let mut last_cpu: HashMap<u32, f64> = pids
                .iter()
                .filter_map(|(_, pid)| system::cpu_seconds(*pid).ok().map(|c| (*pid, c)))
                .collect();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tokio::select! {
                    () = stopped.notified() => return samples,
                    _ = tick.tick() => {}
                }
                let machine = CpuTimes::read().ok();
                let busy = match (&machine, &last_machine) {
                    (Some(now), Some(before)) => Some(crate::stats::round(now.busy_since(before))),
                    _ => None,
                };
                last_machine = machine;
                let mut nodes = serde_json::Map::new();
                for (id, pid) in &pids {
                    let Ok(cpu) = system::cpu_seconds(*pid) else {
                        continue;
                    };
                    let used = cpu - last_cpu.insert(*pid, cpu).unwrap_or(cpu);
                    let rss = system::rss_kib(*pid).unwrap_or_default();
                    nodes.insert(
                        id.clone(),
                        json!({"cpu_percent": crate::stats::round(used * 100.0), "rss_mib": crate::stats::round(rss as f64 / 1024.0)}),
                    );
                }
                samples.push(json!({
                    "t": crate::stats::round(started.elapsed().as_secs_f64()),
                    "machine_busy_percent": busy,
                    "nodes": nodes,
                }));
            }
        });
        Self { stop, handle }
    }

    pub(crate) async fn finish(self) -> Vec<Value> {
        self.stop.notify_one();
        self.handle.await.unwrap_or_default()
    }
}

/// CPU used by processes between two readings: the nodes, this harness, and the PostgreSQL
/// backends serving the run's database; and how busy the machine was overall, so the share
/// taken by everything else (other work on a shared machine) shows.
pub(crate) struct CpuUse {
    machine: Option<CpuTimes>,
    processes: Vec<(String, u32, f64)>,
    backends: HashMap<u32, f64>,
    since: Instant,
}

impl CpuUse {
    /// Starts measuring `pids` (named), this harness, and the target's database backends.
    pub(crate) async fn start(target: &Target, pids: &[(String, u32)]) -> Self {
        let mut processes: Vec<(String, u32, f64)> = pids
            .iter()
            .filter_map(|(id, pid)| {
                system::cpu_seconds(*pid)
                    .ok()
                    .map(|cpu| (id.clone(), *pid, cpu))
            })
            .collect();
        let me = std::process::id();
        if let Ok(cpu) = system::cpu_seconds(me) {
            processes.push(("pacer-bench".to_owned(), me, cpu));
        }
        let backends = backend_pids(target)
            .await
            .into_iter()
            .filter_map(|pid| system::cpu_seconds(pid).ok().map(|cpu| (pid, cpu)))
            .collect();
        Self {
            machine: CpuTimes::read().ok(),
            processes,
            backends,
            since: Instant::now(),
        }
    }

    /// Cores used by each process since the start (CPU seconds / wall seconds), by the
    /// database's backends together, and the machine's busy share.
    pub(crate) async fn finish(&self, target: &Target) -> Value {
        let wall = self.since.elapsed().as_secs_f64().max(1e-3);
        let cores = |seconds: f64| (seconds / wall * 100.0).round() / 100.0;
        let mut ours = 0.0;
        let mut processes: serde_json::Map<String, Value> = self
            .processes
            .iter()
            .filter_map(|(id, pid, before)| {
                let used = system::cpu_seconds(*pid).ok()? - before;
                ours += used;
                Some((
                    id.clone(),
                    json!({"cpu_seconds": crate::stats::round(used), "cores": cores(used)}),
                ))
            })
            .collect();
        // Backends that connected meanwhile count from zero; those that exited are not seen.
        let mut backend_seconds = 0.0;
        for pid in backend_pids(target).await {
            if let Ok(now) = system::cpu_seconds(pid) {
                backend_seconds += now - self.backends.get(&pid).copied().unwrap_or(0.0);
            }
        }
        ours += backend_seconds;
        processes.insert(
            "postgres backends".to_owned(),
            json!({"cpu_seconds": crate::stats::round(backend_seconds), "cores": cores(backend_seconds)}),
        );
        let busy = match (CpuTimes::read().ok(), &self.machine) {
            (Some(now), Some(before)) => Some(now.busy_since(before)),
            _ => None,
        };
        let all_cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let others = busy.map(|b| (b / 100.0 * all_cores * wall - ours).max(0.0));
        json!({
            "wall_seconds": crate::stats::round(wall),
            "machine_busy_percent": busy.map(crate::stats::round),
            "processes": processes,
            "everything_else_cores": others.map(cores),
        })
    }
}

/// The process ids of the PostgreSQL backends connected to the target's database.
async fn backend_pids(target: &Target) -> Vec<u32> {
    sqlx::query_scalar::<_, i32>(
        "select pid from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()",
    )
    .bind(&target.database)
    .fetch_all(&target.stats)
    .await
    .unwrap_or_default()
    .into_iter()
    .filter_map(|pid| u32::try_from(pid).ok())
    .collect()
}

/// Fails unless a span is positive.
pub(crate) fn positive(what: &str, span: Duration) -> Result<()> {
    if span.is_zero() {
        bail!("{what} must be longer than zero");
    }
    Ok(())
}

/// `pacer-bench firing` options.
#[derive(Debug, Clone, Args)]
pub(crate) struct FiringArgs {
    /// How many interval triggers.
    #[arg(long, default_value_t = 1000)]
    pub(crate) triggers: usize,
    /// How often each fires, in whole seconds (such as `1s` or `1m`); interval triggers are
    /// aligned to the Unix epoch, so every trigger fires at the same instants.
    #[arg(long, value_parser = parse_span, default_value = "1s")]
    pub(crate) every: Duration,
    /// How long to let them fire.
    #[arg(long, value_parser = parse_span, default_value = "60s")]
    pub(crate) duration: Duration,
    /// Seconds at the start left out of the figures.
    #[arg(long, value_parser = parse_span, default_value = "3s")]
    pub(crate) warmup: Duration,
    /// Complete tasks by the dispatch's 2xx (`expect_callback: false`) instead of a callback.
    #[arg(long)]
    pub(crate) no_callback: bool,
    /// Give every trigger this `jitter` (such as `1s`): lateness then counts from each task's
    /// jittered fire time.
    #[arg(long, value_parser = parse_span)]
    pub(crate) jitter: Option<Duration>,
}

/// `pacer-bench history` options.
#[derive(Debug, Clone, Args)]
pub(crate) struct HistoryArgs {
    /// Finished tasks to preload (each with one attempt and three events).
    #[arg(long, default_value_t = 10_000_000)]
    pub(crate) tasks: u64,
    /// Tasks written per statement.
    #[arg(long, default_value_t = 250_000)]
    pub(crate) chunk: u64,
    /// Over how long before now the preloaded tasks finished (`480h`: 20 days, within the
    /// default retention of 30).
    #[arg(long, value_parser = parse_span, default_value = "480h")]
    pub(crate) spread: Duration,
    /// Rounds of `throughput` then `firing` on each state of the database.
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: usize,
    /// Tasks of each `throughput` round (with callbacks).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) throughput_tasks: usize,
    /// Create requests in flight at once in `throughput`.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// Interval triggers at 1 s of each `firing` round.
    #[arg(long, default_value_t = 1000)]
    pub(crate) triggers: usize,
    /// How long each `firing` round fires.
    #[arg(long, value_parser = parse_span, default_value = "30s")]
    pub(crate) firing_duration: Duration,
    /// Seconds at the start of each `firing` round left out of the figures.
    #[arg(long, value_parser = parse_span, default_value = "3s")]
    pub(crate) warmup: Duration,
}

/// `pacer-bench soak` options.
#[derive(Debug, Clone, Args)]
pub(crate) struct SoakArgs {
    /// Interval triggers at 1 s: the rate of tasks per second.
    #[arg(long, default_value_t = 1000)]
    pub(crate) triggers: usize,
    /// How long to run.
    #[arg(long, value_parser = parse_span, default_value = "20m")]
    pub(crate) duration: Duration,
    /// The nodes' `retention.tasks` (and `retention.skips`, `events.retention`).
    #[arg(long, value_parser = parse_span, default_value = "2m")]
    pub(crate) retention: Duration,
    /// The nodes' `retention.interval`: how often the leader prunes.
    #[arg(long, value_parser = parse_span, default_value = "10s")]
    pub(crate) prune_every: Duration,
    /// How often table sizes, throughput and lateness are sampled.
    #[arg(long, value_parser = parse_span, default_value = "10s")]
    pub(crate) sample_every: Duration,
    /// Minutes at the start left out of the flatness checks: tables fill up to retention first.
    #[arg(long, value_parser = parse_span, default_value = "5m")]
    pub(crate) settle: Duration,
}

/// `pacer-bench failover` options.
#[derive(Debug, Clone, Args)]
pub(crate) struct FailoverArgs {
    #[arg(long, default_value_t = 1000)]
    pub(crate) triggers: usize,
    /// How long to let them fire.
    #[arg(long, value_parser = parse_span, default_value = "90s")]
    pub(crate) duration: Duration,
    /// How often the leader is killed.
    #[arg(long, value_parser = parse_span, default_value = "20s")]
    pub(crate) kill_every: Duration,
    /// Which kill (1-based) is a SIGTERM instead of a SIGKILL; 0 for none.
    #[arg(long, default_value_t = 3)]
    pub(crate) sigterm_at: usize,
    /// Seconds at the start left out of the figures.
    #[arg(long, value_parser = parse_span, default_value = "3s")]
    pub(crate) warmup: Duration,
}

/// `pacer-bench throughput` options.
#[derive(Debug, Clone, Args)]
pub(crate) struct ThroughputArgs {
    /// Tasks to create in each phase.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) tasks: usize,
    /// Create requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// Which phases: `both`, `callback` (full cycle) or `no-callback` (2xx completes).
    #[arg(long, default_value = "both", value_parser = ["both", "callback", "no-callback"])]
    pub(crate) mode: String,
}

/// `pacer-bench concurrency` options.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConcurrencyArgs {
    /// Tasks to create.
    #[arg(long, default_value_t = 2000)]
    pub(crate) tasks: usize,
    /// The job's `max_concurrency`.
    #[arg(long, default_value_t = 5)]
    pub(crate) limit: u32,
    /// Create requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub(crate) concurrency: usize,
}

/// `pacer-bench workflow` options.
#[derive(Debug, Clone, Args)]
pub(crate) struct WorkflowArgs {
    /// Items the fan-out run's `list` step reports; its two `for_each` steps each make one
    /// child per item. The items are the numbers 0 … N − 1, and every child's `inputs` carry
    /// the list: above ~40,000 items they pass the 256 KiB limit and the run fails.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) items: usize,
    /// The `max_parallel` of both `for_each` steps.
    #[arg(long, default_value_t = 256)]
    pub(crate) max_parallel: u32,
    /// Small runs for the step-advance distribution (0: none).
    #[arg(long, default_value_t = 200)]
    pub(crate) runs: usize,
    /// Single-target steps in each small run (each run advances one less times).
    #[arg(long, default_value_t = 4)]
    pub(crate) steps: usize,
    /// Small runs created per second; 0 creates them all at once.
    #[arg(long, default_value_t = 50.0)]
    pub(crate) rate: f64,
    /// Run the small runs after the fan-out instead of before it, on the table it leaves.
    #[arg(long)]
    pub(crate) advance_after: bool,
    /// `ANALYZE tasks, task_runs` this often while the workload runs, as autovacuum's
    /// auto-analyze would on a server that runs it (off: the tables keep the planner
    /// statistics of no analyze at all, like every other workload here).
    #[arg(long, value_parser = parse_span)]
    pub(crate) analyze_every: Option<Duration>,
}

/// `pacer-bench oneshot` options.
#[derive(Debug, Clone, Args)]
pub(crate) struct OneshotArgs {
    /// How many `once` triggers.
    #[arg(long, default_value_t = 2000)]
    pub(crate) triggers: usize,
    /// Their due instants are spread evenly over this span.
    #[arg(long, value_parser = parse_span, default_value = "20s")]
    pub(crate) spread: Duration,
    /// The first is due this long after the harness starts creating them.
    #[arg(long, value_parser = parse_span, default_value = "10s")]
    pub(crate) lead: Duration,
}

/// `pacer-bench idle` options.
#[derive(Debug, Clone, Args)]
pub(crate) struct IdleArgs {
    /// How long to watch the node at rest.
    #[arg(long, value_parser = parse_span, default_value = "60s")]
    pub(crate) duration: Duration,
    /// How long to let the node settle after start before watching: longer than PostgreSQL's
    /// statistics lag (10 s), so start-up writes (migrations) are not counted.
    #[arg(long, value_parser = parse_span, default_value = "15s")]
    pub(crate) settle: Duration,
}

/// `pacer-bench smoke` options.
#[derive(Debug, Clone, Args)]
pub(crate) struct SmokeArgs {
    #[arg(long, default_value_t = 20)]
    pub(crate) triggers: usize,
    #[arg(long, value_parser = parse_span, default_value = "3s")]
    pub(crate) duration: Duration,
    #[arg(long, default_value_t = 200)]
    pub(crate) tasks: usize,
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::{ceil_to, floor_second, floor_to, millis};

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("a timestamp")
            .with_timezone(&Utc)
    }

    #[test]
    fn seconds_round_to_whole_seconds_and_gaps_are_in_milliseconds() {
        let t = at("2026-12-01T00:00:01.250Z");
        assert_eq!(floor_second(t), at("2026-12-01T00:00:01Z"));
        assert_eq!(ceil_to(t, 1), at("2026-12-01T00:00:02Z"));
        assert_eq!(
            ceil_to(at("2026-12-01T00:00:01Z"), 1),
            at("2026-12-01T00:00:01Z")
        );
        assert!((millis(t, at("2026-12-01T00:00:01Z")) - 250.0).abs() < 1e-9);
    }

    #[test]
    fn minutes_round_to_multiples_since_the_epoch() {
        let t = at("2026-12-01T00:01:30Z");
        assert_eq!(floor_to(t, 60), at("2026-12-01T00:01:00Z"));
        assert_eq!(ceil_to(t, 60), at("2026-12-01T00:02:00Z"));
        assert_eq!(
            ceil_to(at("2026-12-01T00:02:00Z"), 60),
            at("2026-12-01T00:02:00Z")
        );
    }
}
