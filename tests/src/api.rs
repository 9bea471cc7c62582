//! `Api`: a thin client for the REST API of one node, returning status and JSON so tests can
//! assert on both.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use tokio::time::Instant;

/// One answer of the API.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub location: Option<String>,
    /// The JSON body, or `Value::Null` when there is none or it is not JSON.
    pub body: Value,
}

impl ApiResponse {
    /// Panics with the whole answer unless the status is `expected`.
    #[track_caller]
    pub fn expect_status(&self, expected: u16) -> &Value {
        assert_eq!(
            self.status, expected,
            "expected HTTP {expected}, got {}: {:#}",
            self.status, self.body
        );
        &self.body
    }

    /// Panics unless this is an RFC 9457 problem with `status`; returns the problem.
    #[track_caller]
    pub fn expect_problem(&self, status: u16) -> &Value {
        self.expect_status(status);
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/problem+json"),
            "a {status} is problem+json: {:#}",
            self.body
        );
        assert_eq!(
            self.body["status"], status,
            "the problem repeats its status"
        );
        for field in ["type", "title", "detail"] {
            assert!(
                self.body[field].as_str().is_some_and(|s| !s.is_empty()),
                "the problem has a `{field}`: {:#}",
                self.body
            );
        }
        &self.body
    }
}

/// A client for one node's API.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    client: reqwest::Client,
    token: Option<String>,
}

impl Api {
    /// A client for the node at `base` (e.g. `http://127.0.0.1:41234`), calling as an admin.
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            client: crate::http_client(),
            token: Some(crate::token(&["admin"])),
        }
    }

    /// The same client calling with `token` instead (`None`: no credentials at all).
    pub fn with_token(&self, token: Option<String>) -> Self {
        Self {
            token,
            ..self.clone()
        }
    }

    /// Sends one request with an optional JSON body and extra headers.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> ApiResponse {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.request(method.clone(), &url);
        if let Some(token) = &self.token
            && !headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url} failed: {e}"));
        let status = response.status().as_u16();
        let header = |name: reqwest::header::HeaderName| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header(reqwest::header::CONTENT_TYPE);
        let location = header(reqwest::header::LOCATION);
        let bytes = response
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("reading the answer to {method} {url} failed: {e}"));
        ApiResponse {
            status,
            content_type,
            location,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// `PUT /api/v1/jobs/{name}`; panics unless the job was created or replaced.
    pub async fn put_job(&self, name: &str, spec: &Value) -> Value {
        let response = self
            .request(
                Method::PUT,
                &format!("/api/v1/jobs/{name}"),
                Some(spec),
                &[],
            )
            .await;
        assert!(
            matches!(response.status, 200 | 201),
            "PUT job {name} answered {}: {:#}",
            response.status,
            response.body
        );
        response.body
    }

    /// `POST /api/v1/jobs/{job}/tasks` with `body`.
    pub async fn create_task(&self, job: &str, body: &Value) -> ApiResponse {
        self.request(
            Method::POST,
            &format!("/api/v1/jobs/{job}/tasks"),
            Some(body),
            &[],
        )
        .await
    }

    /// Creates a task and returns its id; panics unless the answer is 202.
    pub async fn create_task_id(&self, job: &str, body: &Value) -> String {
        let response = self.create_task(job, body).await;
        response.expect_status(202);
        response.body["id"]
            .as_str()
            .expect("a created task has an id")
            .to_owned()
    }

    /// `GET /api/v1/tasks/{id}`, attempts included; panics unless 200.
    pub async fn get_task(&self, id: &str) -> Value {
        let response = self
            .request(Method::GET, &format!("/api/v1/tasks/{id}"), None, &[])
            .await;
        response.expect_status(200);
        response.body
    }

    /// `POST /api/v1/tasks/{id}/callback` with `body`.
    pub async fn callback(&self, id: &str, body: &Value) -> ApiResponse {
        self.request(
            Method::POST,
            &format!("/api/v1/tasks/{id}/callback"),
            Some(body),
            &[],
        )
        .await
    }

    /// `POST /api/v1/tasks/{id}/cancel`.
    pub async fn cancel(&self, id: &str) -> ApiResponse {
        self.request(
            Method::POST,
            &format!("/api/v1/tasks/{id}/cancel"),
            None,
            &[],
        )
        .await
    }

    /// Waits until the task lists at least `count` attempts and returns it. A callback can end
    /// a task before the node has recorded the answer to the dispatch that led to it.
    pub async fn wait_for_attempts(&self, id: &str, count: usize, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let task = self.get_task(id).await;
            let recorded = task["attempts"].as_array().map_or(0, Vec::len);
            if recorded >= count {
                // The task and its attempts are read by separate statements: the task row may
                // predate the commit that recorded the attempt. Read once more, after it.
                return self.get_task(id).await;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for task {id} to list {count} attempts; \
                 last seen: {task:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the task is in `state` and returns it; panics with the task as last seen
    /// when it is not there within `timeout`, or at once when it ends in another terminal state.
    pub async fn wait_for_state(&self, id: &str, state: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let task = self.get_task(id).await;
            let current = task["state"].as_str().unwrap_or_default();
            if current == state {
                return task;
            }
            assert!(
                matches!(current, "pending" | "processing"),
                "task {id} ended {current} while waiting for {state}: {task:#}"
            );
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for task {id} to be {state}; last seen: {task:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
