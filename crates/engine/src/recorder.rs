//! Records dispatch outcomes in batches. Outcomes that arrive while a batch is being written go
//! into the next one, so under load many dispatches share one statement and one commit, while a
//! lone outcome is written at once: nothing waits for a batch to fill.

use std::time::Duration;

use pacer_store::{Outcome, ReleasedClaim, Store};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// What became of an outcome handed to the recorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// The task took the outcome.
    Applied,
    /// The task had moved on (ended, cancelled or reclaimed); only the attempt was recorded.
    Moved,
    /// It could not be written. The claim's lease runs out and the task is dispatched again: at
    /// least once, never lost.
    Failed,
}

struct Pending {
    claim: ReleasedClaim,
    outcome: Outcome,
    reply: oneshot::Sender<Recorded>,
}

/// A handle for handing outcomes to the recorder; the recorder stops once every handle is gone
/// and what they handed over is written.
#[derive(Clone)]
pub(crate) struct Recorder {
    sender: mpsc::Sender<Pending>,
}

/// How many times a batch is tried through a database hiccup, and the first pause between tries
/// (doubled each time).
const TRIES: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

impl Recorder {
    /// Starts a recorder writing at most `max_batch` outcomes per statement.
    pub(crate) fn start(store: Store, max_batch: usize) -> (Self, JoinHandle<()>) {
        let max_batch = max_batch.max(1);
        let (sender, receiver) = mpsc::channel(max_batch * 4);
        let task = tokio::spawn(run(store, receiver, max_batch));
        (Self { sender }, task)
    }

    /// Records one dispatch's outcome and waits until it is written (or given up on).
    pub(crate) async fn record(&self, claim: ReleasedClaim, outcome: Outcome) -> Recorded {
        let (reply, written) = oneshot::channel();
        let pending = Pending {
            claim,
            outcome,
            reply,
        };
        if self.sender.send(pending).await.is_err() {
            return Recorded::Failed;
        }
        written.await.unwrap_or(Recorded::Failed)
    }
}

async fn run(store: Store, mut receiver: mpsc::Receiver<Pending>, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    while receiver.recv_many(&mut batch, max_batch).await > 0 {
        metrics::histogram!("pacer_outcome_batch_size").record(batch.len() as f64);
        write(&store, std::mem::take(&mut batch)).await;
    }
}

/// Writes one batch, retrying through a database hiccup. A batch the database refuses for another
/// reason (a value it cannot store) is written outcome by outcome, so only the bad one is lost.
async fn write(store: &Store, batch: Vec<Pending>) {
    let mut backoff = FIRST_BACKOFF;
    for _ in 0..TRIES {
        let outcomes: Vec<(ReleasedClaim, Outcome)> =
            batch.iter().map(|p| (p.claim, p.outcome.clone())).collect();
        match store.record_outcomes(&outcomes).await {
            Ok(applied) => {
                for (pending, applied) in batch.into_iter().zip(applied) {
                    let recorded = if applied {
                        Recorded::Applied
                    } else {
                        Recorded::Moved
                    };
                    let _ = pending.reply.send(recorded);
                }
                return;
            }
            Err(pacer_store::Error::Unavailable(error)) => {
                tracing::warn!(%error, outcomes = batch.len(), "recording dispatch outcomes failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(error) if batch.len() > 1 => {
                tracing::warn!(%error, outcomes = batch.len(), "a batch of dispatch outcomes was refused; recording them one by one");
                for pending in batch {
                    Box::pin(write(store, vec![pending])).await;
                }
                return;
            }
            Err(error) => {
                tracing::error!(%error, task.id = %batch[0].claim.id, "the database refused a dispatch outcome");
                break;
            }
        }
    }
    for pending in batch {
        let _ = pending.reply.send(Recorded::Failed);
    }
}
