//! The `pacer` binary: `serve` runs a node, `dev` a local node with an example, `migrate`
//! applies the database migrations.

mod config;
mod dev;
mod node;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, LogFormat};

/// Pacer: a clustered scheduler that fires schedules exactly once, dispatches work to downstream
/// services and keeps at it until they report back.
#[derive(Debug, Parser)]
#[command(name = "pacer", version)]
struct Cli {
    /// A TOML configuration file; `PACER_…` environment variables override it.
    #[arg(long, global = true, env = "PACER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node: the API, the dispatcher and the loops (production entry point).
    Serve,
    /// Run one node for local development: creates the database, registers an example job
    /// with a demo downstream, and prints how to try it.
    Dev,
    /// Apply the database migrations and exit.
    Migrate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("pacer: {error:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("pacer: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let default_format = if matches!(cli.command, Command::Dev) {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    };
    telemetry::init(
        config.log.format.unwrap_or(default_format),
        &config.log.level,
    );
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve => {
                let shutdown = node::shutdown_on_signals()?;
                let node = node::Node::start(config, &shutdown).await?;
                node.run(axum::Router::new(), shutdown).await
            }
            Command::Dev => dev::run(config).await,
            Command::Migrate => {
                let store = node::connect(&config)?;
                node::migrate(&store, &CancellationToken::new()).await?;
                tracing::info!("migrations applied");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "pacer stopped with an error");
            eprintln!("pacer: {error:#}");
            ExitCode::FAILURE
        }
    }
}
