//! `pacer calendars`: list, show, create or replace, and delete exclusion calendars; and
//! `pacer triggers backfill`, which creates the tasks of a past range's missing occurrences.

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Value, json};

use super::output::{self, Table};
use super::{Connection, page, page_query};
use crate::client::{Error, Result, segment};

#[derive(Debug, Subcommand)]
pub(crate) enum CalendarsVerb {
    /// Calendars in name order.
    List {
        /// At most this many (1–500; default 100).
        #[arg(long)]
        limit: Option<u32>,
        /// The `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One calendar's definition.
    Get { name: String },
    /// Create or replace a calendar from a YAML or JSON file holding the body of
    /// `PUT /api/v1/calendars/{name}` (`timezone`, `exclude`, `include`).
    Put {
        name: String,
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Delete a calendar; refused (exit code 5) while triggers or calendars use it.
    Delete {
        name: String,
        /// Delete it even so: what used it then ignores it.
        #[arg(long)]
        force: bool,
    },
}

/// `--overlap` of a backfill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BackfillOverlap {
    /// Every task due at once.
    Allow,
    /// One after another, oldest first.
    BufferAll,
}

/// What `pacer triggers backfill` takes.
#[derive(Debug, clap::Args)]
pub(crate) struct Backfill {
    job: String,
    /// The trigger's id; without it, every trigger of the job.
    id: Option<String>,
    /// The start of the range (RFC 3339, included).
    #[arg(long)]
    from: String,
    /// The end of the range (RFC 3339, excluded; not later than now).
    #[arg(long)]
    to: String,
    #[arg(long, value_enum, default_value_t = BackfillOverlap::Allow)]
    overlap: BackfillOverlap,
    /// Show what would be created; create nothing.
    #[arg(long)]
    dry_run: bool,
    /// Also create the occurrences the trigger's calendars exclude.
    #[arg(long)]
    ignore_calendars: bool,
}

pub(crate) async fn calendars(connection: &Connection, verb: CalendarsVerb) -> Result<()> {
    let client = connection.client()?;
    match verb {
        CalendarsVerb::List { limit, cursor } => {
            let value = client
                .get("/api/v1/calendars", &page_query(limit, cursor))
                .await?;
            connection.print(&value, |v| {
                let table = Table::new(&["NAME", "TIMEZONE", "RULES", "INCLUDES", "UPDATED"]);
                page(v, table, |calendar| {
                    let count =
                        |key: &str| calendar[key].as_array().map_or(0, Vec::len).to_string();
                    let includes = calendar["include"]
                        .as_array()
                        .map(|names| {
                            names
                                .iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    vec![
                        output::text(calendar, "/name"),
                        output::text(calendar, "/timezone"),
                        count("exclude"),
                        if includes.is_empty() {
                            "-".into()
                        } else {
                            includes
                        },
                        output::time(calendar, "/updated_at"),
                    ]
                })
            });
        }
        CalendarsVerb::Get { name } => {
            let value = client
                .get(&format!("/api/v1/calendars/{}", segment(&name)), &[])
                .await?;
            connection.print(&value, output::yaml);
        }
        CalendarsVerb::Put { name, file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Error::Usage(format!("cannot read {}: {e}", file.display())))?;
            let body: Value = if file.extension().is_some_and(|e| e == "json") {
                serde_json::from_str(&text).map_err(|e| {
                    Error::Usage(format!("{} is not valid JSON: {e}", file.display()))
                })?
            } else {
                serde_saphyr::from_str(&text).map_err(|e| {
                    Error::Usage(format!("{} is not valid YAML: {e}", file.display()))
                })?
            };
            let value = client
                .send(
                    Method::PUT,
                    &format!("/api/v1/calendars/{}", segment(&name)),
                    &[],
                    Some(&body),
                )
                .await?;
            connection.print(&value, |c| {
                format!(
                    "calendar {} saved ({} rules)",
                    output::text(c, "/name"),
                    c["exclude"].as_array().map_or(0, Vec::len)
                )
            });
        }
        CalendarsVerb::Delete { name, force } => {
            let query = if force {
                vec![("force", "true".to_owned())]
            } else {
                Vec::new()
            };
            client
                .send(
                    Method::DELETE,
                    &format!("/api/v1/calendars/{}", segment(&name)),
                    &query,
                    None,
                )
                .await?;
            connection.print(&json!({ "deleted": name }), |_| {
                format!("calendar {name} deleted")
            });
        }
    }
    Ok(())
}

pub(crate) async fn backfill(connection: &Connection, args: Backfill) -> Result<()> {
    let client = connection.client()?;
    let body = json!({
        "from": args.from,
        "to": args.to,
        "overlap": match args.overlap {
            BackfillOverlap::Allow => "allow",
            BackfillOverlap::BufferAll => "buffer_all",
        },
        "dry_run": args.dry_run,
        "ignore_calendars": args.ignore_calendars,
    });
    let path = match &args.id {
        Some(id) => format!(
            "/api/v1/jobs/{}/triggers/{}/backfill",
            segment(&args.job),
            segment(id)
        ),
        None => format!("/api/v1/jobs/{}/backfill", segment(&args.job)),
    };
    let value = client.post(&path, Some(&body)).await?;
    connection.print(&value, |v| {
        let results: Vec<&Value> = match v.get("triggers").and_then(Value::as_array) {
            Some(all) => all.iter().collect(),
            None => vec![v],
        };
        let mut table = Table::new(&["TRIGGER", "SCHEDULED", "OUTCOME"]);
        let (mut created, mut existing, mut excluded) = (0, 0, 0);
        for result in results {
            let trigger = output::text(result, "/trigger");
            let dry = result["dry_run"] == Value::Bool(true);
            for item in result["created"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                created += 1;
                let outcome = if dry {
                    "would create".to_owned()
                } else {
                    format!("created task {}", output::text(item, "/task_id"))
                };
                table.row(vec![
                    trigger.clone(),
                    output::time(item, "/scheduled_at"),
                    outcome,
                ]);
            }
            for at in result["existing"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                existing += 1;
                table.row(vec![
                    trigger.clone(),
                    output::format_time(at.as_str().unwrap_or_default()),
                    "has a task already".into(),
                ]);
            }
            for item in result["excluded"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                excluded += 1;
                table.row(vec![
                    trigger.clone(),
                    output::time(item, "/scheduled_at"),
                    format!("excluded by calendar {}", output::text(item, "/calendar")),
                ]);
            }
        }
        let verb = if args.dry_run {
            "would create"
        } else {
            "created"
        };
        format!(
            "{}{verb} {created}, already had a task {existing}, excluded {excluded}\n",
            table.render()
        )
    });
    Ok(())
}
