//! `pacer dev`: a single node for local development, on a `pacer` database it creates, with an
//! example job whose downstream is a demo endpoint served by the same process. The demo accepts
//! each dispatch, reports progress and then calls back `completed`, as a real downstream would.

use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use pacer_domain::{JobInput, JobName, JobSpec};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::migrate::MigrateDatabase;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::node::Node;
use crate::security::Security;
use pacer_auth::Role;

/// Runs the dev node until Ctrl-C.
pub(crate) async fn run(config: Config, security: Security) -> anyhow::Result<()> {
    let token = crate::security::mint(
        &config,
        None,
        &[Role::Admin],
        "dev",
        Duration::from_secs(24 * 3600),
    )?;
    let url = config.database.url.expose_secret().to_owned();
    if !sqlx::Postgres::database_exists(&url)
        .await
        .context("cannot reach PostgreSQL")?
    {
        sqlx::Postgres::create_database(&url)
            .await
            .context("creating the database failed")?;
        tracing::info!("created the database");
    }
    let shutdown = crate::node::shutdown_on_signals()?;
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
