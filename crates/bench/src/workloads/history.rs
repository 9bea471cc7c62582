//! `history`: does a large history slow the hot path down? One cluster, one sitting: `throughput`
//! (the full cycle, with callbacks) and `firing` measured on the empty database, then N finished
//! tasks preloaded with their attempts and events (straight into the tables, by
//! `generate_series`, not through the API), then the same measured again. Autovacuum is on for
//! the run, as in production.

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::firing::{Cost, Measured, Setup, Timing, node_pids};
use super::throughput::Phase;
use super::{Bench, BenchJob, CpuUse, HistoryArgs, define_job, positive};
use crate::cluster::Target;
use crate::database::{Autovacuum, DbCounters};
use crate::downstream::Downstream;
use crate::report::{Report, Row};
use crate::stats::{Distribution, round};

/// How much slower a figure may get on the loaded database.
const WITHIN: f64 = 0.20;

const PRELOAD: &str = include_str!("sql/history_preload.sql");

pub(crate) async fn run(bench: &Bench, args: &HistoryArgs) -> Result<Report> {
    positive("--firing-duration", args.firing_duration)?;
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    anyhow::ensure!(args.chunk > 0, "--chunk must be at least 1");
    Autovacuum::on_during(bench.server_url(), async |autovacuum| {
        measure(bench, args, autovacuum).await
    })
    .await
}

/// The sitting itself, on a cluster of its own, with autovacuum on.
async fn measure(bench: &Bench, args: &HistoryArgs, autovacuum: &Autovacuum) -> Result<Report> {
    let target = bench.target("history", 3).await?;
    bench
        .run_on(target, async |target| {
            let environment = bench.environment(target).await?;
            let downstream =
                Downstream::start(&bench.common.downstream_host, bench.common.callback_delay)
                    .await?;
            let empty = sitting(target, &downstream, args, "empty").await?;
            let preload = preload(target, &downstream, args).await?;
            let loaded = sitting(target, &downstream, args, "loaded").await?;
            let mut report = Report::new(
                "history",
                environment,
                json!({
                    "preloaded_tasks": args.tasks,
                    "preload_spread_h": args.spread.as_secs_f64() / 3600.0,
                    "rounds": args.rounds,
                    "throughput_tasks": args.throughput_tasks,
                    "client_concurrency": args.concurrency,
                    "triggers": args.triggers,
                    "firing_duration_s": args.firing_duration.as_secs_f64(),
                    "warmup_s": args.warmup.as_secs_f64(),
                    "autovacuum": autovacuum.describe(),
                }),
            );
            report.measured = format!(
                "One cluster, one sitting. On the empty database, then again after {} finished \
                 tasks (one attempt and three state events each, finished over the last {:.0} \
                 days, within the default retention) were written into it by generate_series \
                 and `vacuum analyze`d: {} round(s) of `throughput` ({} tasks with callbacks, {} \
                 requests in flight) and `firing` ({} triggers at 1 s for {} s, callbacks at \
                 once; the job paused after each round). Figures are medians over the rounds; autovacuum {}.",
                args.tasks,
                args.spread.as_secs_f64() / 86_400.0,
                args.rounds,
                args.throughput_tasks,
                args.concurrency,
                args.triggers,
                args.firing_duration.as_secs(),
                autovacuum.describe()
            );
            compare(&mut report, &empty, &loaded);
            report.rows.push(Row::info(
                "preload: rows written, time",
                format!(
                    "{} tasks, {} attempts, {} events in {:.0} s ({:.0} tasks/s), vacuum analyze {:.0} s",
                    preload.tasks,
                    preload.tasks,
                    preload.tasks * 3,
                    preload.load.as_secs_f64(),
                    preload.tasks as f64 / preload.load.as_secs_f64().max(1e-3),
                    preload.vacuum.as_secs_f64()
                ),
            ));
            report.rows.push(Row::info(
                "tables after the preload: tasks / task_attempts / events",
                preload.sizes.clone(),
            ));
            report.results = json!({
                "empty": empty.to_json(),
                "loaded": loaded.to_json(),
                "preload": {
                    "tasks": preload.tasks,
                    "seconds": round(preload.load.as_secs_f64()),
                    "vacuum_analyze_seconds": round(preload.vacuum.as_secs_f64()),
                    "tables": preload.tables,
                },
            });
            report.raw = json!({"empty": empty.raw, "loaded": loaded.raw});
            Ok(report)
        })
        .await
}

/// The rounds measured on one state of the database.
struct Sitting {
    label: &'static str,
    /// Tasks/s end to end of each `throughput` round.
    rates: Vec<f64>,
    /// Dispatch received − scheduled of each `firing` round.
    dispatched: Vec<Distribution>,
    /// Callback answered − sent of each `firing` round.
    callbacks: Vec<Distribution>,
    /// Milliseconds of node and backend CPU per task finished, each `firing` round.
    cpu_per_task: Vec<f64>,
    /// Occurrences missing or doubled, tasks never or early dispatched, over every round.
    faults: u64,
    raw: Value,
}

impl Sitting {
    fn rate(&self) -> f64 {
        median(&self.rates)
    }

    fn dispatched_p99(&self) -> f64 {
        median(&self.dispatched.iter().map(|d| d.p99).collect::<Vec<_>>())
    }

    fn callbacks_p99(&self) -> f64 {
        median(&self.callbacks.iter().map(|d| d.p99).collect::<Vec<_>>())
    }

    fn to_json(&self) -> Value {
        let brief = |ds: &[Distribution]| -> Vec<Value> {
            ds.iter()
                .map(|d| json!({"p50": round(d.p50), "p99": round(d.p99), "max": round(d.max)}))
                .collect()
        };
        json!({
            "label": self.label,
            "throughput_tasks_per_s": self.rates.iter().map(|r| round(*r)).collect::<Vec<_>>(),
            "dispatched_minus_scheduled_ms": brief(&self.dispatched),
            "callback_answered_minus_sent_ms": brief(&self.callbacks),
            "cpu_ms_per_task": self.cpu_per_task.iter().map(|c| round(*c)).collect::<Vec<_>>(),
            "faults": self.faults,
        })
    }
}

/// `args.rounds` rounds of `throughput` then `firing` on the database as it is.
async fn sitting(
    target: &Target,
    downstream: &Downstream,
    args: &HistoryArgs,
    label: &'static str,
) -> Result<Sitting> {
    let mut sitting = Sitting {
        label,
        rates: Vec::new(),
        dispatched: Vec::new(),
        callbacks: Vec::new(),
        cpu_per_task: Vec::new(),
        faults: 0,
        raw: json!([]),
    };
    let mut raw = Vec::new();
    for round_number in 1..=args.rounds {
        eprintln!(
            "pacer-bench: history: {label} database, round {round_number}/{}",
            args.rounds
        );
        let phase = Phase::run(
            target,
            downstream,
            args.throughput_tasks,
            args.concurrency,
            true,
            false,
        )
        .await?;
        sitting.faults += phase.open + phase.other_terminal;
        if let Some(rate) = phase.rate() {
            sitting.rates.push(rate);
        }
        let setup = Setup::create(
            target,
            downstream,
            args.triggers,
            true,
            Timing::EVERY_SECOND,
        )
        .await?;
        let before = DbCounters::read(&target.stats, &target.pool, &target.database).await?;
        let cpu = CpuUse::start(target, &node_pids(target)).await;
        let began = Utc::now();
        tokio::time::sleep(args.firing_duration).await;
        let cpu = cpu.finish(target).await;
        let ended = Utc::now();
        let after = DbCounters::read(&target.stats, &target.pool, &target.database).await?;
        // Read while the job is there: its tasks are found by its id.
        let measured = Measured::collect(target, downstream, &setup, ended, args.warmup).await?;
        stop_firing(target, &setup.job).await?;
        let o = &measured.occurrences;
        sitting.faults += o.missing + o.duplicates + measured.undispatched + measured.early;
        if let Some(d) = measured.dispatched {
            sitting.dispatched.push(d);
        }
        if let Some(d) = measured.callbacks {
            sitting.callbacks.push(d);
        }
        let cost = Cost::of(
            target,
            &setup.job,
            (began, ended),
            &cpu,
            after.since(&before).xact_commit,
        )
        .await?;
        sitting.cpu_per_task.push(cost.cpu_ms_per_task());
        raw.push(json!({
            "round": round_number,
            "throughput": phase.to_json(),
            "firing": measured.raw,
            "cost": cost.to_json(),
        }));
    }
    sitting.raw = Value::Array(raw);
    Ok(sitting)
}

/// Pauses the firing round's job: its triggers stop, its tasks stay as history. (Deleting it
/// would rewrite every one of its tasks, clearing their job and trigger.)
async fn stop_firing(target: &Target, job: &BenchJob) -> Result<()> {
    target.api.pause_job(target.url(0), &job.name).await
}

/// What the preload wrote and how long it took.
struct Preloaded {
    tasks: u64,
    load: Duration,
    vacuum: Duration,
    sizes: String,
    tables: Value,
}

/// Writes `args.tasks` finished tasks of a job of their own, `args.chunk` per statement on two
/// connections, then `vacuum analyze`s the three tables (what autovacuum would do over time).
async fn preload(
    target: &Target,
    downstream: &Downstream,
    args: &HistoryArgs,
) -> Result<Preloaded> {
    let job = define_job(target, downstream, "bench-history", true).await?;
    let now = Utc::now();
    let began = Instant::now();
    let chunks: Vec<(u64, u64)> = (0..args.tasks)
        .step_by(usize::try_from(args.chunk)?)
        .map(|from| (from, (from + args.chunk).min(args.tasks)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let load = async || -> Result<()> {
        let mut conn = target.pool.acquire().await?;
        // Rows written straight into the tables, consistent by construction: no trigger (the
        // events are written here, with their times) and no foreign-key check.
        sqlx::query("set session_replication_role = replica")
            .execute(&mut *conn)
            .await
            .context("the preload writes as a superuser")?;
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(&(from, to)) = chunks.get(i) else {
                break;
            };
            sqlx::query(PRELOAD)
                .bind(job.id)
                .bind(&job.name)
                .bind(i64::try_from(from)?)
                .bind(i64::try_from(to)?)
                .bind(args.tasks as f64)
                .bind(now)
                .bind(args.spread.as_secs_f64())
                .execute(&mut *conn)
                .await
                .with_context(|| format!("preloading tasks {from}…{to}"))?;
            eprintln!(
                "pacer-bench: history: preloaded {to} of {} tasks ({:.0} s)",
                args.tasks,
                began.elapsed().as_secs_f64()
            );
        }
        sqlx::query("reset session_replication_role")
            .execute(&mut *conn)
            .await?;
        Ok(())
    };
    let (first, second) = tokio::join!(load(), load());
    first?;
    second?;
    let load = began.elapsed();
    let began = Instant::now();
    sqlx::query("vacuum analyze tasks, task_attempts, events")
        .execute(&target.pool)
        .await?;
    let vacuum = began.elapsed();
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "select relname::text, n_live_tup, pg_total_relation_size(relid)
         from pg_stat_user_tables where relname in ('tasks', 'task_attempts', 'events')
         order by array_position(array['tasks', 'task_attempts', 'events'], relname::text)",
    )
    .fetch_all(&target.pool)
    .await?;
    let sizes = rows
        .iter()
        .map(|(_, live, bytes)| format!("{live} rows, {:.2} GB", *bytes as f64 / 1e9))
        .collect::<Vec<_>>()
        .join(" / ");
    let tables = rows
        .iter()
        .map(|(name, live, bytes)| (name.clone(), json!({"rows": live, "bytes": bytes})))
        .collect::<serde_json::Map<_, _>>();
    Ok(Preloaded {
        tasks: args.tasks,
        load,
        vacuum,
        sizes,
        tables: Value::Object(tables),
    })
}

/// The table: each figure empty and loaded, and whether loaded is within [`WITHIN`].
fn compare(report: &mut Report, empty: &Sitting, loaded: &Sitting) {
    let throughput_met = loaded.rate() >= empty.rate() * (1.0 - WITHIN);
    report.rows.push(Row::check(
        "throughput with callbacks, tasks/s: empty → loaded (median)",
        format!(
            "{:.0} → {:.0} ({})",
            empty.rate(),
            loaded.rate(),
            change(empty.rate(), loaded.rate())
        ),
        "loaded ≥ 80 % of empty",
        throughput_met,
    ));
    for (measure, before, after) in [
        (
            "firing: dispatch received − scheduled, p99 ms: empty → loaded (median)",
            empty.dispatched_p99(),
            loaded.dispatched_p99(),
        ),
        (
            "firing: callback answered − sent, p99 ms: empty → loaded (median)",
            empty.callbacks_p99(),
            loaded.callbacks_p99(),
        ),
    ] {
        report.rows.push(Row::check(
            measure,
            format!("{before:.0} → {after:.0} ({})", change(before, after)),
            "loaded ≤ 120 % of empty",
            after <= before * (1.0 + WITHIN),
        ));
    }
    report.rows.push(Row::info(
        "firing: CPU per task finished (nodes + backends), ms: empty → loaded (median)",
        format!(
            "{:.2} → {:.2}",
            median(&empty.cpu_per_task),
            median(&loaded.cpu_per_task)
        ),
    ));
    for (sitting, what) in [(empty, "empty"), (loaded, "loaded")] {
        report.rows.push(Row::info(
            format!("rounds on the {what} database: throughput / dispatch p99 / callback p99"),
            format!(
                "{} / {} / {}",
                list(&sitting.rates, ""),
                list(
                    &sitting.dispatched.iter().map(|d| d.p99).collect::<Vec<_>>(),
                    " ms"
                ),
                list(
                    &sitting.callbacks.iter().map(|d| d.p99).collect::<Vec<_>>(),
                    " ms"
                )
            ),
        ));
    }
    let faults = empty.faults + loaded.faults;
    report.rows.push(Row::check(
        "lost, missing, duplicate, undispatched or early (all rounds)",
        faults.to_string(),
        "0",
        faults == 0,
    ));
    report.require_zero("lost, missing, duplicate, undispatched or early", faults);
}

fn change(before: f64, after: f64) -> String {
    if before <= 0.0 {
        return "—".to_owned();
    }
    format!("{:+.0} %", (after / before - 1.0) * 100.0)
}

fn list(values: &[f64], unit: &str) -> String {
    values
        .iter()
        .map(|v| format!("{v:.0}{unit}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}
