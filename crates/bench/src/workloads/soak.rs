//! `soak`: T interval triggers at 1 s (T tasks a second, each called back `completed` at once)
//! for a long time on nodes whose retention is short, so that pruning runs the whole time and
//! the tables should stop growing once they hold a retention's worth. Every sample (10 s) reads
//! each table's rows, dead rows and bytes, the dispatches of the window and their lateness, and
//! the leader's pruning metrics; the report holds the tables against flatness and writes the
//! series to JSON and to a PNG beside it. Autovacuum is on for the run, as in production.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::firing::{Setup, Timing, node_pids};
use super::{Bench, CpuUse, SoakArgs, positive};
use crate::cluster::Target;
use crate::database::Autovacuum;
use crate::downstream::Downstream;
use crate::report::{Report, Row};
use crate::stats::{Distribution, round};

/// The tables a soak follows: those a task's cycle writes and pruning deletes from.
const TABLES: [&str; 4] = ["tasks", "task_attempts", "events", "skipped_runs"];
/// How much a table may grow from the start of the steady part to its end and still be flat.
const FLAT: f64 = 0.15;

pub(crate) async fn run(bench: &Bench, args: &SoakArgs) -> Result<Report> {
    positive("--duration", args.duration)?;
    positive("--sample-every", args.sample_every)?;
    anyhow::ensure!(
        args.settle < args.duration,
        "--settle must be shorter than --duration"
    );
    let span = |d: Duration| format!("{}ms", d.as_millis());
    let settings: Vec<(String, String)> = [
        ("PACER_RETENTION__TASKS", span(args.retention)),
        ("PACER_RETENTION__SKIPS", span(args.retention)),
        ("PACER_EVENTS__RETENTION", span(args.retention)),
        ("PACER_RETENTION__INTERVAL", span(args.prune_every)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Autovacuum::on_during(bench.server_url(), async |autovacuum| {
        measure(bench, args, &settings, autovacuum).await
    })
    .await
}

/// The run itself, on nodes with `settings`, with autovacuum on.
async fn measure(
    bench: &Bench,
    args: &SoakArgs,
    settings: &[(String, String)],
    autovacuum: &Autovacuum,
) -> Result<Report> {
    let target = bench.target_with("soak", 3, settings).await?;
    let out_dir = bench.out_dir.clone();
    let png = out_dir.join(format!("soak-{}.png", bench.stamp));
    bench
        .run_on(target, async |target| {
            let environment = bench.environment(target).await?;
            let downstream =
                Downstream::start(&bench.common.downstream_host, bench.common.callback_delay)
                    .await?;
            let setup = Setup::create(
                target,
                &downstream,
                args.triggers,
                true,
                Timing::EVERY_SECOND,
            )
            .await?;
            eprintln!(
                "pacer-bench: soak: {} triggers at 1 s for {} s, retention {} s",
                args.triggers,
                args.duration.as_secs(),
                args.retention.as_secs()
            );
            let cpu = CpuUse::start(target, &node_pids(target)).await;
            let samples = sample(target, &downstream, args).await?;
            let cpu = cpu.finish(target).await;
            if let Err(error) = target.api.delete_job(target.url(0), &setup.job.name).await {
                eprintln!("pacer-bench: soak: deleting the job at the end: {error:#}");
            }
            let mut report = Report::new(
                "soak",
                environment,
                json!({
                    "triggers": args.triggers,
                    "duration_s": args.duration.as_secs_f64(),
                    "retention_s": args.retention.as_secs_f64(),
                    "prune_every_s": args.prune_every.as_secs_f64(),
                    "sample_every_s": args.sample_every.as_secs_f64(),
                    "settle_s": args.settle.as_secs_f64(),
                    "autovacuum": autovacuum.describe(),
                }),
            );
            report.measured = format!(
                "{} interval triggers at 1 s, each task called back `completed` at once, for {} \
                 s on nodes with retention.tasks, retention.skips and events.retention of {} s \
                 (pruned every {} s). Every {} s: rows (n_live_tup), dead rows (n_dead_tup) and \
                 bytes (pg_total_relation_size) of each table, first dispatches received and \
                 their lateness (received − scheduled_at of the body), and the leader's \
                 pacer_pruned_rows_total and pacer_prune_batch_seconds. Flat: the steady part \
                 (after {} s) ends within {:.0} % of where it began. Autovacuum {}.",
                args.triggers,
                args.duration.as_secs(),
                args.retention.as_secs(),
                args.prune_every.as_secs(),
                args.sample_every.as_secs(),
                args.settle.as_secs(),
                FLAT * 100.0,
                autovacuum.describe()
            );
            judge(&mut report, &samples, args);
            report.rows.push(super::firing::cpu_row(&cpu));
            report.results["cpu"] = cpu;
            report.raw =
                json!({"samples": samples.iter().map(Sample::to_json).collect::<Vec<_>>()});
            match draw(&png, &samples, args) {
                Ok(()) => {
                    report.results["png"] = json!(png.display().to_string());
                    report
                        .rows
                        .push(Row::info("plot", png.display().to_string()));
                }
                Err(error) => report.notes.push(format!("no plot drawn: {error:#}")),
            }
            Ok(report)
        })
        .await
}

/// One table at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct TableSize {
    rows: i64,
    dead: i64,
    bytes: i64,
}

/// What one sample saw.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// Seconds since the soak started.
    t: f64,
    tables: BTreeMap<String, TableSize>,
    /// First dispatches received in the window, per second.
    dispatched_per_s: f64,
    /// Dispatch received − scheduled of those, milliseconds.
    lateness: Option<Distribution>,
    /// Rows pruned so far, all tables (the leader's counter; restarts with a new leader).
    pruned: f64,
    /// Pruning batches so far, and those over 1 s.
    prune_batches: f64,
    prune_batches_over_limit: f64,
    /// Transactions committed in the database so far.
    commits: i64,
}

impl Sample {
    fn to_json(&self) -> Value {
        json!({
            "t": round(self.t),
            "tables": self.tables.iter().map(|(name, s)| (name.clone(), json!({
                "rows": s.rows, "dead_rows": s.dead, "bytes": s.bytes,
            }))).collect::<serde_json::Map<_, _>>(),
            "dispatched_per_s": round(self.dispatched_per_s),
            "dispatch_lateness_ms": self.lateness.map(|d| json!({
                "p50": round(d.p50), "p99": round(d.p99), "max": round(d.max), "count": d.count,
            })),
            "pruned_rows_total": self.pruned,
            "prune_batches": self.prune_batches,
            "prune_batches_over_1s": self.prune_batches_over_limit,
            "commits": self.commits,
        })
    }
}

/// Samples every `args.sample_every` until `args.duration` has passed.
async fn sample(target: &Target, downstream: &Downstream, args: &SoakArgs) -> Result<Vec<Sample>> {
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut seen = 0;
    let mut first_seen = std::collections::HashSet::new();
    let mut last = Instant::now();
    let mut tick = tokio::time::interval(args.sample_every);
    tick.tick().await;
    while started.elapsed() < args.duration {
        tick.tick().await;
        let window = last.elapsed().as_secs_f64().max(1e-3);
        last = Instant::now();
        let (dispatches, now_seen) = downstream.dispatches_after(seen);
        seen = now_seen;
        let mut late = Vec::new();
        for d in dispatches {
            if !first_seen.insert(d.task_id) {
                continue;
            }
            if let Some(scheduled) = d.scheduled_at {
                late.push(super::millis(d.received_at, scheduled));
            }
        }
        let tables = table_sizes(target).await?;
        let (pruned, batches, over) = pruning(target).await;
        let commits: i64 =
            sqlx::query_scalar("select xact_commit from pg_stat_database where datname = $1")
                .bind(&target.database)
                .fetch_one(&target.stats)
                .await?;
        let sample = Sample {
            t: started.elapsed().as_secs_f64(),
            tables,
            dispatched_per_s: late.len() as f64 / window,
            lateness: Distribution::of(&late),
            pruned,
            prune_batches: batches,
            prune_batches_over_limit: over,
            commits,
        };
        eprintln!(
            "pacer-bench: soak: {:>5.0} s  tasks {:>7} rows {:>6.1} MB  events {:>8} rows  {:>5.0} dispatched/s  p99 {} ms",
            sample.t,
            sample.tables.get("tasks").map_or(0, |s| s.rows),
            sample.tables.get("tasks").map_or(0, |s| s.bytes) as f64 / 1e6,
            sample.tables.get("events").map_or(0, |s| s.rows),
            sample.dispatched_per_s,
            sample
                .lateness
                .map_or_else(|| "—".to_owned(), |d| format!("{:.0}", d.p99))
        );
        samples.push(sample);
    }
    Ok(samples)
}

async fn table_sizes(target: &Target) -> Result<BTreeMap<String, TableSize>> {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "select relname::text, n_live_tup, n_dead_tup, pg_total_relation_size(relid)
         from pg_stat_user_tables where relname = any($1)",
    )
    .bind(TABLES.map(str::to_owned).to_vec())
    .fetch_all(&target.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, rows, dead, bytes)| (name, TableSize { rows, dead, bytes }))
        .collect())
}

/// The leader's pruning counters, summed over the nodes (only the leader prunes): rows pruned,
/// batches, and batches over 1 s. A node that does not answer counts 0.
async fn pruning(target: &Target) -> (f64, f64, f64) {
    let mut totals = (0.0, 0.0, 0.0);
    for url in &target.urls {
        let Ok(text) = target.api.metrics(url).await else {
            continue;
        };
        totals.0 += metric_sum(&text, "pacer_pruned_rows_total", None);
        let count = metric_sum(&text, "pacer_prune_batch_seconds_count", None);
        // The exporter writes the 1 s bound as `1` or `1.0`; only one of them is there.
        let within = metric_sum(&text, "pacer_prune_batch_seconds_bucket", Some("le=\"1\""))
            + metric_sum(
                &text,
                "pacer_prune_batch_seconds_bucket",
                Some("le=\"1.0\""),
            );
        totals.1 += count;
        totals.2 += (count - within).max(0.0);
    }
    totals
}

/// The sum of every sample of `name` in Prometheus text whose labels contain `label`.
fn metric_sum(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((metric, labels)) => (metric, labels),
                None => (series, ""),
            };
            (metric == name && label.is_none_or(|l| labels.contains(l)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Holds the steady part (after `args.settle`) against flatness and the pruning limit.
fn judge(report: &mut Report, samples: &[Sample], args: &SoakArgs) {
    let settle = args.settle.as_secs_f64();
    let steady: Vec<&Sample> = samples.iter().filter(|s| s.t >= settle).collect();
    if steady.len() < 4 {
        report
            .failures
            .push("too few samples after --settle to judge flatness".to_owned());
        return;
    }
    let quarter = (steady.len() / 4).max(1);
    let (head, tail) = (&steady[..quarter], &steady[steady.len() - quarter..]);
    let mean = |part: &[&Sample], f: &dyn Fn(&Sample) -> f64| -> f64 {
        part.iter().map(|s| f(s)).sum::<f64>() / part.len() as f64
    };
    for table in ["tasks", "task_attempts", "events"] {
        let rows = |s: &Sample| s.tables.get(table).map_or(0.0, |t| t.rows as f64);
        let bytes = |s: &Sample| s.tables.get(table).map_or(0.0, |t| t.bytes as f64);
        for (what, f, unit) in [
            ("rows", &rows as &dyn Fn(&Sample) -> f64, 1.0),
            ("bytes", &bytes as &dyn Fn(&Sample) -> f64, 1e6),
        ] {
            let (begin, end) = (mean(head, f), mean(tail, f));
            let growth = if begin > 0.0 { end / begin - 1.0 } else { 0.0 };
            report.rows.push(Row::check(
                format!("{table} {what}: steady part, first → last quarter (mean)"),
                format!(
                    "{:.0}{} → {:.0}{} ({:+.0} %)",
                    begin / unit,
                    if unit > 1.0 { " MB" } else { "" },
                    end / unit,
                    if unit > 1.0 { " MB" } else { "" },
                    growth * 100.0
                ),
                format!("≤ +{:.0} %", FLAT * 100.0),
                growth <= FLAT,
            ));
        }
        let dead_max = |part: &[&Sample]| {
            part.iter()
                .filter_map(|s| s.tables.get(table).map(|t| t.dead))
                .max()
                .unwrap_or(0)
        };
        let (dead_head, dead_tail) = (dead_max(head), dead_max(tail));
        report.rows.push(Row::check(
            format!("{table} dead rows: most in the first → last quarter"),
            format!("{dead_head} → {dead_tail}"),
            "bounded (last ≤ 2 × first + 10,000)",
            dead_tail <= dead_head * 2 + 10_000,
        ));
    }
    let rates: Vec<f64> = steady.iter().map(|s| s.dispatched_per_s).collect();
    let throughput = Distribution::of(&rates);
    if let Some(d) = throughput {
        // A sample's window holds one whole second more or less of firing than another's.
        let rate = args.triggers as f64;
        report.rows.push(Row::check(
            "first dispatches per second, per sample: min / median / max",
            format!("{:.0} / {:.0} / {:.0}", d.min, d.p50, d.max),
            format!("median ≥ 95 %, min ≥ 80 % of {}", args.triggers),
            d.p50 >= 0.95 * rate && d.min >= 0.8 * rate,
        ));
    }
    let p99s: Vec<f64> = steady
        .iter()
        .filter_map(|s| s.lateness.map(|l| l.p99))
        .collect();
    if let (Some(p99), Some(first), Some(last)) = (
        Distribution::of(&p99s),
        Distribution::of(&p99s[..quarter.min(p99s.len())]),
        Distribution::of(&p99s[p99s.len().saturating_sub(quarter)..]),
    ) {
        report.rows.push(Row::info(
            "dispatch lateness p99 per sample: min / median / max",
            format!("{:.0} / {:.0} / {:.0} ms", p99.min, p99.p50, p99.max),
        ));
        report.rows.push(Row::check(
            "dispatch lateness p99, median of the first → last quarter",
            format!("{:.0} → {:.0} ms", first.p50, last.p50),
            "last ≤ 1.5 × first + 20 ms",
            last.p50 <= first.p50 * 1.5 + 20.0,
        ));
    }
    let last = samples.last().cloned().unwrap_or_default();
    report.rows.push(Row::info(
        "rows pruned by the leader / pruning batches",
        format!("{:.0} / {:.0}", last.pruned, last.prune_batches),
    ));
    report.rows.push(Row::check(
        "pruning batches (transactions) over 1 s",
        format!("{:.0}", last.prune_batches_over_limit),
        "0",
        last.prune_batches_over_limit == 0.0,
    ));
    if let (Some(first), Some(end)) = (steady.first(), steady.last()) {
        let seconds = (end.t - first.t).max(1e-3);
        let tasks = rates.iter().sum::<f64>() / rates.len() as f64 * seconds;
        report.rows.push(Row::info(
            "commits per task, steady part",
            format!(
                "{:.2}",
                (end.commits - first.commits) as f64 / tasks.max(1.0)
            ),
        ));
    }
    report.results = json!({
        "samples": samples.len(),
        "steady_samples": steady.len(),
        "last": last.to_json(),
        "dispatched_per_s": throughput.map(|d| d.to_json()),
    });
}

/// A named line of a chart: (seconds, value) points.
type Series<'a> = (&'a str, Vec<(f64, f64)>);

/// Draws rows, bytes, throughput and lateness over time, one panel each, to `path`.
fn draw(path: &Path, samples: &[Sample], args: &SoakArgs) -> Result<()> {
    use plotters::prelude::*;

    let font = font()?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("the font could not be read"))?;
    let root = BitMapBackend::new(path, (1200, 1400)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(40);
    title.draw(&Text::new(
        format!(
            "pacer-bench soak: {} triggers at 1 s, retention {} s, {} s",
            args.triggers,
            args.retention.as_secs(),
            args.duration.as_secs()
        ),
        (20, 10),
        ("sans-serif", 22),
    ))?;
    let panels = body.split_evenly((4, 1));
    let end = samples.last().map_or(1.0, |s| s.t).max(1.0);
    let colours = [BLUE, RED, GREEN, MAGENTA];
    let table_series = |f: &dyn Fn(&TableSize) -> f64| -> Vec<Series> {
        TABLES
            .iter()
            .map(|table| {
                (
                    *table,
                    samples
                        .iter()
                        .map(|s| (s.t, s.tables.get(*table).map_or(0.0, f)))
                        .collect(),
                )
            })
            .collect()
    };
    let rows = table_series(&|t| t.rows as f64 / 1000.0);
    let bytes = table_series(&|t| t.bytes as f64 / 1e6);
    let throughput = vec![(
        "first dispatches/s",
        samples.iter().map(|s| (s.t, s.dispatched_per_s)).collect(),
    )];
    let lateness = vec![
        (
            "p50",
            samples
                .iter()
                .filter_map(|s| s.lateness.map(|l| (s.t, l.p50)))
                .collect(),
        ),
        (
            "p99",
            samples
                .iter()
                .filter_map(|s| s.lateness.map(|l| (s.t, l.p99)))
                .collect(),
        ),
    ];
    let charts: [(&str, Vec<Series>); 4] = [
        ("live rows (thousands)", rows),
        ("table size with indexes (MB)", bytes),
        ("throughput (tasks/s)", throughput),
        ("dispatch lateness (ms)", lateness),
    ];
    for (panel, (caption, series)) in panels.iter().zip(charts) {
        let top = series
            .iter()
            .flat_map(|(_, points)| points.iter().map(|p| p.1))
            .fold(0.0_f64, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..end, 0.0..top.max(1.0))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .label_style(("sans-serif", 13))
            .draw()?;
        for (i, (name, points)) in series.into_iter().enumerate() {
            let colour = colours[i % colours.len()];
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// A TrueType font from the machine (DejaVu Sans or Liberation Sans, as Debian installs them),
/// kept for the life of the process.
fn font() -> Result<&'static [u8]> {
    const CANDIDATES: [&str; 3] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
    ];
    for candidate in CANDIDATES {
        if let Ok(bytes) = std::fs::read(candidate) {
            return Ok(Box::leak(bytes.into_boxed_slice()));
        }
    }
    anyhow::bail!(
        "no font found (install fonts-dejavu-core); looked at {}",
        CANDIDATES.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn metric_sums_add_the_series_of_one_name_and_label() {
        let text = "# TYPE pacer_pruned_rows_total counter\n\
                    pacer_pruned_rows_total{table=\"tasks\"} 10\n\
                    pacer_pruned_rows_total{table=\"events\"} 30\n\
                    pacer_prune_batch_seconds_bucket{le=\"0.5\"} 4\n\
                    pacer_prune_batch_seconds_bucket{le=\"1\"} 5\n\
                    pacer_prune_batch_seconds_count 6\n";
        assert_eq!(metric_sum(text, "pacer_pruned_rows_total", None), 40.0);
        assert_eq!(
            metric_sum(text, "pacer_prune_batch_seconds_bucket", Some("le=\"1\"")),
            5.0
        );
        assert_eq!(
            metric_sum(text, "pacer_prune_batch_seconds_count", None),
            6.0
        );
        assert_eq!(metric_sum(text, "pacer_missing", None), 0.0);
    }
}
