//! Retention on the real PostgreSQL: pruning takes exactly what is past its retention (a task
//! with its attempts, events and a run's children, together), keeps open tasks, each job's last
//! completed run and the run its fingerprint came from, honours a job's own `retention`, works in
//! bounded batches, and writes nothing under a stale term.

use std::collections::BTreeSet;

use pacer_domain::{JobInput, JobName, JobSpec};
use pacer_store::{Prunable, PrunedTasks, Store};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

const DAY_MS: i64 = 86_400_000;

async fn put_job(store: &Store, name: &str, definition: Value) -> Uuid {
    let input: JobInput = serde_json::from_value(definition).expect("job input");
    let spec = JobSpec::try_from(input).expect("valid job");
    let name: JobName = name.parse().expect("name");
    store.put_job(&name, &spec).await.expect("put job").job.id
}

/// A task as it would be after running: `state`, started `started_ago` and (unless open)
/// finished `finished_ago` (PostgreSQL intervals), with one attempt when it started, a child of
/// `run` when given. Its `task.state` event is written by the table's trigger.
#[allow(clippy::too_many_arguments)]
async fn task(
    pool: &PgPool,
    job: &str,
    state: &str,
    started_ago: &str,
    finished_ago: Option<&str>,
    run: Option<(Uuid, i32, &str)>,
) -> Uuid {
    let id = Uuid::now_v7();
    let open = finished_ago.is_none();
    sqlx::query(
        "insert into tasks (id, job_id, job_name, state, origin, payload, due_at, timeout_at,
                            next_dispatch_at, started_at, finished_at, outcome_noticed, attempt,
                            run_id, step, child)
         select $1, j.id, j.name, $3, 'api', '{}', now() - $4::interval, now() + interval '1 day',
                case when $6 then now() + interval '1 hour' end,
                now() - $4::interval, now() - $5::interval, true, 1, $7, $8, $9
         from jobs j where j.name = $2",
    )
    .bind(id)
    .bind(job)
    .bind(state)
    .bind(started_ago)
    .bind(finished_ago)
    .bind(open)
    .bind(run.map(|r| r.0))
    .bind(run.map(|r| r.1))
    .bind(run.map(|r| r.2))
    .execute(pool)
    .await
    .expect("insert task");
    sqlx::query(
        "insert into task_attempts (task_id, number, node, started_at, finished_at, outcome)
         values ($1, 1, 'node-a', now() - $2::interval, now() - $2::interval, 'accepted')",
    )
    .bind(id)
    .bind(started_ago)
    .execute(pool)
    .await
    .expect("insert attempt");
    id
}

/// Makes `run` a run with one step, as starting it would: its `task_runs` row, and the task
/// pointing at itself.
async fn steps(pool: &PgPool, run: Uuid) {
    sqlx::query(
        "insert into task_runs (task_id, steps, step) values ($1, '[{\"name\": \"a\"}]', 0)",
    )
    .bind(run)
    .execute(pool)
    .await
    .expect("insert run");
    sqlx::query("update tasks set run_id = id where id = $1")
        .bind(run)
        .execute(pool)
        .await
        .expect("start run");
}

async fn ids(pool: &PgPool, sql: &'static str) -> BTreeSet<Uuid> {
    sqlx::query_scalar(sql)
        .fetch_all(pool)
        .await
        .expect("query")
        .into_iter()
        .collect()
}

async fn count(pool: &PgPool, sql: &'static str, id: Uuid) -> i64 {
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("count")
}

async fn lead(store: &Store) -> i64 {
    store
        .acquire_lease("node-a", 60_000, true)
        .await
        .expect("lease")
        .expect("held")
        .term
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn pruning_takes_finished_tasks_past_retention_whole_and_keeps_open_tasks_and_the_floor(
    pool: PgPool,
) {
    let store = Store::new(pool.clone());
    let target = json!({ "target": { "url": "http://downstream.invalid/run" } });
    put_job(&store, "plain", target.clone()).await;
    put_job(
        &store,
        "short",
        json!({ "target": { "url": "http://downstream.invalid/run" }, "retention": "1h" }),
    )
    .await;
    let runs_job = put_job(&store, "runs", target.clone()).await;

    // `plain` keeps the default (a day).
    let old_failed = task(&pool, "plain", "failed", "3 days", Some("2 days"), None).await;
    let old_completed = task(&pool, "plain", "completed", "4 days", Some("4 days"), None).await;
    let last_completed = task(&pool, "plain", "completed", "3 days", Some("3 days"), None).await;
    let recent = task(&pool, "plain", "failed", "2 hours", Some("1 hour"), None).await;
    let open_old = task(&pool, "plain", "processing", "5 days", None, None).await;
    // A finished task an open one waits for (`buffer_one`) stays until the waiter is released.
    let waited = task(&pool, "plain", "failed", "6 days", Some("6 days"), None).await;
    sqlx::query("update tasks set waits_for = $1 where id = $2")
        .bind(waited)
        .bind(open_old)
        .execute(&pool)
        .await
        .expect("wait");
    // `short` keeps its own hour.
    let short_old = task(&pool, "short", "failed", "3 hours", Some("2 hours"), None).await;
    let short_recent = task(
        &pool,
        "short",
        "failed",
        "20 minutes",
        Some("10 minutes"),
        None,
    )
    .await;
    let short_last = task(
        &pool,
        "short",
        "completed",
        "5 hours",
        Some("5 hours"),
        None,
    )
    .await;
    // `runs`: an old run with its children goes; the newest completed run stays; so does an older
    // one whose child's fingerprint the job keeps; and an open run keeps its finished child.
    let run_old = task(&pool, "runs", "completed", "3 days", Some("3 days"), None).await;
    steps(&pool, run_old).await;
    let child_a = task(
        &pool,
        "runs",
        "completed",
        "3 days",
        Some("3 days"),
        Some((run_old, 0, "a")),
    )
    .await;
    let child_b = task(
        &pool,
        "runs",
        "failed",
        "3 days",
        Some("3 days"),
        Some((run_old, 0, "b")),
    )
    .await;
    let run_fp = task(&pool, "runs", "completed", "5 days", Some("5 days"), None).await;
    steps(&pool, run_fp).await;
    let fp_child = task(
        &pool,
        "runs",
        "completed",
        "5 days",
        Some("5 days"),
        Some((run_fp, 0, "a")),
    )
    .await;
    sqlx::query(
        "insert into job_fingerprints (job_id, fingerprint, task_id) values ($1, 'v1', $2)",
    )
    .bind(runs_job)
    .bind(fp_child)
    .execute(&pool)
    .await
    .expect("fingerprint");
    let run_new = task(&pool, "runs", "completed", "2 days", Some("2 days"), None).await;
    steps(&pool, run_new).await;
    let run_open = task(&pool, "runs", "processing", "4 days", None, None).await;
    steps(&pool, run_open).await;
    let open_child = task(
        &pool,
        "runs",
        "completed",
        "4 days",
        Some("4 days"),
        Some((run_open, 0, "a")),
    )
    .await;
    // Tasks of a deleted job follow the default retention, with no floor.
    put_job(&store, "gone", target.clone()).await;
    let orphan_old = task(&pool, "gone", "completed", "3 days", Some("3 days"), None).await;
    let orphan_recent = task(&pool, "gone", "failed", "2 hours", Some("1 hour"), None).await;
    sqlx::query("delete from jobs where name = 'gone'")
        .execute(&pool)
        .await
        .expect("delete job");
    // An event of the pruned task written by an alert, and one of a kept task.
    sqlx::query("insert into events (kind, task_id, at) values ('alert.opened', $1, now() - interval '3 days')")
        .bind(old_failed)
        .execute(&pool)
        .await
        .expect("event");

    let doomed = [
        old_failed,
        old_completed,
        short_old,
        run_old,
        child_a,
        child_b,
        orphan_old,
    ];
    let events_before: i64 =
        sqlx::query_scalar("select count(*) from events where task_id = any($1)")
            .bind(&doomed[..])
            .fetch_one(&pool)
            .await
            .expect("count");
    assert!(events_before >= 8, "every task has its events");

    let term = lead(&store).await;
    let pruned = store
        .prune_tasks("node-a", term, DAY_MS, 100)
        .await
        .expect("prune")
        .expect("not fenced");
    assert_eq!(
        pruned,
        PrunedTasks {
            tasks: 7,
            attempts: 7,
            events: u64::try_from(events_before).expect("count"),
            roots: 5,
        }
    );

    let kept = ids(&pool, "select id from tasks").await;
    let expected: BTreeSet<Uuid> = [
        last_completed,
        recent,
        open_old,
        short_recent,
        short_last,
        run_fp,
        fp_child,
        run_new,
        run_open,
        open_child,
        orphan_recent,
        waited,
    ]
    .into_iter()
    .collect();
    assert_eq!(kept, expected);
    for id in doomed {
        assert_eq!(
            count(&pool, "select count(*) from events where task_id = $1", id).await,
            0
        );
        assert_eq!(
            count(
                &pool,
                "select count(*) from task_attempts where task_id = $1",
                id
            )
            .await,
            0
        );
    }
    for id in &expected {
        assert!(count(&pool, "select count(*) from events where task_id = $1", *id).await > 0);
        assert_eq!(
            count(
                &pool,
                "select count(*) from task_attempts where task_id = $1",
                *id
            )
            .await,
            1
        );
    }
    assert_eq!(
        count(
            &pool,
            "select count(*) from task_runs where task_id = $1",
            run_old
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &pool,
            "select count(*) from job_fingerprints where job_id = $1",
            runs_job
        )
        .await,
        1,
        "the fingerprint stays"
    );

    // Nothing left to take, and no lag.
    let again = store
        .prune_tasks("node-a", term, DAY_MS, 100)
        .await
        .expect("prune")
        .expect("not fenced");
    assert_eq!(again, PrunedTasks::default());
    assert!(store.tasks_prune_lag(DAY_MS).await.expect("lag") < 1.0);

    // A newer completed run moves the floor: the one it protected goes at the next prune.
    let newest = task(
        &pool,
        "plain",
        "completed",
        "30 hours",
        Some("30 hours"),
        None,
    )
    .await;
    let pruned = store
        .prune_tasks("node-a", term, DAY_MS, 100)
        .await
        .expect("prune")
        .expect("not fenced");
    assert_eq!(pruned.tasks, 1);
    let plain = ids(&pool, "select id from tasks where job_name = 'plain'").await;
    assert!(!plain.contains(&last_completed) && plain.contains(&newest));
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn pruning_works_in_bounded_batches_and_not_under_a_stale_term(pool: PgPool) {
    let store = Store::new(pool.clone());
    put_job(
        &store,
        "bulk",
        json!({ "target": { "url": "http://downstream.invalid/run" } }),
    )
    .await;
    for _ in 0..25 {
        task(&pool, "bulk", "failed", "3 days", Some("2 days"), None).await;
    }
    let term = lead(&store).await;
    assert_eq!(
        store
            .prune_tasks("node-a", term - 1, DAY_MS, 10)
            .await
            .expect("prune"),
        None,
        "a stale term prunes nothing"
    );
    assert_eq!(
        store
            .prune_tasks("node-b", term, DAY_MS, 10)
            .await
            .expect("prune"),
        None,
        "nor another node"
    );
    assert!(store.tasks_prune_lag(DAY_MS).await.expect("lag") > 86_000.0);
    let mut batches = vec![];
    loop {
        let batch = store
            .prune_tasks("node-a", term, DAY_MS, 10)
            .await
            .expect("prune")
            .expect("not fenced");
        batches.push(batch.roots);
        if batch.roots < 10 {
            break;
        }
    }
    assert_eq!(batches, [10, 10, 5]);
    assert_eq!(
        sqlx::query_scalar::<_, i64>("select count(*) from tasks")
            .fetch_one(&pool)
            .await
            .expect("count"),
        0
    );
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn skips_resolved_alerts_ended_deliveries_the_audit_log_and_taskless_events_age_out(
    pool: PgPool,
) {
    let store = Store::new(pool.clone());
    put_job(
        &store,
        "plain",
        json!({ "target": { "url": "http://downstream.invalid/run" } }),
    )
    .await;
    let kept_task = task(&pool, "plain", "failed", "3 days", Some("1 hour"), None).await;
    let statements = [
        // Skips: one old, one recent, one old that alerting has not looked at yet.
        "insert into skipped_runs (id, job_name, reason, recorded_at, noticed) values
             (gen_random_uuid(), 'plain', 'overlap', now() - interval '3 days', true),
             (gen_random_uuid(), 'plain', 'overlap', now() - interval '1 hour', true),
             (gen_random_uuid(), 'plain', 'overlap', now() - interval '3 days', false)",
        // Alerts: resolved long ago (with a delivered delivery), resolved long ago with a
        // delivery still pending, resolved lately, and open since long ago.
        "insert into alerts (id, kind, severity, subject_key, state, summary, opened_at, resolved_at) values
             ('00000000-0000-0000-0000-00000000000a', 'failed', 'warning', 'a', 'resolved', 's', now() - interval '4 days', now() - interval '3 days'),
             ('00000000-0000-0000-0000-00000000000b', 'failed', 'warning', 'b', 'resolved', 's', now() - interval '4 days', now() - interval '3 days'),
             ('00000000-0000-0000-0000-00000000000c', 'failed', 'warning', 'c', 'resolved', 's', now() - interval '4 days', now() - interval '1 hour'),
             ('00000000-0000-0000-0000-00000000000d', 'failed', 'warning', 'd', 'open', 's', now() - interval '4 days', null)",
        "insert into alert_deliveries (id, alert_id, event, sink, sink_kind, url, body, state, max_attempts, created_at, next_attempt_at) values
             (gen_random_uuid(), '00000000-0000-0000-0000-00000000000a', 'opened', 's', 'webhook', 'http://x', '{}', 'delivered', 3, now() - interval '4 days', null),
             (gen_random_uuid(), '00000000-0000-0000-0000-00000000000b', 'opened', 's', 'webhook', 'http://x', '{}', 'pending', 3, now() - interval '4 days', now()),
             (gen_random_uuid(), '00000000-0000-0000-0000-00000000000d', 'opened', 's', 'webhook', 'http://x', '{}', 'failed', 3, now() - interval '4 days', null),
             (gen_random_uuid(), '00000000-0000-0000-0000-00000000000d', 'repeated', 's', 'webhook', 'http://x', '{}', 'delivered', 3, now() - interval '1 hour', null)",
        "insert into audit_log (id, at, actor, issuer, action, target) values
             (gen_random_uuid(), now() - interval '3 days', 'ops', 'pacer', 'put_job', 'plain'),
             (gen_random_uuid(), now() - interval '1 hour', 'ops', 'pacer', 'put_job', 'plain')",
        "insert into events (kind, at) values ('leader.changed', now() - interval '3 days'),
                                             ('leader.changed', now() - interval '1 hour')",
        // An event of a task kept is kept whatever its age.
        "update events set at = now() - interval '3 days' where task_id is not null",
    ];
    for sql in statements {
        sqlx::query(sql).execute(&pool).await.expect(sql);
    }
    let task_events = count(
        &pool,
        "select count(*) from events where task_id = $1",
        kept_task,
    )
    .await;
    let term = lead(&store).await;
    let lag = store
        .prune_lag(Prunable::AuditLog, DAY_MS)
        .await
        .expect("lag");
    assert!(
        (172_000.0..173_000.0).contains(&lag),
        "three days old, a day kept: {lag}"
    );
    let mut pruned = vec![];
    for what in Prunable::ALL {
        let rows = store
            .prune("node-a", term, what, DAY_MS, 100)
            .await
            .expect("prune")
            .expect("not fenced");
        pruned.push((what.table(), rows));
        assert!(store.prune_lag(what, DAY_MS).await.expect("lag") < 1.0);
    }
    assert_eq!(
        pruned,
        [
            ("events", 1),
            ("messages", 0),
            ("skipped_runs", 1),
            ("alerts", 1),
            // The failed delivery of the open alert; the delivered one of the pruned alert went
            // with its alert.
            ("alert_deliveries", 1),
            ("audit_log", 1),
        ]
    );
    let left = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .expect(sql)
        }
    };
    assert_eq!(left("select count(*) from skipped_runs").await, 2);
    assert_eq!(
        left("select count(*) from alerts where id <> '00000000-0000-0000-0000-00000000000a'")
            .await,
        3
    );
    assert_eq!(left("select count(*) from alerts").await, 3);
    assert_eq!(left("select count(*) from alert_deliveries").await, 2);
    assert_eq!(left("select count(*) from audit_log").await, 1);
    assert_eq!(left("select count(*) from events where task_id is null and kind = 'leader.changed' and at < now() - interval '1 day'").await, 0);
    assert_eq!(
        count(
            &pool,
            "select count(*) from events where task_id = $1",
            kept_task
        )
        .await,
        task_events
    );

    // The sizes of the tables that grow, cheaply.
    let sizes = store.table_sizes().await.expect("sizes");
    let tables: Vec<&str> = sizes.iter().map(|s| s.table.as_str()).collect();
    assert_eq!(tables, pacer_store::SIZED_TABLES);
    assert!(sizes.iter().all(|s| s.bytes > 0 && s.rows >= 0));
}
