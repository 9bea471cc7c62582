//! `oneshot`: `once` triggers due at precise instants (millisecond precision) spread evenly over
//! a span, all created ahead of time: lateness of task creation and dispatch against each
//! trigger's `at`, and a check that each fired exactly once.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Result, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use sqlx::Row as _;
use tokio::time::Instant;
use uuid::Uuid;

use super::firing::{P99_TARGET_MS, cpu_row, node_pids};
use super::{Bench, CpuUse, OneshotArgs, create_triggers, define_job, millis, positive, wait_for};
use crate::downstream::Downstream;
use crate::report::{Report, Row};
use crate::stats::{Distribution, json_of, round};

pub(crate) async fn run(bench: &Bench, args: &OneshotArgs) -> Result<Report> {
    positive("--spread", args.spread)?;
    if args.triggers == 0 {
        bail!("--triggers must be at least 1");
    }
    let target = bench.target("oneshot", 3).await?;
    bench
        .run_on(target, async |target| {
            let environment = bench.environment(target).await?;
            let downstream =
                Downstream::start(&bench.common.downstream_host, bench.common.callback_delay)
                    .await?;
            let job = define_job(target, &downstream, "bench-oneshot", true).await?;
            let start = Utc::now() + chrono::Duration::from_std(args.lead)?;
            let start = DateTime::from_timestamp_millis(start.timestamp_millis()).unwrap_or(start);
            let step = args.spread.as_secs_f64() * 1000.0 / args.triggers as f64;
            let due: Vec<DateTime<Utc>> = (0..args.triggers)
                .map(|i| start + chrono::Duration::milliseconds((i as f64 * step).round() as i64))
                .collect();
            let specs: Vec<Value> = due
                .iter()
                .map(|at| json!({"kind": "once", "at": at.to_rfc3339_opts(SecondsFormat::Millis, true)}))
                .collect();
            let began = Instant::now();
            let cpu = CpuUse::start(target, &node_pids(target)).await;
            create_triggers(target, &job, specs, 16).await?;
            let created_by = Utc::now();
            let created_late = due.iter().filter(|at| **at < created_by).count();
            eprintln!(
                "pacer-bench: oneshot: {} triggers created in {:.1} s; the first is due at +{:.1} s",
                args.triggers,
                began.elapsed().as_secs_f64(),
                args.lead.as_secs_f64()
            );
            let last_due = due.last().copied().unwrap_or(start);
            if let Ok(wait) = (last_due - Utc::now()).to_std() {
                tokio::time::sleep(wait).await;
            }
            let total = i64::try_from(args.triggers).unwrap_or(i64::MAX);
            wait_for(Duration::from_secs(30), Duration::from_millis(250), || async {
                let n: i64 = sqlx::query_scalar(
                    "select (select count(*) from tasks where job_id = $1)
                          + (select count(*) from skipped_runs where job_id = $1)",
                )
                .bind(job.id)
                .fetch_one(&target.pool)
                .await
                .ok()?;
                (n >= total).then_some(())
            })
            .await;
            let cpu = cpu.finish(target).await;
            let rows = sqlx::query(
                "select id, trigger_id, scheduled_at, created_at from tasks where job_id = $1",
            )
            .bind(job.id)
            .fetch_all(&target.pool)
            .await?;
            let skips: i64 = sqlx::query_scalar("select count(*) from skipped_runs where job_id = $1")
                .bind(job.id)
                .fetch_one(&target.pool)
                .await?;
            let ids: Vec<String> = rows.iter().map(|r| r.get::<Uuid, _>("id").to_string()).collect();
            wait_for(Duration::from_secs(30), Duration::from_millis(250), || async {
                let seen = downstream.first_dispatches();
                ids.iter().all(|id| seen.contains_key(id)).then_some(())
            })
            .await;
            let first_dispatch = downstream.first_dispatches();
            let mut per_trigger: HashMap<Uuid, u64> = HashMap::new();
            let mut created_ms = Vec::new();
            let mut dispatched_ms = Vec::new();
            let mut undispatched = 0u64;
            for row in &rows {
                let id: Uuid = row.get("id");
                let trigger: Option<Uuid> = row.get("trigger_id");
                let scheduled: DateTime<Utc> = row.get("scheduled_at");
                let created: DateTime<Utc> = row.get("created_at");
                if let Some(trigger) = trigger {
                    *per_trigger.entry(trigger).or_default() += 1;
                }
                created_ms.push(millis(created, scheduled));
                match first_dispatch.get(&id.to_string()) {
                    Some(d) => dispatched_ms.push(millis(d.received_at, scheduled)),
                    None => undispatched += 1,
                }
            }
            let duplicates: u64 = per_trigger.values().map(|n| n.saturating_sub(1)).sum();
            let fired = per_trigger.len() as u64 + u64::try_from(skips).unwrap_or_default();
            let missing = (args.triggers as u64).saturating_sub(fired);
            let created = Distribution::of(&created_ms);
            let dispatched = Distribution::of(&dispatched_ms);
            let mut report = Report::new(
                "oneshot",
                environment,
                json!({
                    "triggers": args.triggers,
                    "spread_s": args.spread.as_secs_f64(),
                    "lead_s": args.lead.as_secs_f64(),
                    "step_ms": round(step),
                }),
            );
            report.measured = format!(
                "{} `once` triggers due every {:.1} ms over {} s (millisecond instants), created \
                 ahead of time; lateness = tasks.created_at − at and first dispatch received − at.",
                args.triggers,
                step,
                args.spread.as_secs()
            );
            report.rows.push(Row::info(
                "triggers created after their instant",
                created_late.to_string(),
            ));
            report.rows.push(Row::check("missing", missing.to_string(), "0", missing == 0));
            report.rows.push(Row::check(
                "duplicates",
                duplicates.to_string(),
                "0",
                duplicates == 0,
            ));
            for (measure, d) in [
                ("task created − at, p50 / p99 / max", created),
                ("dispatch received − at, p50 / p99 / max", dispatched),
            ] {
                report.rows.push(Row::check(
                    measure,
                    d.map_or_else(|| "—".to_owned(), |d| d.brief("ms")),
                    "p99 ≤ 50 ms",
                    d.is_some_and(|d| d.p99 <= P99_TARGET_MS),
                ));
            }
            report.rows.push(Row::info(
                "earliest creation (negative = fired ahead)",
                created.map_or_else(|| "—".to_owned(), |d| format!("{} ms", round(d.min))),
            ));
            let early = dispatched_ms.iter().filter(|ms| **ms < 0.0).count() as u64;
            report.rows.push(Row::check(
                "dispatched before the instant",
                early.to_string(),
                "0",
                early == 0,
            ));
            report.rows.push(Row::check(
                "tasks never dispatched (30 s wait)",
                undispatched.to_string(),
                "0",
                undispatched == 0,
            ));
            report.rows.push(cpu_row(&cpu));
            report.require_zero("missing occurrences", missing);
            report.require_zero("duplicate occurrences", duplicates);
            report.require_zero("tasks never dispatched", undispatched);
            report.require_zero("tasks dispatched early", early);
            if created_late > 0 {
                report.notes.push(format!(
                    "{created_late} triggers were created after their instant; raise --lead"
                ));
            }
            report.results = json!({
                "created_late": created_late,
                "missing": missing,
                "duplicates": duplicates,
                "skipped": skips,
                "undispatched": undispatched,
                "dispatched_early": early,
                "created_minus_at_ms": json_of(created),
                "dispatched_minus_at_ms": json_of(dispatched),
                "cpu": cpu,
            });
            report.raw = json!({
                "created_minus_at_ms": created_ms.iter().map(|v| round(*v)).collect::<Vec<_>>(),
                "dispatched_minus_at_ms": dispatched_ms.iter().map(|v| round(*v)).collect::<Vec<_>>(),
            });
            Ok(report)
        })
        .await
}
