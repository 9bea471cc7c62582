//! The operator API driven in-process against the real PostgreSQL: task filters and keyset
//! paging, the run history, the actions (run now, run all, cancel, retry, retry errors, release)
//! each with its audit entry, and the job summary.

#[path = "support/state.rs"]
mod support;

use std::collections::HashSet;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;
use uuid::Uuid;

struct Api {
    router: Router,
    pool: PgPool,
}

struct Reply {
    status: StatusCode,
    content_type: String,
    body: Value,
}

impl Api {
    fn new(pool: PgPool) -> Self {
        let (state, _) = support::state(pool.clone(), support::config(), vec![]);
        Self {
            router: pacer_api::router(state),
            pool,
        }
    }

    async fn call(&self, method: Method, uri: &str, body: Option<Value>, roles: &[&str]) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {}", support::token(roles)));
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .expect("request");
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("response");
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().expect("ascii").to_owned())
            .unwrap_or_default();
        let bytes = to_bytes(response.into_body(), 1 << 22).await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        Reply {
            status,
            content_type,
            body,
        }
    }

    async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, None, &["operator"]).await
    }

    async fn post(&self, uri: &str) -> Reply {
        self.call(Method::POST, uri, None, &["operator"]).await
    }

    async fn put_job(&self, name: &str, overlap: &str) {
        let body = json!({
            "target": { "url": "http://registry:8080/sync" },
            "payload": { "tables": ["centers"] },
            "deadline": "15m",
            "overlap": overlap,
        });
        let reply = self
            .call(
                Method::PUT,
                &format!("/api/v1/jobs/{name}"),
                Some(body),
                &["admin"],
            )
            .await;
        assert!(reply.status.is_success(), "{}", reply.body);
    }

    async fn create_task(&self, job: &str) -> String {
        let reply = self
            .call(
                Method::POST,
                &format!("/api/v1/jobs/{job}/tasks"),
                None,
                &["upstream"],
            )
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        reply.body["id"].as_str().expect("id").to_owned()
    }

    /// Ids of a task listing.
    async fn ids(&self, uri: &str) -> Vec<String> {
        let reply = self.get(uri).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}: {}", reply.body);
        reply.body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|t| t["id"].as_str().expect("id").to_owned())
            .collect()
    }

    /// Audit entries of one action, newest first.
    async fn audited(&self, action: &str) -> Vec<Value> {
        let reply = self
            .call(
                Method::GET,
                &format!("/api/v1/audit?action={action}"),
                None,
                &["admin"],
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.body["items"].as_array().expect("items").clone()
    }

    async fn sql(&self, statement: &'static str, id: &str) {
        let id: Uuid = id.parse().expect("uuid");
        sqlx::query(statement)
            .bind(id)
            .execute(&self.pool)
            .await
            .expect("sql");
    }
}

fn owned(ids: &[&String]) -> Vec<String> {
    ids.iter().map(|id| (*id).clone()).collect()
}

fn problem_fields(reply: &Reply, status: StatusCode, kind: &str) -> Vec<String> {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.content_type, "application/problem+json");
    assert_eq!(reply.body["type"], kind, "{}", reply.body);
    reply.body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

const FINISH: &str =
    "update tasks set state = $2, finished_at = now(), started_at = now() - interval '2 seconds',
     next_dispatch_at = null where id = $1";

async fn finish(api: &Api, id: &str, state: &str) {
    let id: Uuid = id.parse().expect("uuid");
    sqlx::query(FINISH)
        .bind(id)
        .bind(state)
        .execute(&api.pool)
        .await
        .expect("finish");
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn tasks_are_filtered_by_every_field_and_bad_filters_name_the_field(pool: PgPool) {
    let api = Api::new(pool);
    api.put_job("sync", "allow").await;
    api.put_job("other", "allow").await;
    let failed = api.create_task("sync").await;
    let completed = api.create_task("sync").await;
    let open = api.create_task("sync").await;
    let elsewhere = api.create_task("other").await;
    finish(&api, &failed, "failed").await;
    finish(&api, &completed, "completed").await;
    api.sql(
        "update tasks set deadline_at = now() - interval '1 minute' where id = $1",
        &open,
    )
    .await;
    let manual = api.post("/api/v1/jobs/other/run").await;
    assert_eq!(manual.status, StatusCode::ACCEPTED, "{}", manual.body);
    let manual = manual.body["id"].as_str().expect("id").to_owned();

    assert_eq!(
        api.ids("/api/v1/tasks?job=sync").await,
        owned(&[&open, &completed, &failed]),
        "one job's tasks, newest first"
    );
    assert_eq!(
        api.ids("/api/v1/tasks?state=failed").await,
        owned(&[&failed])
    );
    assert_eq!(
        api.ids("/api/v1/tasks?state=failed,completed&job=sync")
            .await,
        owned(&[&completed, &failed]),
        "several states, comma-separated"
    );
    assert_eq!(
        api.ids("/api/v1/tasks?origin=manual").await,
        owned(&[&manual])
    );
    assert_eq!(
        api.ids("/api/v1/tasks?origin=api&job=other").await,
        owned(&[&elsewhere])
    );
    assert_eq!(api.ids("/api/v1/tasks?overdue=true").await, owned(&[&open]));
    assert_eq!(
        api.ids("/api/v1/tasks?overdue=false&job=sync").await,
        owned(&[&completed, &failed])
    );

    // Time ranges: move one task back a day, then cut on either side of it.
    api.sql(
        "update tasks set created_at = now() - interval '1 day', finished_at = now() - interval '1 day' where id = $1",
        &failed,
    )
    .await;
    let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(
        api.ids(&format!("/api/v1/tasks?job=sync&created_before={hour_ago}"))
            .await,
        owned(&[&failed])
    );
    assert_eq!(
        api.ids(&format!("/api/v1/tasks?job=sync&created_after={hour_ago}"))
            .await,
        owned(&[&open, &completed])
    );
    assert_eq!(
        api.ids(&format!("/api/v1/tasks?finished_after={hour_ago}"))
            .await,
        owned(&[&completed])
    );
    assert_eq!(
        api.ids(&format!("/api/v1/tasks?finished_before={hour_ago}"))
            .await,
        owned(&[&failed])
    );

    let bad = api
        .get("/api/v1/tasks?state=done&origin=fax&overdue=maybe&created_after=yesterday&limit=501&cursor=x")
        .await;
    let mut fields = problem_fields(
        &bad,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/validation",
    );
    fields.sort();
    assert_eq!(
        fields,
        [
            "created_after",
            "cursor",
            "limit",
            "origin",
            "overdue",
            "state"
        ]
    );
    let unknown = api.get("/api/v1/tasks?colour=red").await;
    problem_fields(
        &unknown,
        StatusCode::UNPROCESSABLE_ENTITY,
        "/problems/validation",
    );
    for list in ["/api/v1/jobs", "/api/v1/audit", "/api/v1/skips"] {
        let reply = api
            .call(Method::GET, &format!("{list}?limit=501"), None, &["admin"])
            .await;
        assert_eq!(
            problem_fields(
                &reply,
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/validation"
            ),
            ["limit"],
            "{list} bounds its limit"
        );
    }
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn pages_neither_repeat_nor_skip_a_task_while_tasks_are_created(pool: PgPool) {
    let api = Api::new(pool);
    api.put_job("sync", "allow").await;
    let mut existing = Vec::new();
    for _ in 0..23 {
        existing.push(api.create_task("sync").await);
    }
    existing.reverse();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut created_meanwhile = 0;
    loop {
        let uri = match &cursor {
            Some(cursor) => format!("/api/v1/tasks?job=sync&limit=5&cursor={cursor}"),
            None => "/api/v1/tasks?job=sync&limit=5".to_owned(),
        };
        let page = api.get(&uri).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let items = page.body["items"].as_array().expect("items");
        assert!(items.len() <= 5);
        seen.extend(
            items
                .iter()
                .map(|t| t["id"].as_str().expect("id").to_owned()),
        );
        // New tasks arrive between pages; they are newer than every page boundary.
        api.create_task("sync").await;
        created_meanwhile += 1;
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, existing, "every task exactly once, newest first");
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        seen.len(),
        "no duplicates"
    );
    let all = api.ids("/api/v1/tasks?job=sync&limit=500").await;
    assert_eq!(all.len(), existing.len() + created_meanwhile);
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn operators_run_cancel_retry_and_release_tasks_and_each_action_is_audited(pool: PgPool) {
    let api = Api::new(pool);
    api.put_job("sync", "allow").await;

    // Run now: a manual task naming the operator.
    let run = api
        .call(
            Method::POST,
            "/api/v1/jobs/sync/run",
            Some(json!({ "payload": { "full": true } })),
            &["operator"],
        )
        .await;
    assert_eq!(run.status, StatusCode::ACCEPTED, "{}", run.body);
    assert_eq!(
        run.body["origin"],
        json!({ "kind": "manual", "actor": "tester" })
    );
    assert_eq!(
        run.body["payload"],
        json!({ "tables": ["centers"], "full": true })
    );
    let task = run.body["id"].as_str().expect("id").to_owned();
    let audit = api.audited("run_job").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["target"], "job:sync");
    assert_eq!(audit[0]["after"]["task"], task.as_str());
    assert_eq!(
        api.post("/api/v1/jobs/nope/run").await.status,
        StatusCode::NOT_FOUND
    );
    let upstream = api
        .call(Method::POST, "/api/v1/jobs/sync/run", None, &["upstream"])
        .await;
    assert_eq!(
        upstream.status,
        StatusCode::FORBIDDEN,
        "run is an operator's"
    );

    // A task still open cannot be retried.
    let open = api.post(&format!("/api/v1/tasks/{task}/retry")).await;
    problem_fields(&open, StatusCode::CONFLICT, "/problems/task-open");
    assert_eq!(open.body["state"], "pending");

    // Cancel after a dispatch reached the downstream: a notice for the downstream is queued,
    // and the downstream's next callback is refused.
    api.sql(
        "update tasks set state = 'processing', attempt = 1, dispatched = true where id = $1",
        &task,
    )
    .await;
    let cancelled = api.post(&format!("/api/v1/tasks/{task}/cancel")).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    assert_eq!(cancelled.body["state"], "cancelled");
    let notice: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("select cancel_notice_at from tasks where id = $1")
            .bind(task.parse::<Uuid>().expect("uuid"))
            .fetch_one(&api.pool)
            .await
            .expect("notice");
    assert!(notice.is_some(), "the downstream is to be told");
    assert_eq!(api.audited("cancel_task").await.len(), 1);

    // Retry: a new task linked to the old one; retrying again finds the same retry.
    let retry = api.post(&format!("/api/v1/tasks/{task}/retry")).await;
    assert_eq!(retry.status, StatusCode::ACCEPTED, "{}", retry.body);
    assert_eq!(retry.body["origin"]["kind"], "retry");
    assert_eq!(retry.body["origin"]["task_id"], task.as_str());
    assert_eq!(retry.body["payload"], run.body["payload"]);
    let retry_id = retry.body["id"].as_str().expect("id").to_owned();
    let again = api.post(&format!("/api/v1/tasks/{task}/retry")).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["id"], retry_id.as_str());
    let audit = api.audited("retry_task").await;
    assert_eq!(audit.len(), 1, "the repeat changed nothing");
    assert_eq!(audit[0]["target"], format!("task:{task}"));
    assert_eq!(audit[0]["after"]["retry"], retry_id.as_str());
    let detail = api.get(&format!("/api/v1/tasks/{task}")).await;
    assert_eq!(detail.body["retries"], json!([retry_id]));

    // Release: a claim held by a node known to be dead is dropped and the task is due again.
    api.sql(
        "update tasks set claim_token = gen_random_uuid(), claimed_by = 'node-dead',
             claimed_at = now(), attempt = 1, next_dispatch_at = now() + interval '1 hour'
         where id = $1",
        &retry_id,
    )
    .await;
    let released = api.post(&format!("/api/v1/tasks/{retry_id}/release")).await;
    assert_eq!(released.status, StatusCode::OK, "{}", released.body);
    assert_eq!(released.body["claimed_by"], Value::Null);
    let due = chrono::DateTime::parse_from_rfc3339(
        released.body["next_dispatch_at"].as_str().expect("due"),
    )
    .expect("instant");
    assert!(due <= chrono::Utc::now() + chrono::Duration::seconds(1));
    let detail = api.get(&format!("/api/v1/tasks/{retry_id}")).await;
    assert_eq!(detail.body["attempts"][0]["outcome"], "abandoned");
    assert_eq!(detail.body["attempts"][0]["node"], "node-dead");
    let audit = api.audited("release_task").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["before"]["claimed_by"], "node-dead");
    let twice = api.post(&format!("/api/v1/tasks/{retry_id}/release")).await;
    problem_fields(&twice, StatusCode::CONFLICT, "/problems/task-not-claimed");
    let missing = api
        .post(&format!("/api/v1/tasks/{}/release", Uuid::now_v7()))
        .await;
    problem_fields(&missing, StatusCode::NOT_FOUND, "/problems/not-found");
    let bad = api.post("/api/v1/tasks/not-a-uuid/retry").await;
    assert_eq!(
        problem_fields(
            &bad,
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation"
        ),
        ["id"]
    );
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn retry_errors_and_run_all_start_one_task_each_and_report_what_they_did(pool: PgPool) {
    let api = Api::new(pool);
    api.put_job("sync", "allow").await;
    api.put_job("single", "skip").await;
    api.put_job("idle", "allow").await;
    let mut failed = Vec::new();
    for _ in 0..3 {
        let id = api.create_task("sync").await;
        finish(&api, &id, "failed").await;
        failed.push(id);
    }
    let fine = api.create_task("sync").await;
    finish(&api, &fine, "completed").await;

    let retried = api.post("/api/v1/jobs/sync/retry-failed?limit=2").await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    let pairs = retried.body["retried"].as_array().expect("retried");
    assert_eq!(pairs.len(), 2);
    assert_eq!(pairs[0]["task"], failed[0].as_str(), "oldest first");
    assert_eq!(retried.body["more"], true);
    let rest = api.post("/api/v1/jobs/sync/retry-failed").await;
    assert_eq!(rest.body["retried"].as_array().expect("retried").len(), 1);
    assert_eq!(rest.body["retried"][0]["task"], failed[2].as_str());
    assert_eq!(rest.body["more"], false);
    let none = api.post("/api/v1/jobs/sync/retry-failed").await;
    assert_eq!(
        none.body["retried"],
        json!([]),
        "each failed task is retried once"
    );
    let retries = api.ids("/api/v1/tasks?job=sync&origin=retry").await;
    assert_eq!(retries.len(), 3);
    let audit = api.audited("retry_failed_tasks").await;
    assert_eq!(
        audit.len(),
        2,
        "a pass that retried nothing is not an action"
    );
    assert_eq!(
        audit[1]["after"]["retried"].as_array().expect("list").len(),
        2
    );

    // Overlap policy `skip` applies to retries: the first starts, the second is refused.
    for _ in 0..2 {
        let id = api.create_task("single").await;
        finish(&api, &id, "failed").await;
    }
    let single = api.post("/api/v1/jobs/single/retry-failed").await;
    assert_eq!(single.body["retried"].as_array().expect("retried").len(), 1);
    assert_eq!(single.body["stopped"]["reason"], "overlap");
    assert_eq!(single.body["more"], true);

    // Run all: one task per enabled job; `single` already has an open task; paused jobs rest.
    let paused = api.post("/api/v1/jobs/idle/pause").await;
    assert_eq!(paused.status, StatusCode::OK);
    let all = api.post("/api/v1/scheduler/run-all").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    let started: Vec<&str> = all.body["started"]
        .as_array()
        .expect("started")
        .iter()
        .map(|s| s["job"].as_str().expect("job"))
        .collect();
    assert_eq!(started, ["sync"]);
    assert_eq!(all.body["skipped"][0]["job"], "single");
    assert_eq!(all.body["paused"], json!(["idle"]));
    let manual = api.ids("/api/v1/tasks?origin=manual").await;
    assert_eq!(manual.len(), 1);
    let audit = api.audited("run_all_jobs").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(
        audit[0]["after"],
        json!({ "started": 1, "skipped": 1, "paused": 1, "completed": true })
    );

    let paused_retry = api.post("/api/v1/jobs/idle/retry-failed").await;
    problem_fields(&paused_retry, StatusCode::CONFLICT, "/problems/job-paused");
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_task_reads_as_its_run_history_and_a_job_as_its_summary(pool: PgPool) {
    let api = Api::new(pool);
    api.put_job("sync", "allow").await;
    let task = api.create_task("sync").await;
    api.sql(
        "update tasks set state = 'processing', attempt = 1, started_at = now() where id = $1",
        &task,
    )
    .await;
    let token_roles = ["downstream"];
    for body in [
        json!({ "status": "processing", "progress": { "done": 1, "total": 2 } }),
        json!({ "status": "completed", "result": { "rows": 2 } }),
    ] {
        let reply = api
            .call(
                Method::POST,
                &format!("/api/v1/tasks/{task}/callback"),
                Some(body),
                &token_roles,
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    let detail = api.get(&format!("/api/v1/tasks/{task}")).await;
    let history: Vec<(String, String)> = detail.body["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|e| {
            let what = e["data"]["state"]
                .as_str()
                .or(e["data"]["status"].as_str())
                .unwrap_or_default();
            (
                e["kind"].as_str().unwrap_or_default().to_owned(),
                what.to_owned(),
            )
        })
        .collect();
    let expected = [
        ("task.state", "pending"),
        ("task.state", "processing"),
        ("task.callback", "processing"),
        ("task.callback", "completed"),
        ("task.state", "completed"),
    ];
    assert_eq!(
        history,
        expected.map(|(k, s)| (k.to_owned(), s.to_owned())),
        "state changes and callbacks in order, each callback before the change it made"
    );
    assert_eq!(detail.body["history"][2]["data"]["progress"]["done"], 1);
    assert_eq!(detail.body["history"][3]["data"]["result"]["rows"], 2);

    let failed = api.create_task("sync").await;
    finish(&api, &failed, "failed").await;
    let cancelled = api.create_task("sync").await;
    finish(&api, &cancelled, "cancelled").await;
    let trigger = api
        .call(
            Method::POST,
            "/api/v1/jobs/sync/triggers",
            Some(json!({ "kind": "interval", "every": "1h" })),
            &["admin"],
        )
        .await;
    assert_eq!(trigger.status, StatusCode::CREATED, "{}", trigger.body);

    let summary = api.get("/api/v1/jobs/sync/summary").await;
    assert_eq!(summary.status, StatusCode::OK, "{}", summary.body);
    let body = &summary.body;
    assert_eq!(body["last_run"]["task"], cancelled.as_str());
    assert_eq!(body["last_success"]["task"], task.as_str());
    assert_eq!(body["recent"]["finished"], 3);
    assert_eq!(body["recent"]["completed"], 1);
    assert_eq!(body["recent"]["failed"], 1);
    assert_eq!(
        body["recent"]["success_rate"], 0.5,
        "cancelled runs are not judged"
    );
    let p50 = body["recent"]["p50_ms"].as_f64().expect("p50");
    let p95 = body["recent"]["p95_ms"].as_f64().expect("p95");
    assert!(p50 > 0.0 && p95 >= p50, "{body}");
    assert_eq!(
        body["open"],
        json!({ "pending": 0, "processing": 0, "oldest_pending_at": null })
    );
    assert_eq!(body["open_alerts"], json!({ "total": 0, "by_kind": {} }));
    let fires = body["next_fire_times"].as_array().expect("fires");
    assert_eq!(fires.len(), 5);
    assert_eq!(fires[0]["trigger"], trigger.body["id"]);
    // The failed task's alert, open, and an older one already resolved, which does not count.
    api.sql(
        "insert into alerts (id, kind, severity, subject_key, task_id, job_name, summary)
         values (gen_random_uuid(), 'failed', 'critical', 'task:' || $1::text, $1, 'sync', 'failed')",
        &failed,
    )
    .await;
    api.sql(
        "insert into alerts (id, kind, severity, subject_key, job_name, summary, state, resolved_at)
         values ($1, 'missed', 'warning', 'job:sync', 'sync', 'missed', 'resolved', now())",
        &uuid::Uuid::now_v7().to_string(),
    )
    .await;
    let summary = api.get("/api/v1/jobs/sync/summary").await;
    assert_eq!(
        summary.body["open_alerts"],
        json!({ "total": 1, "by_kind": { "failed": 1 } })
    );
    let missing = api.get("/api/v1/jobs/nope/summary").await;
    problem_fields(&missing, StatusCode::NOT_FOUND, "/problems/not-found");
    let bad = api.get("/api/v1/jobs/sync/summary?window=0").await;
    assert_eq!(
        problem_fields(
            &bad,
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/validation"
        ),
        ["window"]
    );
}
