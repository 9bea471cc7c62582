//! Security on real nodes: every API call needs a token, dispatches carry credentials a
//! downstream can verify (a JWT against the node's published keys, an HMAC over the body, a
//! configured bearer secret), and secrets never leave the node in responses or logs.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pacer_tests::{FakeDownstream, NodeSettings, PacerProcess, Reply, TEST_SECRET, TestDb};
use reqwest::Method;
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(20);
const REGISTRY_SECRET: &str = "registry-secret-value-7f3a9c1e5b";

fn decode(segment: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(segment).expect("base64url")
}

/// Verifies an EdDSA JWT against a JWKS with ring alone; returns its claims.
fn verify_with_jwks(token: &str, jwks: &Value) -> Result<Value, String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = parts.as_slice() else {
        return Err("not a JWT".into());
    };
    let header: Value = serde_json::from_slice(&decode(header)).map_err(|e| e.to_string())?;
    let kid = header["kid"].as_str().ok_or("no kid")?;
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid))
        .ok_or("unknown kid")?;
    if header["alg"] != "EdDSA" || jwk["crv"] != "Ed25519" {
        return Err(format!("unexpected key {jwk}"));
    }
    let public = decode(jwk["x"].as_str().ok_or("no x")?);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
        .verify(
            format!("{header}.{payload}", header = parts[0]).as_bytes(),
            &decode(signature),
        )
        .map_err(|_| "bad signature".to_owned())?;
    serde_json::from_slice(&decode(payload)).map_err(|e| e.to_string())
}

fn hmac_matches(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut timestamp = None;
    let mut signature = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", t)) => timestamp = Some(t),
            Some(("v1", v)) => signature = Some(v),
            _ => {}
        }
    }
    let (Some(t), Some(v)) = (timestamp, signature) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    let expected: String = ring::hmac::sign(&key, &message)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    expected == v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatches_carry_verifiable_credentials_and_secrets_stay_secret() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|_| {
        Reply::accept().then_callback(Duration::from_millis(20), json!({ "status": "completed" }))
    })
    .await;
    let settings =
        NodeSettings::new("node-a").env("PACER_SECRETS__REGISTRY_TOKEN", REGISTRY_SECRET);
    let node = PacerProcess::start_with(db.url(), settings).await;
    let api = node.api();

    let anonymous = api.with_token(None);
    let refused = anonymous
        .request(Method::GET, "/api/v1/jobs", None, &[])
        .await;
    assert_eq!(
        refused.expect_problem(401)["type"],
        "/problems/unauthenticated"
    );
    let upstream = api.with_token(Some(pacer_tests::token(&["upstream"])));
    let refused = upstream
        .request(Method::GET, "/api/v1/jobs", None, &[])
        .await;
    refused.expect_problem(403);

    let auths = [
        ("signed", json!({ "kind": "jwt", "audience": "registry" })),
        (
            "hmac",
            json!({ "kind": "hmac", "secret": "registry_token" }),
        ),
        (
            "bearer",
            json!({ "kind": "bearer", "secret": "registry_token" }),
        ),
    ];
    let mut tasks = Vec::new();
    for (job, auth) in &auths {
        let spec = json!({ "target": { "url": downstream.url(&format!("/{job}")), "auth": auth } });
        let stored = api.put_job(job, &spec).await;
        assert_eq!(
            stored["target"]["auth"], *auth,
            "only the secret's name is stored and shown"
        );
        tasks.push(api.create_task_id(job, &json!({})).await);
    }
    for task in &tasks {
        api.wait_for_state(task, "completed", SETTLE).await;
    }
    let missing = json!({ "target": { "url": downstream.url("/x"), "auth": { "kind": "bearer", "secret": "nope" } } });
    let problem = api
        .request(Method::PUT, "/api/v1/jobs/missing", Some(&missing), &[])
        .await;
    assert_eq!(
        problem.expect_problem(422)["errors"][0]["field"],
        "target.auth.secret"
    );

    // A JWT the downstream verifies with nothing but the node's published key set.
    let jwks = anonymous
        .request(Method::GET, "/.well-known/jwks.json", None, &[])
        .await
        .expect_status(200)
        .clone();
    let jwt_request = &downstream.requests_for(&tasks[0])[0];
    let token = jwt_request
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .expect("bearer JWT");
    let claims =
        verify_with_jwks(token, &jwks).expect("the dispatch JWT verifies against the JWKS");
    assert_eq!(claims["aud"], "registry");
    assert_eq!(claims["iss"], "pacer");
    assert_eq!(claims["sub"], tasks[0].as_str());
    assert!(claims["exp"].as_i64().expect("exp") > chrono::Utc::now().timestamp());
    let mut forged: Vec<String> = token.split('.').map(str::to_owned).collect();
    forged[1] = URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&json!({ "aud": "registry", "sub": "other" })).expect("json"));
    assert!(
        verify_with_jwks(&forged.join("."), &jwks).is_err(),
        "a tampered JWT fails"
    );

    // An HMAC over the exact body, and a body changed in transit fails it.
    let hmac_request = &downstream.requests_for(&tasks[1])[0];
    let signature = hmac_request
        .header("pacer-signature")
        .expect("signature header");
    assert!(hmac_matches(REGISTRY_SECRET, signature, &hmac_request.raw));
    let mut tampered = hmac_request.raw.clone();
    tampered.extend_from_slice(b" ");
    assert!(!hmac_matches(REGISTRY_SECRET, signature, &tampered));
    assert!(!hmac_matches(
        "another-secret",
        signature,
        &hmac_request.raw
    ));

    let bearer_request = &downstream.requests_for(&tasks[2])[0];
    assert_eq!(
        bearer_request.header("authorization"),
        Some(format!("Bearer {REGISTRY_SECRET}").as_str())
    );
    // Every dispatch body carries a callback token, and downstreams used it to report.
    assert!(
        bearer_request.body["callback"]["token"]
            .as_str()
            .is_some_and(|t| t.split('.').count() == 3)
    );
    let callbacks = downstream.wait_for_callbacks(3, SETTLE).await;
    assert!(callbacks.iter().all(|c| c.status == 200), "{callbacks:?}");

    // The secrets appear in no answer and in no log line.
    for path in [
        "/api/v1/jobs",
        "/api/v1/jobs/bearer",
        "/api/v1/audit",
        &format!("/api/v1/tasks/{}", tasks[2]),
    ] {
        let answer = api.request(Method::GET, path, None, &[]).await;
        let text = answer.body.to_string();
        assert!(
            !text.contains(REGISTRY_SECRET) && !text.contains(TEST_SECRET),
            "{path} leaks a secret: {text}"
        );
    }
    let logs = node.output();
    assert!(!logs.is_empty());
    assert!(
        !logs.contains(REGISTRY_SECRET),
        "the outbound secret was logged"
    );
    assert!(!logs.contains(TEST_SECRET), "the token secret was logged");
    assert!(!logs.contains(token), "a dispatch token was logged");
}
