//! What applying changes: per job, create, update or delete, and per trigger, keep, replace,
//! create or delete (a declared trigger is matched to an existing one by content).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::client::{Client, Result, segment};

use super::*;

/// Field by field differences, `path: old → new`.
pub(super) fn diff(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
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

pub(super) fn show(value: &Value) -> String {
    match value {
        Value::Null => "(none)".to_owned(),
        other => other.to_string(),
    }
}

pub(super) fn trigger_summary(trigger: &Value) -> String {
    let mut text = crate::cli::output::schedule(trigger);
    if let Some(misfire) = trigger.get("misfire").and_then(Value::as_str) {
        text.push_str(&format!(", misfire {misfire}"));
    }
    text
}

/// One change to a trigger.
#[derive(Debug, Clone)]
pub(super) enum TriggerChange {
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

/// What happens to one job or one named resource.
#[derive(Debug, Clone)]
pub(super) enum Action {
    Create,
    Update(Vec<String>),
    Keep,
    Delete,
}

#[derive(Debug, Clone)]
pub(super) struct JobPlan {
    pub(super) name: String,
    pub(super) action: Action,
    pub(super) body: Option<Value>,
    pub(super) triggers: Vec<TriggerChange>,
}

impl JobPlan {
    pub(super) fn changes(&self) -> bool {
        !matches!(self.action, Action::Keep) || !self.triggers.is_empty()
    }
}

/// Matches declared triggers to existing ones (see the module's notes).
pub(super) fn plan_triggers(
    existing: &[Value],
    declared: &[DeclaredTrigger],
) -> Vec<TriggerChange> {
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
pub(super) async fn plan(
    client: &Client,
    declared: &[Declared],
    prune: bool,
) -> Result<Vec<JobPlan>> {
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
                action: Action::Create,
                body: Some(job.body.clone()),
                triggers: plan_triggers(&[], &job.triggers),
            });
            continue;
        };
        let current = normalized_view(view, job_definition, normalize_job);
        let mut lines = Vec::new();
        diff("", &current, &job.normalized, &mut lines);
        let action = if lines.is_empty() {
            Action::Keep
        } else {
            Action::Update(lines)
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
                action: Action::Delete,
                body: None,
                triggers: Vec::new(),
            });
        }
    }
    Ok(plans)
}
