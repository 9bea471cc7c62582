//! Wake-ups by LISTEN/NOTIFY. A lost listener connection is re-opened with backoff while the
//! loop falls back to polling, so a database restart costs latency, never correctness.

use std::time::Duration;

use pacer_store::{Listener, Store};
use tokio::time::Instant;

/// A NOTIFY subscription that never fails: errors turn into a reconnect later.
pub(crate) struct Wakeups {
    store: Store,
    channels: &'static [&'static str],
    listener: Option<Listener>,
    retry_at: Instant,
    backoff: Duration,
}

const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl Wakeups {
    /// Wake-ups on notifications to any of `channels`.
    pub(crate) fn new(store: Store, channels: &'static [&'static str]) -> Self {
        Self {
            store,
            channels,
            listener: None,
            retry_at: Instant::now(),
            backoff: Duration::from_millis(250),
        }
    }

    /// Resolves at the next notification. Cancel-safe: dropping the future loses nothing that
    /// was not already delivered.
    pub(crate) async fn next(&mut self) {
        loop {
            match &mut self.listener {
                Some(listener) => match listener.recv().await {
                    Ok(_) => {
                        self.backoff = Duration::from_millis(250);
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "lost the notification listener; polling until it is back");
                        self.listener = None;
                        self.retry_at = Instant::now() + self.backoff;
                        // Notifications may have been missed meanwhile: wake once to look.
                        return;
                    }
                },
                None => {
                    tokio::time::sleep_until(self.retry_at).await;
                    match self.store.listen(self.channels).await {
                        Ok(listener) => {
                            self.listener = Some(listener);
                            // Anything that became due while we were deaf is found by this wake.
                            return;
                        }
                        Err(error) => {
                            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                            self.retry_at = Instant::now() + self.backoff;
                            tracing::warn!(%error, retry_in = ?self.backoff, "cannot listen for notifications");
                        }
                    }
                }
            }
        }
    }
}
