//! `throughput`: T tasks created by REST as fast as the harness can (bounded concurrency,
//! spread over the nodes), then drained. The end-to-end rate runs from the first create request
//! to the last task's `finished_at`: through dispatch and callback (the full cycle), and
//! separately for a job with `expect_callback: false` (the dispatch's 2xx completes the task).

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::Row as _;
use tokio::time::Instant;
use uuid::Uuid;

use super::firing::{cpu_row, node_pids};
use super::{Bench, BenchJob, CpuUse, ThroughputArgs, define_job, millis, wait_for};
use crate::api::for_each_concurrent;
use crate::cluster::Target;
use crate::database::DbCounters;
use crate::downstream::{CallbackCounts, Downstream};
use crate::report::{Report, Row};
use crate::stats::{Distribution, json_of, round};

/// DESIGN §11 / issue 9: tasks per second end to end.
const WITH_CALLBACK_TARGET: f64 = 2000.0;
const WITHOUT_CALLBACK_TARGET: f64 = 4000.0;
/// DESIGN §11: database commits per task cycle on the happy path.
const COMMITS_PER_TASK_TARGET: f64 = 3.0;
/// How long PostgreSQL 15 may hold back an idle backend's statistics.
const STATS_LAG: Duration = Duration::from_secs(11);

pub(crate) async fn run(bench: &Bench, args: &ThroughputArgs) -> Result<Report> {
    let target = bench.target("throughput", 3).await?;
    bench
        .run_on(target, async |target| {
            let environment = bench.environment(target).await?;
            let downstream =
                Downstream::start(&bench.common.downstream_host, bench.common.callback_delay)
                    .await?;
            let phases: &[bool] = match args.mode.as_str() {
                "callback" => &[true],
                "no-callback" => &[false],
                _ => &[true, false],
            };
            let mut report = Report::new(
                "throughput",
                environment,
                json!({
                    "tasks_per_phase": args.tasks,
                    "client_concurrency": args.concurrency,
                    "mode": args.mode,
                    "callback_delay_ms": bench.common.callback_delay.as_millis(),
                }),
            );
            report.measured = format!(
                "{} tasks per phase created by POST /api/v1/jobs/{{job}}/tasks with {} requests in \
                 flight, round-robin over the nodes, then drained; rate = tasks / (last \
                 finished_at − first request); latency = finished_at − created_at; commits = \
                 pg_stat_database.xact_commit of the bench database over the phase (read {} s \
                 after the drain, for PostgreSQL's statistics lag) / tasks.",
                args.tasks,
                args.concurrency,
                STATS_LAG.as_secs()
            );
            let mut results = serde_json::Map::new();
            for &expect_callback in phases {
                let phase = Phase::run(
                    target,
                    &downstream,
                    args.tasks,
                    args.concurrency,
                    expect_callback,
                    true,
                )
                .await?;
                phase.fill(&mut report, true);
                results.insert(phase.label().to_owned(), phase.to_json());
            }
            report.results = Value::Object(results);
            Ok(report)
        })
        .await
}

/// One phase: create, drain, measure.
pub(crate) struct Phase {
    pub(crate) expect_callback: bool,
    pub(crate) tasks: usize,
    pub(crate) concurrency: usize,
    pub(crate) enqueue: Duration,
    /// First request → last `finished_at`.
    pub(crate) end_to_end: Option<Duration>,
    pub(crate) completed: u64,
    /// Terminal but not `completed` (failed, cancelled…).
    pub(crate) other_terminal: u64,
    /// Still open when the wait ended: lost, as far as this run can tell.
    pub(crate) open: u64,
    pub(crate) latency: Option<Distribution>,
    pub(crate) requests: Option<Distribution>,
    pub(crate) dispatches: usize,
    pub(crate) callbacks: CallbackCounts,
    /// Callbacks answered at the first try: answered (state committed) − sent.
    pub(crate) callback_answers: Option<Distribution>,
    pub(crate) commits: Option<DbCounters>,
    pub(crate) cpu: Value,
}

impl Phase {
    /// Creates `tasks` tasks of a new job and waits for all to finish; with `settle`, waits
    /// out the statistics lag to count the commits.
    pub(crate) async fn run(
        target: &Target,
        downstream: &Downstream,
        tasks: usize,
        concurrency: usize,
        expect_callback: bool,
        settle: bool,
    ) -> Result<Self> {
        let job = define_job(target, downstream, "bench-tasks", expect_callback).await?;
        let label = if expect_callback {
            "with callback"
        } else {
            "without callback"
        };
        eprintln!("pacer-bench: throughput: {tasks} tasks {label}");
        let before = if settle {
            Some(DbCounters::read(&target.stats, &target.pool, &target.database).await?)
        } else {
            None
        };
        let callbacks_before = downstream.callbacks();
        let cpu = CpuUse::start(target, &node_pids(target)).await;
        let first_request = Utc::now();
        let began = Instant::now();
        let requests = {
            let api = target.api.clone();
            let urls = target.urls.clone();
            let name = job.name.clone();
            for_each_concurrent(tasks, concurrency, move |i| {
                let (api, name) = (api.clone(), name.clone());
                let url = urls[i % urls.len()].clone();
                async move { api.create_task(&url, &name, &format!("bench-{i}")).await }
            })
            .await?
        };
        let enqueue = began.elapsed();
        let total = i64::try_from(tasks).unwrap_or(i64::MAX);
        let patience = Duration::from_secs(60).max(Duration::from_millis(tasks as u64 * 5));
        wait_for(patience, Duration::from_millis(200), || async {
            let done = terminal_count(target, &job).await.ok()?;
            (done >= total).then_some(())
        })
        .await;
        let cpu = cpu.finish(target).await;
        let rows =
            sqlx::query("select id, state, created_at, finished_at from tasks where job_id = $1")
                .bind(job.id)
                .fetch_all(&target.pool)
                .await?;
        let (mut completed, mut other_terminal, mut open) = (0, 0, 0);
        let mut latency = Vec::with_capacity(rows.len());
        let mut last_finished: Option<DateTime<Utc>> = None;
        let mut ids = HashSet::with_capacity(rows.len());
        for row in &rows {
            ids.insert(row.get::<Uuid, _>("id").to_string());
            let state: String = row.get("state");
            let created: DateTime<Utc> = row.get("created_at");
            let finished: Option<DateTime<Utc>> = row.get("finished_at");
            match (state.as_str(), finished) {
                ("completed", Some(finished)) => {
                    completed += 1;
                    latency.push(millis(finished, created));
                    last_finished = last_finished.max(Some(finished));
                }
                ("pending" | "processing", _) => open += 1,
                _ => other_terminal += 1,
            }
        }
        // Tasks the API never created count as lost too.
        open += u64::try_from(tasks.saturating_sub(rows.len())).unwrap_or_default();
        let commits = match before {
            Some(before) => {
                tokio::time::sleep(STATS_LAG).await;
                let after = DbCounters::read(&target.stats, &target.pool, &target.database).await?;
                Some(after.since(&before))
            }
            None => None,
        };
        let request_ms: Vec<f64> = requests.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        Ok(Self {
            expect_callback,
            tasks,
            concurrency,
            enqueue,
            end_to_end: last_finished.and_then(|last| (last - first_request).to_std().ok()),
            completed,
            other_terminal,
            open,
            latency: Distribution::of(&latency),
            requests: Distribution::of(&request_ms),
            dispatches: downstream
                .dispatches()
                .iter()
                .filter(|d| ids.contains(&d.task_id))
                .count(),
            callbacks: downstream.callbacks().since(callbacks_before),
            callback_answers: Distribution::of(
                &downstream.callback_answers(first_request, Utc::now()),
            ),
            commits,
            cpu,
        })
    }

    pub(crate) fn label(&self) -> &'static str {
        if self.expect_callback {
            "with_callback"
        } else {
            "without_callback"
        }
    }

    pub(crate) fn rate(&self) -> Option<f64> {
        self.end_to_end
            .map(|d| self.completed as f64 / d.as_secs_f64().max(1e-3))
    }

    fn commits_per_task(&self) -> Option<f64> {
        self.commits
            .as_ref()
            .map(|c| c.xact_commit as f64 / (self.tasks.max(1)) as f64)
    }

    /// Adds this phase's rows and failures to `report`; with `targets`, the rates are held
    /// against DESIGN §11.
    pub(crate) fn fill(&self, report: &mut Report, targets: bool) {
        let label = if self.expect_callback {
            "with callback"
        } else {
            "no callback"
        };
        let target = if self.expect_callback {
            WITH_CALLBACK_TARGET
        } else {
            WITHOUT_CALLBACK_TARGET
        };
        report.rows.push(Row::info(
            format!("{label}: created by REST ({} in flight)", self.concurrency),
            format!(
                "{} in {:.1} s = {:.0}/s",
                self.tasks,
                self.enqueue.as_secs_f64(),
                self.tasks as f64 / self.enqueue.as_secs_f64().max(1e-3)
            ),
        ));
        let measure = format!("{label}: end to end, first request → last finished");
        let rate = self
            .rate()
            .map_or_else(|| "—".to_owned(), |r| format!("{r:.0} tasks/s"));
        report.rows.push(if targets {
            Row::check(
                measure,
                rate,
                format!("≥ {target:.0} tasks/s"),
                self.rate().is_some_and(|r| r >= target),
            )
        } else {
            Row::info(measure, rate)
        });
        report.rows.push(Row::info(
            format!("{label}: created → finished, p50 / p99 / max"),
            self.latency
                .map_or_else(|| "—".to_owned(), |d| d.brief("ms")),
        ));
        if let Some(per_task) = self.commits_per_task() {
            report.rows.push(Row::check(
                format!("{label}: commits per task (all transactions / tasks)"),
                format!("{per_task:.2}"),
                format!("≤ {COMMITS_PER_TASK_TARGET:.0}"),
                per_task <= COMMITS_PER_TASK_TARGET,
            ));
        }
        report.rows.push(Row::check(
            format!("{label}: lost (still open) / failed"),
            format!("{} / {}", self.open, self.other_terminal),
            "0 / 0",
            self.open == 0 && self.other_terminal == 0,
        ));
        report.rows.push(Row::info(
            format!("{label}: dispatches received (repeats beyond one per task)"),
            format!(
                "{} ({})",
                self.dispatches,
                self.dispatches.saturating_sub(self.completed as usize)
            ),
        ));
        if self.expect_callback {
            report.rows.push(Row::info(
                format!("{label}: callback answered (state committed) − sent, p50 / p99 / max"),
                self.callback_answers
                    .map_or_else(|| "—".to_owned(), |d| d.brief("ms")),
            ));
            let c = self.callbacks;
            report.rows.push(Row::info(
                format!("{label}: callbacks answered / 409 / failed (retries)"),
                format!(
                    "{} / {} / {} ({})",
                    c.answered, c.conflicts, c.failed, c.retries
                ),
            ));
        }
        report.rows.push(cpu_row(&self.cpu));
        report.require_zero(&format!("tasks lost ({label})"), self.open);
        report.require_zero(&format!("tasks failed ({label})"), self.other_terminal);
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "tasks": self.tasks,
            "enqueue_s": round(self.enqueue.as_secs_f64()),
            "enqueue_per_s": round(self.tasks as f64 / self.enqueue.as_secs_f64().max(1e-3)),
            "end_to_end_s": self.end_to_end.map(|d| round(d.as_secs_f64())),
            "tasks_per_s": self.rate().map(round),
            "completed": self.completed,
            "failed_or_cancelled": self.other_terminal,
            "lost": self.open,
            "created_to_finished_ms": json_of(self.latency),
            "create_request_ms": json_of(self.requests),
            "dispatches": self.dispatches,
            "callbacks": self.callbacks.to_json(),
            "callback_answered_minus_sent_ms": json_of(self.callback_answers),
            "commits_per_task": self.commits_per_task().map(|c| (c * 100.0).round() / 100.0),
            "database": self.commits.as_ref().map(DbCounters::to_json),
            "cpu": self.cpu,
        })
    }
}

async fn terminal_count(target: &Target, job: &BenchJob) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "select count(*) from tasks where job_id = $1 and next_dispatch_at is null",
    )
    .bind(job.id)
    .fetch_one(&target.pool)
    .await?)
}
