//! Making the changes of a plan, after the server has vetted every job to be written.

use reqwest::Method;
use serde_json::Value;

use crate::client::{Client, Error, Result, segment};

use super::*;

/// Makes the changes, in order: each job's definition, then its triggers (deletions, then
/// replacements, then creations, in batches); pruned jobs last. `done` is how many changes were made before.
pub(super) async fn execute(
    client: &Client,
    plans: &[JobPlan],
    options: &Options,
    mut done: usize,
) -> Result<usize> {
    let mut ordered: Vec<&JobPlan> = plans
        .iter()
        .filter(|p| !matches!(p.action, Action::Delete))
        .collect();
    ordered.extend(plans.iter().filter(|p| matches!(p.action, Action::Delete)));
    for plan in ordered {
        let job_path = format!("/api/v1/jobs/{}", segment(&plan.name));
        let step = match &plan.action {
            Action::Create | Action::Update(_) => {
                client
                    .send(Method::PUT, &job_path, &[], plan.body.as_ref())
                    .await
            }
            Action::Delete => {
                let query = if options.cancel_open_tasks {
                    vec![("cancel_open_tasks", "true".to_owned())]
                } else {
                    Vec::new()
                };
                client.send(Method::DELETE, &job_path, &query, None).await
            }
            Action::Keep => Ok(Value::Null),
        };
        step.map_err(|e| stopped(done, e))?;
        if !matches!(plan.action, Action::Keep) {
            done += 1;
        }
        let rank = |c: &&TriggerChange| match c {
            TriggerChange::Delete { .. } => 0,
            TriggerChange::Replace { .. } => 1,
            TriggerChange::Create { .. } => 2,
        };
        let mut triggers: Vec<&TriggerChange> = plan.triggers.iter().collect();
        triggers.sort_by_key(rank);
        // New triggers go last, together: one request per batch of up to 1,000, each created
        // whole or not at all.
        let created: Vec<&Value> = triggers
            .iter()
            .filter_map(|c| match c {
                TriggerChange::Create { body, .. } => Some(body),
                _ => None,
            })
            .collect();
        for change in triggers {
            let step = match change {
                TriggerChange::Create { .. } => continue,
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
        for batch in created.chunks(TRIGGER_BATCH) {
            let body = serde_json::json!({ "triggers": batch });
            client
                .send(
                    Method::POST,
                    &format!("{job_path}/triggers:batch"),
                    &[],
                    Some(&body),
                )
                .await
                .map_err(|e| stopped(done, e))?;
            done += batch.len();
        }
    }
    Ok(done)
}

/// The most triggers `POST …/triggers:batch` takes at once.
const TRIGGER_BATCH: usize = 1_000;

/// Says how far `apply` got before a refused change; the exit code stays the refusal's.
pub(super) fn stopped(done: usize, error: Error) -> Error {
    eprintln!("pacer: apply stopped after {done} change(s); the rest were not made");
    error
}

/// Has the server validate every job definition to be written (`?dry_run=true`), for what only
/// it can check (such as the secrets it has), so a refused file changes nothing. A refusal that
/// only says a group is missing which `apply` creates first is not one.
pub(super) async fn vet(
    client: &Client,
    declared: &[Declared],
    plans: &[JobPlan],
    resources: &[super::resources::ResourceChange],
) -> Result<()> {
    let mut problems = Vec::new();
    for plan in plans {
        let (Action::Create | Action::Update(_), Some(body)) = (&plan.action, &plan.body) else {
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
                let fields = fields.iter().filter(|field| {
                    let name = field
                        .get("field")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    !super::resources::created_first(resources, name, body_of(plan))
                });
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

fn body_of(plan: &JobPlan) -> &Value {
    plan.body.as_ref().unwrap_or(&Value::Null)
}
