//! The cluster's shared state: node heartbeats, the leader lease, and scheduler standby.
//! The lease row is the election: one conditional `UPDATE` under its row lock, no advisory locks.

use chrono::{DateTime, Utc};
use pacer_domain::Withdrawal;

use crate::withdrawal::{Scope, withdraw_fired_ahead};
use crate::{Result, Store};

/// The channel a resigning leader notifies, so followers take over at once.
pub const LEADER_CHANNEL: &str = "pacer_leader";

/// A node as it last heartbeat.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub address: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub last_heartbeat_at: DateTime<Utc>,
    pub stopped_at: Option<DateTime<Utc>>,
    /// Heartbeating within the dead threshold and not stopped.
    pub alive: bool,
    /// Its RabbitMQ consumer's state as it last reported it; `None` without a broker.
    pub amqp_consumer: Option<serde_json::Value>,
}

/// The leader lease as stored.
#[derive(Debug, Clone)]
pub struct Lease {
    pub holder: Option<String>,
    pub term: i64,
    pub acquired_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
    /// The lease is held and unexpired.
    pub valid: bool,
}

/// A lease this node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tenure {
    pub term: i64,
    /// True when this call started the tenure (the term just grew).
    pub new: bool,
}

impl Store {
    /// Records a heartbeat for `node` (creating its row on the first one).
    pub async fn heartbeat(&self, node: &str, address: &str, version: &str) -> Result<()> {
        sqlx::query!(
            "insert into nodes (id, address, version) values ($1, $2, $3)
             on conflict (id) do update set last_heartbeat_at = now(), stopped_at = null,
                 address = excluded.address, version = excluded.version",
            node,
            address,
            version,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records the state of `node`'s RabbitMQ consumer; false when the node has no row yet
    /// (before its first heartbeat).
    pub async fn record_consumer(&self, node: &str, status: &serde_json::Value) -> Result<bool> {
        let updated = sqlx::query!(
            "update nodes set amqp_consumer = $2 where id = $1",
            node,
            status,
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated > 0)
    }

    /// Marks `node` as stopped cleanly.
    pub async fn node_stopped(&self, node: &str) -> Result<()> {
        sqlx::query!("update nodes set stopped_at = now() where id = $1", node)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every known node, alive first. A node is alive when it heartbeat within `dead_after_ms`.
    pub async fn nodes(&self, dead_after_ms: i64) -> Result<Vec<Node>> {
        Ok(sqlx::query_as!(
            Node,
            r#"select id, address, version, started_at, last_heartbeat_at, stopped_at,
                      (stopped_at is null and last_heartbeat_at > now() - $1::bigint * interval '1 millisecond') as "alive!",
                      amqp_consumer
               from nodes order by 7 desc, id"#,
            dead_after_ms,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Takes or renews the lease for `node` for `ttl_ms`. A new tenure (the lease was free or
    /// expired, or `fresh`: the caller holds no tenure, say after a restart under the same node
    /// id) grows the term; renewing an unexpired lease keeps it. `None` when another node holds
    /// an unexpired lease.
    pub async fn acquire_lease(
        &self,
        node: &str,
        ttl_ms: i64,
        fresh: bool,
    ) -> Result<Option<Tenure>> {
        // The row lock taken by the update is the election: concurrent callers serialise on it,
        // and each re-evaluates the `where` against the winner's committed row. The clock is read
        // once per row, after the lock is held, so a statement that waited for the lock (behind a
        // leader paused inside a firing transaction) still computes its lease from the present.
        let row = sqlx::query!(
            r#"with acquired as (
               update leader_lease l set (term, acquired_at, holder, expires_at) = (
                   select case when l.holder = $1 and l.expires_at > c.now and not $3 then l.term else l.term + 1 end,
                          case when l.holder = $1 and l.expires_at > c.now and not $3 then l.acquired_at else c.now end,
                          $1,
                          c.now + $2::bigint * interval '1 millisecond'
                   from (select clock_timestamp() as now) c
               )
               where l.id and (l.holder = $1 or l.holder is null or l.expires_at <= clock_timestamp())
               returning l.term, l.holder, (l.acquired_at = l.expires_at - $2::bigint * interval '1 millisecond') as new
               ),
               -- A new tenure is a leader change: recorded in the same statement, never otherwise.
               recorded as (
                   insert into events (kind, data)
                   select 'leader.changed', jsonb_build_object('node', a.holder, 'term', a.term)
                   from acquired a where a.new
                   returning id
               )
               select a.term as "term!", a.new as "new!" from acquired a"#,
            node,
            ttl_ms,
            fresh,
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| Tenure {
            term: r.term,
            new: r.new,
        }))
    }

    /// Gives the lease up at once if `node` holds it under `term`, and tells the followers.
    pub async fn resign_lease(&self, node: &str, term: i64) -> Result<bool> {
        let resigned = sqlx::query_scalar!(
            r#"with resigned as (
                   update leader_lease set holder = null, expires_at = now()
                   where id and holder = $1 and term = $2
                   returning term
               ),
               recorded as (
                   insert into events (kind, data)
                   select 'leader.resigned', jsonb_build_object('node', $1::text, 'term', term)
                   from resigned
                   returning id
               )
               select count(*) as "resigned!"
               from resigned, lateral (select pg_notify($3, '')) n"#,
            node,
            term,
            LEADER_CHANNEL,
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(resigned > 0)
    }

    /// The lease as stored now.
    pub async fn lease(&self) -> Result<Lease> {
        Ok(sqlx::query_as!(
            Lease,
            r#"select holder, term, acquired_at, expires_at,
                      (holder is not null and expires_at > now()) as "valid!"
               from leader_lease where id"#
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// How long the lease has left on the database clock: zero when it is free or expired.
    pub async fn lease_remaining(&self) -> Result<std::time::Duration> {
        let ms = sqlx::query_scalar!(
            r#"select greatest(0, ceil(extract(epoch from expires_at - clock_timestamp()) * 1000))::bigint as "ms!"
               from leader_lease where id"#
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(std::time::Duration::from_millis(ms.max(0).unsigned_abs()))
    }

    /// True while the scheduler is in standby (no trigger fires).
    pub async fn scheduler_paused(&self) -> Result<bool> {
        Ok(
            sqlx::query_scalar!("select paused from scheduler_state where id")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Enters or leaves standby; wakes the firing loop. Entering it withdraws the tasks fired
    /// ahead of their time that were not sent yet.
    pub async fn set_scheduler_paused(&self, paused: bool) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let was_paused =
            sqlx::query_scalar!("select paused from scheduler_state where id for update")
                .fetch_one(&mut *tx)
                .await?;
        sqlx::query!(
            "update scheduler_state set paused = $1, updated_at = now() where id",
            paused,
        )
        .execute(&mut *tx)
        .await?;
        if paused && !was_paused {
            withdraw_fired_ahead(&mut tx, Scope::All, Withdrawal::Standby).await?;
        }
        sqlx::query!("select pg_notify($1, '')", crate::TRIGGERS_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
