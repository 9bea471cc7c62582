//! Upstream messages: each is recorded once under its deduplication key and, in the same
//! transaction, becomes a task for every job subscribed to its type, under each job's overlap
//! policy. A message received again (a REST retry, a RabbitMQ redelivery) finds its row and
//! creates nothing.

use chrono::{DateTime, Utc};
use pacer_domain::{Message, MessageSource, OverlapPolicy, TaskId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;

use crate::jobs::JobRow;
use crate::tasks::{FromMessage, admit_task, insert_task};
use crate::{CreatedTask, Job, NewTask, Origin, Result, Store};

/// What a message did for one subscribing job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The subscribing job.
    pub job: String,
    /// The task created for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskId>,
    /// Why no task was created: `overlap` or `buffer_full` (the job's overlap policy, recorded
    /// as a skip), or `job_paused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// A message as recorded.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// The deduplication key: the upstream's id, or `sha256:` and a digest of type, key and
    /// payload.
    pub id: String,
    /// Keyset cursor for listings.
    pub ordinal: i64,
    pub kind: String,
    pub key: Option<String>,
    pub payload: Value,
    pub source: String,
    /// False when no job subscribed to the type.
    pub routed: bool,
    pub routes: Vec<Route>,
    pub received_at: DateTime<Utc>,
}

/// What ingesting a message did.
#[derive(Debug, Clone)]
pub struct Ingested {
    pub message: StoredMessage,
    /// True when the message had been received before: nothing was written now, and
    /// `message` is what the first receipt recorded.
    pub duplicate: bool,
    /// Tasks created now that are due at once (dispatchers were notified).
    pub created: usize,
}

/// Which messages to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    /// `Some(false)`: only those no job subscribed to; `Some(true)`: only routed ones.
    pub routed: Option<bool>,
    pub kind: Option<String>,
    /// Keyset cursor: only messages older than this ordinal.
    pub before: Option<i64>,
    pub limit: i64,
}

struct MessageRow {
    id: String,
    ordinal: i64,
    kind: String,
    key: Option<String>,
    payload: Value,
    source: String,
    routed: bool,
    outcome: Json<Vec<Route>>,
    received_at: DateTime<Utc>,
}

impl From<MessageRow> for StoredMessage {
    fn from(r: MessageRow) -> Self {
        Self {
            id: r.id,
            ordinal: r.ordinal,
            kind: r.kind,
            key: r.key,
            payload: r.payload,
            source: r.source,
            routed: r.routed,
            routes: r.outcome.0,
            received_at: r.received_at,
        }
    }
}

impl Store {
    /// Records `message` and creates a task for each job subscribed to its type, all in one
    /// transaction: either the message and all its tasks are committed, or nothing is. A message
    /// whose deduplication key was seen before writes nothing and returns the first receipt.
    pub async fn ingest_message(
        &self,
        message: &Message,
        source: MessageSource,
        trace_context: Option<&str>,
    ) -> Result<Ingested> {
        let payload = Value::Object(message.payload.clone());
        let mut tx = self.pool.begin().await?;
        // The digest is computed over the jsonb text, which is canonical (key order and
        // whitespace do not matter), so the same message always gets the same key.
        let inserted = sqlx::query!(
            r#"insert into messages (id, type, key, payload, source, routed)
               values (coalesce($1, 'sha256:' || encode(sha256(convert_to(
                           $2::text || E'\n' || coalesce('k' || $3, 'n') || E'\n' || $4::jsonb::text,
                           'UTF8')), 'hex')),
                       $2, $3, $4, $5, false)
               on conflict (id) do nothing
               returning id, ordinal, received_at"#,
            message.id.as_deref(),
            message.kind.as_str(),
            message.key.as_deref(),
            &payload,
            source.as_str(),
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(inserted) = inserted else {
            // A concurrent first receipt makes the insert above wait for its commit, so the row
            // is there to read now.
            drop(tx);
            let existing = sqlx::query_as!(
                MessageRow,
                r#"select id, ordinal, type as kind, key, payload, source, routed,
                          outcome as "outcome: Json<Vec<Route>>", received_at
                   from messages
                   where id = coalesce($1, 'sha256:' || encode(sha256(convert_to(
                           $2::text || E'\n' || coalesce('k' || $3, 'n') || E'\n' || $4::jsonb::text,
                           'UTF8')), 'hex'))"#,
                message.id.as_deref(),
                message.kind.as_str(),
                message.key.as_deref(),
                &payload,
            )
            .fetch_one(&self.pool)
            .await?;
            return Ok(Ingested {
                message: existing.into(),
                duplicate: true,
                created: 0,
            });
        };
        // In id order, the order firing locks job rows in, so the two never deadlock.
        let jobs: Vec<Job> = sqlx::query_as!(
            JobRow,
            r#"select id, name, version, spec as "spec: Json<pacer_domain::JobSpec>", paused,
                      created_at, updated_at, null::timestamptz as fresh_until
               from jobs where spec -> 'on_messages' ? $1 order by id"#,
            message.kind.as_str(),
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(Job::try_from)
        .collect::<Result<_>>()?;
        let from = FromMessage {
            id: &inserted.id,
            kind: message.kind.as_str(),
        };
        let mut routes = Vec::with_capacity(jobs.len());
        let mut created = 0;
        for job in &jobs {
            let mut route = Route {
                job: job.name.to_string(),
                task_id: None,
                skipped: None,
            };
            if job.paused {
                route.skipped = Some("job_paused".into());
                routes.push(route);
                continue;
            }
            let task = NewTask {
                id: TaskId::new(),
                origin: Origin::Message,
                idempotency_key: None,
                payload: job.spec.task_payload(Some(&message.payload)),
                not_before: None,
                trace_context: trace_context.map(str::to_owned),
                actor: None,
                retry_of: None,
                notify: message.notify.as_ref().map(|n| {
                    let none = pacer_domain::OutboundAuth::None {};
                    n.stored(job.spec.target.as_ref().map_or(&none, |t| t.auth()))
                }),
            };
            let outcome = if job.spec.overlap == OverlapPolicy::Allow {
                insert_task(&mut tx, job, task, None, None, Some(from)).await?
            } else {
                admit_task(&mut tx, job, task, None, Some(from)).await?
            };
            match outcome {
                CreatedTask::Created { id, .. } | CreatedTask::Existing { id } => {
                    created += 1;
                    route.task_id = Some(id);
                }
                CreatedTask::Skipped { reason, .. } => {
                    route.skipped = Some(reason.as_str().to_owned());
                }
            }
            routes.push(route);
        }
        let routed = !jobs.is_empty();
        sqlx::query!(
            "update messages set routed = $2, outcome = $3 where id = $1",
            inserted.id,
            routed,
            Json(&routes) as _,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ingested {
            message: StoredMessage {
                id: inserted.id,
                ordinal: inserted.ordinal,
                kind: message.kind.to_string(),
                key: message.key.clone(),
                payload,
                source: source.as_str().to_owned(),
                routed,
                routes,
                received_at: inserted.received_at,
            },
            duplicate: false,
            created,
        })
    }

    /// The message with this id (deduplication key).
    pub async fn get_message(&self, id: &str) -> Result<StoredMessage> {
        sqlx::query_as!(
            MessageRow,
            r#"select id, ordinal, type as kind, key, payload, source, routed,
                      outcome as "outcome: Json<Vec<Route>>", received_at
               from messages where id = $1"#,
            id,
        )
        .fetch_optional(&self.pool)
        .await?
        .map(StoredMessage::from)
        .ok_or(crate::Error::NotFound("message"))
    }

    /// Messages matching `filter`, newest first.
    pub async fn list_messages(&self, filter: &MessageFilter) -> Result<Vec<StoredMessage>> {
        let rows = if filter.routed == Some(false) {
            // Its own statement, so the partial index on unrouted messages serves it.
            sqlx::query_as!(
                MessageRow,
                r#"select id, ordinal, type as kind, key, payload, source, routed,
                          outcome as "outcome: Json<Vec<Route>>", received_at
                   from messages
                   where not routed and ($1::text is null or type = $1)
                     and ($2::bigint is null or ordinal < $2)
                   order by ordinal desc limit $3"#,
                filter.kind.as_deref(),
                filter.before,
                filter.limit,
            )
            .fetch_all(&self.pool)
            .await?
        } else {
            sqlx::query_as!(
                MessageRow,
                r#"select id, ordinal, type as kind, key, payload, source, routed,
                          outcome as "outcome: Json<Vec<Route>>", received_at
                   from messages
                   where ($1::text is null or type = $1)
                     and ($2::bigint is null or ordinal < $2)
                     and ($4::bool is null or routed = $4)
                   order by ordinal desc limit $3"#,
                filter.kind.as_deref(),
                filter.before,
                filter.limit,
                filter.routed,
            )
            .fetch_all(&self.pool)
            .await?
        };
        Ok(rows.into_iter().map(StoredMessage::from).collect())
    }
}
