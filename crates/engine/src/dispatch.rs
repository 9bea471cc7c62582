//! The dispatcher, on every node: claims due tasks, POSTs each to its job's target, and records
//! what the downstream answered. Concurrency is bounded by one semaphore shared with the API,
//! which hands over tasks it created already claimed. A task never dispatched is claimed up to
//! `claim_ahead` before it is due, its request made ready, and sent at its time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pacer_domain::dispatch::{DispatchOutcome, Report, ResponseClass};
use pacer_domain::{AmqpTarget, Span, Target, TaskId, after_dispatch, classify_status};
use pacer_store::batch::{BatchWrite, Batcher, Sending};
use pacer_store::{ClaimedTask, Outcome, ReleasedClaim, Store};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::Result;
use crate::amqp::Publisher;
use crate::outbound::Outbound;
use crate::wakeup::Wakeups;

/// The most dispatch outcomes written in one statement.
const OUTCOME_BATCH: usize = 256;

/// Dispatch outcomes written in batches: every outcome that finishes while a batch is being
/// written joins the next one.
type Recorder = Batcher<Outcomes>;

/// Shortly before a task claimed ahead is due, its claim is checked, so a task withdrawn
/// meanwhile (cancelled, or its trigger paused) is not dispatched.
const CHECK_BEFORE_DUE: Duration = Duration::from_millis(100);

/// How long a request sent at its scheduled time counts as being sent (see [`Sending`]) when its
/// downstream has not answered: in a burst the requests are out well before this.
const COUNTED_AS_SENDING_AT_MOST: Duration = Duration::from_millis(250);

/// The most tasks one claim takes unless the last claim found work already due. Tasks claimed
/// ahead are a burst due at one instant shared by every node: in small batches the nodes take
/// turns at it, and each sends about its share when the instant comes, instead of the node that
/// looked first holding most of it. Work already due is claimed in full batches.
const AHEAD_BATCH: usize = 16;

/// What is done, in batches, with claims taken ahead and not yet sent: checking them shortly
/// before their time (whether each is still held), or handing them back on shutdown (whether
/// each was still held and is handed back). Every request that arrives while one batch is being
/// made joins the next.
enum Unsent {
    Check(Store),
    HandBack(Store),
}

impl BatchWrite for Unsent {
    type Item = ReleasedClaim;
    type Output = bool;

    async fn write(&self, items: &[ReleasedClaim]) -> pacer_store::Result<Vec<bool>> {
        match self {
            Self::Check(store) => store.claims_held(items).await,
            Self::HandBack(store) => store.unclaim_unsent(items).await,
        }
    }
}

/// The write behind the outcome [`Batcher`].
struct Outcomes {
    store: Store,
}

impl BatchWrite for Outcomes {
    type Item = (ReleasedClaim, Outcome);
    /// Whether the task still held the claim and took the outcome.
    type Output = bool;

    async fn write(&self, items: &[(ReleasedClaim, Outcome)]) -> pacer_store::Result<Vec<bool>> {
        metrics::histogram!("pacer_outcome_batch_size").record(items.len() as f64);
        self.store.record_outcomes(items).await
    }
}

/// A task claimed elsewhere on this node (by the API, at creation) together with the
/// concurrency permit reserved for its dispatch.
pub type Handoff = (ClaimedTask, OwnedSemaphorePermit);

/// The dispatcher's settings.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// This node's id, recorded on claims and attempts.
    pub node_id: String,
    /// The base URL downstreams call back on.
    pub public_url: String,
    /// Most tasks claimed in one statement.
    pub batch_size: usize,
    /// Longest sleep between looks for due work when no notification arrives.
    pub poll_interval: Span,
    /// Added to a job's dispatch timeout to make the claim's lease.
    pub lease_margin: Span,
    /// How long a shutdown waits for in-flight dispatches before handing them back.
    pub drain_timeout: Span,
    /// How far ahead of its time a task never dispatched is claimed; `0s` claims when due.
    pub claim_ahead: Span,
    /// Most tasks claimed ahead that wait for their time without holding a dispatch permit.
    pub max_waiting: usize,
    /// The most of a response body read (to look for a status report).
    pub max_response_bytes: usize,
}

/// Claims and dispatches tasks until shut down.
pub struct Dispatcher {
    config: DispatchConfig,
    store: Store,
    client: reqwest::Client,
    outbound: Outbound,
    publisher: Publisher,
    permits: Arc<Semaphore>,
    handoffs: mpsc::Receiver<Handoff>,
    sending: Sending,
}

/// Claims being dispatched, so a shutdown can hand back those that do not finish in time.
type InFlight = Arc<Mutex<HashMap<TaskId, ReleasedClaim>>>;

/// What every attempt of this dispatcher shares.
struct Attempts {
    recorder: Recorder,
    held: Batcher<Unsent>,
    unsent: Batcher<Unsent>,
    /// The dispatcher's shutdown: tasks still waiting for their time are handed back.
    stop: CancellationToken,
    in_flight: InFlight,
    /// Slots for tasks claimed ahead, so that waiting for their time does not hold a dispatch
    /// permit.
    waiting: Arc<Semaphore>,
    sending: Sending,
}

/// What one look for due work found.
enum Claimed {
    /// As many tasks as asked for: look again at once.
    Full,
    /// Fewer: sleep until the next task is due or a notification arrives.
    Partial,
    /// No free permit: wait for a dispatch to finish.
    Saturated,
}

impl Dispatcher {
    /// A dispatcher sharing `permits` with whatever sends on `handoffs`.
    pub fn new(
        config: DispatchConfig,
        store: Store,
        client: reqwest::Client,
        outbound: Outbound,
        permits: Arc<Semaphore>,
        handoffs: mpsc::Receiver<Handoff>,
    ) -> Self {
        let publisher = Publisher::new(None, &config.node_id);
        Self {
            config,
            store,
            client,
            outbound,
            publisher,
            permits,
            handoffs,
            sending: Sending::default(),
        }
    }

    /// Counts this dispatcher's sends at their scheduled time in `sending`, which the API shares
    /// to hold back callback writes meanwhile.
    pub fn with_sending(mut self, sending: Sending) -> Self {
        self.sending = sending;
        self
    }

    /// Publishes the tasks of jobs with an `amqp` target through `publisher` (without one,
    /// their dispatches fail as transient errors).
    pub fn with_publisher(mut self, publisher: Publisher) -> Self {
        self.publisher = publisher;
        self
    }

    /// Runs until `shutdown`; then stops claiming, waits up to the drain timeout for in-flight
    /// dispatches, and hands back the claims of those still running.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        let mut wakeups = Wakeups::new(self.store.clone(), &[pacer_store::TASKS_DUE_CHANNEL]);
        let outcomes = Outcomes {
            store: self.store.clone(),
        };
        let recorder = Batcher::start(outcomes, OUTCOME_BATCH, 1);
        let held = Batcher::start(Unsent::Check(self.store.clone()), OUTCOME_BATCH, 1);
        let unsent = Batcher::start(Unsent::HandBack(self.store.clone()), OUTCOME_BATCH, 1);
        let attempts = Attempts {
            recorder,
            held,
            unsent,
            stop: shutdown.clone(),
            in_flight: Arc::default(),
            waiting: Arc::new(Semaphore::new(self.config.max_waiting)),
            sending: self.sending.clone(),
        };
        let mut running = JoinSet::new();
        let poll = self.config.poll_interval.as_duration();
        let mut look_at = Instant::now();
        let mut saturated = false;
        // A node starting may find a backlog already due.
        let mut batch = self.config.batch_size;
        let permits = self.permits.clone();
        loop {
            if !saturated && Instant::now() >= look_at {
                match self.claim(&mut running, &attempts, batch).await {
                    Ok((claimed, found_due)) => {
                        batch = if found_due {
                            self.config.batch_size
                        } else {
                            self.config.batch_size.min(AHEAD_BATCH)
                        };
                        match claimed {
                            Claimed::Full => look_at = Instant::now(),
                            Claimed::Partial => {
                                look_at = Instant::now() + self.sleep_for(poll).await;
                            }
                            Claimed::Saturated => saturated = true,
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "claiming due tasks failed; retrying");
                        look_at = Instant::now() + Duration::from_secs(1);
                    }
                }
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some((task, permit)) = self.handoffs.recv() => {
                    self.spawn(&mut running, &attempts, task, permit);
                }
                () = wakeups.next() => look_at = Instant::now(),
                Some(_) = running.join_next() => saturated = false,
                // A dispatch gives its permit back when answered, before its outcome is written.
                Ok(_) = permits.acquire(), if saturated => saturated = false,
                () = tokio::time::sleep_until(look_at), if !saturated => {}
            }
        }
        // Every attempt waits for its outcome to be written before it finishes.
        self.drain(running, attempts.in_flight).await
    }

    /// How long to sleep before looking again: until the next task is due, at most `poll`.
    /// A task due now that the claim passed over is locked by another claimer or a callback for
    /// a moment; the floor keeps this loop from spinning on it.
    async fn sleep_for(&self, poll: Duration) -> Duration {
        match self.store.next_due_in(self.config.claim_ahead).await {
            Ok(Some(due)) => due.clamp(Duration::from_millis(10), poll),
            Ok(None) => poll,
            Err(error) => {
                tracing::warn!(%error, "reading the next due time failed");
                poll
            }
        }
    }

    /// Claims up to `batch` tasks and starts their dispatches; also says whether any of them
    /// was already due.
    async fn claim(
        &self,
        running: &mut JoinSet<()>,
        attempts: &Attempts,
        batch: usize,
    ) -> Result<(Claimed, bool)> {
        // Permits first, so every claimed task is guaranteed a dispatch slot.
        let permits: Vec<_> = (0..batch)
            .map_while(|_| self.permits.clone().try_acquire_owned().ok())
            .collect();
        if permits.is_empty() {
            return Ok((Claimed::Saturated, true));
        }
        let wanted = permits.len();
        let limit = i64::try_from(wanted).unwrap_or(i64::MAX);
        let tasks = self
            .store
            .claim_due(
                &self.config.node_id,
                limit,
                self.config.lease_margin,
                self.config.claim_ahead,
            )
            .await?;
        let claimed = tasks.len();
        let due = tasks
            .iter()
            .filter(|task| task.dispatch_in.is_zero())
            .count();
        for (task, permit) in tasks.into_iter().zip(permits) {
            self.spawn(running, attempts, task, permit);
        }
        if claimed > 0 {
            let ahead = claimed - due;
            tracing::debug!(claimed, ahead, "claimed tasks");
        }
        let looked = if claimed == wanted {
            Claimed::Full
        } else {
            Claimed::Partial
        };
        Ok((looked, due > 0))
    }

    fn spawn(
        &self,
        running: &mut JoinSet<()>,
        attempts: &Attempts,
        task: ClaimedTask,
        permit: OwnedSemaphorePermit,
    ) {
        let due = Instant::now() + task.dispatch_in;
        let claim = task.claim();
        attempts
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(task.id, claim);
        let span = tracing::info_span!(
            "dispatch",
            otel.name = "dispatch",
            otel.kind = "client",
            task.id = %task.id,
            job.name = %task.job_name,
            task.attempt = task.attempt,
            node.id = %self.config.node_id,
        );
        // The dispatch continues the trace of the request that created the task.
        if let Some(traceparent) = &task.trace_context {
            let carrier = HashMap::from([("traceparent".to_owned(), traceparent.clone())]);
            let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
            let _ = span.set_parent(parent);
        }
        let attempt = Attempt {
            store: self.store.clone(),
            client: self.client.clone(),
            outbound: self.outbound.clone(),
            publisher: self.publisher.clone(),
            config: self.config.clone(),
            in_flight: attempts.in_flight.clone(),
            recorder: attempts.recorder.clone(),
            held: attempts.held.clone(),
            unsent: attempts.unsent.clone(),
            stop: attempts.stop.clone(),
            permits: self.permits.clone(),
            waiting: attempts.waiting.clone(),
            sending: attempts.sending.clone(),
        };
        running.spawn(attempt.run(task, due, permit).instrument(span));
    }

    async fn drain(mut self, mut running: JoinSet<()>, in_flight: InFlight) -> Result<()> {
        // Tasks handed over but not yet started go straight back.
        self.handoffs.close();
        while let Some((task, _permit)) = self.handoffs.recv().await {
            in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(task.id, task.claim());
        }
        let deadline = self.config.drain_timeout.as_duration();
        let waiting = running.len();
        if waiting > 0 {
            tracing::info!(waiting, ?deadline, "waiting for in-flight dispatches");
        }
        let drained = tokio::time::timeout(deadline, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            running.shutdown().await;
        }
        let unfinished: Vec<ReleasedClaim> = in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .copied()
            .collect();
        if !unfinished.is_empty() {
            let released = self
                .store
                .release_claims(&self.config.node_id, &unfinished)
                .await?;
            tracing::info!(released, "handed unfinished dispatches back");
        }
        Ok(())
    }
}

/// The body of every dispatch (DESIGN §6).
#[derive(Serialize)]
struct DispatchBody<'a> {
    task_id: TaskId,
    job: &'a str,
    attempt: i32,
    scheduled_at: DateTime<Utc>,
    deadline_at: Option<DateTime<Utc>>,
    last_success_at: Option<DateTime<Utc>>,
    payload: &'a Value,
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
enum Prepared {
    /// The whole request, URL parsed and headers set.
    Http(reqwest::Request),
    /// The job's exchange, the body, and as headers the trace context alone.
    Amqp {
        target: AmqpTarget,
        body: Vec<u8>,
        headers: HeaderMap,
    },
}

/// One dispatch of one claimed task.
struct Attempt {
    store: Store,
    client: reqwest::Client,
    outbound: Outbound,
    publisher: Publisher,
    config: DispatchConfig,
    in_flight: InFlight,
    recorder: Recorder,
    held: Batcher<Unsent>,
    unsent: Batcher<Unsent>,
    stop: CancellationToken,
    permits: Arc<Semaphore>,
    waiting: Arc<Semaphore>,
    sending: Sending,
}

impl Attempt {
    /// Dispatches `task` at `due` (now, unless it was claimed ahead) and records the outcome,
    /// holding `permit` until the downstream has answered.
    async fn run(self, task: ClaimedTask, due: Instant, permit: OwnedSemaphorePermit) {
        if task.timed_out {
            match self.store.fail_timed_out(&task).await {
                Ok(true) => tracing::info!("task timed out"),
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, "failing a timed-out task did not commit; it will be claimed again")
                }
            }
            self.forget(&task);
            return;
        }
        // Everything but the sending is done before the task's time.
        let prepared = self.prepare(&task);
        let ahead = due > Instant::now();
        let Some(permit) = self.until_due(&task, due, permit).await else {
            self.forget(&task);
            return;
        };
        let mut sending = ahead.then(|| self.sending.start());
        let started = Instant::now();
        let outcome = match prepared {
            Ok(prepared) => {
                let send = self.send(&task, prepared);
                tokio::pin!(send);
                tokio::select! {
                    outcome = &mut send => outcome,
                    // A downstream slow to answer does not hold the node's writes back meanwhile.
                    () = tokio::time::sleep(COUNTED_AS_SENDING_AT_MOST), if sending.is_some() => {
                        sending = None;
                        send.await
                    }
                }
            }
            Err(unsent) => unsent,
        };
        let latency = started.elapsed();
        // The permit bounds requests in flight to downstreams; writing the outcome is not one.
        drop(permit);
        drop(sending);
        let decision = after_dispatch(
            task.state,
            u32::try_from(task.consecutive_failures).unwrap_or_default(),
            &task.job,
            &outcome,
            rand::random(),
        );
        let record = Outcome {
            attempt: outcome.attempt_outcome(),
            node: self.config.node_id.clone(),
            http_status: outcome.http_status(),
            error: outcome.error().map(str::to_owned),
            latency,
            decision,
        };
        // Held back while tasks due at the same instant are still being sent, and so is the
        // line and metrics of this dispatch.
        self.sending.settled().await;
        tracing::info!(
            outcome = %outcome.attempt_outcome(),
            http.status = outcome.http_status(),
            latency_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            error = outcome.error(),
            next_state = record.decision.state.map(|s| s.as_str()),
            "dispatched"
        );
        // Job names are defined by operators, so the label stays bounded; task ids never appear.
        // The label is `pacer_job`: Prometheus keeps `job` for the scrape job.
        let labels = [
            ("pacer_job", task.job_name.clone()),
            ("outcome", outcome.attempt_outcome().as_str().to_owned()),
        ];
        metrics::counter!("pacer_dispatches_total", &labels).increment(1);
        metrics::histogram!("pacer_dispatch_duration_seconds", &labels)
            .record(latency.as_secs_f64());
        self.record(&task, record).await;
        self.forget(&task);
    }

    /// Records the outcome (batched with other dispatches'), retrying briefly through a database
    /// hiccup. If it still fails, the claim's lease runs out and the task is dispatched again: at
    /// least once, never lost.
    async fn record(&self, task: &ClaimedTask, outcome: Outcome) {
        let mut backoff = Duration::from_millis(100);
        for _ in 0..5 {
            match self.recorder.submit((task.claim(), outcome.clone())).await {
                Ok(true) => return,
                Ok(false) => {
                    // Most often the downstream called back before this answer was recorded.
                    tracing::debug!(
                        "the task moved on during the dispatch; its newer state stands"
                    );
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "recording a dispatch outcome failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
        tracing::error!(
            "could not record a dispatch outcome; the task will be dispatched again when its lease expires"
        );
    }

    /// Waits until `due`, and returns the dispatch permit to send with. A task claimed ahead
    /// waits in a waiting slot when one is free, giving its permit back meanwhile, and has its
    /// claim checked shortly before its time: `None` when it was taken away, and the task must
    /// not be dispatched.
    async fn until_due(
        &self,
        task: &ClaimedTask,
        due: Instant,
        permit: OwnedSemaphorePermit,
    ) -> Option<OwnedSemaphorePermit> {
        if due <= Instant::now() {
            return Some(permit);
        }
        let mut permit = Some(permit);
        let slot = self.waiting.clone().try_acquire_owned().ok();
        if slot.is_some() {
            permit = None;
        }
        let wait = async {
            if let Some(check_at) = due.checked_sub(CHECK_BEFORE_DUE)
                && check_at > Instant::now()
            {
                tokio::time::sleep_until(check_at).await;
                match self.held.submit(task.claim()).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::info!("the task was withdrawn before its time; not dispatched");
                        return false;
                    }
                    // The outcome's write is fenced by the claim either way.
                    Err(error) => tracing::warn!(%error, "checking a claim taken ahead failed"),
                }
            }
            tokio::time::sleep_until(due).await;
            true
        };
        tokio::select! {
            proceed = wait => if !proceed {
                return None;
            },
            // A node shutting down hands back what it has not sent, due at its time, for another
            // node to claim ahead and send; sending it here as well would make it twice.
            () = self.stop.cancelled() => {
                match self.unsent.submit(task.claim()).await {
                    Ok(true) => tracing::info!("handed back a task not yet due"),
                    Ok(false) => {}
                    Err(error) => tracing::warn!(%error, "handing back a task not yet due failed; it is swept at its time"),
                }
                return None;
            }
        }
        match permit {
            Some(permit) => Some(permit),
            // The semaphore is never closed.
            None => self.permits.clone().acquire_owned().await.ok(),
        }
    }

    fn forget(&self, task: &ClaimedTask) {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&task.id);
    }

    /// The body and headers of the dispatch of `task`, or the outcome when they cannot be made.
    fn prepare(&self, task: &ClaimedTask) -> std::result::Result<Prepared, DispatchOutcome> {
        let unsigned = |error: String| DispatchOutcome::Transient {
            status: None,
            error,
            retry_after: None,
        };
        let callback = if task.job.expect_callback {
            match self.outbound.callback_token(task.id, task.timeout_at) {
                Ok(token) => Some(Callback {
                    url: format!(
                        "{}/api/v1/tasks/{}/callback",
                        self.config.public_url.trim_end_matches('/'),
                        task.id
                    ),
                    token,
                }),
                Err(error) => return Err(unsigned(error)),
            }
        } else {
            None
        };
        let body = DispatchBody {
            task_id: task.id,
            job: &task.job_name,
            attempt: task.attempt,
            scheduled_at: task.scheduled_at,
            deadline_at: task.deadline_at,
            last_success_at: task.last_success_at,
            payload: &task.payload,
            callback,
        };
        let Ok(body) = serde_json::to_vec(&body) else {
            return Err(unsigned(
                "the dispatch body could not be serialised".to_owned(),
            ));
        };
        let mut headers = HeaderMap::new();
        // W3C trace context of this dispatch, so the downstream's work and callback join the trace.
        let context = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(
                &context,
                &mut opentelemetry_http::HeaderInjector(&mut headers),
            );
        });
        let target = match &task.job.target {
            Target::Http(target) => target,
            Target::Amqp(target) => {
                return Ok(Prepared::Amqp {
                    target: target.clone(),
                    body,
                    headers,
                });
            }
        };
        for (name, value) in &target.headers {
            // Validated when the job was defined; a header that still fails to convert is
            // skipped.
            if let (Ok(name), Ok(value)) =
                (HeaderName::try_from(name), HeaderValue::try_from(value))
            {
                headers.insert(name, value);
            }
        }
        match self.outbound.headers(&target.auth, task.id, &body) {
            Ok(signed) => headers.extend(signed),
            Err(error) => return Err(unsigned(error)),
        }
        self.client
            .post(&target.url)
            .headers(headers)
            .header("idempotency-key", task.id.to_string())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(task.job.dispatch_timeout.as_duration())
            .body(body)
            .build()
            .map(Prepared::Http)
            .map_err(|error| unsigned(describe(&error, task.job.dispatch_timeout)))
    }

    /// Sends a prepared dispatch and classifies the answer.
    async fn send(&self, task: &ClaimedTask, prepared: Prepared) -> DispatchOutcome {
        let request = match prepared {
            Prepared::Http(request) => request,
            Prepared::Amqp {
                target,
                body,
                headers,
            } => return self.publish(task, &target, &headers, &body).await,
        };
        let response = match self.client.execute(request).await {
            Ok(response) => response,
            Err(error) => {
                return DispatchOutcome::Transient {
                    status: None,
                    error: describe(&error, task.job.dispatch_timeout),
                    retry_after: None,
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(parse_retry_after);
        let body = match read_limited(response, self.config.max_response_bytes).await {
            Ok(body) => body,
            Err(error) => {
                return DispatchOutcome::Transient {
                    status: Some(status.as_u16()),
                    error: describe(&error, task.job.dispatch_timeout),
                    retry_after: None,
                };
            }
        };
        let summary = || {
            let text = String::from_utf8_lossy(&body);
            let text: String = text.chars().take(300).collect();
            if text.trim().is_empty() {
                status.to_string()
            } else {
                format!("{status}: {}", text.trim())
            }
        };
        match classify_status(status.as_u16()) {
            ResponseClass::Accepted => DispatchOutcome::Accepted {
                status: status.as_u16(),
                report: serde_json::from_slice::<Report>(&body).ok(),
            },
            ResponseClass::AlreadyRunning => DispatchOutcome::AlreadyRunning,
            ResponseClass::Transient => DispatchOutcome::Transient {
                status: Some(status.as_u16()),
                error: summary(),
                retry_after,
            },
            ResponseClass::Permanent => DispatchOutcome::Permanent {
                status: status.as_u16(),
                error: summary(),
            },
        }
    }
}

impl Attempt {
    /// Publishes the dispatch to the job's exchange: the same body, and as AMQP headers the
    /// trace context, the job's static headers and `idempotency-key`.
    async fn publish(
        &self,
        task: &ClaimedTask,
        target: &AmqpTarget,
        trace: &HeaderMap,
        body: &[u8],
    ) -> DispatchOutcome {
        let mut headers: Vec<(String, String)> = trace
            .iter()
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect();
        headers.extend(target.headers.iter().map(|(n, v)| (n.clone(), v.clone())));
        headers.push(("idempotency-key".into(), task.id.to_string()));
        self.publisher
            .publish(
                target,
                headers,
                &task.id.to_string(),
                body,
                task.job.dispatch_timeout.as_duration(),
            )
            .await
    }
}

/// Reads at most `limit` bytes of a response body; the rest is dropped.
async fn read_limited(mut response: reqwest::Response, limit: usize) -> reqwest::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    Ok(body)
}

/// A one-line description of a failed request, with its cause.
fn describe(error: &reqwest::Error, timeout: Span) -> String {
    if error.is_timeout() {
        return format!("no answer within the dispatch timeout ({timeout})");
    }
    let mut text = if error.is_connect() {
        "connection failed".to_owned()
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Retry-After` as delay-seconds or an HTTP date.
fn parse_retry_after(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(text).ok()?;
    (at.with_timezone(&Utc) - Utc::now()).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("120")),
            Some(Duration::from_secs(120))
        );
        let later = (Utc::now() + chrono::Duration::seconds(90))
            .to_rfc2822()
            .replace("+0000", "GMT");
        let parsed = parse_retry_after(&HeaderValue::from_str(&later).expect("header"));
        assert!(
            parsed.is_some_and(|d| d > Duration::from_secs(80) && d <= Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(parse_retry_after(&HeaderValue::from_static("soon")), None);
    }
}
