//! The notifier, on every node: claims due completion notices (`for update skip locked`), POSTs
//! the task to the URL its creator gave in `notify`, signed like a dispatch (the `auth` stored
//! with the notice: an HMAC with a named secret, or the job's outbound auth), and records each
//! attempt. A failed attempt is retried with backoff; a node that dies mid-delivery loses
//! nothing, as its claim's lease runs out and any node takes the notice over. Every attempt at
//! one notice carries the same `Idempotency-Key` (`<task>:<event>`), so a receiver can drop a
//! repeat.

use std::time::Duration;

use pacer_domain::{OutboundAuth, RetryPolicy, Span};
use pacer_store::{ClaimedNotice, NOTICES_CHANNEL, Store, Task};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::outbound::Outbound;
use crate::outbox::{self, Outbox, Rhythm};

/// The notifier's settings.
#[derive(Debug, Clone)]
pub struct NoticeConfig {
    pub node_id: String,
    /// How long one request may take.
    pub timeout: Span,
    /// Longest sleep between looks for due notices when no notification arrives.
    pub poll_interval: Span,
    /// Most notices claimed (and sent concurrently) at once.
    pub batch_size: usize,
    /// The wait between attempts, and how many attempts before a notice is given up.
    pub backoff: RetryPolicy,
}

/// Sends completion notices until shut down.
pub struct Notifier {
    pub config: NoticeConfig,
    pub store: Store,
    pub client: reqwest::Client,
    pub outbound: Outbound,
}

impl Notifier {
    /// Claims and sends until `shutdown`; notices in flight then finish (each is bounded by the
    /// timeout).
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let rhythm = Rhythm {
            channels: &[NOTICES_CHANNEL],
            poll: self.config.poll_interval.as_duration(),
            batch_size: self.config.batch_size,
            timeout: self.config.timeout.as_duration(),
        };
        outbox::run(&self, self.store.clone(), &rhythm, shutdown).await
    }

    async fn record(&self, notice: &ClaimedNotice, sent: std::result::Result<(), String>) {
        let attempts = u32::try_from(notice.attempt).unwrap_or(1).max(1);
        let retry_in = match &sent {
            Ok(()) => None,
            Err(_) if attempts >= self.config.backoff.max_attempts => None,
            Err(_) => Some(self.config.backoff.backoff(attempts, rand::random())),
        };
        let error = sent.as_ref().err().map(String::as_str);
        let label = match (&sent, retry_in) {
            (Ok(()), _) => "delivered",
            (Err(_), Some(_)) => "retry",
            (Err(_), None) => "failed",
        };
        metrics::counter!("pacer_task_notices_total", "outcome" => label).increment(1);
        if let Err(store_error) = self.store.record_notice(notice, error, retry_in).await {
            // The claim's lease runs out and the notice is sent again; the receiver sees the
            // same idempotency key.
            tracing::warn!(error = %store_error, task.id = %notice.task_id, "recording a notice failed");
            return;
        }
        match sent {
            Ok(()) => {
                tracing::debug!(task.id = %notice.task_id, event = %notice.event, "notice delivered")
            }
            Err(error) if retry_in.is_none() => tracing::error!(
                task.id = %notice.task_id, event = %notice.event, attempt = notice.attempt,
                %error, "task notice failed for good"
            ),
            Err(error) => tracing::warn!(
                task.id = %notice.task_id, event = %notice.event, attempt = notice.attempt,
                %error, retry_in = ?retry_in, "task notice failed; will retry"
            ),
        }
    }
}

impl Outbox for Notifier {
    type Item = ClaimedNotice;
    const WHAT: &'static str = "task notices";

    async fn claim(&self, limit: i64, lease_ms: i64) -> pacer_store::Result<Vec<ClaimedNotice>> {
        self.store
            .claim_notices(&self.config.node_id, limit, lease_ms)
            .await
    }

    async fn next_due_in(&self) -> pacer_store::Result<Option<Duration>> {
        self.store.next_notice_in().await
    }

    async fn send_all(&self, claimed: Vec<ClaimedNotice>) {
        let mut running = JoinSet::new();
        for notice in claimed {
            let client = self.client.clone();
            let outbound = self.outbound.clone();
            let timeout = self.config.timeout.as_duration();
            running.spawn(async move {
                let sent = send(&client, &outbound, &notice, timeout).await;
                (notice, sent)
            });
        }
        while let Some(joined) = running.join_next().await {
            let Ok((notice, sent)) = joined else {
                continue;
            };
            self.record(&notice, sent).await;
        }
    }
}

/// The body of a notice: the event and the task as it is now.
pub fn notice_body(event: &str, task: &Task) -> Value {
    json!({
        "event": event,
        "task": {
            "id": task.id,
            "job": task.job_name,
            "state": task.state,
            "origin": task.origin,
            "idempotency_key": task.idempotency_key,
            "attempt": task.attempt,
            "created_at": task.created_at,
            "started_at": task.started_at,
            "finished_at": task.finished_at,
            "progress": task.progress,
            "message": task.message,
            "result": task.result,
            "last_error": task.last_error,
            "failure_reason": task.failure_reason,
            "outcome": task.outcome,
            "retry_of": task.retry_of,
            "updated_at": task.updated_at,
        }
    })
}

/// POSTs one notice; `Ok` on a 2xx.
async fn send(
    client: &reqwest::Client,
    outbound: &Outbound,
    notice: &ClaimedNotice,
    timeout: Duration,
) -> std::result::Result<(), String> {
    let url = notice
        .notify
        .get("url")
        .and_then(Value::as_str)
        .ok_or("the task's notify has no url")?;
    let auth: OutboundAuth = match notice.notify.get("auth") {
        Some(auth) => serde_json::from_value(auth.clone())
            .map_err(|e| format!("the task's notify auth is unreadable: {e}"))?,
        None => OutboundAuth::None {},
    };
    let body =
        serde_json::to_vec(&notice_body(&notice.event, &notice.task)).map_err(|e| e.to_string())?;
    let headers = outbound
        .all_headers_for(client, &auth, &notice.task_id.to_string(), &body)
        .await?;
    let mut request = client
        .post(url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(
            "idempotency-key",
            format!("{}:{}", notice.task_id, notice.event),
        )
        .header(
            crate::delivery::EVENT_HEADER,
            format!("task.{}", notice.event),
        );
    for (name, value) in headers {
        request = request.header(name, value);
    }
    match request.body(body).send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("{url} answered {}", response.status())),
        Err(error) if error.is_timeout() => Err(format!("{url}: no answer within {timeout:?}")),
        Err(error) => Err(crate::with_causes(
            format!("{url}: the request failed"),
            &error,
        )),
    }
}
