//! `ConcurrencyProbe`: a downstream that counts how many distinct tasks it is working on at once.
//! It accepts each dispatch (202), works for a set time, then calls back `completed`. A task is
//! its own from a dispatch until its work is done; a callback that fails (its node is gone)
//! makes it its own again until a later dispatch of it calls back. What it calls back with is
//! `{"status": "completed"}` unless [`ConcurrencyProbe::start_answering`] says otherwise.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

#[derive(Default)]
struct Counts {
    open: HashSet<String>,
    max_open: usize,
    done: HashSet<String>,
    dispatches: usize,
}

/// The callback body for a dispatch body.
type Answer = dyn Fn(&Value) -> Value + Send + Sync;

/// Another node's base URL to send a dispatch's callback to, instead of the dispatching node.
type Route = dyn Fn(&Value) -> Option<String> + Send + Sync;

struct Shared {
    work: Duration,
    counts: Mutex<Counts>,
    client: reqwest::Client,
    answer: Box<Answer>,
    route: Box<Route>,
}

/// A downstream that records the most tasks it held at once; stops when dropped.
pub struct ConcurrencyProbe {
    address: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl ConcurrencyProbe {
    /// Starts a probe that works `work` on each task before calling back.
    pub async fn start(work: Duration) -> Self {
        Self::start_answering(work, |_| json!({ "status": "completed" })).await
    }

    /// Starts a probe that works `work` on each task, then calls back with what `answer` makes
    /// of the dispatch body (a workflow's list step answering with `result.items`, an item that
    /// fails).
    pub async fn start_answering(
        work: Duration,
        answer: impl Fn(&Value) -> Value + Send + Sync + 'static,
    ) -> Self {
        Self::start_routing(work, answer, |_| None).await
    }

    /// As [`ConcurrencyProbe::start_answering`], and sends the callback of a dispatch to the
    /// node whose base URL `route` names for it (same path and token), when it names one: so
    /// callbacks of one run can be made to land on different nodes.
    pub async fn start_routing(
        work: Duration,
        answer: impl Fn(&Value) -> Value + Send + Sync + 'static,
        route: impl Fn(&Value) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        let shared = Arc::new(Shared {
            work,
            counts: Mutex::default(),
            client: crate::http_client(),
            answer: Box::new(answer),
            route: Box::new(route),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the probe binds a free port");
        let address = listener
            .local_addr()
            .expect("a bound listener has an address");
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the probe serves");
        });
        Self {
            address,
            shared,
            server,
        }
    }

    /// The URL of `path` on this probe.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// The most distinct tasks open here at once so far.
    pub fn max_open(&self) -> usize {
        self.counts(|c| c.max_open)
    }

    /// Tasks open here now.
    pub fn open(&self) -> usize {
        self.counts(|c| c.open.len())
    }

    /// Distinct tasks called back and answered 2xx.
    pub fn done(&self) -> usize {
        self.counts(|c| c.done.len())
    }

    /// Dispatches received, repeats included.
    pub fn dispatches(&self) -> usize {
        self.counts(|c| c.dispatches)
    }

    fn counts<T>(&self, read: impl FnOnce(&Counts) -> T) -> T {
        read(
            &self
                .shared
                .counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

impl Drop for ConcurrencyProbe {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (Some(task), Some(url), Some(token)) = (
        body["task_id"].as_str().map(str::to_owned),
        body["callback"]["url"].as_str().map(str::to_owned),
        body["callback"]["token"].as_str().map(str::to_owned),
    ) else {
        return StatusCode::BAD_REQUEST;
    };
    {
        let mut counts = shared.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.dispatches += 1;
        counts.open.insert(task.clone());
        counts.max_open = counts.max_open.max(counts.open.len());
    }
    let answer = (shared.answer)(&body);
    let url = match (shared.route)(&body) {
        // `http://host:port/api/…`: keep the path, change the node.
        Some(base) => match url.match_indices('/').nth(2) {
            Some((at, _)) => format!("{base}{}", &url[at..]),
            None => url,
        },
        None => url,
    };
    tokio::spawn(async move {
        tokio::time::sleep(shared.work).await;
        // The work is done before the callback goes out: from here the task is Pacer's to end,
        // and the next may come as soon as Pacer has recorded this one.
        shared
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open
            .remove(&task);
        let answered = shared
            .client
            .post(&url)
            .bearer_auth(&token)
            .json(&answer)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        let mut counts = shared.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if answered {
            counts.done.insert(task);
        } else {
            // Not told: still this downstream's, until a later dispatch of it calls back.
            counts.open.insert(task);
            counts.max_open = counts.max_open.max(counts.open.len());
        }
    });
    StatusCode::ACCEPTED
}
