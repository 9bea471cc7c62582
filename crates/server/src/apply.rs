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
//! A file may also declare the named resources jobs refer to, exclusion calendars
//! (`calendar: <name>`) and concurrency groups (`concurrency_group: <name>`), see [`resources`]:
//! they are written before the jobs and, with `--prune`, deleted after them.

mod execute;
mod export;
mod load;
mod normalize;
mod plan;
mod render;
mod resources;

use std::path::Path;

use crate::cli::output::emit;
use crate::client::{Client, Result};

use execute::*;
#[cfg(test)]
use export::Exported;
pub(crate) use export::export;
use load::*;
use normalize::*;
use plan::*;
use render::*;

/// How `apply` runs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    /// Show the changes, make none.
    pub(crate) dry_run: bool,
    /// Delete the jobs, calendars and concurrency groups no file declares.
    pub(crate) prune: bool,
    /// Pruning cancels the open tasks of the jobs it deletes.
    pub(crate) cancel_open_tasks: bool,
    /// Print the plan as JSON.
    pub(crate) json: bool,
    /// Print the plan as YAML.
    pub(crate) yaml: bool,
}

/// `pacer apply`: validates every file, shows the changes, and (unless a dry run) makes them:
/// the calendars and groups written first, then the jobs, then the pruned calendars and groups.
pub(crate) async fn apply(client: &Client, path: &Path, options: &Options) -> Result<()> {
    let declared = load(path)?;
    let declared_resources = resources::load(&files(path)?)?;
    let resource_changes = resources::plan(client, &declared_resources, options.prune).await?;
    let plans = plan(client, &declared, options.prune).await?;
    vet(client, &declared, &plans, &resource_changes).await?;
    let machine = options.json || options.yaml;
    if machine {
        let plan = plan_json(&resource_changes, &plans, options.dry_run);
        emit(&if options.yaml {
            crate::cli::output::yaml(&plan)
        } else {
            crate::cli::output::json(&plan)
        });
    } else {
        emit(render(&resource_changes, &plans).trim_end());
    }
    if options.dry_run {
        if !machine {
            emit("Dry run: nothing was changed.");
        }
        return Ok(());
    }
    let written = resources::write(client, &resource_changes).await?;
    let done = execute(client, &plans, options, written).await?;
    let done = resources::delete(client, &resource_changes, done).await?;
    if !machine && done > 0 {
        emit(&format!("Applied {done} change(s)."));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use pacer_domain::JobInput;
    use serde_json::{Value, json};

    use super::*;

    fn parse(text: &str) -> (Vec<Declared>, Vec<String>) {
        let (jobs, problems) = parse_file(Path::new("jobs.yaml"), text);
        (jobs, problems.iter().map(Problem::to_string).collect())
    }

    #[test]
    fn the_example_workflows_file_declares_its_two_jobs_without_a_problem() {
        let (jobs, problems) = parse(include_str!("../../../examples/workflows.yaml"));
        assert!(problems.is_empty(), "{problems:#?}");
        let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["timetable-extraction", "item-sync"]);
        assert_eq!(jobs[1].normalized["steps"][1]["max_parallel"], 50);
        assert_eq!(
            jobs[1].normalized["steps"][0]["target"]["auth"],
            json!({
                "kind": "oauth2",
                "token_url": "http://openam:8080/openam/oauth2/access_token",
                "client_id": "pacer",
                "client_secret": "iis_client",
                "scope": "imrt",
            })
        );
        // The step's skip_if_unchanged survives normalization, as the server stores it.
        assert_eq!(jobs[0].normalized["steps"][0]["skip_if_unchanged"], true);
        assert!(
            jobs[0].normalized["steps"][1]
                .get("skip_if_unchanged")
                .is_none()
        );
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
    - { kind: cron, expression: "0 0 0 30 2 *" }
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
            problems.iter().any(|p| p
                .starts_with("jobs.yaml: job `bad`: triggers[2].expression: never fires")),
            "a trigger that can never fire is refused before anything is written: {problems:#?}"
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
