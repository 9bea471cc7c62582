//! Jobs made of steps (workflows): the step definitions, their validation, and the rule that
//! decides, from the states of a step's children, whether the run waits, releases more items,
//! moves to its next step, or ends. The store applies these decisions under the run's lock.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::job::{JobName, Target, check_target};
use crate::{TaskState, ValidationErrors};

/// The most steps a job may have.
pub const MAX_STEPS: usize = 50;
/// The most children of one `parallel` step.
pub const MAX_PARALLEL_CHILDREN: usize = 100;
/// The most items a `for_each` step fans out to; a longer list fails the run.
pub const MAX_ITEMS: usize = 100_000;
/// The largest `inputs` (earlier steps' results) a child is dispatched with, serialised; a run
/// whose inputs would be larger fails with that reason instead of truncating them.
pub const MAX_INPUTS_BYTES: usize = 256 * 1024;
/// How many items of a `for_each` step are open at once when the step does not say.
pub const DEFAULT_MAX_PARALLEL: u32 = 100;

/// What a failed (or cancelled) child does to its run.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The run fails: its open children are cancelled and no later step starts.
    #[default]
    Stop,
    /// The step's other children go on and the later steps run; the run ends
    /// `completed_with_errors`. For a `for_each` step, the same as `on_item_failure: continue`.
    Continue,
}

/// What a failed item of a `for_each` step does to its step.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnItemFailure {
    /// As [`OnFailure`]: the step (and the run) stops.
    #[default]
    Stop,
    /// The other items go on; the run ends `completed_with_errors`.
    Continue,
}

/// One named child of a `parallel` step, with its own target and payload.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParallelChild {
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub target: Target,
    /// Laid over the run's payload key by key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub payload: Option<Value>,
}

/// One step of a job made of steps: exactly one of `target` (one child), `parallel` (several
/// named children) or `for_each` with `target` (one child per item of an earlier step's
/// `result.items`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique within the job; it names the step's result in later steps' `inputs`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub target: Option<Target>,
    /// For a single-target or `for_each` step: laid over the run's payload key by key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub payload: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<Vec<ParallelChild>>,
    /// The earlier step whose `result.items` this step fans out over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    /// At most this many items open at once, cluster-wide (1–10000, default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_item_failure: Option<OnItemFailure>,
    #[serde(default)]
    pub on_failure: OnFailure,
    /// The step's children are overdue (an `overdue` alert naming the run, the step and the
    /// child) when still open this long after the step started; at most the job's `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<crate::Span>,
    /// A concurrency group the step's children share with every task in it: each child waits
    /// for one of its slots before its first dispatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<String>, pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    )]
    pub concurrency_group: Option<crate::GroupName>,
    /// Skip if unchanged (a single-target step only): its child is dispatched with
    /// `last_fingerprint`, and when it reports the same fingerprint (or `unchanged: true`) the
    /// run ends `completed` with outcome `unchanged` and no later step runs. Its fingerprint
    /// becomes the job's when the run completes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_if_unchanged: bool,
}

/// What a step fans out to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepKind<'a> {
    Single(&'a Target),
    Parallel(&'a [ParallelChild]),
    ForEach {
        source: &'a str,
        target: &'a Target,
        max_parallel: u32,
        on_item_failure: OnItemFailure,
    },
}

impl Step {
    /// What the step fans out to; `None` only for a step that never passed validation.
    pub fn kind(&self) -> Option<StepKind<'_>> {
        match (&self.target, &self.parallel, &self.for_each) {
            (Some(target), None, None) => Some(StepKind::Single(target)),
            (None, Some(children), None) => Some(StepKind::Parallel(children)),
            (Some(target), None, Some(source)) => Some(StepKind::ForEach {
                source,
                target,
                max_parallel: self.max_parallel.unwrap_or(DEFAULT_MAX_PARALLEL),
                on_item_failure: self.on_item_failure.unwrap_or_default(),
            }),
            _ => None,
        }
    }

    /// The target and payload of the child named `child` of this step (for a `for_each`
    /// step, any item).
    pub fn child_target(&self, child: &str) -> Option<(&Target, Option<&Value>)> {
        match self.kind()? {
            StepKind::Single(target) | StepKind::ForEach { target, .. } => {
                Some((target, self.payload.as_ref()))
            }
            StepKind::Parallel(children) => children
                .iter()
                .find(|c| c.name == child)
                .map(|c| (&c.target, c.payload.as_ref())),
        }
    }
}

/// Checks a job's steps, naming each bad field (`steps[2].parallel[0].target.url`), and returns
/// them with their defaults filled in.
pub(crate) fn check_steps(errors: &mut ValidationErrors, steps: Vec<Step>) -> Vec<Step> {
    if steps.is_empty() {
        errors.push("steps", "a job made of steps needs at least one step");
    }
    if steps.len() > MAX_STEPS {
        errors.push("steps", format!("at most {MAX_STEPS} steps"));
    }
    let mut names = HashSet::new();
    let mut checked = Vec::with_capacity(steps.len());
    for (i, mut step) in steps.into_iter().enumerate() {
        let at = format!("steps[{i}]");
        check_name(errors, &format!("{at}.name"), &step.name);
        if !names.insert(step.name.clone()) {
            errors.push(
                format!("{at}.name"),
                format!("step `{}` is named twice", step.name),
            );
        }
        if let Some(payload) = &step.payload
            && !payload.is_object()
        {
            errors.push(format!("{at}.payload"), "must be a JSON object");
        }
        match (&step.target, &step.parallel, &step.for_each) {
            (Some(_), Some(_), _) | (None, Some(_), Some(_)) => errors.push(
                at.clone(),
                "a step has one of `target`, `parallel`, or `for_each` with `target`",
            ),
            (None, None, _) => errors.push(
                format!("{at}.target"),
                "a step needs a `target`, or `parallel` children",
            ),
            (None, Some(children), None) => {
                if step.payload.is_some() {
                    errors.push(
                        format!("{at}.payload"),
                        "a parallel step's payloads belong to its children",
                    );
                }
                check_children(errors, &at, children);
            }
            (Some(target), None, for_each) => {
                check_target(errors, &format!("{at}.target"), target);
                if let Some(source) = for_each {
                    // Only an earlier step's result can be iterated: its name is already known.
                    if !names.contains(source) || *source == step.name {
                        errors.push(
                            format!("{at}.for_each"),
                            format!("`{source}` is not the name of an earlier step"),
                        );
                    }
                    let max = step.max_parallel.get_or_insert(DEFAULT_MAX_PARALLEL);
                    if !(1..=10_000).contains(max) {
                        errors.push(format!("{at}.max_parallel"), "must be between 1 and 10000");
                    }
                    step.on_item_failure.get_or_insert_default();
                }
            }
        }
        if step.skip_if_unchanged && !matches!(step.kind(), Some(StepKind::Single(_))) {
            errors.push(
                format!("{at}.skip_if_unchanged"),
                "only a single-target step (a `target` without `for_each`) reports one fingerprint",
            );
        }
        if step.for_each.is_none() {
            if step.max_parallel.is_some() {
                errors.push(format!("{at}.max_parallel"), "belongs to a `for_each` step");
            }
            if step.on_item_failure.is_some() {
                errors.push(
                    format!("{at}.on_item_failure"),
                    "belongs to a `for_each` step",
                );
            }
        }
        checked.push(step);
    }
    checked
}

fn check_children(errors: &mut ValidationErrors, at: &str, children: &[ParallelChild]) {
    if children.is_empty() {
        errors.push(
            format!("{at}.parallel"),
            "a parallel step needs at least one child",
        );
    }
    if children.len() > MAX_PARALLEL_CHILDREN {
        errors.push(
            format!("{at}.parallel"),
            format!("at most {MAX_PARALLEL_CHILDREN} children"),
        );
    }
    let mut names = HashSet::new();
    for (j, child) in children.iter().enumerate() {
        let at = format!("{at}.parallel[{j}]");
        check_name(errors, &format!("{at}.name"), &child.name);
        if !names.insert(child.name.as_str()) {
            errors.push(
                format!("{at}.name"),
                format!("child `{}` is named twice in its step", child.name),
            );
        }
        check_target(errors, &format!("{at}.target"), &child.target);
        if let Some(payload) = &child.payload
            && !payload.is_object()
        {
            errors.push(format!("{at}.payload"), "must be a JSON object");
        }
    }
}

/// Step and child names follow the rules of job names: they appear in URLs and in `inputs`.
fn check_name(errors: &mut ValidationErrors, field: &str, name: &str) {
    if name.parse::<JobName>().is_err() {
        errors.push(
            field,
            "a name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        );
    }
}

/// The key of item `index` of a `for_each` list: its `key` field when it has one (a string as
/// it is, anything else as JSON text), else its index.
pub fn item_key(item: &Value, index: usize) -> String {
    match item.get("key") {
        Some(Value::String(key)) => key.clone(),
        Some(Value::Null) | None => index.to_string(),
        Some(other) => other.to_string(),
    }
}

/// The items a `for_each` step fans out over, from the result of the step it names: its
/// `result.items` array, keyed by [`item_key`]. A missing, non-array, over-long list, or one
/// with a key twice, is refused with the reason the run fails with.
pub fn items_of(source: &str, result: Option<&Value>) -> Result<Vec<(String, Value)>, String> {
    let items = result
        .and_then(|r| r.get("items"))
        .and_then(Value::as_array)
        .ok_or_else(|| format!("step `{source}` reported no `result.items` array to iterate"))?;
    if items.len() > MAX_ITEMS {
        return Err(format!(
            "step `{source}` reported {} items, more than the limit of {MAX_ITEMS}",
            items.len()
        ));
    }
    let mut seen = HashSet::with_capacity(items.len());
    let mut keyed = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let key = item_key(item, i);
        if !seen.insert(key.clone()) {
            return Err(format!(
                "step `{source}` reported item key `{key}` more than once"
            ));
        }
        keyed.push((key, item.clone()));
    }
    Ok(keyed)
}

/// How many children of one step are in each state (`held`: items of a `for_each` step not yet
/// released because `max_parallel` are open).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StepTally {
    pub pending: u64,
    pub processing: u64,
    pub completed: u64,
    pub completed_with_errors: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub held: u64,
    /// Of the completed children, those whose input was unchanged (`skip_if_unchanged`).
    #[serde(skip)]
    pub unchanged: u64,
}

impl StepTally {
    /// Counts one child in `state`.
    pub fn add(&mut self, state: TaskState, held: bool, n: u64) {
        let slot = match state {
            TaskState::Pending if held => &mut self.held,
            TaskState::Pending => &mut self.pending,
            TaskState::Processing => &mut self.processing,
            TaskState::Completed => &mut self.completed,
            TaskState::CompletedWithErrors => &mut self.completed_with_errors,
            TaskState::Failed => &mut self.failed,
            TaskState::Cancelled => &mut self.cancelled,
        };
        *slot += n;
    }

    /// Children not yet ended, held ones included.
    pub fn open(&self) -> u64 {
        self.pending + self.processing + self.held
    }

    /// Every child of the step.
    pub fn total(&self) -> u64 {
        self.open() + self.completed + self.completed_with_errors + self.failed + self.cancelled
    }

    /// Children ended, in any terminal state.
    pub fn done(&self) -> u64 {
        self.total() - self.open()
    }

    /// The counts by state, as the API shows them (held items count as pending).
    pub fn by_state(&self) -> BTreeMap<&'static str, u64> {
        BTreeMap::from([
            ("pending", self.pending + self.held),
            ("processing", self.processing),
            ("completed", self.completed),
            ("completed_with_errors", self.completed_with_errors),
            ("failed", self.failed),
            ("cancelled", self.cancelled),
        ])
    }
}

/// What a run does after a child of its current step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepVerdict {
    /// Children are still open; release this many held items (zero for other steps).
    Wait { release: u64 },
    /// Every child ended and the step succeeded (`with_errors`: some child reported errors, or
    /// items failed under `on_item_failure: continue`): start the next step, or end the run.
    Advance { with_errors: bool },
    /// A child failed or was cancelled under `stop`: cancel the open children, fail the run.
    Fail { reason: String },
    /// Every child ended and a `skip_if_unchanged` step found its input unchanged: the run ends
    /// `completed` with outcome `unchanged`, and no later step runs.
    Unchanged,
}

/// Decides what a run does with its current `step` given its children's `tally`.
pub fn decide(step: &Step, tally: &StepTally) -> StepVerdict {
    let (max_parallel, continues) = match step.kind() {
        Some(StepKind::ForEach {
            max_parallel,
            on_item_failure,
            ..
        }) => (
            Some(u64::from(max_parallel)),
            on_item_failure == OnItemFailure::Continue || step.on_failure == OnFailure::Continue,
        ),
        _ => (None, step.on_failure == OnFailure::Continue),
    };
    let broken = tally.failed + tally.cancelled;
    if broken > 0 && !continues {
        let what = if max_parallel.is_some() {
            "item"
        } else {
            "child"
        };
        return StepVerdict::Fail {
            reason: format!(
                "step `{}`: {broken} {what}{} failed or cancelled (on_failure: stop)",
                step.name,
                if broken == 1 { "" } else { "s" }
            ),
        };
    }
    if tally.open() > 0 {
        let release = match max_parallel {
            Some(max) => max
                .saturating_sub(tally.pending + tally.processing)
                .min(tally.held),
            None => 0,
        };
        return StepVerdict::Wait { release };
    }
    if step.skip_if_unchanged && tally.unchanged > 0 {
        return StepVerdict::Unchanged;
    }
    StepVerdict::Advance {
        with_errors: tally.completed_with_errors + broken > 0,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{JobInput, JobSpec};

    fn parse(value: Value) -> Result<JobSpec, ValidationErrors> {
        let input: JobInput = serde_json::from_value(value).expect("input deserializes");
        JobSpec::try_from(input)
    }

    fn fields(errors: &ValidationErrors) -> Vec<&str> {
        errors.errors().iter().map(|e| e.field.as_str()).collect()
    }

    fn timetable() -> Value {
        json!({ "steps": [
            { "name": "download", "target": { "url": "http://extractor:8080/download" } },
            { "name": "verify", "target": { "url": "http://extractor:8080/verify" } },
            { "name": "upload", "parallel": [
                { "name": "timetable", "target": { "url": "http://core:8080/timetable" } },
                { "name": "faculty", "target": { "url": "http://core:8080/faculty" }, "payload": { "full": true } } ] },
            { "name": "post-upload", "target": { "url": "http://extractor:8080/done" } } ],
            "overlap": "skip" })
    }

    #[test]
    fn the_timetable_and_item_sync_workflows_are_valid_and_read_back() {
        let spec = parse(timetable()).expect("valid");
        assert!(spec.target.is_none());
        assert_eq!(spec.steps.len(), 4);
        assert!(matches!(spec.steps[2].kind(), Some(StepKind::Parallel(c)) if c.len() == 2));
        let written = serde_json::to_value(&spec).expect("serialises");
        assert!(written.get("target").is_none());
        let read: JobSpec = serde_json::from_value(written).expect("reads back");
        assert_eq!(read, spec);

        let spec = parse(json!({ "steps": [
            { "name": "list", "target": { "url": "http://iis:8080/projects" } },
            { "name": "ingest", "for_each": "list", "max_parallel": 50, "on_item_failure": "continue",
              "target": { "kind": "amqp", "exchange": "imrt", "routing_key": "item.update" } } ] }))
        .expect("valid");
        assert_eq!(
            spec.steps[1].kind(),
            Some(StepKind::ForEach {
                source: "list",
                target: spec.steps[1].target.as_ref().expect("target"),
                max_parallel: 50,
                on_item_failure: OnItemFailure::Continue,
            })
        );
        let defaulted = parse(json!({ "steps": [
            { "name": "list", "target": { "url": "http://iis/projects" } },
            { "name": "ingest", "for_each": "list", "target": { "url": "http://iis/ingest" } } ] }))
        .expect("valid");
        assert_eq!(defaulted.steps[1].max_parallel, Some(DEFAULT_MAX_PARALLEL));
        assert_eq!(
            defaulted.steps[1].on_item_failure,
            Some(OnItemFailure::Stop)
        );
    }

    #[test]
    fn every_bad_step_field_is_named() {
        let errors = parse(json!({ "steps": [
            { "name": "a", "target": { "url": "ftp://x" } },
            { "name": "a", "target": { "url": "http://x" } },
            { "name": "b", "parallel": [] },
            { "name": "c", "parallel": [
                { "name": "x", "target": { "url": "http://x" } },
                { "name": "x", "target": { "url": "nope" }, "payload": [1] } ] },
            { "name": "d", "for_each": "later", "max_parallel": 0, "target": { "url": "http://x" } },
            { "name": "later", "target": { "url": "http://x" }, "max_parallel": 3 },
            { "name": "e" },
            { "name": "f", "for_each": "f", "target": { "url": "http://x" } },
        ] }))
        .expect_err("invalid");
        assert_eq!(
            fields(&errors),
            [
                "steps[0].target.url",
                "steps[1].name",
                "steps[2].parallel",
                "steps[3].parallel[1].name",
                "steps[3].parallel[1].target.url",
                "steps[3].parallel[1].payload",
                "steps[4].for_each",
                "steps[4].max_parallel",
                "steps[5].max_parallel",
                "steps[6].target",
                "steps[7].for_each",
            ]
        );
    }

    #[test]
    fn a_job_has_a_target_or_steps_but_not_both_nor_neither() {
        let both = parse(json!({ "target": { "url": "http://x" },
                                 "steps": [ { "name": "a", "target": { "url": "http://x" } } ] }))
        .expect_err("both");
        assert_eq!(fields(&both), ["steps"]);
        let neither = parse(json!({ "payload": {} })).expect_err("neither");
        assert_eq!(fields(&neither), ["target"]);
        let empty = parse(json!({ "steps": [] })).expect_err("empty");
        assert_eq!(fields(&empty), ["steps"]);
    }

    #[test]
    fn item_keys_come_from_the_item_or_its_index_and_must_be_unique() {
        let items = items_of(
            "list",
            Some(&json!({ "items": [ { "key": "a" }, { "id": 7 }, { "key": 12 } ] })),
        )
        .expect("items");
        let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "1", "12"]);
        assert!(
            items_of(
                "list",
                Some(&json!({ "items": [ { "key": "a" }, { "key": "a" } ] }))
            )
            .is_err()
        );
        assert!(items_of("list", Some(&json!({ "count": 3 }))).is_err());
        assert!(items_of("list", None).is_err());
    }

    #[test]
    fn a_step_waits_releases_advances_or_fails_by_its_tally() {
        let spec = parse(json!({ "steps": [
            { "name": "list", "target": { "url": "http://iis/projects" } },
            { "name": "ingest", "for_each": "list", "max_parallel": 3, "on_item_failure": "continue",
              "target": { "url": "http://iis/ingest" } } ] }))
        .expect("valid");
        let (single, each) = (&spec.steps[0], &spec.steps[1]);
        let tally = |pending, processing, completed, failed, held| StepTally {
            pending,
            processing,
            completed,
            failed,
            held,
            ..StepTally::default()
        };
        assert_eq!(
            decide(each, &tally(0, 2, 5, 1, 10)),
            StepVerdict::Wait { release: 1 }
        );
        assert_eq!(
            decide(each, &tally(1, 2, 5, 0, 10)),
            StepVerdict::Wait { release: 0 }
        );
        assert_eq!(
            decide(each, &tally(0, 0, 5, 0, 1)),
            StepVerdict::Wait { release: 1 }
        );
        assert_eq!(
            decide(each, &tally(0, 0, 5, 2, 0)),
            StepVerdict::Advance { with_errors: true }
        );
        assert_eq!(
            decide(single, &tally(0, 0, 1, 0, 0)),
            StepVerdict::Advance { with_errors: false }
        );
        assert!(matches!(
            decide(single, &tally(0, 0, 0, 1, 0)),
            StepVerdict::Fail { .. }
        ));
    }

    #[test]
    fn on_failure_continue_lets_a_step_with_a_failed_child_advance_with_errors() {
        let spec = parse(json!({ "steps": [
            { "name": "download", "on_failure": "continue", "target": { "url": "http://x/d" } },
            { "name": "upload", "on_failure": "continue", "parallel": [
                { "name": "a", "target": { "url": "http://x/a" } },
                { "name": "b", "target": { "url": "http://x/b" } } ] },
            { "name": "list", "target": { "url": "http://x/l" } },
            { "name": "each", "for_each": "list", "on_failure": "continue",
              "target": { "url": "http://x/e" } } ] }))
        .expect("valid");
        let failed = StepTally {
            failed: 1,
            ..StepTally::default()
        };
        assert_eq!(
            decide(&spec.steps[0], &failed),
            StepVerdict::Advance { with_errors: true }
        );
        let one_open = StepTally {
            cancelled: 1,
            processing: 1,
            ..StepTally::default()
        };
        assert_eq!(
            decide(&spec.steps[1], &one_open),
            StepVerdict::Wait { release: 0 },
            "the other children go on"
        );
        assert_eq!(
            decide(&spec.steps[3], &failed),
            StepVerdict::Advance { with_errors: true },
            "on a for_each step it means on_item_failure: continue"
        );
        assert!(matches!(
            decide(&spec.steps[2], &failed),
            StepVerdict::Fail { .. }
        ));
    }

    #[test]
    fn a_step_deadline_is_at_most_the_job_timeout() {
        let spec = parse(json!({ "timeout": "1h", "steps": [
            { "name": "a", "deadline": "10m", "target": { "url": "http://x/a" } } ] }))
        .expect("valid");
        assert_eq!(spec.steps[0].deadline, Some(crate::Span::from_secs(600)));
        let errors = parse(json!({ "timeout": "1h", "steps": [
            { "name": "a", "target": { "url": "http://x/a" } },
            { "name": "b", "deadline": "2h", "target": { "url": "http://x/b" } },
            { "name": "c", "deadline": "0s", "target": { "url": "http://x/c" } } ] }))
        .expect_err("invalid");
        assert_eq!(fields(&errors), ["steps[1].deadline", "steps[2].deadline"]);
    }

    #[test]
    fn an_unchanged_input_at_a_skip_step_ends_the_run_and_nowhere_else() {
        let spec = parse(json!({ "steps": [
            { "name": "download", "skip_if_unchanged": true,
              "target": { "url": "http://extractor/download" } },
            { "name": "publish", "target": { "url": "http://extractor/publish" } } ] }))
        .expect("valid");
        let (download, publish) = (&spec.steps[0], &spec.steps[1]);
        let unchanged = StepTally {
            unchanged: 1,
            ..StepTally::default()
        };
        assert_eq!(decide(download, &unchanged), StepVerdict::Unchanged);
        assert_eq!(
            decide(download, &StepTally::default()),
            StepVerdict::Advance { with_errors: false },
            "a changed input goes on to the next step"
        );
        assert_eq!(
            decide(publish, &unchanged),
            StepVerdict::Advance { with_errors: false },
            "a step without skip_if_unchanged never ends its run early"
        );
        let open = StepTally {
            processing: 1,
            unchanged: 1,
            ..StepTally::default()
        };
        assert_eq!(decide(download, &open), StepVerdict::Wait { release: 0 });
    }

    #[test]
    fn skip_if_unchanged_belongs_to_a_single_target_step_or_a_job_with_a_target() {
        let errors = parse(json!({ "skip_if_unchanged": true, "steps": [
            { "name": "list", "target": { "url": "http://iis/projects" } },
            { "name": "fan", "skip_if_unchanged": true, "parallel": [
                { "name": "a", "target": { "url": "http://iis/a" } } ] },
            { "name": "each", "skip_if_unchanged": true, "for_each": "list",
              "target": { "url": "http://iis/ingest" } } ] }))
        .expect_err("invalid");
        assert_eq!(
            fields(&errors),
            [
                "steps[1].skip_if_unchanged",
                "steps[2].skip_if_unchanged",
                "skip_if_unchanged"
            ]
        );
        let job = parse(json!({ "skip_if_unchanged": true,
                                "target": { "url": "http://timetable/download" } }))
        .expect("valid");
        assert!(job.skip_if_unchanged);
        let stored = serde_json::to_value(&job).expect("serialises");
        assert_eq!(stored["skip_if_unchanged"], true);
        let plain = parse(json!({ "target": { "url": "http://a/b" } })).expect("valid");
        assert!(
            serde_json::to_value(&plain)
                .expect("serialises")
                .get("skip_if_unchanged")
                .is_none(),
            "a job without it is stored as before"
        );
    }
}
