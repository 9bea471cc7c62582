//! What the kernel says about this machine and its processes: `/proc` for memory and CPU time,
//! `getconf` for the clock tick. Linux only, like the rest of the harness.

use std::sync::OnceLock;

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// The resident set size of a process in KiB (`VmRSS` of `/proc/<pid>/status`).
pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// User plus system CPU time a process has used, in seconds (`/proc/<pid>/stat`).
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces, so count fields after its closing paren:
    // utime and stime are fields 14 and 15, the 12th and 13th after it.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        let field = fields.get(i).context("short /proc/<pid>/stat")?;
        Ok(field.parse::<u64>()? as f64)
    };
    Ok((ticks(11)? + ticks(12)?) / clock_ticks())
}

/// Clock ticks per second, as `getconf CLK_TCK` says (100 on practically every Linux).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The machine-wide CPU counters of `/proc/stat`, to tell how busy all cores were between two
/// readings (this benchmark's processes, PostgreSQL, and whatever else shares the machine).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    pub(crate) fn read() -> Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = stat
            .lines()
            .find(|l| l.starts_with("cpu "))
            .context("no cpu line in /proc/stat")?;
        let values: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal …: idle and iowait are not busy.
        let total: u64 = values.iter().take(8).sum();
        let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
        Ok(Self {
            busy: total - idle,
            total,
        })
    }

    /// The share of all cores busy since `earlier`, 0–100 %.
    pub(crate) fn busy_since(&self, earlier: &Self) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        100.0 * self.busy.saturating_sub(earlier.busy) as f64 / total as f64
    }
}

/// What this machine is, for every report.
pub(crate) fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|kib| (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|k| k.trim().to_owned());
    json!({
        "cores": cores,
        "cpu": model,
        "memory_gib": memory_gib,
        "kernel": kernel,
        "load_average_at_start": load,
    })
}

/// The commit of the working tree the harness runs in, with `+dirty` for local changes.
pub(crate) fn git_commit() -> Option<String> {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
    };
    let commit = run(&["rev-parse", "--short", "HEAD"])?.trim().to_owned();
    let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.trim().is_empty());
    Some(if dirty {
        format!("{commit}+dirty")
    } else {
        commit
    })
}

#[cfg(test)]
mod tests {
    use super::{CpuTimes, cpu_seconds, rss_kib};

    #[test]
    fn this_process_has_memory_and_cpu_time_and_the_machine_has_counters() {
        let pid = std::process::id();
        assert!(rss_kib(pid).expect("VmRSS") > 0);
        assert!(cpu_seconds(pid).expect("stat") >= 0.0);
        let before = CpuTimes::read().expect("/proc/stat");
        let after = CpuTimes::read().expect("/proc/stat");
        let busy = after.busy_since(&before);
        assert!((0.0..=100.0).contains(&busy));
    }
}
