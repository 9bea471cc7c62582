//! End-to-end: event subscriptions through the CLI (`pacer subscriptions …`) and apply files
//! (`subscription: <name>` entries).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use pacer_tests::{PacerProcess, TestDb, pacer_binary, token};
use reqwest::Method;
use serde_json::{Value, json};

/// What one `pacer` command did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

/// Runs `pacer args…` against `url` with `token` (nothing else from the environment).
fn pacer(url: &str, token: &str, args: &[&str]) -> Run {
    let mut command = Command::new(pacer_binary());
    command.args(args);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("PACER_") || key == "RUST_LOG" {
            command.env_remove(&*key);
        }
    }
    command.env("PACER_URL", url).env("PACER_TOKEN", token);
    let output = command.output().expect("pacer runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_managed_with_the_cli_and_declared_in_apply_files() {
    let db = TestDb::create().await;
    let node = PacerProcess::start(db.url(), "cli-subscriptions").await;
    let api = node.api();
    let admin = token(&["admin"]);
    let pacer = |args: &[&str]| pacer(node.url(), &admin, args);

    let saved = pacer(&[
        "subscriptions",
        "put",
        "team",
        "--endpoint",
        "https://team.example/events",
        "--label",
        "team=registration",
        "--event",
        "task.state",
        "--event",
        "alert.opened",
    ])
    .ok();
    assert!(
        saved.stdout.contains("subscription team saved"),
        "{saved:#?}"
    );
    let shown = api
        .request(Method::GET, "/api/v1/subscriptions/team", None, &[])
        .await;
    let shown = shown.expect_status(200);
    assert_eq!(shown["labels"], json!({ "team": "registration" }));
    assert_eq!(shown["events"], json!(["alert.opened", "task.state"]));
    let listed = pacer(&["subscriptions", "list"]).ok();
    assert!(
        listed.stdout.contains("team") && listed.stdout.contains("team=registration"),
        "{listed:#?}"
    );
    let got = pacer(&["subscriptions", "get", "team", "--output", "json"])
        .ok()
        .json();
    assert_eq!(got["lag"]["events"], 0, "{got:#}");
    let bad = pacer(&[
        "subscriptions",
        "put",
        "x",
        "--endpoint",
        "https://a.example/",
        "--label",
        "nope",
    ]);
    assert_eq!(bad.code, 4, "invalid input: {bad:#?}");
    assert!(bad.stderr.contains("key=value"), "{bad:#?}");

    // An apply file declares one; applying it twice changes nothing the second time.
    let dir = std::env::temp_dir().join(format!(
        "pacer-subscriptions-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let file: PathBuf = dir.join("jobs.yaml");
    std::fs::write(
        &file,
        "- subscription: billing\n  url: https://billing.example/events\n  jobs: [invoice]\n  events: [task.state]\n",
    )
    .expect("write");
    let file = file.to_string_lossy().into_owned();
    let applied = pacer(&["apply", "-f", &file]).ok();
    assert!(
        applied.stdout.contains("+ subscription billing"),
        "{applied:#?}"
    );
    let again = pacer(&["apply", "-f", &file]).ok();
    assert!(
        again.stdout.contains("subscription billing (unchanged)"),
        "{again:#?}"
    );
    let billing = api
        .request(Method::GET, "/api/v1/subscriptions/billing", None, &[])
        .await;
    assert_eq!(billing.expect_status(200)["jobs"], json!(["invoice"]));

    // `pacer events` follows the stream with the same filters.
    for (job, team) in [("intake", "registration"), ("billing", "finance")] {
        api.put_job(
            job,
            &json!({ "target": { "url": "http://127.0.0.1:9/run" }, "labels": { "team": team } }),
        )
        .await;
    }
    let mut follower = Command::new(pacer_binary())
        .args([
            "events",
            "--label",
            "team:registration",
            "--kind",
            "task.state",
            "--output",
            "json",
        ])
        .env("PACER_URL", node.url())
        .env("PACER_TOKEN", &admin)
        .stdout(Stdio::piped())
        .spawn()
        .expect("pacer events runs");
    let stdout = follower.stdout.take().expect("stdout");
    let (lines, received) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout)
            .lines()
            .map_while(std::result::Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // The stream starts at the present: create tasks until the labelled job's shows up.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let intake = loop {
        api.create_task_id("billing", &json!({})).await;
        let intake = api.create_task_id("intake", &json!({})).await;
        let mut found = false;
        while let Ok(line) = received.recv_timeout(Duration::from_secs(1)) {
            let event: Value = serde_json::from_str(&line).expect("a JSON line");
            found |= event["data"]["task"] == json!(intake);
            seen.push(event);
        }
        if found {
            break intake;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no event of {intake}: {seen:#?}"
        );
    };
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(
        seen.iter()
            .all(|e| e["data"]["job"] == "intake" && e["event"] == "task.state"),
        "only the labelled job's task.state events: {seen:#?}"
    );
    assert!(seen.iter().any(|e| e["data"]["task"] == json!(intake)));

    pacer(&["subscriptions", "delete", "team"]).ok();
    let gone = api
        .request(Method::GET, "/api/v1/subscriptions/team", None, &[])
        .await;
    gone.expect_problem(404);
    let _ = std::fs::remove_dir_all(&dir);
}
