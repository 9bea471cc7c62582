//! `pacer groups`: list, show, create or change, and delete concurrency groups.

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use super::Connection;
use super::output::{self, Table};
use crate::client::{Result, segment};

#[derive(Debug, Subcommand)]
pub(crate) enum GroupsVerb {
    /// Every group: its limit, slots held and tasks waiting.
    List,
    /// One group: its limit, the jobs naming it, the tasks holding its slots.
    Get { name: String },
    /// Create a group or change its limit.
    Put {
        name: String,
        /// Most tasks of the group's jobs out at once (1–10000); 1 is mutual exclusion.
        #[arg(long)]
        limit: u32,
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete a group; refused (exit code 5) while a job names it.
    Delete { name: String },
}

pub(crate) async fn groups(connection: &Connection, verb: GroupsVerb) -> Result<()> {
    let client = connection.client()?;
    match verb {
        GroupsVerb::List => {
            let value = client.get("/api/v1/concurrency-groups", &[]).await?;
            connection.print(&value, |v| {
                let mut table = Table::new(&["NAME", "LIMIT", "HELD", "WAITING", "JOBS"]);
                for group in v["items"].as_array().into_iter().flatten() {
                    let jobs = group["jobs"]
                        .as_array()
                        .map(|names| {
                            names
                                .iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    table.row(vec![
                        output::text(group, "/name"),
                        output::text(group, "/limit"),
                        group["holders"].as_array().map_or(0, Vec::len).to_string(),
                        output::text(group, "/waiting"),
                        if jobs.is_empty() { "-".into() } else { jobs },
                    ]);
                }
                table.render()
            });
        }
        GroupsVerb::Get { name } => {
            let value = client
                .get(
                    &format!("/api/v1/concurrency-groups/{}", segment(&name)),
                    &[],
                )
                .await?;
            connection.print(&value, output::yaml);
        }
        GroupsVerb::Put {
            name,
            limit,
            description,
        } => {
            let mut body = json!({ "limit": limit });
            if let Some(description) = description {
                body["description"] = Value::String(description);
            }
            let value = client
                .send(
                    Method::PUT,
                    &format!("/api/v1/concurrency-groups/{}", segment(&name)),
                    &[],
                    Some(&body),
                )
                .await?;
            connection.print(&value, |g| {
                format!(
                    "concurrency group {} saved (limit {})",
                    output::text(g, "/name"),
                    output::text(g, "/limit")
                )
            });
        }
        GroupsVerb::Delete { name } => {
            client
                .send(
                    Method::DELETE,
                    &format!("/api/v1/concurrency-groups/{}", segment(&name)),
                    &[],
                    None,
                )
                .await?;
            connection.print(&json!({ "deleted": name }), |_| {
                format!("concurrency group {name} deleted")
            });
        }
    }
    Ok(())
}
