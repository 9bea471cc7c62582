//! Tasks created due now by this node's API, handed to its dispatcher already claimed: the claim
//! is taken in the statement that creates the task, and the dispatch starts without a look for
//! due work.

use std::sync::Arc;

use pacer_domain::Span;
use pacer_store::{ClaimedTask, Store};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// A task claimed elsewhere on this node together with the concurrency permit reserved for its
/// dispatch, as the dispatcher receives it.
pub(crate) type Handed = (ClaimedTask, OwnedSemaphorePermit);

/// The way into a node's dispatcher for tasks claimed at creation. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Handoff {
    permits: Arc<Semaphore>,
    sender: mpsc::Sender<Handed>,
    lease_margin: Span,
    store: Store,
    node_id: Arc<str>,
}

/// A dispatch slot reserved for a task about to be created; dropping it frees the slot.
#[derive(Debug)]
pub struct Reservation {
    handoff: Handoff,
    permit: OwnedSemaphorePermit,
}

impl Handoff {
    /// A handoff sharing `permits` with the dispatcher that receives from the other end of
    /// `sender`.
    pub(crate) fn new(
        permits: Arc<Semaphore>,
        sender: mpsc::Sender<Handed>,
        lease_margin: Span,
        store: Store,
        node_id: &str,
    ) -> Self {
        Self {
            permits,
            sender,
            lease_margin,
            store,
            node_id: node_id.into(),
        }
    }

    /// A free dispatch slot, or `None` when every slot is taken (the task is then created
    /// unclaimed, and any node's dispatcher claims it).
    pub fn reserve(&self) -> Option<Reservation> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(Reservation {
            handoff: self.clone(),
            permit,
        })
    }
}

impl Reservation {
    /// The node the task is to be claimed for.
    pub fn node_id(&self) -> &str {
        &self.handoff.node_id
    }

    /// Added to the job's dispatch timeout to make the claim's lease.
    pub fn lease_margin(&self) -> Span {
        self.handoff.lease_margin
    }

    /// Hands the task, claimed for this node, to the dispatcher. A dispatcher that has stopped
    /// takes no more: the claim is handed back at once, for any node to dispatch.
    pub async fn hand_over(self, task: ClaimedTask) {
        let Self { handoff, permit } = self;
        if let Err(unsent) = handoff.sender.try_send((task, permit)) {
            let (task, permit) = unsent.into_inner();
            drop(permit);
            if let Err(error) = handoff
                .store
                .release_claims(&handoff.node_id, &[task.claim()])
                .await
            {
                tracing::warn!(%error, task.id = %task.id, "handing back a claim the dispatcher did not take failed; it is swept when its lease runs out");
            }
        }
    }
}
