//! E-mail sinks: the message an alert or a success notice becomes (plain text and HTML, as
//! `multipart/alternative`), fixed when the delivery is queued, and its sending over SMTP.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use pacer_store::{Alert, ClaimedDelivery, TaskNotice};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// How an e-mail sink reaches its SMTP server (`alerts.sinks[].smtp`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    /// 587 (submission, with STARTTLS) unless set.
    #[serde(default = "submission_port")]
    pub port: u16,
    /// Upgrade the connection with STARTTLS before anything is sent (refusing a server that
    /// cannot); false sends in the clear, for a relay on the same host or network.
    #[serde(default = "starttls_by_default")]
    pub starttls: bool,
    /// Log in with this user and the secret named by `password`.
    pub username: Option<String>,
    /// The name of the configured secret holding the SMTP password.
    #[serde(skip_serializing)]
    pub password: Option<String>,
}

fn submission_port() -> u16 {
    587
}

fn starttls_by_default() -> bool {
    true
}

/// Checks an e-mail sink's settings: `Err` names the field and what is wrong with it.
pub fn check_email_sink(
    to: &[String],
    from: Option<&str>,
    smtp: Option<&SmtpConfig>,
) -> std::result::Result<(), (&'static str, String)> {
    if to.is_empty() {
        return Err(("to", "must list at least one address".to_owned()));
    }
    if to.len() > 100 {
        return Err(("to", "at most 100 addresses".to_owned()));
    }
    for address in to {
        if let Err(error) = address.parse::<Mailbox>() {
            return Err((
                "to",
                format!("`{address}` is not an e-mail address ({error})"),
            ));
        }
    }
    let Some(from) = from else {
        return Err(("from", "is required for an e-mail sink".to_owned()));
    };
    if let Err(error) = from.parse::<Mailbox>() {
        return Err((
            "from",
            format!("`{from}` is not an e-mail address ({error})"),
        ));
    }
    let Some(smtp) = smtp else {
        return Err((
            "smtp",
            "is required for an e-mail sink: {host, port, starttls, username?, password?}"
                .to_owned(),
        ));
    };
    if smtp.host.trim().is_empty() || smtp.host.contains(['/', ' ', '@']) {
        return Err(("smtp.host", "must be a host name or IP address".to_owned()));
    }
    if smtp.port == 0 {
        return Err(("smtp.port", "must be between 1 and 65535".to_owned()));
    }
    if smtp.username.is_some() != smtp.password.is_some() {
        return Err((
            "smtp",
            "takes `username` and `password` (a secret's name) together, or neither".to_owned(),
        ));
    }
    Ok(())
}

/// The queued body of an e-mail delivery: the server to send through (without its password),
/// the envelope and headers, and both bodies.
pub(crate) fn email_body(
    smtp: &SmtpConfig,
    from: &str,
    to: &[String],
    subject: &str,
    text: &str,
    html: &str,
) -> Value {
    json!({
        "smtp": smtp,
        "from": from,
        "to": to,
        "subject": subject,
        "text": text,
        "html": html,
    })
}

/// The dashboard page of an alert: its task's page, else its job's, else the alert list.
fn alert_link(dashboard: &str, alert: &Alert) -> Option<String> {
    if dashboard.is_empty() {
        return None;
    }
    Some(match (&alert.task_id, &alert.job_name) {
        (Some(task), _) => format!("{dashboard}#/tasks/{task}"),
        (None, Some(job)) => format!("{dashboard}#/jobs/{}", url_component(job)),
        (None, None) => format!("{dashboard}#/alerts"),
    })
}

/// Job names are letters, digits, `.`, `_` and `-`; anything else is escaped anyway.
fn url_component(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c.to_string()
            } else {
                let mut buf = [0; 4];
                c.encode_utf8(&mut buf)
                    .bytes()
                    .map(|b| format!("%{b:02X}"))
                    .collect()
            }
        })
        .collect()
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Subject and bodies (text, HTML) of an alert notification.
pub(crate) fn alert_message(
    alert: &Alert,
    event: &str,
    dashboard: &str,
) -> (String, String, String) {
    let heading = if event == "alert.renotified" {
        "Alert still open"
    } else {
        "Alert opened"
    };
    let subject = format!(
        "[Pacer] {} {}: {}",
        alert.severity,
        alert.kind,
        one_line(&alert.summary, 150)
    );
    let mut rows: Vec<(&str, String)> =
        vec![("Alert", format!("{} ({})", alert.kind, alert.severity))];
    if let Some(job) = &alert.job_name {
        rows.push(("Job", job.clone()));
    }
    if let Some(task) = &alert.task_id {
        rows.push(("Task", task.to_string()));
    }
    if let Some(node) = &alert.node_id {
        rows.push(("Node", node.clone()));
    }
    rows.push(("Reason", alert.summary.clone()));
    rows.push(("Seen", format!("{} time(s)", alert.count)));
    rows.push(("Opened", alert.opened_at.to_rfc3339()));
    rows.push(("Alert id", alert.id.to_string()));
    let link = alert_link(dashboard, alert);
    let (text, html) = render(heading, &rows, link.as_deref());
    (subject, text, html)
}

/// Subject and bodies (text, HTML) of a success notice.
pub(crate) fn success_message(
    task: &TaskNotice,
    line: &str,
    dashboard: &str,
) -> (String, String, String) {
    let state = task.state.replace('_', " ");
    let subject = format!(
        "[Pacer] job {}: task {} {state}",
        task.job_name, task.task_id
    );
    let mut rows: Vec<(&str, String)> = vec![
        ("Job", task.job_name.clone()),
        ("Task", task.task_id.to_string()),
        ("State", state),
    ];
    if let Some(place) = &task.place {
        rows.push(("Part of", place.clone()));
    }
    rows.push(("Summary", line.to_owned()));
    let link = (!dashboard.is_empty()).then(|| format!("{dashboard}#/tasks/{}", task.task_id));
    let (text, html) = render("Task ended", &rows, link.as_deref());
    (subject, text, html)
}

fn render(heading: &str, rows: &[(&str, String)], link: Option<&str>) -> (String, String) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut text = format!("{heading}\n\n");
    let mut html = format!(
        "<!DOCTYPE html>\n<html><body style=\"font-family: sans-serif\">\n<h2>{}</h2>\n<table>\n",
        escape(heading)
    );
    for (key, value) in rows {
        let _ = writeln!(text, "{:<width$} {value}", format!("{key}:"));
        let _ = writeln!(
            html,
            "<tr><th align=\"left\" valign=\"top\">{}</th><td>{}</td></tr>",
            escape(key),
            escape(value)
        );
    }
    html.push_str("</table>\n");
    if let Some(link) = link {
        let _ = write!(text, "\nDashboard: {link}\n");
        let _ = writeln!(
            html,
            "<p><a href=\"{}\">Open in the Pacer dashboard</a></p>",
            escape(link)
        );
    }
    html.push_str("</body></html>\n");
    (text, html)
}

/// `text` on one line, cut to at most `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let mut cut: String = flat.chars().take(max).collect();
        cut.push('…');
        cut
    }
}

/// The queued body of an e-mail delivery, as [`email_body`] wrote it.
#[derive(Deserialize)]
struct Queued {
    smtp: SmtpConfig,
    from: String,
    to: Vec<String>,
    subject: String,
    text: String,
    html: String,
}

/// Sends one e-mail delivery. The message id is derived from the delivery id, the same on every
/// retry, so a mail system can drop a repeat after an ambiguous failure. `Err` says what went
/// wrong, with the SMTP server's reply when it answered.
pub(crate) async fn send(
    secrets: &HashMap<String, SecretString>,
    delivery: &ClaimedDelivery,
    timeout: Duration,
) -> std::result::Result<(), String> {
    let queued: Queued = serde_json::from_value(delivery.body.clone())
        .map_err(|e| format!("the queued e-mail is malformed: {e}"))?;
    let bad = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    let mut builder = Message::builder()
        .from(queued.from.parse().map_err(|e| bad("from", &e))?)
        .subject(queued.subject)
        .message_id(Some(format!("<{}@pacer>", delivery.id)));
    for to in &queued.to {
        builder = builder.to(to.parse().map_err(|e| bad("to", &e))?);
    }
    let message = builder
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(queued.text),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(queued.html),
                ),
        )
        .map_err(|e| bad("building the message", &e))?;

    let smtp = &queued.smtp;
    let tls = if smtp.starttls {
        Tls::Required(TlsParameters::new(smtp.host.clone()).map_err(|e| bad("TLS settings", &e))?)
    } else {
        Tls::None
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
        .port(smtp.port)
        .tls(tls)
        .timeout(Some(timeout));
    if let Some(user) = &smtp.username {
        let name = delivery.secret.as_deref().unwrap_or_default();
        let password = secrets.get(name).ok_or_else(|| {
            format!("the sink's password secret `{name}` is not configured on this node")
        })?;
        transport = transport.credentials(Credentials::new(
            user.clone(),
            password.expose_secret().to_owned(),
        ));
    }
    let transport = transport.build();
    let sent = tokio::time::timeout(timeout, transport.send(message)).await;
    match sent {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(format!("sending the e-mail failed: {error}")),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use pacer_domain::{AlertKind, AlertState, Severity};
    use uuid::Uuid;

    use super::*;

    fn alert(summary: &str, task: Option<Uuid>, job: Option<&str>) -> Alert {
        Alert {
            id: Uuid::now_v7(),
            kind: AlertKind::Failed,
            severity: Severity::Critical,
            task_id: task,
            job_name: job.map(str::to_owned),
            node_id: None,
            state: AlertState::Open,
            count: 2,
            summary: summary.to_owned(),
            opened_at: Utc::now(),
            last_seen_at: Utc::now(),
            notified_at: None,
            acked_at: None,
            acked_by: None,
            ack_note: None,
            resolved_at: None,
            resolved_by: None,
            resolve_note: None,
        }
    }

    #[test]
    fn the_html_body_escapes_what_the_alert_says_and_links_to_the_page() {
        let task = Uuid::now_v7();
        let summary = "task failed: <script>alert('x')</script> & more";
        let (subject, text, html) = alert_message(
            &alert(summary, Some(task), Some("nightly")),
            "alert.opened",
            "http://pacer.example/ui/",
        );
        assert!(subject.starts_with("[Pacer] critical failed: task failed"));
        assert!(text.contains(summary), "{text}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more"));
        let link = format!("http://pacer.example/ui/#/tasks/{task}");
        assert!(text.contains(&format!("Dashboard: {link}")), "{text}");
        assert!(html.contains(&format!("<a href=\"{link}\">")), "{html}");
        assert!(
            text.contains("Seen:") && text.contains("2 time(s)"),
            "{text}"
        );
    }

    #[test]
    fn a_job_alert_links_to_the_job_and_a_long_summary_is_cut_in_the_subject() {
        let long = "x".repeat(400);
        let (subject, text, _) = alert_message(
            &alert(&long, None, Some("nightly")),
            "alert.renotified",
            "http://pacer.example/ui/",
        );
        assert!(subject.chars().count() < 200, "{subject}");
        assert!(subject.ends_with('…'));
        assert!(text.starts_with("Alert still open"));
        assert!(
            text.contains("http://pacer.example/ui/#/jobs/nightly"),
            "{text}"
        );
        let (_, text, html) = alert_message(&alert("down", None, None), "alert.opened", "");
        assert!(
            !text.contains("Dashboard:") && !html.contains("<a "),
            "no base, no link"
        );
    }

    #[test]
    fn smtp_defaults_to_the_submission_port_with_starttls() {
        let smtp: SmtpConfig =
            serde_json::from_value(json!({ "host": "smtp.example.com" })).expect("valid");
        assert_eq!((smtp.port, smtp.starttls), (587, true));
        let unknown: Result<SmtpConfig, _> =
            serde_json::from_value(json!({ "host": "smtp.example.com", "tls": true }));
        assert!(unknown.is_err());
    }

    #[test]
    fn e_mail_sinks_are_checked() {
        let smtp = SmtpConfig {
            host: "smtp.example.com".into(),
            port: 587,
            starttls: true,
            username: Some("pacer".into()),
            password: None,
        };
        let to = ["ops@example.com".to_owned()];
        assert_eq!(
            check_email_sink(&to, Some("pacer@example.com"), Some(&smtp)).map_err(|e| e.0),
            Err("smtp")
        );
        let smtp = SmtpConfig {
            password: Some("smtp_password".into()),
            ..smtp
        };
        assert_eq!(
            check_email_sink(&to, Some("Pacer <pacer@example.com>"), Some(&smtp)),
            Ok(())
        );
        assert_eq!(
            check_email_sink(&to, Some("nobody"), Some(&smtp)).map_err(|e| e.0),
            Err("from")
        );
        assert_eq!(
            check_email_sink(&[], Some("pacer@example.com"), Some(&smtp)).map_err(|e| e.0),
            Err("to")
        );
    }
}
