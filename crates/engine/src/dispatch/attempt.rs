//! One dispatch of one claimed task: made ready before its time, sent at its time, the answer
//! turned into the task's next state, recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use pacer_domain::dispatch::DispatchOutcome;
use pacer_domain::{TaskId, after_dispatch};
use pacer_store::{ClaimedTask, Outcome, ReleasedClaim, Store};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::DispatchConfig;
use super::ahead::Ahead;
use super::record::{self, Recorder};
use super::request::prepare;
use super::send::send;
use crate::amqp::Publisher;
use crate::outbound::Outbound;

/// Claims being dispatched, so a shutdown can hand back those that do not finish in time.
#[derive(Debug, Clone, Default)]
pub(crate) struct InFlight(Arc<Mutex<HashMap<TaskId, ReleasedClaim>>>);

impl InFlight {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, ReleasedClaim>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn insert(&self, claim: ReleasedClaim) {
        self.entries().insert(claim.id, claim);
    }

    pub(crate) fn remove(&self, id: TaskId) {
        self.entries().remove(&id);
    }

    pub(crate) fn claims(&self) -> Vec<ReleasedClaim> {
        self.entries().values().copied().collect()
    }
}

/// What every attempt of one dispatcher shares.
pub(crate) struct Attempts {
    pub(crate) config: DispatchConfig,
    pub(crate) store: Store,
    pub(crate) client: reqwest::Client,
    pub(crate) outbound: Outbound,
    pub(crate) publisher: Publisher,
    pub(crate) in_flight: InFlight,
    pub(crate) recorder: Recorder,
    pub(crate) ahead: Ahead,
}

/// A claimed task and when to send it.
pub(crate) struct Attempt {
    pub(crate) task: ClaimedTask,
    /// When to send it on this node's clock: when it was claimed, plus [`ClaimedTask::dispatch_in`].
    pub(crate) due: Instant,
}

impl Attempt {
    /// Dispatches the task at its time and records the outcome, holding `permit` until the
    /// downstream has answered. Runs inside the dispatch's span.
    pub(crate) async fn run(self, shared: Arc<Attempts>, permit: OwnedSemaphorePermit) {
        let Self { task, due } = self;
        if task.timed_out {
            match shared.store.fail_timed_out(&task).await {
                Ok(true) => tracing::info!("task timed out"),
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, "failing a timed-out task did not commit; it will be claimed again")
                }
            }
            shared.in_flight.remove(task.id);
            return;
        }
        // A run (the task of a job made of steps) is never sent: at its time it is started,
        // which creates its first step's children.
        let is_run = task.job.is_workflow() && task.child.is_none();
        // Everything but the sending is done before the task's time.
        let prepared = (!is_run).then(|| {
            prepare(
                &task,
                &shared.client,
                &shared.outbound,
                &shared.config.public_url,
            )
        });
        let Some(permit) = shared.ahead.until_due(&task, due, permit).await else {
            shared.in_flight.remove(task.id);
            return;
        };
        let Some(prepared) = prepared else {
            drop(permit);
            match shared.store.start_run(&task).await {
                Ok(true) => tracing::info!("run started"),
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, "starting a run did not commit; it will be claimed again")
                }
            }
            shared.in_flight.remove(task.id);
            return;
        };
        let started = Instant::now();
        if task.attempt == 1 {
            // From the fire time: a jittered occurrence is meant to go out after its schedule.
            let late_at_due = (task.claimed_at - task.fire_at).as_seconds_f64();
            let late_to_send = if started >= due {
                started.duration_since(due).as_secs_f64()
            } else {
                -due.duration_since(started).as_secs_f64()
            };
            record::observe_lateness(late_at_due, late_to_send);
        }
        let outcome = match prepared {
            Ok(prepared) => {
                send(
                    &task,
                    prepared,
                    &shared.client,
                    &shared.outbound,
                    &shared.publisher,
                    shared.config.max_response_bytes,
                )
                .await
            }
            // What stopped the request being made (a credential not signed, a body not
            // serialised) may pass: a transient error.
            Err(error) => DispatchOutcome::Transient {
                status: None,
                error,
                retry_after: None,
            },
        };
        let latency = started.elapsed();
        // The permit bounds requests in flight to downstreams; writing the outcome is not one.
        drop(permit);
        let decision = after_dispatch(
            task.state,
            u32::try_from(task.consecutive_failures).unwrap_or_default(),
            u32::try_from(task.reported_failures).unwrap_or_default(),
            &task.job,
            &outcome,
            rand::random(),
        );
        let outcome_record = Outcome {
            attempt: decision
                .attempt
                .unwrap_or_else(|| outcome.attempt_outcome()),
            node: shared.config.node_id.clone(),
            http_status: outcome.http_status(),
            error: outcome
                .error()
                .map(str::to_owned)
                .or_else(|| decision.reported_error()),
            error_code: decision.error_code().map(str::to_owned),
            latency,
            decision,
        };
        record::observe(&task, &outcome, &outcome_record);
        record::record(&shared.recorder, &task, outcome_record).await;
        shared.in_flight.remove(task.id);
    }
}
