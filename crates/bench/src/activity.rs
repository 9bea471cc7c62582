//! What the run's database backends are doing, sampled from `pg_stat_activity` while a workload
//! runs: a poor man's profile of PostgreSQL's side, for a server without `pg_stat_statements`.
//! Each sample counts every backend of the run's database that is not idle, by its state, what
//! it waits for (a lock, the WAL, the client…) and the start of its statement. Averaged over the
//! samples, a kind's count is how many backends were in it on average: a statement that waits
//! for `Lock/transactionid` while another transaction holds the row it wants is serialized.
//!
//! Given the start of a statement that takes a contended lock, each sample also asks
//! `pg_blocking_pids` who holds up the backends waiting in it, and what those holders are doing
//! (running a statement, waiting for the WAL, or idle in their transaction, waiting for their
//! client): where the serialized time goes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{PgPool, Row as _};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How much of a statement names it in the profile.
const STATEMENT_CHARS: usize = 100;

/// Samples `pg_stat_activity` until finished.
pub(crate) struct ActivitySampler {
    stop: Arc<Notify>,
    handle: JoinHandle<Profile>,
}

/// What the samples found.
#[derive(Debug, Clone, Default)]
pub(crate) struct Profile {
    pub(crate) samples: u64,
    /// (state, wait, statement) → backends seen in it, summed over the samples.
    pub(crate) kinds: HashMap<(String, String, String), u64>,
    /// Samples in which a backend waited in the lock statement.
    pub(crate) contended: u64,
    /// What the backends holding up those waiters were doing (not themselves waiting for a
    /// lock), as `kinds`.
    pub(crate) holders: HashMap<(String, String, String), u64>,
}

impl ActivitySampler {
    /// Samples the backends of `database` every `every`, over `stats` (a pool to another
    /// database of the server, so sampling is no work in the measured one).
    /// `lock_statement`: the start of the statement whose waiters' holders are profiled.
    pub(crate) fn start(
        stats: PgPool,
        database: String,
        every: Duration,
        lock_statement: Option<&'static str>,
    ) -> Self {
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        let handle = tokio::spawn(async move {
            let mut profile = Profile::default();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    () = stopped.notified() => return profile,
                    _ = tick.tick() => {}
                }
                let Ok(rows) = sqlx::query(
                    "select state, coalesce(wait_event_type || '/' || wait_event, '') as wait,
                            left(regexp_replace(query, '\\s+', ' ', 'g'), $2) as statement
                     from pg_stat_activity
                     where datname = $1 and pid <> pg_backend_pid()
                       and state is not null and state <> 'idle'",
                )
                .bind(&database)
                .bind(i32::try_from(STATEMENT_CHARS).unwrap_or(100))
                .fetch_all(&stats)
                .await
                else {
                    continue;
                };
                profile.samples += 1;
                for row in rows {
                    *profile.kinds.entry(kind_of(&row)).or_default() += 1;
                }
                let Some(prefix) = lock_statement else {
                    continue;
                };
                let Ok(rows) = sqlx::query(
                    "with waiting as (
                         select pid from pg_stat_activity
                         where datname = $1 and wait_event_type = 'Lock'
                           and starts_with(ltrim(query), $3)
                     ),
                     holders as (
                         select distinct unnest(pg_blocking_pids(pid)) as pid from waiting
                     )
                     select (select count(*) from waiting) as waiting, a.state,
                            coalesce(a.wait_event_type || '/' || a.wait_event, '') as wait,
                            left(regexp_replace(a.query, '\\s+', ' ', 'g'), $2) as statement
                     from (select 1) one
                     left join holders h on true
                     left join pg_stat_activity a
                            on a.pid = h.pid and a.wait_event_type is distinct from 'Lock'",
                )
                .bind(&database)
                .bind(i32::try_from(STATEMENT_CHARS).unwrap_or(100))
                .bind(prefix)
                .fetch_all(&stats)
                .await
                else {
                    continue;
                };
                if rows.first().is_some_and(|r| r.get::<i64, _>("waiting") > 0) {
                    profile.contended += 1;
                }
                for row in rows {
                    if row.get::<Option<String>, _>("state").is_some() {
                        *profile.holders.entry(kind_of(&row)).or_default() += 1;
                    }
                }
            }
        });
        Self { stop, handle }
    }

    pub(crate) async fn finish(self) -> Profile {
        self.stop.notify_one();
        self.handle.await.unwrap_or_default()
    }
}

/// (state, wait, statement) of a row of `pg_stat_activity`.
fn kind_of(row: &sqlx::postgres::PgRow) -> (String, String, String) {
    (
        row.get::<Option<String>, _>("state").unwrap_or_default(),
        row.get::<Option<String>, _>("wait").unwrap_or_default(),
        row.get::<Option<String>, _>("statement")
            .unwrap_or_default()
            .trim()
            .to_owned(),
    )
}

/// `kinds` as backends on average over `samples`, most first.
fn ranked(
    kinds: &HashMap<(String, String, String), u64>,
    samples: u64,
) -> Vec<(&(String, String, String), f64)> {
    let samples = samples.max(1) as f64;
    let mut ranked: Vec<_> = kinds
        .iter()
        .map(|(kind, n)| (kind, *n as f64 / samples))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked
}

/// The `top` of `kinds` as JSON.
fn top_json(kinds: &HashMap<(String, String, String), u64>, samples: u64, top: usize) -> Value {
    ranked(kinds, samples)
        .into_iter()
        .take(top)
        .map(|((state, wait, statement), avg)| {
            json!({
                "backends": (avg * 1000.0).round() / 1000.0,
                "state": state,
                "wait": wait,
                "statement": statement,
            })
        })
        .collect()
}

impl Profile {
    /// The share of samples in which a backend waited in the lock statement.
    pub(crate) fn contended_share(&self) -> f64 {
        self.contended as f64 / self.samples.max(1) as f64
    }

    /// What the lock's holders were doing while someone waited for it, by state, wait event
    /// and statement, as shares of the contended samples, most first.
    pub(crate) fn holder_shares(&self) -> Vec<(String, f64)> {
        let mut shares: HashMap<String, f64> = HashMap::new();
        for ((state, wait, statement), share) in ranked(&self.holders, self.contended) {
            let words = statement
                .trim_start_matches("-- ")
                .split_whitespace()
                .take(4)
                .collect::<Vec<_>>()
                .join(" ");
            let label = match (state.as_str(), wait.as_str()) {
                ("idle in transaction", _) => format!("waiting for its node after `{words}`"),
                (_, "") => format!("running `{words}`"),
                (_, wait) => format!("{wait} in `{words}`"),
            };
            *shares.entry(label).or_default() += share;
        }
        let mut shares: Vec<(String, f64)> = shares.into_iter().collect();
        shares.sort_by(|a, b| b.1.total_cmp(&a.1));
        shares
    }

    /// The share of the contended samples in which the lock's holder was idle in its
    /// transaction, waiting for its client (the node) to send the next statement.
    pub(crate) fn holder_idle_share(&self) -> f64 {
        self.holders
            .iter()
            .filter(|((state, _, _), _)| state == "idle in transaction")
            .map(|(_, n)| *n)
            .sum::<u64>() as f64
            / self.contended.max(1) as f64
    }

    /// Backends not idle, on average.
    pub(crate) fn busy(&self) -> f64 {
        self.kinds.values().sum::<u64>() as f64 / self.samples.max(1) as f64
    }

    /// Backends waiting for a lock (heavyweight: a row, a transaction), on average.
    pub(crate) fn waiting_for_locks(&self) -> f64 {
        self.kinds
            .iter()
            .filter(|((_, wait, _), _)| wait.starts_with("Lock/"))
            .map(|(_, n)| *n)
            .sum::<u64>() as f64
            / self.samples.max(1) as f64
    }

    /// Backends waiting for a lock in a statement that starts with `prefix`, on average.
    pub(crate) fn waiting_in(&self, prefix: &str) -> f64 {
        self.kinds
            .iter()
            .filter(|((_, wait, statement), _)| {
                wait.starts_with("Lock/") && statement.starts_with(prefix)
            })
            .map(|(_, n)| *n)
            .sum::<u64>() as f64
            / self.samples.max(1) as f64
    }

    /// The `top` kinds, for the report.
    pub(crate) fn to_json(&self, top: usize) -> Value {
        json!({
            "samples": self.samples,
            "busy_backends": (self.busy() * 100.0).round() / 100.0,
            "waiting_for_locks": (self.waiting_for_locks() * 100.0).round() / 100.0,
            "top": top_json(&self.kinds, self.samples, top),
            "samples_with_a_lock_waiter": self.contended,
            "lock_holders_per_contended_sample": top_json(&self.holders, self.contended, top),
        })
    }
}
