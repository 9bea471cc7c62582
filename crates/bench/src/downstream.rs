//! The fake downstream: an HTTP server in the harness that records every dispatch (task id,
//! arrival time and, for a child of a run, its run, step and child name) and answers 202. On
//! `/callback` it then reports the task `completed` on the dispatch's `callback.url` with the
//! task's own `callback.token`, immediately or after `--callback-delay`; on `/accept` it does
//! nothing more (for jobs with `expect_callback: false`). Two more callback paths serve
//! workflows: `/callback/bare` reports `completed` without a result (a `for_each` step's results
//! are its later steps' `inputs`, so they stay small), and `/callback/items/<n>` reports the
//! result `{"items": [0, 1, …, n − 1]}` for a `for_each` step to fan out over. At most
//! [`CALLBACKS_IN_FLIGHT`] callbacks are sent at once, over as many kept-alive connections: a
//! second's thousands of occurrences dispatched together would otherwise each open a connection
//! of their own, and run the harness and the nodes out of file descriptors.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{Request, StatusCode, Uri};
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// One dispatch as it arrived.
#[derive(Debug, Clone)]
pub(crate) struct Dispatch {
    pub(crate) task_id: String,
    pub(crate) received_at: DateTime<Utc>,
    /// A child of a run: the run's task id, the step's name and the child's name (an item's key
    /// in a `for_each` step).
    pub(crate) run: Option<String>,
    pub(crate) step: Option<String>,
    pub(crate) child: Option<String>,
    /// The size of the dispatch's body.
    pub(crate) bytes: usize,
    /// The occurrence a trigger's task was fired for (`scheduled_at` of the body).
    pub(crate) scheduled_at: Option<DateTime<Utc>>,
}

/// What became of the callbacks made so far.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CallbackCounts {
    /// Answered 2xx.
    pub(crate) answered: u64,
    /// Answered 409: the task had already finished (a repeated dispatch).
    pub(crate) conflicts: u64,
    /// Gave up after retries, or answered another status.
    pub(crate) failed: u64,
    /// Tries beyond the first (the node was gone or busy).
    pub(crate) retries: u64,
}

impl CallbackCounts {
    /// The callbacks made since `earlier`.
    pub(crate) fn since(self, earlier: Self) -> Self {
        Self {
            answered: self.answered - earlier.answered,
            conflicts: self.conflicts - earlier.conflicts,
            failed: self.failed - earlier.failed,
            retries: self.retries - earlier.retries,
        }
    }

    pub(crate) fn to_json(self) -> Value {
        json!({
            "answered": self.answered,
            "conflicts": self.conflicts,
            "failed": self.failed,
            "retries": self.retries,
        })
    }
}

/// One callback the node answered 2xx at the first try: when it was sent, and how long the answer
/// took (the node answers once the callback's state is committed).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallbackAnswer {
    pub(crate) sent_at: DateTime<Utc>,
    pub(crate) millis: f64,
}

/// A callback the node answered 2xx (at any try): which task, and when the try it answered was
/// sent.
#[derive(Debug, Clone)]
pub(crate) struct Answered {
    pub(crate) task_id: String,
    pub(crate) sent_at: DateTime<Utc>,
}

/// The tasks the downstream is working on (dispatched on `/callback`, not yet called back) and
/// the most at once.
#[derive(Default)]
struct Open {
    tasks: HashSet<String>,
    max: usize,
}

struct Shared {
    dispatches: Mutex<Vec<Dispatch>>,
    open: Mutex<Open>,
    answers: Mutex<Vec<CallbackAnswer>>,
    answered_tasks: Mutex<Vec<Answered>>,
    client: Caller,
    /// A permit per callback in flight.
    in_flight: tokio::sync::Semaphore,
    delay: Duration,
    answered: AtomicU64,
    conflicts: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
}

/// The running downstream; stops when dropped.
pub(crate) struct Downstream {
    base: String,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Downstream {
    /// Listens on `host`, port 0; calls back `delay` after each dispatch on `/callback`.
    pub(crate) async fn start(host: &str, delay: Duration) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind((host, 0))
            .await
            .with_context(|| format!("binding the fake downstream on {host}"))?;
        let address: SocketAddr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            dispatches: Mutex::new(Vec::with_capacity(64 * 1024)),
            open: Mutex::default(),
            answers: Mutex::new(Vec::with_capacity(64 * 1024)),
            answered_tasks: Mutex::new(Vec::with_capacity(64 * 1024)),
            client: Caller::new()?,
            in_flight: tokio::sync::Semaphore::new(CALLBACKS_IN_FLIGHT),
            delay,
            answered: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        });
        let app = Router::new().fallback(receive).with_state(shared.clone());
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                eprintln!("pacer-bench: the fake downstream stopped: {error}");
            }
        });
        Ok(Self {
            base: format!("http://{address}"),
            shared,
            server,
        })
    }

    /// The target URL for jobs that expect a callback.
    pub(crate) fn callback_url(&self) -> String {
        format!("{}/callback", self.base)
    }

    /// The target URL for children of runs called back `completed` without a result.
    pub(crate) fn bare_callback_url(&self) -> String {
        format!("{}/callback/bare", self.base)
    }

    /// The target URL for a step called back `completed` with `result.items` = `[0, …, n − 1]`.
    pub(crate) fn items_callback_url(&self, n: usize) -> String {
        format!("{}/callback/items/{n}", self.base)
    }

    /// The target URL for jobs completed by the dispatch's 2xx alone.
    pub(crate) fn accept_url(&self) -> String {
        format!("{}/accept", self.base)
    }

    /// Every dispatch received so far, in arrival order.
    pub(crate) fn dispatches(&self) -> Vec<Dispatch> {
        self.shared
            .dispatches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The dispatches received after the first `seen`, and how many there are now: for reading
    /// a long run's dispatches a window at a time.
    pub(crate) fn dispatches_after(&self, seen: usize) -> (Vec<Dispatch>, usize) {
        let all = self
            .shared
            .dispatches
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (all.get(seen..).unwrap_or_default().to_vec(), all.len())
    }

    /// The first arrival of each task.
    pub(crate) fn first_dispatches(&self) -> HashMap<String, Dispatch> {
        let mut first = HashMap::new();
        for dispatch in self.dispatches() {
            first.entry(dispatch.task_id.clone()).or_insert(dispatch);
        }
        first
    }

    /// The callbacks sent in `[from, to)` that were answered 2xx at the first try: how long
    /// each answer took, in milliseconds.
    pub(crate) fn callback_answers(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<f64> {
        self.shared
            .answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|a| a.sent_at >= from && a.sent_at < to)
            .map(|a| a.millis)
            .collect()
    }

    /// Every callback answered 2xx so far, with the task it was for.
    pub(crate) fn answered(&self) -> Vec<Answered> {
        self.shared
            .answered_tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The most distinct tasks the downstream was working on at once (from a dispatch on
    /// `/callback` until its callback is sent).
    pub(crate) fn max_open(&self) -> usize {
        self.shared
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .max
    }

    /// Starts counting the most at once afresh, from the tasks open now.
    pub(crate) fn reset_max_open(&self) {
        let mut open = self
            .shared
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.max = open.tasks.len();
    }

    pub(crate) fn callbacks(&self) -> CallbackCounts {
        CallbackCounts {
            answered: self.shared.answered.load(Ordering::Relaxed),
            conflicts: self.shared.conflicts.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
            retries: self.shared.retries.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Downstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// What the downstream reads of a dispatch; the rest of the body is skipped unparsed.
#[derive(Deserialize)]
struct DispatchBody {
    #[serde(default)]
    task_id: String,
    callback: Option<CallbackBody>,
    run: Option<String>,
    step: Option<String>,
    child: Option<String>,
    scheduled_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct CallbackBody {
    url: String,
    token: String,
}

async fn receive(State(shared): State<Arc<Shared>>, uri: Uri, body: Bytes) -> StatusCode {
    let received_at = Utc::now();
    let bytes = body.len();
    let parsed: Option<DispatchBody> = serde_json::from_slice(&body).ok();
    let (task_id, callback, run, step, child, scheduled_at) =
        parsed.map_or_else(Default::default, |b| {
            (
                b.task_id,
                b.callback,
                b.run,
                b.step,
                b.child,
                b.scheduled_at,
            )
        });
    shared
        .dispatches
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Dispatch {
            task_id: task_id.clone(),
            received_at,
            run,
            step,
            child,
            bytes,
            scheduled_at,
        });
    if let Some(reply) = callback_body(uri.path())
        && let Some(CallbackBody { url, token }) = callback
    {
        {
            let mut open = shared.open.lock().unwrap_or_else(PoisonError::into_inner);
            open.tasks.insert(task_id.clone());
            open.max = open.max.max(open.tasks.len());
        }
        tokio::spawn(call_back(shared, task_id, url, token, reply));
    }
    StatusCode::ACCEPTED
}

/// The body of every callback on `/callback`.
const CALLBACK_BODY: &str = r#"{"status":"completed","result":{"by":"pacer-bench"}}"#;
/// The body of a callback on `/callback/bare`.
const BARE_CALLBACK_BODY: &str = r#"{"status":"completed"}"#;

/// The callback a dispatch on `path` gets, if any (see the module's documentation).
fn callback_body(path: &str) -> Option<Bytes> {
    match path {
        "/callback" => Some(Bytes::from_static(CALLBACK_BODY.as_bytes())),
        "/callback/bare" => Some(Bytes::from_static(BARE_CALLBACK_BODY.as_bytes())),
        _ => {
            let n: usize = path.strip_prefix("/callback/items/")?.parse().ok()?;
            let items: Vec<usize> = (0..n).collect();
            let body = json!({ "status": "completed", "result": { "items": items } });
            serde_json::to_vec(&body).ok().map(Bytes::from)
        }
    }
}

/// Reports the task completed with `body`, retrying while the node is unreachable or busy:
/// during a failover the node that dispatched may be gone.
async fn call_back(shared: Arc<Shared>, task_id: String, url: String, token: String, body: Bytes) {
    if !shared.delay.is_zero() {
        tokio::time::sleep(shared.delay).await;
    }
    // The work is done: from here the task is Pacer's to end.
    shared
        .open
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .tasks
        .remove(&task_id);
    let mut backoff = Duration::from_millis(100);
    for attempt in 0..6 {
        if attempt > 0 {
            shared.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        // Waiting for a permit is the harness's queue, not the node's time: the clock starts
        // once the callback goes out.
        let Ok(_permit) = shared.in_flight.acquire().await else {
            break;
        };
        let sent_at = Utc::now();
        let started = tokio::time::Instant::now();
        match shared.client.call_back(&url, &token, body.clone()).await {
            Ok(status) if status.is_success() => {
                shared.answered.fetch_add(1, Ordering::Relaxed);
                shared
                    .answered_tasks
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Answered { task_id, sent_at });
                if attempt == 0 {
                    let millis = started.elapsed().as_secs_f64() * 1000.0;
                    shared
                        .answers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(CallbackAnswer { sent_at, millis });
                }
                return;
            }
            Ok(StatusCode::CONFLICT) => {
                shared.conflicts.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(status) if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {}
            Ok(_) => break,
            Err(_) => {}
        }
    }
    shared.failed.fetch_add(1, Ordering::Relaxed);
}

/// The longest a callback waits for the node's answer.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// The most callbacks sent at once, and connections kept open for them: far more than the
/// nodes need to keep their callback batches full, far fewer than a process's default limit of
/// 1024 open files.
const CALLBACKS_IN_FLIGHT: usize = 256;

/// Sends the callbacks. Nodes on plain HTTP get a bare HTTP/1.1 client, the request built straight
/// from the URL: the harness shares the machine's cores with the nodes, so its own cost per
/// callback is kept to the requests themselves. Nodes behind TLS (`--url https://…`) get reqwest.
struct Caller {
    plain: Client<HttpConnector, Full<Bytes>>,
    tls: reqwest::Client,
}

impl Caller {
    fn new() -> Result<Self> {
        Ok(Self {
            plain: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(CALLBACKS_IN_FLIGHT)
                .build_http(),
            tls: reqwest::Client::builder()
                .timeout(CALLBACK_TIMEOUT)
                .pool_max_idle_per_host(CALLBACKS_IN_FLIGHT)
                .build()?,
        })
    }

    /// Sends `body` to `url`: the answer's status, or `Err` when none came.
    async fn call_back(
        &self,
        url: &str,
        token: &str,
        body: Bytes,
    ) -> std::result::Result<StatusCode, ()> {
        if !url.starts_with("http://") {
            return self
                .tls
                .post(url)
                .bearer_auth(token)
                .header(CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await
                .map(|r| r.status())
                .map_err(drop);
        }
        let request = Request::post(url)
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(drop)?;
        let answered = tokio::time::timeout(CALLBACK_TIMEOUT, async {
            let response = self.plain.request(request).await.map_err(drop)?;
            let status = response.status();
            // Read to the end, so the connection goes back to the pool.
            response.into_body().collect().await.map_err(drop)?;
            Ok(status)
        });
        answered.await.map_err(drop)?
    }
}
