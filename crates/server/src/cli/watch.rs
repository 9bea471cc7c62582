//! `--watch`: a live view that fetches and redraws every `--interval` until Ctrl-C, or until
//! what it shows has reached its end (a task that finished).

use std::future::Future;
use std::io::IsTerminal;
use std::time::Duration;

use clap::Args;
use serde_json::Value;

use super::output;
use super::{Connection, Output};
use crate::client::Result;

/// `--watch` and `--interval`.
#[derive(Debug, Clone, Args)]
pub(crate) struct Watch {
    /// Redraw every `--interval` until Ctrl-C (with `-o json`, one JSON object per line; with
    /// `-o yaml`, one YAML document per redraw).
    #[arg(long, short = 'w')]
    watch: bool,
    /// How often `--watch` redraws, like `2s` or `1m`.
    #[arg(long, default_value = "2s", requires = "watch")]
    interval: pacer_domain::Span,
}

/// Fetches and prints once, or, with `--watch`, again every interval until Ctrl-C or until
/// `done` says the value has reached its end. An error ends the watch with its exit code.
pub(crate) async fn watch<F, Fut>(
    connection: &Connection,
    watch: &Watch,
    mut fetch: F,
    human: impl Fn(&Value) -> String,
    done: impl Fn(&Value) -> bool,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Value>>,
{
    if !watch.watch {
        let value = fetch().await?;
        connection.print(&value, human);
        return Ok(());
    }
    let interval: Duration = watch.interval.into();
    let interval = interval.max(Duration::from_millis(100));
    let terminal = std::io::stdout().is_terminal();
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let value = tokio::select! {
            value = fetch() => value?,
            _ = &mut interrupted => return Ok(()),
        };
        let text = match connection.output {
            Output::Json => value.to_string(),
            Output::Yaml => format!("---\n{}", output::yaml(&value)),
            Output::Table => {
                let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                let clear = if terminal { "\x1b[H\x1b[2J" } else { "" };
                format!(
                    "{clear}every {}, {now} (Ctrl-C to stop)\n\n{}\n",
                    watch.interval,
                    human(&value).trim_end()
                )
            }
        };
        if !output::emit(&text) || done(&value) {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = &mut interrupted => return Ok(()),
        }
    }
}
