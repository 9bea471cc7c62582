//! `pacer dev`: a single node for local development, on a `pacer` database it creates, with an
//! example job whose downstream is a demo endpoint served by the same process. The demo accepts
//! each dispatch, reports progress and then calls back `completed`, as a real downstream would.
//! When no PostgreSQL answers, it runs on a private one (see [`crate::dev_cluster`]).

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use pacer_domain::{JobInput, JobName, JobSpec};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::PgConnectOptions;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::dev_cluster::{self, PrivateCluster};
use crate::node::Node;
use crate::security::Security;
use pacer_auth::Role;

/// `pacer dev`'s options.
pub(crate) struct Options {
    pub(crate) database_url: Option<String>,
    pub(crate) keep_data: Option<PathBuf>,
}

/// How long `pacer dev` waits for a PostgreSQL to answer before starting its own.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// Runs the dev node until Ctrl-C (or SIGTERM).
pub(crate) async fn run(
    mut config: Config,
    security: Security,
    options: Options,
) -> anyhow::Result<()> {
    let shutdown = crate::node::shutdown_on_signals()?;
    if let Some(url) = options.database_url {
        config.database.url = SecretString::from(url);
    }
    let url = config.database.url.expose_secret().to_owned();
    let answer = tokio::time::timeout(ANSWER_WITHIN, sqlx::Postgres::database_exists(&url)).await;
    let (exists, cluster) = match answer {
        Ok(Ok(exists)) => (exists, None),
        Ok(Err(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut)) | Err(_) => {
            let options_of_url = PgConnectOptions::from_str(&url).context("database.url")?;
            let address = format!(
                "{}:{}",
                options_of_url.get_host(),
                options_of_url.get_port()
            );
            let Some(bin) = dev_cluster::find_server_programs() else {
                bail!("{}", dev_cluster::install_hint(&address));
            };
            println!(
                "\nNo PostgreSQL answers at {address}: starting a private one with {}",
                bin.display()
            );
            let cluster = PrivateCluster::start(bin, options.keep_data.as_deref()).await?;
            let name = options_of_url.get_database().unwrap_or("pacer").to_owned();
            let private = cluster.url(&name);
            println!(
                "Using the private PostgreSQL (on a Unix socket only) in {}{}\n",
                cluster.directory().display(),
                if options.keep_data.is_some() {
                    ", its data kept in --keep-data"
                } else {
                    ", removed when `pacer dev` stops"
                }
            );
            let cluster = Arc::new(Mutex::new(cluster));
            let _ = crate::node::EXIT_HOOK.set(dev_cluster::exit_hook(cluster.clone()));
            config.database.url = SecretString::from(private.clone());
            let exists = sqlx::Postgres::database_exists(&private).await;
            (
                exists.context("cannot reach the private PostgreSQL")?,
                Some(cluster),
            )
        }
        Ok(Err(error)) => return Err(error).context("cannot reach PostgreSQL"),
    };
    let result = serve(config, security, exists, shutdown).await;
    if let Some(cluster) = cluster {
        cluster
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop();
    }
    result
}

async fn serve(
    config: Config,
    security: Security,
    exists: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let token = crate::security::mint(
        &config,
        None,
        &[Role::Admin],
        "dev",
        Duration::from_secs(24 * 3600),
    )?;
    if !exists {
        sqlx::Postgres::create_database(config.database.url.expose_secret())
            .await
            .context("creating the database failed")?;
        tracing::info!("created the database");
    }
    let node = Node::start(config, security, crate::telemetry::metrics()?, &shutdown).await?;
    let base = node.public_url.trim_end_matches('/').to_owned();
    register_example(&node, &base).await?;

    let demo = Demo {
        client: pacer_engine::http_client()?,
        tracker: TaskTracker::new(),
        shutdown: shutdown.clone(),
    };
    let routes = Router::new()
        .route("/demo/downstream", post(accept))
        .with_state(demo.clone());
    print_tour(&base, &token);
    let result = node.run(routes, shutdown).await;
    demo.tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(3), demo.tracker.wait()).await;
    result
}

async fn register_example(node: &Node, base: &str) -> anyhow::Result<()> {
    let input: JobInput = serde_json::from_value(json!({
        "description": "Example job: its downstream is the demo endpoint of this dev node",
        "target": { "url": format!("{base}/demo/downstream") },
        "payload": { "greeting": "hello" },
        "repoll_interval": "10s",
        "dispatch_timeout": "5s",
        "deadline": "1m",
        "timeout": "10m",
        "labels": { "env": "dev" },
    }))?;
    let spec = JobSpec::try_from(input).map_err(|e| anyhow::anyhow!("example job: {e}"))?;
    let name: JobName = "example".parse()?;
    node.store
        .put_job(&name, &spec)
        .await
        .context("registering the example job")?;
    Ok(())
}

fn print_tour(base: &str, token: &str) {
    println!(
        "\nPacer dashboard: {base}/ui  (sign in with the admin token below)\n\n\
         Pacer dev node ready on {base} with an example job.\n\n\
         An admin token for this node (valid 24h; `pacer dev` makes new keys at every start):\n  \
         export PACER_TOKEN={token}\n\n\
         Create a task (the demo downstream reports progress after a second and completes it a \
         second later):\n  \
         curl -s -X POST {base}/api/v1/jobs/example/tasks -H \"authorization: Bearer $PACER_TOKEN\" \
         -H 'content-type: application/json' -d '{{\"payload\": {{\"name\": \"world\"}}}}'\n\n\
         Show it, with its attempts (use the id printed above):\n  \
         curl -s {base}/api/v1/tasks/<task-id> -H \"authorization: Bearer $PACER_TOKEN\"\n\n\
         List the example job's tasks:\n  \
         curl -s '{base}/api/v1/tasks?job=example' -H \"authorization: Bearer $PACER_TOKEN\"\n\n\
         Press Ctrl-C to stop.\n"
    );
}

#[derive(Clone)]
struct Demo {
    client: reqwest::Client,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

#[derive(Deserialize)]
struct Dispatch {
    task_id: String,
    attempt: i32,
    payload: Value,
    callback: CallbackTarget,
}

#[derive(Deserialize)]
struct CallbackTarget {
    url: String,
    token: String,
}

/// Accepts a dispatch, reports progress half-way a second later and the task completed a
/// second after that, so the dashboard shows each step.
async fn accept(
    State(demo): State<Demo>,
    Json(dispatch): Json<Dispatch>,
) -> (StatusCode, Json<Value>) {
    tracing::info!(task.id = %dispatch.task_id, attempt = dispatch.attempt, "demo downstream accepted a task");
    let client = demo.client.clone();
    let shutdown = demo.shutdown.clone();
    demo.tracker.spawn(async move {
        let name = dispatch.payload.get("name").and_then(Value::as_str).unwrap_or("nobody");
        let reports = [
            json!({ "status": "processing", "progress": { "done": 1, "total": 2 } }),
            json!({
                "status": "completed",
                "message": format!("said hello to {name}"),
                "result": { "greeted": name },
            }),
        ];
        for body in reports {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            match client.post(&dispatch.callback.url).bearer_auth(&dispatch.callback.token).json(&body).send().await {
                Ok(response) => tracing::info!(task.id = %dispatch.task_id, status = %response.status(), "demo downstream called back"),
                Err(error) => {
                    tracing::warn!(task.id = %dispatch.task_id, %error, "demo callback failed; Pacer will re-dispatch");
                    return;
                }
            }
        }
    });
    (StatusCode::ACCEPTED, Json(json!({ "accepted": true })))
}
