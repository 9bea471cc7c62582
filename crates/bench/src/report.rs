//! What a workload found, and how it is told: a table for people and one JSON line on stdout,
//! and the raw samples in `target/bench/<workload>-<timestamp>.json`.

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::workloads::Bench;

/// Whether a figure meets its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Met,
    Missed,
    /// No target: context for the other figures.
    Info,
}

/// One line of the table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    measure: String,
    value: String,
    target: String,
    verdict: Verdict,
}

impl Row {
    /// A figure without a target.
    pub(crate) fn info(measure: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            measure: measure.into(),
            value: value.into(),
            target: String::new(),
            verdict: Verdict::Info,
        }
    }

    /// A figure held against `target`.
    pub(crate) fn check(
        measure: impl Into<String>,
        value: impl Into<String>,
        target: impl Into<String>,
        met: bool,
    ) -> Self {
        Self {
            measure: measure.into(),
            value: value.into(),
            target: target.into(),
            verdict: if met { Verdict::Met } else { Verdict::Missed },
        }
    }
}

/// The findings of one run.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub(crate) workload: &'static str,
    /// One or two sentences: what was measured, and how.
    pub(crate) measured: String,
    /// Where and with what: machine, PostgreSQL, build profile, nodes and their settings.
    pub(crate) environment: Value,
    /// The workload's parameters.
    pub(crate) parameters: Value,
    pub(crate) rows: Vec<Row>,
    /// The figures, as JSON.
    pub(crate) results: Value,
    /// The samples the figures were computed from; only in the raw file.
    pub(crate) raw: Value,
    /// Correctness failures (lost, missing or duplicate runs): the exit status is non-zero.
    pub(crate) failures: Vec<String>,
    pub(crate) notes: Vec<String>,
}

impl Report {
    pub(crate) fn new(workload: &'static str, environment: Value, parameters: Value) -> Self {
        Self {
            workload,
            measured: String::new(),
            environment,
            parameters,
            rows: Vec::new(),
            results: Value::Null,
            raw: Value::Null,
            failures: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Notes a correctness failure when `count` is not zero.
    pub(crate) fn require_zero(&mut self, what: &str, count: u64) {
        if count > 0 {
            self.failures.push(format!("{count} {what}"));
        }
    }

    /// Writes the raw file, then the table and the JSON line to stdout.
    pub(crate) async fn emit(&self, bench: &Bench) -> Result<()> {
        let file = bench
            .out_dir
            .join(format!("{}-{}.json", self.workload, bench.stamp));
        let summary = json!({
            "workload": self.workload,
            "date": bench.started.to_rfc3339(),
            "measured": self.measured,
            "environment": self.environment,
            "parameters": self.parameters,
            "results": self.results,
            "failures": self.failures,
            "raw_file": file.display().to_string(),
        });
        let mut raw = summary.clone();
        raw["notes"] = json!(self.notes);
        raw["raw"] = self.raw.clone();
        std::fs::create_dir_all(&bench.out_dir)?;
        std::fs::write(&file, serde_json::to_vec(&raw)?)
            .with_context(|| format!("writing {}", file.display()))?;
        println!("{}", self.table(bench));
        println!("{}", serde_json::to_string(&summary)?);
        Ok(())
    }

    fn table(&self, bench: &Bench) -> String {
        let env = &self.environment;
        let machine = &env["machine"];
        let mut out = format!(
            "pacer-bench {} · {} · {} cores ({}) · {} · pacer {} build · {}\n",
            self.workload,
            bench.started.format("%Y-%m-%d %H:%M UTC"),
            machine["cores"],
            machine["cpu"].as_str().unwrap_or("unknown CPU"),
            env["postgres"]
                .as_str()
                .and_then(|v| v.split(" on ").next())
                .unwrap_or("PostgreSQL ?"),
            env["pacer_profile"].as_str().unwrap_or("?"),
            match env["target"]["nodes"].as_u64() {
                Some(n) => format!("{n} node(s) started by the harness"),
                None => "existing cluster".to_owned(),
            },
        );
        out.push_str(&wrap(&format!("measured: {}", self.measured), 100));
        out.push('\n');
        let header = Row {
            measure: "measure".into(),
            value: "value".into(),
            target: "target".into(),
            verdict: Verdict::Info,
        };
        let width = |f: fn(&Row) -> &str| {
            self.rows
                .iter()
                .chain(std::iter::once(&header))
                .map(|r| f(r).chars().count())
                .max()
                .unwrap_or(0)
        };
        let (w1, w2, w3) = (
            width(|r| &r.measure),
            width(|r| &r.value),
            width(|r| &r.target),
        );
        let line = |r: &Row, verdict: &str| {
            format!(
                "  {:<w1$}  {:<w2$}  {:<w3$}  {verdict}\n",
                r.measure, r.value, r.target
            )
        };
        out.push_str(&line(&header, "verdict"));
        out.push_str(&format!(
            "  {}  {}  {}  {}\n",
            "─".repeat(w1),
            "─".repeat(w2),
            "─".repeat(w3),
            "─".repeat(7)
        ));
        for row in &self.rows {
            let verdict = match row.verdict {
                Verdict::Met => "met",
                Verdict::Missed => "MISSED",
                Verdict::Info => "",
            };
            out.push_str(&line(row, verdict));
        }
        for note in &self.notes {
            out.push_str(&wrap(&format!("note: {note}"), 100));
            out.push('\n');
        }
        for failure in &self.failures {
            out.push_str(&format!("FAILED: {failure}\n"));
        }
        out
    }
}

/// Wraps `text` at `width` columns, continuing lines with an indent.
fn wrap(text: &str, width: usize) -> String {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let current = lines.last_mut().map_or(0, |l| l.chars().count());
        if current > 0 && current + 1 + word.chars().count() > width {
            lines.push("    ".to_owned());
        }
        if let Some(last) = lines.last_mut() {
            if !last.trim().is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn long_text_wraps_with_an_indent_and_short_text_stays_whole() {
        assert_eq!(wrap("a b c", 80), "a b c");
        let wrapped = wrap("aaaa bbbb cccc", 9);
        assert_eq!(wrapped, "aaaa bbbb\n    cccc");
    }
}
