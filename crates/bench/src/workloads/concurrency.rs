//! `concurrency`: T tasks of one job with `max_concurrency: N`, created by REST over the nodes
//! and drained through dispatch and callback. The downstream counts the distinct tasks it is
//! working on at once (from a dispatch until its callback goes out); the figure must be exactly
//! N: never more (the limit holds cluster-wide), and not less (the limit is used). The rate runs
//! from the first create request to the last task's `finished_at`.

use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::Row as _;
use tokio::time::Instant;

use super::firing::node_pids;
use super::{Bench, ConcurrencyArgs, CpuUse, define_job_with, millis, wait_for};
use crate::api::for_each_concurrent;
use crate::downstream::Downstream;
use crate::report::{Report, Row};
use crate::stats::{Distribution, json_of, round};

pub(crate) async fn run(bench: &Bench, args: &ConcurrencyArgs) -> Result<Report> {
    let target = bench.target("concurrency", 3).await?;
    bench
        .run_on(target, async |target| {
            let environment = bench.environment(target).await?;
            let downstream =
                Downstream::start(&bench.common.downstream_host, bench.common.callback_delay)
                    .await?;
            let mut report = Report::new(
                "concurrency",
                environment,
                json!({
                    "tasks": args.tasks,
                    "max_concurrency": args.limit,
                    "client_concurrency": args.concurrency,
                    "callback_delay_ms": bench.common.callback_delay.as_millis(),
                }),
            );
            report.measured = format!(
                "{} tasks of one job with max_concurrency {} created by POST \
                 /api/v1/jobs/{{job}}/tasks ({} in flight, round-robin over the nodes), each \
                 called back `completed` {} ms after its dispatch; most at once = the most \
                 distinct tasks the downstream held between a dispatch and its callback; rate = \
                 tasks / (last finished_at − first request); wait = first dispatch − created_at.",
                args.tasks,
                args.limit,
                args.concurrency,
                bench.common.callback_delay.as_millis()
            );
            let job = define_job_with(
                target,
                &downstream,
                "bench-limited",
                true,
                json!({ "max_concurrency": args.limit }),
            )
            .await?;
            let cpu = CpuUse::start(target, &node_pids(target)).await;
            let first_request = Utc::now();
            let began = Instant::now();
            {
                let api = target.api.clone();
                let urls = target.urls.clone();
                let name = job.name.clone();
                for_each_concurrent(args.tasks, args.concurrency, move |i| {
                    let (api, name) = (api.clone(), name.clone());
                    let url = urls[i % urls.len()].clone();
                    async move { api.create_task(&url, &name, &format!("bench-{i}")).await }
                })
                .await?;
            }
            let enqueue = began.elapsed();
            let total = i64::try_from(args.tasks).unwrap_or(i64::MAX);
            // Each slot turns over at least once per callback delay: allow for that, and more.
            let turns = args.tasks as f64 / f64::from(args.limit.max(1));
            let patience = Duration::from_secs(120).max(Duration::from_secs_f64(
                turns * (bench.common.callback_delay.as_secs_f64() + 0.1),
            ));
            wait_for(patience, Duration::from_millis(200), || async {
                let done: i64 = sqlx::query_scalar(
                    "select count(*) from tasks where job_id = $1 and next_dispatch_at is null",
                )
                .bind(job.id)
                .fetch_one(&target.pool)
                .await
                .ok()?;
                (done >= total).then_some(())
            })
            .await;
            let cpu = cpu.finish(target).await;
            let rows = sqlx::query(
                "select t.state, t.created_at, t.finished_at,
                        (select min(a.started_at) from task_attempts a where a.task_id = t.id)
                            as first_dispatch
                 from tasks t where t.job_id = $1",
            )
            .bind(job.id)
            .fetch_all(&target.pool)
            .await?;
            let (mut completed, mut other, mut open) = (0u64, 0u64, 0u64);
            let mut last_finished: Option<DateTime<Utc>> = None;
            let mut waits = Vec::with_capacity(rows.len());
            for row in &rows {
                let state: String = row.get("state");
                let created: DateTime<Utc> = row.get("created_at");
                if let Some(first) = row.get::<Option<DateTime<Utc>>, _>("first_dispatch") {
                    waits.push(millis(first, created));
                }
                match state.as_str() {
                    "completed" => {
                        completed += 1;
                        last_finished = last_finished.max(row.get("finished_at"));
                    }
                    "pending" | "processing" => open += 1,
                    _ => other += 1,
                }
            }
            open += u64::try_from(args.tasks.saturating_sub(rows.len())).unwrap_or_default();
            let max_open = downstream.max_open();
            let limit = usize::try_from(args.limit).unwrap_or(usize::MAX);
            let end_to_end = last_finished.and_then(|last| (last - first_request).to_std().ok());
            let rate = end_to_end.map(|d| completed as f64 / d.as_secs_f64().max(1e-3));
            let ideal = (bench.common.callback_delay.as_secs_f64() > 0.0)
                .then(|| f64::from(args.limit) / bench.common.callback_delay.as_secs_f64());
            let waits = Distribution::of(&waits);
            report.rows.push(Row::info(
                format!("created by REST ({} in flight)", args.concurrency),
                format!("{} in {:.1} s", args.tasks, enqueue.as_secs_f64()),
            ));
            report.rows.push(Row::check(
                "most tasks at the downstream at once",
                max_open.to_string(),
                format!("= {limit}"),
                max_open == limit,
            ));
            report.rows.push(Row::info(
                "throughput under the limit",
                rate.map_or_else(
                    || "—".to_owned(),
                    |r| match ideal {
                        Some(ideal) => {
                            format!("{r:.0} tasks/s (limit ÷ callback delay = {ideal:.0}/s)")
                        }
                        None => format!("{r:.0} tasks/s"),
                    },
                ),
            ));
            if let Some(waits) = waits {
                report.rows.push(Row::info(
                    "wait for a slot, created → first dispatch",
                    format!(
                        "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                        waits.p50, waits.p99, waits.max
                    ),
                ));
            }
            report.rows.push(Row::info(
                "machine busy",
                cpu["machine_busy_percent"]
                    .as_f64()
                    .map_or_else(|| "—".to_owned(), |b| format!("{b}%")),
            ));
            if max_open > limit {
                report.failures.push(format!(
                    "the downstream held {max_open} tasks at once; the limit is {limit}"
                ));
            }
            if open > 0 || other > 0 {
                report.failures.push(format!(
                    "{open} task(s) still open and {other} ended other than completed"
                ));
            }
            report.results = json!({
                "max_open_at_downstream": max_open,
                "limit": limit,
                "completed": completed,
                "open": open,
                "other_terminal": other,
                "enqueue_s": round(enqueue.as_secs_f64()),
                "end_to_end_s": end_to_end.map(|d| round(d.as_secs_f64())),
                "tasks_per_s": rate.map(round),
                "ideal_tasks_per_s": ideal.map(round),
                "wait_ms": json_of(waits),
                "cpu": cpu,
            });
            report.raw = Value::Null;
            Ok(report)
        })
        .await
}
