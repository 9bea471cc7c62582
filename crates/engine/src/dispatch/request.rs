//! A dispatch made ready before its time: the body (DESIGN §6), the callback credential, the trace
//! context and the job's outbound auth, as one request ready to send.

use chrono::{DateTime, Utc};
use pacer_domain::{AmqpTarget, OutboundAuth, Target, TaskId};
use pacer_store::ClaimedTask;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::send::describe;
use crate::outbound::Outbound;

/// The body of every dispatch (DESIGN §6).
#[derive(Serialize)]
struct DispatchBody<'a> {
    task_id: TaskId,
    job: &'a str,
    attempt: i32,
    scheduled_at: DateTime<Utc>,
    /// When a jittered occurrence was meant to go out (`scheduled_at` plus the trigger's jitter
    /// offset); left out when it is `scheduled_at` itself, so a body without jitter is unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    fire_at: Option<DateTime<Utc>>,
    deadline_at: Option<DateTime<Utc>>,
    last_success_at: Option<DateTime<Utc>>,
    /// Only for a job (or step) with `skip_if_unchanged`: the fingerprint of the job's last
    /// completed run, or null.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_fingerprint: Option<Option<&'a str>>,
    payload: &'a Value,
    /// For a child of a run: the run's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    run: Option<TaskId>,
    /// For a child of a run: its step's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<&'a str>,
    /// For a child of a run: its name in a `parallel` step, its item's key in a `for_each` step,
    /// the step's name otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    child: Option<&'a str>,
    /// For a child of a `for_each` step: its item.
    #[serde(skip_serializing_if = "Option::is_none")]
    item: Option<&'a Value>,
    /// For a child of a run: the results of the steps before its own, by step name (a
    /// `parallel` step's by child name, a `for_each` step's by item key).
    #[serde(skip_serializing_if = "Option::is_none")]
    inputs: Option<&'a RawValue>,
    /// Only for a job that expects a callback: a plain webhook (`expect_callback: false`) ends
    /// its task with its answer, so it is handed no credential it has no use for.
    #[serde(skip_serializing_if = "Option::is_none")]
    callback: Option<Callback>,
}

#[derive(Serialize)]
struct Callback {
    url: String,
    /// Valid for this task alone, so the downstream can report on it without other credentials.
    token: String,
}

/// A dispatch made ready to send.
pub(crate) enum Prepared {
    /// The whole request, URL parsed and headers set but for an OAuth2 access token, which is
    /// added when it is sent (`auth`, the target's `oauth2` auth).
    Http {
        request: reqwest::Request,
        auth: Option<OutboundAuth>,
    },
    /// The job's exchange, the body, and as headers the trace context alone.
    Amqp {
        target: AmqpTarget,
        body: Vec<u8>,
        headers: HeaderMap,
    },
}

/// The URL a downstream reports on `task` at, under this node's public base URL.
pub fn callback_url(public_url: &str, task: TaskId) -> String {
    format!(
        "{}/api/v1/tasks/{task}/callback",
        public_url.trim_end_matches('/')
    )
}

/// The body and headers of the dispatch of `task`, or why they cannot be made (the dispatch then
/// counts as a transient error: a credential not signed now may be next time). Call
/// inside the dispatch's span, whose trace context the request carries.
pub(crate) fn prepare(
    task: &ClaimedTask,
    client: &reqwest::Client,
    outbound: &Outbound,
    public_url: &str,
) -> Result<Prepared, String> {
    let callback = if task.job.expect_callback {
        let token = outbound.callback_token(task.id, task.timeout_at)?;
        Some(Callback {
            url: callback_url(public_url, task.id),
            token,
        })
    } else {
        None
    };
    let body = DispatchBody {
        task_id: task.id,
        job: &task.job_name,
        attempt: task.attempt,
        scheduled_at: task.scheduled_at,
        fire_at: (task.fire_at != task.scheduled_at).then_some(task.fire_at),
        deadline_at: task.deadline_at,
        last_success_at: task.last_success_at,
        last_fingerprint: task
            .skips_if_unchanged()
            .then_some(task.last_fingerprint.as_deref()),
        payload: &task.payload,
        run: task.child.as_ref().map(|c| c.run),
        step: task.child.as_ref().map(|c| c.step_name.as_str()),
        child: task.child.as_ref().map(|c| c.name.as_str()),
        item: task.child.as_ref().and_then(|c| c.item.as_ref()),
        inputs: task.child.as_ref().map(|c| &*c.inputs),
        callback,
    };
    let body = serde_json::to_vec(&body)
        .map_err(|_| "the dispatch body could not be serialised".to_owned())?;
    let mut headers = HeaderMap::new();
    // W3C trace context of this dispatch, so the downstream's work and callback join the trace.
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(
            &context,
            &mut opentelemetry_http::HeaderInjector(&mut headers),
        );
    });
    // A child of a run goes to its step's target; any other task to its job's.
    let target = match &task.child {
        Some(child) => child.target.as_ref(),
        None => task.job.target.as_ref(),
    };
    let target = match target {
        None => {
            return Err("the task has no target to dispatch to".to_owned());
        }
        Some(Target::Http(target)) => target,
        Some(Target::Amqp(target)) => {
            return Ok(Prepared::Amqp {
                target: target.clone(),
                body,
                headers,
            });
        }
    };
    for (name, value) in &target.headers {
        // Validated when the job was defined; a header that still fails to convert is skipped.
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.insert(name, value);
        }
    }
    headers.extend(outbound.headers(&target.auth, task.id, &body)?);
    client
        .post(&target.url)
        .headers(headers)
        .header("idempotency-key", task.id.to_string())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .timeout(task.job.dispatch_timeout.as_duration())
        .body(body)
        .build()
        .map(|request| Prepared::Http {
            request,
            auth: matches!(target.auth, OutboundAuth::OAuth2 { .. }).then(|| target.auth.clone()),
        })
        .map_err(|error| describe(&error, task.job.dispatch_timeout))
}
