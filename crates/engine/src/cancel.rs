//! The cancel notifier, on every node: tells the downstream of a cancelled task, best effort, with
//! a `DELETE` to the job's cancel URL (or its target URL) carrying the task id, the
//! `Idempotency-Key` and the job's outbound auth. A notice is taken by one node and tried once;
//! the downstream's next callback is refused with `409 cancelled` either way.

use std::time::Duration;

use pacer_domain::TaskId;
use pacer_store::{CANCELS_CHANNEL, CancelNotice, Store};
use reqwest::header::{HeaderName, HeaderValue};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::outbound::Outbound;
use crate::wakeup::Wakeups;

/// Most notices taken, and sent concurrently, at once.
const BATCH: i64 = 32;
/// How often to look for notices when no notification arrives.
const POLL: Duration = Duration::from_secs(5);

/// Sends cancel notices until shut down.
pub struct CancelNotifier {
    pub store: Store,
    pub client: reqwest::Client,
    pub outbound: Outbound,
}

#[derive(Serialize)]
struct CancelBody<'a> {
    task_id: TaskId,
    job: &'a str,
    state: &'static str,
}

impl CancelNotifier {
    /// Runs until `shutdown`; notices in flight finish (each is bounded by its job's dispatch
    /// timeout).
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let mut wakeups = Wakeups::new(self.store.clone(), &[CANCELS_CHANNEL]);
        loop {
            loop {
                let notices = match self.store.take_cancel_notices(BATCH).await {
                    Ok(notices) => notices,
                    Err(error) => {
                        tracing::warn!(%error, "taking cancel notices failed; retrying");
                        break;
                    }
                };
                let taken = notices.len();
                let mut sending = JoinSet::new();
                for notice in notices {
                    let client = self.client.clone();
                    let outbound = self.outbound.clone();
                    sending.spawn(async move { send(&client, &outbound, notice).await });
                }
                while sending.join_next().await.is_some() {}
                if i64::try_from(taken).unwrap_or(i64::MAX) < BATCH {
                    break;
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = wakeups.next() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

/// The URL a cancellation of `task` goes to.
fn cancel_url(notice: &CancelNotice, target: &pacer_domain::HttpTarget) -> String {
    let url = target.cancel_url.as_deref().unwrap_or(&target.url);
    url.replace("{task_id}", &notice.id.to_string())
}

async fn send(client: &reqwest::Client, outbound: &Outbound, notice: CancelNotice) {
    let Some(spec) = &notice.job else {
        tracing::info!(task.id = %notice.id, "the cancelled task's job is gone; no one to tell");
        return;
    };
    // A child of a run was dispatched to its step's target, any other task to its job's.
    let target = notice.child_target.as_ref().or(spec.target.as_ref());
    let Some(target) = target.and_then(pacer_domain::Target::http) else {
        // A message on a queue cannot be withdrawn; the downstream learns of the cancellation
        // from its next callback's `409`.
        tracing::debug!(task.id = %notice.id, "the cancelled task's job publishes to RabbitMQ; no cancel notice");
        return;
    };
    let body = CancelBody {
        task_id: notice.id,
        job: &notice.job_name,
        state: "cancelled",
    };
    let Ok(body) = serde_json::to_vec(&body) else {
        return;
    };
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &target.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.insert(name, value);
        }
    }
    match outbound
        .all_headers_for(client, &target.auth, &notice.id.to_string(), &body)
        .await
    {
        Ok(signed) => headers.extend(signed),
        Err(error) => {
            tracing::warn!(task.id = %notice.id, %error, "cannot sign the cancel notice; not sent");
            metrics::counter!("pacer_cancel_notices_total", "outcome" => "unsigned").increment(1);
            return;
        }
    }
    let url = cancel_url(&notice, target);
    let sent = client
        .delete(&url)
        .headers(headers)
        .header("idempotency-key", notice.id.to_string())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .timeout(spec.dispatch_timeout.as_duration())
        .body(body)
        .send()
        .await;
    let outcome = match sent {
        Ok(response) if response.status().is_success() => {
            tracing::info!(task.id = %notice.id, http.status = response.status().as_u16(), "told the downstream the task is cancelled");
            "delivered"
        }
        Ok(response) => {
            tracing::info!(task.id = %notice.id, http.status = response.status().as_u16(), "the downstream refused the cancel notice");
            "refused"
        }
        Err(error) => {
            tracing::info!(task.id = %notice.id, %error, "the cancel notice could not be delivered");
            "failed"
        }
    };
    metrics::counter!("pacer_cancel_notices_total", "outcome" => outcome).increment(1);
}
