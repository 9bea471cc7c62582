//! `firing`: S interval triggers at 1 s on a cluster for D seconds. Every occurrence in the
//! steady window is checked against the tasks and skips recorded for it; lateness is task
//! created − scheduled (the database's `created_at`, the firing transaction's start) and
//! dispatch received − scheduled (the fake downstream's clock, the same machine's); beside it,
//! how long each callback of the window took to be answered, which the node does once its state
//! is committed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{
    Bench, BenchJob, CpuUse, FiringArgs, Occurrences, Sampler, ceil_to, create_triggers,
    define_job, floor_to, millis, positive, wait_for,
};
use crate::cluster::Target;
use crate::database::DbCounters;
use crate::downstream::Downstream;
use crate::report::{Report, Row};
use crate::stats::{Distribution, json_of, round};

/// The DESIGN §11 target for firing lateness.
pub(crate) const P99_TARGET_MS: f64 = 50.0;

pub(crate) async fn run(bench: &Bench, args: &FiringArgs) -> Result<Report> {
    positive("--duration", args.duration)?;
    let every = whole_seconds("--every", args.every)?;
    let target = bench.target("firing", 3).await?;
    bench
        .run_on(target, async |target| {
            let environment = bench.environment(target).await?;
            let downstream =
                Downstream::start(&bench.common.downstream_host, bench.common.callback_delay)
                    .await?;
            let setup = Setup::create(
                target,
                &downstream,
                args.triggers,
                !args.no_callback,
                Timing {
                    every,
                    jitter: args.jitter,
                },
            )
            .await?;
            eprintln!(
                "pacer-bench: firing: {} triggers every {every} s created in {:.1} s; firing for {} s",
                args.triggers,
                setup.creation.as_secs_f64(),
                args.duration.as_secs()
            );
            let before = DbCounters::read(&target.stats, &target.pool, &target.database).await?;
            let pids = node_pids(target);
            let cpu = CpuUse::start(target, &pids).await;
            let began = Utc::now();
            let sampler = Sampler::start(pids);
            tokio::time::sleep(args.duration).await;
            let cpu = cpu.finish(target).await;
            let ended = Utc::now();
            let timeline = sampler.finish().await;
            let after = DbCounters::read(&target.stats, &target.pool, &target.database).await?;
            let measured =
                Measured::collect(target, &downstream, &setup, ended, args.warmup).await?;
            let mut report = Report::new(
                "firing",
                environment,
                json!({
                    "triggers": args.triggers,
                    "every": format!("{every}s"),
                    "duration_s": args.duration.as_secs_f64(),
                    "warmup_s": args.warmup.as_secs_f64(),
                    "expect_callback": !args.no_callback,
                    "jitter_ms": args.jitter.map(|j| j.as_millis()),
                    "callback_delay_ms": bench.common.callback_delay.as_millis(),
                }),
            );
            report.measured = format!(
                "{} interval triggers firing every {every} s for {} s; every occurrence of the \
                 steady window (from {} s after start to the last occurrence before the end) \
                 checked against tasks + skipped_runs; lateness = tasks.created_at − fire time \
                 and first dispatch received − fire time, the fire time being scheduled_at{}; {}.",
                args.triggers,
                args.duration.as_secs(),
                args.warmup.as_secs(),
                match args.jitter {
                    Some(jitter) => format!(
                        " plus the trigger's deterministic jitter offset in [0, {} ms)",
                        jitter.as_millis()
                    ),
                    None => String::new(),
                },
                if args.no_callback {
                    "tasks complete on the dispatch's 2xx (expect_callback: false)"
                } else {
                    "the downstream answers 202 and calls back `completed` at once"
                }
            );
            measured.fill(&mut report, true);
            let commits = after.since(&before);
            report.rows.push(Row::info(
                "commits/s in the bench database (±10 s of stats lag)",
                format!(
                    "{:.0}",
                    commits.xact_commit as f64 / args.duration.as_secs_f64()
                ),
            ));
            let cost = Cost::of(
                target,
                &setup.job,
                (began, ended),
                &cpu,
                commits.xact_commit,
            )
            .await?;
            report.rows.extend(cost.rows());
            report.results["cost"] = cost.to_json();
            report.results["cpu"] = cpu.clone();
            report.results["callbacks"] = downstream.callbacks().to_json();
            report.results["database"] = commits.to_json();
            report.rows.push(cpu_row(&cpu));
            report.raw["timeline"] = Value::Array(timeline);
            Ok(report)
        })
        .await
}

/// The nodes' ids and process ids, when the harness started them.
pub(crate) fn node_pids(target: &Target) -> Vec<(String, u32)> {
    target
        .managed
        .as_ref()
        .map(|m| m.nodes.iter().map(|n| (n.id.clone(), n.pid())).collect())
        .unwrap_or_default()
}

/// A table row summing up CPU use: cores used by the nodes and the machine's busy share.
pub(crate) fn cpu_row(cpu: &Value) -> Row {
    let node_cores: Vec<f64> = cpu["processes"]
        .as_object()
        .map(|p| {
            p.iter()
                .filter(|(id, _)| id.starts_with("node-"))
                .filter_map(|(_, v)| v["cores"].as_f64())
                .collect()
        })
        .unwrap_or_default();
    // Nodes replaced during the run (failover) are not followed: they count as everything else.
    let nodes = if node_cores.is_empty() {
        "—".to_owned()
    } else {
        format!("{:.2}", node_cores.iter().sum::<f64>())
    };
    let cores = |name: &str| cpu["processes"][name]["cores"].as_f64().unwrap_or(0.0);
    Row::info(
        "CPU cores: nodes / postgres backends / harness / everything else",
        format!(
            "{nodes} / {:.2} / {:.2} / {:.2} (machine {}% busy)",
            cores("postgres backends"),
            cores("pacer-bench"),
            cpu["everything_else_cores"].as_f64().unwrap_or(0.0),
            cpu["machine_busy_percent"].as_f64().unwrap_or(0.0)
        ),
    )
}

/// Fails unless a span is a whole number of seconds, at least one; returns the seconds.
pub(crate) fn whole_seconds(what: &str, span: Duration) -> Result<i64> {
    if span.subsec_nanos() != 0 || span.as_secs() == 0 {
        anyhow::bail!("{what} must be a whole number of seconds, at least 1s");
    }
    Ok(i64::try_from(span.as_secs())?)
}

/// What a run cost: CPU of the nodes and of the database's backends, and database commits, over
/// the whole run (warm-up included), per task of the job finished during it (the full cycle: a
/// task created but not yet finished has cost part of it) and per task created.
pub(crate) struct Cost {
    /// The job's tasks created during the run.
    pub(crate) created: f64,
    /// The job's tasks that reached a terminal state during the run.
    pub(crate) finished: f64,
    pub(crate) node_cpu_ms: f64,
    pub(crate) postgres_cpu_ms: f64,
    pub(crate) commits: f64,
}

impl Cost {
    /// Counts the tasks of `job` created and finished between `from` and `to` (the database's
    /// clock: its `created_at` and `finished_at`) and divides the run's CPU and commits by them.
    pub(crate) async fn of(
        target: &Target,
        job: &BenchJob,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
        cpu: &Value,
        commits: i64,
    ) -> Result<Self> {
        let (created, finished): (i64, i64) = sqlx::query_as(
            "select count(*) filter (where created_at >= $2 and created_at < $3),
                    count(*) filter (where finished_at >= $2 and finished_at < $3)
             from tasks where job_id = $1",
        )
        .bind(job.id)
        .bind(from)
        .bind(to)
        .fetch_one(&target.pool)
        .await?;
        let seconds = |filter: &dyn Fn(&str) -> bool| -> f64 {
            cpu["processes"].as_object().map_or(0.0, |p| {
                p.iter()
                    .filter(|(id, _)| filter(id))
                    .filter_map(|(_, v)| v["cpu_seconds"].as_f64())
                    .sum()
            })
        };
        Ok(Self {
            created: created as f64,
            finished: finished as f64,
            node_cpu_ms: seconds(&|id| id.starts_with("node-")) * 1000.0,
            postgres_cpu_ms: seconds(&|id| id == "postgres backends") * 1000.0,
            commits: commits as f64,
        })
    }

    /// CPU (nodes and backends together) per task finished during the run, in milliseconds.
    pub(crate) fn cpu_ms_per_task(&self) -> f64 {
        (self.node_cpu_ms + self.postgres_cpu_ms) / self.finished.max(1.0)
    }

    pub(crate) fn rows(&self) -> Vec<Row> {
        let per = self.finished.max(1.0);
        vec![
            Row::info(
                "tasks of the job created / finished during the run",
                format!("{:.0} / {:.0}", self.created, self.finished),
            ),
            Row::info(
                "CPU per task finished: nodes / PostgreSQL backends",
                format!(
                    "{:.3} / {:.3} ms",
                    self.node_cpu_ms / per,
                    self.postgres_cpu_ms / per
                ),
            ),
            Row::info(
                "commits per task finished",
                format!("{:.3}", self.commits / per),
            ),
        ]
    }

    pub(crate) fn to_json(&self) -> Value {
        let per = self.finished.max(1.0);
        json!({
            "tasks_created": round(self.created),
            "tasks_finished": round(self.finished),
            "node_cpu_ms_per_task": round(self.node_cpu_ms / per),
            "postgres_cpu_ms_per_task": round(self.postgres_cpu_ms / per),
            "commits_per_task": round(self.commits / per),
        })
    }
}

/// When the triggers fire: every `every` seconds (aligned to the Unix epoch), each with
/// `jitter` if given.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) every: i64,
    pub(crate) jitter: Option<Duration>,
}

impl Timing {
    /// Every second, no jitter.
    pub(crate) const EVERY_SECOND: Self = Self {
        every: 1,
        jitter: None,
    };
}

/// The job and its triggers, created before the clock starts.
pub(crate) struct Setup {
    pub(crate) job: BenchJob,
    /// When the last trigger was created: occurrences after this are all expected.
    pub(crate) started: DateTime<Utc>,
    pub(crate) creation: Duration,
    /// Each trigger's jitter, if any.
    pub(crate) jitter: Option<Duration>,
    /// Seconds between a trigger's occurrences.
    pub(crate) every: i64,
}

impl Setup {
    /// Defines the job and `triggers` interval triggers fired as `timing` says.
    pub(crate) async fn create(
        target: &Target,
        downstream: &Downstream,
        triggers: usize,
        expect_callback: bool,
        timing: Timing,
    ) -> Result<Self> {
        let Timing { every, jitter } = timing;
        let job = define_job(target, downstream, "bench-firing", expect_callback).await?;
        let mut spec = json!({"kind": "interval", "every": format!("{every}s")});
        if let Some(jitter) = jitter {
            spec["jitter"] = json!(format!("{}ms", jitter.as_millis()));
        }
        let specs = vec![spec; triggers];
        let began = Instant::now();
        create_triggers(target, &job, specs, 16).await?;
        Ok(Self {
            job,
            started: Utc::now(),
            creation: began.elapsed(),
            jitter,
            every,
        })
    }
}

/// What the steady window of a firing run shows.
pub(crate) struct Measured {
    pub(crate) first: DateTime<Utc>,
    pub(crate) last: DateTime<Utc>,
    pub(crate) occurrences: Occurrences,
    pub(crate) created: Option<Distribution>,
    pub(crate) dispatched: Option<Distribution>,
    /// Callbacks sent in the window: answered (state committed) − sent.
    pub(crate) callbacks: Option<Distribution>,
    /// Tasks of the window never dispatched within the wait.
    pub(crate) undispatched: u64,
    /// Dispatches beyond the first of a task (at-least-once re-sends).
    pub(crate) repeated_dispatches: u64,
    /// Tasks whose first dispatch arrived before their fire time.
    pub(crate) early: u64,
    /// The triggers had jitter: lateness counts from the jittered fire time.
    pub(crate) jittered: bool,
    pub(crate) raw: Value,
}

impl Measured {
    /// Waits (up to 30 s each) for every occurrence of the window to have an outcome and every
    /// task to reach the downstream, then reads and measures them.
    pub(crate) async fn collect(
        target: &Target,
        downstream: &Downstream,
        setup: &Setup,
        ended: DateTime<Utc>,
        warmup: Duration,
    ) -> Result<Self> {
        let every = setup.every;
        let first = ceil_to(setup.started + chrono::Duration::from_std(warmup)?, every);
        let last = floor_to(ended, every) - chrono::Duration::seconds(every);
        let triggers: i64 = sqlx::query_scalar("select count(*) from triggers where job_id = $1")
            .bind(setup.job.id)
            .fetch_one(&target.pool)
            .await?;
        let occurrences_each = (last - first).num_seconds().div_euclid(every) + 1;
        let expected = u64::try_from(triggers * occurrences_each.max(0)).unwrap_or_default();
        wait_for(
            Duration::from_secs(30),
            Duration::from_millis(250),
            || async {
                let have = Occurrences::count_outcomes(&target.pool, &setup.job, first, last)
                    .await
                    .ok()?;
                (have >= expected).then_some(())
            },
        )
        .await;
        let occurrences = Occurrences::read(&target.pool, &setup.job, first, last, every).await?;
        let ids: HashSet<String> = occurrences.tasks.iter().map(|t| t.id.to_string()).collect();
        wait_for(
            Duration::from_secs(30),
            Duration::from_millis(250),
            || async {
                let seen = downstream.first_dispatches();
                ids.iter().all(|id| seen.contains_key(id)).then_some(())
            },
        )
        .await;
        let dispatches = downstream.dispatches();
        let mut first_seen: HashMap<&str, DateTime<Utc>> = HashMap::new();
        let mut repeated = 0;
        for d in &dispatches {
            if !ids.contains(&d.task_id) {
                continue;
            }
            if first_seen.contains_key(d.task_id.as_str()) {
                repeated += 1;
            } else {
                first_seen.insert(&d.task_id, d.received_at);
            }
        }
        let mut created_ms = Vec::with_capacity(occurrences.tasks.len());
        let mut dispatched_ms = Vec::with_capacity(occurrences.tasks.len());
        let mut per_second: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
        let mut undispatched = 0;
        for task in &occurrences.tasks {
            // From the fire time: the scheduled time plus the trigger's jitter offset.
            let late = millis(task.created_at, task.fire_at);
            created_ms.push(late);
            per_second
                .entry(task.scheduled_at.timestamp())
                .or_default()
                .push(late);
            match first_seen.get(task.id.to_string().as_str()) {
                Some(at) => dispatched_ms.push(millis(*at, task.fire_at)),
                None => undispatched += 1,
            }
        }
        let early = dispatched_ms.iter().filter(|ms| **ms < 0.0).count();
        let callback_ms = downstream.callback_answers(first, last + chrono::Duration::seconds(1));
        let per_second: Vec<Value> = per_second
            .into_iter()
            .map(|(second, samples)| {
                let d = Distribution::of(&samples);
                json!({
                    "second": second - first.timestamp(),
                    "tasks": samples.len(),
                    "created_p99_ms": d.map(|d| round(d.p99)),
                    "created_max_ms": d.map(|d| round(d.max)),
                })
            })
            .collect();
        let raw = json!({
            "created_minus_scheduled_ms": created_ms.iter().map(|v| round(*v)).collect::<Vec<_>>(),
            "dispatched_minus_scheduled_ms": dispatched_ms.iter().map(|v| round(*v)).collect::<Vec<_>>(),
            "callback_answered_minus_sent_ms": callback_ms.iter().map(|v| round(*v)).collect::<Vec<_>>(),
            "per_second": per_second,
        });
        Ok(Self {
            first,
            last,
            created: Distribution::of(&created_ms),
            dispatched: Distribution::of(&dispatched_ms),
            callbacks: Distribution::of(&callback_ms),
            occurrences,
            undispatched,
            repeated_dispatches: repeated,
            early: u64::try_from(early).unwrap_or(u64::MAX),
            jittered: setup.jitter.is_some(),
            raw,
        })
    }

    /// Adds the rows, results and failures of the window to `report`; with `lateness_target`,
    /// lateness is held against the firing target (p99 ≤ 50 ms).
    pub(crate) fn fill(&self, report: &mut Report, lateness_target: bool) {
        let o = &self.occurrences;
        let seconds = (self.last - self.first).num_seconds() + 1;
        report.rows.push(Row::info(
            "occurrences in the steady window",
            format!("{} ({} s)", o.expected, seconds),
        ));
        report.rows.push(Row::check(
            "missing (neither task nor skip)",
            o.missing.to_string(),
            "0",
            o.missing == 0,
        ));
        report.rows.push(Row::check(
            "duplicate outcomes",
            o.duplicates.to_string(),
            "0",
            o.duplicates == 0,
        ));
        report.rows.push(Row::info(
            "skipped by misfire/overlap policy",
            if o.skips.is_empty() {
                "0".to_owned()
            } else {
                format!("{:?}", o.skips)
            },
        ));
        let (created, dispatched) = if self.jittered {
            (
                "task created − fire time (scheduled + jitter), p50 / p99 / max",
                "dispatch received − fire time (scheduled + jitter), p50 / p99 / max",
            )
        } else {
            (
                "task created − scheduled, p50 / p99 / max",
                "dispatch received − scheduled, p50 / p99 / max",
            )
        };
        for (measure, distribution) in [
            (created, self.created),
            (dispatched, self.dispatched),
            (
                "callback answered (state committed) − sent, p50 / p99 / max",
                self.callbacks,
            ),
        ] {
            // A run without callbacks has none to hold to the target.
            if distribution.is_none() && measure.starts_with("callback") {
                continue;
            }
            let value = distribution.map_or_else(|| "—".to_owned(), |d| d.brief("ms"));
            report.rows.push(if lateness_target {
                Row::check(
                    measure,
                    value,
                    "p99 ≤ 50 ms",
                    distribution.is_some_and(|d| d.p99 <= P99_TARGET_MS),
                )
            } else {
                Row::info(measure, value)
            });
        }
        report.rows.push(Row::check(
            if self.jittered {
                "dispatched before the fire time"
            } else {
                "dispatched before the scheduled time"
            },
            self.early.to_string(),
            "0",
            self.early == 0,
        ));
        report.rows.push(Row::check(
            "tasks never dispatched (30 s wait)",
            self.undispatched.to_string(),
            "0",
            self.undispatched == 0,
        ));
        report.rows.push(Row::info(
            "repeated dispatches (at-least-once)",
            self.repeated_dispatches.to_string(),
        ));
        report.require_zero("missing occurrences", o.missing);
        report.require_zero("duplicate occurrences", o.duplicates);
        report.require_zero("tasks never dispatched", self.undispatched);
        report.require_zero("tasks dispatched early", self.early);
        report.results = json!({
            "window": {"first": self.first.to_rfc3339(), "last": self.last.to_rfc3339(), "seconds": seconds},
            "occurrences": o.expected,
            "tasks": o.tasks.len(),
            "skipped": o.skipped(),
            "skips": o.skips,
            "missing": o.missing,
            "duplicates": o.duplicates,
            "undispatched": self.undispatched,
            "repeated_dispatches": self.repeated_dispatches,
            "dispatched_early": self.early,
            "created_minus_scheduled_ms": json_of(self.created),
            "dispatched_minus_scheduled_ms": json_of(self.dispatched),
            "callback_answered_minus_sent_ms": json_of(self.callbacks),
        });
        report.raw = self.raw.clone();
    }
}
