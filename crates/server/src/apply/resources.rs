//! Named resources declared beside the jobs: an entry keyed by its kind instead of `name:`
//! (`calendar: <name>`, `concurrency_group: <name>`, `subscription: <name>`), its other fields the body of
//! `PUT <route>/{name}`. Jobs and triggers name them, so they are written before any job, and
//! deleted (with `--prune`, the ones no file declares) after every job is written or deleted.
//! Each kind is one [`Kind`] value: the rest of this module knows none of them by name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use pacer_domain::{
    CalendarInput, CalendarName, CalendarSpec, GroupInput, GroupName, GroupSpec, SubscriptionInput,
    SubscriptionSpec, ValidationErrors,
};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde::ser::SerializeMap;
use serde_json::{Map, Value};

use crate::client::{Client, Error, Result, exit, segment};

use super::*;

/// A kind of named resource an `apply` file can declare.
#[derive(Debug)]
pub(super) struct Kind {
    /// The field that marks an entry as this kind and holds its name; also its name in the
    /// plan (`+ calendar holidays`, `create_calendar`).
    pub(super) key: &'static str,
    /// The collection route; one resource is `{route}/{name}`.
    route: &'static str,
    /// The list route's page size, `None` when it answers every item at once.
    page: Option<u32>,
    /// Checks a name.
    check_name: fn(&str) -> std::result::Result<(), String>,
    /// A body validated and with its defaults filled in, comparable with [`Kind::current`].
    normalize: fn(&Value) -> std::result::Result<Value, String>,
    /// The definition part of a server view: the fields a body has.
    definition: fn(&Value) -> Map<String, Value>,
    /// The other resources of the kind a definition needs to exist first.
    needs: fn(&Value) -> Vec<String>,
}

/// Exclusion calendars; a calendar's `include` names calendars that must exist before it.
pub(super) static CALENDAR: Kind = Kind {
    key: "calendar",
    route: "/api/v1/calendars",
    page: Some(500),
    check_name: |name| {
        name.parse::<CalendarName>()
            .map(drop)
            .map_err(|e| e.to_string())
    },
    normalize: normalize::<CalendarInput, CalendarSpec>,
    definition: view_definition::<CalendarInput>,
    needs: |definition| names(definition.get("include")),
};

/// Concurrency groups; a job's `concurrency_group` names one.
pub(super) static GROUP: Kind = Kind {
    key: "concurrency_group",
    route: "/api/v1/concurrency-groups",
    page: None,
    check_name: |name| {
        name.parse::<GroupName>()
            .map(drop)
            .map_err(|e| e.to_string())
    },
    normalize: normalize::<GroupInput, GroupSpec>,
    definition: view_definition::<GroupInput>,
    needs: |_| Vec::new(),
};

/// Event subscriptions: receivers of the event log, filtered by job or label and event kind.
pub(super) static SUBSCRIPTION: Kind = Kind {
    key: "subscription",
    route: "/api/v1/subscriptions",
    page: None,
    check_name: |name| {
        if pacer_domain::validation::is_name(name) {
            Ok(())
        } else {
            Err("a subscription name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit".into())
        }
    },
    normalize: normalize::<SubscriptionInput, SubscriptionSpec>,
    definition: view_definition::<SubscriptionInput>,
    needs: |_| Vec::new(),
};

/// Every kind, in the order they are written.
pub(super) static KINDS: [&Kind; 3] = [&CALENDAR, &GROUP, &SUBSCRIPTION];

impl Kind {
    fn is(&self, other: &Kind) -> bool {
        self.key == other.key
    }

    /// Every resource of the kind the server holds, by name.
    async fn list(&self, client: &Client) -> Result<BTreeMap<String, Value>> {
        Ok(client
            .all_items(self.route, self.page)
            .await?
            .into_iter()
            .filter_map(|view| Some((view.get("name")?.as_str()?.to_owned(), view)))
            .collect())
    }

    fn path(&self, name: &str) -> String {
        format!("{}/{}", self.route, segment(name))
    }

    /// The normalized definition of a server view (or the definition as it is, when this
    /// client cannot read it: then it differs and is rewritten).
    fn current(&self, view: &Value) -> Value {
        let definition = Value::Object((self.definition)(view));
        (self.normalize)(&definition).unwrap_or(definition)
    }
}

/// The kind an entry of a file declares, if it is not a job. An entry with a `name` is a job,
/// whatever else it has: a job names its group with the group kind's key.
pub(super) fn kind_of(entry: &Value) -> Option<&'static Kind> {
    if entry.get("name").is_some() {
        return None;
    }
    KINDS.into_iter().find(|k| entry.get(k.key).is_some())
}

fn normalize<I, S>(body: &Value) -> std::result::Result<Value, String>
where
    I: DeserializeOwned,
    S: TryFrom<I, Error = ValidationErrors> + Serialize,
{
    let input: I = read(body).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        lines.join("; ")
    })?;
    let spec = S::try_from(input).map_err(|errors| errors.to_string())?;
    serde_json::to_value(spec).map_err(|e| e.to_string())
}

fn view_definition<I: DeserializeOwned>(view: &Value) -> Map<String, Value> {
    definition::<I>(view, &["name", "created_at", "updated_at"])
}

fn names(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// One resource as the files declare it.
#[derive(Debug, Clone)]
pub(super) struct DeclaredResource {
    pub(super) kind: &'static Kind,
    pub(super) name: String,
    body: Value,
    normalized: Value,
}

/// What `apply` does with one resource.
#[derive(Debug, Clone)]
pub(super) struct ResourceChange {
    pub(super) kind: &'static Kind,
    pub(super) name: String,
    pub(super) action: Action,
    /// The body to write, for a creation or an update.
    pub(super) body: Option<Value>,
    /// The resources of its kind it needs (declared, or as the server holds it when deleted).
    needs: Vec<String>,
}

/// The resources declared in `files`, validated; every problem is named by file, kind and name.
pub(super) fn load(files: &[PathBuf]) -> Result<Vec<DeclaredResource>> {
    let mut declared: Vec<DeclaredResource> = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue; // the jobs loader reports unreadable files
        };
        for (kind, mut fields) in entries(file, &text) {
            let file = file.display();
            let key = kind.key;
            let name = match fields.remove(key) {
                Some(Value::String(name)) => name,
                _ => {
                    problems.push(format!("{file}: {key}: must be a name"));
                    continue;
                }
            };
            if let Some(other) = KINDS.into_iter().find(|k| fields.contains_key(k.key)) {
                problems.push(format!(
                    "{file}: {key} `{name}`: {}: an entry declares one thing",
                    other.key
                ));
                continue;
            }
            if let Err(e) = (kind.check_name)(&name) {
                problems.push(format!("{file}: {key} `{name}`: {e}"));
                continue;
            }
            if declared.iter().any(|d| d.kind.is(kind) && d.name == name) {
                problems.push(format!("{file}: {key} `{name}`: is declared twice"));
                continue;
            }
            let body = Value::Object(fields);
            match (kind.normalize)(&body) {
                Ok(normalized) => declared.push(DeclaredResource {
                    kind,
                    name,
                    body,
                    normalized,
                }),
                Err(message) => problems.push(format!("{file}: {key} `{name}`: {message}")),
            }
        }
    }
    if problems.is_empty() {
        Ok(declared)
    } else {
        Err(Error::Invalid(format!(
            "the files are invalid; nothing was changed:\n  {}",
            problems.join("\n  ")
        )))
    }
}

/// The resource entries of one file (JSON or YAML); a file that does not parse yields none (the
/// jobs loader reports it).
fn entries(file: &Path, text: &str) -> Vec<(&'static Kind, Map<String, Value>)> {
    let document: Option<Value> = if file.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(text).ok()
    } else {
        serde_saphyr::from_str(text).ok()
    };
    let Some(Value::Array(items)) = document else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| match (kind_of(&item), item) {
            (Some(kind), Value::Object(fields)) => Some((kind, fields)),
            _ => None,
        })
        .collect()
}

/// Compares the declared resources with the server's, kind by kind; with `prune`, the ones no
/// file declares are deleted.
pub(super) async fn plan(
    client: &Client,
    declared: &[DeclaredResource],
    prune: bool,
) -> Result<Vec<ResourceChange>> {
    let mut changes = Vec::new();
    for kind in KINDS {
        let existing = kind.list(client).await?;
        let mine = declared.iter().filter(|d| d.kind.is(kind));
        for resource in mine.clone() {
            let action = match existing.get(&resource.name) {
                None => Action::Create,
                Some(view) => {
                    let mut lines = Vec::new();
                    diff("", &kind.current(view), &resource.normalized, &mut lines);
                    if lines.is_empty() {
                        Action::Keep
                    } else {
                        Action::Update(lines)
                    }
                }
            };
            changes.push(ResourceChange {
                kind,
                name: resource.name.clone(),
                action,
                body: Some(resource.body.clone()),
                needs: (kind.needs)(&resource.normalized),
            });
        }
        if prune {
            let named: BTreeSet<&str> = mine.map(|d| d.name.as_str()).collect();
            for (name, view) in existing.iter().filter(|(n, _)| !named.contains(n.as_str())) {
                changes.push(ResourceChange {
                    kind,
                    name: name.clone(),
                    action: Action::Delete,
                    body: None,
                    needs: (kind.needs)(view),
                });
            }
        }
    }
    Ok(changes)
}

/// Writes the created and changed resources, each after the ones it needs; returns how many.
pub(super) async fn write(client: &Client, changes: &[ResourceChange]) -> Result<usize> {
    let pending = changes
        .iter()
        .filter(|c| matches!(c.action, Action::Create | Action::Update(_)))
        .collect();
    let mut done = 0;
    for change in ordered(pending, |c, other| c.needs.contains(&other.name)) {
        client
            .send(
                Method::PUT,
                &change.kind.path(&change.name),
                &[],
                change.body.as_ref(),
            )
            .await
            .map_err(|e| stopped(done, e))?;
        done += 1;
    }
    Ok(done)
}

/// Deletes the pruned resources, each before the ones it needs; `done` is how many changes
/// were made before. A resource the server still sees in use (a group a job names, a calendar
/// a trigger or another calendar names) is refused with 409: `apply` stops and says which.
pub(super) async fn delete(
    client: &Client,
    changes: &[ResourceChange],
    mut done: usize,
) -> Result<usize> {
    let pending = changes
        .iter()
        .filter(|c| matches!(c.action, Action::Delete))
        .collect();
    for change in ordered(pending, |c, other| other.needs.contains(&c.name)) {
        let deleted = client
            .send(Method::DELETE, &change.kind.path(&change.name), &[], None)
            .await;
        match deleted {
            Ok(_) => done += 1,
            Err(error) => {
                if error.exit_code() == exit::CONFLICT {
                    eprintln!(
                        "pacer: {} `{}` was not pruned: the server still has it in use",
                        change.kind.key, change.name
                    );
                }
                return Err(stopped(done, error));
            }
        }
    }
    Ok(done)
}

/// `pending` in an order where none comes before one it `waits_for` (same kind only); a cycle,
/// which the server refuses anyway, is broken in declaration order.
fn ordered(
    mut pending: Vec<&ResourceChange>,
    waits_for: impl Fn(&ResourceChange, &ResourceChange) -> bool,
) -> Vec<&ResourceChange> {
    let mut order = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let ready = pending.iter().position(|c| {
            !pending
                .iter()
                .any(|other| other.kind.is(c.kind) && waits_for(c, other))
        });
        order.push(pending.remove(ready.unwrap_or(0)));
    }
    order
}

/// One resource as `export` writes it: its kind's key and name first, then its definition.
#[derive(Debug)]
pub(super) struct Exported {
    kind: &'static Kind,
    name: String,
    definition: Map<String, Value>,
}

impl Serialize for Exported {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.definition.len() + 1))?;
        map.serialize_entry(self.kind.key, &self.name)?;
        for (key, value) in &self.definition {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// The resources of the cluster in the form `apply` reads: every one of each kind (`None`), or
/// those named and what they need, transitively.
pub(super) async fn export(
    client: &Client,
    wanted: Option<&[(&'static Kind, String)]>,
) -> Result<Vec<Exported>> {
    let mut exported = Vec::new();
    for kind in KINDS {
        let views = kind.list(client).await?;
        let keep: BTreeSet<String> = match wanted {
            None => views.keys().cloned().collect(),
            Some(wanted) => {
                let mut keep = BTreeSet::new();
                let mut queue: Vec<String> = wanted
                    .iter()
                    .filter(|(k, _)| k.is(kind))
                    .map(|(_, name)| name.clone())
                    .collect();
                while let Some(name) = queue.pop() {
                    if let Some(view) = views.get(&name)
                        && keep.insert(name)
                    {
                        queue.extend((kind.needs)(view));
                    }
                }
                keep
            }
        };
        exported.extend(views.iter().filter(|(name, _)| keep.contains(*name)).map(
            |(name, view)| Exported {
                kind,
                name: name.clone(),
                definition: (kind.definition)(view),
            },
        ));
    }
    Ok(exported)
}

/// What a job definition and its triggers name of each kind.
pub(super) fn named_by(
    job: &Map<String, Value>,
    triggers: &[Map<String, Value>],
) -> Vec<(&'static Kind, String)> {
    let mut named: Vec<(&'static Kind, String)> = job
        .get("concurrency_group")
        .and_then(Value::as_str)
        .map(|group| (&GROUP, group.to_owned()))
        .into_iter()
        .collect();
    for trigger in triggers {
        named.extend(
            names(trigger.get("calendars"))
                .into_iter()
                .map(|c| (&CALENDAR, c)),
        );
    }
    named
}

/// The plan's lines for people: `+` create, `~` change (field by field), `-` delete.
pub(super) fn render(changes: &[ResourceChange], deletions: bool) -> String {
    let mut out = String::new();
    for change in changes
        .iter()
        .filter(|c| matches!(c.action, Action::Delete) == deletions)
    {
        let (key, name) = (change.kind.key, &change.name);
        match &change.action {
            Action::Create => out.push_str(&format!("+ {key} {name}\n")),
            Action::Update(lines) => {
                out.push_str(&format!("~ {key} {name}\n"));
                for line in lines {
                    out.push_str(&format!("      {line}\n"));
                }
            }
            Action::Keep => out.push_str(&format!("  {key} {name} (unchanged)\n")),
            Action::Delete => out.push_str(&format!("- {key} {name}\n")),
        }
    }
    out
}

/// The plan's changes for scripts (`create_calendar`, `update_concurrency_group`, …): the
/// writes, or the deletions.
pub(super) fn changes_json(changes: &[ResourceChange], deletions: bool) -> Vec<Value> {
    changes
        .iter()
        .filter(|c| matches!(c.action, Action::Delete) == deletions)
        .filter_map(|change| {
            let (key, name) = (change.kind.key, &change.name);
            let mut entry = Map::new();
            let verb = match &change.action {
                Action::Create => {
                    entry.insert("definition".into(), change.body.clone()?);
                    "create"
                }
                Action::Update(lines) => {
                    entry.insert("definition".into(), change.body.clone()?);
                    entry.insert("diff".into(), lines.clone().into());
                    "update"
                }
                Action::Delete => "delete",
                Action::Keep => return None,
            };
            entry.insert("action".into(), format!("{verb}_{key}").into());
            entry.insert(key.into(), name.clone().into());
            Some(Value::Object(entry))
        })
        .collect()
}

/// The resources left as they are, by kind (`{"calendar": ["holidays"]}`).
pub(super) fn unchanged_json(changes: &[ResourceChange]) -> Value {
    let mut unchanged = Map::new();
    for kind in KINDS {
        let names: Vec<Value> = changes
            .iter()
            .filter(|c| c.kind.is(kind) && matches!(c.action, Action::Keep))
            .map(|c| c.name.clone().into())
            .collect();
        unchanged.insert(kind.key.into(), names.into());
    }
    Value::Object(unchanged)
}

/// Whether a job's refusal of `field` only says a resource is missing that `apply` creates
/// first (a job naming a concurrency group declared in the same files).
pub(super) fn created_first(changes: &[ResourceChange], field: &str, job: &Value) -> bool {
    field == "concurrency_group"
        && job
            .get("concurrency_group")
            .and_then(Value::as_str)
            .is_some_and(|group| {
                changes.iter().any(|c| {
                    c.kind.is(&GROUP) && c.name == group && matches!(c.action, Action::Create)
                })
            })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pacer-resources-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn calendars_and_groups_are_read_beside_jobs_and_every_mistake_is_named() {
        let good = file(
            "good.yaml",
            "- name: job\n  target: { url: \"http://x\" }\n  concurrency_group: registry\n\
             - concurrency_group: registry\n  limit: 1\n\
             - calendar: holidays\n  exclude: [{ kind: yearly, date: \"--12-25\" }]\n",
        );
        let declared = load(std::slice::from_ref(&good)).expect("valid");
        let found: Vec<(&str, &str)> = declared
            .iter()
            .map(|d| (d.kind.key, d.name.as_str()))
            .collect();
        assert_eq!(
            found,
            [("concurrency_group", "registry"), ("calendar", "holidays")]
        );
        assert_eq!(declared[0].normalized, json!({ "limit": 1 }));

        let bad = file(
            "bad.yaml",
            "- concurrency_group: registry\n  limit: 0\n\
             - concurrency_group: \"-x\"\n  limit: 1\n\
             - concurrency_group: both\n  calendar: both\n  limit: 1\n\
             - concurrency_group: other\n  limit: 1\n  colour: blue\n\
             - calendar: holidays\n",
        );
        let error = load(&[good, bad]).expect_err("refused").to_string();
        for expected in [
            "bad.yaml: concurrency_group `registry`: is declared twice",
            "bad.yaml: concurrency_group `-x`: ",
            "bad.yaml: calendar `both`: concurrency_group: an entry declares one thing",
            "bad.yaml: concurrency_group `other`: colour: unknown field `colour`",
            "bad.yaml: calendar `holidays`: is declared twice",
        ] {
            assert!(error.contains(expected), "{expected}\n{error}");
        }
    }

    fn change(kind: &'static Kind, name: &str, action: Action, needs: &[&str]) -> ResourceChange {
        ResourceChange {
            kind,
            name: name.to_owned(),
            action,
            body: Some(json!({})),
            needs: needs.iter().map(|n| (*n).to_owned()).collect(),
        }
    }

    #[test]
    fn a_calendar_is_written_after_and_deleted_before_the_calendars_it_includes() {
        let changes = [
            change(&CALENDAR, "maintenance", Action::Create, &["holidays"]),
            change(&GROUP, "holidays", Action::Create, &[]),
            change(&CALENDAR, "holidays", Action::Create, &[]),
        ];
        let names = |order: Vec<&ResourceChange>| -> Vec<String> {
            order
                .iter()
                .map(|c| format!("{} {}", c.kind.key, c.name))
                .collect()
        };
        let writes = ordered(changes.iter().collect(), |c, other| {
            c.needs.contains(&other.name)
        });
        assert_eq!(
            names(writes),
            [
                "concurrency_group holidays",
                "calendar holidays",
                "calendar maintenance"
            ],
            "a group of the same name is not a calendar it needs"
        );
        let deletes = ordered(changes.iter().rev().collect(), |c, other| {
            other.needs.contains(&c.name)
        });
        assert_eq!(
            names(deletes),
            [
                "concurrency_group holidays",
                "calendar maintenance",
                "calendar holidays"
            ]
        );
    }
}
