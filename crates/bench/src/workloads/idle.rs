//! `idle`: one node at rest (one job defined, nothing due) watched for D seconds: its memory
//! (`VmRSS`), its CPU time, and what it made PostgreSQL do — transactions, rows written per
//! table (heartbeats go to `nodes`, lease renewals to `leader_lease`), transaction ids used.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use super::firing::node_pids;
use super::{Bench, IdleArgs, define_job, positive};
use crate::database::DbCounters;
use crate::downstream::Downstream;
use crate::parse_span;
use crate::report::{Report, Row};
use crate::stats::{Distribution, json_of, round};
use crate::system;

/// DESIGN §11: a node at rest stays within 30 MB resident.
const RSS_TARGET_MB: f64 = 30.0;

/// The tables a node at rest is expected to write: its heartbeat and the leader lease.
const HEARTBEAT_TABLES: [&str; 2] = ["nodes", "leader_lease"];

pub(crate) async fn run(bench: &Bench, args: &IdleArgs) -> Result<Report> {
    positive("--duration", args.duration)?;
    let target = bench.target("idle", 1).await?;
    bench
        .run_on(target, async |target| {
            target.managed()?;
            let environment = bench.environment(target).await?;
            let downstream =
                Downstream::start(&bench.common.downstream_host, bench.common.callback_delay)
                    .await?;
            define_job(target, &downstream, "bench-idle", true).await?;
            let Some((node, pid)) = node_pids(target).into_iter().next() else {
                anyhow::bail!("no node to watch");
            };
            eprintln!(
                "pacer-bench: idle: settling {} s, then watching {node} for {} s",
                args.settle.as_secs(),
                args.duration.as_secs()
            );
            tokio::time::sleep(args.settle).await;
            let before = DbCounters::read(&target.stats, &target.pool, &target.database).await?;
            let cpu_before = system::cpu_seconds(pid)?;
            let mut rss_mb = Vec::new();
            // The live lease row's xmax is set by a transaction that locks it without updating
            // it (the firing pass's `for share` fence): each distinct one is a transaction id
            // and a WAL record that is not a heartbeat. Sampled 4 times a second.
            let mut lockers = std::collections::BTreeSet::new();
            let mut probes = 0i64;
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let deadline = tokio::time::Instant::now() + args.duration;
            let mut last_rss = tokio::time::Instant::now() - Duration::from_secs(1);
            while tokio::time::Instant::now() < deadline {
                tick.tick().await;
                let xmax: String = sqlx::query_scalar("select xmax::text from leader_lease")
                    .fetch_one(&target.pool)
                    .await?;
                probes += 1;
                if xmax != "0" {
                    lockers.insert(xmax);
                }
                if last_rss.elapsed() >= Duration::from_secs(1) {
                    last_rss = tokio::time::Instant::now();
                    rss_mb.push(system::rss_kib(pid)? as f64 * 1024.0 / 1e6);
                }
            }
            let cpu = system::cpu_seconds(pid)? - cpu_before;
            let after = DbCounters::read(&target.stats, &target.pool, &target.database).await?;
            let mut delta = after.since(&before);
            // The probes above are read-only transactions of the harness, not of the node.
            delta.xact_commit -= probes;
            let seconds = args.duration.as_secs_f64();
            let per_minute = |n: i64| n as f64 * 60.0 / seconds;
            let written = |table: &str| {
                delta
                    .tables
                    .get(table)
                    .map_or(0, |[ins, upd, del, _]| ins + upd + del)
            };
            let heartbeat_rows: i64 = HEARTBEAT_TABLES.iter().map(|t| written(t)).sum();
            let other_rows: Vec<(String, i64)> = delta
                .tables
                .iter()
                .filter(|(name, _)| !HEARTBEAT_TABLES.contains(&name.as_str()))
                .map(|(name, [ins, upd, del, _])| (name.clone(), ins + upd + del))
                .filter(|(_, n)| *n > 0)
                .collect();
            let other_total: i64 = other_rows.iter().map(|(_, n)| n).sum();
            let heartbeat = node_setting(bench, "PACER_CLUSTER__HEARTBEAT_INTERVAL", 2.0);
            let lease_ttl = node_setting(bench, "PACER_CLUSTER__LEASE_TTL", 2.5);
            let expected = 60.0 / heartbeat + 60.0 / (lease_ttl / 3.0);
            let rss = Distribution::of(&rss_mb);
            let last_rss = rss_mb.last().copied().unwrap_or_default();

            let mut report = Report::new(
                "idle",
                environment,
                json!({
                    "duration_s": seconds,
                    "settle_s": args.settle.as_secs_f64(),
                    "heartbeat_interval_s": heartbeat,
                    "lease_ttl_s": lease_ttl,
                }),
            );
            report.measured = format!(
                "one node with one job and nothing due, {} s after start, watched for {} s: \
                 VmRSS each second, utime+stime from /proc, pg_stat_database and \
                 pg_stat_user_tables of the bench database (read from another database; \
                 PostgreSQL publishes a backend's counts up to 10 s late; the harness's own \
                 probes subtracted), distinct lockers (xmax) of the leader_lease row sampled \
                 every 250 ms, and txid_snapshot_xmax growth (cluster-wide).",
                args.settle.as_secs(),
                args.duration.as_secs()
            );
            report.rows.push(Row::check(
                "RSS at the end (max while watched)",
                format!(
                    "{:.1} MB ({:.1} MB)",
                    last_rss,
                    rss.map_or(0.0, |d| d.max)
                ),
                format!("≤ {RSS_TARGET_MB:.0} MB"),
                rss.is_some_and(|d| d.max <= RSS_TARGET_MB),
            ));
            report.rows.push(Row::info(
                "CPU time",
                format!("{cpu:.2} s ({:.2} % of a core)", cpu / seconds * 100.0),
            ));
            report.rows.push(Row::info(
                "transactions committed per minute (incl. read-only)",
                format!("{:.0}", per_minute(delta.xact_commit)),
            ));
            report.rows.push(Row::info(
                "rows written to nodes + leader_lease per minute",
                format!(
                    "{:.0} (one heartbeat / {heartbeat} s + one renewal / {} s = {expected:.0})",
                    per_minute(heartbeat_rows),
                    lease_ttl / 3.0
                ),
            ));
            report.rows.push(Row::check(
                "rows written to any other table",
                if other_rows.is_empty() {
                    "0".to_owned()
                } else {
                    format!("{other_rows:?}")
                },
                "0 (no writes but heartbeats)",
                other_total == 0,
            ));
            report.rows.push(Row::check(
                "transactions locking the lease row without a write, per minute",
                format!("{:.0}", per_minute(lockers.len() as i64)),
                "0 (no writes but heartbeats)",
                lockers.is_empty(),
            ));
            report.rows.push(Row::info(
                "transaction ids assigned per minute (cluster-wide)",
                if delta.others_written == 0 {
                    format!("{:.0}", per_minute(delta.txid))
                } else {
                    format!(
                        "{:.0} (not this node's alone: other databases changed meanwhile)",
                        per_minute(delta.txid)
                    )
                },
            ));
            report.results = json!({
                "node": node,
                "rss_mb": json_of(rss),
                "rss_mb_at_end": round(last_rss),
                "cpu_seconds": round(cpu),
                "cpu_percent_of_a_core": round(cpu / seconds * 100.0),
                "per_minute": {
                    "transactions": round(per_minute(delta.xact_commit)),
                    "heartbeat_and_lease_rows": round(per_minute(heartbeat_rows)),
                    "other_rows": round(per_minute(other_total)),
                    "lease_row_locks": round(per_minute(lockers.len() as i64)),
                    "txids_cluster_wide": round(per_minute(delta.txid)),
                },
                "database": delta.to_json(),
            });
            report.raw = json!({ "rss_mb_each_second": rss_mb.iter().map(|v| round(*v)).collect::<Vec<_>>() });
            Ok(report)
        })
        .await
}

/// A cluster setting of the nodes in seconds: from `--node-env`, else the default.
fn node_setting(bench: &Bench, key: &str, default: f64) -> f64 {
    bench
        .common
        .node_env
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| parse_span(v).ok())
        .map_or(default, |d| d.as_secs_f64())
}
