//! The plan shown to a person (a table of changes with their diffs) or to a script (JSON):
//! calendars and groups written first, then the jobs, then the calendars and groups pruned.

use serde::Serialize;
use serde_json::{Value, json};

use super::resources::{self, ResourceChange};
use super::*;

/// Counts of created, changed and deleted things (jobs, triggers, calendars and groups), and of
/// unchanged jobs.
#[derive(Debug, Default, Serialize)]
pub(super) struct Counts {
    pub(super) create: usize,
    pub(super) change: usize,
    pub(super) delete: usize,
    pub(super) unchanged_jobs: usize,
}

pub(super) fn counts(resources: &[ResourceChange], plans: &[JobPlan]) -> Counts {
    let mut counts = Counts::default();
    for change in resources {
        match change.action {
            Action::Create => counts.create += 1,
            Action::Update(_) => counts.change += 1,
            Action::Delete => counts.delete += 1,
            Action::Keep => {}
        }
    }
    for plan in plans {
        match plan.action {
            Action::Create => counts.create += 1,
            Action::Update(_) => counts.change += 1,
            Action::Delete => counts.delete += 1,
            Action::Keep if plan.triggers.is_empty() => counts.unchanged_jobs += 1,
            Action::Keep => {}
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
pub(super) fn render(resources: &[ResourceChange], plans: &[JobPlan]) -> String {
    let mut out = resources::render(resources, false);
    for plan in plans.iter().filter(|p| p.changes()) {
        match &plan.action {
            Action::Create => out.push_str(&format!("+ job {}\n", plan.name)),
            Action::Update(lines) => {
                out.push_str(&format!("~ job {}\n", plan.name));
                for line in lines {
                    out.push_str(&format!("      {line}\n"));
                }
            }
            Action::Keep => out.push_str(&format!("~ job {}\n", plan.name)),
            Action::Delete => out.push_str(&format!("- job {}\n", plan.name)),
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
    out.push_str(&resources::render(resources, true));
    let c = counts(resources, plans);
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
pub(super) fn plan_json(resources: &[ResourceChange], plans: &[JobPlan], dry_run: bool) -> Value {
    let mut changes = resources::changes_json(resources, false);
    let mut unchanged = Vec::new();
    for plan in plans {
        match &plan.action {
            Action::Create => {
                changes.push(
                    json!({ "action": "create_job", "job": plan.name, "definition": plan.body }),
                );
            }
            Action::Update(lines) => {
                changes.push(json!({ "action": "update_job", "job": plan.name, "diff": lines }));
            }
            Action::Delete => changes.push(json!({ "action": "delete_job", "job": plan.name })),
            Action::Keep if plan.triggers.is_empty() => unchanged.push(plan.name.clone()),
            Action::Keep => {}
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
    changes.extend(resources::changes_json(resources, true));
    json!({
        "dry_run": dry_run,
        "changes": changes,
        "unchanged": unchanged,
        "unchanged_resources": resources::unchanged_json(resources),
        "counts": counts(resources, plans),
    })
}
