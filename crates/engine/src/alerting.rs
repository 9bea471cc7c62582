//! The alert evaluation, a leader duty: finds overdue and ended tasks, skips, dispatch-error
//! streaks, lost nodes and stale jobs; raises one alert per kind and subject (repeats are counted); resolves
//! alerts whose condition cleared; and queues the notifications for the sinks, all in one
//! transaction fenced by the leader's term.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use pacer_domain::alert::{LOG_SINK, severity_of};
use pacer_domain::wire::AlertView;
use pacer_domain::{AlertKind, JobAlerts, Severity, Span};
use pacer_store::{Alert, AlertTx, JobWorkload, NewAlert, NewDelivery, Store, TaskNotice};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::email::{SmtpConfig, alert_message, email_body, success_message};
use crate::{Error, Result};

/// How a sink wants its notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// A JSON body describing the alert, signed when the sink has a secret.
    #[default]
    Webhook,
    /// A Slack-compatible incoming webhook: `{"text": "<one line>"}`.
    Slack,
    /// An e-mail over SMTP, with plain-text and HTML bodies.
    Email,
}

impl SinkKind {
    /// The configuration and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Webhook => "webhook",
            SinkKind::Slack => "slack",
            SinkKind::Email => "email",
        }
    }
}

/// One configured sink (`alerts.sinks`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// What jobs call it in their `alerts` routes.
    pub name: String,
    /// `webhook` (JSON, signed with `secret`), `slack` (an incoming webhook) or `email`.
    #[serde(default)]
    pub kind: SinkKind,
    /// Where a webhook or Slack sink is POSTed to.
    #[serde(default)]
    pub url: String,
    /// The name of the configured secret that signs each request (`pacer-signature`).
    pub secret: Option<String>,
    /// An e-mail sink's recipients.
    #[serde(default)]
    pub to: Vec<String>,
    /// An e-mail sink's sender.
    pub from: Option<String>,
    /// An e-mail sink's SMTP server.
    pub smtp: Option<SmtpConfig>,
    /// Hears every alert of every job (true), or only those routed to it (false).
    #[serde(default = "hears_every_alert")]
    pub all_alerts: bool,
}

fn hears_every_alert() -> bool {
    true
}

impl SinkConfig {
    /// What a delivery records as its address: the URL, or `smtp://host:port` for e-mail.
    fn address(&self) -> String {
        match (&self.kind, &self.smtp) {
            (SinkKind::Email, Some(smtp)) => format!("smtp://{}:{}", smtp.host, smtp.port),
            _ => self.url.clone(),
        }
    }

    /// The secret a delivery needs: the signing secret, or the SMTP password for e-mail.
    fn secret_name(&self) -> Option<String> {
        match self.kind {
            SinkKind::Email => self.smtp.as_ref().and_then(|s| s.password.clone()),
            SinkKind::Webhook | SinkKind::Slack => self.secret.clone(),
        }
    }

    /// The queued body of an e-mail to this sink's recipients.
    fn email(&self, subject: &str, text: &str, html: &str) -> Value {
        let smtp = self.smtp.clone().unwrap_or(SmtpConfig {
            host: String::new(),
            port: 0,
            starttls: true,
            username: None,
            password: None,
        });
        email_body(
            &smtp,
            self.from.as_deref().unwrap_or_default(),
            &self.to,
            subject,
            text,
            html,
        )
    }
}

/// The alert settings of the cluster (`alerts.*`): where alerts go, how they are evaluated, and
/// how their notifications are delivered.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Webhook and Slack sinks; jobs name them in their `alerts` routes.
    pub sinks: Vec<SinkConfig>,
    /// Every alert and success notice is also written to the log (the built-in `log` sink).
    pub log: bool,
    /// A repeat of an open, unacknowledged alert notifies again once this has passed since the
    /// last notification; zero never re-notifies.
    pub renotify_interval: Span,
    /// Transient dispatch errors in a row, for one job, that raise `dispatch_errors`.
    pub dispatch_errors_threshold: u32,
    /// Longest time between two evaluations (one is also due when a deadline passes).
    pub evaluation_interval: Span,
    /// Severity per kind, where not the default.
    pub severity: BTreeMap<AlertKind, Severity>,
    /// The dashboard's address (`<public url>/ui/`), for links in e-mails; set by the node, not
    /// a setting of its own.
    #[serde(skip)]
    pub dashboard_url: String,
    /// Most tasks (or skips) evaluated in one transaction: small enough that a pass holds the
    /// lease row's share lock only briefly. Not a setting.
    #[serde(skip)]
    pub batch_size: usize,
    /// How long one request to a sink may take.
    pub delivery_timeout: Span,
    /// Attempts per delivery before it is given up as failed.
    pub delivery_max_attempts: u32,
    /// The wait before the second attempt; it doubles up to `delivery_max_backoff`.
    pub delivery_initial_backoff: Span,
    pub delivery_max_backoff: Span,
    /// Longest sleep of the delivery loop when no notification arrives.
    pub delivery_poll_interval: Span,
}

impl AlertsConfig {
    /// The names a job's routes may use: the configured sinks and `log`.
    pub fn sink_names(&self) -> BTreeSet<String> {
        self.sinks
            .iter()
            .map(|s| s.name.clone())
            .chain([LOG_SINK.to_owned()])
            .collect()
    }
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            sinks: Vec::new(),
            log: true,
            renotify_interval: Span::from_secs(3600),
            dispatch_errors_threshold: 5,
            evaluation_interval: Span::from_secs(1),
            severity: BTreeMap::new(),
            dashboard_url: String::new(),
            batch_size: 100,
            delivery_timeout: Span::from_secs(10),
            delivery_max_attempts: 100,
            delivery_initial_backoff: Span::from_secs(1),
            delivery_max_backoff: Span::from_secs(300),
            delivery_poll_interval: Span::from_secs(1),
        }
    }
}

/// How often the leader counts open alerts for the `pacer_alerts_open` gauge.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// How often the leader counts every job's open tasks (`pacer_job_tasks`,
/// `pacer_job_oldest_pending_seconds`): one scan of the open tasks, so less often than the
/// other gauges.
const WORKLOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Evaluates alerts for one leader term.
pub(crate) struct Alerting {
    pub(crate) store: Store,
    pub(crate) node_id: String,
    pub(crate) term: i64,
    pub(crate) dead_after: Span,
    pub(crate) config: Arc<AlertsConfig>,
}

/// What one evaluation pass did.
enum Pass {
    Fenced,
    /// A batch came back full: look again at once.
    More,
    Done,
}

/// What the pass changed, reported after it committed.
#[derive(Default)]
struct Changes {
    /// With whether the log sink writes it.
    opened: Vec<(Alert, bool)>,
    renotified: Vec<(Alert, bool)>,
    repeated: Vec<Alert>,
    resolved: Vec<Alert>,
    succeeded: Vec<TaskNotice>,
}

/// Sets `pacer_job_tasks{pacer_job,state}` and `pacer_job_oldest_pending_seconds{pacer_job}` for
/// every job, and zeroes them for a job reported last time (`reported`) that is gone.
fn report_workload(jobs: &[JobWorkload], reported: &mut HashSet<String>) {
    let now = Utc::now();
    let mut seen = HashSet::with_capacity(jobs.len());
    for job in jobs {
        #[allow(clippy::cast_precision_loss)]
        let (pending, processing) = (job.pending as f64, job.processing as f64);
        let oldest = job
            .oldest_pending_at
            .map_or(0.0, |at| (now - at).as_seconds_f64().max(0.0));
        metrics::gauge!("pacer_job_tasks", "pacer_job" => job.job.clone(), "state" => "pending")
            .set(pending);
        metrics::gauge!("pacer_job_tasks", "pacer_job" => job.job.clone(), "state" => "processing")
            .set(processing);
        metrics::gauge!("pacer_job_oldest_pending_seconds", "pacer_job" => job.job.clone())
            .set(oldest);
        seen.insert(job.job.clone());
    }
    for gone in reported.difference(&seen) {
        for state in ["pending", "processing"] {
            metrics::gauge!("pacer_job_tasks", "pacer_job" => gone.clone(), "state" => state)
                .set(0.0);
        }
        metrics::gauge!("pacer_job_oldest_pending_seconds", "pacer_job" => gone.clone()).set(0.0);
    }
    *reported = seen;
}

impl Alerting {
    /// Runs until cancelled; returns [`Error::Fenced`] when the term no longer holds the lease.
    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let interval = self.config.evaluation_interval.as_duration();
        let mut gauges_due = Instant::now();
        let mut workload_due = Instant::now();
        let mut workload_jobs = HashSet::new();
        loop {
            let sleep = match self.pass().await {
                Ok(Pass::Fenced) => return Err(Error::Fenced),
                Ok(Pass::More) if !shutdown.is_cancelled() => continue,
                Ok(_) => self.until_next(interval).await,
                Err(error) => {
                    tracing::warn!(%error, "evaluating alerts failed; retrying");
                    Duration::from_secs(1)
                }
            };
            if Instant::now() >= gauges_due {
                gauges_due = Instant::now() + GAUGE_INTERVAL;
                match self.store.open_alert_counts().await {
                    Ok(counts) => {
                        for (kind, count) in counts {
                            #[allow(clippy::cast_precision_loss)]
                            metrics::gauge!("pacer_alerts_open", "kind" => kind.as_str())
                                .set(count as f64);
                        }
                    }
                    Err(error) => tracing::warn!(%error, "counting open alerts failed"),
                }
                match self.store.last_successes().await {
                    Ok(jobs) => {
                        for (job, at) in jobs {
                            #[allow(clippy::cast_precision_loss)]
                            let seconds = at.timestamp_millis() as f64 / 1000.0;
                            metrics::gauge!("pacer_job_last_success_timestamp_seconds", "pacer_job" => job)
                                .set(seconds);
                        }
                    }
                    Err(error) => tracing::warn!(%error, "reading the jobs' last successes failed"),
                }
            }
            if Instant::now() >= workload_due {
                workload_due = Instant::now() + WORKLOAD_INTERVAL;
                match self.store.workload().await {
                    Ok(jobs) => report_workload(&jobs, &mut workload_jobs),
                    Err(error) => tracing::warn!(%error, "counting the jobs' open tasks failed"),
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Until the next watched deadline passes, at most the evaluation interval.
    async fn until_next(&self, interval: Duration) -> Duration {
        match self.store.next_deadline_in().await {
            Ok(Some(due)) => due.clamp(Duration::from_millis(10), interval),
            Ok(None) => interval,
            Err(error) => {
                tracing::warn!(%error, "reading the next deadline failed");
                interval
            }
        }
    }

    async fn pass(&self) -> Result<Pass> {
        let config = &self.config;
        let threshold = i32::try_from(config.dispatch_errors_threshold).unwrap_or(i32::MAX);
        let dead_after_ms = self.dead_after.as_millis();
        // A read first: with nothing to look at, an idle leader takes no lock and writes nothing.
        if !self.store.alert_work_due(threshold, dead_after_ms).await? {
            return Ok(Pass::Done);
        }
        let Some(mut tx) = self.store.begin_alerting(&self.node_id, self.term).await? else {
            return Ok(Pass::Fenced);
        };
        let limit = i64::try_from(config.batch_size).unwrap_or(i64::MAX);
        let mut changes = Changes {
            resolved: tx.resolve_cleared().await?,
            ..Changes::default()
        };
        let overdue = tx.take_overdue(limit).await?;
        let ended = tx.take_ended(limit).await?;
        let skips = tx.take_skips(limit).await?;
        let streaks = tx.take_streaks(threshold).await?;
        let lost = tx.take_lost_nodes(dead_after_ms).await?;
        let stale = tx.take_stale().await?;
        let skipped: i64 = skips.iter().map(|s| s.count).sum();
        let full = overdue.len() == config.batch_size
            || ended.len() == config.batch_size
            || skipped == limit;
        let mut deliveries = Vec::new();

        for task in &overdue {
            let deadline = task
                .deadline_at
                .map_or_else(String::new, |d| format!(" ({})", d.to_rfc3339()));
            let summary = format!(
                "{} of job {} passed its deadline{deadline} and is still {}",
                task.named(),
                task.job_name,
                task.state
            );
            let alert = self.task_alert(AlertKind::Overdue, task, summary, None);
            self.raise(&mut tx, &alert, &task.alerts, &mut changes, &mut deliveries)
                .await?;
        }
        for task in &ended {
            match task.state.as_str() {
                "failed" => {
                    let reason = task.failure_reason.as_deref().unwrap_or("failed");
                    let why = task
                        .last_error
                        .as_deref()
                        .or(task.message.as_deref())
                        .map_or_else(String::new, |e| format!(": {}", clip(e, 200)));
                    let summary = format!(
                        "{} of job {} failed ({reason}){why}",
                        task.named(),
                        task.job_name
                    );
                    let alert = self.task_alert(AlertKind::Failed, task, summary, None);
                    self.raise(&mut tx, &alert, &task.alerts, &mut changes, &mut deliveries)
                        .await?;
                }
                "completed_with_errors" => {
                    let why = task
                        .message
                        .as_deref()
                        .map_or_else(String::new, |m| format!(": {}", clip(m, 200)));
                    let summary = format!(
                        "{} of job {} completed with errors{why}",
                        task.named(),
                        task.job_name
                    );
                    let alert =
                        self.task_alert(AlertKind::Failed, task, summary, Some(Severity::Warning));
                    self.raise(&mut tx, &alert, &task.alerts, &mut changes, &mut deliveries)
                        .await?;
                }
                _ => {}
            }
            // Watchers of the job hear about every task that ended well.
            if task.state != "failed" && !task.alerts.on_success.is_empty() {
                deliveries.extend(self.success_deliveries(task));
                changes.succeeded.push(task.clone());
            }
        }
        for skip in &skips {
            let summary = format!(
                "job {} skipped {} run(s) ({})",
                skip.job_name,
                skip.count,
                skip.reasons.join(", ")
            );
            let alert = NewAlert {
                kind: AlertKind::Missed,
                severity: severity_of(AlertKind::Missed, Some(&skip.alerts), &config.severity),
                task_id: None,
                job_name: Some(skip.job_name.clone()),
                node_id: None,
                summary,
                count: skip.count,
            };
            self.raise(&mut tx, &alert, &skip.alerts, &mut changes, &mut deliveries)
                .await?;
        }
        for streak in &streaks {
            let why = streak
                .last_error
                .as_deref()
                .map_or_else(String::new, |e| format!("; last: {}", clip(e, 200)));
            let summary = format!(
                "job {}: {} transient dispatch errors in a row{why}",
                streak.job_name, streak.errors
            );
            let alert = NewAlert {
                kind: AlertKind::DispatchErrors,
                severity: severity_of(
                    AlertKind::DispatchErrors,
                    Some(&streak.alerts),
                    &config.severity,
                ),
                task_id: None,
                job_name: Some(streak.job_name.clone()),
                node_id: None,
                summary,
                count: 1,
            };
            self.raise(
                &mut tx,
                &alert,
                &streak.alerts,
                &mut changes,
                &mut deliveries,
            )
            .await?;
        }
        for job in &stale {
            let since = job.last_success_at.map_or_else(
                || "has completed no run".to_owned(),
                |at| format!("last completed a run started at {}", at.to_rfc3339()),
            );
            let summary = format!(
                "job {} {since}: its data is stale (fresh until {})",
                job.job_name,
                job.fresh_until.to_rfc3339()
            );
            let alert = NewAlert {
                kind: AlertKind::Stale,
                severity: severity_of(AlertKind::Stale, Some(&job.alerts), &config.severity),
                task_id: None,
                job_name: Some(job.job_name.clone()),
                node_id: None,
                summary,
                count: 1,
            };
            self.raise(&mut tx, &alert, &job.alerts, &mut changes, &mut deliveries)
                .await?;
        }
        for node in &lost {
            let alert = NewAlert {
                kind: AlertKind::NodeLost,
                severity: severity_of(AlertKind::NodeLost, None, &config.severity),
                task_id: None,
                job_name: None,
                node_id: Some(node.clone()),
                summary: format!(
                    "node {node} stopped heartbeating without a clean shutdown (silent for over {})",
                    self.dead_after
                ),
                count: 1,
            };
            self.raise(
                &mut tx,
                &alert,
                &JobAlerts::default(),
                &mut changes,
                &mut deliveries,
            )
            .await?;
        }
        tx.enqueue(&deliveries).await?;
        tx.commit().await?;
        self.report(&changes);
        Ok(if full { Pass::More } else { Pass::Done })
    }

    fn task_alert(
        &self,
        kind: AlertKind,
        task: &TaskNotice,
        summary: String,
        severity: Option<Severity>,
    ) -> NewAlert {
        NewAlert {
            kind,
            severity: severity
                .unwrap_or_else(|| severity_of(kind, Some(&task.alerts), &self.config.severity)),
            task_id: Some(task.task_id),
            job_name: Some(task.job_name.clone()),
            node_id: None,
            summary,
            count: 1,
        }
    }

    async fn raise(
        &self,
        tx: &mut AlertTx,
        alert: &NewAlert,
        routes: &JobAlerts,
        changes: &mut Changes,
        deliveries: &mut Vec<NewDelivery>,
    ) -> Result<()> {
        let renotify = self.config.renotify_interval.as_millis();
        let raised = tx.raise(alert, renotify).await?;
        metrics::counter!("pacer_alerts_raised_total", "kind" => alert.kind.as_str()).increment(1);
        if raised.notify {
            let event = if raised.opened {
                "alert.opened"
            } else {
                "alert.renotified"
            };
            deliveries.extend(self.alert_deliveries(&raised.alert, event, routes));
        }
        let log = self.config.log || routes.routes(alert.kind).iter().any(|s| s == LOG_SINK);
        match (raised.opened, raised.notify) {
            (true, _) => changes.opened.push((raised.alert, log)),
            (false, true) => changes.renotified.push((raised.alert, log)),
            (false, false) => changes.repeated.push(raised.alert),
        }
        Ok(())
    }

    /// The sinks an alert goes to: those that hear every alert, and those the job routes its
    /// kind to. `log` is written at commit, not queued.
    fn sinks_for<'a>(&'a self, routes: &'a [String]) -> impl Iterator<Item = &'a SinkConfig> {
        self.config
            .sinks
            .iter()
            .filter(move |s| s.all_alerts || routes.contains(&s.name))
    }

    fn alert_deliveries(&self, alert: &Alert, event: &str, routes: &JobAlerts) -> Vec<NewDelivery> {
        let view = alert_json(alert);
        let text = format!(
            "[{}] {}: {} (seen {}×)",
            alert.severity, alert.kind, alert.summary, alert.count
        );
        self.sinks_for(routes.routes(alert.kind))
            .map(|sink| NewDelivery {
                alert_id: Some(alert.id),
                event: event.to_owned(),
                task_id: alert.task_id,
                job_name: alert.job_name.clone(),
                sink: sink.name.clone(),
                sink_kind: sink.kind.as_str().to_owned(),
                url: sink.address(),
                secret: sink.secret_name(),
                body: match sink.kind {
                    SinkKind::Webhook => json!({ "event": event, "alert": view, "text": text }),
                    SinkKind::Slack => json!({ "text": text }),
                    SinkKind::Email => {
                        let (subject, text, html) =
                            alert_message(alert, event, &self.config.dashboard_url);
                        sink.email(&subject, &text, &html)
                    }
                },
                max_attempts: i32::try_from(self.config.delivery_max_attempts).unwrap_or(i32::MAX),
            })
            .collect()
    }

    fn success_deliveries(&self, task: &TaskNotice) -> Vec<NewDelivery> {
        let text = success_line(task);
        let routes = &task.alerts.on_success;
        self.config
            .sinks
            .iter()
            .filter(|s| routes.contains(&s.name))
            .map(|sink| NewDelivery {
                alert_id: None,
                event: "task.completed".to_owned(),
                task_id: Some(task.task_id),
                job_name: Some(task.job_name.clone()),
                sink: sink.name.clone(),
                sink_kind: sink.kind.as_str().to_owned(),
                url: sink.address(),
                secret: sink.secret_name(),
                body: match sink.kind {
                    SinkKind::Webhook => json!({
                        "event": "task.completed",
                        "task": {
                            "id": task.task_id, "job": task.job_name, "state": task.state,
                            "message": task.message, "result": task.result,
                        },
                        "text": text,
                    }),
                    SinkKind::Slack => json!({ "text": text }),
                    SinkKind::Email => {
                        let (subject, text, html) =
                            success_message(task, &text, &self.config.dashboard_url);
                        sink.email(&subject, &text, &html)
                    }
                },
                max_attempts: i32::try_from(self.config.delivery_max_attempts).unwrap_or(i32::MAX),
            })
            .collect()
    }

    /// Everything a committed pass changed: the log sink, and [`alert_changed`] per alert.
    fn report(&self, changes: &Changes) {
        for (alert, log) in &changes.opened {
            alert_changed(alert, AlertEvent::Opened);
            if *log {
                tracing::warn!(
                    alert.id = %alert.id, alert.kind = %alert.kind, alert.severity = %alert.severity,
                    job.name = alert.job_name.as_deref(),
                    task.id = alert.task_id.map(tracing::field::display),
                    node.id = alert.node_id.as_deref(), summary = %alert.summary,
                    "alert opened"
                );
            }
        }
        for (alert, log) in &changes.renotified {
            alert_changed(alert, AlertEvent::Repeated);
            if *log {
                tracing::warn!(
                    alert.id = %alert.id, alert.kind = %alert.kind, alert.severity = %alert.severity,
                    alert.count = alert.count, summary = %alert.summary,
                    "alert still open"
                );
            }
        }
        for alert in &changes.repeated {
            alert_changed(alert, AlertEvent::Repeated);
        }
        for alert in &changes.resolved {
            alert_changed(alert, AlertEvent::Resolved);
            if self.config.log {
                tracing::info!(
                    alert.id = %alert.id, alert.kind = %alert.kind,
                    note = alert.resolve_note.as_deref(), "alert resolved"
                );
            }
        }
        for task in &changes.succeeded {
            if self.config.log || task.alerts.on_success.iter().any(|s| s == LOG_SINK) {
                tracing::info!(task.id = %task.task_id, job.name = %task.job_name, "{}", success_line(task));
            }
        }
    }
}

/// How an alert changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertEvent {
    Opened,
    /// Seen again while open (its count grew).
    Repeated,
    Acked,
    Resolved,
}

/// Called once for every alert state change the leader commits (opened, repeated, resolved by
/// the condition clearing). The single place to publish alert events from the engine.
pub fn alert_changed(alert: &Alert, event: AlertEvent) {
    tracing::debug!(alert.id = %alert.id, alert.kind = %alert.kind, ?event, "alert changed");
}

/// The alert as notifications carry it: the API's alert shape (DESIGN §12).
pub fn alert_json(alert: &Alert) -> Value {
    serde_json::to_value(AlertView::from(alert.clone())).unwrap_or_default()
}

/// One line on a task that ended well, with a summary of its result.
fn success_line(task: &TaskNotice) -> String {
    let what = if task.state == "completed" {
        "completed".to_owned()
    } else {
        task.state.replace('_', " ")
    };
    let detail = task
        .message
        .clone()
        .or_else(|| task.result.as_ref().map(Value::to_string))
        .map_or_else(String::new, |d| format!(": {}", clip(&d, 300)));
    format!(
        "job {}: task {} {what}{detail}",
        task.job_name, task.task_id
    )
}

/// `text` cut to at most `max` characters, marked when cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max).collect();
        cut.push('…');
        cut
    }
}
