//! Human output of the CLI verbs: aligned tables, times in UTC, and values read leniently out of
//! the API's JSON (a field another version of the server lacks shows as `-`).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

/// A table with a header row; columns are as wide as their widest cell.
#[derive(Debug)]
pub(crate) struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, the last column unpadded.
    pub(crate) fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().take(columns).enumerate() {
                if i + 1 == columns {
                    line.push_str(cell);
                } else {
                    let pad = widths[i] - cell.chars().count();
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The text at `pointer` (e.g. `/target/url`), numbers and booleans as written, `-` when absent.
pub(crate) fn text(value: &Value, pointer: &str) -> String {
    match value.pointer(pointer) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// A timestamp at `pointer` in UTC to the second (`2026-12-01T09:00:00Z`), `-` when absent.
pub(crate) fn time(value: &Value, pointer: &str) -> String {
    match value.pointer(pointer).and_then(Value::as_str) {
        Some(raw) => format_time(raw),
        None => "-".to_owned(),
    }
}

/// An RFC 3339 timestamp in UTC to the second; text that is not one is shown as it is.
pub(crate) fn format_time(raw: &str) -> String {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| {
            t.with_timezone(&Utc)
                .to_rfc3339_opts(SecondsFormat::Secs, true)
        })
        .unwrap_or_else(|_| raw.to_owned())
}

/// A yes/no column from a boolean at `pointer`.
pub(crate) fn flag(value: &Value, pointer: &str) -> String {
    match value.pointer(pointer).and_then(Value::as_bool) {
        Some(true) => "yes".to_owned(),
        Some(false) => "no".to_owned(),
        None => "-".to_owned(),
    }
}

/// Where a job's tasks go: the URL of an HTTP target, `exchange/routing_key` of an AMQP one, or
/// how many steps a job made of steps has.
pub(crate) fn target(job: &Value) -> String {
    if let Some(steps) = job.get("steps").and_then(Value::as_array) {
        return format!("{} steps", steps.len());
    }
    let target = &job["target"];
    if let Some(url) = target.get("url").and_then(Value::as_str) {
        return url.to_owned();
    }
    match (
        target.get("exchange").and_then(Value::as_str),
        target.get("routing_key").and_then(Value::as_str),
    ) {
        (Some(exchange), Some(key)) => format!("amqp:{exchange}/{key}"),
        _ => text(target, "/kind"),
    }
}

/// A trigger's schedule in a few words: `cron 0 */15 * * * * (Asia/Kolkata)`, `every 5m`,
/// `once at …`.
pub(crate) fn schedule(trigger: &Value) -> String {
    match trigger.get("kind").and_then(Value::as_str) {
        Some("cron") => {
            let zone = trigger
                .get("timezone")
                .and_then(Value::as_str)
                .unwrap_or("UTC");
            format!("cron {} ({zone})", text(trigger, "/expression"))
        }
        Some("interval") => format!("every {}", text(trigger, "/every")),
        Some("once") => format!("once at {}", time(trigger, "/at")),
        Some(other) => other.to_owned(),
        None => "-".to_owned(),
    }
}

/// A value as YAML, for the detail views (`jobs get`, `tasks get`).
pub(crate) fn yaml(value: &Value) -> String {
    serde_saphyr::to_string(value).unwrap_or_else(|_| {
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    })
}

/// Writes to standard output, ending with a newline. False when it is gone (a closed pipe, as
/// in `pacer events | head`), which ends the command quietly instead of a panic.
pub(crate) fn emit(text: &str) -> bool {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let newline = if text.ends_with('\n') { "" } else { "\n" };
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.write_all(newline.as_bytes()))
        .and_then(|()| stdout.flush())
        .is_ok()
}

/// Pretty JSON for `--output json`.
pub(crate) fn json(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_table_aligns_its_columns_and_leaves_the_last_unpadded() {
        let mut table = Table::new(&["NAME", "STATE", "NOTE"]);
        table.row(vec!["a".into(), "processing".into(), "x".into()]);
        table.row(vec!["longer-name".into(), "ok".into(), String::new()]);
        assert_eq!(
            table.render(),
            "NAME         STATE       NOTE\n\
             a            processing  x\n\
             longer-name  ok\n"
        );
    }

    #[test]
    fn times_are_shown_in_utc_to_the_second_and_absent_values_as_a_dash() {
        let value = json!({"at": "2026-12-01T10:30:00.123456+01:00", "none": null, "n": 3});
        assert_eq!(time(&value, "/at"), "2026-12-01T09:30:00Z");
        assert_eq!(time(&value, "/none"), "-");
        assert_eq!(text(&value, "/n"), "3");
        assert_eq!(text(&value, "/missing"), "-");
    }

    #[test]
    fn schedules_read_as_a_few_words() {
        assert_eq!(
            schedule(
                &json!({"kind": "cron", "expression": "0 * * * *", "timezone": "Asia/Kolkata"})
            ),
            "cron 0 * * * * (Asia/Kolkata)"
        );
        assert_eq!(
            schedule(&json!({"kind": "interval", "every": "5m"})),
            "every 5m"
        );
        assert_eq!(
            target(&json!({"target": {"kind": "amqp", "exchange": "x", "routing_key": "k"}})),
            "amqp:x/k"
        );
    }
}
