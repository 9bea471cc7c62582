//! The `pacer` binary: `serve` runs a node, `dev` a local node with an example, `migrate`
//! applies the database migrations, `openapi` prints the API's OpenAPI document, `completions`
//! a shell completion script; the operator verbs (`jobs`, `apply`, …) are in `cli`.

mod apply;
mod cli;
mod client;
mod config;
mod dev;
mod dev_cluster;
mod node;
mod security;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat};

/// mimalloc rather than the system allocator: a node allocates and frees small buffers on every
/// request, dispatch and row, across worker threads, where glibc's malloc spent about a quarter
/// of a busy node's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// with a demo downstream, and prints how to try it. When no PostgreSQL answers and its
    /// server programs are installed, runs on a private throw-away cluster.
    Dev {
        /// The PostgreSQL to use (default: the configured `database.url`,
        /// postgres://postgres@127.0.0.1:5432/pacer).
        #[arg(long)]
        database_url: Option<String>,
        /// Keep the private cluster's data in this directory, and reuse it next time.
        #[arg(long, value_name = "DIR")]
        keep_data: Option<PathBuf>,
    },
    /// Apply the database migrations and exit.
    Migrate {
        /// How long to wait for an unreachable database before giving up, like `2m`.
        #[arg(long, default_value = "2m")]
        wait: pacer_domain::Span,
    },
    /// Mint a token with the configured HS256 secret, for development and scripts.
    Token {
        /// A role to grant (upstream, downstream, operator, admin); repeat for several.
        #[arg(long = "role", required = true, value_parser = parse_role)]
        roles: Vec<pacer_auth::Role>,
        /// The token's subject: who it stands for.
        #[arg(long)]
        sub: String,
        /// How long the token lasts, like `1h` or `30m`.
        #[arg(long, default_value = "1h")]
        ttl: pacer_domain::Span,
        /// Which HS256 issuer signs it (default: the first).
        #[arg(long)]
        issuer: Option<String>,
    },
    /// Print a new Ed25519 signing key (PKCS#8 PEM) for `signing.keys`.
    Keygen,
    /// Print the API's OpenAPI document (JSON), as served at `/api/openapi.json`.
    Openapi {
        /// Write it to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Print a shell completion script: `pacer completions bash > /etc/bash_completion.d/pacer`,
    /// or for zsh and fish.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    #[command(flatten)]
    Remote(Box<cli::Remote>),
}

fn write_openapi(output: Option<&std::path::Path>) -> ExitCode {
    let document = pacer_api::document_json();
    let written = match output {
        Some(path) => std::fs::write(path, document)
            .with_context(|| format!("cannot write {}", path.display())),
        None => {
            use std::io::Write;
            std::io::stdout()
                .write_all(document.as_bytes())
                .context("cannot write to standard output")
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pacer: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_role(text: &str) -> Result<pacer_auth::Role, String> {
    pacer_auth::Role::parse(text).ok_or_else(|| {
        format!("`{text}` is not a role; use upstream, downstream, operator or admin")
    })
}

fn main() -> ExitCode {
    // mimalloc commits its arenas up front on Linux. Where transparent huge pages are `always`,
    // the first touch of each fresh 2 MiB range would then take a whole huge page, and an idle
    // node's resident set grew by half; ordinary pages keep it to what is used.
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let cli = Cli::parse();
    // Needs no configuration: the document depends on the code alone.
    if let Command::Openapi { output } = &cli.command {
        return write_openapi(output.as_deref());
    }
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "pacer", &mut script);
        cli::output::emit(&String::from_utf8_lossy(&script));
        return ExitCode::SUCCESS;
    }
    // The verbs over the REST API need no node configuration.
    let cli = match cli.command {
        Command::Remote(remote) => return cli::run(*remote),
        command => Cli { command, ..cli },
    };
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("pacer: {error:#}");
            return ExitCode::from(2);
        }
    };
    match &cli.command {
        Command::Remote(_) | Command::Completions { .. } => {}
        Command::Keygen => {
            print!("{}", pacer_auth::signing::generate_ed25519_pem());
            return ExitCode::SUCCESS;
        }
        Command::Token {
            roles,
            sub,
            ttl,
            issuer,
        } => {
            return match security::mint(&config, issuer.as_deref(), roles, sub, ttl.as_duration()) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("pacer: {error:#}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Dev { .. } => security::add_dev_keys(&mut config),
        Command::Serve | Command::Migrate { .. } | Command::Openapi { .. } => {}
    }
    let security = match &cli.command {
        Command::Serve | Command::Dev { .. } => {
            match pacer_engine::http_client()
                .map_err(anyhow::Error::from)
                .and_then(|http| security::build(&config, http))
            {
                Ok(security) => Some(security),
                Err(error) => {
                    eprintln!("pacer: {error:#}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => None,
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.node.worker_threads {
        runtime.worker_threads(threads);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("pacer: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let default_format = if matches!(cli.command, Command::Dev { .. }) {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    };
    let telemetry = telemetry::init(
        config.log.format.unwrap_or(default_format),
        &config.log.level,
    );
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Remote(_) | Command::Completions { .. } => Ok(()),
            Command::Serve => {
                let security = security.context("security was not configured")?;
                let shutdown = node::shutdown_on_signals()?;
                let node =
                    node::Node::start(config, security, telemetry::metrics()?, &shutdown).await?;
                node.run(axum::Router::new(), shutdown).await
            }
            Command::Dev {
                database_url,
                keep_data,
            } => {
                let options = dev::Options {
                    database_url,
                    keep_data,
                };
                dev::run(
                    config,
                    security.context("security was not configured")?,
                    options,
                )
                .await
            }
            Command::Token { .. } | Command::Keygen | Command::Openapi { .. } => Ok(()),
            Command::Migrate { wait } => {
                let store = node::connect(&config)?;
                let give_up = node::shutdown_on_signals()?;
                let timer = give_up.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(wait.as_duration()).await;
                    timer.cancel();
                });
                node::migrate(&store, &give_up).await.with_context(|| {
                    format!("gave up waiting for the database (--wait {wait}, or a signal)")
                })?;
                tracing::info!("migrations applied");
                Ok(())
            }
        }
    });
    if let Err(error) = &result {
        tracing::error!(error = %format!("{error:#}"), "pacer stopped with an error");
    }
    drop(runtime);
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pacer: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every verb's arguments are consistent (no clashing short flags or group mistakes).
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
