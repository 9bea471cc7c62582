//! Group commit for writes that arrive one at a time from many callers: each write joins the
//! next batch, and a batch is one statement and one commit. A write that arrives while nothing is
//! being written goes out at once, alone; while a batch is in flight the next one gathers, so
//! batches grow with the load and nothing ever waits for a batch to fill.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

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
