//! End-to-end: concurrency limits hold at the downstream across a cluster. A job's
//! `max_concurrency` bounds its tasks out at once over three nodes; a concurrency group of limit 1
//! keeps two jobs from ever overlapping, across a kill -9 of the node holding the slot; a waiting
//! task says what it waits for; bad limits and unknown groups are refused naming the field.

use std::time::Duration;

use pacer_tests::{ConcurrencyProbe, NodeSettings, PacerProcess, TestDb, wait_until};
use reqwest::Method;
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(60);

async fn create_tasks(api: &pacer_tests::Api, job: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let end = (start + 50).min(n);
        let handles: Vec<_> = (start..end)
            .map(|i| {
                let (api, job) = (api.clone(), job.to_owned());
                tokio::spawn(async move {
                    api.create_task_id(&job, &json!({ "payload": { "n": i } }))
                        .await
                })
            })
            .collect();
        for handle in handles {
            ids.push(handle.await.expect("create task"));
        }
        start = end;
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_holds_over_three_nodes() {
    let db = TestDb::create().await;
    let probe = ConcurrencyProbe::start(Duration::from_millis(20)).await;
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b", "node-c"] {
        // 1000 creates from one caller: above the default write rate limit.
        let settings = NodeSettings::new(id)
            .env("PACER_AUTH__RATE_LIMIT_PER_SECOND", "100000")
            .env("PACER_AUTH__RATE_LIMIT_BURST", "100000");
        nodes.push(PacerProcess::start_with(db.url(), settings).await);
    }
    let api = nodes[0].api();
    api.put_job(
        "limited",
        &json!({ "target": { "url": probe.url("/work") }, "max_concurrency": 5,
                 "repoll_interval": "1m" }),
    )
    .await;
    let ids = create_tasks(&api, "limited", 1000).await;

    // The last created waits longest: it says what it waits for.
    let last = api.get_task(ids.last().expect("tasks")).await;
    assert_eq!(last["state"], "pending");
    assert_eq!(last["waiting_for"]["max_concurrency"], 5, "{last}");
    let holders = last["waiting_for"]["holders"].as_array().expect("holders");
    assert!(holders.len() <= 5);

    wait_until(
        "all 1000 tasks called back",
        Duration::from_secs(240),
        || async { (probe.done() == 1000).then_some(()) },
    )
    .await;
    assert!(
        probe.max_open() <= 5,
        "at most 5 at once at the downstream, saw {}",
        probe.max_open()
    );
    assert_eq!(probe.max_open(), 5, "the limit is used, not undershot");
    let completed: i64 = sqlx::query_scalar("select count(*) from tasks where state = 'completed'")
        .fetch_one(db.pool())
        .await
        .expect("count");
    wait_until("every task completed in the database", SETTLE, || async {
        let n: i64 = sqlx::query_scalar("select count(*) from tasks where state = 'completed'")
            .fetch_one(db.pool())
            .await
            .expect("count");
        (n == 1000).then_some(())
    })
    .await;
    assert!(completed <= 1000);
    // Every node took part: the limit is cluster-wide, not per node.
    let nodes_used: i64 = sqlx::query_scalar("select count(distinct node) from task_attempts")
        .fetch_one(db.pool())
        .await
        .expect("count");
    assert!(nodes_used >= 2, "dispatches spread over the nodes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_limit_one_never_overlaps_two_jobs_even_when_the_holder_is_killed() {
    let db = TestDb::create().await;
    // Each task takes 1.5 s: long enough to kill the node holding the slot mid-work.
    let probe = ConcurrencyProbe::start(Duration::from_millis(1500)).await;
    let mut nodes = [
        PacerProcess::start(db.url(), "node-a").await,
        PacerProcess::start(db.url(), "node-b").await,
    ];
    let api = nodes[0].api();
    let put = api
        .request(
            Method::PUT,
            "/api/v1/concurrency-groups/registration-client",
            Some(&json!({ "limit": 1, "description": "one sync at a time" })),
            &[],
        )
        .await;
    put.expect_status(201);
    for job in ["masterdata", "packets"] {
        api.put_job(
            job,
            &json!({ "target": { "url": probe.url("/work") },
                     "concurrency_group": "registration-client",
                     "repoll_interval": "2s" }),
        )
        .await;
    }
    let mut ids = create_tasks(&api, "masterdata", 3).await;
    ids.extend(create_tasks(&api, "packets", 3).await);

    // The first dispatch out: kill -9 the node that sent it, while the slot is held.
    let (holder, node) = wait_until("a task holds the group's slot", SETTLE, || async {
        sqlx::query_as::<_, (String, String)>(
            "select t.id::text, a.node from tasks t join task_attempts a on a.task_id = t.id
             where t.holds_slot and t.state = 'processing' limit 1",
        )
        .fetch_optional(db.pool())
        .await
        .expect("query")
    })
    .await;
    let group = api
        .request(
            Method::GET,
            "/api/v1/concurrency-groups/registration-client",
            None,
            &[],
        )
        .await;
    let group = group.expect_status(200);
    assert_eq!(group["limit"], 1);
    assert_eq!(group["holders"][0]["task_id"], holder.as_str());
    let killed = nodes
        .iter()
        .position(|n| n.node_id() == node)
        .expect("the holder is one of ours");
    nodes[killed].kill();
    let survivor = nodes[1 - killed].api();

    // Another task of the group waits, naming the holder.
    let waiting = ids.iter().find(|id| **id != holder).expect("another task");
    let view = survivor.get_task(waiting).await;
    assert_eq!(view["waiting_for"]["group"], "registration-client");
    assert_eq!(
        view["waiting_for"]["holders"][0]["task_id"],
        holder.as_str()
    );

    wait_until("all six tasks called back", SETTLE, || async {
        (probe.done() == 6).then_some(())
    })
    .await;
    assert_eq!(
        probe.max_open(),
        1,
        "the two jobs never overlapped at the downstream"
    );
    let events: Vec<(String, i64)> = sqlx::query_as(
        "select kind, count(*) from events where kind like 'group.%' group by kind order by kind",
    )
    .fetch_all(db.pool())
    .await
    .expect("events");
    assert_eq!(
        events,
        [("group.acquired".into(), 6), ("group.released".into(), 6)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_limits_and_unknown_groups_are_refused_naming_the_field() {
    let db = TestDb::create().await;
    let node = PacerProcess::start(db.url(), "node-a").await;
    let api = node.api();
    let job = |extra: Value| {
        let mut spec = json!({ "target": { "url": "http://downstream.test/run" } });
        for (k, v) in extra.as_object().expect("object") {
            spec[k] = v.clone();
        }
        spec
    };
    for (extra, field) in [
        (json!({ "max_concurrency": 0 }), "max_concurrency"),
        (json!({ "max_concurrency": 10_001 }), "max_concurrency"),
        (json!({ "concurrency_group": "nope" }), "concurrency_group"),
        (
            json!({ "concurrency_group": "bad name" }),
            "concurrency_group",
        ),
    ] {
        let response = api
            .request(
                Method::PUT,
                "/api/v1/jobs/j",
                Some(&job(extra.clone())),
                &[],
            )
            .await;
        let problem = response.expect_problem(422);
        assert_eq!(problem["errors"][0]["field"], field, "{extra}");
    }
    for (body, field) in [
        (json!({ "limit": 0 }), "limit"),
        (json!({ "limit": 1.5 }), "limit"),
        (json!({}), "limit"),
    ] {
        let response = api
            .request(
                Method::PUT,
                "/api/v1/concurrency-groups/g",
                Some(&body),
                &[],
            )
            .await;
        let problem = response.expect_problem(422);
        assert_eq!(problem["errors"][0]["field"], field, "{body}");
    }
    // A group a job names is not deleted.
    api.request(
        Method::PUT,
        "/api/v1/concurrency-groups/g",
        Some(&json!({ "limit": 2 })),
        &[],
    )
    .await
    .expect_status(201);
    api.put_job("j", &job(json!({ "concurrency_group": "g" })))
        .await;
    api.request(Method::DELETE, "/api/v1/concurrency-groups/g", None, &[])
        .await
        .expect_problem(409);
    let listed = api
        .request(Method::GET, "/api/v1/concurrency-groups", None, &[])
        .await;
    let listed = listed.expect_status(200);
    assert_eq!(listed["items"][0]["name"], "g");
    assert_eq!(listed["items"][0]["jobs"], json!(["j"]));
    let audit: i64 =
        sqlx::query_scalar("select count(*) from audit_log where action = 'put_concurrency_group'")
            .fetch_one(db.pool())
            .await
            .expect("audit");
    assert_eq!(audit, 1);
}
