//! `TestDb`: a uniquely named PostgreSQL database per test, dropped (with force) when the test
//! ends, so tests run in parallel without seeing each other's rows.

use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection};

/// The maintenance database on the local server, used to create and drop test databases.
/// `PACER_E2E_DATABASE_URL`, then `DATABASE_URL` (set in `.cargo/config.toml`), override it.
const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A fresh database for one test, with a pool to it for assertions.
pub struct TestDb {
    name: String,
    url: String,
    admin_url: String,
    pool: PgPool,
}

impl TestDb {
    /// Creates an empty database named `pacer_e2e_<uuid>`. `pacer serve` migrates it.
    pub async fn create() -> Self {
        let admin_url = std::env::var("PACER_E2E_DATABASE_URL")
            .or_else(|_| std::env::var("DATABASE_URL"))
            .unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
        let name = format!("pacer_e2e_{}", uuid::Uuid::now_v7().simple());
        let url = with_database(&admin_url, &name);
        let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!("cannot connect to {admin_url} to create a test database ({e}); is PostgreSQL running?")
        });
        // The name is generated above from a UUID, so formatting it into SQL is safe.
        sqlx::query(AssertSqlSafe(format!("create database {name}")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        sweep_stale(&mut admin).await;
        let _ = admin.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(3)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test database {url}: {e}"));
        Self {
            name,
            url,
            admin_url,
            pool,
        }
    }

    /// The database's URL, for `PACER_DATABASE_URL`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A pool to the database, for assertions on what Pacer wrote.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl Drop for TestDb {
    /// Drops the database best-effort. `with (force)` ends the connections of any pacer process
    /// still running. Runs on its own thread and runtime, since `Drop` cannot await and the
    /// test's runtime may be shutting down.
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin_url = self.admin_url.clone();
        // The pool is not closed here: its connections belong to the test's runtime, which is
        // blocked in this `drop`. Dropping the database with force ends them.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let mut admin = PgConnection::connect(&admin_url).await.ok()?;
                sqlx::query(AssertSqlSafe(format!(
                    "drop database if exists {name} with (force)"
                )))
                .execute(&mut admin)
                .await
                .ok()?;
                admin.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("note: could not drop test database {}", self.name);
        }
    }
}

/// Drops test databases left behind by runs that were killed before they could clean up: those
/// whose name (a UUIDv7) says they were created more than an hour ago. Best-effort.
async fn sweep_stale(admin: &mut PgConnection) {
    let Ok(names) = sqlx::query_scalar::<_, String>(
        "select datname from pg_database where datname like 'pacer\\_e2e\\_%'",
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
            .strip_prefix("pacer_e2e_")
            .and_then(|id| uuid::Uuid::parse_str(id).ok())
            .and_then(|id| id.get_timestamp())
            .map(|ts| ts.to_unix().0);
        if created.is_some_and(|created| now.saturating_sub(created) > 3600) {
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
fn with_database(url: &str, name: &str) -> String {
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
