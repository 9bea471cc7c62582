//! The operator verbs of `pacer` over the REST API (`jobs`, `tasks`, `triggers`, `alerts`,
//! `cluster`, `events`, `apply`, `export`, `scheduler`, `skips`, `messages`, `audit`, …): human
//! tables by default, the API's JSON unchanged with `-o json` (or as YAML with `-o yaml`), and
//! exit codes scripts can rely on (see [`crate::client::exit`]).

mod admin;
mod calendars;
mod events;
mod groups;
pub(crate) mod output;
mod runs;
mod subscriptions;
mod trigger_edit;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::apply;
use crate::client::{Client, Error, Result, exit, segment};
use output::Table;

/// Where the API is and who is calling; every verb takes these.
#[derive(Debug, Clone, Args)]
pub(crate) struct Connection {
    /// The base URL of any node of the cluster.
    #[arg(
        long,
        env = "PACER_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// A bearer token (`pacer token` mints one for development).
    #[arg(long, env = "PACER_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// `table` for people; `json` (the API's JSON, unchanged) or `yaml` (the same, as YAML) for
    /// scripts.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
}

/// How a verb prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
    Yaml,
}

/// Shown under every verb's `--help`.
const EXIT_CODES: &str = "Exit codes: 0 done, 1 server or network failure, 2 usage, \
3 not found (404), 4 invalid request or jobs file (400, 413, 415, 422), 5 conflict (409), \
6 unauthenticated or forbidden (401, 403).";

/// The verbs that talk to a running cluster.
#[derive(Debug, Subcommand)]
pub(crate) enum Remote {
    /// List, show, create or replace, run, pause, resume, summarize and delete jobs; retry their
    /// failed tasks.
    #[command(after_help = EXIT_CODES)]
    Jobs {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        verb: JobsVerb,
    },
    /// List, show, create, cancel, retry, release and report on tasks; a run's steps and
    /// children.
    #[command(after_help = EXIT_CODES)]
    Tasks {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        verb: TasksVerb,
    },
    /// List, show, create, replace, pause, resume and delete a job's triggers, preview their next
    /// fire times, and backfill past occurrences.
    #[command(after_help = EXIT_CODES)]
    Triggers {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        verb: TriggersVerb,
    },
    /// List, show, create or replace, and delete exclusion calendars.
    #[command(after_help = EXIT_CODES)]
    Calendars {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        verb: calendars::CalendarsVerb,
    },
    /// List, show, create or change, and delete concurrency groups.
    #[command(after_help = EXIT_CODES)]
    Groups {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        verb: groups::GroupsVerb,
    },
    /// List, show (with lag and failures), create or change, and delete event subscriptions.
    #[command(after_help = EXIT_CODES)]
    Subscriptions {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        verb: subscriptions::SubscriptionsVerb,
    },
    /// List, show, acknowledge and resolve alerts.
    #[command(after_help = EXIT_CODES)]
    Alerts {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        verb: AlertsVerb,
    },
    /// The cluster: its leader and nodes.
    #[command(after_help = EXIT_CODES)]
    Cluster {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        verb: ClusterVerb,
    },
    /// The scheduler: its standby, and running every job now.
    #[command(after_help = EXIT_CODES)]
    Scheduler {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        verb: admin::SchedulerVerb,
    },
    /// Runs that got no task (misfires, calendar exclusions, overlap refusals, …).
    #[command(after_help = EXIT_CODES)]
    Skips {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        verb: admin::SkipsVerb,
    },
    /// Send, list and show messages (the tasks of the jobs that subscribe to their type).
    #[command(after_help = EXIT_CODES)]
    Messages {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        verb: admin::MessagesVerb,
    },
    /// The audit log: who changed what, when, before and after.
    #[command(after_help = EXIT_CODES)]
    Audit {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        verb: admin::AuditVerb,
    },
    /// Who the token says the caller is, and its roles.
    #[command(after_help = EXIT_CODES)]
    Whoami {
        #[command(flatten)]
        connection: Connection,
    },
    /// Follow the cluster's event stream until interrupted (reconnects where it left off).
    #[command(after_help = EXIT_CODES)]
    Events {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        filter: events::Filter,
    },
    /// Make jobs and their triggers, calendars and concurrency groups match a jobs file (or
    /// every `.yaml`, `.yml` and `.json` file of a directory): shows the changes, then makes them.
    #[command(after_help = EXIT_CODES)]
    Apply {
        #[command(flatten)]
        connection: Connection,
        /// The jobs file or directory.
        #[arg(short = 'f', long = "file")]
        path: PathBuf,
        /// Show the changes without making them.
        #[arg(long)]
        dry_run: bool,
        /// Also delete the jobs, calendars and concurrency groups the files do not declare
        /// (calendars and groups after the jobs; one still in use is refused with exit code 5).
        #[arg(long)]
        prune: bool,
        /// With `--prune`, cancel the open tasks of the jobs it deletes (otherwise such a job is
        /// refused with exit code 5).
        #[arg(long, requires = "prune")]
        cancel_open_tasks: bool,
    },
    /// Print the current job definitions and triggers in the format `apply` reads (YAML; JSON
    /// with `--output json`), after the calendars and concurrency groups they need.
    #[command(after_help = EXIT_CODES)]
    Export {
        #[command(flatten)]
        connection: Connection,
        /// Only these jobs (default: all).
        jobs: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum JobsVerb {
    /// Jobs in name order.
    List {
        /// At most this many (1–500).
        #[arg(long)]
        limit: Option<u32>,
        /// The `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One job's definition.
    Get { name: String },
    /// Create or replace one job from a YAML or JSON file holding the body of
    /// `PUT /api/v1/jobs/{name}` (`pacer apply` does this for whole files of jobs).
    Put {
        name: String,
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Validate and show the result; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete a job and its triggers; refused (exit code 5) while it has open tasks.
    Delete {
        name: String,
        /// Cancel its open tasks first.
        #[arg(long)]
        cancel_open_tasks: bool,
    },
    /// How a job is doing: last run, last success, open tasks, recent figures, open alerts, next
    /// fire times.
    Summary {
        name: String,
        /// The figures' window in hours (default 24).
        #[arg(long)]
        window: Option<u32>,
        #[command(flatten)]
        watch: watch::Watch,
    },
    /// Retry a job's failed tasks (oldest first): a new task linked to each.
    RetryFailed {
        name: String,
        /// At most this many (1–1000).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Run a job now: creates a task and prints it.
    Run {
        name: String,
        /// A JSON object laid over the job's payload for this task.
        #[arg(long)]
        payload: Option<String>,
    },
    /// Pause a job: its triggers stop and it takes no new tasks.
    Pause { name: String },
    /// Resume a paused job.
    Resume { name: String },
    /// Forget the fingerprint of a job's last completed run (`skip_if_unchanged`), so that its
    /// next task does its work whatever its input.
    ResetFingerprint { name: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TasksVerb {
    /// Tasks, newest first.
    List {
        /// Only this job's tasks.
        #[arg(long)]
        job: Option<String>,
        /// Only tasks in this state (pending, processing, completed, …).
        #[arg(long)]
        state: Option<String>,
        /// Only tasks of this origin (trigger, api, manual, retry, message, …).
        #[arg(long)]
        origin: Option<String>,
        /// Only tasks that ended with this outcome (unchanged).
        #[arg(long)]
        outcome: Option<String>,
        /// Only the children of this run (a task of a job made of steps).
        #[arg(long)]
        run: Option<String>,
        /// Only tasks that are overdue (or, with `false`, not overdue).
        #[arg(long)]
        overdue: Option<bool>,
        /// Only tasks created at or after this time (RFC 3339).
        #[arg(long)]
        created_after: Option<String>,
        /// Only tasks created before this time (RFC 3339).
        #[arg(long)]
        created_before: Option<String>,
        /// Only tasks finished at or after this time (RFC 3339).
        #[arg(long)]
        finished_after: Option<String>,
        /// Only tasks finished before this time (RFC 3339).
        #[arg(long)]
        finished_before: Option<String>,
        /// At most this many (1–500, default 50).
        #[arg(long)]
        limit: Option<u32>,
        /// The `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One task with its attempts.
    Get {
        id: String,
        /// Redraw until the task ends (or Ctrl-C).
        #[command(flatten)]
        watch: watch::Watch,
    },
    /// Create a task of a job (`POST /api/v1/jobs/{name}/tasks`).
    Create(runs::NewTask),
    /// Release a processing task's claim: it goes back to pending and is dispatched again.
    Release { id: String },
    /// A run's children (of a job made of steps), filtered by step and state.
    Children {
        run: String,
        #[arg(long)]
        step: Option<String>,
        /// pending, processing, completed, failed, …
        #[arg(long)]
        state: Option<String>,
        /// At most this many (1–500).
        #[arg(long)]
        limit: Option<u32>,
        /// The `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Report on a task as its downstream would (`processing`, `completed`, `failed`, …).
    Report(runs::Report),
    /// Cancel an open task.
    Cancel { id: String },
    /// Retry a finished task: a new task linked to it.
    Retry {
        id: String,
        /// For a run of a job made of steps: rerun only the children that failed or were
        /// cancelled, reusing the results of those that completed.
        #[arg(long)]
        only_failed: bool,
        /// Say what would run again, step by step, and create nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// A run of a job made of steps: its steps, their children, and how each stands.
    Tree { id: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TriggersVerb {
    /// A job's triggers, in id order.
    List {
        job: String,
        /// At most this many (1–500; default 100).
        #[arg(long)]
        limit: Option<u32>,
        /// The `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One trigger.
    Get { job: String, id: String },
    /// Add a trigger to a job, from flags (`--cron`, `--every`, `--at`) or a file (`-f`).
    Create {
        job: String,
        #[command(flatten)]
        spec: trigger_edit::Spec,
    },
    /// Replace a trigger (same id), from flags or a file.
    Put {
        job: String,
        id: String,
        #[command(flatten)]
        spec: trigger_edit::Spec,
    },
    /// Pause a trigger: it stops firing; its job is unaffected.
    Pause { job: String, id: String },
    /// Resume a paused trigger.
    Resume { job: String, id: String },
    /// Delete a trigger.
    Delete { job: String, id: String },
    /// A trigger's next fire times.
    Preview {
        job: String,
        id: String,
        /// How many (1–100).
        #[arg(long, default_value_t = 10)]
        count: u32,
    },
    /// Create the tasks of a past range's occurrences that have none (of one trigger, or of
    /// every trigger of the job); at most 1000 occurrences at a time.
    Backfill(calendars::Backfill),
}

#[derive(Debug, Subcommand)]
pub(crate) enum AlertsVerb {
    /// Alerts, filtered by state, kind and job.
    List {
        /// open, acked or resolved.
        #[arg(long)]
        state: Option<String>,
        /// overdue, failed, missed, dispatch_errors, node_lost, …
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        job: Option<String>,
        #[command(flatten)]
        watch: watch::Watch,
    },
    /// One alert with its notifications and their attempts.
    Get { id: String },
    /// Acknowledge an alert: it stays open but notifies no one again.
    Ack {
        id: String,
        /// Why, for the record.
        #[arg(long)]
        note: Option<String>,
    },
    /// Resolve an alert.
    Resolve {
        id: String,
        /// Why, for the record.
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterVerb {
    /// The leader and every node.
    Status,
}

/// Runs a verb and returns the process exit code; errors go to standard error.
pub(crate) fn run(remote: Remote) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("pacer: cannot start the runtime: {error}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(dispatch(remote)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pacer: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

async fn dispatch(remote: Remote) -> Result<()> {
    match remote {
        Remote::Jobs { connection, verb } => jobs(&connection, verb).await,
        Remote::Tasks { connection, verb } => tasks(&connection, verb).await,
        Remote::Triggers { connection, verb } => triggers(&connection, verb).await,
        Remote::Alerts { connection, verb } => alerts(&connection, verb).await,
        Remote::Calendars { connection, verb } => calendars::calendars(&connection, verb).await,
        Remote::Groups { connection, verb } => groups::groups(&connection, verb).await,
        Remote::Subscriptions { connection, verb } => {
            subscriptions::subscriptions(&connection, verb).await
        }
        Remote::Cluster {
            connection,
            verb: ClusterVerb::Status,
        } => cluster_status(&connection).await,
        Remote::Scheduler { connection, verb } => admin::scheduler(&connection, verb).await,
        Remote::Skips { connection, verb } => admin::skips(&connection, verb).await,
        Remote::Messages { connection, verb } => admin::messages(&connection, verb).await,
        Remote::Audit { connection, verb } => admin::audit(&connection, verb).await,
        Remote::Whoami { connection } => admin::whoami(&connection).await,
        Remote::Events { connection, filter } => {
            events::follow(&connection.client()?, filter, connection.output).await
        }
        Remote::Apply {
            connection,
            path,
            dry_run,
            prune,
            cancel_open_tasks,
        } => {
            let options = apply::Options {
                dry_run,
                prune,
                cancel_open_tasks,
                json: connection.output == Output::Json,
                yaml: connection.output == Output::Yaml,
            };
            apply::apply(&connection.client()?, &path, &options).await
        }
        Remote::Export { connection, jobs } => {
            let text = apply::export(
                &connection.client()?,
                &jobs,
                connection.output == Output::Json,
            )
            .await?;
            output::emit(&text);
            Ok(())
        }
    }
}

impl Connection {
    fn client(&self) -> Result<Client> {
        Client::new(&self.url, self.token.clone())
    }

    /// Prints `value` as JSON or YAML, or hands it to `human` for the table form.
    fn print(&self, value: &Value, human: impl FnOnce(&Value) -> String) {
        let text = match self.output {
            Output::Json => output::json(value),
            Output::Yaml => output::yaml(value),
            Output::Table => human(value),
        };
        output::emit(&text);
    }
}

fn page_query(limit: Option<u32>, cursor: Option<String>) -> Vec<(&'static str, String)> {
    let mut query = Vec::new();
    if let Some(limit) = limit {
        query.push(("limit", limit.to_string()));
    }
    if let Some(cursor) = cursor {
        query.push(("cursor", cursor));
    }
    query
}

/// A table of a page's items, with a hint when there is a next page.
fn page(value: &Value, mut table: Table, row: impl Fn(&Value) -> Vec<String>) -> String {
    for item in value["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        table.row(row(item));
    }
    let mut text = table.render();
    if let Some(next) = value["next_cursor"].as_str() {
        text.push_str(&format!("(more: --cursor {next})\n"));
    }
    text
}

async fn jobs(connection: &Connection, verb: JobsVerb) -> Result<()> {
    let client = connection.client()?;
    match verb {
        JobsVerb::List { limit, cursor } => {
            let value = client
                .get("/api/v1/jobs", &page_query(limit, cursor))
                .await?;
            connection.print(&value, |v| {
                let table =
                    Table::new(&["NAME", "TARGET", "OVERLAP", "PAUSED", "VERSION", "UPDATED"]);
                page(v, table, |job| {
                    vec![
                        output::text(job, "/name"),
                        output::target(job),
                        output::text(job, "/overlap"),
                        output::flag(job, "/paused"),
                        output::text(job, "/version"),
                        output::time(job, "/updated_at"),
                    ]
                })
            });
        }
        JobsVerb::Get { name } => {
            let value = client
                .get(&format!("/api/v1/jobs/{}", segment(&name)), &[])
                .await?;
            connection.print(&value, output::yaml);
        }
        JobsVerb::Run { name, payload } => {
            let body = match payload {
                None => None,
                Some(text) => {
                    let payload: Value = serde_json::from_str(&text)
                        .map_err(|e| Error::Usage(format!("--payload is not JSON: {e}")))?;
                    if !payload.is_object() {
                        return Err(Error::Usage("--payload must be a JSON object".into()));
                    }
                    Some(json!({ "payload": payload }))
                }
            };
            let task = client
                .post(
                    &format!("/api/v1/jobs/{}/run", segment(&name)),
                    body.as_ref(),
                )
                .await?;
            connection.print(&task, |t| {
                format!(
                    "task {} created for job {} ({})",
                    output::text(t, "/id"),
                    output::text(t, "/job"),
                    output::text(t, "/state")
                )
            });
        }
        JobsVerb::Put {
            name,
            file,
            dry_run,
        } => runs::put_job(connection, &client, &name, &file, dry_run).await?,
        JobsVerb::Delete {
            name,
            cancel_open_tasks,
        } => runs::delete_job(connection, &client, &name, cancel_open_tasks).await?,
        JobsVerb::Summary {
            name,
            window,
            watch,
        } => runs::summary(connection, &client, &name, window, &watch).await?,
        JobsVerb::RetryFailed { name, limit } => {
            runs::retry_failed(connection, &client, &name, limit).await?;
        }
        JobsVerb::Pause { name } => set_job_paused(connection, &client, &name, true).await?,
        JobsVerb::Resume { name } => set_job_paused(connection, &client, &name, false).await?,
        JobsVerb::ResetFingerprint { name } => {
            let reset = client
                .post(
                    &format!("/api/v1/jobs/{}/fingerprint/reset", segment(&name)),
                    None,
                )
                .await?;
            connection.print(&reset, |r| match r["previous"]["fingerprint"].as_str() {
                Some(previous) => format!(
                    "job {}: fingerprint {previous} forgotten; its next task runs in full",
                    output::text(r, "/job")
                ),
                None => format!("job {} had no fingerprint", output::text(r, "/job")),
            });
        }
    }
    Ok(())
}

async fn set_job_paused(
    connection: &Connection,
    client: &Client,
    name: &str,
    paused: bool,
) -> Result<()> {
    let verb = if paused { "pause" } else { "resume" };
    let job = client
        .post(&format!("/api/v1/jobs/{}/{verb}", segment(name)), None)
        .await?;
    connection.print(&job, |j| {
        let state = if j["paused"] == Value::Bool(true) {
            "paused"
        } else {
            "active"
        };
        format!("job {} is {state}", output::text(j, "/name"))
    });
    Ok(())
}

/// One task in a line, for the verbs that change one.
fn task_line(task: &Value) -> String {
    format!(
        "task {} of job {}: {}",
        output::text(task, "/id"),
        output::text(task, "/job"),
        output::text(task, "/state")
    )
}

/// Where a task came from, in a word or two.
fn origin(task: &Value) -> String {
    let kind = output::text(task, "/origin/kind");
    match task.pointer("/origin/scheduled_at").and_then(Value::as_str) {
        Some(at) => format!("{kind} @{}", output::format_time(at)),
        None => kind,
    }
}

async fn tasks(connection: &Connection, verb: TasksVerb) -> Result<()> {
    let client = connection.client()?;
    match verb {
        TasksVerb::List {
            job,
            state,
            origin: origin_filter,
            outcome,
            run,
            overdue,
            created_after,
            created_before,
            finished_after,
            finished_before,
            limit,
            cursor,
        } => {
            let mut query = page_query(limit, cursor);
            // Only filters that were given: a server without a filter refuses it by name.
            for (key, value) in [
                ("job", job),
                ("state", state),
                ("origin", origin_filter),
                ("outcome", outcome),
                ("run", run),
                ("overdue", overdue.map(|o| o.to_string())),
                ("created_after", created_after),
                ("created_before", created_before),
                ("finished_after", finished_after),
                ("finished_before", finished_before),
            ] {
                if let Some(value) = value {
                    query.push((key, value));
                }
            }
            let value = client.get("/api/v1/tasks", &query).await?;
            connection.print(&value, |v| {
                let table = Table::new(&[
                    "ID", "JOB", "STATE", "ORIGIN", "ATTEMPT", "CREATED", "FINISHED",
                ]);
                page(v, table, |task| {
                    let mut state = output::text(task, "/state");
                    if task["overdue"] == Value::Bool(true) {
                        state.push_str(" (overdue)");
                    }
                    if let Some(outcome) = task["outcome"].as_str() {
                        state.push_str(&format!(" ({outcome})"));
                    }
                    vec![
                        output::text(task, "/id"),
                        output::text(task, "/job"),
                        state,
                        origin(task),
                        output::text(task, "/attempt"),
                        output::time(task, "/created_at"),
                        output::time(task, "/finished_at"),
                    ]
                })
            });
        }
        TasksVerb::Get { id, watch } => {
            let path = format!("/api/v1/tasks/{}", segment(&id));
            watch::watch(
                connection,
                &watch,
                || client.get(&path, &[]),
                output::yaml,
                |task| {
                    matches!(
                        task["state"].as_str(),
                        Some("completed" | "completed_with_errors" | "failed" | "cancelled")
                    )
                },
            )
            .await?;
        }
        TasksVerb::Create(new) => runs::create_task(connection, &client, new).await?,
        TasksVerb::Release { id } => {
            let task = client
                .post(&format!("/api/v1/tasks/{}/release", segment(&id)), None)
                .await?;
            connection.print(&task, |t| format!("released: {}", task_line(t)));
        }
        TasksVerb::Children {
            run,
            step,
            state,
            limit,
            cursor,
        } => runs::children(connection, &client, &run, step, state, limit, cursor).await?,
        TasksVerb::Report(report) => runs::report(connection, &client, report).await?,
        TasksVerb::Cancel { id } => {
            let task = client
                .post(&format!("/api/v1/tasks/{}/cancel", segment(&id)), None)
                .await?;
            connection.print(&task, task_line);
        }
        TasksVerb::Retry {
            id,
            only_failed,
            dry_run,
        } => {
            let body = only_failed.then(|| serde_json::json!({ "only": "failed" }));
            let query = if dry_run { "?dry_run=true" } else { "" };
            let answer = client
                .post(
                    &format!("/api/v1/tasks/{}/retry{query}", segment(&id)),
                    body.as_ref(),
                )
                .await?;
            if dry_run {
                connection.print(&answer, retry_plan);
            } else {
                connection.print(&answer, |t| format!("retried as {}", task_line(t)));
            }
        }
        TasksVerb::Tree { id } => {
            let run = client
                .get(&format!("/api/v1/tasks/{}", segment(&id)), &[])
                .await?;
            connection.print(&run, run_tree);
        }
    }
    Ok(())
}

/// A retry plan: what each step would reuse and run again.
fn retry_plan(plan: &Value) -> String {
    let mut lines = vec![format!(
        "retrying {} would run again ({}):",
        output::text(plan, "/task"),
        output::text(plan, "/only"),
    )];
    let Some(steps) = plan["steps"].as_array().filter(|s| !s.is_empty()) else {
        lines.push("  the whole task".to_owned());
        return lines.join("\n");
    };
    for step in steps {
        let name = output::text(step, "/name");
        match step["rerun"].as_u64() {
            None => lines.push(format!("  {name}: in full")),
            Some(0) => lines.push(format!(
                "  {name}: nothing (reuses {})",
                output::text(step, "/reused")
            )),
            Some(n) => {
                let names: Vec<&str> = step["children"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let more = if u64::try_from(names.len()).unwrap_or(u64::MAX) < n {
                    ", …"
                } else {
                    ""
                };
                lines.push(format!(
                    "  {name}: {n} (reuses {}): {}{more}",
                    output::text(step, "/reused"),
                    names.join(", ")
                ));
            }
        }
    }
    lines.join("\n")
}

/// A run as a tree: the run, each step with its children's counts, and the children of the
/// steps that list them.
fn run_tree(run: &Value) -> String {
    let mut lines = vec![format!(
        "{} ({} done of {})",
        task_line(run),
        output::text(run, "/progress/done"),
        output::text(run, "/progress/total"),
    )];
    let Some(steps) = run["steps"].as_array() else {
        lines.push("  not a run of a job made of steps (or not started yet)".to_owned());
        return lines.join("\n");
    };
    for step in steps {
        let counts = step["counts"]
            .as_object()
            .map(|counts| {
                counts
                    .iter()
                    .filter(|(_, n)| n.as_u64().is_some_and(|n| n > 0))
                    .map(|(state, n)| format!("{state} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        lines.push(format!(
            "  {} [{}] {}{}",
            output::text(step, "/name"),
            output::text(step, "/kind"),
            output::text(step, "/state"),
            if counts.is_empty() {
                String::new()
            } else {
                format!(" ({counts})")
            },
        ));
        for child in step["children"].as_array().into_iter().flatten() {
            lines.push(format!(
                "    {} {} {}",
                output::text(child, "/name"),
                output::text(child, "/state"),
                output::text(child, "/id"),
            ));
        }
    }
    lines.join("\n")
}

async fn triggers(connection: &Connection, verb: TriggersVerb) -> Result<()> {
    let client = connection.client()?;
    match verb {
        TriggersVerb::List { job, limit, cursor } => {
            let value = client
                .get(
                    &format!("/api/v1/jobs/{}/triggers", segment(&job)),
                    &page_query(limit, cursor),
                )
                .await?;
            connection.print(&value, |v| {
                let table = Table::new(&[
                    "ID",
                    "SCHEDULE",
                    "MISFIRE",
                    "PAUSED",
                    "NEXT FIRE",
                    "LAST FIRED",
                    "SKIPPED",
                ]);
                page(v, table, |trigger| {
                    vec![
                        output::text(trigger, "/id"),
                        output::schedule(trigger),
                        output::text(trigger, "/misfire"),
                        output::flag(trigger, "/paused"),
                        output::time(trigger, "/next_fire_at"),
                        output::time(trigger, "/last_fired_at"),
                        output::text(trigger, "/skipped"),
                    ]
                })
            });
        }
        TriggersVerb::Preview { job, id, count } => {
            let value = client
                .get(
                    &format!(
                        "/api/v1/jobs/{}/triggers/{}/preview",
                        segment(&job),
                        segment(&id)
                    ),
                    &[("count", count.to_string())],
                )
                .await?;
            connection.print(&value, |v| {
                let mut text = String::new();
                for occurrence in v["occurrences"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    text.push_str(&output::time(occurrence, "/scheduled_at"));
                    if occurrence["fire_at"] != occurrence["scheduled_at"] {
                        text.push_str(&format!(
                            "  (fires {})",
                            output::time(occurrence, "/fire_at")
                        ));
                    }
                    if let Some(calendar) = occurrence["excluded_by"].as_str() {
                        text.push_str(&format!("  excluded by calendar {calendar}"));
                    }
                    text.push('\n');
                }
                if text.is_empty() {
                    text.push_str("(no further fire times)\n");
                }
                text
            });
        }
        TriggersVerb::Backfill(args) => calendars::backfill(connection, args).await?,
        TriggersVerb::Get { job, id } => trigger_edit::get(connection, &client, &job, &id).await?,
        TriggersVerb::Create { job, spec } => {
            trigger_edit::create(connection, &client, &job, &spec).await?;
        }
        TriggersVerb::Put { job, id, spec } => {
            trigger_edit::replace(connection, &client, &job, &id, &spec).await?;
        }
        TriggersVerb::Pause { job, id } => {
            trigger_edit::set_paused(connection, &client, &job, &id, true).await?;
        }
        TriggersVerb::Resume { job, id } => {
            trigger_edit::set_paused(connection, &client, &job, &id, false).await?;
        }
        TriggersVerb::Delete { job, id } => {
            trigger_edit::delete(connection, &client, &job, &id).await?;
        }
    }
    Ok(())
}

/// What an alert is about: `job sync, task 01a2…`, or `node pacer-2`.
fn subject(alert: &Value) -> String {
    let parts: Vec<String> = ["job", "task", "node"]
        .iter()
        .filter_map(|key| {
            let value = alert.pointer(&format!("/subject/{key}"))?.as_str()?;
            Some(format!("{key} {value}"))
        })
        .collect();
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}

async fn alerts(connection: &Connection, verb: AlertsVerb) -> Result<()> {
    let client = connection.client()?;
    match verb {
        AlertsVerb::Get { id } => {
            let value = client
                .get(&format!("/api/v1/alerts/{}", segment(&id)), &[])
                .await?;
            connection.print(&value, output::yaml);
        }
        AlertsVerb::List {
            state,
            kind,
            job,
            watch,
        } => {
            let query: Vec<(&str, String)> = [("state", state), ("kind", kind), ("job", job)]
                .into_iter()
                .filter_map(|(key, value)| value.map(|v| (key, v)))
                .collect();
            let query = &query;
            let client = &client;
            watch::watch(
                connection,
                &watch,
                || client.get("/api/v1/alerts", query),
                |v| {
                    let table = Table::new(&[
                        "ID",
                        "KIND",
                        "SEVERITY",
                        "STATE",
                        "SUBJECT",
                        "COUNT",
                        "OPENED",
                        "LAST SEEN",
                        "ACKED BY",
                        "SUMMARY",
                    ]);
                    page(v, table, |alert| {
                        vec![
                            output::text(alert, "/id"),
                            output::text(alert, "/kind"),
                            output::text(alert, "/severity"),
                            output::text(alert, "/state"),
                            subject(alert),
                            output::text(alert, "/count"),
                            output::time(alert, "/opened_at"),
                            output::time(alert, "/last_seen_at"),
                            output::text(alert, "/acked_by"),
                            output::text(alert, "/summary"),
                        ]
                    })
                },
                |_| false,
            )
            .await?;
        }
        AlertsVerb::Ack { id, note } => alert_action(connection, &client, "ack", &id, note).await?,
        AlertsVerb::Resolve { id, note } => {
            alert_action(connection, &client, "resolve", &id, note).await?;
        }
    }
    Ok(())
}

/// `ack` or `resolve` an alert, with an optional note.
async fn alert_action(
    connection: &Connection,
    client: &Client,
    action: &str,
    id: &str,
    note: Option<String>,
) -> Result<()> {
    let body = json!({ "note": note });
    let alert = client
        .post(
            &format!("/api/v1/alerts/{}/{action}", segment(id)),
            Some(&body),
        )
        .await?;
    connection.print(&alert, |a| {
        format!(
            "alert {} ({}) is {}",
            output::text(a, "/id"),
            output::text(a, "/kind"),
            output::text(a, "/state")
        )
    });
    Ok(())
}

async fn cluster_status(connection: &Connection) -> Result<()> {
    let client = connection.client()?;
    let value = client.get("/api/v1/cluster", &[]).await?;
    connection.print(&value, |v| {
        let mut text = match v.get("leader") {
            Some(leader) if leader.is_object() => format!(
                "leader: {} (term {}, since {}, lease until {})\n\n",
                output::text(leader, "/node"),
                output::text(leader, "/term"),
                output::time(leader, "/since"),
                output::time(leader, "/lease_expires_at"),
            ),
            _ => "leader: none\n\n".to_owned(),
        };
        let mut table = Table::new(&[
            "NODE",
            "ADDRESS",
            "VERSION",
            "STARTED",
            "LAST HEARTBEAT",
            "ALIVE",
        ]);
        for node in v["nodes"].as_array().map(Vec::as_slice).unwrap_or_default() {
            table.row(vec![
                output::text(node, "/id"),
                output::text(node, "/address"),
                output::text(node, "/version"),
                output::time(node, "/started_at"),
                output::time(node, "/last_heartbeat_at"),
                output::flag(node, "/alive"),
            ]);
        }
        text.push_str(&table.render());
        text
    });
    Ok(())
}
