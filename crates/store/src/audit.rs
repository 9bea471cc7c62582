//! The audit log: who changed what, when, with a summary before and after.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::{Result, Store};

/// One audited action.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    /// The caller's `sub`.
    pub actor: String,
    pub issuer: String,
    /// What was done, named after the API operation (`put_job`, `cancel_task`, …).
    pub action: String,
    /// What it was done to (`job:sync`, `task:0193…`).
    pub target: String,
    pub request_id: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// An action to record.
#[derive(Debug, Clone)]
pub struct NewAuditEntry<'a> {
    pub actor: &'a str,
    pub issuer: &'a str,
    pub action: &'a str,
    pub target: String,
    pub request_id: Option<&'a str>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl Store {
    /// Records an action.
    pub async fn record_audit(&self, entry: NewAuditEntry<'_>) -> Result<()> {
        sqlx::query!(
            "insert into audit_log (id, actor, issuer, action, target, request_id, before, after)
             values ($1, $2, $3, $4, $5, $6, $7, $8)",
            Uuid::now_v7(),
            entry.actor,
            entry.issuer,
            entry.action,
            entry.target,
            entry.request_id,
            entry.before,
            entry.after,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Actions newest first, optionally by one actor or of one action; `before` is the cursor.
    pub async fn list_audit(
        &self,
        actor: Option<&str>,
        action: Option<&str>,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>> {
        Ok(sqlx::query_as!(
            AuditEntry,
            "select id, at, actor, issuer, action, target, request_id, before, after from audit_log
             where ($1::text is null or actor = $1) and ($2::text is null or action = $2)
               and ($3::uuid is null or id < $3)
             order by id desc limit $4",
            actor,
            action,
            before,
            limit,
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
