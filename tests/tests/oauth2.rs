//! End-to-end: a job whose outbound auth is `oauth2` gets its bearer token from a token endpoint
//! (here one in the test that counts its calls) with the client credentials grant: fetched once
//! for many dispatches at the same time, kept until shortly before it expires, fetched again once
//! when the downstream answers `401`, and a token endpoint that fails makes a transient error
//! naming it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use pacer_tests::{
    FakeDownstream, NodeSettings, PacerProcess, Reply, TestDb, attempts, wait_until,
};
use reqwest::Method;
use serde_json::{Value, json};

/// Generous: these waits cover a few dispatches and backoffs on a loaded machine.
const SETTLE: Duration = Duration::from_secs(30);

const CLIENT_SECRET: &str = "s3cret:with/odd chars";

/// One call the token endpoint received.
#[derive(Debug, Clone)]
struct TokenCall {
    authorization: String,
    content_type: String,
    form: Vec<(String, String)>,
}

impl TokenCall {
    fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct TokenState {
    calls: Vec<TokenCall>,
    /// Answer with this status and body instead of a token.
    down: Option<(u16, String)>,
}

/// A token endpoint: answers each call with a new token (`token-1`, `token-2`, …) whose
/// `expires_in` is the `ttl` form field of its scope (`scope` `short` lives 2 s, any other an
/// hour), after a pause long enough that dispatches at the same time all ask while it works.
#[derive(Clone)]
struct TokenServer {
    address: SocketAddr,
    state: Arc<Mutex<TokenState>>,
}

impl TokenServer {
    async fn start() -> Self {
        let state = Arc::new(Mutex::new(TokenState::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the token server binds a free port");
        let address = listener.local_addr().expect("an address");
        let app = Router::new()
            .route("/token", axum::routing::post(issue))
            .with_state(state.clone());
        tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("the token server serves");
        });
        Self { address, state }
    }

    fn url(&self) -> String {
        format!("http://{}/token", self.address)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TokenState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn calls(&self) -> Vec<TokenCall> {
        self.lock().calls.clone()
    }

    fn calls_for(&self, scope: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.field("scope") == Some(scope))
            .count()
    }

    fn set_down(&self, down: Option<(u16, &str)>) {
        self.lock().down = down.map(|(s, b)| (s, b.to_owned()));
    }
}

async fn issue(
    State(state): State<Arc<Mutex<TokenState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let form: Vec<(String, String)> = url_decode(&body);
    let call = TokenCall {
        authorization: header("authorization"),
        content_type: header("content-type"),
        form,
    };
    let scope = call.field("scope").unwrap_or_default().to_owned();
    let (number, down) = {
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        state.calls.push(call);
        (state.calls.len(), state.down.clone())
    };
    // Slow enough that dispatches at the same time all need the token while it is fetched.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some((status, body)) = down {
        return (StatusCode::from_u16(status).expect("a status"), body).into_response();
    }
    let expires_in = if scope == "short" { 2 } else { 3600 };
    axum::Json(json!({
        "access_token": format!("token-{number}"),
        "token_type": "Bearer",
        "expires_in": expires_in,
    }))
    .into_response()
}

/// `application/x-www-form-urlencoded` pairs.
fn url_decode(body: &[u8]) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("utf-8");
                out.push(u8::from_str_radix(hex, 16).expect("hex"));
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).expect("utf-8")
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}

fn bearer(request: &pacer_tests::Received) -> String {
    request
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned()
}

fn job(downstream: &FakeDownstream, tokens: &TokenServer, scope: &str) -> Value {
    json!({
        "target": {
            "url": downstream.url(&format!("/{scope}")),
            "auth": {
                "kind": "oauth2",
                "token_url": tokens.url(),
                "client_id": "pacer client",
                "client_secret": "sync_client",
                "scope": scope,
                "audience": "https://items.example.com",
            },
        },
        "expect_callback": false,
        "retry": { "max_attempts": 10, "initial_backoff": "1s", "max_backoff": "1s", "jitter": 0.0 },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth2_token_is_fetched_once_kept_until_it_expires_and_refreshed_on_401() {
    let db = TestDb::create().await;
    let tokens = TokenServer::start().await;
    // Tokens the downstream no longer accepts.
    let revoked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let refused = revoked.clone();
    let downstream = FakeDownstream::start(move |request| {
        let token = bearer(request);
        let refused = refused.lock().unwrap_or_else(PoisonError::into_inner);
        if token.is_empty() || refused.contains(&token) || request.path == "/denied" {
            Reply::status(401)
        } else {
            Reply::status(200)
        }
    })
    .await;
    let settings = NodeSettings::new("node-a")
        .env("PACER_SECRETS__SYNC_CLIENT", CLIENT_SECRET)
        .env("PACER_AUTH__RATE_LIMIT_PER_SECOND", "10000")
        .env("PACER_AUTH__RATE_LIMIT_BURST", "10000");
    let node = PacerProcess::start_with(db.url(), settings).await;
    let api = node.api();

    // Refused with the field named: an unknown secret, a bad URL, an AMQP target.
    let mut unknown = job(&downstream, &tokens, "many");
    unknown["target"]["auth"]["client_secret"] = json!("nope");
    let problem = api
        .request(Method::PUT, "/api/v1/jobs/bad", Some(&unknown), &[])
        .await;
    assert_eq!(
        problem.expect_problem(422)["errors"][0]["field"],
        "target.auth.client_secret"
    );
    let mut bad_url = job(&downstream, &tokens, "many");
    bad_url["target"]["auth"]["token_url"] = json!("ftp://auth/token");
    let problem = api
        .request(Method::PUT, "/api/v1/jobs/bad", Some(&bad_url), &[])
        .await;
    assert_eq!(
        problem.expect_problem(422)["errors"][0]["field"],
        "target.auth.token_url"
    );
    let amqp = json!({ "target": { "kind": "amqp", "exchange": "x", "routing_key": "y",
        "auth": { "kind": "oauth2", "token_url": tokens.url(), "client_id": "c", "client_secret": "sync_client" } } });
    api.request(Method::PUT, "/api/v1/jobs/bad", Some(&amqp), &[])
        .await
        .expect_problem(422);

    // Many dispatches at the same time: one token fetch, every dispatch carries its token.
    let spec = job(&downstream, &tokens, "many");
    let stored = api.put_job("many", &spec).await;
    assert_eq!(stored["target"]["auth"], spec["target"]["auth"]);
    let created = futures_join((0..20).map(|_| {
        let api = api.clone();
        async move { api.create_task_id("many", &json!({})).await }
    }))
    .await;
    for task in &created {
        api.wait_for_state(task, "completed", SETTLE).await;
    }
    assert_eq!(tokens.calls_for("many"), 1, "{:#?}", tokens.calls());
    let call = &tokens.calls()[0];
    let expected_basic = STANDARD.encode(format!("pacer+client:{}", "s3cret%3Awith%2Fodd+chars"));
    assert_eq!(call.authorization, format!("Basic {expected_basic}"));
    assert_eq!(call.content_type, "application/x-www-form-urlencoded");
    assert_eq!(call.field("grant_type"), Some("client_credentials"));
    assert_eq!(call.field("audience"), Some("https://items.example.com"));
    assert_eq!(
        call.field("client_secret"),
        None,
        "the secret goes in Basic auth only"
    );
    let first = "token-1".to_owned();
    for task in &created {
        let sent = downstream.requests_for(task);
        assert_eq!(sent.len(), 1);
        assert_eq!(bearer(&sent[0]), first);
    }

    // The downstream stops accepting the token: the token is fetched again once, and each
    // dispatch is sent again with the new one within the same attempt.
    revoked
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(first.clone());
    let refreshed = futures_join((0..5).map(|_| {
        let api = api.clone();
        async move { api.create_task_id("many", &json!({})).await }
    }))
    .await;
    for task in &refreshed {
        let done = api.wait_for_state(task, "completed", SETTLE).await;
        assert_eq!(attempts(&done).len(), 1, "{done:#}");
        let sent = downstream.requests_for(task);
        let used: Vec<String> = sent.iter().map(bearer).collect();
        assert_eq!(used.last(), Some(&"token-2".to_owned()), "{used:?}");
        assert!(used.len() <= 2, "{used:?}");
    }
    assert_eq!(tokens.calls_for("many"), 2, "{:#?}", tokens.calls());

    // Another job naming the same endpoint, client, scope and audience shares the token, and
    // a cancel notice carries it too.
    let mut waits = job(&downstream, &tokens, "many");
    waits["expect_callback"] = json!(true);
    waits["target"]["url"] = json!(downstream.url("/waits"));
    api.put_job("waits", &waits).await;
    let held = api.create_task_id("waits", &json!({})).await;
    api.wait_for_state(&held, "processing", SETTLE).await;
    api.cancel(&held).await.expect_status(200);
    let sent = wait_until("the cancel notice", SETTLE, || async {
        let sent = downstream.requests_for(&held);
        sent.iter().any(|r| r.method == "DELETE").then_some(sent)
    })
    .await;
    assert!(sent.iter().all(|r| bearer(r) == "token-2"), "{sent:#?}");
    assert_eq!(tokens.calls_for("many"), 2, "{:#?}", tokens.calls());

    // A downstream that refuses every token: one new token, one more try, and then its `401`
    // counts as any other, rejecting the task.
    api.put_job("denied", &job(&downstream, &tokens, "denied"))
        .await;
    let denied = api.create_task_id("denied", &json!({})).await;
    let task = api.wait_for_state(&denied, "failed", SETTLE).await;
    assert_eq!(task["failure_reason"], "rejected", "{task:#}");
    let used: Vec<String> = downstream
        .requests_for(&denied)
        .iter()
        .map(bearer)
        .collect();
    assert_eq!(used.len(), 2, "{used:?}");
    assert_ne!(used[0], used[1]);
    assert_eq!(tokens.calls_for("denied"), 2);

    // A token that lives 2 s is kept for its first 1.8 s, and a dispatch after that fetches a
    // new one (another scope: another token).
    api.put_job("short", &job(&downstream, &tokens, "short"))
        .await;
    let early = api.create_task_id("short", &json!({})).await;
    api.wait_for_state(&early, "completed", SETTLE).await;
    assert_eq!(tokens.calls_for("short"), 1);
    let not_before = (chrono::Utc::now() + chrono::Duration::seconds(3)).to_rfc3339();
    let late = api
        .create_task_id("short", &json!({ "not_before": not_before }))
        .await;
    api.wait_for_state(&late, "completed", SETTLE).await;
    assert_eq!(tokens.calls_for("short"), 2, "{:#?}", tokens.calls());
    assert_ne!(
        bearer(&downstream.requests_for(&early)[0]),
        bearer(&downstream.requests_for(&late)[0])
    );

    // A failing token endpoint: a transient error naming it; the task is retried and goes out
    // once the endpoint answers again.
    tokens.set_down(Some((503, "maintenance")));
    api.put_job("down", &job(&downstream, &tokens, "down"))
        .await;
    let waiting = api.create_task_id("down", &json!({})).await;
    let task = api.wait_for_attempts(&waiting, 1, SETTLE).await;
    let error = task["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.starts_with(&format!(
            "oauth2 token from {}: 503 Service Unavailable: maintenance",
            tokens.url()
        )),
        "{task:#}"
    );
    assert_eq!(task["state"], "pending", "{task:#}");
    assert!(downstream.requests_for(&waiting).is_empty());
    tokens.set_down(None);
    let done = api.wait_for_state(&waiting, "completed", SETTLE).await;
    assert!(attempts(&done).len() >= 2, "{done:#}");
    assert_eq!(downstream.requests_for(&waiting).len(), 1);

    // A token endpoint answering something that is not a token, or not answering at all.
    tokens.set_down(Some((200, "<html>login</html>")));
    api.put_job("garbled", &job(&downstream, &tokens, "garbled"))
        .await;
    let garbled = api.create_task_id("garbled", &json!({})).await;
    let task = api.wait_for_attempts(&garbled, 1, SETTLE).await;
    let prefix = format!(
        "oauth2 token from {}: the answer is not a token response",
        tokens.url()
    );
    assert!(
        task["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with(&prefix)),
        "{task:#}"
    );
    tokens.set_down(None);
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        format!(
            "http://{}/token",
            listener.local_addr().expect("an address")
        )
    };
    let mut nowhere = job(&downstream, &tokens, "nowhere");
    nowhere["target"]["auth"]["token_url"] = json!(closed);
    api.put_job("nowhere", &nowhere).await;
    let unreachable = api.create_task_id("nowhere", &json!({})).await;
    let task = api.wait_for_attempts(&unreachable, 1, SETTLE).await;
    let prefix = format!("oauth2 token from {closed}: connection failed");
    assert!(
        task["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with(&prefix)),
        "{task:#}"
    );
    assert!(downstream.requests_for(&unreachable).is_empty());

    // The client secret and the tokens appear in no log line.
    let logs = node.output();
    assert!(
        !logs.contains(CLIENT_SECRET),
        "the client secret was logged"
    );
    assert!(!logs.contains("token-1"), "an access token was logged");
}

/// Runs the futures at the same time and returns their outputs in order.
async fn futures_join<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.expect("the task runs"));
    }
    out
}

#[test]
fn form_decoding_reads_what_pacer_writes() {
    let pairs = url_decode(b"grant_type=client_credentials&scope=a+b%2Fc");
    assert_eq!(
        pairs,
        [
            ("grant_type".to_owned(), "client_credentials".to_owned()),
            ("scope".to_owned(), "a b/c".to_owned())
        ]
    );
}
