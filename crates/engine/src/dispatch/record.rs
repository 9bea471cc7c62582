//! Recording what a dispatch came to: its log line and metrics, and its outcome written with other
//! dispatches' in one statement (group commit: every outcome that finishes while a batch is being
//! written joins the next one, and nothing waits for a batch to fill).

use std::time::Duration;

use pacer_domain::TaskOutcome;
use pacer_domain::dispatch::DispatchOutcome;
use pacer_store::batch::{BatchWrite, Batcher};
use pacer_store::{ClaimedTask, Outcome, Recorded, Store};

/// The most dispatch outcomes written in one statement.
pub(crate) const OUTCOME_BATCH: usize = 256;

/// Dispatch outcomes, written in batches.
pub(crate) type Recorder = Batcher<Outcomes>;

/// The write behind the [`Recorder`].
pub(crate) struct Outcomes {
    pub(crate) store: Store,
}

impl BatchWrite for Outcomes {
    type Item = (pacer_store::ReleasedClaim, Outcome);
    /// Whether the task still held the claim and took the outcome, and how it ended.
    type Output = Recorded;

    async fn write(
        &self,
        items: &[(pacer_store::ReleasedClaim, Outcome)],
    ) -> pacer_store::Result<Vec<Recorded>> {
        metrics::histogram!("pacer_outcome_batch_size").record(items.len() as f64);
        self.store.record_outcomes(items).await
    }
}

/// The dispatch's line and metrics. Job names are defined by operators, so the `pacer_job` label
/// stays bounded; task ids never appear (Prometheus keeps `job` for the scrape job).
pub(crate) fn observe(task: &ClaimedTask, outcome: &DispatchOutcome, record: &Outcome) {
    tracing::info!(
        outcome = %outcome.attempt_outcome(),
        http.status = outcome.http_status(),
        latency_ms = u64::try_from(record.latency.as_millis()).unwrap_or(u64::MAX),
        error = outcome.error(),
        next_state = record.decision.state.map(|s| s.as_str()),
        "dispatched"
    );
    let labels = [
        ("pacer_job", task.job_name.clone()),
        ("outcome", outcome.attempt_outcome().as_str().to_owned()),
    ];
    metrics::counter!("pacer_dispatches_total", &labels).increment(1);
    metrics::histogram!("pacer_dispatch_duration_seconds", &labels)
        .record(record.latency.as_secs_f64());
}

/// Counts a task (or a run's child at a `skip_if_unchanged` step, which ends its run) that ended
/// with its input unchanged, whichever way its report came.
pub(crate) fn observe_unchanged(job: &str) {
    metrics::counter!("pacer_tasks_unchanged_total", "pacer_job" => job.to_owned()).increment(1);
}

/// How late the first dispatch of a task went out, against its fire time (the scheduled time
/// plus any jitter): signed, since a
/// dispatch sent early is a fault to count, not to hide. `late_at_due` is how late the time the
/// claim set to send at was (on the database clock, zero for a task claimed ahead), `late_to_send`
/// how far the request went out after that time on this node's clock (negative if before it).
pub(crate) fn observe_lateness(late_at_due: f64, late_to_send: f64) {
    let lateness = late_at_due + late_to_send;
    metrics::histogram!("pacer_dispatch_lateness_seconds").record(lateness);
    if lateness < 0.0 {
        metrics::counter!("pacer_dispatches_early_total").increment(1);
        tracing::warn!(
            early_ms = -lateness * 1000.0,
            "a dispatch went out before its scheduled time"
        );
    }
}

/// Records the outcome (batched with other dispatches'), retrying briefly through a database
/// hiccup. If it still fails, the claim's lease runs out and the task is dispatched again: at least
/// once, never lost.
pub(crate) async fn record(recorder: &Recorder, task: &ClaimedTask, outcome: Outcome) {
    let mut backoff = Duration::from_millis(100);
    for _ in 0..5 {
        match recorder.submit((task.claim(), outcome.clone())).await {
            Ok(Recorded {
                applied: true,
                outcome,
            }) => {
                if outcome == Some(TaskOutcome::Unchanged) {
                    observe_unchanged(&task.job_name);
                }
                return;
            }
            Ok(Recorded { applied: false, .. }) => {
                // Most often the downstream called back before this answer was recorded.
                tracing::debug!("the task moved on during the dispatch; its newer state stands");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "recording a dispatch outcome failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
    }
    tracing::error!(
        "could not record a dispatch outcome; the task will be dispatched again when its lease expires"
    );
}

#[cfg(test)]
mod tests {
    use pacer_domain::dispatch::DispatchOutcome;
    use pacer_domain::{JobInput, JobName, JobSpec, Span, TaskState, after_dispatch};
    use pacer_store::{CreatedTask, NewTask, Origin};
    use serde_json::json;
    use sqlx::PgPool;

    use super::*;

    /// Claims `n` tasks of a job due now, as a dispatcher would.
    async fn claimed(store: &Store, n: usize) -> Vec<ClaimedTask> {
        let input: JobInput = serde_json::from_value(json!({
            "target": { "url": "http://downstream.invalid/run" }, "expect_callback": false
        }))
        .expect("job input");
        let spec = JobSpec::try_from(input).expect("valid job");
        let name: JobName = "batched".parse().expect("name");
        let job = store.put_job(&name, &spec).await.expect("job").job;
        for _ in 0..n {
            let task = NewTask::new(Origin::Api, json!({}));
            assert!(matches!(
                store.create_task(&job, task, None).await.expect("task"),
                CreatedTask::Created { .. }
            ));
        }
        let n = i64::try_from(n).expect("small");
        store
            .claim_due("node", n, Span::from_secs(30), Span::from_secs(0))
            .await
            .expect("claimed")
    }

    fn accepted(task: &ClaimedTask) -> Outcome {
        let outcome = DispatchOutcome::Accepted {
            status: 200,
            report: None,
        };
        Outcome {
            decision: after_dispatch(task.state, 0, 0, &task.job, &outcome, 0.5),
            attempt: outcome.attempt_outcome(),
            node: "node".into(),
            http_status: Some(200),
            error: None,
            error_code: None,
            latency: Duration::from_millis(3),
        }
    }

    #[sqlx::test(migrator = "pacer_store::MIGRATOR")]
    async fn a_batch_that_fails_midway_writes_every_other_outcome_exactly_once(pool: PgPool) {
        let store = Store::new(pool.clone());
        let tasks = claimed(&store, 12).await;
        assert_eq!(tasks.len(), 12);
        let recorder = Batcher::start(
            Outcomes {
                store: store.clone(),
            },
            OUTCOME_BATCH,
            1,
        );
        // The sixth task's outcome is one the database refuses (an open task with no time to
        // be dispatched at), so the statement of whatever batch it joins fails.
        let poisoned = tasks[5].id;
        // The ninth task is deleted while its dispatch is out: its outcome finds nothing to take
        // and fails nothing.
        let deleted = tasks[8].id;
        sqlx::query("delete from tasks where id = $1")
            .bind(deleted.as_uuid())
            .execute(&pool)
            .await
            .expect("deleted");
        let mut submitted = tokio::task::JoinSet::new();
        for task in &tasks {
            let mut outcome = accepted(task);
            if task.id == poisoned {
                outcome.decision.state = Some(TaskState::Pending);
                outcome.decision.next_dispatch_in = None;
            }
            let item = (task.claim(), outcome);
            let recorder = recorder.clone();
            let id = task.id;
            submitted.spawn(async move { (id, recorder.submit(item).await) });
        }
        let mut written = 0;
        while let Some(joined) = submitted.join_next().await {
            let (id, answer) = joined.expect("submitted");
            if id == poisoned {
                assert!(answer.is_err(), "the poisoned outcome fails alone");
            } else if id == deleted {
                assert!(!answer.expect("answered").applied, "nothing took it");
            } else {
                assert!(answer.expect("written").applied, "the claim held");
                written += 1;
            }
        }
        assert_eq!(written, 10);
        let rows: Vec<(uuid::Uuid, String, i64)> = sqlx::query_as(
            "select t.id, t.state, (select count(*) from task_attempts a where a.task_id = t.id)
             from tasks t order by t.id",
        )
        .fetch_all(&pool)
        .await
        .expect("tasks");
        assert_eq!(rows.len(), 11);
        for (id, state, attempts) in rows {
            if id == poisoned.as_uuid() {
                assert_eq!(
                    (state.as_str(), attempts),
                    ("pending", 0),
                    "nothing of it written"
                );
            } else {
                assert_eq!((state.as_str(), attempts), ("completed", 1), "{id}");
            }
        }
    }
}
