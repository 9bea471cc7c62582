//! `pacer events`: follows the server-sent event stream `GET /api/v1/events`, printing one line
//! per event, and reconnects with `Last-Event-ID` when the connection drops.

use std::time::Duration;

use serde_json::{Value, json};

use super::Output;
use crate::client::{Client, Error, Result};

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Event {
    pub(crate) id: Option<String>,
    pub(crate) event: Option<String>,
    pub(crate) data: String,
}

/// Splits a byte stream into events (the `text/event-stream` format: `field: value` lines, an
/// empty line ends an event, lines starting with `:` are comments).
#[derive(Debug, Default)]
pub(crate) struct Parser {
    pending: Vec<u8>,
    current: Event,
    has_data: bool,
    /// The last `retry:` the server asked for.
    pub(crate) retry: Option<Duration>,
}

impl Parser {
    /// Feeds a chunk; returns the events it completed.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Vec<Event> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.pending.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
        }
        events
    }

    fn line(&mut self, line: &str) -> Option<Event> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.current);
            // A block with only an `id:` moves the position without an event; it is returned
            // so the caller can resume from it.
            let complete =
                std::mem::take(&mut self.has_data) || event.event.is_some() || event.id.is_some();
            return complete.then_some(event);
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "id" => self.current.id = Some(value.to_owned()),
            "event" => self.current.event = Some(value.to_owned()),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            "retry" => {
                self.retry = value.parse().ok().map(Duration::from_millis);
            }
            _ => {}
        }
        None
    }
}

/// How an event is printed: a line of JSON for scripts, else `time event data`.
fn render(event: &Event, output: Output) -> String {
    let data: Value =
        serde_json::from_str(&event.data).unwrap_or_else(|_| Value::String(event.data.clone()));
    let name = event.event.as_deref().unwrap_or("message");
    match output {
        Output::Json => json!({ "id": event.id, "event": name, "data": data }).to_string(),
        Output::Yaml => format!(
            "---\n{}",
            super::output::yaml(&json!({ "id": event.id, "event": name, "data": data }))
        ),
        Output::Table => {
            let at = ["at", "time", "occurred_at", "created_at"]
                .iter()
                .find_map(|key| data.get(*key).and_then(Value::as_str))
                .map(super::output::format_time)
                .unwrap_or_else(|| {
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                });
            let body = match &data {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            format!("{at}  {name}  {body}")
        }
    }
}

/// Which events `pacer events` follows: the stream's `job`, `label` and `kind` filters.
#[derive(Debug, clap::Args)]
pub(crate) struct Filter {
    /// Only the events of these jobs, comma-separated.
    #[arg(long)]
    job: Option<String>,
    /// Only the events of jobs carrying these labels, `key:value`, comma-separated (all must
    /// match).
    #[arg(long)]
    label: Option<String>,
    /// Only these event kinds, comma-separated (`task.state,alert.opened`).
    #[arg(long)]
    kind: Option<String>,
}

/// Prints events until interrupted. A refused request (4xx) ends it with that error; a dropped
/// connection or a 5xx is retried, resuming after the last event seen.
pub(crate) async fn follow(client: &Client, filter: Filter, output: Output) -> Result<()> {
    let query: Vec<(&str, String)> = [
        ("job", filter.job),
        ("label", filter.label),
        ("kind", filter.kind),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name, value?)))
    .collect();
    let mut last_id: Option<String> = None;
    let mut delay = Duration::from_secs(1);
    loop {
        let mut parser = Parser::default();
        match client
            .stream("/api/v1/events", &query, last_id.as_deref())
            .await
        {
            Ok(mut response) => {
                delay = Duration::from_secs(1);
                loop {
                    match response.chunk().await {
                        Ok(Some(chunk)) => {
                            for event in parser.feed(&chunk) {
                                if event.id.is_some() {
                                    last_id.clone_from(&event.id);
                                }
                                // A position alone (the stream's start): nothing to print.
                                if event.event.is_none() && event.data.is_empty() {
                                    continue;
                                }
                                if !super::output::emit(&render(&event, output)) {
                                    return Ok(());
                                }
                            }
                        }
                        Ok(None) => {
                            eprintln!("pacer: the event stream ended; reconnecting");
                            break;
                        }
                        Err(error) => {
                            eprintln!("pacer: the event stream broke ({error}); reconnecting");
                            break;
                        }
                    }
                }
                if let Some(retry) = parser.retry {
                    delay = retry;
                }
            }
            Err(error @ Error::Status { .. })
                if error.status().is_some_and(|s| {
                    s.is_client_error() && s != reqwest::StatusCode::TOO_MANY_REQUESTS
                }) =>
            {
                return Err(error);
            }
            Err(error) => {
                eprintln!("pacer: {error}; retrying in {delay:?}");
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_alone_is_returned_without_data() {
        let mut parser = Parser::default();
        let events = parser.feed(b"id: 12-3\n\n");
        assert_eq!(
            events,
            vec![Event {
                id: Some("12-3".into()),
                event: None,
                data: String::new(),
            }]
        );
    }

    #[test]
    fn events_are_split_on_blank_lines_across_chunks() {
        let mut parser = Parser::default();
        assert!(
            parser
                .feed(b": keep-alive\n\nid: 7\r\nevent: task")
                .is_empty()
        );
        let events = parser.feed(b".completed\ndata: {\"task\":\ndata: 1}\n\nretry: 2500\n");
        assert_eq!(
            events,
            vec![Event {
                id: Some("7".into()),
                event: Some("task.completed".into()),
                data: "{\"task\":\n1}".into(),
            }]
        );
        assert_eq!(parser.retry, Some(Duration::from_millis(2500)));
        let events = parser.feed(b"data:plain\n\n");
        assert_eq!(events[0].data, "plain");
        assert_eq!(events[0].id, None);
    }

    #[test]
    fn an_event_prints_as_a_json_line_or_a_readable_one() {
        let event = Event {
            id: Some("9".into()),
            event: Some("task.failed".into()),
            data: r#"{"task":"t1","at":"2026-12-01T09:00:00.5Z"}"#.into(),
        };
        let line: Value = serde_json::from_str(&render(&event, Output::Json)).expect("json");
        assert_eq!(line["id"], "9");
        assert_eq!(line["data"]["task"], "t1");
        assert_eq!(
            render(&event, Output::Table),
            r#"2026-12-01T09:00:00Z  task.failed  {"at":"2026-12-01T09:00:00.5Z","task":"t1"}"#
        );
        let document = render(&event, Output::Yaml);
        let document = document.strip_prefix("---\n").expect("a YAML document");
        let document: Value = serde_saphyr::from_str(document).expect("yaml");
        assert_eq!(document["event"], "task.failed");
        assert_eq!(document["data"]["task"], "t1");
    }
}
