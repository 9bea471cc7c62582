//! Logging and tracing: JSON lines for `serve`, readable lines for `dev`, the filter from
//! `RUST_LOG` or the configuration; OpenTelemetry traces over OTLP/HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard `OTEL_*` variables apply), flushed on exit.
//! Also the Prometheus metrics recorder.

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes what is buffered.
pub(crate) struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered. Call outside the async runtime.
    pub(crate) fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("pacer: flushing traces failed: {error}");
        }
    }
}

/// Installs the global subscriber (logs to standard output) and, when configured, the OTLP trace
/// pipeline. Call before entering the async runtime.
pub(crate) fn init(format: LogFormat, level: &str) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            // A line's span is its request or its dispatch: spans are never nested, so the list
            // of enclosing spans would only repeat it.
            .with_current_span(true)
            .with_span_list(false)
            .with_target(false)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_target(false)
            .boxed(),
    };
    let provider =
        std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").and_then(|_| match tracer_provider() {
            Ok(provider) => Some(provider),
            Err(error) => {
                eprintln!("pacer: trace export is off: {error:#}");
                None
            }
        });
    match &provider {
        // Each layer has its own filter: turning logs down must not drop the spans that carry a
        // task's trace, nor the `traceparent` its dispatches send.
        Some(provider) => tracing_subscriber::registry()
            .with(logs.with_filter(filter))
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("pacer"))
                    // Whatever the log level: spans and events at `info` and above. (A filter by
                    // target here made the log layer miss events of targets it excluded.)
                    .with_filter(LevelFilter::INFO),
            )
            .init(),
        // Without traces the log filter is the whole subscriber's: nothing else needs a span.
        None => tracing_subscriber::registry()
            .with(logs)
            .with(filter)
            .init(),
    }
    Telemetry { provider }
}

fn tracer_provider() -> anyhow::Result<SdkTracerProvider> {
    pacer_engine::install_crypto_provider();
    // Endpoint, protocol (http/protobuf or http/json), headers and timeout come from the
    // standard OTEL_EXPORTER_OTLP_* variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .context("building the OTLP exporter")?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("pacer");
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Latency buckets, in seconds, for every `*_seconds` histogram: from a millisecond (firing
/// lateness, fast dispatches) to a minute.
const BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Buckets for lateness that may be negative: an occurrence fired ahead of its time (by design),
/// or a dispatch sent early (a fault, to be seen rather than clamped to zero).
const SIGNED_BUCKETS: [f64; 21] = [
    -10.0, -1.0, -0.5, -0.25, -0.1, -0.01, -0.001, 0.0, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// Installs the process-wide metrics recorder; the handle renders the Prometheus text.
pub(crate) fn metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
        .context("invalid histogram buckets")?
        .set_buckets_for_metric(
            Matcher::Full("pacer_occurrence_creation_lateness_seconds".into()),
            &SIGNED_BUCKETS,
        )
        .context("invalid histogram buckets")?
        .set_buckets_for_metric(
            Matcher::Full("pacer_dispatch_lateness_seconds".into()),
            &SIGNED_BUCKETS,
        )
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
        "pacer_tasks_unchanged_total",
        "Tasks that ended completed with their input unchanged (skip_if_unchanged), by job; a \
         run's are its skip step's child's"
    );
    describe_counter!(
        "pacer_messages_total",
        "Upstream messages received, by source and result"
    );
    describe_gauge!(
        "pacer_amqp_consumer_connected",
        "1 while this node's RabbitMQ consumer is connected, 0 otherwise"
    );
    describe_counter!(
        "pacer_occurrences_fired_total",
        "Trigger occurrences turned into tasks"
    );
    describe_histogram!(
        "pacer_occurrence_creation_lateness_seconds",
        Unit::Seconds,
        "Task created minus occurrence scheduled; negative for occurrences fired ahead of their time"
    );
    describe_histogram!(
        "pacer_dispatch_lateness_seconds",
        Unit::Seconds,
        "First dispatch sent minus the task's scheduled time; negative if sent early"
    );
    describe_counter!(
        "pacer_dispatches_early_total",
        "First dispatches sent before the task's scheduled time (always a fault)"
    );
    describe_histogram!(
        "pacer_callback_apply_seconds",
        Unit::Seconds,
        "Status callback received to its state change committed"
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
    describe_gauge!(
        "pacer_alerts_open",
        "Open and acknowledged alerts by kind (exported by the leader)"
    );
    describe_gauge!(
        "pacer_job_tasks",
        "Each job's pending and processing tasks (exported by the leader)"
    );
    describe_gauge!(
        "pacer_job_oldest_pending_seconds",
        Unit::Seconds,
        "How long each job's longest-waiting due pending task has waited (exported by the leader)"
    );
    describe_counter!(
        "pacer_alerts_raised_total",
        "Alerts raised by the leader's evaluation, opened or repeated, by kind"
    );
    describe_counter!(
        "pacer_alert_deliveries_total",
        "Alert delivery attempts by sink kind and outcome (delivered, retry, failed, lost)"
    );
    describe_gauge!(
        "pacer_rows",
        "Approximate rows per table, from the database's statistics (exported by the leader)"
    );
    describe_gauge!(
        "pacer_bytes",
        Unit::Bytes,
        "Bytes on disk per table, indexes and TOAST included (exported by the leader)"
    );
    describe_counter!(
        "pacer_pruned_rows_total",
        "Rows the leader pruned past their retention, by table"
    );
    describe_gauge!(
        "pacer_prune_lag_seconds",
        Unit::Seconds,
        "How long ago the oldest row still to be pruned passed its retention, by table (0: none waits)"
    );
    describe_histogram!(
        "pacer_prune_batch_seconds",
        Unit::Seconds,
        "Duration of one pruning batch, its transaction included"
    );
}
