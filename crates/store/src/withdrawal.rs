//! Withdrawing tasks fired ahead of their time whose occurrence stopped before the time came: a
//! pause of their trigger or job, the scheduler's standby, or their trigger's delete. Done in the
//! transaction of the change itself, through the task state machine, and only for tasks never
//! sent: a node that claimed one ahead marks it `dispatched` under its claim before sending it,
//! and what is marked stands like any task whose time has come.

use pacer_domain::{TaskEvent, TaskState, Transition, Withdrawal};
use uuid::Uuid;

use crate::Result;
use crate::error::corrupt;

/// The tasks a withdrawal looks at: one trigger's, one job's, or every trigger's.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope {
    Trigger(Uuid),
    Job(Uuid),
    All,
}

/// Withdraws the open tasks of `scope` fired ahead and never sent, as `why` says; returns how
/// many. Call inside the transaction that makes the change, after its own write: the rows are
/// locked in id order (as every batched writer of tasks locks them), and a node's mark that it
/// sends a task either came first (the task stands) or waits for this transaction and then finds
/// its claim gone (the task is never sent).
pub(crate) async fn withdraw_fired_ahead(
    conn: &mut sqlx::PgConnection,
    scope: Scope,
    why: Withdrawal,
) -> Result<u64> {
    let (trigger, job) = match scope {
        Scope::Trigger(id) => (Some(id), None),
        Scope::Job(id) => (None, Some(id)),
        Scope::All => (None, None),
    };
    let candidates = sqlx::query!(
        "select id, state from tasks
         where trigger_id is not null and ($1::uuid is null or trigger_id = $1)
           and ($2::uuid is null or job_id = $2)
           and state = 'pending' and not dispatched and scheduled_at > now()
         order by id for update",
        trigger,
        job,
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut ids = Vec::with_capacity(candidates.len());
    let mut to = TaskState::Cancelled;
    for row in candidates {
        let state: TaskState = row.state.parse().map_err(corrupt)?;
        if let Transition::To(next) = state.apply(TaskEvent::Withdraw) {
            ids.push(row.id);
            to = next;
        }
    }
    if ids.is_empty() {
        return Ok(0);
    }
    // The rows are locked: the state they were read in is the state they are in.
    let withdrawn = sqlx::query!(
        "update tasks set state = $2, finished_at = now(), next_dispatch_at = null,
             claim_token = null, claimed_by = null, claimed_at = null,
             attempt = 0, started_at = null, message = $3, updated_at = now()
         where id = any($1) and state = 'pending' and not dispatched",
        &ids,
        to.as_str(),
        why.message(),
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    // A node holding one of them ahead finds its claim gone when it marks it, shortly before
    // its time, and does not send it.
    Ok(withdrawn)
}
