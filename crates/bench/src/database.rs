//! The run's database: a fresh `pacer_bench_<uuid>` on the local PostgreSQL (dropped at the
//! end), and the counters PostgreSQL keeps about the work done in it.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, Row};

/// A database created for one run.
#[derive(Debug, Clone)]
pub(crate) struct BenchDb {
    pub(crate) name: String,
    pub(crate) url: String,
    admin_url: String,
}

impl BenchDb {
    /// Creates an empty database; `pacer serve` migrates it. Also drops databases left by runs
    /// that were killed more than six hours ago.
    pub(crate) async fn create(admin_url: &str) -> Result<Self> {
        let name = format!("pacer_bench_{}", uuid::Uuid::now_v7().simple());
        let mut admin = PgConnection::connect(admin_url)
            .await
            .with_context(|| format!("connecting to {admin_url}; is PostgreSQL running?"))?;
        // The name is made above from a UUID, so formatting it into SQL is safe.
        sqlx::query(AssertSqlSafe(format!("create database {name}")))
            .execute(&mut admin)
            .await
            .with_context(|| format!("creating database {name}"))?;
        sweep_stale(&mut admin).await;
        let _ = admin.close().await;
        Ok(Self {
            url: with_database(admin_url, &name),
            name,
            admin_url: admin_url.to_owned(),
        })
    }

    /// Drops the database, ending any connection still open to it.
    pub(crate) async fn drop_database(&self) -> Result<()> {
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        sqlx::query(AssertSqlSafe(format!(
            "drop database if exists {} with (force)",
            self.name
        )))
        .execute(&mut admin)
        .await
        .with_context(|| format!("dropping database {}", self.name))?;
        let _ = admin.close().await;
        Ok(())
    }
}

/// Drops `pacer_bench_…` databases whose name (a UUIDv7) says they are more than six hours old.
async fn sweep_stale(admin: &mut PgConnection) {
    let Ok(names) = sqlx::query_scalar::<_, String>(
        "select datname from pg_database where datname like 'pacer\\_bench\\_%'",
    )
    .fetch_all(&mut *admin)
    .await
    else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for name in names {
        let created = name
            .strip_prefix("pacer_bench_")
            .and_then(|id| uuid::Uuid::parse_str(id).ok())
            .and_then(|id| id.get_timestamp())
            .map(|ts| ts.to_unix().0);
        if created.is_some_and(|created| now.saturating_sub(created) > 6 * 3600) {
            // Only names read from pg_database that parsed as our own pattern reach this SQL.
            let _ = sqlx::query(AssertSqlSafe(format!(
                "drop database if exists {name} with (force)"
            )))
            .execute(&mut *admin)
            .await;
        }
    }
}

/// `url` with its database (the path) replaced by `name`, keeping any query parameters.
pub(crate) fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    }
}

/// A small pool to a database, for reading results.
pub(crate) async fn pool(url: &str) -> Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(3)
        .connect(url)
        .await
        .with_context(|| "connecting to the benchmarked database")
}

/// The server's `autovacuum` turned on for a run that measures how tables grow, as production
/// runs it; [`Autovacuum::restore`] puts back what was there.
pub(crate) struct Autovacuum {
    /// A connection of its own: the target's pools are closed when it stops, before this
    /// restores the setting.
    pool: PgPool,
    /// The value to put back with `alter system`, or `None` to reset it (it came from a
    /// configuration file, not from `alter system`).
    previous: Option<String>,
    /// It was on already: nothing to restore.
    unchanged: bool,
}

impl Autovacuum {
    /// Turns autovacuum on (a reload setting: no restart) on the server at `url`, and notes
    /// whether it was.
    async fn turn_on(url: &str) -> Result<Self> {
        let stats = &pool(url).await?;
        let (setting, source): (String, Option<String>) =
            sqlx::query_as("select setting, sourcefile from pg_settings where name = 'autovacuum'")
                .fetch_one(stats)
                .await?;
        let unchanged = setting == "on";
        if !unchanged {
            sqlx::query("alter system set autovacuum = on")
                .execute(stats)
                .await
                .context("turning autovacuum on (needs a superuser)")?;
            sqlx::query("select pg_reload_conf()")
                .execute(stats)
                .await?;
        }
        let previous = source
            .is_some_and(|file| file.ends_with("postgresql.auto.conf"))
            .then_some(setting);
        Ok(Self {
            pool: stats.clone(),
            previous,
            unchanged,
        })
    }

    /// What the run measured with, for the report.
    pub(crate) fn describe(&self) -> &'static str {
        if self.unchanged {
            "on (it was on already)"
        } else {
            "on for this run (the server has it off; restored after)"
        }
    }

    /// Runs `run` with autovacuum turned on, and puts the setting back afterwards whether or not
    /// `run` succeeded.
    pub(crate) async fn on_during<T>(
        url: &str,
        run: impl AsyncFnOnce(&Self) -> Result<T>,
    ) -> Result<T> {
        let autovacuum = Self::turn_on(url).await?;
        let outcome = run(&autovacuum).await;
        let restored = autovacuum.restore().await;
        let value = outcome?;
        restored.context("restoring the server's autovacuum setting")?;
        Ok(value)
    }

    /// Puts the setting back as it was.
    async fn restore(self) -> Result<()> {
        let stats = &self.pool;
        if self.unchanged {
            stats.close().await;
            return Ok(());
        }
        let statement = match &self.previous {
            Some(value) if value == "off" => "alter system set autovacuum = off",
            _ => "alter system reset autovacuum",
        };
        sqlx::query(statement).execute(stats).await?;
        sqlx::query("select pg_reload_conf()")
            .execute(stats)
            .await?;
        stats.close().await;
        Ok(())
    }
}

/// `select version()`.
pub(crate) async fn server_version(pool: &PgPool) -> Result<String> {
    Ok(sqlx::query_scalar("select version()")
        .fetch_one(pool)
        .await?)
}

/// Work PostgreSQL counted in one database, and per table, at one moment. The statistics of a
/// backend reach these views when it goes idle, at most once a second and at the latest 10 s
/// later (PostgreSQL 15), so a difference between two snapshots is exact only over a window
/// that starts and ends at rest.
#[derive(Debug, Clone, Default)]
pub(crate) struct DbCounters {
    pub(crate) xact_commit: i64,
    pub(crate) xact_rollback: i64,
    pub(crate) tup_inserted: i64,
    pub(crate) tup_updated: i64,
    pub(crate) tup_deleted: i64,
    /// The next transaction id to be assigned, cluster-wide: every database's writes count.
    pub(crate) txid: i64,
    /// Tuples written to other databases of the server meanwhile (others sharing the machine).
    pub(crate) others_written: i64,
    /// Per table: (inserted, updated, deleted, hot updated).
    pub(crate) tables: BTreeMap<String, [i64; 4]>,
}

impl DbCounters {
    /// Reads the counters of database `name` over `stats` (a connection to another database of
    /// the same server, so reading does not count as work in `name`) and its per-table counters
    /// over `inside` (a connection to it; one read-only statement).
    pub(crate) async fn read(stats: &PgPool, inside: &PgPool, name: &str) -> Result<Self> {
        let row = sqlx::query(
            "select d.xact_commit, d.xact_rollback, d.tup_inserted, d.tup_updated, d.tup_deleted,
                    txid_snapshot_xmax(txid_current_snapshot()) as txid,
                    (select coalesce(sum(o.tup_inserted + o.tup_updated + o.tup_deleted), 0)::bigint
                     from pg_stat_database o where o.datname is distinct from $1) as others
             from pg_stat_database d where d.datname = $1",
        )
        .bind(name)
        .fetch_one(stats)
        .await
        .context("reading pg_stat_database")?;
        let tables = sqlx::query(
            "select relname::text, n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd
             from pg_stat_user_tables",
        )
        .fetch_all(inside)
        .await
        .context("reading pg_stat_user_tables")?
        .into_iter()
        .map(|r| {
            let name: String = r.get(0);
            (name, [r.get(1), r.get(2), r.get(3), r.get(4)])
        })
        .collect();
        Ok(Self {
            xact_commit: row.get("xact_commit"),
            xact_rollback: row.get("xact_rollback"),
            tup_inserted: row.get("tup_inserted"),
            tup_updated: row.get("tup_updated"),
            tup_deleted: row.get("tup_deleted"),
            txid: row.get("txid"),
            others_written: row.get("others"),
            tables,
        })
    }

    /// What happened between `earlier` and this snapshot.
    pub(crate) fn since(&self, earlier: &Self) -> Self {
        let tables = self
            .tables
            .iter()
            .map(|(name, now)| {
                let before = earlier.tables.get(name).copied().unwrap_or_default();
                let diff = [0, 1, 2, 3].map(|i| now[i] - before[i]);
                (name.clone(), diff)
            })
            .filter(|(_, diff)| diff.iter().any(|d| *d != 0))
            .collect();
        Self {
            xact_commit: self.xact_commit - earlier.xact_commit,
            xact_rollback: self.xact_rollback - earlier.xact_rollback,
            tup_inserted: self.tup_inserted - earlier.tup_inserted,
            tup_updated: self.tup_updated - earlier.tup_updated,
            tup_deleted: self.tup_deleted - earlier.tup_deleted,
            txid: self.txid - earlier.txid,
            others_written: self.others_written - earlier.others_written,
            tables,
        }
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        let tables: serde_json::Map<String, serde_json::Value> = self
            .tables
            .iter()
            .map(|(name, [ins, upd, del, hot])| {
                (
                    name.clone(),
                    serde_json::json!({"inserted": ins, "updated": upd, "deleted": del, "hot_updated": hot}),
                )
            })
            .collect();
        serde_json::json!({
            "xact_commit": self.xact_commit,
            "xact_rollback": self.xact_rollback,
            "tup_inserted": self.tup_inserted,
            "tup_updated": self.tup_updated,
            "tup_deleted": self.tup_deleted,
            "txids_assigned_cluster_wide": self.txid,
            "tuples_written_in_other_databases": self.others_written,
            "tables": tables,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_name_replaces_the_path_and_keeps_the_query() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h:1/db?sslmode=disable", "x"),
            "postgres://u:p@h:1/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }
}
