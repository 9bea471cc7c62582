//! `pacer-bench`: measures Pacer on this machine. Each workload starts what it needs (a fresh
//! database, `pacer serve` nodes, a fake downstream), runs, stops everything and reports.

mod activity;
mod api;
mod cluster;
mod database;
mod downstream;
mod report;
mod stats;
mod system;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::report::Report;
use crate::workloads::{
    ConcurrencyArgs, FailoverArgs, FiringArgs, HistoryArgs, IdleArgs, OneshotArgs, SmokeArgs,
    SoakArgs, ThroughputArgs, WorkflowArgs,
};

/// Benchmarks for Pacer: firing lateness, failover, task throughput, one-shot precision,
/// workflows and the cost of a node at rest. Build first with
/// `cargo build --release -p pacer-server -p pacer-bench`.
#[derive(Debug, Parser)]
#[command(name = "pacer-bench", version)]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Subcommand)]
enum Workload {
    /// S interval triggers at 1 s on a cluster for D seconds: lateness, duplicates, misses.
    Firing(FiringArgs),
    /// The firing workload while the leader is killed every 20 s (SIGKILL, once SIGTERM).
    Failover(FailoverArgs),
    /// T tasks created by REST as fast as possible, then drained: tasks/s end to end.
    Throughput(ThroughputArgs),
    /// `once` triggers due at precise instants: lateness percentiles.
    Oneshot(OneshotArgs),
    /// T tasks of a job with `max_concurrency` N over the cluster: the most tasks the downstream
    /// saw at once (must be N) and the throughput under the limit.
    Concurrency(ConcurrencyArgs),
    /// R small runs of single-target steps (step advance latency), then one run fanning out N
    /// items over two `for_each` steps: children/s, step advances, the most children open at
    /// once, exactly-once delivery.
    Workflow(WorkflowArgs),
    /// `throughput` and `firing` on the empty database, then again after preloading N finished
    /// tasks with their attempts and events: how much a large history slows the hot path.
    History(HistoryArgs),
    /// T interval triggers at 1 s with callbacks for a long time under a short retention: table
    /// rows and bytes, throughput, lateness, pruning and dead tuples over time (JSON and PNG).
    Soak(SoakArgs),
    /// A node at rest: memory, CPU and database writes.
    Idle(IdleArgs),
    /// All of the machinery in a few seconds; exits non-zero on any lost, missing or duplicate
    /// run. This is what CI runs.
    Smoke(SmokeArgs),
}

/// Settings shared by every workload.
#[derive(Debug, Clone, Args)]
pub(crate) struct Common {
    /// The `pacer` binary to start (default: `pacer` beside this executable).
    #[arg(long, global = true, env = "PACER_BENCH_PACER_BIN")]
    pub(crate) pacer_bin: Option<PathBuf>,
    /// Benchmark an already running cluster at these base URLs (comma separated) instead of
    /// starting nodes; needs --token and --database-url.
    #[arg(long, global = true, value_delimiter = ',')]
    pub(crate) url: Vec<String>,
    /// An admin token for --url.
    #[arg(long, global = true, env = "PACER_BENCH_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// The database of the cluster at --url, for reading results.
    #[arg(
        long,
        global = true,
        env = "PACER_BENCH_DATABASE_URL",
        hide_env_values = true
    )]
    pub(crate) database_url: Option<String>,
    /// The maintenance database of the local PostgreSQL, where each run creates its own
    /// `pacer_bench_<uuid>` database (dropped at the end).
    #[arg(
        long,
        global = true,
        env = "PACER_BENCH_ADMIN_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub(crate) admin_url: String,
    /// How many nodes to start (each workload has its own default).
    #[arg(long, global = true)]
    pub(crate) nodes: Option<usize>,
    /// An extra `PACER_…` setting for every node started, e.g.
    /// `--node-env PACER_CLUSTER__LEASE_TTL=2s`; repeat for several.
    #[arg(long = "node-env", global = true, value_name = "KEY=VALUE", value_parser = parse_env)]
    pub(crate) node_env: Vec<(String, String)>,
    /// How long the fake downstream waits after a dispatch before calling back.
    #[arg(long, global = true, value_parser = parse_span, default_value = "0s")]
    pub(crate) callback_delay: Duration,
    /// The host the fake downstream listens on and Pacer dispatches to.
    #[arg(long, global = true, default_value = "127.0.0.1")]
    pub(crate) downstream_host: String,
    /// Where raw samples and node logs go (default: `target/bench` of this build).
    #[arg(long, global = true)]
    pub(crate) out_dir: Option<PathBuf>,
    /// Keep the run's database instead of dropping it, to look at it afterwards.
    #[arg(long, global = true)]
    pub(crate) keep_database: bool,
}

/// Parses `KEY=VALUE` for `--node-env`.
fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if key.starts_with("PACER_") => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not PACER_…=value")),
    }
}

/// Parses a span like `500ms`, `20s`, `2m` or `1h`; a bare number is seconds.
pub(crate) fn parse_span(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a span like 500ms, 20s or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("`{text}`: the unit must be ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

/// The harness shares the machine with what it measures: mimalloc, as the nodes use, keeps the
/// fake downstream's share of a burst small.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(report) if report.failures.is_empty() => ExitCode::SUCCESS,
        Ok(report) => {
            for failure in &report.failures {
                eprintln!("pacer-bench: FAILED: {failure}");
            }
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("pacer-bench: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<Report> {
    // reqwest is built without a default TLS provider; a second install fails harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bench = workloads::Bench::new(cli.common)?;
    let work = async {
        match cli.workload {
            Workload::Firing(args) => workloads::firing::run(&bench, &args).await,
            Workload::Failover(args) => workloads::failover::run(&bench, &args).await,
            Workload::Throughput(args) => workloads::throughput::run(&bench, &args).await,
            Workload::Oneshot(args) => workloads::oneshot::run(&bench, &args).await,
            Workload::Concurrency(args) => workloads::concurrency::run(&bench, &args).await,
            Workload::Workflow(args) => workloads::workflow::run(&bench, &args).await,
            Workload::History(args) => workloads::history::run(&bench, &args).await,
            Workload::Soak(args) => workloads::soak::run(&bench, &args).await,
            Workload::Idle(args) => workloads::idle::run(&bench, &args).await,
            Workload::Smoke(args) => workloads::smoke::run(&bench, &args).await,
        }
    };
    let report = work.await?;
    report.emit(&bench).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{parse_env, parse_span};

    #[test]
    fn spans_are_read_with_their_unit_and_bare_numbers_are_seconds() {
        assert_eq!(parse_span("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_span("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_span("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_span("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_span("5 parsecs").is_err());
        assert!(parse_span("").is_err());
    }

    #[test]
    fn node_settings_must_be_pacer_variables() {
        assert_eq!(
            parse_env("PACER_CLUSTER__LEASE_TTL=2s"),
            Ok(("PACER_CLUSTER__LEASE_TTL".to_owned(), "2s".to_owned()))
        );
        assert!(parse_env("RUST_LOG=debug").is_err());
        assert!(parse_env("PACER_X").is_err());
    }
}
