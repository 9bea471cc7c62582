//! `pacer subscriptions`: list, show (with lag and failures), create or change, and delete event
//! subscriptions.

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::Connection;
use super::output::{self, Table};
use crate::client::{Error, Result, segment};

#[derive(Debug, Subcommand)]
pub(crate) enum SubscriptionsVerb {
    /// Every subscription: its URL, filters, last delivery and failures in a row.
    List,
    /// One subscription, with its lag (events not yet accepted, age of the oldest).
    Get { name: String },
    /// Create a subscription or replace its definition (a replaced one keeps its position).
    Put {
        name: String,
        /// Where batches of events are posted (`--url` is the server's).
        #[arg(long, value_name = "URL")]
        endpoint: String,
        /// Only this job's events (repeat for several).
        #[arg(long = "job", value_name = "JOB")]
        jobs: Vec<String>,
        /// Only the events of jobs carrying this label, `key=value` (repeat: all must match).
        #[arg(long = "label", value_name = "KEY=VALUE", conflicts_with = "jobs")]
        labels: Vec<String>,
        /// Only this event kind, such as `task.state` (repeat for several).
        #[arg(long = "event", value_name = "KIND")]
        events: Vec<String>,
        /// Sign each batch with an HMAC keyed by this configured secret.
        #[arg(long, value_name = "SECRET", conflicts_with_all = ["bearer_secret", "jwt_audience"])]
        hmac_secret: Option<String>,
        /// Send this configured secret as a bearer token.
        #[arg(long, value_name = "SECRET", conflicts_with = "jwt_audience")]
        bearer_secret: Option<String>,
        /// Send a short-lived JWT signed by Pacer with this audience.
        #[arg(long, value_name = "AUDIENCE")]
        jwt_audience: Option<String>,
        /// Most events in one POST (1–1000).
        #[arg(long)]
        batch_size: Option<u32>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete a subscription; its deliveries stop.
    Delete { name: String },
}

fn joined(value: &Value) -> String {
    let text = value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .or_else(|| {
            value.as_object().map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
        })
        .unwrap_or_default();
    if text.is_empty() { "-".into() } else { text }
}

pub(crate) async fn subscriptions(connection: &Connection, verb: SubscriptionsVerb) -> Result<()> {
    let client = connection.client()?;
    match verb {
        SubscriptionsVerb::List => {
            let value = client.get("/api/v1/subscriptions", &[]).await?;
            connection.print(&value, |v| {
                let mut table = Table::new(&[
                    "NAME",
                    "URL",
                    "JOBS/LABELS",
                    "EVENTS",
                    "DELIVERED",
                    "FAILURES",
                ]);
                for s in v["items"].as_array().into_iter().flatten() {
                    let filter = if s["jobs"].is_array() {
                        joined(&s["jobs"])
                    } else {
                        joined(&s["labels"])
                    };
                    table.row(vec![
                        output::text(s, "/name"),
                        output::text(s, "/url"),
                        filter,
                        joined(&s["events"]),
                        output::time(s, "/delivered_at"),
                        output::text(s, "/consecutive_failures"),
                    ]);
                }
                table.render()
            });
        }
        SubscriptionsVerb::Get { name } => {
            let value = client
                .get(&format!("/api/v1/subscriptions/{}", segment(&name)), &[])
                .await?;
            connection.print(&value, output::yaml);
        }
        SubscriptionsVerb::Put {
            name,
            endpoint,
            jobs,
            labels,
            events,
            hmac_secret,
            bearer_secret,
            jwt_audience,
            batch_size,
            description,
        } => {
            let mut label_map = Map::new();
            for label in labels {
                let Some((key, value)) = label.split_once('=') else {
                    return Err(Error::Invalid(format!(
                        "--label {label}: write it as key=value"
                    )));
                };
                label_map.insert(key.to_owned(), Value::String(value.to_owned()));
            }
            let mut body = json!({ "url": endpoint });
            if !jobs.is_empty() {
                body["jobs"] = json!(jobs);
            }
            if !label_map.is_empty() {
                body["labels"] = Value::Object(label_map);
            }
            if !events.is_empty() {
                body["events"] = json!(events);
            }
            if let Some(secret) = hmac_secret {
                body["auth"] = json!({ "kind": "hmac", "secret": secret });
            } else if let Some(secret) = bearer_secret {
                body["auth"] = json!({ "kind": "bearer", "secret": secret });
            } else if let Some(audience) = jwt_audience {
                body["auth"] = json!({ "kind": "jwt", "audience": audience });
            }
            if let Some(size) = batch_size {
                body["batch_size"] = json!(size);
            }
            if let Some(description) = description {
                body["description"] = Value::String(description);
            }
            let value = client
                .send(
                    Method::PUT,
                    &format!("/api/v1/subscriptions/{}", segment(&name)),
                    &[],
                    Some(&body),
                )
                .await?;
            connection.print(&value, |s| {
                format!(
                    "subscription {} saved ({})",
                    output::text(s, "/name"),
                    output::text(s, "/url")
                )
            });
        }
        SubscriptionsVerb::Delete { name } => {
            client
                .send(
                    Method::DELETE,
                    &format!("/api/v1/subscriptions/{}", segment(&name)),
                    &[],
                    None,
                )
                .await?;
            connection.print(&json!({ "deleted": name }), |_| {
                format!("subscription {name} deleted")
            });
        }
    }
    Ok(())
}
