//! `pacer scheduler`, `skips`, `messages`, `audit` and `whoami`: the cluster-wide operator verbs.

use clap::Subcommand;
use serde_json::{Value, json};

use super::output::{self, Table};
use super::runs::json_object;
use super::{Connection, page, page_query};
use crate::client::Result;

#[derive(Debug, Subcommand)]
pub(crate) enum SchedulerVerb {
    /// Whether the scheduler is in standby.
    Status,
    /// Put the scheduler in standby: no trigger fires (tasks already created still run).
    #[command(visible_alias = "standby")]
    Pause,
    /// Take the scheduler out of standby.
    Resume,
    /// Run every unpaused job now (each job's overlap policy still applies).
    RunAll,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SkipsVerb {
    /// Skipped runs, newest first.
    List {
        /// Only this job's.
        #[arg(long)]
        job: Option<String>,
        /// Only this trigger's (its id).
        #[arg(long)]
        trigger: Option<String>,
        /// misfire, coalesced, catch_up_limit, calendar, overlap or buffer_full.
        #[arg(long)]
        reason: Option<String>,
        /// At most this many (1–500).
        #[arg(long)]
        limit: Option<u32>,
        /// The `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum MessagesVerb {
    /// Messages, newest first.
    List {
        /// Only messages of this type.
        #[arg(long = "type")]
        kind: Option<String>,
        /// Only messages some job subscribed to (`true`) or none did (`false`).
        #[arg(long)]
        routed: Option<bool>,
        /// At most this many (1–500).
        #[arg(long)]
        limit: Option<u32>,
        /// The `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One message, with the tasks it created and the jobs that skipped it.
    Get { id: String },
    /// Send a message: every job that subscribes to its type gets a task.
    Send {
        /// The message type.
        #[arg(long = "type")]
        kind: String,
        /// A JSON object, laid over each subscribing job's payload.
        #[arg(long)]
        payload: Option<String>,
        /// What the message is about (part of the deduplication key when `--id` is absent).
        #[arg(long)]
        key: Option<String>,
        /// The upstream's id for the message: its deduplication key.
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditVerb {
    /// Changes, newest first.
    List {
        /// Only changes by this subject.
        #[arg(long)]
        actor: Option<String>,
        /// Only this action (pause_job, delete_trigger, …).
        #[arg(long)]
        action: Option<String>,
        /// At most this many (1–500).
        #[arg(long)]
        limit: Option<u32>,
        /// The `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
}

/// The names in an array of strings, comma-separated, `-` when none.
fn names(value: &Value) -> String {
    let joined = value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| match item {
                    Value::String(s) => s.clone(),
                    other => output::text(other, "/job"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    if joined.is_empty() {
        "-".to_owned()
    } else {
        joined
    }
}

pub(crate) async fn scheduler(connection: &Connection, verb: SchedulerVerb) -> Result<()> {
    let client = connection.client()?;
    let standby = |v: &Value| {
        if v["paused"] == Value::Bool(true) {
            "scheduler is in standby: no trigger fires".to_owned()
        } else {
            "scheduler is running".to_owned()
        }
    };
    match verb {
        SchedulerVerb::Status => {
            let value = client.get("/api/v1/scheduler", &[]).await?;
            connection.print(&value, standby);
        }
        SchedulerVerb::Pause => {
            let value = client.post("/api/v1/scheduler/pause", None).await?;
            connection.print(&value, standby);
        }
        SchedulerVerb::Resume => {
            let value = client.post("/api/v1/scheduler/resume", None).await?;
            connection.print(&value, standby);
        }
        SchedulerVerb::RunAll => {
            let value = client.post("/api/v1/scheduler/run-all", None).await?;
            connection.print(&value, |v| {
                let mut table = Table::new(&["JOB", "RESULT"]);
                for started in v["started"].as_array().into_iter().flatten() {
                    table.row(vec![
                        output::text(started, "/job"),
                        format!("started task {}", output::text(started, "/task")),
                    ]);
                }
                for skipped in v["skipped"].as_array().into_iter().flatten() {
                    table.row(vec![
                        output::text(skipped, "/job"),
                        format!(
                            "skipped ({}, open task {})",
                            output::text(skipped, "/reason"),
                            output::text(skipped, "/open_task")
                        ),
                    ]);
                }
                for paused in v["paused"].as_array().into_iter().flatten() {
                    table.row(vec![
                        paused.as_str().unwrap_or("-").to_owned(),
                        "paused, not run".to_owned(),
                    ]);
                }
                table.render()
            });
        }
    }
    Ok(())
}

pub(crate) async fn skips(connection: &Connection, verb: SkipsVerb) -> Result<()> {
    let client = connection.client()?;
    let SkipsVerb::List {
        job,
        trigger,
        reason,
        limit,
        cursor,
    } = verb;
    let mut query = page_query(limit, cursor);
    query.extend(job.map(|v| ("job", v)));
    query.extend(trigger.map(|v| ("trigger", v)));
    query.extend(reason.map(|v| ("reason", v)));
    let value = client.get("/api/v1/skips", &query).await?;
    connection.print(&value, |v| {
        let table = Table::new(&["RECORDED", "JOB", "TRIGGER", "SCHEDULED", "REASON"]);
        page(v, table, |skip| {
            let mut reason = output::text(skip, "/reason");
            if let Some(calendar) = skip["calendar"].as_str() {
                reason.push_str(&format!(" ({calendar})"));
            }
            vec![
                output::time(skip, "/recorded_at"),
                output::text(skip, "/job"),
                output::text(skip, "/trigger_id"),
                output::time(skip, "/scheduled_at"),
                reason,
            ]
        })
    });
    Ok(())
}

/// The tasks a message created, as `job:task` pairs.
fn message_tasks(message: &Value) -> String {
    let pairs: Vec<String> = message["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| match t {
            Value::String(id) => id.clone(),
            other => format!(
                "{}:{}",
                output::text(other, "/job"),
                output::text(other, "/task")
            ),
        })
        .collect();
    if pairs.is_empty() {
        "-".to_owned()
    } else {
        pairs.join(", ")
    }
}

pub(crate) async fn messages(connection: &Connection, verb: MessagesVerb) -> Result<()> {
    let client = connection.client()?;
    match verb {
        MessagesVerb::List {
            kind,
            routed,
            limit,
            cursor,
        } => {
            let mut query = page_query(limit, cursor);
            query.extend(kind.map(|v| ("type", v)));
            query.extend(routed.map(|v| ("routed", v.to_string())));
            let value = client.get("/api/v1/messages", &query).await?;
            connection.print(&value, |v| {
                let table = Table::new(&[
                    "ID", "TYPE", "KEY", "SOURCE", "RECEIVED", "ROUTED", "TASKS", "SKIPPED",
                ]);
                page(v, table, |m| {
                    vec![
                        output::text(m, "/id"),
                        output::text(m, "/type"),
                        output::text(m, "/key"),
                        output::text(m, "/source"),
                        output::time(m, "/received_at"),
                        output::flag(m, "/routed"),
                        message_tasks(m),
                        names(&m["skipped"]),
                    ]
                })
            });
        }
        MessagesVerb::Get { id } => {
            let value = client
                .get(
                    &format!("/api/v1/messages/{}", crate::client::segment(&id)),
                    &[],
                )
                .await?;
            connection.print(&value, output::yaml);
        }
        MessagesVerb::Send {
            kind,
            payload,
            key,
            id,
        } => {
            let mut body = json!({ "type": kind });
            if let Some(payload) = payload {
                body["payload"] = json_object("--payload", &payload)?;
            }
            if let Some(key) = key {
                body["key"] = Value::String(key);
            }
            if let Some(id) = id {
                body["id"] = Value::String(id);
            }
            let value = client.post("/api/v1/messages", Some(&body)).await?;
            connection.print(&value, |m| {
                let duplicate = if m["duplicate"] == Value::Bool(true) {
                    " (a duplicate: nothing changed)"
                } else {
                    ""
                };
                format!(
                    "message {}{duplicate}: tasks {}; skipped by {}",
                    output::text(m, "/id"),
                    message_tasks(m),
                    names(&m["skipped"]),
                )
            });
        }
    }
    Ok(())
}

pub(crate) async fn audit(connection: &Connection, verb: AuditVerb) -> Result<()> {
    let client = connection.client()?;
    let AuditVerb::List {
        actor,
        action,
        limit,
        cursor,
    } = verb;
    let mut query = page_query(limit, cursor);
    query.extend(actor.map(|v| ("actor", v)));
    query.extend(action.map(|v| ("action", v)));
    let value = client.get("/api/v1/audit", &query).await?;
    connection.print(&value, |v| {
        let table = Table::new(&["AT", "ACTOR", "ACTION", "TARGET"]);
        page(v, table, |entry| {
            vec![
                output::time(entry, "/at"),
                output::text(entry, "/actor"),
                output::text(entry, "/action"),
                output::text(entry, "/target"),
            ]
        })
    });
    Ok(())
}

pub(crate) async fn whoami(connection: &Connection) -> Result<()> {
    let client = connection.client()?;
    let value = client.get("/api/v1/whoami", &[]).await?;
    connection.print(&value, |v| {
        format!(
            "{} (issuer {}), roles: {}",
            output::text(v, "/subject"),
            output::text(v, "/issuer"),
            names(&v["roles"])
        )
    });
    Ok(())
}
