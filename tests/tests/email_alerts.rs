//! End-to-end: e-mail alert sinks. A failed task sends exactly one e-mail to the sink's
//! recipients, with plain-text and HTML bodies naming the job, the task and the reason and
//! linking to the task's dashboard page, and a job's success notice another; an SMTP server that
//! answers "try again later" is retried until it takes the message, logging in with the
//! configured secret; a malformed e-mail sink stops the node at startup with a clear error.

use std::process::Stdio;
use std::time::Duration;

use pacer_tests::{
    Api, FakeDownstream, NodeSettings, PacerProcess, ReceivedMail, Reply, SmtpServer, TestDb,
    pacer_binary, wait_until,
};
use reqwest::Method;
use serde_json::{Value, json};

/// Generous: these waits cover a node start and a few evaluation passes on a loaded machine.
const SETTLE: Duration = Duration::from_secs(30);

/// A node whose only alert sink is the e-mail sink `mail` described by `sink` (TOML fields
/// after the name and kind).
fn with_email_sink(node_id: &str, sink: &str) -> NodeSettings {
    NodeSettings::new(node_id)
        .env(
            "PACER_ALERTS__SINKS",
            &format!(r#"[{{name="mail", kind="email", all_alerts=false, {sink}}}]"#),
        )
        .env("PACER_ALERTS__DELIVERY_INITIAL_BACKOFF", "100ms")
        .env("PACER_ALERTS__DELIVERY_MAX_BACKOFF", "300ms")
}

async fn alert_detail(api: &Api, kind: &str) -> Value {
    let found = wait_until(&format!("a {kind} alert"), SETTLE, || async {
        let response = api
            .request(
                Method::GET,
                &format!("/api/v1/alerts?kind={kind}"),
                None,
                &[],
            )
            .await;
        let items = response.expect_status(200)["items"].clone();
        items.as_array().and_then(|a| a.first().cloned())
    })
    .await;
    let uri = format!("/api/v1/alerts/{}", found["id"].as_str().expect("an id"));
    api.request(Method::GET, &uri, None, &[])
        .await
        .expect_status(200)
        .clone()
}

/// Waits until the alert of `kind` has one delivery in `state`, and returns it.
async fn delivered(api: &Api, kind: &str) -> Value {
    wait_until(
        "the alert's e-mail delivery to be delivered",
        SETTLE,
        || async {
            let detail = alert_detail(api, kind).await;
            let deliveries = detail["deliveries"].as_array().cloned().unwrap_or_default();
            match deliveries.as_slice() {
                [one] if one["state"] == "delivered" => Some(one.clone()),
                _ => None,
            }
        },
    )
    .await
}

fn part(mail: &ReceivedMail, content_type: &str) -> String {
    mail.part(content_type)
        .unwrap_or_else(|| panic!("a {content_type} part in:\n{}", mail.data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_task_sends_one_email_with_both_bodies_and_a_success_notice_another() {
    let db = TestDb::create().await;
    let smtp = SmtpServer::start().await;
    let refusing = FakeDownstream::start(|_| Reply::status(400)).await;
    let accepting = FakeDownstream::start(|_| Reply::accept()).await;
    let sink = format!(
        r#"to=["ops@example.com", "On Call <oncall@example.com>"], from="Pacer <pacer@example.com>", smtp={{host="127.0.0.1", port={}, starttls=false}}"#,
        smtp.port()
    );
    let node = PacerProcess::start_with(db.url(), with_email_sink("node-a", &sink)).await;
    let api = node.api();
    api.put_job(
        "nightly",
        &json!({
            "target": { "url": refusing.url("/run") },
            "alerts": { "on_failure": ["mail"] },
        }),
    )
    .await;
    api.put_job(
        "hello",
        &json!({
            "target": { "url": accepting.url("/run") },
            "alerts": { "on_success": ["mail"] },
        }),
    )
    .await;

    let failed = api.create_task_id("nightly", &json!({})).await;
    api.wait_for_state(&failed, "failed", SETTLE).await;
    let delivery = delivered(&api, "failed").await;
    assert_eq!(delivery["sink_kind"], "email");
    assert_eq!(delivery["attempts"], 1);
    let mails = smtp.wait_for(1, SETTLE).await;
    let [mail] = mails.as_slice() else {
        panic!("one e-mail: {mails:#?}")
    };
    assert_eq!(mail.mail_from, "pacer@example.com");
    assert_eq!(mail.rcpt_to, ["ops@example.com", "oncall@example.com"]);
    assert_eq!(mail.user, None);
    let from = mail.header("from").expect("a From header");
    assert!(from.contains("<pacer@example.com>"), "{from}");
    let to = mail.header("to").expect("a To header");
    assert!(
        to.contains("ops@example.com") && to.contains("<oncall@example.com>"),
        "{to}"
    );
    let subject = mail.header("subject").expect("a Subject header");
    assert!(
        subject.starts_with(&format!(
            "[Pacer] critical failed: task {failed} of job nightly failed"
        )),
        "{subject}"
    );
    let message_id = mail.header("message-id").expect("a Message-ID header");
    assert_eq!(
        message_id,
        format!("<{}@pacer>", delivery["id"].as_str().expect("an id")),
        "the message id is the delivery's, the same on every retry"
    );
    let content_type = mail.header("content-type").expect("a Content-Type header");
    assert!(
        content_type.starts_with("multipart/alternative"),
        "{content_type}"
    );
    let link = format!("{}/ui/#/tasks/{failed}", node.url().trim_end_matches('/'));
    let text = part(mail, "text/plain");
    for expected in [
        "Job:",
        "nightly",
        &format!("Task:     {failed}"),
        "Reason:",
        "400",
    ] {
        assert!(text.contains(expected), "`{expected}` in:\n{text}");
    }
    assert!(text.contains(&format!("Dashboard: {link}")), "{text}");
    let html = part(mail, "text/html");
    for expected in ["<th", "nightly", &failed, "400"] {
        assert!(html.contains(expected), "`{expected}` in:\n{html}");
    }
    assert!(html.contains(&format!("<a href=\"{link}\">")), "{html}");

    // A task of the watched job ends well: one more e-mail, and still only one for the alert.
    let done = api.create_task_id("hello", &json!({})).await;
    accepting.wait_for_requests(&done, 1, SETTLE).await;
    api.callback(
        &done,
        &json!({ "status": "completed", "message": "said hello" }),
    )
    .await
    .expect_status(200);
    let mails = smtp.wait_for(2, SETTLE).await;
    assert_eq!(mails.len(), 2, "{mails:#?}");
    let notice = &mails[1];
    assert_eq!(
        notice.header("subject").as_deref(),
        Some(format!("[Pacer] job hello: task {done} completed").as_str())
    );
    let text = part(notice, "text/plain");
    assert!(text.contains("said hello"), "{text}");
    assert!(
        text.contains(&format!(
            "{}/ui/#/tasks/{done}",
            node.url().trim_end_matches('/')
        )),
        "{text}"
    );
    assert!(part(notice, "text/html").contains("said hello"));
    let failed_mails = mails
        .iter()
        .filter(|m| m.header("subject").is_some_and(|s| s.contains(&failed)))
        .count();
    assert_eq!(failed_mails, 1, "exactly one e-mail for the failed task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_smtp_server_that_says_try_later_is_retried_and_the_login_uses_the_secret() {
    let db = TestDb::create().await;
    // Two transactions answered 451, then the message is taken.
    let smtp = SmtpServer::with_login("pacer-alerts", "smtp-s3cret", 2).await;
    // The downstream takes the task and never calls back: it goes overdue.
    let downstream = FakeDownstream::start(|_| Reply::accept()).await;
    let sink = format!(
        r#"to=["ops@example.com"], from="pacer@example.com", smtp={{host="127.0.0.1", port={}, starttls=false, username="pacer-alerts", password="smtp_password"}}"#,
        smtp.port()
    );
    let settings =
        with_email_sink("node-a", &sink).env("PACER_SECRETS__SMTP_PASSWORD", "smtp-s3cret");
    let node = PacerProcess::start_with(db.url(), settings).await;
    let api = node.api();
    api.put_job(
        "nightly",
        &json!({
            "target": { "url": downstream.url("/run") },
            "deadline": "1s",
            "repoll_interval": "1m",
            "alerts": { "on_overdue": ["mail"] },
        }),
    )
    .await;
    let id = api.create_task_id("nightly", &json!({})).await;
    downstream.wait_for_requests(&id, 1, SETTLE).await;

    let delivery = delivered(&api, "overdue").await;
    assert_eq!(delivery["attempts"], 3, "{delivery:#}");
    let tries = delivery["tries"].as_array().expect("tries");
    let first_error = tries[0]["error"].as_str().unwrap_or_default();
    assert!(first_error.contains("451"), "{first_error}");
    assert_eq!(tries[2]["error"], Value::Null);
    assert_eq!(smtp.refused(), 2);
    let mails = smtp.received();
    let [mail] = mails.as_slice() else {
        panic!("one e-mail: {mails:#?}")
    };
    assert_eq!(mail.user.as_deref(), Some("pacer-alerts"));
    let subject = mail.header("subject").expect("a Subject header");
    assert!(
        subject.starts_with(&format!(
            "[Pacer] warning overdue: task {id} of job nightly"
        )),
        "{subject}"
    );
    assert!(part(mail, "text/plain").contains("passed its deadline"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_refuses_a_server_that_cannot_upgrade_the_connection() {
    let db = TestDb::create().await;
    // This server offers no STARTTLS.
    let smtp = SmtpServer::start().await;
    let refusing = FakeDownstream::start(|_| Reply::status(400)).await;
    let sink = format!(
        r#"to=["ops@example.com"], from="pacer@example.com", smtp={{host="127.0.0.1", port={}, starttls=true}}"#,
        smtp.port()
    );
    let settings = with_email_sink("node-a", &sink).env("PACER_ALERTS__DELIVERY_MAX_ATTEMPTS", "1");
    let node = PacerProcess::start_with(db.url(), settings).await;
    let api = node.api();
    api.put_job(
        "nightly",
        &json!({
            "target": { "url": refusing.url("/run") },
            "alerts": { "on_failure": ["mail"] },
        }),
    )
    .await;
    let id = api.create_task_id("nightly", &json!({})).await;
    api.wait_for_state(&id, "failed", SETTLE).await;
    let delivery = wait_until("the e-mail delivery to fail", SETTLE, || async {
        let detail = alert_detail(&api, "failed").await;
        let deliveries = detail["deliveries"].as_array().cloned().unwrap_or_default();
        match deliveries.as_slice() {
            [one] if one["state"] == "failed" => Some(one.clone()),
            _ => None,
        }
    })
    .await;
    let error = delivery["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("sending the e-mail failed"), "{delivery:#}");
    assert!(smtp.received().is_empty(), "nothing is sent in the clear");
}

/// Runs `pacer serve` with `sinks` as the alert sinks and returns what it printed when it
/// stopped at startup.
async fn startup_error(db: &TestDb, sinks: &str) -> String {
    let mut command = tokio::process::Command::new(pacer_binary());
    command
        .arg("serve")
        .env_clear()
        .env("PACER_DATABASE_URL", db.url())
        .env("PACER_LISTEN", "127.0.0.1:0")
        .env("PACER_JWT_HS256_SECRET", pacer_tests::TEST_SECRET)
        .env("PACER_SECRETS__KNOWN", "a-secret")
        .env("PACER_ALERTS__SINKS", sinks)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(SETTLE, command.output())
        .await
        .expect("the node stops at startup")
        .expect("the node runs");
    assert!(!output.status.success(), "{sinks} must be refused");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_email_sink_stops_the_node_at_startup_with_a_clear_error() {
    let db = TestDb::create().await;
    let smtp = r#"smtp={host="127.0.0.1", port=2525, starttls=false}"#;
    let cases = [
        (
            format!(r#"[{{name="mail", kind="email", to=[], from="a@example.com", {smtp}}}]"#),
            "alerts.sinks[0].to must list at least one address",
        ),
        (
            format!(
                r#"[{{name="mail", kind="email", to=["not an address"], from="a@example.com", {smtp}}}]"#
            ),
            "alerts.sinks[0].to `not an address` is not an e-mail address",
        ),
        (
            format!(r#"[{{name="mail", kind="email", to=["b@example.com"], {smtp}}}]"#),
            "alerts.sinks[0].from is required",
        ),
        (
            r#"[{name="mail", kind="email", to=["b@example.com"], from="a@example.com"}]"#
                .to_owned(),
            "alerts.sinks[0].smtp is required",
        ),
        (
            r#"[{name="mail", kind="email", to=["b@example.com"], from="a@example.com", smtp={host="127.0.0.1", username="u", password="missing"}}]"#
                .to_owned(),
            "alerts.sinks[0].smtp.password names `missing`, which is not in `secrets`",
        ),
        (
            r#"[{name="hook", url="http://127.0.0.1:9/x", to=["b@example.com"]}]"#.to_owned(),
            "alerts.sinks[0]: `to`, `from` and `smtp` are for e-mail sinks",
        ),
    ];
    for (sinks, expected) in cases {
        let printed = startup_error(&db, &sinks).await;
        assert!(
            printed.contains(expected),
            "`{expected}` for {sinks}:\n{printed}"
        );
    }
}
