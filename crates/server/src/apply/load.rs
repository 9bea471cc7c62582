//! Reading the jobs files: every job and trigger validated by the domain's types, each mistake
//! named by file, job and field.

use std::fmt;
use std::path::{Path, PathBuf};

use pacer_domain::{JobName, ValidationErrors};
use serde_json::Value;

use crate::client::{Error, Result};

use super::*;

/// One job as the files declare it.
#[derive(Debug, Clone)]
pub(super) struct Declared {
    pub(super) file: PathBuf,
    pub(super) name: String,
    /// The `PUT` body, exactly as written.
    pub(super) body: Value,
    /// The definition with defaults filled in, for comparison.
    pub(super) normalized: Value,
    pub(super) triggers: Vec<DeclaredTrigger>,
}

#[derive(Debug, Clone)]
pub(super) struct DeclaredTrigger {
    pub(super) body: Value,
    pub(super) normalized: Value,
}

/// A mistake found in the files, named by file, job and field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Problem {
    pub(super) file: PathBuf,
    pub(super) job: Option<String>,
    pub(super) field: Option<String>,
    pub(super) message: String,
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
pub(super) fn files(path: &Path) -> Result<Vec<PathBuf>> {
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
pub(super) fn load(path: &Path) -> Result<Vec<Declared>> {
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
pub(super) fn parse_file(file: &Path, text: &str) -> (Vec<Declared>, Vec<Problem>) {
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
        if super::resources::kind_of(&item).is_some() {
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
pub(super) type FieldErrors = Vec<(String, String)>;

pub(super) fn field_errors(errors: &ValidationErrors) -> FieldErrors {
    errors
        .errors()
        .iter()
        .map(|e| (e.field.clone(), e.message.clone()))
        .collect()
}
