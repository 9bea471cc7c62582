//! Tasks claimed ahead of their time: each waits for its time in a waiting slot instead of a
//! dispatch permit, is marked as being sent shortly before the time (a task withdrawn meanwhile
//! is found gone and never sent), and is handed back unsent, due at its time, if the node stops
//! first. Marks and hand-backs from every waiting task are written in batches.

use std::sync::Arc;
use std::time::Duration;

use pacer_store::batch::{BatchWrite, Batcher};
use pacer_store::{ClaimedTask, ReleasedClaim, Store};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::record::OUTCOME_BATCH;

/// How long before its time a task claimed ahead is marked as being sent; from then on a pause no
/// longer withdraws it. Long enough for the mark's batched write to commit before the time even
/// while a burst is being marked on a busy database (the send waits for it), short enough that a
/// pause a moment before the time still counts.
pub(crate) const MARK_BEFORE_DUE: Duration = Duration::from_millis(250);

/// A batched write about claims taken ahead and not yet sent.
enum Unsent {
    /// Mark each as being sent, where its claim still holds.
    Mark(Store),
    /// Hand each back (the node is stopping), where its claim still holds.
    HandBack(Store),
}

impl BatchWrite for Unsent {
    type Item = ReleasedClaim;
    type Output = bool;

    async fn write(&self, items: &[ReleasedClaim]) -> pacer_store::Result<Vec<bool>> {
        match self {
            Self::Mark(store) => store.mark_dispatched(items).await,
            Self::HandBack(store) => store.unclaim_unsent(items).await,
        }
    }
}

/// What the tasks claimed ahead on one node share.
pub(crate) struct Ahead {
    marks: Batcher<Unsent>,
    hand_backs: Batcher<Unsent>,
    /// Slots for tasks waiting for their time, so that waiting does not hold a dispatch permit.
    waiting: Arc<Semaphore>,
    permits: Arc<Semaphore>,
    /// The dispatcher's shutdown: tasks still waiting for their time are handed back.
    stop: CancellationToken,
}

impl Ahead {
    /// Starts the batchers; at most `max_waiting` tasks wait without a dispatch permit.
    pub(crate) fn start(
        store: &Store,
        permits: Arc<Semaphore>,
        max_waiting: usize,
        stop: CancellationToken,
    ) -> Self {
        Self {
            marks: Batcher::start(Unsent::Mark(store.clone()), OUTCOME_BATCH, 1),
            hand_backs: Batcher::start(Unsent::HandBack(store.clone()), OUTCOME_BATCH, 1),
            waiting: Arc::new(Semaphore::new(max_waiting)),
            permits,
            stop,
        }
    }

    /// Waits until `due`, and returns the dispatch permit to send with, or `None` when the task
    /// must not be sent (withdrawn, or handed back because the node is stopping). A task that
    /// may not be sent yet (claimed ahead, see [`ClaimedTask::dispatched`]) waits in a waiting
    /// slot when one is free, giving its permit back meanwhile, and is marked shortly before its
    /// time.
    pub(crate) async fn until_due(
        &self,
        task: &ClaimedTask,
        due: Instant,
        permit: OwnedSemaphorePermit,
    ) -> Option<OwnedSemaphorePermit> {
        if task.dispatched && due <= Instant::now() {
            return Some(permit);
        }
        let mut permit = Some(permit);
        let slot = self.waiting.clone().try_acquire_owned().ok();
        if slot.is_some() {
            permit = None;
        }
        let wait = async {
            if !task.dispatched {
                tokio::time::sleep_until(due.checked_sub(MARK_BEFORE_DUE).unwrap_or(due)).await;
                if !self.mark(task).await {
                    return false;
                }
            }
            tokio::time::sleep_until(due).await;
            true
        };
        tokio::select! {
            // Marked or not, a task whose time came is sent: the shutdown hands back only what
            // still waits.
            biased;
            proceed = wait => if !proceed {
                return None;
            },
            // A node shutting down hands back what it has not sent, due at its time, for another
            // node to claim ahead and send; sending it here as well would make it twice.
            () = self.stop.cancelled() => {
                match self.hand_backs.submit(task.claim()).await {
                    Ok(true) => tracing::info!("handed back a task not yet due"),
                    Ok(false) => {}
                    Err(error) => tracing::warn!(%error, "handing back a task not yet due failed; it is swept at its time"),
                }
                return None;
            }
        }
        drop(slot);
        match permit {
            Some(permit) => Some(permit),
            // The semaphore is never closed.
            None => self.permits.clone().acquire_owned().await.ok(),
        }
    }

    /// Marks `task` as being sent; false when its claim was taken away and it must not be sent.
    /// A mark that cannot be written is retried until it is: sending without one could send a
    /// task a pause has withdrawn.
    async fn mark(&self, task: &ClaimedTask) -> bool {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.marks.submit(task.claim()).await {
                Ok(true) => return true,
                Ok(false) => {
                    tracing::info!("the task was withdrawn before its time; not dispatched");
                    return false;
                }
                Err(error) => {
                    tracing::warn!(%error, "marking a task claimed ahead as being sent failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}
