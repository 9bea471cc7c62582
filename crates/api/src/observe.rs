//! Every request gets a span (continuing the caller's trace when it sends a W3C `traceparent`)
//! and is counted by method, route template and status. Routes are templates such as
//! `/api/v1/tasks/{id}`, never raw paths, so metric labels stay bounded.

use std::collections::HashMap;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::global;
use opentelemetry_http::HeaderExtractor;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// When a request reached the API, for handlers that measure from its arrival.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received(pub(crate) std::time::Instant);

/// The request span and metrics around every handler.
pub(crate) async fn observe(mut request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    request.extensions_mut().insert(Received(started));
    // Only the methods the API serves become label values; anything else a client sends is `other`.
    let method = match request.method().as_str() {
        known @ ("GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS") => known,
        _ => "other",
    }
    .to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        request.id = %request_id,
    );
    let parent = global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    // Without a tracing pipeline there is no parent to attach to; nothing to report then.
    let _ = span.set_parent(parent);
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    metrics::histogram!("pacer_http_request_duration_seconds", "method" => method.clone(), "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("pacer_http_requests_total", "method" => method, "route" => route, "status" => status.to_string())
        .increment(1);
    response
}

/// The W3C `traceparent` of the current span, to store with work that continues the trace later.
pub(crate) fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    global::get_text_map_propagator(|propagator| propagator.inject_context(&context, &mut carrier));
    carrier.remove("traceparent")
}
