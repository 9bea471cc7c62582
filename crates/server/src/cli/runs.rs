//! The job and task verbs beyond list/get/run: `jobs put|delete|summary|retry-failed` and
//! `tasks create|children|report`.

use std::path::Path;

use clap::Args;
use reqwest::Method;
use serde_json::{Value, json};

use super::output::{self, Table};
use super::watch::{self, Watch};
use super::{Connection, page, page_query, task_line};
use crate::client::{Client, Error, Result, segment};

/// What `pacer tasks create` takes.
#[derive(Debug, Args)]
pub(crate) struct NewTask {
    job: String,
    /// A JSON object laid over the job's payload for this task.
    #[arg(long)]
    payload: Option<String>,
    /// Dispatch no earlier than this (RFC 3339).
    #[arg(long)]
    not_before: Option<String>,
    /// The same key for the same job returns the existing task instead of creating another.
    #[arg(long)]
    idempotency_key: Option<String>,
}

/// What `pacer tasks report` takes.
#[derive(Debug, Args)]
pub(crate) struct Report {
    id: String,
    /// processing, completed, completed_with_errors, failed or cancelled.
    #[arg(long)]
    status: String,
    /// A message for the record (at most 4000 characters).
    #[arg(long)]
    message: Option<String>,
    /// With `failed`: the error's code (a code the job's `retry.on_errors` names retries it).
    #[arg(long)]
    error_code: Option<String>,
    /// With `failed`: the error's message.
    #[arg(long)]
    error_message: Option<String>,
}

/// A JSON object from a command-line flag.
pub(crate) fn json_object(flag: &str, text: &str) -> Result<Value> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| Error::Usage(format!("{flag} is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(Error::Usage(format!("{flag} must be a JSON object")));
    }
    Ok(value)
}

/// A request body from a file: JSON for `.json`, YAML otherwise.
pub(crate) fn read_body(file: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::Usage(format!("cannot read {}: {e}", file.display())))?;
    if file.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text)
            .map_err(|e| Error::Usage(format!("{} is not valid JSON: {e}", file.display())))
    } else {
        serde_saphyr::from_str(&text)
            .map_err(|e| Error::Usage(format!("{} is not valid YAML: {e}", file.display())))
    }
}

pub(crate) async fn put_job(
    connection: &Connection,
    client: &Client,
    name: &str,
    file: &Path,
    dry_run: bool,
) -> Result<()> {
    let body = read_body(file)?;
    let query = if dry_run {
        vec![("dry_run", "true".to_owned())]
    } else {
        Vec::new()
    };
    let job = client
        .send(
            Method::PUT,
            &format!("/api/v1/jobs/{}", segment(name)),
            &query,
            Some(&body),
        )
        .await?;
    connection.print(&job, |j| {
        if dry_run {
            format!("job {name} is valid; nothing was changed")
        } else {
            format!(
                "job {} saved (version {})",
                output::text(j, "/name"),
                output::text(j, "/version")
            )
        }
    });
    Ok(())
}

pub(crate) async fn delete_job(
    connection: &Connection,
    client: &Client,
    name: &str,
    cancel_open_tasks: bool,
) -> Result<()> {
    let query = if cancel_open_tasks {
        vec![("cancel_open_tasks", "true".to_owned())]
    } else {
        Vec::new()
    };
    let deleted = client
        .send(
            Method::DELETE,
            &format!("/api/v1/jobs/{}", segment(name)),
            &query,
            None,
        )
        .await?;
    connection.print(&deleted, |d| {
        format!(
            "job {} deleted ({} open task(s) cancelled)",
            output::text(d, "/deleted"),
            output::text(d, "/cancelled_tasks")
        )
    });
    Ok(())
}

pub(crate) async fn summary(
    connection: &Connection,
    client: &Client,
    name: &str,
    window: Option<u32>,
    watching: &Watch,
) -> Result<()> {
    let path = format!("/api/v1/jobs/{}/summary", segment(name));
    let query: Vec<(&str, String)> = window
        .map(|w| ("window", w.to_string()))
        .into_iter()
        .collect();
    let (path, query) = (&path, &query);
    watch::watch(
        connection,
        watching,
        || client.get(path, query),
        summary_text,
        |_| false,
    )
    .await
}

/// A job summary in a few lines.
fn summary_text(s: &Value) -> String {
    let brief = |pointer: &str| match s.pointer(pointer) {
        Some(task) if task.is_object() => format!(
            "{} {} at {}",
            output::text(task, "/task"),
            output::text(task, "/state"),
            output::time(task, "/created_at"),
        ),
        _ => "-".to_owned(),
    };
    let recent = &s["recent"];
    let rate = recent["success_rate"]
        .as_f64()
        .map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0));
    let millis = |key: &str| {
        recent[key]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0}ms"))
    };
    let alerts = s["open_alerts"]["by_kind"]
        .as_object()
        .map(|kinds| {
            kinds
                .iter()
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let fires: Vec<String> = s["next_fire_times"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| output::time(f, "/at"))
        .collect();
    let mut lines = vec![
        format!(
            "job:           {}{}",
            output::text(s, "/job"),
            if s["paused"] == Value::Bool(true) {
                " (paused)"
            } else {
                ""
            }
        ),
        format!("last run:      {}", brief("/last_run")),
        format!("last success:  {}", brief("/last_success")),
        format!(
            "open:          {} pending, {} processing, oldest pending since {}",
            output::text(s, "/open/pending"),
            output::text(s, "/open/processing"),
            output::time(s, "/open/oldest_pending_at"),
        ),
        format!(
            "recent:        {} finished: {} completed, {} with errors, {} failed, {} cancelled; success {rate}, p50 {}, p95 {}",
            output::text(recent, "/finished"),
            output::text(recent, "/completed"),
            output::text(recent, "/completed_with_errors"),
            output::text(recent, "/failed"),
            output::text(recent, "/cancelled"),
            millis("p50_ms"),
            millis("p95_ms"),
        ),
        format!(
            "open alerts:   {}{}",
            output::text(s, "/open_alerts/total"),
            if alerts.is_empty() {
                String::new()
            } else {
                format!(" ({alerts})")
            }
        ),
    ];
    lines.push(format!(
        "next fires:    {}",
        if fires.is_empty() {
            "-".to_owned()
        } else {
            fires.join(", ")
        }
    ));
    lines.join("\n")
}

pub(crate) async fn retry_failed(
    connection: &Connection,
    client: &Client,
    name: &str,
    limit: Option<u32>,
) -> Result<()> {
    let query: Vec<(&str, String)> = limit
        .map(|l| ("limit", l.to_string()))
        .into_iter()
        .collect();
    let value = client
        .send(
            Method::POST,
            &format!("/api/v1/jobs/{}/retry-failed", segment(name)),
            &query,
            None,
        )
        .await?;
    connection.print(&value, |v| {
        let mut table = Table::new(&["FAILED TASK", "RETRIED AS"]);
        let retried = v["retried"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for pair in retried {
            table.row(vec![
                output::text(pair, "/task"),
                output::text(pair, "/retry"),
            ]);
        }
        let mut text = if retried.is_empty() {
            "no failed task to retry\n".to_owned()
        } else {
            table.render()
        };
        if let Some(stopped) = v["stopped"].as_object().map(|_| &v["stopped"]) {
            text.push_str(&format!(
                "stopped: {} (open task {})\n",
                output::text(stopped, "/reason"),
                output::text(stopped, "/open_task")
            ));
        }
        if v["more"] == Value::Bool(true) {
            text.push_str("(more failed tasks wait for a retry)\n");
        }
        text
    });
    Ok(())
}

pub(crate) async fn create_task(
    connection: &Connection,
    client: &Client,
    new: NewTask,
) -> Result<()> {
    let mut body = json!({});
    if let Some(payload) = &new.payload {
        body["payload"] = json_object("--payload", payload)?;
    }
    if let Some(at) = new.not_before {
        body["not_before"] = Value::String(at);
    }
    if let Some(key) = new.idempotency_key {
        body["idempotency_key"] = Value::String(key);
    }
    let task = client
        .post(
            &format!("/api/v1/jobs/{}/tasks", segment(&new.job)),
            Some(&body),
        )
        .await?;
    connection.print(&task, |t| format!("created {}", task_line(t)));
    Ok(())
}

pub(crate) async fn children(
    connection: &Connection,
    client: &Client,
    run: &str,
    step: Option<String>,
    state: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
) -> Result<()> {
    let mut query = page_query(limit, cursor);
    query.extend(step.map(|s| ("step", s)));
    query.extend(state.map(|s| ("state", s)));
    let value = client
        .get(&format!("/api/v1/tasks/{}/children", segment(run)), &query)
        .await?;
    connection.print(&value, |v| {
        let table = Table::new(&[
            "ID", "STEP", "NAME", "STATE", "ATTEMPT", "CREATED", "FINISHED", "ERROR",
        ]);
        page(v, table, |child| {
            vec![
                output::text(child, "/id"),
                output::text(child, "/step"),
                output::text(child, "/name"),
                output::text(child, "/state"),
                output::text(child, "/attempt"),
                output::time(child, "/created_at"),
                output::time(child, "/finished_at"),
                output::text(child, "/last_error"),
            ]
        })
    });
    Ok(())
}

pub(crate) async fn report(connection: &Connection, client: &Client, report: Report) -> Result<()> {
    let mut body = json!({ "status": report.status });
    if let Some(message) = report.message {
        body["message"] = Value::String(message);
    }
    if report.error_code.is_some() || report.error_message.is_some() {
        body["error"] = json!({
            "code": report.error_code,
            "message": report.error_message,
        });
    }
    let task = client
        .post(
            &format!("/api/v1/tasks/{}/callback", segment(&report.id)),
            Some(&body),
        )
        .await?;
    connection.print(&task, task_line);
    Ok(())
}
