//! `failover`: the firing workload while the leader (the holder in `leader_lease`) is killed
//! every 20 s, by SIGKILL and once by SIGTERM, and restarted under a new node id at once (as a
//! replacement pod would be). Each kill is sent 30 ms before a whole second, so the next
//! occurrence is due 30 ms after it. For each: time to the new term (its `acquired_at`) and to
//! the first task fired under it; over the run: duplicates and misses.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{PgPool, Row as _};
use tokio::time::Instant;

use super::firing::{Measured, Setup, Timing, cpu_row};
use super::{Bench, CpuUse, FailoverArgs, Sampler, floor_second, millis, positive, wait_for};
use crate::cluster::{Managed, Target};
use crate::downstream::Downstream;
use crate::report::{Report, Row};
use crate::stats::round;

/// DESIGN §11: occurrences resume ≤ 3 s after a SIGKILL of the leader.
const SIGKILL_TARGET_MS: f64 = 3000.0;
/// DESIGN §11: a graceful hand-over takes ≤ 100 ms.
const SIGTERM_TARGET_MS: f64 = 100.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Kill,
    Term,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Self::Kill => "SIGKILL",
            Self::Term => "SIGTERM",
        }
    }
}

/// One kill of the leader and what followed.
#[derive(Debug, Clone)]
struct Kill {
    signal: Signal,
    node: String,
    old_term: i64,
    at: DateTime<Utc>,
    new_term: Option<(i64, Option<String>, DateTime<Utc>)>,
    exited_ms: f64,
    restarted_as: String,
    /// Filled after the run: when the first task of a later term was created.
    next_task: Option<DateTime<Utc>>,
}

impl Kill {
    fn to_new_term_ms(&self) -> Option<f64> {
        self.new_term
            .as_ref()
            .map(|(_, _, at)| millis(*at, self.at))
    }

    fn to_next_task_ms(&self) -> Option<f64> {
        self.next_task.map(|at| millis(at, self.at))
    }
}

pub(crate) async fn run(bench: &Bench, args: &FailoverArgs) -> Result<Report> {
    positive("--duration", args.duration)?;
    positive("--kill-every", args.kill_every)?;
    let target = bench.target("failover", 3).await?;
    bench
        .run_on(target, async |target| {
            target.managed()?;
            let environment = bench.environment(target).await?;
            let downstream =
                Downstream::start(&bench.common.downstream_host, bench.common.callback_delay)
                    .await?;
            let setup = Setup::create(target, &downstream, args.triggers, true, Timing::EVERY_SECOND).await?;
            eprintln!(
                "pacer-bench: failover: {} triggers created; firing for {} s, killing the leader every {} s",
                args.triggers,
                args.duration.as_secs(),
                args.kill_every.as_secs()
            );
            let cpu = CpuUse::start(target, &[]).await;
            let sampler = Sampler::start(Vec::new());
            let began = Instant::now();
            let mut kills = Vec::new();
            for k in 1.. {
                let due = began + args.kill_every * k;
                // Leave time after the last kill to see the cluster recover.
                if due + Duration::from_secs(10) > began + args.duration {
                    break;
                }
                sleep_until_just_before_a_second(due).await;
                let signal = if usize::try_from(k).ok() == Some(args.sigterm_at) {
                    Signal::Term
                } else {
                    Signal::Kill
                };
                let kill = kill_leader(target, signal, k).await?;
                eprintln!(
                    "pacer-bench: failover: {} {} (term {}): new term after {} ms",
                    kill.signal.name(),
                    kill.node,
                    kill.old_term,
                    kill.to_new_term_ms().map_or("—".to_owned(), |ms| round(ms).to_string()),
                );
                kills.push(kill);
            }
            tokio::time::sleep_until(began + args.duration).await;
            let ended = Utc::now();
            let cpu = cpu.finish(target).await;
            let timeline = sampler.finish().await;
            let measured = Measured::collect(target, &downstream, &setup, ended, args.warmup).await?;
            for kill in &mut kills {
                kill.next_task = first_task_after(&target.pool, &setup, kill.old_term).await?;
            }
            let mut report = Report::new(
                "failover",
                environment,
                json!({
                    "triggers": args.triggers,
                    "every": "1s",
                    "duration_s": args.duration.as_secs_f64(),
                    "kill_every_s": args.kill_every.as_secs_f64(),
                    "sigterm_at": args.sigterm_at,
                    "warmup_s": args.warmup.as_secs_f64(),
                }),
            );
            report.measured = format!(
                "{} interval triggers at 1 s for {} s on 3 nodes while the leader is killed every \
                 {} s (kill {} by SIGTERM, the others by SIGKILL), each kill sent 30 ms before a \
                 whole second and the node restarted at once under a new id; time from the \
                 signal to the new term's acquired_at and to the first task fired under it; \
                 every occurrence of the window checked against tasks + skipped_runs.",
                args.triggers,
                args.duration.as_secs(),
                args.kill_every.as_secs(),
                args.sigterm_at
            );
            // Lateness over the run is dominated by the gaps after kills: context, no target.
            measured.fill(&mut report, false);
            let mut kill_json = Vec::new();
            for (i, kill) in kills.iter().enumerate() {
                let (limit, measure, value) = match kill.signal {
                    Signal::Kill => (SIGKILL_TARGET_MS, "first task of the new term", kill.to_next_task_ms()),
                    Signal::Term => (SIGTERM_TARGET_MS, "new term", kill.to_new_term_ms()),
                };
                report.rows.push(Row::check(
                    format!(
                        "kill {} ({} {}): signal → {measure}",
                        i + 1,
                        kill.signal.name(),
                        kill.node
                    ),
                    format!(
                        "{} ms (new term {} ms, next task {} ms)",
                        value.map_or("—".to_owned(), |v| round(v).to_string()),
                        kill.to_new_term_ms().map_or("—".to_owned(), |v| round(v).to_string()),
                        kill.to_next_task_ms().map_or("—".to_owned(), |v| round(v).to_string()),
                    ),
                    format!("≤ {limit} ms"),
                    value.is_some_and(|v| v <= limit),
                ));
                kill_json.push(json!({
                    "signal": kill.signal.name(),
                    "node": kill.node,
                    "at": kill.at.to_rfc3339(),
                    "old_term": kill.old_term,
                    "new_term": kill.new_term.as_ref().map(|(t, _, _)| t),
                    "new_leader": kill.new_term.as_ref().and_then(|(_, h, _)| h.clone()),
                    "to_new_term_ms": kill.to_new_term_ms().map(round),
                    "to_next_task_ms": kill.to_next_task_ms().map(round),
                    "process_exited_after_ms": round(kill.exited_ms),
                    "restarted_as": kill.restarted_as,
                }));
            }
            report.results["kills"] = Value::Array(kill_json);
            report.results["cpu"] = cpu.clone();
            report.results["callbacks"] = downstream.callbacks().to_json();
            report.rows.push(cpu_row(&cpu));
            report.raw["timeline"] = Value::Array(timeline);
            Ok(report)
        })
        .await
}

/// Sleeps until `due`, then on to 30 ms before the next whole second of the wall clock.
async fn sleep_until_just_before_a_second(due: Instant) {
    tokio::time::sleep_until(due).await;
    let now = Utc::now();
    let mut aim = floor_second(now) + chrono::Duration::milliseconds(970);
    if aim <= now {
        aim += chrono::Duration::seconds(1);
    }
    if let Ok(wait) = (aim - now).to_std() {
        tokio::time::sleep(wait).await;
    }
}

/// Kills the current leader with `signal`, restarts it under a new id at once, and watches the
/// lease until a new term appears (up to 30 s).
async fn kill_leader(target: &mut Target, signal: Signal, k: u32) -> Result<Kill> {
    let pool = target.pool.clone();
    let row = sqlx::query("select holder, term from leader_lease where expires_at > now()")
        .fetch_optional(&pool)
        .await?
        .context("no node holds the lease")?;
    let holder: Option<String> = row.get("holder");
    let old_term: i64 = row.get("term");
    let Managed {
        launcher, nodes, ..
    } = target.managed()?;
    let index = nodes
        .iter()
        .position(|n| Some(&n.id) == holder.as_ref())
        .with_context(|| {
            format!("the lease holder {holder:?} is not a node the harness started")
        })?;
    let node = &mut nodes[index];
    let at = Utc::now();
    let signalled = Instant::now();
    match signal {
        Signal::Kill => node.kill().await?,
        Signal::Term => node.signal_term().await?,
    }
    let restarted_as = format!("node-{}-r{k}", index + 1);
    let watch = async {
        wait_for(
            Duration::from_secs(30),
            Duration::from_millis(5),
            || async {
                let row = sqlx::query("select holder, term, acquired_at from leader_lease")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
                let term: i64 = row.get("term");
                (term > old_term).then(|| (term, row.get("holder"), row.get("acquired_at")))
            },
        )
        .await
    };
    let restart = async {
        if signal == Signal::Term && !node.wait_exit(Duration::from_secs(30)).await? {
            bail!("{} did not exit within 30 s of SIGTERM", node.id);
        }
        let exited_ms = signalled.elapsed().as_secs_f64() * 1000.0;
        let started = launcher.start(&restarted_as).await?;
        Ok((exited_ms, started))
    };
    let (new_term, restarted) = tokio::join!(watch, restart);
    let (exited_ms, started) = restarted?;
    let node_id = std::mem::replace(node, started).id;
    target.urls[index] = nodes_url(target, index);
    Ok(Kill {
        signal,
        node: node_id,
        old_term,
        at,
        new_term,
        exited_ms,
        restarted_as,
        next_task: None,
    })
}

fn nodes_url(target: &Target, index: usize) -> String {
    target
        .managed
        .as_ref()
        .map_or_else(String::new, |m| m.nodes[index].url.clone())
}

/// When the first task of a term later than `term` was created.
async fn first_task_after(
    pool: &PgPool,
    setup: &Setup,
    term: i64,
) -> Result<Option<DateTime<Utc>>> {
    Ok(sqlx::query_scalar(
        "select min(created_at) from tasks where job_id = $1 and fired_term > $2",
    )
    .bind(setup.job.id)
    .bind(term)
    .fetch_one(pool)
    .await?)
}
