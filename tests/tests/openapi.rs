//! End-to-end: the API reference. A node serves at `/api/openapi.json` exactly what
//! `pacer openapi` prints (and writes with `--output`), and the Swagger UI at `/docs` with its
//! assets from the binary, without a token.

use std::process::Command;

use pacer_tests::{PacerProcess, TestDb, http_client, pacer_binary};
use serde_json::Value;

fn pacer_openapi(args: &[&str]) -> String {
    let output = Command::new(pacer_binary())
        .arg("openapi")
        .args(args)
        .output()
        .expect("pacer openapi runs");
    assert!(
        output.status.success(),
        "pacer openapi failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_what_pacer_openapi_prints_and_its_docs_ui() {
    let printed = pacer_openapi(&[]);
    let file = std::env::temp_dir().join(format!("pacer-openapi-{}.json", std::process::id()));
    let path = file.to_str().expect("UTF-8 path");
    assert_eq!(pacer_openapi(&["--output", path]), "");
    let written = std::fs::read_to_string(&file).expect("--output writes the file");
    let _ = std::fs::remove_file(&file);
    assert_eq!(
        written, printed,
        "--output writes what standard output gets"
    );
    let printed: Value = serde_json::from_str(&printed).expect("the document is JSON");

    let db = TestDb::create().await;
    let node = PacerProcess::start(db.url(), "openapi").await;
    let client = http_client();
    let get = |path: &str| client.get(format!("{}{path}", node.url())).send();

    let served = get("/api/openapi.json").await.expect("request");
    assert_eq!(served.status(), 200);
    let served: Value = served.json().await.expect("JSON");
    assert_eq!(
        served, printed,
        "the node serves what `pacer openapi` prints"
    );

    let index = get("/docs/").await.expect("request");
    assert_eq!(index.status(), 200);
    let html = index.text().await.expect("text");
    assert!(html.contains("swagger-ui-bundle.js"), "{html}");
    let bundle = get("/docs/swagger-ui-bundle.js").await.expect("request");
    assert_eq!(bundle.status(), 200);
    assert!(bundle.bytes().await.expect("body").len() > 100_000);
}
