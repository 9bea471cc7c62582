//! The plan shown to a person (a table of changes with their diffs) or to a script (JSON).

use serde::Serialize;
use serde_json::{Value, json};

use super::*;

/// Counts of created, changed, deleted and unchanged things (jobs and triggers).
#[derive(Debug, Default, Serialize)]
pub(super) struct Counts {
    pub(super) create: usize,
    pub(super) change: usize,
    pub(super) delete: usize,
    pub(super) unchanged_jobs: usize,
}

pub(super) fn counts(plans: &[JobPlan]) -> Counts {
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
pub(super) fn render(plans: &[JobPlan]) -> String {
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
pub(super) fn plan_json(plans: &[JobPlan], dry_run: bool) -> Value {
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
