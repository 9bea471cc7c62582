//! Leader election by the lease row. Every node tries to take or renew the lease every TTL/3; the
//! holder runs the cluster-wide duties (firing, sweeping, pruning, alerting) under its term. It
//! stops them the moment a renewal fails, another node holds the lease, or its own monotonic clock
//! says the lease might have lapsed (the trust window, shorter than the lease), whichever comes
//! first. A clean shutdown resigns and notifies, so a follower takes over at once.

use std::sync::Arc;
use std::time::Duration;

use pacer_domain::Span;
use pacer_store::{LEADER_CHANNEL, Store};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::alerting::{Alerting, AlertsConfig};
use crate::events::{EventWebhook, Subscriptions, WebhookConfig};
use crate::firing::Firing;
use crate::outbound::Outbound;
use crate::pruning::{Pruning, RetentionSettings};
use crate::sweeper::Sweeper;
use crate::wakeup::Wakeups;
use crate::{Error, Result};

/// The cluster settings the leader loop needs.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub node_id: String,
    /// How long a lease lasts unless renewed.
    pub lease_ttl: Span,
    /// Nodes silent this long are dead; the sweep takes their claims over.
    pub dead_after: Span,
    /// Most triggers fired in one transaction.
    pub firing_batch: usize,
    /// Longest sleep of the firing loop when no notification arrives.
    pub firing_poll: Span,
    /// How far ahead of their time the occurrences of jobs that allow overlap are fired.
    pub fire_ahead: Span,
    /// How often the sweep runs.
    pub sweep_interval: Span,
    /// What the alert evaluation raises and where it sends it.
    pub alerts: Arc<AlertsConfig>,
    /// Events without a task older than this are pruned from the event log (a task's events
    /// go with the task).
    pub event_retention: Span,
    /// Upstream messages older than this are pruned, and their deduplication ends.
    pub message_retention: Span,
    /// How long finished tasks, skips, alerts and the audit log are kept, and how pruning runs.
    pub retention: RetentionSettings,
}

/// Runs for leadership until shut down.
pub struct Leader {
    pub store: Store,
    pub config: LeaderConfig,
    /// Pushes the event log to a webhook while this node leads, when configured.
    pub webhook: Option<EventPush>,
    /// Pushes the event log to each event subscription while this node leads.
    pub subscriptions: Option<SubscriptionPush>,
}

/// What the event subscriptions duty needs.
#[derive(Debug, Clone)]
pub struct SubscriptionPush {
    pub client: reqwest::Client,
    pub outbound: Outbound,
}

/// What the event webhook duty needs.
#[derive(Debug, Clone)]
pub struct EventPush {
    pub config: WebhookConfig,
    pub client: reqwest::Client,
    pub outbound: Outbound,
}

/// How long after the holder's lease runs out a follower campaigns: enough for the expiry to
/// have passed on the database clock, too little to matter for failover.
const EXPIRY_SLACK: Duration = Duration::from_millis(25);

/// This node's current tenure.
struct Tenure {
    term: i64,
    trusted_until: Instant,
    duties: CancellationToken,
    running: JoinSet<Result<()>>,
}

impl Leader {
    /// Campaigns, leads, and resigns on shutdown.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let ttl = self.config.lease_ttl.as_duration();
        let renew_every = ttl / 3;
        // The lease is measured from before the renewal was sent, and a sixth of it is kept as a
        // margin for clock rate differences and scheduling delays.
        let trust = ttl - ttl / 6;
        let ttl_ms = self.config.lease_ttl.as_millis();
        let mut wakeups = Wakeups::new(self.store.clone(), &[LEADER_CHANNEL]);
        metrics::gauge!("pacer_leader").set(0.0);
        let mut tenure: Option<Tenure> = None;
        let mut next_try = Instant::now();
        loop {
            let trusted_until = tenure.as_ref().map(|t| t.trusted_until);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = sleep_until_opt(trusted_until) => {
                    tracing::warn!("the lease was not renewed within its trust window; stepping down");
                    step_down(tenure.take()).await;
                }
                Some(exited) = join_next(&mut tenure) => {
                    match exited {
                        Ok(Ok(())) | Ok(Err(Error::Fenced)) => tracing::warn!("a leader duty found its term fenced; stepping down"),
                        Ok(Err(error)) => tracing::error!(%error, "a leader duty failed; stepping down"),
                        Err(join) => tracing::error!(error = %join, "a leader duty panicked; stepping down"),
                    }
                    step_down(tenure.take()).await;
                    next_try = Instant::now() + renew_every;
                }
                () = wakeups.next(), if tenure.is_none() => next_try = Instant::now(),
                () = tokio::time::sleep_until(next_try) => {
                    let sent = Instant::now();
                    next_try = sent + renew_every;
                    match self.store.acquire_lease(&self.config.node_id, ttl_ms, tenure.is_none()).await {
                        Ok(Some(held)) => match &mut tenure {
                            Some(current) if current.term == held.term => current.trusted_until = sent + trust,
                            _ => {
                                step_down(tenure.take()).await;
                                tracing::info!(leader.term = held.term, "became leader");
                                tenure = Some(self.lead(held.term, sent + trust));
                            }
                        },
                        Ok(None) => {
                            if tenure.is_some() {
                                tracing::warn!("another node holds the lease; stepping down");
                                step_down(tenure.take()).await;
                            }
                            // Campaign again the moment the holder's lease runs out when that is
                            // sooner than the next period, so a crashed leader is replaced at its
                            // lease's expiry, not up to a period later.
                            if let Ok(remaining) = self.store.lease_remaining().await
                                && remaining < renew_every
                            {
                                next_try = Instant::now() + remaining + EXPIRY_SLACK;
                            }
                        }
                        Err(error) => {
                            if tenure.is_some() {
                                tracing::warn!(%error, "renewing the lease failed; stepping down");
                                step_down(tenure.take()).await;
                            } else {
                                tracing::debug!(%error, "campaigning for the lease failed");
                            }
                        }
                    }
                }
            }
        }
        if let Some(current) = tenure {
            let term = current.term;
            step_down(Some(current)).await;
            match self.store.resign_lease(&self.config.node_id, term).await {
                Ok(true) => tracing::info!(leader.term = term, "resigned the lease"),
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "resigning the lease failed; it will expire"),
            }
        }
        Ok(())
    }

    fn lead(&self, term: i64, trusted_until: Instant) -> Tenure {
        metrics::gauge!("pacer_leader").set(1.0);
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("pacer_leader_term").set(term as f64);
        let duties = CancellationToken::new();
        let mut running = JoinSet::new();
        let firing = Firing {
            store: self.store.clone(),
            node_id: self.config.node_id.clone(),
            term,
            batch_size: self.config.firing_batch,
            poll: self.config.firing_poll.as_duration(),
            ahead: self.config.fire_ahead,
        };
        running.spawn(firing.run(duties.child_token()));
        let sweeper = Sweeper {
            store: self.store.clone(),
            dead_after: self.config.dead_after,
            interval: self.config.sweep_interval.as_duration(),
        };
        running.spawn(sweeper.run(duties.child_token()));
        let pruning = Pruning {
            store: self.store.clone(),
            node_id: self.config.node_id.clone(),
            term,
            settings: self.config.retention.clone(),
            event_retention: self.config.event_retention,
            message_retention: self.config.message_retention,
        };
        running.spawn(pruning.run(duties.child_token()));
        let alerting = Alerting {
            store: self.store.clone(),
            node_id: self.config.node_id.clone(),
            term,
            dead_after: self.config.dead_after,
            config: self.config.alerts.clone(),
        };
        running.spawn(alerting.run(duties.child_token()));
        if let Some(push) = &self.webhook {
            let webhook = EventWebhook {
                store: self.store.clone(),
                client: push.client.clone(),
                outbound: push.outbound.clone(),
                config: push.config.clone(),
            };
            running.spawn(webhook.run(duties.child_token()));
        }
        if let Some(push) = &self.subscriptions {
            let subscriptions = Subscriptions {
                store: self.store.clone(),
                client: push.client.clone(),
                outbound: push.outbound.clone(),
            };
            running.spawn(subscriptions.run(duties.child_token()));
        }
        Tenure {
            term,
            trusted_until,
            duties,
            running,
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn join_next(
    tenure: &mut Option<Tenure>,
) -> Option<std::result::Result<Result<()>, tokio::task::JoinError>> {
    match tenure {
        Some(tenure) => tenure.running.join_next().await,
        None => std::future::pending().await,
    }
}

/// Stops the duties of a tenure and waits briefly for them; they are fenced by term anyway, so a
/// duty that does not stop in time cannot write under the old term.
async fn step_down(tenure: Option<Tenure>) {
    let Some(mut tenure) = tenure else { return };
    metrics::gauge!("pacer_leader").set(0.0);
    tenure.duties.cancel();
    if tokio::time::timeout(Duration::from_secs(5), async {
        while tenure.running.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tenure.running.shutdown().await;
    }
    tracing::info!(leader.term = tenure.term, "stopped leader duties");
}
