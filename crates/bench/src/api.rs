//! A small client for the REST calls the workloads make (jobs, triggers, tasks), calling as an
//! admin, and a way to make many of them with bounded concurrency.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::task::JoinSet;

/// Calls one cluster's API with an admin token.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    client: reqwest::Client,
    token: String,
}

impl Api {
    pub(crate) fn new(token: &str) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            client,
            token: token.to_owned(),
        })
    }

    /// Sends one request; returns the status and the JSON body (`null` when not JSON).
    pub(crate) async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<(StatusCode, Value)> {
        let mut request = self.client.request(method, url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await?;
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// `GET /metrics`: the node's Prometheus text.
    pub(crate) async fn metrics(&self, base: &str) -> Result<String> {
        let response = self.client.get(format!("{base}/metrics")).send().await?;
        let status = response.status();
        if !status.is_success() {
            bail!("GET {base}/metrics answered {status}");
        }
        Ok(response.text().await?)
    }

    /// `PUT /api/v1/jobs/{name}`.
    pub(crate) async fn put_job(&self, base: &str, name: &str, spec: &Value) -> Result<()> {
        let url = format!("{base}/api/v1/jobs/{name}");
        let (status, body) = self.call(Method::PUT, &url, Some(spec), None).await?;
        if !status.is_success() {
            bail!("PUT {url} answered {status}: {body}");
        }
        Ok(())
    }

    /// `POST /api/v1/jobs/{job}/triggers:batch`: the triggers of `specs`, created together.
    pub(crate) async fn create_triggers(
        &self,
        base: &str,
        job: &str,
        specs: &[Value],
    ) -> Result<()> {
        let url = format!("{base}/api/v1/jobs/{job}/triggers:batch");
        let body = serde_json::json!({ "triggers": specs });
        let (status, answer) = self
            .with_retries(|| self.call(Method::POST, &url, Some(&body), None))
            .await?;
        if status != StatusCode::CREATED {
            bail!("POST {url} answered {status}: {answer}");
        }
        Ok(())
    }

    /// `POST /api/v1/jobs/{job}/tasks` with an idempotency key, so a retry never makes a second
    /// task.
    pub(crate) async fn create_task(&self, base: &str, job: &str, key: &str) -> Result<()> {
        self.create_task_id(base, job, key).await.map(drop)
    }

    /// [`Api::create_task`], returning the task's id.
    pub(crate) async fn create_task_id(&self, base: &str, job: &str, key: &str) -> Result<String> {
        let url = format!("{base}/api/v1/jobs/{job}/tasks");
        let empty = Value::Object(serde_json::Map::new());
        let (status, body) = self
            .with_retries(|| self.call(Method::POST, &url, Some(&empty), Some(key)))
            .await?;
        if status != StatusCode::ACCEPTED && status != StatusCode::OK {
            bail!("POST {url} answered {status}: {body}");
        }
        body["id"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("POST {url} answered without the task's id: {body}"))
    }

    /// `DELETE /api/v1/jobs/{name}?cancel_open_tasks=true`, for cleaning up a cluster the harness
    /// did not start.
    pub(crate) async fn delete_job(&self, base: &str, name: &str) -> Result<()> {
        let url = format!("{base}/api/v1/jobs/{name}?cancel_open_tasks=true");
        let (status, body) = self.call(Method::DELETE, &url, None, None).await?;
        if !status.is_success() {
            bail!("DELETE {url} answered {status}: {body}");
        }
        Ok(())
    }

    /// `POST /api/v1/jobs/{name}/pause`: its triggers stop firing (its tasks stay).
    pub(crate) async fn pause_job(&self, base: &str, name: &str) -> Result<()> {
        let url = format!("{base}/api/v1/jobs/{name}/pause");
        let (status, body) = self
            .with_retries(|| self.call(Method::POST, &url, None, None))
            .await?;
        if !status.is_success() {
            bail!("POST {url} answered {status}: {body}");
        }
        Ok(())
    }

    /// Retries a call that failed to connect or was refused for load (429, 503).
    async fn with_retries<F, Fut>(&self, mut send: F) -> Result<(StatusCode, Value)>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(StatusCode, Value)>>,
    {
        let mut backoff = Duration::from_millis(50);
        for _ in 0..8 {
            match send().await {
                Ok((status, _))
                    if status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::SERVICE_UNAVAILABLE => {}
                Ok(answer) => return Ok(answer),
                Err(_) => {}
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        send().await
    }
}

/// Runs `op(0..count)` with at most `concurrency` in flight and returns how long each took, in
/// index order; the first error stops the rest.
pub(crate) async fn for_each_concurrent<F, Fut>(
    count: usize,
    concurrency: usize,
    op: F,
) -> Result<Vec<Duration>>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.clamp(1, count.max(1)) {
        let (op, next) = (op.clone(), next.clone());
        workers.spawn(async move {
            let mut took = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, anyhow::Error>(took);
                }
                let started = tokio::time::Instant::now();
                op(i).await.with_context(|| format!("request {i}"))?;
                took.push((i, started.elapsed()));
            }
        });
    }
    let mut all = vec![Duration::ZERO; count];
    while let Some(joined) = workers.join_next().await {
        for (i, took) in joined.context("a request worker panicked")?? {
            all[i] = took;
        }
    }
    Ok(all)
}
