//! Upstream messages over RabbitMQ and `amqp` dispatch targets, end to end against the real
//! broker on 127.0.0.1:5672: each test has its own exchanges and queues and deletes them.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::AMQPValue;
use pacer_tests::amqp::{Broker, BrokerProxy, Topology, amqp_url};
use pacer_tests::{NodeSettings, PacerProcess, TestDb, wait_until};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;

const WAIT: Duration = Duration::from_secs(30);

fn settings(node_id: &str, topology: &Topology, url: &str) -> NodeSettings {
    topology
        .env(url)
        .iter()
        .fold(NodeSettings::new(node_id), |s, (k, v)| s.env(k, v))
        .env("PACER_AMQP__MAX_MESSAGE_BYTES", "2048")
}

/// A job subscribed to `types`, dispatched to an address nobody listens on: its tasks stay
/// open (retrying), which is all these tests need of them.
fn subscriber(types: &[&str]) -> Value {
    json!({
        "target": { "url": "http://127.0.0.1:9/unreachable" },
        "payload": { "tables": ["centers"] },
        "retry": { "max_attempts": 1000, "initial_backoff": "10s" },
        "on_messages": types,
    })
}

async fn scalar(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("query")
}

fn json_message(body: &Value) -> Vec<u8> {
    serde_json::to_vec(body).expect("json")
}

fn reason(message: &lapin::message::BasicGetMessage) -> String {
    let headers = message
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    match headers.inner().get("x-pacer-reject-reason") {
        Some(AMQPValue::LongString(text)) => text.to_string(),
        other => panic!("no reject reason header: {other:?}"),
    }
}

async fn consumer_state(node: &PacerProcess) -> Value {
    let ready = node.api().request(Method::GET, "/readyz", None, &[]).await;
    ready.body["amqp"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_messages_create_tasks_once_and_malformed_ones_are_dead_lettered() {
    let db = TestDb::create().await;
    let broker = Broker::connect().await;
    let topology = Topology::new();
    let node = PacerProcess::start_with(db.url(), settings("msg-1", &topology, &amqp_url())).await;
    let api = node.api();
    wait_until("the consumer to connect", WAIT, || async {
        (consumer_state(&node).await["state"] == "connected").then_some(())
    })
    .await;
    api.put_job("sync", &subscriber(&["masterdata.changed"]))
        .await;
    api.put_job(
        "audit",
        &subscriber(&["masterdata.changed", "packet.uploaded"]),
    )
    .await;
    api.put_job("bystander", &subscriber(&["something.else"]))
        .await;

    // Malformed messages first: they must not hold up the good ones behind them.
    let plain = json_message(&json!({ "type": "masterdata.changed", "id": "evt-plain" }));
    // This node allows no notice URLs, so any `notify` is refused.
    let notifying = json_message(&json!({ "type": "masterdata.changed", "id": "evt-notify",
                                          "notify": { "url": "https://rip.example/done" } }));
    let bad: [(&[u8], &str, &str); 6] = [
        (b"not json at all", "", "not a JSON message"),
        (&notifying, "", "notify.url"),
        (br#"{"payload": {"a": 1}}"#, "", "type"),
        (&[b' '; 4096], "", "over the 2048-byte limit"),
        // Well-formed JSON, but its publisher said it is something else.
        (
            &plain,
            "text/plain",
            "content type `text/plain` is not JSON",
        ),
        (
            &plain,
            "application/xml",
            "content type `application/xml` is not JSON",
        ),
    ];
    for (body, content_type, _) in &bad {
        let mut properties = BasicProperties::default();
        if !content_type.is_empty() {
            properties = properties.with_content_type((*content_type).into());
        }
        broker
            .publish(&topology.exchange, "upstream", body, properties)
            .await;
    }
    let good = json!({ "type": "masterdata.changed", "id": "evt-1", "key": "centers",
                       "payload": { "since": "2026-11-01" } });
    // The same message twice, as an upstream retrying would send it: once as JSON with a
    // charset, once without a content type.
    for properties in [
        BasicProperties::default().with_content_type("application/json; charset=utf-8".into()),
        BasicProperties::default(),
    ] {
        broker
            .publish(
                &topology.exchange,
                "masterdata",
                &json_message(&good),
                properties,
            )
            .await;
    }
    // No `type` in the body: the AMQP `type` property stands in; no id: the digest is the key.
    let typed = json!({ "payload": { "packet": "p-1" } });
    for _ in 0..2 {
        broker
            .publish(
                &topology.exchange,
                "packets",
                &json_message(&typed),
                BasicProperties::default()
                    .with_type("packet.uploaded".into())
                    .with_content_type("application/cloudevents+json".into()),
            )
            .await;
    }

    wait_until("the good messages to be recorded", WAIT, || async {
        (scalar(db.pool(), "select count(*) from messages").await == 2).then_some(())
    })
    .await;
    wait_until("the broker queue to drain", WAIT, || async {
        (broker.depth(&topology.queue).await == 0).then_some(())
    })
    .await;
    let per_message: Vec<(String, String, i64)> = sqlx::query_as(
        "select message_id, job_name, count(*) from tasks
         group by message_id, message_type, job_name order by message_type, job_name",
    )
    .fetch_all(db.pool())
    .await
    .expect("tasks");
    let digest = per_message
        .iter()
        .find(|(id, _, _)| id.starts_with("sha256:"))
        .map(|(id, _, _)| id.clone())
        .expect("the typed message is keyed by its digest");
    assert_eq!(
        per_message,
        [
            ("evt-1".to_owned(), "audit".to_owned(), 1),
            ("evt-1".to_owned(), "sync".to_owned(), 1),
            (digest, "audit".to_owned(), 1),
        ]
    );
    let task_id: String = sqlx::query_scalar(
        "select id::text from tasks where message_id = 'evt-1' and job_name = 'sync'",
    )
    .fetch_one(db.pool())
    .await
    .expect("task");
    let task = api.get_task(&task_id).await;
    assert_eq!(
        task["origin"],
        json!({ "kind": "message", "message_id": "evt-1", "type": "masterdata.changed" })
    );
    assert_eq!(
        task["payload"],
        json!({ "tables": ["centers"], "since": "2026-11-01" })
    );
    let message = api
        .request(Method::GET, "/api/v1/messages/evt-1", None, &[])
        .await;
    assert_eq!(message.expect_status(200)["source"], "amqp");

    // Each malformed message is in the dead-letter queue, with why.
    let mut reasons = Vec::new();
    for _ in 0..bad.len() {
        let dead = broker.wait_for(&topology.dead_letter_queue, WAIT).await;
        reasons.push(reason(&dead));
    }
    for (_, _, expected) in &bad {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "a reason mentions `{expected}`: {reasons:?}"
        );
    }
    assert!(broker.get(&topology.dead_letter_queue).await.is_none());
    assert_eq!(
        consumer_state(&node).await["state"],
        "connected",
        "malformed messages do not disturb the consumer"
    );
    let metrics = pacer_tests::http_client()
        .get(format!("{}/metrics", node.url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    for line in [
        r#"pacer_messages_total{source="amqp",result="rejected"} 6"#,
        r#"pacer_messages_total{source="amqp",result="duplicate"} 2"#,
        r#"pacer_messages_total{source="amqp",result="routed"} 2"#,
        r#"pacer_tasks_created_total{origin="message"} 3"#,
        "pacer_amqp_consumer_connected 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    let cluster = api.request(Method::GET, "/api/v1/cluster", None, &[]).await;
    assert_eq!(
        cluster.expect_status(200)["amqp"]["consumer"]["state"],
        "connected"
    );
    // Each node's consumer is in the node list too, as its heartbeat recorded it.
    let listed = wait_until("the node list to show the consumer", WAIT, || async {
        let cluster = api.request(Method::GET, "/api/v1/cluster", None, &[]).await;
        let node = cluster.body["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["id"] == "msg-1")?
            .clone();
        (node["amqp"]["state"] == "connected").then_some(node)
    })
    .await;
    assert_eq!(listed["amqp"]["queue"], topology.queue.as_str());

    drop(node);
    drop(topology);
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_while_consuming_loses_and_doubles_nothing() {
    let db = TestDb::create().await;
    let broker = Broker::connect().await;
    let topology = Topology::new();
    topology.declare_messages(&broker).await;
    // Messages waiting before any node runs: the first node takes them in flight.
    let count = 60;
    for n in 0..count {
        let body = json!({ "type": "masterdata.changed", "id": format!("evt-{n}") });
        broker
            .publish(
                &topology.exchange,
                "m",
                &json_message(&body),
                BasicProperties::default(),
            )
            .await;
    }
    {
        // The jobs exist before the consumer starts: define them on a node without a broker.
        let plain = PacerProcess::start(db.url(), "msg-setup").await;
        plain
            .api()
            .put_job("sync", &subscriber(&["masterdata.changed"]))
            .await;
        plain
            .api()
            .put_job("audit", &subscriber(&["masterdata.changed"]))
            .await;
    }
    let mut first = PacerProcess::start_with(
        db.url(),
        settings("msg-first", &topology, &amqp_url()).env("PACER_AMQP__PREFETCH", "20"),
    )
    .await;
    // Killed as soon as it has committed some messages, with others delivered but not yet
    // acknowledged.
    wait_until("the first node to record a message", WAIT, || async {
        (scalar(db.pool(), "select count(*) from messages").await > 0).then_some(())
    })
    .await;
    first.kill();
    let recorded_by_first = scalar(db.pool(), "select count(*) from messages").await;

    let second =
        PacerProcess::start_with(db.url(), settings("msg-second", &topology, &amqp_url())).await;
    wait_until("every message to be recorded", WAIT, || async {
        (scalar(db.pool(), "select count(*) from messages").await == count).then_some(())
    })
    .await;
    wait_until("the broker queue to drain", WAIT, || async {
        (broker.depth(&topology.queue).await == 0).then_some(())
    })
    .await;
    assert_eq!(
        scalar(db.pool(), "select count(*) from tasks").await,
        2 * count,
        "one task per subscribing job per message (the first node recorded {recorded_by_first})"
    );
    assert_eq!(
        scalar(
            db.pool(),
            "select count(*) from (select 1 from tasks group by message_id, job_name having count(*) > 1) d"
        )
        .await,
        0
    );
    assert!(broker.get(&topology.dead_letter_queue).await.is_none());

    drop(second);
    drop(topology);
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_committed_but_never_acknowledged_is_redelivered_and_creates_nothing_more() {
    let db = TestDb::create().await;
    let broker = Broker::connect().await;
    let topology = Topology::new();
    let proxy = BrokerProxy::start().await;
    let mut first =
        PacerProcess::start_with(db.url(), settings("msg-held", &topology, &proxy.url())).await;
    first
        .api()
        .put_job("sync", &subscriber(&["masterdata.changed"]))
        .await;
    first
        .api()
        .put_job("audit", &subscriber(&["masterdata.changed"]))
        .await;
    wait_until("the consumer to connect", WAIT, || async {
        (consumer_state(&first).await["state"] == "connected").then_some(())
    })
    .await;

    // The node gets the delivery and commits its tasks, but its acknowledgement never reaches
    // the broker; then the node dies.
    proxy.hold_upstream();
    let body = json!({ "type": "masterdata.changed", "id": "evt-held" });
    broker
        .publish(
            &topology.exchange,
            "m",
            &json_message(&body),
            BasicProperties::default(),
        )
        .await;
    wait_until("the tasks to be committed", WAIT, || async {
        (scalar(db.pool(), "select count(*) from tasks").await == 2).then_some(())
    })
    .await;
    wait_until(
        "the node to have sent its acknowledgement",
        WAIT,
        || async {
            first
                .logs_with_message("message received")
                .iter()
                .any(|line| line["result"] == "routed")
                .then_some(())
        },
    )
    .await;
    first.kill();
    proxy.cut();

    // The broker redelivers it to the next node, which recognises it.
    let second =
        PacerProcess::start_with(db.url(), settings("msg-next", &topology, &amqp_url())).await;
    wait_until(
        "the redelivery to be recognised as a duplicate",
        WAIT,
        || async {
            second
                .logs_with_message("message received")
                .iter()
                .any(|line| line["result"] == "duplicate" && line["message.id"] == "evt-held")
                .then_some(())
        },
    )
    .await;
    wait_until("the broker queue to drain", WAIT, || async {
        (broker.depth(&topology.queue).await == 0).then_some(())
    })
    .await;
    assert_eq!(scalar(db.pool(), "select count(*) from messages").await, 1);
    assert_eq!(
        scalar(db.pool(), "select count(*) from tasks").await,
        2,
        "exactly one task per subscribing job"
    );

    drop(second);
    drop(topology);
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_reconnects_when_the_broker_goes_away() {
    let db = TestDb::create().await;
    let broker = Broker::connect().await;
    let topology = Topology::new();
    let proxy = BrokerProxy::start().await;
    let node =
        PacerProcess::start_with(db.url(), settings("msg-proxy", &topology, &proxy.url())).await;
    node.api()
        .put_job("sync", &subscriber(&["masterdata.changed"]))
        .await;
    wait_until("the consumer to connect", WAIT, || async {
        (consumer_state(&node).await["state"] == "connected").then_some(())
    })
    .await;
    let publish = |id: &'static str| {
        let body = json!({ "type": "masterdata.changed", "id": id });
        let broker = &broker;
        let exchange = topology.exchange.clone();
        async move {
            broker
                .publish(
                    &exchange,
                    "m",
                    &json_message(&body),
                    BasicProperties::default(),
                )
                .await;
        }
    };
    publish("before").await;
    wait_until("the first message's task", WAIT, || async {
        (scalar(db.pool(), "select count(*) from tasks").await == 1).then_some(())
    })
    .await;

    proxy.cut();
    let lost = wait_until("the node to notice the broker is gone", WAIT, || async {
        let state = consumer_state(&node).await;
        (state["state"] == "connecting").then_some(state)
    })
    .await;
    assert!(
        lost["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "the state says why: {lost}"
    );
    // The node stays ready: a broker going away is normal.
    node.api()
        .request(Method::GET, "/readyz", None, &[])
        .await
        .expect_status(200);
    publish("while-away").await;
    assert_eq!(scalar(db.pool(), "select count(*) from tasks").await, 1);

    proxy.restore();
    wait_until(
        "the message sent meanwhile to create its task",
        WAIT,
        || async { (scalar(db.pool(), "select count(*) from tasks").await == 2).then_some(()) },
    )
    .await;
    assert_eq!(consumer_state(&node).await["state"], "connected");
    publish("after").await;
    wait_until("a later message to create its task", WAIT, || async {
        (scalar(db.pool(), "select count(*) from tasks").await == 3).then_some(())
    })
    .await;

    drop(node);
    drop(topology);
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_declaring_the_consumer_waits_for_its_queues_to_exist() {
    let db = TestDb::create().await;
    let broker = Broker::connect().await;
    let topology = Topology::new();
    let node = PacerProcess::start_with(
        db.url(),
        settings("msg-expect", &topology, &amqp_url()).env("PACER_AMQP__DECLARE", "false"),
    )
    .await;
    node.api()
        .put_job("sync", &subscriber(&["masterdata.changed"]))
        .await;
    let missing = wait_until("the consumer to report the missing queue", WAIT, || async {
        let state = consumer_state(&node).await;
        (state["state"] == "connecting" && state["last_error"].is_string()).then_some(state)
    })
    .await;
    assert!(
        missing["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("NOT_FOUND") || e.contains("no queue")),
        "{missing}"
    );

    // Once an operator has made the queues, the consumer finds them by itself.
    topology.declare_messages(&broker).await;
    wait_until("the consumer to connect", WAIT, || async {
        (consumer_state(&node).await["state"] == "connected").then_some(())
    })
    .await;
    let body = json!({ "type": "masterdata.changed", "id": "evt-expected" });
    broker
        .publish(
            &topology.exchange,
            "m",
            &json_message(&body),
            BasicProperties::default(),
        )
        .await;
    wait_until("the message's task", WAIT, || async {
        (scalar(db.pool(), "select count(*) from tasks").await == 1).then_some(())
    })
    .await;

    drop(node);
    drop(topology);
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqp_target_is_published_confirmed_and_completed_by_callback() {
    let db = TestDb::create().await;
    let broker = Broker::connect().await;
    let topology = Topology::new();
    topology.declare_jobs(&broker, "run").await;
    let node =
        PacerProcess::start_with(db.url(), settings("msg-target", &topology, &amqp_url())).await;
    let api = node.api();
    let job = json!({
        "target": { "kind": "amqp", "exchange": topology.jobs_exchange, "routing_key": "run",
                    "headers": { "x-tenant": "a" } },
        "payload": { "tables": ["centers"] },
        "repoll_interval": "1s",
    });
    api.put_job("publish", &job).await;

    let task_id = api
        .create_task_id("publish", &json!({ "payload": { "full": true } }))
        .await;
    let dispatched = broker.wait_for(&topology.jobs_queue, WAIT).await;
    let body: Value = serde_json::from_slice(&dispatched.delivery.data).expect("a JSON dispatch");
    assert_eq!(body["task_id"], task_id.as_str());
    assert_eq!(body["job"], "publish");
    assert_eq!(
        body["payload"],
        json!({ "tables": ["centers"], "full": true })
    );
    let properties = &dispatched.delivery.properties;
    assert_eq!(
        properties.message_id().as_ref().map(|s| s.to_string()),
        Some(task_id.clone())
    );
    let headers = properties.headers().clone().unwrap_or_default();
    let header = |name: &str| match headers.inner().get(name) {
        Some(AMQPValue::LongString(text)) => text.to_string(),
        other => panic!("header {name}: {other:?}"),
    };
    assert_eq!(header("idempotency-key"), task_id);
    assert_eq!(header("x-tenant"), "a");
    let processing = api.wait_for_state(&task_id, "processing", WAIT).await;
    assert_eq!(pacer_tests::outcomes(&processing)[0], "accepted");

    // The downstream calls back over REST with the token the message carried.
    let callback = body["callback"]["url"].as_str().expect("callback url");
    let token = body["callback"]["token"].as_str().expect("callback token");
    let answer = pacer_tests::http_client()
        .post(callback)
        .bearer_auth(token)
        .json(&json!({ "status": "completed", "result": { "rows": 3 } }))
        .send()
        .await
        .expect("callback");
    assert_eq!(answer.status(), 200);
    let done = api.wait_for_state(&task_id, "completed", WAIT).await;
    assert_eq!(done["result"], json!({ "rows": 3 }));

    // Nobody consumes: the task is published again at every re-poll, each confirm accepted.
    let unheard = api.create_task_id("publish", &json!({})).await;
    let repolled = api.wait_for_attempts(&unheard, 3, WAIT).await;
    assert!(
        pacer_tests::outcomes(&repolled)
            .iter()
            .all(|o| o == "accepted"),
        "{repolled:#}"
    );
    assert_eq!(repolled["state"], "processing");
    wait_until("three copies in the queue", WAIT, || async {
        (broker.depth(&topology.jobs_queue).await >= 3).then_some(())
    })
    .await;
    for _ in 0..3 {
        let copy = broker.wait_for(&topology.jobs_queue, WAIT).await;
        let copy: Value = serde_json::from_slice(&copy.delivery.data).expect("json");
        assert_eq!(copy["task_id"], unheard.as_str());
    }
    api.cancel(&unheard).await.expect_status(200);

    // A routing key no queue is bound to: the broker returns it, a transient error.
    let mut unroutable = job.clone();
    unroutable["target"]["routing_key"] = json!("nowhere");
    unroutable["retry"] = json!({ "max_attempts": 2, "initial_backoff": "100ms" });
    api.put_job("unroutable", &unroutable).await;
    let lost = api.create_task_id("unroutable", &json!({})).await;
    let failed = api.wait_for_state(&lost, "failed", WAIT).await;
    assert_eq!(
        pacer_tests::outcomes(&failed),
        ["transient_error", "transient_error"]
    );
    assert!(
        failed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("could not route")),
        "{failed:#}"
    );

    drop(node);
    drop(topology);
    broker.close().await;
}
