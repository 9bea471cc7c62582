//! The dispatcher, on every node: claims due tasks, sends each to its job's target at its time,
//! and records what the downstream answered. Concurrency is bounded by one semaphore shared with
//! the API, which hands over tasks it created already claimed ([`Handoff`]). A task never
//! dispatched is claimed up to `claim_ahead` before it is due, its request made ready, and sent
//! at its time ([`ahead`]).
//!
//! Nothing here waits for anything but its own work: outcomes are group-committed (a batch is
//! whatever finished while the previous one was written), and no request of another party is
//! held back for a dispatch.

mod ahead;
mod attempt;
mod handoff;
mod record;
mod request;
mod send;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pacer_domain::Span;
use pacer_store::batch::Batcher;
use pacer_store::{ClaimedTask, Store};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use handoff::{Handoff, Reservation};
pub use request::callback_url;

use crate::Result;
use crate::amqp::Publisher;
use crate::outbound::Outbound;
use crate::wakeup::Wakeups;
use ahead::Ahead;
use attempt::{Attempt, Attempts, InFlight};
use handoff::Handed;
use record::{OUTCOME_BATCH, Outcomes};

/// The dispatch settings an operator sets (`dispatch.*`), with their defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchSettings {
    /// Most dispatches in flight on this node at once.
    pub concurrency: usize,
    /// Most tasks claimed in one statement.
    pub batch_size: usize,
    /// Most tasks claimed ahead of their time in one statement, unless the last claim found work
    /// already due. Tasks claimed ahead are often a burst due at one instant shared by every
    /// node: in small batches the nodes take turns at it, and each sends about its share when
    /// the instant comes, instead of the node that looked first holding most of it.
    pub ahead_batch_size: usize,
    /// Longest wait between looks for due work when no notification arrives.
    pub poll_interval: Span,
    /// Added to a job's dispatch timeout to form the claim's lease.
    pub lease_margin: Span,
    /// How long a shutdown waits for in-flight dispatches before handing them back.
    pub drain_timeout: Span,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        Self {
            concurrency: 256,
            batch_size: 64,
            ahead_batch_size: 16,
            poll_interval: Span::from_secs(1),
            lease_margin: Span::from_secs(10),
            drain_timeout: Span::from_secs(10),
        }
    }
}

impl DispatchSettings {
    /// Why these settings cannot run, if they cannot; names the setting.
    pub fn check(&self) -> std::result::Result<(), String> {
        if !(1..=100_000).contains(&self.concurrency) {
            return Err("dispatch.concurrency must be between 1 and 100000".into());
        }
        if !(1..=1000).contains(&self.batch_size) {
            return Err("dispatch.batch_size must be between 1 and 1000".into());
        }
        if !(1..=1000).contains(&self.ahead_batch_size) {
            return Err("dispatch.ahead_batch_size must be between 1 and 1000".into());
        }
        if self.poll_interval < Span::from_millis(10) {
            return Err("dispatch.poll_interval must be at least 10ms".into());
        }
        if self.lease_margin < Span::from_secs(1) {
            return Err("dispatch.lease_margin must be at least 1s".into());
        }
        Ok(())
    }
}

/// The dispatcher's settings and what it needs to know of its node.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// This node's id, recorded on claims and attempts.
    pub node_id: String,
    /// The base URL downstreams call back on.
    pub public_url: String,
    pub settings: DispatchSettings,
    /// How far ahead of its time a task never dispatched is claimed; `0s` claims when due.
    pub claim_ahead: Span,
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
    handoffs: mpsc::Receiver<Handed>,
    handoff: Handoff,
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
    /// A dispatcher with `config.settings.concurrency` dispatch permits, shared with its
    /// [`Handoff`].
    pub fn new(
        config: DispatchConfig,
        store: Store,
        client: reqwest::Client,
        outbound: Outbound,
    ) -> Self {
        let concurrency = config.settings.concurrency.max(1);
        let permits = Arc::new(Semaphore::new(concurrency));
        let (sender, handoffs) = mpsc::channel(concurrency);
        let handoff = Handoff::new(
            permits.clone(),
            sender,
            config.settings.lease_margin,
            store.clone(),
            &config.node_id,
        );
        let publisher = Publisher::new(None, &config.node_id);
        Self {
            config,
            store,
            client,
            outbound,
            publisher,
            permits,
            handoffs,
            handoff,
        }
    }

    /// The way for this node's API to hand over tasks it created already claimed.
    pub fn handoff(&self) -> Handoff {
        self.handoff.clone()
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
        let settings = self.config.settings.clone();
        let shared = Arc::new(Attempts {
            config: self.config.clone(),
            store: self.store.clone(),
            client: self.client.clone(),
            outbound: self.outbound.clone(),
            publisher: self.publisher.clone(),
            in_flight: InFlight::default(),
            recorder: Batcher::start(
                Outcomes {
                    store: self.store.clone(),
                },
                OUTCOME_BATCH,
                1,
            ),
            ahead: Ahead::start(
                &self.store,
                self.permits.clone(),
                settings.concurrency,
                shutdown.clone(),
            ),
        });
        let mut running = JoinSet::new();
        let poll = settings.poll_interval.as_duration();
        let mut look_at = Instant::now();
        let mut saturated = false;
        // A node starting may find a backlog already due.
        let mut batch = settings.batch_size;
        let permits = self.permits.clone();
        loop {
            if !saturated && Instant::now() >= look_at {
                match self.claim(&mut running, &shared, batch).await {
                    Ok((claimed, found_due)) => {
                        batch = if found_due {
                            settings.batch_size
                        } else {
                            settings.batch_size.min(settings.ahead_batch_size)
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
                    spawn(&mut running, &shared, task, permit);
                }
                () = wakeups.next() => look_at = Instant::now(),
                Some(_) = running.join_next() => saturated = false,
                // A dispatch gives its permit back when answered, before its outcome is written.
                Ok(_) = permits.acquire(), if saturated => saturated = false,
                () = tokio::time::sleep_until(look_at), if !saturated => {}
            }
        }
        // Every attempt waits for its outcome to be written before it finishes.
        self.drain(running, &shared.in_flight).await
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
        shared: &Arc<Attempts>,
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
        // Tasks of limited jobs given their slots now are due now: claimed just below.
        let admitted = self.store.admit_waiting().await?;
        let tasks = self
            .store
            .claim_due(
                &self.config.node_id,
                limit,
                self.config.settings.lease_margin,
                self.config.claim_ahead,
            )
            .await?;
        let claimed = tasks.len();
        let due = tasks
            .iter()
            .filter(|task| task.dispatch_in.is_zero())
            .count();
        for (task, permit) in tasks.into_iter().zip(permits) {
            spawn(running, shared, task, permit);
        }
        if claimed > 0 {
            let ahead = claimed - due;
            tracing::debug!(claimed, ahead, "claimed tasks");
        }
        let looked = if claimed == wanted || admitted.more {
            Claimed::Full
        } else {
            Claimed::Partial
        };
        Ok((looked, due > 0))
    }

    async fn drain(mut self, mut running: JoinSet<()>, in_flight: &InFlight) -> Result<()> {
        // Tasks handed over but not yet started go straight back.
        self.handoffs.close();
        while let Some((task, _permit)) = self.handoffs.recv().await {
            in_flight.insert(task.claim());
        }
        let deadline = self.config.settings.drain_timeout.as_duration();
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
        let unfinished = in_flight.claims();
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

/// Starts the dispatch of `task` in its own span, continuing the trace of the request that
/// created it.
fn spawn(
    running: &mut JoinSet<()>,
    shared: &Arc<Attempts>,
    task: ClaimedTask,
    permit: OwnedSemaphorePermit,
) {
    let due = Instant::now() + task.dispatch_in;
    shared.in_flight.insert(task.claim());
    let span = tracing::info_span!(
        "dispatch",
        otel.name = "dispatch",
        otel.kind = "client",
        task.id = %task.id,
        job.name = %task.job_name,
        task.attempt = task.attempt,
        node.id = %shared.config.node_id,
    );
    if let Some(traceparent) = &task.trace_context {
        let carrier = HashMap::from([("traceparent".to_owned(), traceparent.clone())]);
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
        let _ = span.set_parent(parent);
    }
    let attempt = Attempt { task, due };
    running.spawn(attempt.run(shared.clone(), permit).instrument(span));
}
