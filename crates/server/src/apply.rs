//! Declarative jobs: `pacer apply` makes the cluster's jobs and triggers match a set of files,
//! `pacer export` writes the current definitions in the same format.
//!
//! A file is a list of jobs, each its `name`, the fields of `PUT /api/v1/jobs/{name}` and
//! `triggers:` (each the body of `POST …/triggers`). Definitions stay JSON values: what a file
//! says is sent to the server as written. The domain types are used to validate them before
//! anything is written, and to compare them with what the server holds, defaults filled in on
//! both sides; of a view from the server, the definition is the fields the input type reads.
//! What only the server can check (the secrets it has) it checks with `PUT …?dry_run=true` for
//! every job to be written, before the first write, so a refused file changes nothing.
//!
//! Triggers have ids the server assigns, so a declared trigger is matched to an existing one
//! of its job by content (its whole definition, defaults filled in). A declared trigger left
//! unmatched replaces an unmatched existing one of the same kind in place (`PUT`, which keeps
//! the trigger's id and history); the rest are created or deleted.
//! Applying the same files twice therefore changes nothing the second time and writes nothing.
//!
//! A file may also declare exclusion calendars (`calendar: <name>`, see [`calendars`]); they
//! are written before the jobs whose triggers name them.

mod calendars;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use pacer_domain::{JobInput, JobName, JobSpec, TriggerInput, TriggerSpec, ValidationErrors};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::cli::output::emit;
use crate::client::{Client, Error, Result, segment};

/// Fields of a job view the server manages; everything else is the definition.
const JOB_SERVER_FIELDS: [&str; 5] = ["name", "version", "paused", "created_at", "updated_at"];
/// Fields of a trigger view the server manages.
const TRIGGER_SERVER_FIELDS: [&str; 8] = [
    "id",
    "job",
    "paused",
    "next_fire_at",
    "last_fired_at",
    "skipped",
    "created_at",
    "updated_at",
];

/// How `apply` runs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    /// Show the changes, make none.
    pub(crate) dry_run: bool,
    /// Delete the jobs no file names.
    pub(crate) prune: bool,
    /// Pruning cancels the open tasks of the jobs it deletes.
    pub(crate) cancel_open_tasks: bool,
    /// Print the plan as JSON.
    pub(crate) json: bool,
}

/// One job as the files declare it.
#[derive(Debug, Clone)]
struct Declared {
    file: PathBuf,
    name: String,
    /// The `PUT` body, exactly as written.
    body: Value,
    /// The definition with defaults filled in, for comparison.
    normalized: Value,
    triggers: Vec<DeclaredTrigger>,
}

#[derive(Debug, Clone)]
struct DeclaredTrigger {
    body: Value,
    normalized: Value,
}

/// A mistake found in the files, named by file, job and field.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Problem {
    file: PathBuf,
    job: Option<String>,
    field: Option<String>,
    message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(job) = &self.job {
            write!(f, ": job `{job}`")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The jobs files under `path`: the file itself, or the `.yaml`, `.yml` and `.json` files of a
/// directory in name order.
fn files(path: &Path) -> Result<Vec<PathBuf>> {
    let metadata = std::fs::metadata(path)
        .map_err(|e| Error::Usage(format!("cannot read {}: {e}", path.display())))?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let entries = std::fs::read_dir(path)
        .map_err(|e| Error::Usage(format!("cannot read {}: {e}", path.display())))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| Error::Usage(format!("cannot read {}: {e}", path.display())))?;
        let file = entry.path();
        let wanted = file
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if wanted && file.is_file() {
            files.push(file);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::Usage(format!(
            "{} holds no .yaml, .yml or .json file",
            path.display()
        )));
    }
    Ok(files)
}

/// Reads and validates every job under `path`. Either every job is valid, or the answer names
/// every problem found.
fn load(path: &Path) -> Result<Vec<Declared>> {
    let mut declared: Vec<Declared> = Vec::new();
    let mut problems = Vec::new();
    for file in files(path)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| Error::Usage(format!("cannot read {}: {e}", file.display())))?;
        let (jobs, mut found) = parse_file(&file, &text);
        problems.append(&mut found);
        for job in jobs {
            if let Some(first) = declared.iter().find(|d| d.name == job.name) {
                problems.push(Problem {
                    file: job.file.clone(),
                    job: Some(job.name.clone()),
                    field: Some("name".into()),
                    message: format!("is declared twice (also in {})", first.file.display()),
                });
            } else {
                declared.push(job);
            }
        }
    }
    if problems.is_empty() {
        Ok(declared)
    } else {
        let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
        Err(Error::Invalid(format!(
            "the jobs files are invalid; nothing was changed:\n  {}",
            lines.join("\n  ")
        )))
    }
}

/// Parses one file's text into its jobs and the problems found.
fn parse_file(file: &Path, text: &str) -> (Vec<Declared>, Vec<Problem>) {
    let problem = |job: Option<&str>, field: Option<String>, message: String| Problem {
        file: file.to_owned(),
        job: job.map(str::to_owned),
        field,
        message,
    };
    let json = file.extension().is_some_and(|e| e == "json");
    let document: std::result::Result<Value, String> = if json {
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))
    } else {
        serde_saphyr::from_str(text).map_err(|e| {
            let text = e.to_string();
            // An unquoted cron expression starting with `*` reads as a YAML alias.
            let hint = if text.contains("anchor or alias") {
                "\n(quote cron expressions: `expression: \"* * * * *\"`)"
            } else {
                ""
            };
            format!("not valid YAML: {text}{hint}")
        })
    };
    let items = match document {
        Err(message) => return (Vec::new(), vec![problem(None, None, message)]),
        Ok(Value::Null) => return (Vec::new(), Vec::new()),
        Ok(Value::Array(items)) => items,
        Ok(_) => {
            let message = "must be a list of jobs (each with a `name`)".to_owned();
            return (Vec::new(), vec![problem(None, None, message)]);
        }
    };
    let mut jobs = Vec::new();
    let mut problems = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        if item.get(calendars::KEY).is_some() {
            continue;
        }
        let Value::Object(mut fields) = item else {
            problems.push(problem(
                None,
                Some(format!("[{index}]")),
                "a job must be a mapping with a `name`".into(),
            ));
            continue;
        };
        let label = match fields.get("name") {
            Some(Value::String(name)) => name.clone(),
            _ => format!("#{}", index + 1),
        };
        let before = problems.len();
        let name = match fields.remove("name") {
            Some(Value::String(name)) => match name.parse::<JobName>() {
                Ok(_) => Some(name),
                Err(e) => {
                    problems.push(problem(Some(&label), Some("name".into()), e.to_string()));
                    None
                }
            },
            Some(_) => {
                problems.push(problem(
                    Some(&label),
                    Some("name".into()),
                    "must be a string".into(),
                ));
                None
            }
            None => {
                problems.push(problem(
                    Some(&label),
                    Some("name".into()),
                    "is required".into(),
                ));
                None
            }
        };
        let raw_triggers = match fields.remove("triggers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(triggers)) => triggers,
            Some(_) => {
                problems.push(problem(
                    Some(&label),
                    Some("triggers".into()),
                    "must be a list of triggers".into(),
                ));
                Vec::new()
            }
        };
        let body = Value::Object(fields);
        let normalized = match normalize_job(&body) {
            Ok(normalized) => Some(normalized),
            Err(errors) => {
                for (field, message) in errors {
                    problems.push(problem(Some(&label), Some(field), message));
                }
                None
            }
        };
        let mut triggers = Vec::new();
        for (position, trigger) in raw_triggers.into_iter().enumerate() {
            if !trigger.is_object() {
                problems.push(problem(
                    Some(&label),
                    Some(format!("triggers[{position}]")),
                    "a trigger must be a mapping with a `kind`".into(),
                ));
                continue;
            }
            match normalize_trigger(&trigger) {
                Ok(normalized) => triggers.push(DeclaredTrigger {
                    body: trigger,
                    normalized,
                }),
                Err(errors) => {
                    for (field, message) in errors {
                        let field = format!("triggers[{position}].{field}");
                        problems.push(problem(Some(&label), Some(field), message));
                    }
                }
            }
        }
        if let (Some(name), Some(normalized), true) = (name, normalized, problems.len() == before) {
            jobs.push(Declared {
                file: file.to_owned(),
                name,
                body,
                normalized,
                triggers,
            });
        }
    }
    (jobs, problems)
}

/// `(field, message)` pairs, as the API's validation problems name them.
type FieldErrors = Vec<(String, String)>;

fn field_errors(errors: &ValidationErrors) -> FieldErrors {
    errors
        .errors()
        .iter()
        .map(|e| (e.field.clone(), e.message.clone()))
        .collect()
}

/// Reads a value as `T`, naming the field a mistake is in (as the API does).
fn read<T: DeserializeOwned>(value: &Value) -> std::result::Result<T, FieldErrors> {
    serde_path_to_error::deserialize(value.clone()).map_err(|error| {
        let path = error.path().to_string();
        let message = error.into_inner().to_string();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        let field = match (path.as_str(), missing) {
            (".", Some(name)) => name.to_owned(),
            (".", None) => "definition".to_owned(),
            (path, Some(name)) => format!("{path}.{name}"),
            (path, None) => path.to_owned(),
        };
        vec![(field, message)]
    })
}

/// A job definition validated and with its defaults filled in, as the server would store it.
fn normalize_job(body: &Value) -> std::result::Result<Value, FieldErrors> {
    let input: JobInput = read(body)?;
    let spec = JobSpec::try_from(input).map_err(|e| field_errors(&e))?;
    serde_json::to_value(spec).map_err(|e| vec![("definition".into(), e.to_string())])
}

/// A trigger definition validated and with its defaults filled in.
fn normalize_trigger(body: &Value) -> std::result::Result<Value, FieldErrors> {
    let input: TriggerInput = read(body)?;
    let spec = TriggerSpec::try_from(input).map_err(|e| field_errors(&e))?;
    serde_json::to_value(spec).map_err(|e| vec![("definition".into(), e.to_string())])
}

/// The field names a struct reads: serde hands them to `deserialize_struct`, which is all this
/// deserializer answers.
fn struct_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error as _, Visitor};

    struct Fields<'a>(&'a std::cell::Cell<&'static [&'static str]>);

    impl<'de> serde::Deserializer<'de> for Fields<'_> {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Self::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.set(fields);
            Err(Self::Error::custom("fields read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let fields = std::cell::Cell::new(&[][..]);
    let _ = T::deserialize(Fields(&fields));
    fields.get()
}

/// A view without the fields the server manages: the definition as a client writes it. Only
/// fields the input type reads are kept (when it is a struct), so a field a newer server adds
/// to its views is not mistaken for part of the definition.
fn definition<T: DeserializeOwned>(view: &Value, server_fields: &[&str]) -> Map<String, Value> {
    let input_fields = struct_fields::<T>();
    let mut fields = view.as_object().cloned().unwrap_or_default();
    fields.retain(|key, _| {
        !server_fields.contains(&key.as_str())
            && (input_fields.is_empty() || input_fields.contains(&key.as_str()))
    });
    fields
}

fn job_definition(view: &Value) -> Map<String, Value> {
    definition::<JobInput>(view, &JOB_SERVER_FIELDS)
}

fn trigger_definition(view: &Value) -> Map<String, Value> {
    definition::<TriggerInput>(view, &TRIGGER_SERVER_FIELDS)
}

/// What the server holds, normalized as a declared definition is (or as it is, when this client
/// cannot read it: then it differs and is rewritten).
fn normalized_view(
    view: &Value,
    definition: fn(&Value) -> Map<String, Value>,
    normalize: fn(&Value) -> std::result::Result<Value, FieldErrors>,
) -> Value {
    let definition = Value::Object(definition(view));
    normalize(&definition).unwrap_or(definition)
}

/// Field by field differences, `path: old → new`.
fn diff(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let null = Value::Null;
                diff(
                    &child,
                    a.get(key).unwrap_or(&null),
                    b.get(key).unwrap_or(&null),
                    out,
                );
            }
        }
        _ if old != new => out.push(format!("{path}: {} → {}", show(old), show(new))),
        _ => {}
    }
}

fn show(value: &Value) -> String {
    match value {
        Value::Null => "(none)".to_owned(),
        other => other.to_string(),
    }
}

fn trigger_summary(trigger: &Value) -> String {
    let mut text = crate::cli::output::schedule(trigger);
    if let Some(misfire) = trigger.get("misfire").and_then(Value::as_str) {
        text.push_str(&format!(", misfire {misfire}"));
    }
    text
}

/// One change to a trigger.
#[derive(Debug, Clone)]
enum TriggerChange {
    Create {
        body: Value,
        summary: String,
    },
    Replace {
        id: String,
        body: Value,
        summary: String,
        diff: Vec<String>,
    },
    Delete {
        id: String,
        summary: String,
    },
}

/// What happens to one job.
#[derive(Debug, Clone)]
enum JobAction {
    Create,
    Update(Vec<String>),
    Keep,
    Delete,
}

#[derive(Debug, Clone)]
struct JobPlan {
    name: String,
    action: JobAction,
    body: Option<Value>,
    triggers: Vec<TriggerChange>,
}

impl JobPlan {
    fn changes(&self) -> bool {
        !matches!(self.action, JobAction::Keep) || !self.triggers.is_empty()
    }
}

/// Matches declared triggers to existing ones (see the module's notes).
fn plan_triggers(existing: &[Value], declared: &[DeclaredTrigger]) -> Vec<TriggerChange> {
    let current: Vec<(String, Value, Value)> = existing
        .iter()
        .map(|view| {
            let id = view
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let normalized = normalized_view(view, trigger_definition, normalize_trigger);
            (id, normalized, view.clone())
        })
        .collect();
    let mut used = vec![false; current.len()];
    let mut unmatched = Vec::new();
    for trigger in declared {
        let same = (0..current.len()).find(|&i| !used[i] && current[i].1 == trigger.normalized);
        match same {
            Some(i) => used[i] = true,
            None => unmatched.push(trigger),
        }
    }
    let mut changes = Vec::new();
    let kind = |v: &Value| v.get("kind").cloned();
    // A changed trigger replaces a leftover of the same kind in place; across kinds, the old
    // one is deleted and the new one created.
    let mut creates = Vec::new();
    for trigger in unmatched {
        let slot = (0..current.len())
            .find(|&i| !used[i] && kind(&current[i].1) == kind(&trigger.normalized));
        match slot {
            Some(i) => {
                used[i] = true;
                let mut lines = Vec::new();
                diff("", &current[i].1, &trigger.normalized, &mut lines);
                changes.push(TriggerChange::Replace {
                    id: current[i].0.clone(),
                    body: trigger.body.clone(),
                    summary: format!(
                        "{} → {}",
                        trigger_summary(&current[i].2),
                        trigger_summary(&trigger.normalized)
                    ),
                    diff: lines,
                });
            }
            None => creates.push(trigger),
        }
    }
    for (i, (id, _, view)) in current.iter().enumerate() {
        if !used[i] {
            changes.push(TriggerChange::Delete {
                id: id.clone(),
                summary: trigger_summary(view),
            });
        }
    }
    for trigger in creates {
        changes.push(TriggerChange::Create {
            body: trigger.body.clone(),
            summary: trigger_summary(&trigger.normalized),
        });
    }
    changes
}

/// The changes that make the cluster match the declared jobs.
async fn plan(client: &Client, declared: &[Declared], prune: bool) -> Result<Vec<JobPlan>> {
    let existing: BTreeMap<String, Value> = client
        .all_items("/api/v1/jobs", Some(500))
        .await?
        .into_iter()
        .filter_map(|job| {
            let name = job.get("name")?.as_str()?.to_owned();
            Some((name, job))
        })
        .collect();
    let mut plans = Vec::new();
    for job in declared {
        let Some(view) = existing.get(&job.name) else {
            plans.push(JobPlan {
                name: job.name.clone(),
                action: JobAction::Create,
                body: Some(job.body.clone()),
                triggers: plan_triggers(&[], &job.triggers),
            });
            continue;
        };
        let current = normalized_view(view, job_definition, normalize_job);
        let mut lines = Vec::new();
        diff("", &current, &job.normalized, &mut lines);
        let action = if lines.is_empty() {
            JobAction::Keep
        } else {
            JobAction::Update(lines)
        };
        let triggers = client
            .all_items(
                &format!("/api/v1/jobs/{}/triggers", segment(&job.name)),
                None,
            )
            .await?;
        plans.push(JobPlan {
            name: job.name.clone(),
            body: Some(job.body.clone()),
            action,
            triggers: plan_triggers(&triggers, &job.triggers),
        });
    }
    if prune {
        let named: BTreeSet<&str> = declared.iter().map(|d| d.name.as_str()).collect();
        for name in existing.keys().filter(|n| !named.contains(n.as_str())) {
            plans.push(JobPlan {
                name: name.clone(),
                action: JobAction::Delete,
                body: None,
                triggers: Vec::new(),
            });
        }
    }
    Ok(plans)
}

/// Counts of created, changed, deleted and unchanged things (jobs and triggers).
#[derive(Debug, Default, Serialize)]
struct Counts {
    create: usize,
    change: usize,
    delete: usize,
    unchanged_jobs: usize,
}

fn counts(plans: &[JobPlan]) -> Counts {
    let mut counts = Counts::default();
    for plan in plans {
        match plan.action {
            JobAction::Create => counts.create += 1,
            JobAction::Update(_) => counts.change += 1,
            JobAction::Delete => counts.delete += 1,
            JobAction::Keep if plan.triggers.is_empty() => counts.unchanged_jobs += 1,
            JobAction::Keep => {}
        }
        for trigger in &plan.triggers {
            match trigger {
                TriggerChange::Create { .. } => counts.create += 1,
                TriggerChange::Replace { .. } => counts.change += 1,
                TriggerChange::Delete { .. } => counts.delete += 1,
            }
        }
    }
    counts
}

/// The plan for people: `+` create, `~` change, `-` delete.
fn render(plans: &[JobPlan]) -> String {
    let mut out = String::new();
    for plan in plans.iter().filter(|p| p.changes()) {
        match &plan.action {
            JobAction::Create => out.push_str(&format!("+ job {}\n", plan.name)),
            JobAction::Update(lines) => {
                out.push_str(&format!("~ job {}\n", plan.name));
                for line in lines {
                    out.push_str(&format!("      {line}\n"));
                }
            }
            JobAction::Keep => out.push_str(&format!("~ job {}\n", plan.name)),
            JobAction::Delete => out.push_str(&format!("- job {}\n", plan.name)),
        }
        for trigger in &plan.triggers {
            match trigger {
                TriggerChange::Create { summary, .. } => {
                    out.push_str(&format!("    + trigger {summary}\n"));
                }
                TriggerChange::Replace {
                    id, summary, diff, ..
                } => {
                    out.push_str(&format!("    ~ trigger {id}: {summary}\n"));
                    for line in diff {
                        out.push_str(&format!("          {line}\n"));
                    }
                }
                TriggerChange::Delete { id, summary } => {
                    out.push_str(&format!("    - trigger {id}: {summary}\n"));
                }
            }
        }
    }
    let c = counts(plans);
    if c.create + c.change + c.delete == 0 {
        out.push_str(&format!(
            "No changes: {} job(s) already match.\n",
            c.unchanged_jobs
        ));
    } else {
        out.push_str(&format!(
            "{} to create, {} to change, {} to delete; {} job(s) unchanged.\n",
            c.create, c.change, c.delete, c.unchanged_jobs
        ));
    }
    out
}

/// The plan for scripts.
fn plan_json(plans: &[JobPlan], dry_run: bool) -> Value {
    let mut changes = Vec::new();
    let mut unchanged = Vec::new();
    for plan in plans {
        match &plan.action {
            JobAction::Create => {
                changes.push(
                    json!({ "action": "create_job", "job": plan.name, "definition": plan.body }),
                );
            }
            JobAction::Update(lines) => {
                changes.push(json!({ "action": "update_job", "job": plan.name, "diff": lines }));
            }
            JobAction::Delete => changes.push(json!({ "action": "delete_job", "job": plan.name })),
            JobAction::Keep if plan.triggers.is_empty() => unchanged.push(plan.name.clone()),
            JobAction::Keep => {}
        }
        for trigger in &plan.triggers {
            changes.push(match trigger {
                TriggerChange::Create { body, .. } => {
                    json!({ "action": "create_trigger", "job": plan.name, "definition": body })
                }
                TriggerChange::Replace { id, body, diff, .. } => json!({
                    "action": "replace_trigger", "job": plan.name, "trigger": id,
                    "definition": body, "diff": diff,
                }),
                TriggerChange::Delete { id, .. } => {
                    json!({ "action": "delete_trigger", "job": plan.name, "trigger": id })
                }
            });
        }
    }
    json!({
        "dry_run": dry_run,
        "changes": changes,
        "unchanged": unchanged,
        "counts": counts(plans),
    })
}

/// Makes the changes, in order: each job's definition, then its triggers (deletions, then
/// replacements, then creations); pruned jobs last.
async fn execute(client: &Client, plans: &[JobPlan], options: &Options) -> Result<usize> {
    let mut done = 0;
    let mut ordered: Vec<&JobPlan> = plans
        .iter()
        .filter(|p| !matches!(p.action, JobAction::Delete))
        .collect();
    ordered.extend(
        plans
            .iter()
            .filter(|p| matches!(p.action, JobAction::Delete)),
    );
    for plan in ordered {
        let job_path = format!("/api/v1/jobs/{}", segment(&plan.name));
        let step = match &plan.action {
            JobAction::Create | JobAction::Update(_) => {
                client
                    .send(Method::PUT, &job_path, &[], plan.body.as_ref())
                    .await
            }
            JobAction::Delete => {
                let query = if options.cancel_open_tasks {
                    vec![("cancel_open_tasks", "true".to_owned())]
                } else {
                    Vec::new()
                };
                client.send(Method::DELETE, &job_path, &query, None).await
            }
            JobAction::Keep => Ok(Value::Null),
        };
        step.map_err(|e| stopped(done, e))?;
        if !matches!(plan.action, JobAction::Keep) {
            done += 1;
        }
        let rank = |c: &&TriggerChange| match c {
            TriggerChange::Delete { .. } => 0,
            TriggerChange::Replace { .. } => 1,
            TriggerChange::Create { .. } => 2,
        };
        let mut triggers: Vec<&TriggerChange> = plan.triggers.iter().collect();
        triggers.sort_by_key(rank);
        for change in triggers {
            let step = match change {
                TriggerChange::Create { body, .. } => {
                    client
                        .send(
                            Method::POST,
                            &format!("{job_path}/triggers"),
                            &[],
                            Some(body),
                        )
                        .await
                }
                TriggerChange::Replace { id, body, .. } => {
                    let path = format!("{job_path}/triggers/{}", segment(id));
                    client.send(Method::PUT, &path, &[], Some(body)).await
                }
                TriggerChange::Delete { id, .. } => {
                    let path = format!("{job_path}/triggers/{}", segment(id));
                    client.send(Method::DELETE, &path, &[], None).await
                }
            };
            step.map_err(|e| stopped(done, e))?;
            done += 1;
        }
    }
    Ok(done)
}

/// Says how far `apply` got before a refused change; the exit code stays the refusal's.
fn stopped(done: usize, error: Error) -> Error {
    eprintln!("pacer: apply stopped after {done} change(s); the rest were not made");
    error
}

/// Has the server validate every job definition to be written (`?dry_run=true`), for what only
/// it can check (such as the secrets it has), so a refused file changes nothing.
async fn vet(client: &Client, declared: &[Declared], plans: &[JobPlan]) -> Result<()> {
    let mut problems = Vec::new();
    for plan in plans {
        let (JobAction::Create | JobAction::Update(_), Some(body)) = (&plan.action, &plan.body)
        else {
            continue;
        };
        let path = format!("/api/v1/jobs/{}", segment(&plan.name));
        let query = [("dry_run", "true".to_owned())];
        let refusal = match client.send(Method::PUT, &path, &query, Some(body)).await {
            Ok(_) => continue,
            Err(error) if error.exit_code() == crate::client::exit::INVALID => error,
            Err(error) => return Err(error),
        };
        let file = declared
            .iter()
            .find(|d| d.name == plan.name)
            .map(|d| d.file.clone())
            .unwrap_or_default();
        let problem = |field: Option<String>, message: String| Problem {
            file: file.clone(),
            job: Some(plan.name.clone()),
            field,
            message,
        };
        let Error::Status { problem: body, .. } = &refusal else {
            problems.push(problem(None, refusal.to_string()));
            continue;
        };
        let fields = body.get("errors").and_then(Value::as_array);
        match fields {
            Some(fields) if !fields.is_empty() => {
                for field in fields {
                    let text = |key: &str| {
                        field
                            .get(key)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned()
                    };
                    problems.push(problem(Some(text("field")), text("message")));
                }
            }
            _ => problems.push(problem(None, refusal.to_string())),
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    Err(Error::Invalid(format!(
        "the server refused job definitions; nothing was changed:\n  {}",
        lines.join("\n  ")
    )))
}

/// `pacer apply`: validates every file, shows the changes, and (unless a dry run) makes them.
pub(crate) async fn apply(client: &Client, path: &Path, options: &Options) -> Result<()> {
    let declared = load(path)?;
    let declared_calendars = calendars::load(&files(path)?)?;
    let calendar_changes = calendars::plan(client, declared_calendars).await?;
    let plans = plan(client, &declared, options.prune).await?;
    vet(client, &declared, &plans).await?;
    let calendar_lines = calendars::render(&calendar_changes);
    if !options.json && !calendar_lines.is_empty() {
        emit(calendar_lines.trim_end());
    }
    if options.json {
        emit(&crate::cli::output::json(&plan_json(
            &plans,
            options.dry_run,
        )));
    } else {
        emit(&render(&plans));
    }
    if options.dry_run {
        if !options.json {
            emit("Dry run: nothing was changed.");
        }
        return Ok(());
    }
    let done = calendars::execute(client, &calendar_changes).await?
        + execute(client, &plans, options).await?;
    if !options.json && done > 0 {
        emit(&format!("Applied {done} change(s)."));
    }
    Ok(())
}

/// One job as `export` writes it: its name first, its triggers last.
#[derive(Debug, Serialize)]
struct Exported {
    name: String,
    #[serde(flatten)]
    definition: Map<String, Value>,
    triggers: Vec<Map<String, Value>>,
}

/// `pacer export`: the named jobs (all when none is named) in the format `apply` reads.
/// An entry of an exported file: a calendar or a job.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Entry {
    Calendar(calendars::Exported),
    Job(Exported),
}

pub(crate) async fn export(client: &Client, names: &[String], json: bool) -> Result<String> {
    let jobs = if names.is_empty() {
        client.all_items("/api/v1/jobs", Some(500)).await?
    } else {
        let mut jobs = Vec::new();
        for name in names {
            jobs.push(
                client
                    .get(&format!("/api/v1/jobs/{}", segment(name)), &[])
                    .await?,
            );
        }
        jobs
    };
    let mut exported = Vec::new();
    for job in jobs {
        let name = job
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Unexpected(format!("a job without a name: {job}")))?
            .to_owned();
        let triggers = client
            .all_items(&format!("/api/v1/jobs/{}/triggers", segment(&name)), None)
            .await?;
        exported.push(Exported {
            name,
            definition: job_definition(&job),
            triggers: triggers.iter().map(trigger_definition).collect(),
        });
    }
    // The calendars first, so that the file applies in order; only with every job, since which
    // calendars some jobs need is not worked out.
    let mut document: Vec<Entry> = if names.is_empty() {
        calendars::export(client)
            .await?
            .into_iter()
            .map(Entry::Calendar)
            .collect()
    } else {
        Vec::new()
    };
    document.extend(exported.into_iter().map(Entry::Job));
    let exported = document;
    if json {
        let text = serde_json::to_string_pretty(&exported)
            .map_err(|e| Error::Unexpected(format!("cannot write JSON: {e}")))?;
        return Ok(format!("{text}\n"));
    }
    if exported.is_empty() {
        return Ok("[]\n".to_owned());
    }
    serde_saphyr::to_string(&exported)
        .map_err(|e| Error::Unexpected(format!("cannot write YAML: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Vec<Declared>, Vec<String>) {
        let (jobs, problems) = parse_file(Path::new("jobs.yaml"), text);
        (jobs, problems.iter().map(Problem::to_string).collect())
    }

    #[test]
    fn problems_name_the_file_the_job_and_the_field() {
        let (jobs, problems) = parse(
            r#"
- name: good
  target: { url: "http://x/run" }
- name: bad
  target: { url: "http://x/run" }
  retry: { max_attempts: 0 }
  colour: blue
  triggers:
    - { kind: cron, expression: "not a cron" }
    - { kind: interval }
- target: { url: "http://x/run" }
"#,
        );
        assert!(jobs.iter().any(|j| j.name == "good"));
        assert!(!jobs.iter().any(|j| j.name == "bad"));
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("jobs.yaml: job `bad`: colour: unknown field `colour`")),
            "{problems:#?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("jobs.yaml: job `bad`: triggers[0].expression: ")),
            "{problems:#?}"
        );
        assert!(
            problems.contains(
                &"jobs.yaml: job `bad`: triggers[1].every: is required for a interval trigger"
                    .to_owned()
            ) || problems
                .iter()
                .any(|p| p.starts_with("jobs.yaml: job `bad`: triggers[1].every")),
            "{problems:#?}"
        );
        assert!(
            problems.contains(&"jobs.yaml: job `#3`: name: is required".to_owned()),
            "{problems:#?}"
        );
    }

    #[test]
    fn a_file_that_is_not_a_list_or_not_yaml_is_refused() {
        let (_, problems) = parse("name: x\n");
        assert_eq!(
            problems,
            vec!["jobs.yaml: must be a list of jobs (each with a `name`)"]
        );
        let (_, problems) = parse("- name: [unclosed\n");
        assert!(
            problems[0].starts_with("jobs.yaml: not valid YAML"),
            "{problems:?}"
        );
        let (jobs, problems) = parse("");
        assert!(jobs.is_empty() && problems.is_empty());
        let (jobs, problems) = parse_file(
            Path::new("jobs.json"),
            r#"[{"name": "j", "target": {"url": "http://x"}, "triggers": [{"kind": "once", "at": "2027-01-01T00:00:00Z"}]}]"#,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(jobs[0].triggers.len(), 1);
        let (_, problems) = parse_file(Path::new("jobs.json"), "[{");
        assert!(
            problems[0]
                .to_string()
                .starts_with("jobs.json: not valid JSON")
        );
    }

    #[test]
    fn an_exported_definition_normalizes_to_the_declared_one() {
        let (jobs, problems) = parse(
            r#"
- name: sync
  target: { url: "http://x/run", auth: { kind: jwt, audience: registry } }
  repoll_interval: 1m
  retry: { max_attempts: 5 }
  labels: { team: a }
  triggers:
    - { kind: cron, expression: "* */15 * * * *", timezone: Europe/Berlin }
    - { kind: interval, every: 90s, start_at: "2026-12-01T00:00:00Z", misfire: catch_up }
"#,
        );
        assert!(problems.is_empty(), "{problems:?}");
        let job = &jobs[0];
        // What the server returns is the normalized definition plus its own fields.
        let mut view = job.normalized.as_object().cloned().expect("object");
        view.insert("name".into(), json!("sync"));
        view.insert("version".into(), json!(3));
        view.insert("paused".into(), json!(true));
        // A field a newer server adds to its views is not part of the definition.
        view.insert("open_tasks".into(), json!(2));
        let view = Value::Object(view);
        assert!(struct_fields::<JobInput>().contains(&"target"));
        assert!(!job_definition(&view).contains_key("open_tasks"));
        assert_eq!(
            normalized_view(&view, job_definition, normalize_job),
            job.normalized
        );
        let triggers: Vec<Value> = job
            .triggers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut view = t.normalized.as_object().cloned().expect("object");
                view.insert("id".into(), json!(format!("t{i}")));
                view.insert("next_fire_at".into(), json!("2026-12-01T00:00:00Z"));
                Value::Object(view)
            })
            .collect();
        assert!(plan_triggers(&triggers, &job.triggers).is_empty());

        // Export writes it as YAML that reads back the same.
        let exported = vec![Exported {
            name: "sync".into(),
            definition: job_definition(&view),
            triggers: triggers.iter().map(trigger_definition).collect(),
        }];
        let text = serde_saphyr::to_string(&exported).expect("yaml");
        let (again, problems) = parse(&text);
        assert!(problems.is_empty(), "{problems:?}\n{text}");
        assert_eq!(again[0].normalized, job.normalized, "{text}");
        assert_eq!(again[0].triggers.len(), 2);
        assert!(
            plan_triggers(&triggers, &again[0].triggers).is_empty(),
            "{text}"
        );
    }

    #[test]
    fn changed_triggers_replace_existing_ones_of_their_kind_and_the_rest_are_created_or_deleted() {
        let declared = |text: &str| parse(text).0.remove(0).triggers;
        let old = declared(
            r#"
- name: j
  target: { url: "http://x" }
  triggers:
    - { kind: once, at: "2026-12-01T00:00:00Z" }
    - { kind: cron, expression: "0 0 * * * *" }
    - { kind: interval, every: 5m }
"#,
        );
        let existing: Vec<Value> = old
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut view = t.normalized.as_object().cloned().expect("object");
                view.insert("id".into(), json!(format!("id{i}")));
                Value::Object(view)
            })
            .collect();
        let new = declared(
            r#"
- name: j
  target: { url: "http://x" }
  triggers:
    - { kind: interval, every: 10m }
    - { kind: cron, expression: "0 0 * * * *" }
    - { kind: cron, expression: "0 30 * * * *" }
"#,
        );
        let changes = plan_triggers(&existing, &new);
        let described: Vec<String> = changes
            .iter()
            .map(|c| match c {
                TriggerChange::Create { summary, .. } => format!("create {summary}"),
                TriggerChange::Replace { id, diff, .. } => format!("replace {id} {diff:?}"),
                TriggerChange::Delete { id, .. } => format!("delete {id}"),
            })
            .collect();
        assert_eq!(
            described,
            vec![
                r#"replace id2 ["every: \"5m\" → \"10m\""]"#.to_owned(),
                "delete id0".to_owned(),
                "create cron 0 30 * * * * (UTC), misfire fire_once".to_owned(),
            ],
        );
    }

    #[test]
    fn a_job_declared_twice_is_refused_naming_both_files() {
        let dir = std::env::temp_dir().join(format!("pacer-apply-twice-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let job = "- name: twice\n  target: { url: \"http://x\" }\n";
        std::fs::write(dir.join("a.yaml"), job).expect("a");
        std::fs::write(dir.join("b.yml"), job).expect("b");
        std::fs::write(dir.join("notes.txt"), "ignored").expect("txt");
        let error = load(&dir).expect_err("refused");
        let text = error.to_string();
        assert!(
            text.contains("b.yml: job `twice`: name: is declared twice"),
            "{text}"
        );
        assert!(text.contains("a.yaml)"), "{text}");
        assert_eq!(error.exit_code(), crate::client::exit::INVALID);
        std::fs::remove_dir_all(&dir).ok();
    }
}
