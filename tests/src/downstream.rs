//! `FakeDownstream`: an HTTP server in the test process standing in for a downstream service.
//! A script decides each answer (status, body, delay, callbacks to make afterwards); every
//! request and every callback it made is recorded for assertions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::wait::wait_until;

/// One request the downstream received.
#[derive(Debug, Clone)]
pub struct Received {
    /// 0 for the first request this downstream received, and so on.
    pub seq: usize,
    /// 0 for the first request carrying this `Idempotency-Key` (this task), and so on.
    pub task_seq: usize,
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    /// The JSON body, or `Value::Null` when it is not JSON.
    pub body: Value,
    /// The body as sent, byte for byte (signatures are over these bytes).
    pub raw: Vec<u8>,
    /// When it arrived, for measuring gaps between requests.
    pub at: Instant,
    /// When it arrived on the wall clock, for comparing with timestamps Pacer reports.
    pub received_at: DateTime<Utc>,
}

impl Received {
    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The `Idempotency-Key` header (Pacer sends the task id).
    pub fn idempotency_key(&self) -> &str {
        self.header("idempotency-key").unwrap_or_default()
    }

    /// The `task_id` of the dispatch body.
    pub fn task_id(&self) -> &str {
        self.body["task_id"].as_str().unwrap_or_default()
    }

    /// The `attempt` of the dispatch body.
    pub fn attempt(&self) -> i64 {
        self.body["attempt"].as_i64().unwrap_or(-1)
    }
}

/// How the downstream answers one request.
#[derive(Debug, Clone)]
pub struct Reply {
    delay: Duration,
    status: u16,
    headers: Vec<(String, String)>,
    body: Option<Value>,
    callbacks: Vec<(Duration, Value)>,
}

impl Reply {
    /// Answer with `status` and no body.
    pub fn status(status: u16) -> Self {
        Self {
            delay: Duration::ZERO,
            status,
            headers: Vec::new(),
            body: None,
            callbacks: Vec::new(),
        }
    }

    /// Answer 202 Accepted and make no callback.
    pub fn accept() -> Self {
        Self::status(202)
    }

    /// Hold the request open far longer than any test runs (then 503).
    pub fn hang() -> Self {
        Self::status(503).after(Duration::from_secs(600))
    }

    /// Wait `delay` before answering.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Answer with this JSON body.
    pub fn json(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    /// Add a response header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// After answering, wait `after` and then POST `body` to the dispatch's `callback.url`.
    pub fn then_callback(mut self, after: Duration, body: Value) -> Self {
        self.callbacks.push((after, body));
        self
    }
}

/// A callback the downstream made, with Pacer's answer.
#[derive(Debug, Clone)]
pub struct CallbackResult {
    pub url: String,
    pub sent: Value,
    /// The HTTP status, or 0 when the request failed (e.g. the node was gone).
    pub status: u16,
    pub body: Value,
}

type Script = dyn Fn(&Received) -> Reply + Send + Sync;

struct Shared {
    script: Box<Script>,
    requests: Mutex<Vec<Received>>,
    callbacks: Mutex<Vec<CallbackResult>>,
    client: reqwest::Client,
}

/// A scripted downstream listening on `127.0.0.1:<free port>`; stops when dropped.
pub struct FakeDownstream {
    address: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl FakeDownstream {
    /// Starts a downstream whose answer to each request is `script(request)`.
    pub async fn start(script: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> Self {
        let shared = Arc::new(Shared {
            script: Box::new(script),
            requests: Mutex::default(),
            callbacks: Mutex::default(),
            client: crate::http_client(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the fake downstream binds a free port");
        let address = listener
            .local_addr()
            .expect("a bound listener has an address");
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("the fake downstream serves");
        });
        Self {
            address,
            shared,
            server,
        }
    }

    /// Starts a downstream that answers each task's n-th dispatch with `replies[n]`; the last
    /// reply repeats. Tasks are told apart by their `Idempotency-Key`.
    pub async fn sequence(replies: Vec<Reply>) -> Self {
        assert!(!replies.is_empty(), "a sequence needs at least one reply");
        Self::start(move |request| replies[request.task_seq.min(replies.len() - 1)].clone()).await
    }

    /// The URL of `path` on this downstream, e.g. `url("/work")`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The requests that carried `Idempotency-Key: task_id`.
    pub fn requests_for(&self, task_id: &str) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.idempotency_key() == task_id)
            .collect()
    }

    /// Every callback made so far, in the order they finished.
    pub fn callbacks(&self) -> Vec<CallbackResult> {
        self.shared
            .callbacks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until at least `count` callbacks have been answered (or failed) and returns them.
    /// A task may show its new state before the downstream has read Pacer's answer.
    pub async fn wait_for_callbacks(&self, count: usize, timeout: Duration) -> Vec<CallbackResult> {
        let what = format!("{count} callback(s) from the fake downstream to be answered");
        wait_until(&what, timeout, || async {
            let made = self.callbacks();
            (made.len() >= count).then_some(made)
        })
        .await
    }

    /// Waits until at least `count` requests for `task_id` have arrived and returns them all.
    pub async fn wait_for_requests(
        &self,
        task_id: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<Received> {
        let what = format!("{count} dispatch(es) of task {task_id} at the fake downstream");
        wait_until(&what, timeout, || async {
            let received = self.requests_for(task_id);
            (received.len() >= count).then_some(received)
        })
        .await
    }
}

impl Drop for FakeDownstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let received = {
        let mut requests = shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = headers.get("idempotency-key").cloned().unwrap_or_default();
        let received = Received {
            seq: requests.len(),
            task_seq: requests
                .iter()
                .filter(|r| r.idempotency_key() == key)
                .count(),
            method: method.to_string(),
            path: uri.path().to_owned(),
            headers,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            raw: body.to_vec(),
            at: Instant::now(),
            received_at: Utc::now(),
        };
        requests.push(received.clone());
        received
    };
    let reply = (shared.script)(&received);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let callback_url = received.body["callback"]["url"].as_str().map(str::to_owned);
    // The downstream proves itself with the token Pacer minted for this task alone.
    let callback_token = received.body["callback"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // A well-behaved downstream continues the trace it was dispatched under.
    let traceparent = received.header("traceparent").map(str::to_owned);
    for (after, sent) in reply.callbacks {
        let url = callback_url
            .clone()
            .expect("a callback is scripted for a request without callback.url");
        let shared = shared.clone();
        let token = callback_token.clone();
        let traceparent = traceparent.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let mut request = shared.client.post(&url).bearer_auth(&token).json(&sent);
            if let Some(traceparent) = &traceparent {
                request = request.header("traceparent", traceparent);
            }
            let result = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body = response.json().await.unwrap_or(Value::Null);
                    CallbackResult {
                        url,
                        sent,
                        status,
                        body,
                    }
                }
                Err(error) => CallbackResult {
                    url,
                    sent,
                    status: 0,
                    body: Value::String(error.to_string()),
                },
            };
            shared
                .callbacks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(result);
        });
    }
    let status = StatusCode::from_u16(reply.status).expect("a scripted status is valid");
    let mut response = match reply.body {
        Some(body) => (status, axum::Json(body)).into_response(),
        None => status.into_response(),
    };
    for (name, value) in reply.headers {
        response.headers_mut().insert(
            HeaderName::try_from(name).expect("a scripted header name is valid"),
            HeaderValue::try_from(value).expect("a scripted header value is valid"),
        );
    }
    response
}
