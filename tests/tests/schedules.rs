//! End-to-end: exclusion calendars, jitter and backfill (README "Calendars, jitter and
//! backfill") on a three-node cluster whose leader is killed midway. Every occurrence still gets
//! exactly one outcome: a task, or a skip naming the calendar that excluded it; jittered tasks
//! go out at their fire time; a backfill fills in what the calendar held back, once.

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use pacer_tests::{Api, FakeDownstream, NodeSettings, PacerProcess, Reply, TestDb, wait_until};
use reqwest::Method;
use serde_json::{Value, json};

/// Generous: node starts and firing passes on a loaded two-core machine.
const SETTLE: Duration = Duration::from_secs(30);
const TRIGGERS: usize = 10;
/// The jitter of every trigger here.
const JITTER_MS: i64 = 700;

fn node(id: &str) -> NodeSettings {
    NodeSettings::new(id)
        .env("PACER_CLUSTER__HEARTBEAT_INTERVAL", "500ms")
        .env("PACER_CLUSTER__DEAD_AFTER", "2s")
        .env("PACER_CLUSTER__LEASE_TTL", "2s")
        .env("PACER_DATABASE__MAX_CONNECTIONS", "8")
}

/// The `blackout` calendar opens a 2 s window every 4 s: seconds 0, 1, 4, 5, 8, 9, … of each
/// minute are excluded.
fn excluded(second: DateTime<Utc>) -> bool {
    second.second() % 4 < 2
}

async fn db_now(db: &TestDb) -> DateTime<Utc> {
    sqlx::query_scalar("select now()")
        .fetch_one(db.pool())
        .await
        .expect("the database answers")
}

/// Waits until no trigger is due at or before `to`.
async fn fired_through(db: &TestDb, to: DateTime<Utc>) {
    let ahead = (to - db_now(db).await).to_std().unwrap_or_default();
    wait_until("every occurrence to be fired", ahead + SETTLE, || async {
        let behind: i64 =
            sqlx::query_scalar("select count(*) from triggers where next_fire_at <= $1")
                .bind(to)
                .fetch_one(db.pool())
                .await
                .expect("the triggers are readable");
        (behind == 0).then_some(())
    })
    .await;
}

async fn leader(db: &TestDb) -> String {
    wait_until("a node to hold the lease", SETTLE, || async {
        sqlx::query_scalar(
            "select holder from leader_lease where holder is not null and expires_at > now()",
        )
        .fetch_optional(db.pool())
        .await
        .expect("the lease is readable")
    })
    .await
}

async fn call(api: &Api, method: Method, path: &str, body: Option<&Value>, status: u16) -> Value {
    let response = api.request(method, path, body, &[]).await;
    response.expect_status(status).clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calendar_holds_back_occurrences_cluster_wide_and_jitter_and_backfill_keep_exactly_once()
{
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|_| Reply::status(200)).await;
    let first = PacerProcess::start_with(db.url(), node("node-1")).await;
    let (second, third) = tokio::join!(
        PacerProcess::start_with(db.url(), node("node-2")),
        PacerProcess::start_with(db.url(), node("node-3")),
    );
    let mut nodes = [first, second, third];
    let api = nodes[0].api();
    api.put_job(
        "sync",
        &json!({ "target": { "url": downstream.url("/sync") }, "expect_callback": false }),
    )
    .await;
    call(
        &api,
        Method::PUT,
        "/api/v1/calendars/blackout",
        Some(&json!({ "exclude": [
            { "kind": "cron", "expression": "*/4 * * * * *", "duration": "2s" }
        ] })),
        201,
    )
    .await;
    call(
        &api,
        Method::PUT,
        "/api/v1/calendars/holidays",
        Some(&json!({ "timezone": "Europe/Berlin", "include": ["blackout"] })),
        201,
    )
    .await;
    let unknown = api
        .request(
            Method::POST,
            "/api/v1/jobs/sync/triggers",
            Some(&json!({ "kind": "interval", "every": "1s", "calendars": ["nowhere"] })),
            &[],
        )
        .await;
    assert_eq!(
        unknown.expect_problem(422)["errors"][0]["field"],
        "calendars[0]"
    );
    let mut ids = Vec::new();
    for _ in 0..TRIGGERS {
        let trigger = call(
            &api,
            Method::POST,
            "/api/v1/jobs/sync/triggers",
            Some(
                &json!({ "kind": "interval", "every": "1s", "calendars": ["holidays"],
                          "jitter": format!("{JITTER_MS}ms") }),
            ),
            201,
        )
        .await;
        assert_eq!(trigger["calendars"], json!(["holidays"]));
        assert_eq!(trigger["jitter"], "700ms");
        ids.push(trigger["id"].as_str().expect("an id").to_owned());
    }
    let from: DateTime<Utc> = sqlx::query_scalar(
        "select date_trunc('second', max(created_at)) + interval '1 second' from triggers",
    )
    .fetch_one(db.pool())
    .await
    .expect("the triggers are readable");

    // The preview marks what the calendar excludes and shows the jittered fire times.
    let preview = call(
        &api,
        Method::GET,
        &format!("/api/v1/jobs/sync/triggers/{}/preview?count=8", ids[0]),
        None,
        200,
    )
    .await;
    for occurrence in preview["occurrences"].as_array().expect("occurrences") {
        let scheduled: DateTime<Utc> =
            serde_json::from_value(occurrence["scheduled_at"].clone()).expect("a time");
        let fire: DateTime<Utc> =
            serde_json::from_value(occurrence["fire_at"].clone()).expect("a time");
        assert!(fire >= scheduled && (fire - scheduled).num_milliseconds() < JITTER_MS);
        let expected = excluded(scheduled).then_some("blackout");
        assert_eq!(occurrence["excluded_by"].as_str(), expected, "{occurrence}");
    }

    // Fire for a while, kill the leader, fire on under its successor.
    fired_through(&db, from + chrono::Duration::seconds(5)).await;
    let holder = leader(&db).await;
    let index = nodes
        .iter()
        .position(|n| n.node_id() == holder)
        .expect("the leader is one of the nodes");
    nodes[index].kill();
    let to = from + chrono::Duration::seconds(14);
    fired_through(&db, to).await;

    // Exactly one outcome per occurrence: a skip naming `blackout` in its windows, else a task.
    let outcomes: Vec<(String, DateTime<Utc>, i64, String)> = sqlx::query_as(
        "with occurrence as (
             select t.id as trigger_id, s.at
             from triggers t
             cross join generate_series($1::timestamptz, $2::timestamptz, interval '1 second') s(at)
         ), outcome as (
             select trigger_id, scheduled_at, 'task' as kind from tasks
             union all
             select trigger_id, scheduled_at, 'skip ' || reason || ' ' || coalesce(detail, '-')
             from skipped_runs
         )
         select o.trigger_id::text, o.at, count(x.kind), coalesce(string_agg(x.kind, ', '), '')
         from occurrence o
         left join outcome x on x.trigger_id = o.trigger_id and x.scheduled_at = o.at
         group by o.trigger_id, o.at order by o.at",
    )
    .bind(from)
    .bind(to)
    .fetch_all(db.pool())
    .await
    .expect("the outcomes are readable");
    assert_eq!(outcomes.len(), TRIGGERS * 15);
    for (trigger, at, count, kinds) in &outcomes {
        assert_eq!(*count, 1, "{trigger} at {at}: {kinds}");
        let expected = if excluded(*at) {
            "skip calendar blackout"
        } else {
            "task"
        };
        assert_eq!(kinds, expected, "{trigger} at {at}");
    }

    // Jittered tasks keep their nominal occurrence and go out at their fire time, which the
    // dispatch body carries beside it.
    let tasks: Vec<(String, DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "select id::text, scheduled_at, fire_at from tasks
         where origin = 'trigger' and scheduled_at between $1 and $2",
    )
    .bind(from)
    .bind(to)
    .fetch_all(db.pool())
    .await
    .expect("the tasks are readable");
    wait_until("every task to be dispatched", SETTLE, || async {
        let requests = downstream.requests();
        tasks
            .iter()
            .all(|(id, ..)| requests.iter().any(|r| r.task_id() == id))
            .then_some(())
    })
    .await;
    let requests = downstream.requests();
    let mut jittered = 0;
    for (id, scheduled, fire_at) in &tasks {
        let fire = fire_at.unwrap_or(*scheduled);
        assert!(fire >= *scheduled && (fire - *scheduled).num_milliseconds() < JITTER_MS);
        let sent = requests
            .iter()
            .find(|r| r.task_id() == id && r.task_seq == 0)
            .expect("dispatched");
        let body_scheduled: DateTime<Utc> =
            serde_json::from_value(sent.body["scheduled_at"].clone()).expect("scheduled_at");
        assert_eq!(
            body_scheduled, *scheduled,
            "the body keeps the nominal time"
        );
        if fire_at.is_some() {
            jittered += 1;
            let body_fire: DateTime<Utc> =
                serde_json::from_value(sent.body["fire_at"].clone()).expect("fire_at");
            assert_eq!(body_fire, fire);
        } else {
            assert!(sent.body.get("fire_at").is_none());
        }
        // The same machine's clock: a send before the fire time would be jitter ignored.
        assert!(
            sent.received_at >= fire - chrono::Duration::milliseconds(50),
            "task {id} sent at {} before its fire time {fire}",
            sent.received_at
        );
    }
    assert!(
        jittered * 10 > tasks.len() * 9,
        "nearly every offset is above zero"
    );

    // The skips list names the calendar; a wanted exclusion raises no `missed` alert.
    let api = nodes[(index + 1) % nodes.len()].api();
    let alerts = call(&api, Method::GET, "/api/v1/alerts?kind=missed", None, 200).await;
    assert_eq!(alerts["items"], json!([]));
    let skips = call(
        &api,
        Method::GET,
        "/api/v1/skips?job=sync&limit=5",
        None,
        200,
    )
    .await;
    for skip in skips["items"].as_array().expect("items") {
        assert_eq!(skip["reason"], "calendar");
        assert_eq!(skip["calendar"], "blackout");
    }

    // A backfill respects the calendar unless told otherwise, and creates each occurrence once.
    // Its range lies in the past: occurrences are fired a little ahead of their time.
    wait_until("the window to be past", SETTLE, || async {
        (db_now(&db).await > to + chrono::Duration::seconds(2)).then_some(())
    })
    .await;
    let path = format!("/api/v1/jobs/sync/triggers/{}/backfill", ids[0]);
    let range = json!({ "from": from, "to": to + chrono::Duration::seconds(1) });
    let respected = call(&api, Method::POST, &path, Some(&range), 200).await;
    let held_back = (0..15)
        .filter(|s| excluded(from + chrono::Duration::seconds(*s)))
        .count();
    assert_eq!(respected["created"], json!([]));
    assert_eq!(
        respected["existing"].as_array().map(Vec::len),
        Some(15 - held_back)
    );
    assert_eq!(
        respected["excluded"].as_array().map(Vec::len),
        Some(held_back)
    );
    let mut forced = range.clone();
    forced["ignore_calendars"] = json!(true);
    forced["dry_run"] = json!(true);
    let dry = call(&api, Method::POST, &path, Some(&forced), 200).await;
    assert_eq!(dry["created"].as_array().map(Vec::len), Some(held_back));
    forced["dry_run"] = json!(false);
    let done = call(&api, Method::POST, &path, Some(&forced), 200).await;
    assert_eq!(done["created"].as_array().map(Vec::len), Some(held_back));
    assert!(done["created"][0]["task_id"].is_string());
    let again = call(&api, Method::POST, &path, Some(&forced), 200).await;
    assert_eq!(again["created"], json!([]), "a repeat creates nothing");
    let doubled: i64 = sqlx::query_scalar(
        "select count(*) from (select 1 from tasks where trigger_id is not null
                               group by trigger_id, scheduled_at having count(*) > 1) d",
    )
    .fetch_one(db.pool())
    .await
    .expect("countable");
    assert_eq!(doubled, 0);
    let too_long = json!({ "from": from - chrono::Duration::hours(1), "to": to });
    let refused = api.request(Method::POST, &path, Some(&too_long), &[]).await;
    assert!(
        refused.expect_problem(422)["detail"]
            .as_str()
            .is_some_and(|d| d.contains("more than 1000 occurrences")),
        "{:?}",
        refused.body
    );

    // A calendar in use stays unless forced.
    let in_use = api
        .request(Method::DELETE, "/api/v1/calendars/holidays", None, &[])
        .await;
    assert_eq!(
        in_use.expect_problem(409)["type"],
        "/problems/calendar-in-use"
    );
    call(
        &api,
        Method::DELETE,
        "/api/v1/calendars/holidays?force=true",
        None,
        204,
    )
    .await;
}
