//! Logging: JSON lines for `serve`, readable lines for `dev`; the filter from `RUST_LOG` or the
//! configuration.

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Logs go to standard output.
pub(crate) fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Pretty => builder.compact().init(),
    }
}

/// Latency buckets, in seconds, for every `*_seconds` histogram: from a millisecond (firing
/// lateness, fast dispatches) to a minute.
const BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Installs the process-wide metrics recorder; the handle renders the Prometheus text.
pub(crate) fn metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
        .context("invalid histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    describe();
    metrics::gauge!("pacer_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "pacer_http_requests_total",
        "HTTP requests by method, route template and status"
    );
    describe_histogram!(
        "pacer_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by method and route template"
    );
    describe_counter!("pacer_tasks_created_total", "Tasks created, by origin");
    describe_counter!(
        "pacer_occurrences_fired_total",
        "Trigger occurrences turned into tasks"
    );
    describe_histogram!(
        "pacer_firing_lateness_seconds",
        Unit::Seconds,
        "Task created minus occurrence scheduled"
    );
    describe_counter!("pacer_skips_total", "Runs that got no task, by reason");
    describe_counter!("pacer_dispatches_total", "Dispatches by job and outcome");
    describe_histogram!(
        "pacer_dispatch_duration_seconds",
        Unit::Seconds,
        "Dispatch latency by job and outcome"
    );
    describe_counter!(
        "pacer_callbacks_total",
        "Callbacks by reported status and result"
    );
    describe_gauge!(
        "pacer_tasks_open",
        "Open tasks by state (exported by the leader)"
    );
    describe_gauge!("pacer_leader", "1 while this node leads, 0 otherwise");
    describe_gauge!("pacer_leader_term", "The term this node leads under");
    describe_gauge!(
        "pacer_heartbeat_age_seconds",
        Unit::Seconds,
        "Time since this node's last successful heartbeat"
    );
    describe_gauge!("pacer_db_pool_connections", "Database connections by state");
    describe_gauge!(
        "pacer_db_pool_max_connections",
        "The database pool's size limit"
    );
    describe_gauge!("pacer_build_info", "The running version");
}
