//! Group commit for writes that arrive one at a time from many callers: each write joins the
//! next batch, and a batch is one statement and one commit. A write that arrives while nothing is
//! being written goes out at once, alone; while a batch is in flight the next one gathers, so
//! batches grow with the load and nothing ever waits for a batch to fill.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

use crate::{Error, Result};

/// A write that can be done for many items in one statement.
pub trait BatchWrite: Send + Sync + 'static {
    type Item: Send + 'static;
    type Output: Send + 'static;

    /// Writes `items`, answering for each in order.
    fn write(&self, items: &[Self::Item])
    -> impl Future<Output = Result<Vec<Self::Output>>> + Send;
}

type Request<W> = (
    <W as BatchWrite>::Item,
    oneshot::Sender<Result<<W as BatchWrite>::Output>>,
);

/// A handle to a running batcher; it stops once every handle is dropped and what they handed
/// over is written.
pub struct Batcher<W: BatchWrite> {
    sender: mpsc::Sender<Request<W>>,
}

impl<W: BatchWrite> Clone for Batcher<W> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
        }
    }
}

impl<W: BatchWrite> std::fmt::Debug for Batcher<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl<W: BatchWrite> Batcher<W> {
    /// Starts writing batches of at most `max_batch` items, at most `writers` batches at a time.
    /// Must be called inside a Tokio runtime.
    pub fn start(write: W, max_batch: usize, writers: usize) -> Self {
        let max_batch = max_batch.max(1);
        let (sender, receiver) = mpsc::channel(max_batch * writers.max(1) * 2);
        tokio::spawn(run(Arc::new(write), receiver, max_batch, writers.max(1)));
        Self { sender }
    }

    /// Writes one item with whatever else is waiting, and answers for it.
    pub async fn submit(&self, item: W::Item) -> Result<W::Output> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send((item, reply))
            .await
            .map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)?
    }
}

async fn run<W: BatchWrite>(
    write: Arc<W>,
    mut receiver: mpsc::Receiver<Request<W>>,
    max_batch: usize,
    writers: usize,
) {
    let slots = Arc::new(Semaphore::new(writers));
    loop {
        // A free writer first, so requests gather while every writer is busy.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(max_batch);
        if receiver.recv_many(&mut batch, max_batch).await == 0 {
            return;
        }
        let write = write.clone();
        tokio::spawn(async move {
            write_batch(&*write, batch).await;
            drop(slot);
        });
    }
}

/// Writes a batch; if the database refuses it, writes each item alone, so each gets its own
/// answer and one bad item fails only itself.
async fn write_batch<W: BatchWrite>(write: &W, batch: Vec<Request<W>>) {
    let (items, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    match write.write(&items).await {
        Ok(outputs) if outputs.len() == items.len() => {
            for (reply, output) in replies.into_iter().zip(outputs) {
                let _ = reply.send(Ok(output));
            }
        }
        Ok(_) => {
            for reply in replies {
                let _ = reply.send(Err(Error::Corrupt(
                    "a batched write answered for a different number of items".into(),
                )));
            }
        }
        Err(error) if items.len() == 1 => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(error));
            }
        }
        Err(error) => {
            tracing::debug!(%error, items = items.len(), "a batched write failed; writing its items one by one");
            for (item, reply) in items.into_iter().zip(replies) {
                let answer =
                    write
                        .write(std::slice::from_ref(&item))
                        .await
                        .and_then(|mut outputs| {
                            outputs.pop().ok_or_else(|| {
                                Error::Corrupt("a batched write answered for no item".into())
                            })
                        });
                let _ = reply.send(answer);
            }
        }
    }
}

/// The longest [`Sending::settled`] holds a write back.
pub const HOLD_AT_MOST: Duration = Duration::from_millis(500);

/// The requests a node is sending at their scheduled time: tasks claimed ahead whose time has
/// come and whose downstream has not answered yet. Many occurrences are often due at the same
/// instant (every trigger of a minute, at `:00`); while their requests go out, writes that can
/// wait a moment (dispatch outcomes, callbacks) are held back, so they do not compete with the
/// sending for the machine, and then go out in few, large batches. Cheap to clone; clones share
/// the count.
#[derive(Debug, Clone, Default)]
pub struct Sending(Arc<SendingCount>);

#[derive(Debug, Default)]
struct SendingCount {
    count: AtomicUsize,
    done: Notify,
}

impl Sending {
    /// Counts one request as being sent until the guard is dropped.
    pub fn start(&self) -> SendingGuard {
        self.0.count.fetch_add(1, Ordering::AcqRel);
        SendingGuard(self.0.clone())
    }

    /// Whether a request is being sent right now.
    pub fn is_sending(&self) -> bool {
        self.0.count.load(Ordering::Acquire) > 0
    }

    /// Waits until no request is being sent, or [`HOLD_AT_MOST`].
    pub async fn settled(&self) {
        self.settled_within(HOLD_AT_MOST).await;
    }

    /// Waits until no request is being sent, or `at_most`, so a long burst still writes as it
    /// goes.
    async fn settled_within(&self, at_most: Duration) {
        // Nearly always: nothing is being sent, and there is nothing to wait for.
        if self.0.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let _ = tokio::time::timeout(at_most, async {
            loop {
                let done = self.0.done.notified();
                if self.0.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                done.await;
            }
        })
        .await;
    }
}

/// One request counted in [`Sending`], until dropped.
#[derive(Debug)]
pub struct SendingGuard(Arc<SendingCount>);

impl Drop for SendingGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::{Instant, timeout};

    use super::Sending;

    /// Far longer than any test here takes: reaching it means the wait did not end as it should.
    const NEVER: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn writes_wait_until_the_last_request_is_answered() {
        let sending = Sending::default();
        // Nothing being sent: no wait at all.
        timeout(Duration::from_secs(10), sending.settled_within(NEVER))
            .await
            .expect("settled at once with nothing being sent");

        let first = sending.start();
        let second = sending.clone().start();
        let waiter = tokio::spawn({
            let sending = sending.clone();
            async move { sending.settled_within(NEVER).await }
        });
        drop(first);
        // One request is still out: the write keeps waiting.
        assert!(
            timeout(Duration::from_millis(100), sending.settled_within(NEVER))
                .await
                .is_err(),
            "settled while a request was still being sent"
        );
        assert!(!waiter.is_finished());
        drop(second);
        timeout(Duration::from_secs(10), waiter)
            .await
            .expect("settled once the last request was answered")
            .expect("the waiter ran");
    }

    #[tokio::test]
    async fn a_long_burst_holds_writes_back_only_so_long() {
        let sending = Sending::default();
        let _held = sending.start();
        let started = Instant::now();
        timeout(
            Duration::from_secs(10),
            sending.settled_within(Duration::from_millis(50)),
        )
        .await
        .expect("gave up waiting after at_most");
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
