//! The firing loop, a leader duty: fires due triggers in batches under the leader's term and
//! sleeps until the earliest next fire time (less the fire-ahead window), woken early when
//! triggers change.

use std::time::Duration;

use pacer_domain::Span;
use pacer_store::{Fired, Store, TRIGGERS_CHANNEL};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::wakeup::Wakeups;
use crate::{Error, Result};

/// Fires triggers for one leader term.
pub(crate) struct Firing {
    pub(crate) store: Store,
    pub(crate) node_id: String,
    pub(crate) term: i64,
    pub(crate) batch_size: usize,
    pub(crate) poll: Duration,
    /// How far ahead of their time the occurrences of jobs that allow overlap are fired.
    pub(crate) ahead: Span,
}

impl Firing {
    /// Runs until cancelled; returns [`Error::Fenced`] when the term is no longer the lease's.
    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let mut wakeups = Wakeups::new(self.store.clone(), &[TRIGGERS_CHANNEL]);
        let limit = i64::try_from(self.batch_size).unwrap_or(i64::MAX);
        loop {
            let sleep = match self
                .store
                .fire_due(&self.node_id, self.term, limit, self.ahead)
                .await
            {
                Ok(Fired::Fenced) => return Err(Error::Fenced),
                Ok(Fired::Done {
                    triggers,
                    tasks,
                    skips,
                    lateness,
                    skip_reasons,
                }) => {
                    if triggers > 0 {
                        tracing::debug!(triggers, tasks, skips, "fired");
                    }
                    record_firing(&lateness, &skip_reasons);
                    if triggers == self.batch_size && !shutdown.is_cancelled() {
                        continue;
                    }
                    self.until_next().await
                }
                Ok(Fired::Standby) => self.poll,
                Err(error) => {
                    tracing::warn!(%error, "firing failed; retrying");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = wakeups.next() => {}
                () = tokio::time::sleep_until(Instant::now() + sleep) => {}
            }
        }
    }

    async fn until_next(&self) -> Duration {
        match self.store.next_fire_in(self.ahead).await {
            // A trigger due now that the pass did not take is locked by an API call for a moment.
            Ok(Some(due)) => due.clamp(Duration::from_millis(5), self.poll),
            Ok(None) => self.poll,
            Err(error) => {
                tracing::warn!(%error, "reading the next fire time failed");
                self.poll
            }
        }
    }
}

/// Counts fired occurrences and skips, and records how late each task was created: negative for
/// one fired ahead of its time. How late work reaches its downstream is
/// `pacer_dispatch_lateness_seconds`, recorded by the dispatcher.
fn record_firing(lateness: &[f64], skips: &[(pacer_domain::SkipReason, usize)]) {
    let fired = u64::try_from(lateness.len()).unwrap_or(u64::MAX);
    metrics::counter!("pacer_occurrences_fired_total").increment(fired);
    metrics::counter!("pacer_tasks_created_total", "origin" => "trigger").increment(fired);
    let histogram = metrics::histogram!("pacer_occurrence_creation_lateness_seconds");
    for seconds in lateness {
        histogram.record(*seconds);
    }
    for (reason, count) in skips {
        metrics::counter!("pacer_skips_total", "reason" => reason.as_str())
            .increment(u64::try_from(*count).unwrap_or(u64::MAX));
    }
}
