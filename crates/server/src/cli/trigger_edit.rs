//! `pacer triggers get|create|put|pause|resume|delete`: one trigger of a job.

use std::path::PathBuf;

use clap::Args;
use reqwest::Method;
use serde_json::{Value, json};

use super::output;
use super::runs::read_body;
use super::{Connection, Output};
use crate::client::{Client, Result, segment};

/// A trigger's definition: a file holding the body of `POST /api/v1/jobs/{name}/triggers`, or
/// one of `--cron`, `--every`, `--at` with the options that go with it.
#[derive(Debug, Args)]
pub(crate) struct Spec {
    /// A YAML or JSON file with the trigger (`kind`, `expression`, `every` or `at`, …).
    #[arg(
        short = 'f',
        long = "file",
        required_unless_present_any = ["cron", "every", "at"],
        conflicts_with_all = ["cron", "every", "at"]
    )]
    file: Option<PathBuf>,
    /// A cron expression (5 fields, 6 with seconds first, or `@daily`, …).
    #[arg(long, conflicts_with_all = ["every", "at"])]
    cron: Option<String>,
    /// An interval, like `5m` or `1h`.
    #[arg(long, conflicts_with = "at")]
    every: Option<String>,
    /// Once, at this time (RFC 3339).
    #[arg(long)]
    at: Option<String>,
    /// The cron expression's IANA time zone (default UTC).
    #[arg(long, requires = "cron")]
    timezone: Option<String>,
    /// An exclusion calendar; repeat for several.
    #[arg(long = "calendar", conflicts_with = "file")]
    calendars: Vec<String>,
    /// What to do with fire times missed while no node ran (skip, fire_once, catch_up).
    #[arg(long, conflicts_with = "file")]
    misfire: Option<String>,
    /// A random delay of up to this much before each fire, like `30s`.
    #[arg(long, conflicts_with = "file")]
    jitter: Option<String>,
    /// Fires no earlier than this (RFC 3339).
    #[arg(long, conflicts_with = "file")]
    start_at: Option<String>,
    /// Fires no later than this (RFC 3339).
    #[arg(long, conflicts_with = "file")]
    end_at: Option<String>,
    #[arg(long, conflicts_with = "file")]
    description: Option<String>,
}

impl Spec {
    /// The request body.
    fn body(&self) -> Result<Value> {
        if let Some(file) = &self.file {
            return read_body(file);
        }
        let mut body = match (&self.cron, &self.every, &self.at) {
            (Some(expression), _, _) => json!({ "kind": "cron", "expression": expression }),
            (_, Some(every), _) => json!({ "kind": "interval", "every": every }),
            (_, _, Some(at)) => json!({ "kind": "once", "at": at }),
            _ => json!({}),
        };
        for (key, value) in [
            ("timezone", &self.timezone),
            ("misfire", &self.misfire),
            ("jitter", &self.jitter),
            ("start_at", &self.start_at),
            ("end_at", &self.end_at),
            ("description", &self.description),
        ] {
            if let Some(value) = value {
                body[key] = Value::String(value.clone());
            }
        }
        if !self.calendars.is_empty() {
            body["calendars"] = json!(self.calendars);
        }
        Ok(body)
    }
}

fn path(job: &str, id: &str) -> String {
    format!("/api/v1/jobs/{}/triggers/{}", segment(job), segment(id))
}

/// A trigger in a line.
fn line(trigger: &Value, what: &str) -> String {
    format!(
        "trigger {} of job {} {what}: {}, next fire {}",
        output::text(trigger, "/id"),
        output::text(trigger, "/job"),
        output::schedule(trigger),
        output::time(trigger, "/next_fire_at"),
    )
}

pub(crate) async fn get(
    connection: &Connection,
    client: &Client,
    job: &str,
    id: &str,
) -> Result<()> {
    let trigger = client.get(&path(job, id), &[]).await?;
    connection.print(&trigger, output::yaml);
    Ok(())
}

pub(crate) async fn create(
    connection: &Connection,
    client: &Client,
    job: &str,
    spec: &Spec,
) -> Result<()> {
    let body = spec.body()?;
    let trigger = client
        .post(
            &format!("/api/v1/jobs/{}/triggers", segment(job)),
            Some(&body),
        )
        .await?;
    connection.print(&trigger, |t| line(t, "created"));
    Ok(())
}

pub(crate) async fn replace(
    connection: &Connection,
    client: &Client,
    job: &str,
    id: &str,
    spec: &Spec,
) -> Result<()> {
    let body = spec.body()?;
    let trigger = client
        .send(Method::PUT, &path(job, id), &[], Some(&body))
        .await?;
    connection.print(&trigger, |t| line(t, "replaced"));
    Ok(())
}

pub(crate) async fn set_paused(
    connection: &Connection,
    client: &Client,
    job: &str,
    id: &str,
    paused: bool,
) -> Result<()> {
    let verb = if paused { "pause" } else { "resume" };
    let trigger = client
        .post(&format!("{}/{verb}", path(job, id)), None)
        .await?;
    connection.print(&trigger, |t| {
        let state = if t["paused"] == Value::Bool(true) {
            "paused"
        } else {
            "active"
        };
        format!("trigger {} of job {job} is {state}", output::text(t, "/id"))
    });
    Ok(())
}

pub(crate) async fn delete(
    connection: &Connection,
    client: &Client,
    job: &str,
    id: &str,
) -> Result<()> {
    client
        .send(Method::DELETE, &path(job, id), &[], None)
        .await?;
    let deleted = json!({ "deleted": id, "job": job });
    if connection.output == Output::Table {
        output::emit(&format!("trigger {id} of job {job} deleted"));
    } else {
        connection.print(&deleted, |_| String::new());
    }
    Ok(())
}
