//! Calendars in `apply` files: an entry with `calendar: <name>` instead of `name:` declares an
//! exclusion calendar, its other fields the body of `PUT /api/v1/calendars/{name}`. Calendars are
//! written before any job, since triggers name them; a calendar the files do not name is left
//! alone (there is no pruning of calendars).

use std::path::Path;

use pacer_domain::{CalendarInput, CalendarName, CalendarSpec};
use reqwest::Method;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::client::{Client, Error, Result, segment};

/// The field that marks an entry of a file as a calendar.
pub(super) const KEY: &str = "calendar";

/// One calendar as the files declare it.
#[derive(Debug, Clone)]
pub(super) struct DeclaredCalendar {
    name: String,
    body: Value,
    spec: CalendarSpec,
}

/// What `apply` does with one declared calendar.
#[derive(Debug, Clone)]
pub(super) enum CalendarChange {
    Create(DeclaredCalendar),
    Update(DeclaredCalendar),
    Keep(String),
}

/// The calendars declared in `files`, validated; problems are named by file and calendar.
pub(super) fn load(files: &[std::path::PathBuf]) -> Result<Vec<DeclaredCalendar>> {
    let mut declared: Vec<DeclaredCalendar> = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue; // the jobs loader reports unreadable files
        };
        for item in entries(file, &text) {
            let mut fields = item;
            let label = match fields.remove(KEY) {
                Some(Value::String(name)) => name,
                _ => {
                    problems.push(format!("{}: calendar: must be a name", file.display()));
                    continue;
                }
            };
            if let Err(e) = label.parse::<CalendarName>() {
                problems.push(format!("{}: calendar `{label}`: {e}", file.display()));
                continue;
            }
            if declared.iter().any(|d| d.name == label) {
                problems.push(format!(
                    "{}: calendar `{label}`: is declared twice",
                    file.display()
                ));
                continue;
            }
            let body = Value::Object(fields);
            let spec = serde_json::from_value::<CalendarInput>(body.clone())
                .map_err(|e| e.to_string())
                .and_then(|input| {
                    CalendarSpec::try_from(input).map_err(|errors| errors.to_string())
                });
            match spec {
                Ok(spec) => declared.push(DeclaredCalendar {
                    name: label,
                    body,
                    spec,
                }),
                Err(message) => {
                    problems.push(format!("{}: calendar `{label}`: {message}", file.display()));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(declared)
    } else {
        Err(Error::Invalid(format!(
            "the calendars in the files are invalid; nothing was changed:\n  {}",
            problems.join("\n  ")
        )))
    }
}

/// The calendar entries of one file (JSON or YAML); a file that does not parse yields none (the
/// jobs loader reports it).
fn entries(file: &Path, text: &str) -> Vec<Map<String, Value>> {
    let document: Option<Value> = if file.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(text).ok()
    } else {
        serde_saphyr::from_str(text).ok()
    };
    match document {
        Some(Value::Array(items)) => items
            .into_iter()
            .filter_map(|item| match item {
                Value::Object(fields) if fields.contains_key(KEY) => Some(fields),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Compares each declared calendar with the server's.
pub(super) async fn plan(
    client: &Client,
    declared: Vec<DeclaredCalendar>,
) -> Result<Vec<CalendarChange>> {
    let mut changes = Vec::with_capacity(declared.len());
    for calendar in declared {
        let path = format!("/api/v1/calendars/{}", segment(&calendar.name));
        let current = match client.get(&path, &[]).await {
            Ok(view) => view,
            Err(error) if error.exit_code() == crate::client::exit::NOT_FOUND => {
                changes.push(CalendarChange::Create(calendar));
                continue;
            }
            Err(error) => return Err(error),
        };
        let same =
            serde_json::from_value::<CalendarSpec>(current).is_ok_and(|c| c == calendar.spec);
        changes.push(if same {
            CalendarChange::Keep(calendar.name)
        } else {
            CalendarChange::Update(calendar)
        });
    }
    Ok(changes)
}

/// The plan's lines, as `apply` shows them before the jobs'.
pub(super) fn render(changes: &[CalendarChange]) -> String {
    changes
        .iter()
        .map(|change| match change {
            CalendarChange::Create(c) => format!("+ calendar {}\n", c.name),
            CalendarChange::Update(c) => format!("~ calendar {}\n", c.name),
            CalendarChange::Keep(name) => format!("  calendar {name} (unchanged)\n"),
        })
        .collect()
}

/// One calendar as `export` writes it: its name first.
#[derive(Debug, Serialize)]
pub(super) struct Exported {
    calendar: String,
    #[serde(flatten)]
    definition: Map<String, Value>,
}

/// Every calendar of the cluster, in the form `apply` reads.
pub(super) async fn export(client: &Client) -> Result<Vec<Exported>> {
    let views = client.all_items("/api/v1/calendars", Some(500)).await?;
    Ok(views
        .into_iter()
        .filter_map(|mut view| {
            let fields = view.as_object_mut()?;
            let Some(Value::String(name)) = fields.remove("name") else {
                return None;
            };
            for server_managed in ["created_at", "updated_at"] {
                fields.remove(server_managed);
            }
            Some(Exported {
                calendar: name,
                definition: std::mem::take(fields),
            })
        })
        .collect())
}

/// Writes the created and changed calendars, included ones first; returns how many.
pub(super) async fn execute(client: &Client, changes: &[CalendarChange]) -> Result<usize> {
    let mut pending: Vec<&DeclaredCalendar> = changes
        .iter()
        .filter_map(|change| match change {
            CalendarChange::Create(c) | CalendarChange::Update(c) => Some(c),
            CalendarChange::Keep(_) => None,
        })
        .collect();
    let mut done = 0;
    // A calendar that includes one still to be written waits for it.
    while !pending.is_empty() {
        let ready = pending.iter().position(|c| {
            !c.spec
                .include
                .iter()
                .any(|inc| pending.iter().any(|p| &p.name == inc))
        });
        let calendar = pending.remove(ready.unwrap_or(0));
        let path = format!("/api/v1/calendars/{}", segment(&calendar.name));
        client
            .send(Method::PUT, &path, &[], Some(&calendar.body))
            .await?;
        done += 1;
    }
    Ok(done)
}
