//! End-to-end: the deployment (README "Running in production"). Three nodes run the way the
//! containers of docker-compose.yml do: the image's command and environment, deploy/pacer.env and
//! each node's compose environment, with only what names other containers (the database, the
//! collector, the key volume, secrets from .env) and the ports replaced by local stand-ins. The
//! cluster forms, serves on every node, and hands over when its leader is stopped.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pacer_tests::{
    FakeDownstream, NodeSettings, PacerProcess, Reply, TestDb, http_client, pacer_binary,
    wait_until,
};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::task::JoinSet;

/// Generous: node starts and a leader hand-over on a loaded machine.
const SETTLE: Duration = Duration::from_secs(30);

/// Settings whose container values name other containers, files in volumes, secrets from
/// `.env`, or ports; the test gives each a local value. Every other value runs as it is.
const STAND_INS: [&str; 7] = [
    "PACER_DATABASE_URL",
    "PACER_AMQP_URL",
    "PACER_JWT_HS256_SECRET",
    "PACER_SIGNING_KEY_FILE",
    "PACER_LISTEN",
    "PACER_PUBLIC_URL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Settings `NodeSettings::new` gives test-friendly values; the container environment must set
/// each, or the nodes here would run with the harness's timings rather than the deployment's.
const HARNESS_TIMINGS: [&str; 3] = [
    "PACER_DISPATCH__POLL_INTERVAL",
    "PACER_DISPATCH__LEASE_MARGIN",
    "PACER_DISPATCH__DRAIN_TIMEOUT",
];

/// A file of the repository, e.g. `deploy/Dockerfile`.
fn workspace_file(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// What the image runs: the last stage's `ENTRYPOINT` + `CMD` and its `ENV` (`KEY=VALUE` pairs).
fn image_command_and_env() -> (Vec<String>, Vec<(String, String)>) {
    let text = workspace_file("deploy/Dockerfile");
    let text = text.replace("\\\n", " ");
    let (mut entrypoint, mut cmd, mut env) = (Vec::new(), Vec::new(), Vec::new());
    for line in text.lines().map(str::trim) {
        let (instruction, rest) = line.split_once(' ').unwrap_or((line, ""));
        let exec_form = || -> Vec<String> {
            serde_json::from_str(rest)
                .unwrap_or_else(|_| panic!("deploy/Dockerfile: `{line}` is not in exec form"))
        };
        match instruction {
            "FROM" => (entrypoint, cmd, env) = (Vec::new(), Vec::new(), Vec::new()),
            "ENTRYPOINT" => entrypoint = exec_form(),
            "CMD" => cmd = exec_form(),
            "ENV" => env.extend(rest.split_whitespace().map(|pair| {
                let (key, value) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("deploy/Dockerfile: ENV {pair} is not KEY=VALUE"));
                (key.to_owned(), value.to_owned())
            })),
            _ => {}
        }
    }
    entrypoint.extend(cmd);
    (entrypoint, env)
}

/// The `KEY=VALUE` lines of an env file.
fn env_file(path: &str) -> Vec<(String, String)> {
    let text = workspace_file(path);
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{path}: `{line}` is not KEY=VALUE"));
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

/// One block of docker-compose.yml as far as the environment goes: a top-level `x-…` block or a
/// service.
#[derive(Debug, Default)]
struct Block {
    /// `<<: *anchor` lines, in order.
    merges: Vec<String>,
    env_files: Vec<String>,
    /// `UPPER_CASE: value` lines (entries of `environment` maps).
    env: Vec<(String, String)>,
}

/// Reads docker-compose.yml line by line (the tests have no YAML parser): blocks are top-level
/// keys (`x-…: &anchor`) and services; environment entries are `UPPER_CASE: value` lines. Merges
/// are followed wherever they appear, which matches YAML's as long as no service overrides a
/// merged `environment` or `env_file` (scripts/check-deploy parses the file properly).
fn compose_blocks() -> (BTreeMap<String, Block>, BTreeMap<String, String>) {
    let text = workspace_file("docker-compose.yml");
    let mut blocks: BTreeMap<String, Block> = BTreeMap::new();
    let mut anchors = BTreeMap::new();
    let mut top = String::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let (key, value) = trimmed.split_once(':').unwrap_or((trimmed, ""));
        let value = value.trim();
        if indent == 0 {
            top = key.to_owned();
            current = key.to_owned();
            if let Some(anchor) = value.strip_prefix('&') {
                anchors.insert(anchor.to_owned(), key.to_owned());
            }
        } else if indent == 2 && top == "services" {
            current = key.to_owned();
        } else if key == "<<" {
            let anchor = value.trim_start_matches('*').to_owned();
            blocks
                .entry(current.clone())
                .or_default()
                .merges
                .push(anchor);
        } else if key == "env_file" {
            let file = value.trim_matches(['"', '\'']).to_owned();
            blocks
                .entry(current.clone())
                .or_default()
                .env_files
                .push(file);
        } else if key.starts_with(|c: char| c.is_ascii_uppercase())
            && key
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            let value = value.trim_matches(['"', '\'']).to_owned();
            let entry = (key.to_owned(), value);
            blocks.entry(current.clone()).or_default().env.push(entry);
        }
    }
    (blocks, anchors)
}

/// The environment a compose service's container starts with: the image's `ENV`, then its env
/// files, then its `environment` (merged anchors first), each overriding the one before.
fn container_env(
    service: &str,
    image_env: &[(String, String)],
    blocks: &BTreeMap<String, Block>,
    anchors: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    fn collect<'a>(
        name: &str,
        blocks: &'a BTreeMap<String, Block>,
        anchors: &BTreeMap<String, String>,
        files: &mut Vec<&'a str>,
        env: &mut Vec<&'a (String, String)>,
    ) {
        let Some(block) = blocks.get(name) else {
            return;
        };
        for anchor in &block.merges {
            let merged = anchors
                .get(anchor)
                .unwrap_or_else(|| panic!("docker-compose.yml: no anchor &{anchor}"));
            collect(merged, blocks, anchors, files, env);
        }
        files.extend(block.env_files.iter().map(String::as_str));
        env.extend(&block.env);
    }
    let (mut files, mut env) = (Vec::new(), Vec::new());
    collect(service, blocks, anchors, &mut files, &mut env);
    let mut values: BTreeMap<String, String> = image_env.iter().cloned().collect();
    for file in files {
        values.extend(env_file(file));
    }
    values.extend(env.into_iter().cloned());
    values
}

/// Free ports on 127.0.0.1, held until all are chosen so none repeats.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound address").port())
        .collect()
}

async fn cluster_view(node: &PacerProcess) -> Value {
    let view = node
        .api()
        .request(Method::GET, "/api/v1/cluster", None, &[])
        .await;
    view.expect_status(200).clone()
}

/// The ids of the nodes the cluster view shows alive, and its leader.
fn alive_and_leader(view: &Value) -> (Vec<String>, Option<String>) {
    let alive = view["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["alive"] == true)
        .filter_map(|n| n["id"].as_str().map(str::to_owned))
        .collect();
    (alive, view["leader"]["node"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_configured_as_in_docker_compose_form_a_cluster_and_serve() {
    let (command, image_env) = image_command_and_env();
    assert_eq!(
        command,
        ["pacer", "serve"],
        "the harness runs `pacer serve`, as the image must"
    );
    let (blocks, anchors) = compose_blocks();
    let mut nodes_env: Vec<(String, BTreeMap<String, String>)> = blocks
        .keys()
        .map(|name| (name, container_env(name, &image_env, &blocks, &anchors)))
        .filter(|(_, env)| env.contains_key("PACER_NODE_ID"))
        .map(|(name, env)| (name.clone(), env))
        .collect();
    nodes_env.sort();
    assert_eq!(
        nodes_env.len(),
        3,
        "docker-compose.yml runs three nodes: {nodes_env:#?}"
    );
    for (service, env) in &nodes_env {
        for key in STAND_INS {
            assert!(
                env.contains_key(key),
                "the container of {service} no longer sets {key}; update STAND_INS: {env:#?}"
            );
        }
        for key in HARNESS_TIMINGS {
            assert!(
                env.contains_key(key),
                "the container of {service} does not set {key}, so this test would run it with \
                 the harness's value; set it in deploy/pacer.env: {env:#?}"
            );
        }
        for (key, value) in env.iter().filter(|(k, _)| !STAND_INS.contains(&k.as_str())) {
            assert!(
                !value.contains("${"),
                "{service}: {key}={value} needs a value from .env; give it a stand-in here"
            );
        }
    }

    let db = TestDb::create().await;
    // The `migrate` one-shot first: `pacer migrate` in its container's environment, nothing
    // from the outer one.
    assert!(
        blocks.contains_key("migrate"),
        "docker-compose.yml runs `migrate`"
    );
    let mut migrate = Command::new(pacer_binary());
    migrate.arg("migrate");
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("PACER_") || key == "RUST_LOG" {
            migrate.env_remove(&*key);
        }
    }
    let migrate_env = container_env("migrate", &image_env, &blocks, &anchors);
    let migrated = migrate
        .envs(
            migrate_env
                .iter()
                .filter(|(k, _)| !STAND_INS.contains(&k.as_str())),
        )
        .env("PACER_DATABASE_URL", db.url())
        .output()
        .expect("pacer migrate runs");
    assert!(
        migrated.status.success(),
        "pacer migrate failed in {migrate_env:?}: {}",
        String::from_utf8_lossy(&migrated.stderr)
    );

    // The collector and a downstream that accepts each task and reports it completed.
    let collector = FakeDownstream::start(|_| Reply::status(200)).await;
    let downstream = FakeDownstream::start(|_| {
        Reply::accept().then_callback(Duration::from_millis(100), json!({ "status": "completed" }))
    })
    .await;

    // The three nodes start side by side, as compose starts them.
    let ports = free_ports(nodes_env.len());
    let mut public_urls = BTreeMap::new();
    let mut starting = JoinSet::new();
    for ((service, env), port) in nodes_env.iter().zip(ports) {
        let node_id = &env["PACER_NODE_ID"];
        let public_url = format!("http://127.0.0.1:{port}");
        public_urls.insert(node_id.clone(), public_url.clone());
        let stand_ins = [
            ("PACER_DATABASE_URL", db.url().to_owned()),
            // No broker: the consumer keeps reconnecting, and the node serves meanwhile.
            (
                "PACER_AMQP_URL",
                "amqp://guest:guest@127.0.0.1:1/%2f".to_owned(),
            ),
            (
                "PACER_JWT_HS256_SECRET",
                pacer_tests::TEST_SECRET.to_owned(),
            ),
            (
                "PACER_SIGNING_KEY_FILE",
                pacer_tests::signing_key_file().display().to_string(),
            ),
            ("PACER_LISTEN", format!("127.0.0.1:{port}")),
            ("PACER_PUBLIC_URL", public_url),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url("")),
        ];
        assert_eq!(
            stand_ins.each_ref().map(|(key, _)| *key),
            STAND_INS,
            "{service}"
        );
        let settings = env
            .iter()
            .map(|(key, value)| (key.as_str(), value.clone()))
            .chain(stand_ins)
            .fold(NodeSettings::new(node_id), |settings, (key, value)| {
                settings.env(key, &value)
            });
        let database_url = db.url().to_owned();
        starting.spawn(async move { PacerProcess::start_with(&database_url, settings).await });
    }
    let mut nodes = starting.join_all().await;
    nodes.sort_by(|a, b| a.node_id().cmp(b.node_id()));

    // The cluster forms: every node sees all three alive and the same leader.
    let ids: Vec<String> = public_urls.keys().cloned().collect();
    let mut leader = None;
    for node in &nodes {
        let what = format!("{} to see three alive nodes and a leader", node.node_id());
        let view = wait_until(&what, SETTLE, || async {
            let view = cluster_view(node).await;
            let (mut alive, leading) = alive_and_leader(&view);
            alive.sort();
            (alive == ids && leading.is_some()).then_some(view)
        })
        .await;
        let (_, seen) = alive_and_leader(&view);
        assert!(
            leader.is_none() || leader == seen,
            "the nodes disagree on the leader: {view:#}"
        );
        leader = seen;
        for entry in view["nodes"].as_array().into_iter().flatten() {
            let id = entry["id"].as_str().unwrap_or_default();
            assert_eq!(
                entry["address"].as_str(),
                public_urls.get(id).map(String::as_str),
                "a node's address is its PACER_PUBLIC_URL: {view:#}"
            );
        }
    }
    let leader = leader.expect("a leader was seen");

    // It serves: a task created on each node is dispatched by that node, with a callback URL
    // on its public URL, and completes.
    let api = nodes[0].api();
    api.put_job(
        "deployment-check",
        &json!({ "target": { "url": downstream.url("/work") } }),
    )
    .await;
    for node in &nodes {
        let task = node
            .api()
            .create_task_id("deployment-check", &json!({ "payload": {} }))
            .await;
        api.wait_for_state(&task, "completed", SETTLE).await;
        let done = api.wait_for_attempts(&task, 1, SETTLE).await;
        let dispatch = &downstream.wait_for_requests(&task, 1, SETTLE).await[0];
        let callback = dispatch.body["callback"]["url"]
            .as_str()
            .unwrap_or_default();
        assert!(
            callback.starts_with(&format!("{}/api/v1/tasks/", public_urls[node.node_id()])),
            "{} dispatched with callback {callback}: {done:#}",
            node.node_id()
        );
        assert_eq!(done["attempts"][0]["node"], node.node_id(), "{done:#}");
    }

    // Health and metrics answer as the HEALTHCHECK, the probes and Prometheus expect.
    let client = http_client();
    for node in &nodes {
        for (path, expected) in [
            ("/healthz", r#""ok""#),
            ("/readyz", r#""ready""#),
            ("/metrics", "pacer_build_info"),
        ] {
            let response = client
                .get(format!("{}{path}", node.url()))
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {path} on {}: {e}", node.node_id()));
            assert_eq!(response.status(), 200, "{path} on {}", node.node_id());
            let body = response.text().await.unwrap_or_default();
            assert!(
                body.contains(expected),
                "{path} on {}: {body}",
                node.node_id()
            );
        }
    }

    // Stopping the leader as `docker compose stop` or Kubernetes does (SIGTERM): it exits 0,
    // a follower takes over, and the spans it buffered reach the collector.
    let index = nodes
        .iter()
        .position(|n| n.node_id() == leader)
        .expect("the leader is one of the nodes");
    let mut stopped = nodes.remove(index);
    stopped.terminate();
    let status = stopped.wait_exit(SETTLE).await;
    assert!(status.success(), "{leader} exited with {status}");
    let survivors: Vec<&str> = nodes.iter().map(PacerProcess::node_id).collect();
    wait_until("a follower to take over the lease", SETTLE, || async {
        let (alive, now_leading) = alive_and_leader(&cluster_view(&nodes[0]).await);
        let taken_over = now_leading.is_some_and(|l| survivors.contains(&l.as_str()));
        (taken_over && !alive.contains(&leader)).then_some(())
    })
    .await;
    let traces = wait_until("spans exported to the collector", SETTLE, || async {
        let posts: Vec<_> = collector
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path == "/v1/traces")
            .collect();
        (!posts.is_empty()).then_some(posts)
    })
    .await;
    assert!(traces.iter().all(|r| !r.raw.is_empty()), "{traces:#?}");
}
