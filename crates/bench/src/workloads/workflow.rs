//! `workflow`: jobs made of steps (README "Workflows"), in two phases.
//!
//! *Step advance* (first, or after the fan-out with `--advance-after`): R runs of a job of S
//! single-target steps, created at a steady rate (or all at once), for a distribution of step
//! advance latency: S − 1 advances per run, each the next step's first dispatch at the
//! downstream − the `finished_at` of the step's child.
//!
//! *Fan-out*: one run of a job with three steps: `list` (one child, called back with
//! `result.items` = N items), then `ingest` and `publish`, each `for_each: list` with
//! `max_parallel` P, so 2N + 1 children in all, each called back `completed` at once. Measured:
//! children completed per second from the run's creation to its end; each step's span; the two
//! step advances; the most children open at once, at the downstream and in the database (must
//! not exceed P); commits and CPU per child; and that every child was created, dispatched,
//! called back and completed exactly once.
//!
//! Before either, the nodes' commits at rest are counted, so a phase's commits can be told
//! apart from their polling. While the fan-out runs, `pg_stat_activity` is sampled (see
//! `activity.rs`): the endings of one run's children each lock the run's `task_runs` row, so
//! how often an ending waits for that lock, and what the lock's holder is doing meanwhile, show
//! where the run's time goes. The transactions that ended the children are counted from their
//! `completed` events.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::Row as _;
use uuid::Uuid;

use super::firing::{cpu_row, node_pids};
use super::{Bench, BenchJob, CpuUse, WorkflowArgs, millis, wait_for};
use crate::activity::{ActivitySampler, Profile};
use crate::api::for_each_concurrent;
use crate::cluster::Target;
use crate::database::DbCounters;
use crate::downstream::{CallbackCounts, Dispatch, Downstream};
use crate::report::{Report, Row};
use crate::stats::{Distribution, json_of, round};

/// Issue: children per second end to end, as for single tasks (throughput with callbacks).
const CHILDREN_PER_SECOND_TARGET: f64 = 2000.0;
/// Issue: step advance latency, p99.
const ADVANCE_P99_TARGET_MS: f64 = 100.0;
/// DESIGN §11: database commits per task cycle; a child is a task.
const COMMITS_PER_CHILD_TARGET: f64 = 3.0;
/// How long PostgreSQL 15 may hold back an idle backend's statistics.
const STATS_LAG: Duration = Duration::from_secs(11);
/// How long the idle nodes' commits are counted before the workload starts.
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// How often `pg_stat_activity` is sampled during the fan-out.
const ACTIVITY_EVERY: Duration = Duration::from_millis(25);
/// The statement that takes a run's lock (`lock_runs` in crates/store/src/runs.rs).
const LOCK_RUNS_STATEMENT: &str = "select r.task_id from task_runs r";

pub(crate) async fn run(bench: &Bench, args: &WorkflowArgs) -> Result<Report> {
    if args.items == 0 {
        bail!("--items must be at least 1");
    }
    if !(1..=10_000).contains(&args.max_parallel) {
        bail!("--max-parallel must be between 1 and 10000 (a step's `max_parallel`)");
    }
    if args.steps < 2 {
        bail!("--steps must be at least 2: a run of one step has no advance");
    }
    let target = bench.target("workflow", 3).await?;
    bench
        .run_on(target, async |target| {
            let environment = bench.environment(target).await?;
            let downstream =
                Downstream::start(&bench.common.downstream_host, bench.common.callback_delay)
                    .await?;
            let mut report = Report::new(
                "workflow",
                environment,
                json!({
                    "items": args.items,
                    "max_parallel": args.max_parallel,
                    "runs": args.runs,
                    "steps_per_run": args.steps,
                    "runs_per_second": args.rate,
                    "advance_after_fan_out": args.advance_after,
                    "analyze_every_ms": args.analyze_every.map(|d| d.as_millis()),
                    "callback_delay_ms": bench.common.callback_delay.as_millis(),
                }),
            );
            report.measured = format!(
                "fan-out: one run of list → ingest (for_each list) → publish (for_each list), \
                 {} items, max_parallel {}, every child called back `completed` at once; rate = \
                 children completed / (run finished_at − created_at); advance = the next step's \
                 first dispatch at the downstream − the step's last child's finished_at; commits \
                 = pg_stat_database.xact_commit over the phase (read {} s after it) / children, \
                 and less the idle nodes' rate counted before the start. step advance ({} the \
                 fan-out): {} runs of {} single-target steps, {}; advance as above, per step.",
                args.items,
                args.max_parallel,
                STATS_LAG.as_secs(),
                if args.advance_after {
                    "after"
                } else {
                    "before"
                },
                args.runs,
                args.steps,
                if args.rate > 0.0 {
                    format!("created at {} runs/s", args.rate)
                } else {
                    "created all at once (32 requests in flight)".to_owned()
                },
            );
            let idle_rate = idle_commit_rate(target).await?;
            let analyzer = args
                .analyze_every
                .map(|every| Analyzer::start(target.pool.clone(), every));
            let mut advance = None;
            if args.runs > 0 && !args.advance_after {
                advance = Some(Advances::run(target, &downstream, args, idle_rate).await?);
            }
            let fan = FanOut::run(target, &downstream, args, idle_rate).await?;
            if args.runs > 0 && args.advance_after {
                advance = Some(Advances::run(target, &downstream, args, idle_rate).await?);
            }
            if let Some(analyzer) = analyzer {
                let (count, took) = analyzer.finish().await;
                report.notes.push(format!(
                    "ANALYZE tasks, task_runs ran {count} times during the workload ({} ms each \
                     on average), as auto-analyze would",
                    round(took.as_secs_f64() * 1000.0 / count.max(1) as f64)
                ));
            }
            fan.fill(&mut report, args);
            let mut results = serde_json::Map::new();
            results.insert("idle_commits_per_s".to_owned(), json!(round(idle_rate)));
            results.insert("fan_out".to_owned(), fan.to_json(args));
            if let Some(advance) = advance {
                advance.fill(&mut report);
                results.insert("step_advance".to_owned(), advance.to_json());
                report.raw = json!({ "advance_ms": advance.samples });
            }
            report.results = Value::Object(results);
            Ok(report)
        })
        .await
}

/// Runs `ANALYZE` on the tables the workload grows, every so often, until finished.
struct Analyzer {
    stop: std::sync::Arc<tokio::sync::Notify>,
    handle: tokio::task::JoinHandle<(u64, Duration)>,
}

impl Analyzer {
    fn start(pool: sqlx::PgPool, every: Duration) -> Self {
        let stop = std::sync::Arc::new(tokio::sync::Notify::new());
        let stopped = stop.clone();
        let handle = tokio::spawn(async move {
            let (mut count, mut took) = (0, Duration::ZERO);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stopped.notified() => return (count, took),
                    _ = tick.tick() => {}
                }
                let started = tokio::time::Instant::now();
                if sqlx::query("analyze tasks, task_runs")
                    .execute(&pool)
                    .await
                    .is_ok()
                {
                    count += 1;
                    took += started.elapsed();
                }
            }
        });
        Self { stop, handle }
    }

    async fn finish(self) -> (u64, Duration) {
        self.stop.notify_one();
        self.handle.await.unwrap_or_default()
    }
}

/// Defines a job made of `steps`, with the benchmark jobs' settings (see BENCHMARKS.md).
async fn define_workflow(target: &Target, prefix: &str, steps: Value) -> Result<BenchJob> {
    let id = Uuid::now_v7().simple().to_string();
    let name = format!("{prefix}-{}", &id[id.len() - 8..]);
    let spec = json!({
        "description": "pacer-bench",
        "steps": steps,
        "expect_callback": true,
        "repoll_interval": "30s",
        "dispatch_timeout": "10s",
        "timeout": "1h",
    });
    target.api.put_job(target.url(0), &name, &spec).await?;
    target.note_job(&name);
    let id: Uuid = sqlx::query_scalar("select id from jobs where name = $1")
        .bind(&name)
        .fetch_one(&target.pool)
        .await
        .context("reading the job's id")?;
    Ok(BenchJob { name, id })
}

/// A run's children as the database holds them at the end.
#[derive(Debug, Clone)]
struct Child {
    id: String,
    run: String,
    step: usize,
    name: String,
    state: String,
    /// Its first dispatch (the claim that sent it), on the database's clock.
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

async fn children_of(target: &Target, job: &BenchJob) -> Result<Vec<Child>> {
    let rows = sqlx::query(
        "select id, run_id, step, child, state, started_at, finished_at from tasks
         where job_id = $1 and step is not null",
    )
    .bind(job.id)
    .fetch_all(&target.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Child {
            id: r.get::<Uuid, _>("id").to_string(),
            run: r.get::<Uuid, _>("run_id").to_string(),
            step: usize::try_from(r.get::<i32, _>("step")).unwrap_or_default(),
            name: r.get("child"),
            state: r.get("state"),
            started_at: r.get("started_at"),
            finished_at: r.get("finished_at"),
        })
        .collect())
}

/// The most children open at once as Pacer sees them: from a child's first dispatch
/// (`started_at`, set by the claim that sends it) to its `finished_at` (the start of the
/// transaction that ends it, which is also the one that releases the next held item, so a
/// released item's claim comes after it). At equal instants, endings count first.
fn most_open_at_once(children: &[Child]) -> usize {
    let mut events: Vec<(DateTime<Utc>, i8)> = Vec::with_capacity(children.len() * 2);
    for child in children {
        if let (Some(started), Some(finished)) = (child.started_at, child.finished_at) {
            events.push((started, 1));
            events.push((finished, -1));
        }
    }
    events.sort();
    let (mut open, mut most) = (0i64, 0i64);
    for (_, change) in events {
        open += i64::from(change);
        most = most.max(open);
    }
    usize::try_from(most).unwrap_or_default()
}

/// A run (a task of the job that is no child).
#[derive(Debug, Clone)]
struct RunRow {
    id: String,
    state: String,
    message: Option<String>,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

async fn runs_of(target: &Target, job: &BenchJob) -> Result<Vec<RunRow>> {
    let rows = sqlx::query(
        "select id, state, message, created_at, finished_at from tasks
         where job_id = $1 and step is null order by id",
    )
    .bind(job.id)
    .fetch_all(&target.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| RunRow {
            id: r.get::<Uuid, _>("id").to_string(),
            state: r.get("state"),
            message: r.get("message"),
            created_at: r.get("created_at"),
            finished_at: r.get("finished_at"),
        })
        .collect())
}

/// How many of the job's runs have ended.
async fn runs_ended(target: &Target, job: &BenchJob) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "select count(*) from tasks where job_id = $1 and step is null and finished_at is not null",
    )
    .bind(job.id)
    .fetch_one(&target.pool)
    .await?)
}

/// What the downstream saw of a set of runs' children, checked against what should exist.
#[derive(Debug, Clone, Default)]
struct Delivery {
    /// Children expected (by run, step and name) that the database does not hold completed.
    lost: u64,
    /// Children expected that never reached the downstream.
    undispatched: u64,
    /// Dispatches beyond the first per child, plus children held twice under one name.
    duplicates: u64,
    /// Children whose callback was not answered 2xx exactly once.
    callbacks_not_once: u64,
    /// Children the database holds that were not expected (a name or step too many).
    unexpected: u64,
}

impl Delivery {
    /// `expected`: (run, step index, child name); `step_names`: the job's steps by index.
    fn check(
        expected: &HashSet<(String, usize, String)>,
        children: &[Child],
        step_names: &[String],
        dispatches: &[&Dispatch],
        answered: &HashMap<String, u64>,
    ) -> Self {
        let mut found = Self::default();
        let mut held: HashMap<(&str, usize, &str), u64> = HashMap::new();
        let mut completed: HashSet<(&str, usize, &str)> = HashSet::new();
        for child in children {
            *held
                .entry((child.run.as_str(), child.step, child.name.as_str()))
                .or_default() += 1;
            if child.state == "completed" {
                completed.insert((child.run.as_str(), child.step, child.name.as_str()));
            }
            if !expected.contains(&(child.run.clone(), child.step, child.name.clone())) {
                found.unexpected += 1;
            }
            if answered.get(&child.id).copied().unwrap_or_default() != 1 {
                found.callbacks_not_once += 1;
            }
        }
        found.duplicates += held.values().map(|n| n.saturating_sub(1)).sum::<u64>();
        let mut per_task: HashMap<&str, u64> = HashMap::new();
        let mut seen: HashSet<(&str, &str, &str)> = HashSet::new();
        for d in dispatches {
            *per_task.entry(d.task_id.as_str()).or_default() += 1;
            if let (Some(run), Some(step), Some(child)) = (&d.run, &d.step, &d.child) {
                seen.insert((run.as_str(), step.as_str(), child.as_str()));
            }
        }
        found.duplicates += per_task.values().map(|n| n.saturating_sub(1)).sum::<u64>();
        for (run, step, name) in expected {
            if !completed.contains(&(run.as_str(), *step, name.as_str())) {
                found.lost += 1;
            }
            let step_name = step_names.get(*step).map_or("", String::as_str);
            if !seen.contains(&(run.as_str(), step_name, name.as_str())) {
                found.undispatched += 1;
            }
        }
        found
    }

    fn to_json(&self) -> Value {
        json!({
            "lost": self.lost,
            "undispatched": self.undispatched,
            "duplicates": self.duplicates,
            "callbacks_not_answered_exactly_once": self.callbacks_not_once,
            "unexpected_children": self.unexpected,
        })
    }

    fn row(&self, label: &str) -> Row {
        Row::check(
            format!("{label}: lost / undispatched / duplicate / callbacks not once"),
            format!(
                "{} / {} / {} / {}",
                self.lost, self.undispatched, self.duplicates, self.callbacks_not_once
            ),
            "0 / 0 / 0 / 0",
            self.ok(),
        )
    }

    fn ok(&self) -> bool {
        self.lost == 0
            && self.undispatched == 0
            && self.duplicates == 0
            && self.callbacks_not_once == 0
            && self.unexpected == 0
    }

    fn require(&self, report: &mut Report, label: &str) {
        report.require_zero(&format!("children lost ({label})"), self.lost);
        report.require_zero(
            &format!("children never dispatched ({label})"),
            self.undispatched,
        );
        report.require_zero(
            &format!("duplicate dispatches or children ({label})"),
            self.duplicates,
        );
        report.require_zero(
            &format!("children not called back exactly once ({label})"),
            self.callbacks_not_once,
        );
        report.require_zero(&format!("unexpected children ({label})"), self.unexpected);
    }
}

/// How many callbacks were answered 2xx per task.
fn answered_per_task(downstream: &Downstream) -> HashMap<String, u64> {
    let mut answered = HashMap::new();
    for a in downstream.answered() {
        *answered.entry(a.task_id).or_default() += 1;
    }
    answered
}

/// When each task's (last) answered callback was sent.
fn callback_sent(downstream: &Downstream) -> HashMap<String, DateTime<Utc>> {
    downstream
        .answered()
        .into_iter()
        .map(|a| (a.task_id, a.sent_at))
        .collect()
}

/// The database's counters from a moment at rest: a phase's commits are counted from here.
struct CommitWindow {
    before: DbCounters,
    since: tokio::time::Instant,
}

/// What a phase committed: every transaction of the run's database, and the share of them the
/// nodes' polling would have made anyway over the same time at rest.
#[derive(Debug, Clone, Default)]
struct Commits {
    counters: DbCounters,
    window: Duration,
    idle: f64,
}

impl CommitWindow {
    async fn open(target: &Target) -> Result<Self> {
        Ok(Self {
            before: DbCounters::read(&target.stats, &target.pool, &target.database).await?,
            since: tokio::time::Instant::now(),
        })
    }

    /// Waits out the statistics lag, then counts; `idle_rate`: the nodes' commits a second at
    /// rest.
    async fn close(self, target: &Target, idle_rate: f64) -> Result<Commits> {
        eprintln!(
            "pacer-bench: workflow: waiting {} s for PostgreSQL's statistics",
            STATS_LAG.as_secs()
        );
        tokio::time::sleep(STATS_LAG).await;
        let after = DbCounters::read(&target.stats, &target.pool, &target.database).await?;
        let window = self.since.elapsed();
        Ok(Commits {
            counters: after.since(&self.before),
            window,
            idle: idle_rate * window.as_secs_f64(),
        })
    }
}

impl Commits {
    /// All commits / children, and the same less the idle nodes' share.
    fn per_child(&self, children: usize) -> (f64, f64) {
        let n = children.max(1) as f64;
        let all = self.counters.xact_commit as f64;
        (all / n, (all - self.idle).max(0.0) / n)
    }

    fn to_json(&self, children: usize) -> Value {
        let (all, less_idle) = self.per_child(children);
        json!({
            "commits_per_child": (all * 100.0).round() / 100.0,
            "commits_per_child_less_idle": (less_idle * 100.0).round() / 100.0,
            "window_s": round(self.window.as_secs_f64()),
            "idle_commits_in_window": round(self.idle),
            "database": self.counters.to_json(),
        })
    }
}

/// Lets the nodes' start-up statistics arrive, then counts the commits the nodes make at rest
/// over `IDLE_WINDOW` (polls, heartbeats, lease renewals): commits a second.
async fn idle_commit_rate(target: &Target) -> Result<f64> {
    eprintln!(
        "pacer-bench: workflow: settling {} s, then counting the idle nodes' commits for {} s",
        STATS_LAG.as_secs(),
        IDLE_WINDOW.as_secs()
    );
    tokio::time::sleep(STATS_LAG).await;
    let window = CommitWindow::open(target).await?;
    tokio::time::sleep(IDLE_WINDOW).await;
    let after = DbCounters::read(&target.stats, &target.pool, &target.database).await?;
    let commits = after.since(&window.before).xact_commit as f64;
    Ok(commits / window.since.elapsed().as_secs_f64())
}

/// CPU seconds used by everything measured (nodes, PostgreSQL backends, harness).
fn cpu_seconds(cpu: &Value) -> f64 {
    cpu["processes"]
        .as_object()
        .map(|p| p.values().filter_map(|v| v["cpu_seconds"].as_f64()).sum())
        .unwrap_or_default()
}

/// One step of the fan-out run, as it went.
#[derive(Debug, Clone)]
struct StepSpan {
    name: String,
    children: usize,
    completed: usize,
    first_dispatch: Option<DateTime<Utc>>,
    last_finished: Option<DateTime<Utc>>,
    /// Mean size of the step's dispatch bodies.
    mean_body_bytes: Option<f64>,
}

impl StepSpan {
    fn span(&self) -> Option<Duration> {
        match (self.first_dispatch, self.last_finished) {
            (Some(first), Some(last)) => (last - first).to_std().ok(),
            _ => None,
        }
    }
}

/// The transactions that ended a step's children (each child's `completed` event carries the
/// id of the transaction that ended it, and its start).
#[derive(Debug, Clone)]
struct Endings {
    step: String,
    transactions: i64,
    children_per_transaction: f64,
    most_in_one: i64,
    /// From the first to the last one's start, over their number less one.
    ms_between: Option<f64>,
}

async fn endings_of(target: &Target, run: Uuid, steps: &[String]) -> Result<Vec<Endings>> {
    let rows = sqlx::query(
        "with ended as (
             select c.step, e.tx, min(e.at) as at, count(*) as n
             from tasks c join events e on e.task_id = c.id
             where c.run_id = $1 and c.step is not null
               and e.kind = 'task.state' and e.data ->> 'state' = 'completed'
             group by c.step, e.tx
         )
         select step, count(*) as transactions, avg(n)::float8 as per_tx, max(n) as most,
                (extract(epoch from max(at) - min(at)) * 1000
                 / nullif(count(*) - 1, 0))::float8 as between_ms
         from ended group by step order by step",
    )
    .bind(run)
    .fetch_all(&target.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let step = usize::try_from(r.get::<i32, _>("step")).unwrap_or_default();
            Endings {
                step: steps.get(step).cloned().unwrap_or_default(),
                transactions: r.get("transactions"),
                children_per_transaction: r.get("per_tx"),
                most_in_one: r.get("most"),
                ms_between: r.get("between_ms"),
            }
        })
        .collect())
}

/// The fan-out phase.
struct FanOut {
    run: Option<RunRow>,
    steps: Vec<StepSpan>,
    /// (from step, to step, ms from the last child finished, ms from its callback sent).
    advances: Vec<(String, String, Option<f64>, Option<f64>)>,
    /// Run created → the first dispatch of its first step.
    start_ms: Option<f64>,
    children: usize,
    completed: usize,
    delivery: Delivery,
    /// At the downstream: dispatch received → callback sent.
    max_open: usize,
    /// In the database: first dispatch → finished, per `for_each` step, the most of either.
    max_open_in_db: usize,
    callbacks: CallbackCounts,
    commits: Commits,
    cpu: Value,
    activity: Profile,
    endings: Vec<Endings>,
    waited: Duration,
}

impl FanOut {
    async fn run(
        target: &Target,
        downstream: &Downstream,
        args: &WorkflowArgs,
        idle_rate: f64,
    ) -> Result<Self> {
        let step_names: Vec<String> = ["list", "ingest", "publish"].map(str::to_owned).into();
        let steps = json!([
            { "name": "list", "target": { "url": downstream.items_callback_url(args.items) } },
            { "name": "ingest", "for_each": "list", "max_parallel": args.max_parallel,
              "target": { "url": downstream.bare_callback_url() } },
            { "name": "publish", "for_each": "list", "max_parallel": args.max_parallel,
              "target": { "url": downstream.bare_callback_url() } },
        ]);
        let job = define_workflow(target, "bench-fanout", steps).await?;
        eprintln!(
            "pacer-bench: workflow: one run fanning out {} items over 2 steps (max_parallel {})",
            args.items, args.max_parallel
        );
        let window = CommitWindow::open(target).await?;
        let callbacks_before = downstream.callbacks();
        downstream.reset_max_open();
        let cpu = CpuUse::start(target, &node_pids(target)).await;
        let activity = ActivitySampler::start(
            target.stats.clone(),
            target.database.clone(),
            ACTIVITY_EVERY,
            Some(LOCK_RUNS_STATEMENT),
        );
        let began = tokio::time::Instant::now();
        let created: Uuid = target
            .api
            .create_task_id(target.url(0), &job.name, "bench-fanout-run")
            .await?
            .parse()
            .context("the run's id")?;
        let total = 2 * args.items + 1;
        let patience = Duration::from_secs(120).max(Duration::from_millis(total as u64 * 20));
        let last_note = std::cell::Cell::new(tokio::time::Instant::now());
        let ended = wait_for(patience, Duration::from_millis(100), || async {
            if last_note.get().elapsed() >= Duration::from_secs(5) {
                last_note.set(tokio::time::Instant::now());
                if let Ok(done) = sqlx::query_scalar::<_, i64>(
                    "select count(*) from tasks where job_id = $1 and step is not null
                     and finished_at is not null",
                )
                .bind(job.id)
                .fetch_one(&target.pool)
                .await
                {
                    eprintln!("pacer-bench: workflow: {done} of {total} children ended");
                }
            }
            // The run's own row: cheap to read, however many children it has.
            let ended: bool =
                sqlx::query_scalar("select finished_at is not null from tasks where id = $1")
                    .bind(created)
                    .fetch_one(&target.pool)
                    .await
                    .ok()?;
            ended.then_some(())
        })
        .await;
        let waited = began.elapsed();
        let activity = activity.finish().await;
        let cpu = cpu.finish(target).await;
        if ended.is_none() {
            eprintln!(
                "pacer-bench: workflow: the run did not end within {} s",
                patience.as_secs()
            );
        }
        let run = runs_of(target, &job).await?.into_iter().next();
        let children = children_of(target, &job).await?;
        let dispatches = downstream.dispatches();
        let sent = callback_sent(downstream);
        let answered = answered_per_task(downstream);
        let run_id = created.to_string();
        let ours: Vec<&Dispatch> = dispatches
            .iter()
            .filter(|d| d.run.as_deref() == Some(run_id.as_str()))
            .collect();
        let mut expected = HashSet::with_capacity(total);
        expected.insert((run_id.clone(), 0, "list".to_owned()));
        for step in [1, 2] {
            for i in 0..args.items {
                expected.insert((run_id.clone(), step, i.to_string()));
            }
        }
        let delivery = Delivery::check(&expected, &children, &step_names, &ours, &answered);
        let mut spans = Vec::new();
        for (index, name) in step_names.iter().enumerate() {
            let of_step: Vec<&Child> = children.iter().filter(|c| c.step == index).collect();
            let arrivals: Vec<&&Dispatch> = ours
                .iter()
                .filter(|d| d.step.as_deref() == Some(name.as_str()))
                .collect();
            spans.push(StepSpan {
                name: name.clone(),
                children: of_step.len(),
                completed: of_step.iter().filter(|c| c.state == "completed").count(),
                first_dispatch: arrivals.iter().map(|d| d.received_at).min(),
                last_finished: of_step.iter().filter_map(|c| c.finished_at).max(),
                mean_body_bytes: (!arrivals.is_empty()).then(|| {
                    arrivals.iter().map(|d| d.bytes as f64).sum::<f64>() / arrivals.len() as f64
                }),
            });
        }
        let mut advances = Vec::new();
        for k in 0..spans.len() - 1 {
            let last_child = children
                .iter()
                .filter(|c| c.step == k)
                .filter_map(|c| c.finished_at.map(|f| (f, c)))
                .max_by_key(|(f, _)| *f);
            let last_sent = children
                .iter()
                .filter(|c| c.step == k)
                .filter_map(|c| sent.get(&c.id))
                .max();
            let next = spans[k + 1].first_dispatch;
            advances.push((
                spans[k].name.clone(),
                spans[k + 1].name.clone(),
                next.zip(last_child).map(|(n, (f, _))| millis(n, f)),
                next.zip(last_sent).map(|(n, s)| millis(n, *s)),
            ));
        }
        let start_ms = run
            .as_ref()
            .zip(spans[0].first_dispatch)
            .map(|(r, d)| millis(d, r.created_at));
        let completed = children.iter().filter(|c| c.state == "completed").count();
        let max_open = downstream.max_open();
        let max_open_in_db = [1, 2]
            .map(|step| {
                let of_step: Vec<Child> = children
                    .iter()
                    .filter(|c| c.step == step)
                    .cloned()
                    .collect();
                most_open_at_once(&of_step)
            })
            .into_iter()
            .max()
            .unwrap_or_default();
        let callbacks = downstream.callbacks().since(callbacks_before);
        let endings = endings_of(target, created, &step_names).await?;
        let commits = window.close(target, idle_rate).await?;
        Ok(Self {
            run,
            steps: spans,
            advances,
            start_ms,
            children: children.len(),
            completed,
            delivery,
            max_open,
            max_open_in_db,
            callbacks,
            commits,
            cpu,
            activity,
            endings,
            waited,
        })
    }

    /// The run's creation → its end.
    fn end_to_end(&self) -> Option<Duration> {
        let run = self.run.as_ref()?;
        (run.finished_at? - run.created_at).to_std().ok()
    }

    fn rate(&self) -> Option<f64> {
        self.end_to_end()
            .map(|d| self.completed as f64 / d.as_secs_f64().max(1e-3))
    }

    fn cpu_ms_per_child(&self) -> f64 {
        cpu_seconds(&self.cpu) * 1000.0 / self.completed.max(1) as f64
    }

    fn fill(&self, report: &mut Report, args: &WorkflowArgs) {
        let run_state = self
            .run
            .as_ref()
            .map_or("never created", |r| r.state.as_str());
        report.rows.push(Row::check(
            "fan-out: the run ended",
            match self.run.as_ref().and_then(|r| r.message.as_deref()) {
                Some(message) => format!("{run_state} ({message})"),
                None => run_state.to_owned(),
            },
            "completed",
            run_state == "completed",
        ));
        if run_state != "completed" {
            report.failures.push(format!(
                "the fan-out run ended {run_state} (waited {:.0} s)",
                self.waited.as_secs_f64()
            ));
        }
        let rate = self.rate();
        report.rows.push(Row::check(
            "fan-out: children/s, run created → run finished",
            match (rate, self.end_to_end()) {
                (Some(r), Some(d)) => {
                    format!("{} in {:.2} s = {r:.0}/s", self.completed, d.as_secs_f64())
                }
                _ => "—".to_owned(),
            },
            format!("≥ {CHILDREN_PER_SECOND_TARGET:.0}/s"),
            rate.is_some_and(|r| r >= CHILDREN_PER_SECOND_TARGET),
        ));
        report.rows.push(Row::info(
            "fan-out: run created → first dispatch of `list`",
            self.start_ms
                .map_or_else(|| "—".to_owned(), |ms| format!("{} ms", round(ms))),
        ));
        for step in &self.steps {
            let span = step.span();
            report.rows.push(Row::info(
                format!(
                    "fan-out: step `{}`, first dispatch → last finished",
                    step.name
                ),
                match span {
                    Some(d) if step.children > 1 => format!(
                        "{} children in {:.2} s = {:.0}/s; bodies {:.1} KiB",
                        step.completed,
                        d.as_secs_f64(),
                        step.completed as f64 / d.as_secs_f64().max(1e-3),
                        step.mean_body_bytes.unwrap_or_default() / 1024.0
                    ),
                    Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1000.0),
                    None => "—".to_owned(),
                },
            ));
        }
        for e in self.endings.iter().filter(|e| e.transactions > 1) {
            report.rows.push(Row::info(
                format!("fan-out: step `{}`, transactions ending children", e.step),
                format!(
                    "{}, {:.1} children each (most {}), one every {} ms",
                    e.transactions,
                    e.children_per_transaction,
                    e.most_in_one,
                    e.ms_between
                        .map_or_else(|| "—".to_owned(), |ms| round(ms).to_string())
                ),
            ));
        }
        for (from, to, finished, sent) in &self.advances {
            let ms =
                |v: &Option<f64>| v.map_or_else(|| "—".to_owned(), |v| format!("{}", round(v)));
            report.rows.push(Row::info(
                format!(
                    "fan-out: advance `{from}` → `{to}`, from finished_at (from callback sent)"
                ),
                format!("{} ms ({} ms)", ms(finished), ms(sent)),
            ));
        }
        let limit = usize::try_from(args.max_parallel).unwrap_or(usize::MAX);
        report.rows.push(Row::check(
            "fan-out: most children at the downstream at once (dispatch → callback sent)",
            self.max_open.to_string(),
            format!("≤ {limit}"),
            self.max_open <= limit,
        ));
        report.rows.push(Row::check(
            "fan-out: most children open at once (started_at → finished_at)",
            self.max_open_in_db.to_string(),
            format!("≤ {limit}"),
            self.max_open_in_db <= limit,
        ));
        if self.max_open > limit {
            report.failures.push(format!(
                "the downstream held {} children at once; max_parallel is {limit}",
                self.max_open
            ));
        }
        if self.max_open_in_db > limit {
            report.failures.push(format!(
                "{} children were open at once (started_at → finished_at); max_parallel is {limit}",
                self.max_open_in_db
            ));
        }
        let (per_child, less_idle) = self.commits.per_child(self.children);
        report.rows.push(Row::check(
            "fan-out: commits per child, all (less the idle nodes' polling)",
            format!("{per_child:.2} ({less_idle:.2})"),
            format!("≤ {COMMITS_PER_CHILD_TARGET:.0}"),
            per_child <= COMMITS_PER_CHILD_TARGET,
        ));
        report.rows.push(self.delivery.row("fan-out"));
        self.delivery.require(report, "fan-out");
        let c = self.callbacks;
        report.rows.push(Row::info(
            "fan-out: callbacks answered / 409 / failed (retries)",
            format!(
                "{} / {} / {} ({})",
                c.answered, c.conflicts, c.failed, c.retries
            ),
        ));
        report.rows.push(Row::info(
            "fan-out: PostgreSQL backends busy / waiting for a lock / on the run's lock (avg)",
            format!(
                "{:.2} / {:.2} / {:.2}",
                self.activity.busy(),
                self.activity.waiting_for_locks(),
                self.activity.waiting_in(LOCK_RUNS_STATEMENT)
            ),
        ));
        let holders: Vec<String> = self
            .activity
            .holder_shares()
            .into_iter()
            .take(3)
            .map(|(kind, share)| format!("{:.0}% {kind}", share * 100.0))
            .collect();
        report.rows.push(Row::info(
            "fan-out: samples with an ending waiting for the run's lock (its holder idle, \
             waiting for its node)",
            format!(
                "{:.0}% ({:.0}%)",
                self.activity.contended_share() * 100.0,
                self.activity.holder_idle_share() * 100.0
            ),
        ));
        report.rows.push(Row::info(
            "fan-out: meanwhile the lock's holder was (top 3)",
            holders.join("; "),
        ));
        report.rows.push(cpu_row(&self.cpu));
        report.rows.push(Row::info(
            "fan-out: CPU per child (nodes + backends + harness)",
            format!("{:.2} ms", self.cpu_ms_per_child()),
        ));
    }

    fn to_json(&self, args: &WorkflowArgs) -> Value {
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "children": s.children,
                    "completed": s.completed,
                    "first_dispatch": s.first_dispatch.map(|t| t.to_rfc3339()),
                    "last_finished": s.last_finished.map(|t| t.to_rfc3339()),
                    "span_s": s.span().map(|d| round(d.as_secs_f64())),
                    "children_per_s": s.span().map(|d| round(s.completed as f64 / d.as_secs_f64().max(1e-3))),
                    "mean_dispatch_body_bytes": s.mean_body_bytes.map(round),
                })
            })
            .collect();
        let advances: Vec<Value> = self
            .advances
            .iter()
            .map(|(from, to, finished, sent)| {
                json!({
                    "from": from, "to": to,
                    "from_last_finished_ms": finished.map(round),
                    "from_last_callback_sent_ms": sent.map(round),
                })
            })
            .collect();
        json!({
            "items": args.items,
            "max_parallel": args.max_parallel,
            "run_state": self.run.as_ref().map(|r| r.state.clone()),
            "run_message": self.run.as_ref().and_then(|r| r.message.clone()),
            "end_to_end_s": self.end_to_end().map(|d| round(d.as_secs_f64())),
            "children": self.children,
            "completed": self.completed,
            "children_per_s": self.rate().map(round),
            "run_created_to_first_dispatch_ms": self.start_ms.map(round),
            "steps": steps,
            "advances": advances,
            "max_open_at_downstream": self.max_open,
            "max_open_in_database": self.max_open_in_db,
            "delivery": self.delivery.to_json(),
            "callbacks": self.callbacks.to_json(),
            "commits": self.commits.to_json(self.children),
            "cpu": self.cpu,
            "cpu_ms_per_child": (self.cpu_ms_per_child() * 100.0).round() / 100.0,
            "postgres_activity": self.activity.to_json(30),
            "ending_transactions": self.endings.iter().map(|e| json!({
                "step": e.step,
                "transactions": e.transactions,
                "children_per_transaction": round(e.children_per_transaction),
                "most_in_one": e.most_in_one,
                "ms_between_starts": e.ms_between.map(round),
            })).collect::<Vec<_>>(),
        })
    }
}

/// The step-advance phase: many small runs of single-target steps.
struct Advances {
    runs: usize,
    steps: usize,
    enqueue: Duration,
    ended: usize,
    completed_runs: usize,
    /// Ended other than completed, with their states.
    other_runs: BTreeMap<String, u64>,
    /// Each advance: the next step's first dispatch − the step's child's finished_at, ms.
    samples: Vec<f64>,
    advance: Option<Distribution>,
    /// The same from the child's callback sent at the downstream.
    from_callback: Option<Distribution>,
    /// Run created → its first step's dispatch.
    start: Option<Distribution>,
    /// Run created → run finished.
    duration: Option<Distribution>,
    children: usize,
    delivery: Delivery,
    commits: Commits,
    cpu: Value,
    activity: Profile,
}

impl Advances {
    async fn run(
        target: &Target,
        downstream: &Downstream,
        args: &WorkflowArgs,
        idle_rate: f64,
    ) -> Result<Self> {
        let step_names: Vec<String> = (1..=args.steps).map(|i| format!("s{i}")).collect();
        let steps: Vec<Value> = step_names
            .iter()
            .map(
                |name| json!({ "name": name, "target": { "url": downstream.bare_callback_url() } }),
            )
            .collect();
        let job = define_workflow(target, "bench-steps", Value::Array(steps)).await?;
        eprintln!(
            "pacer-bench: workflow: {} runs of {} steps ({})",
            args.runs,
            args.steps,
            if args.rate > 0.0 {
                format!("{} runs/s", args.rate)
            } else {
                "all at once".to_owned()
            }
        );
        let window = CommitWindow::open(target).await?;
        let cpu = CpuUse::start(target, &node_pids(target)).await;
        let activity = ActivitySampler::start(
            target.stats.clone(),
            target.database.clone(),
            ACTIVITY_EVERY,
            None,
        );
        let began = tokio::time::Instant::now();
        {
            let api = target.api.clone();
            let urls = target.urls.clone();
            let name = job.name.clone();
            let rate = args.rate;
            for_each_concurrent(args.runs, 32, move |i| {
                let (api, name) = (api.clone(), name.clone());
                let url = urls[i % urls.len()].clone();
                async move {
                    if rate > 0.0 {
                        tokio::time::sleep_until(began + Duration::from_secs_f64(i as f64 / rate))
                            .await;
                    }
                    api.create_task(&url, &name, &format!("bench-steps-{i}"))
                        .await
                }
            })
            .await?;
        }
        let enqueue = began.elapsed();
        let total = i64::try_from(args.runs).unwrap_or(i64::MAX);
        let patience = Duration::from_secs(60)
            .max(Duration::from_millis((args.runs * args.steps) as u64 * 20));
        wait_for(patience, Duration::from_millis(100), || async {
            let ended = runs_ended(target, &job).await.ok()?;
            (ended >= total).then_some(())
        })
        .await;
        let activity = activity.finish().await;
        let cpu = cpu.finish(target).await;
        let runs = runs_of(target, &job).await?;
        let children = children_of(target, &job).await?;
        let run_ids: HashSet<&str> = runs.iter().map(|r| r.id.as_str()).collect();
        let dispatches = downstream.dispatches();
        let ours: Vec<&Dispatch> = dispatches
            .iter()
            .filter(|d| d.run.as_deref().is_some_and(|r| run_ids.contains(r)))
            .collect();
        let sent = callback_sent(downstream);
        let answered = answered_per_task(downstream);
        let mut expected = HashSet::new();
        for run in &runs {
            for (index, name) in step_names.iter().enumerate() {
                expected.insert((run.id.clone(), index, name.clone()));
            }
        }
        let delivery = Delivery::check(&expected, &children, &step_names, &ours, &answered);
        // The first arrival of each (run, step).
        let mut first: HashMap<(&str, &str), DateTime<Utc>> = HashMap::new();
        for d in &ours {
            if let (Some(run), Some(step)) = (&d.run, &d.step) {
                let at = first
                    .entry((run.as_str(), step.as_str()))
                    .or_insert(d.received_at);
                *at = (*at).min(d.received_at);
            }
        }
        let mut samples = Vec::new();
        let mut from_callback = Vec::new();
        for child in &children {
            let Some(next) = step_names.get(child.step + 1) else {
                continue;
            };
            let Some(arrived) = first.get(&(child.run.as_str(), next.as_str())) else {
                continue;
            };
            if let Some(finished) = child.finished_at {
                samples.push(millis(*arrived, finished));
            }
            if let Some(sent) = sent.get(&child.id) {
                from_callback.push(millis(*arrived, *sent));
            }
        }
        let starts: Vec<f64> = runs
            .iter()
            .filter_map(|r| {
                first
                    .get(&(r.id.as_str(), step_names[0].as_str()))
                    .map(|d| millis(*d, r.created_at))
            })
            .collect();
        let durations: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.finished_at.map(|f| millis(f, r.created_at)))
            .collect();
        let mut other_runs = BTreeMap::new();
        for run in runs.iter().filter(|r| r.state != "completed") {
            *other_runs.entry(run.state.clone()).or_default() += 1;
        }
        let commits = window.close(target, idle_rate).await?;
        Ok(Self {
            runs: args.runs,
            steps: args.steps,
            enqueue,
            ended: runs.iter().filter(|r| r.finished_at.is_some()).count(),
            completed_runs: runs.iter().filter(|r| r.state == "completed").count(),
            other_runs,
            advance: Distribution::of(&samples),
            samples,
            from_callback: Distribution::of(&from_callback),
            start: Distribution::of(&starts),
            duration: Distribution::of(&durations),
            children: children.len(),
            delivery,
            commits,
            cpu,
            activity,
        })
    }

    fn fill(&self, report: &mut Report) {
        report.rows.push(Row::info(
            format!(
                "advance: {} runs of {} steps created",
                self.runs, self.steps
            ),
            format!(
                "in {:.1} s; {} completed, {} ended otherwise {:?}",
                self.enqueue.as_secs_f64(),
                self.completed_runs,
                self.ended - self.completed_runs,
                self.other_runs
            ),
        ));
        report.rows.push(Row::check(
            "advance: child finished → next step's first dispatch, p50 / p99 / max",
            self.advance
                .map_or_else(|| "—".to_owned(), |d| d.brief("ms")),
            format!("p99 ≤ {ADVANCE_P99_TARGET_MS:.0} ms"),
            self.advance.is_some_and(|d| d.p99 <= ADVANCE_P99_TARGET_MS),
        ));
        report.rows.push(Row::info(
            "advance: from the child's callback sent, p50 / p99 / max",
            self.from_callback
                .map_or_else(|| "—".to_owned(), |d| d.brief("ms")),
        ));
        report.rows.push(Row::info(
            "advance: run created → first step dispatched, p50 / p99 / max",
            self.start.map_or_else(|| "—".to_owned(), |d| d.brief("ms")),
        ));
        report.rows.push(Row::info(
            "advance: run created → run finished, p50 / p99 / max",
            self.duration
                .map_or_else(|| "—".to_owned(), |d| d.brief("ms")),
        ));
        let (per_child, less_idle) = self.commits.per_child(self.children);
        report.rows.push(Row::info(
            "advance: commits per child, all (less the idle nodes' polling)",
            format!("{per_child:.2} ({less_idle:.2})"),
        ));
        report.rows.push(self.delivery.row("advance"));
        self.delivery.require(report, "step advance");
        report.rows.push(Row::info(
            "advance: PostgreSQL backends busy / waiting for a lock (avg)",
            format!(
                "{:.2} / {:.2}",
                self.activity.busy(),
                self.activity.waiting_for_locks()
            ),
        ));
        report.require_zero(
            "runs not completed (step advance)",
            u64::try_from(self.runs.saturating_sub(self.completed_runs)).unwrap_or_default(),
        );
        report.rows.push(cpu_row(&self.cpu));
    }

    fn to_json(&self) -> Value {
        json!({
            "runs": self.runs,
            "steps_per_run": self.steps,
            "enqueue_s": round(self.enqueue.as_secs_f64()),
            "runs_ended": self.ended,
            "runs_completed": self.completed_runs,
            "runs_ended_otherwise": self.other_runs,
            "advance_ms": json_of(self.advance),
            "advance_from_callback_sent_ms": json_of(self.from_callback),
            "run_created_to_first_dispatch_ms": json_of(self.start),
            "run_created_to_finished_ms": json_of(self.duration),
            "children": self.children,
            "delivery": self.delivery.to_json(),
            "commits": self.commits.to_json(self.children),
            "cpu": self.cpu,
            "postgres_activity": self.activity.to_json(30),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use chrono::{DateTime, Duration, Utc};

    use super::{Child, Delivery, most_open_at_once};
    use crate::downstream::Dispatch;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("an instant") + Duration::milliseconds(ms)
    }

    fn child(id: &str, step: usize, name: &str, span: Option<(i64, i64)>) -> Child {
        Child {
            id: id.to_owned(),
            run: "r".to_owned(),
            step,
            name: name.to_owned(),
            state: if span.is_some() {
                "completed"
            } else {
                "pending"
            }
            .to_owned(),
            started_at: span.map(|(s, _)| at(s)),
            finished_at: span.map(|(_, f)| at(f)),
        }
    }

    fn dispatch(task: &str, step: &str, name: &str) -> Dispatch {
        Dispatch {
            task_id: task.to_owned(),
            received_at: at(0),
            run: Some("r".to_owned()),
            step: Some(step.to_owned()),
            child: Some(name.to_owned()),
            bytes: 0,
        }
    }

    #[test]
    fn children_open_at_once_count_an_ending_before_a_start_at_the_same_instant() {
        let children = [
            child("a", 1, "0", Some((0, 10))),
            child("b", 1, "1", Some((5, 20))),
            // Released by a's ending: starts when a ends, so never overlaps it.
            child("c", 1, "2", Some((10, 30))),
            child("d", 1, "3", None),
        ];
        assert_eq!(most_open_at_once(&children), 2);
        assert_eq!(most_open_at_once(&[]), 0);
    }

    #[test]
    fn delivery_counts_lost_undispatched_and_repeated_children() {
        let steps = ["list".to_owned(), "ingest".to_owned()];
        let expected: HashSet<(String, usize, String)> = [
            ("r".to_owned(), 0, "list".to_owned()),
            ("r".to_owned(), 1, "0".to_owned()),
            ("r".to_owned(), 1, "1".to_owned()),
        ]
        .into();
        let children = [
            child("l", 0, "list", Some((0, 1))),
            child("a", 1, "0", Some((2, 3))),
            child("b", 1, "1", None),
        ];
        let (l, a, a2) = (
            dispatch("l", "list", "list"),
            dispatch("a", "ingest", "0"),
            dispatch("a", "ingest", "0"),
        );
        let answered: HashMap<String, u64> = [("l".to_owned(), 1), ("a".to_owned(), 1)].into();
        let found = Delivery::check(&expected, &children, &steps, &[&l, &a, &a2], &answered);
        assert_eq!(
            (
                found.lost,
                found.undispatched,
                found.duplicates,
                found.callbacks_not_once,
                found.unexpected
            ),
            (1, 1, 1, 1, 0)
        );
        assert!(!found.ok());
        let all = Delivery::check(&expected, &children[..2], &steps, &[&l, &a], &answered);
        assert_eq!((all.lost, all.undispatched, all.duplicates), (1, 1, 0));
    }
}
