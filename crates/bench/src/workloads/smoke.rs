//! `smoke`: all of the machinery in a few seconds, for CI: one node, a handful of interval
//! triggers firing for a few seconds while tasks go through the whole cycle (create → dispatch
//! → callback → completed). Any missing or duplicate occurrence, or any task not completed,
//! fails the run. No performance target is checked: CI machines and debug builds vary.

use anyhow::Result;
use serde_json::json;

use super::firing::{Measured, Setup, Timing};
use super::throughput::Phase;
use super::{Bench, SmokeArgs, positive};
use crate::downstream::Downstream;
use crate::report::{Report, Row};

pub(crate) async fn run(bench: &Bench, args: &SmokeArgs) -> Result<Report> {
    positive("--duration", args.duration)?;
    let target = bench.target("smoke", 1).await?;
    bench
        .run_on(target, async |target| {
            let began = tokio::time::Instant::now();
            let environment = bench.environment(target).await?;
            let downstream =
                Downstream::start(&bench.common.downstream_host, bench.common.callback_delay)
                    .await?;
            let setup = Setup::create(
                target,
                &downstream,
                args.triggers,
                true,
                Timing::EVERY_SECOND,
            )
            .await?;
            // The tasks go through their cycle while the triggers fire.
            let (phase, ()) = tokio::join!(
                Phase::run(target, &downstream, args.tasks, 16, true, false),
                tokio::time::sleep(args.duration),
            );
            let phase = phase?;
            let ended = chrono::Utc::now();
            let measured = Measured::collect(
                target,
                &downstream,
                &setup,
                ended,
                std::time::Duration::ZERO,
            )
            .await?;
            let mut report = Report::new(
                "smoke",
                environment,
                json!({
                    "triggers": args.triggers,
                    "duration_s": args.duration.as_secs_f64(),
                    "tasks": args.tasks,
                }),
            );
            report.measured = format!(
                "{} interval triggers at 1 s for {} s and {} tasks through the full cycle on one \
                 node; every occurrence checked, every task must complete.",
                args.triggers,
                args.duration.as_secs(),
                args.tasks
            );
            measured.fill(&mut report, false);
            let firing = report.results.clone();
            phase.fill(&mut report, false);
            report.rows.push(Row::info(
                "smoke run, start to verdict",
                format!("{:.1} s", began.elapsed().as_secs_f64()),
            ));
            report.results = json!({"firing": firing, "tasks": phase.to_json()});
            Ok(report)
        })
        .await
}
