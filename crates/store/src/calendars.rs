//! Exclusion calendars: create or replace, read, list, delete; and the whole set, compiled, for
//! the firing pass, previews and backfills. Calendar writes are serialised by a table lock, so
//! the checks of one (its includes exist, it includes no cycle) see every other's result.

use chrono::{DateTime, Utc};
use pacer_domain::{CalendarName, CalendarSpec, Calendars};
use sqlx::types::Json;
use uuid::Uuid;

use crate::{Error, Result, Store, TRIGGERS_CHANNEL};

/// A stored calendar.
#[derive(Debug, Clone)]
pub struct Calendar {
    pub name: String,
    pub spec: CalendarSpec,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a create-or-replace came to.
#[derive(Debug, Clone)]
pub enum PutCalendar {
    /// Stored; `created` when it did not exist before.
    Saved { calendar: Calendar, created: bool },
    /// These included calendars do not exist: nothing was written.
    MissingIncludes(Vec<String>),
    /// Storing it would make a calendar include itself, along this chain: nothing was written.
    Cycle(Vec<String>),
}

/// What a delete came to.
#[derive(Debug, Clone)]
pub enum DeleteCalendar {
    Deleted,
    /// Not forced, and still named by these triggers (job, trigger) or included by these
    /// calendars: nothing was written.
    InUse {
        triggers: Vec<(String, Uuid)>,
        calendars: Vec<String>,
    },
}

struct CalendarRow {
    name: String,
    spec: Json<CalendarSpec>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<CalendarRow> for Calendar {
    fn from(r: CalendarRow) -> Self {
        Self {
            name: r.name,
            spec: r.spec.0,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Every calendar, compiled. A stored calendar that no longer compiles (a hand-edited row) is
/// left out with an error in the log: it excludes nothing rather than stopping every trigger.
pub(crate) async fn load_calendars(conn: &mut sqlx::PgConnection) -> Result<Calendars> {
    let rows = sqlx::query!(r#"select name, spec as "spec: Json<CalendarSpec>" from calendars"#)
        .fetch_all(&mut *conn)
        .await?;
    let mut set = Calendars::new();
    for row in rows {
        match row.spec.0.compile() {
            Ok(calendar) => set.insert(row.name, calendar),
            Err(error) => {
                tracing::error!(calendar = %row.name, %error, "stored calendar does not compile; it excludes nothing");
            }
        }
    }
    Ok(set)
}

impl Store {
    /// Creates or replaces the calendar `name`. Triggers read it when they next fire, so a
    /// change holds for every occurrence not fired yet.
    pub async fn put_calendar(
        &self,
        name: &CalendarName,
        spec: &CalendarSpec,
    ) -> Result<PutCalendar> {
        let mut tx = self.pool.begin().await?;
        // Readers (the firing pass) are not blocked; two writers take turns.
        sqlx::query!("lock table calendars in share row exclusive mode")
            .execute(&mut *tx)
            .await?;
        let existing: Vec<String> = sqlx::query_scalar!(
            "select name from calendars where name = any($1)",
            &spec.include
        )
        .fetch_all(&mut *tx)
        .await?;
        let missing: Vec<String> = spec
            .include
            .iter()
            .filter(|n| !existing.contains(n))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Ok(PutCalendar::MissingIncludes(missing));
        }
        let mut set = load_calendars(&mut tx).await?;
        let compiled = spec
            .compile()
            .map_err(|e| Error::Corrupt(format!("a validated calendar did not compile: {e}")))?;
        set.insert(name.as_str(), compiled);
        if let Some(chain) = set.cycle_from(name.as_str()) {
            return Ok(PutCalendar::Cycle(chain));
        }
        let row = sqlx::query!(
            r#"insert into calendars (name, spec) values ($1, $2)
               on conflict (name) do update set spec = excluded.spec, updated_at = now()
               returning name, spec as "spec: Json<CalendarSpec>", created_at, updated_at,
                         (xmax = 0) as "created!""#,
            name.as_str(),
            Json(spec) as _,
        )
        .fetch_one(&mut *tx)
        .await?;
        // The firing loop re-reads what is due; nothing else about a trigger changed.
        sqlx::query!("select pg_notify($1, '')", TRIGGERS_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(PutCalendar::Saved {
            calendar: Calendar {
                name: row.name,
                spec: row.spec.0,
                created_at: row.created_at,
                updated_at: row.updated_at,
            },
            created: row.created,
        })
    }

    /// One calendar.
    pub async fn get_calendar(&self, name: &str) -> Result<Calendar> {
        sqlx::query_as!(
            CalendarRow,
            r#"select name, spec as "spec: Json<CalendarSpec>", created_at, updated_at
               from calendars where name = $1"#,
            name
        )
        .fetch_optional(&self.pool)
        .await?
        .map(Calendar::from)
        .ok_or(Error::NotFound("calendar"))
    }

    /// A page of calendars in name order: at most `limit`, after the calendar `after`.
    pub async fn list_calendars_page(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Calendar>> {
        let rows = sqlx::query_as!(
            CalendarRow,
            r#"select name, spec as "spec: Json<CalendarSpec>", created_at, updated_at
               from calendars where ($1::text is null or name > $1)
               order by name limit $2"#,
            after,
            limit,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Calendar::from).collect())
    }

    /// Deletes a calendar. Unless `force`d, one that a trigger names or another calendar
    /// includes stays; forced, those references remain and exclude nothing.
    pub async fn delete_calendar(&self, name: &str, force: bool) -> Result<DeleteCalendar> {
        let mut tx = self.pool.begin().await?;
        sqlx::query!("lock table calendars in share row exclusive mode")
            .execute(&mut *tx)
            .await?;
        if !force {
            let triggers = sqlx::query!(
                r#"select j.name as job, t.id from triggers t join jobs j on j.id = t.job_id
                   where t.spec -> 'calendars' ? $1 order by j.name, t.id limit 100"#,
                name
            )
            .fetch_all(&mut *tx)
            .await?;
            let calendars = sqlx::query_scalar!(
                "select name from calendars where spec -> 'include' ? $1 order by name",
                name
            )
            .fetch_all(&mut *tx)
            .await?;
            if !triggers.is_empty() || !calendars.is_empty() {
                return Ok(DeleteCalendar::InUse {
                    triggers: triggers.into_iter().map(|r| (r.job, r.id)).collect(),
                    calendars,
                });
            }
        }
        let deleted = sqlx::query!("delete from calendars where name = $1", name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(Error::NotFound("calendar"));
        }
        tx.commit().await?;
        Ok(DeleteCalendar::Deleted)
    }

    /// Which of `names` are not calendars.
    pub async fn missing_calendars(&self, names: &[String]) -> Result<Vec<String>> {
        if names.is_empty() {
            return Ok(vec![]);
        }
        let existing: Vec<String> =
            sqlx::query_scalar!("select name from calendars where name = any($1)", names)
                .fetch_all(&self.pool)
                .await?;
        Ok(names
            .iter()
            .filter(|n| !existing.contains(n))
            .cloned()
            .collect())
    }

    /// Every calendar, compiled, to tell which excludes an occurrence.
    pub async fn calendars(&self) -> Result<Calendars> {
        let mut conn = self.pool.acquire().await?;
        load_calendars(&mut conn).await
    }
}
