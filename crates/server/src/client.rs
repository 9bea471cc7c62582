//! A small client for Pacer's REST API, used by the CLI verbs: a bearer token, JSON in and out,
//! and errors that carry the HTTP status and the problem+json the server answered with.

use std::fmt;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Exit codes of the CLI verbs, for scripts (documented in the README).
pub(crate) mod exit {
    /// The server, the network or the answer failed (5xx, 429, unreachable, unexpected reply).
    pub(crate) const FAILURE: u8 = 1;
    /// The command line was wrong (clap also exits 2), or a file could not be read.
    pub(crate) const USAGE: u8 = 2;
    /// What the command names does not exist (404).
    pub(crate) const NOT_FOUND: u8 = 3;
    /// The request or the file is invalid (400, 413, 415, 422, or a jobs file that fails
    /// validation).
    pub(crate) const INVALID: u8 = 4;
    /// The request conflicts with the current state (409), e.g. cancelling a finished task.
    pub(crate) const CONFLICT: u8 = 5;
    /// No token, a token that is not valid, or one without the role the route needs (401, 403).
    pub(crate) const UNAUTHORIZED: u8 = 6;
}

/// Why a CLI verb failed.
#[derive(Debug)]
pub(crate) enum Error {
    /// The server answered with an error status.
    Status {
        method: Method,
        path: String,
        status: StatusCode,
        /// The problem+json body, or the body as text when it was not JSON.
        problem: Value,
    },
    /// The server could not be reached, or the connection broke.
    Unreachable {
        method: Method,
        url: String,
        source: reqwest::Error,
    },
    /// The server answered something this client does not understand.
    Unexpected(String),
    /// Invalid input found before anything was sent (exit code 4).
    Invalid(String),
    /// The command cannot run as given (exit code 2).
    Usage(String),
}

impl Error {
    /// The process exit code this error maps to.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Error::Status { status, .. } => match status.as_u16() {
                404 => exit::NOT_FOUND,
                400 | 413 | 415 | 422 => exit::INVALID,
                409 => exit::CONFLICT,
                401 | 403 => exit::UNAUTHORIZED,
                _ => exit::FAILURE,
            },
            Error::Unreachable { .. } | Error::Unexpected(_) => exit::FAILURE,
            Error::Invalid(_) => exit::INVALID,
            Error::Usage(_) => exit::USAGE,
        }
    }

    /// The HTTP status, when the server answered with an error.
    pub(crate) fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Status {
                method,
                path,
                status,
                problem,
            } => {
                write!(f, "{method} {path}: {status}")?;
                let text = |key: &str| problem.get(key).and_then(Value::as_str);
                if let Some(title) = text("title") {
                    write!(f, " ({title})")?;
                }
                if let Some(kind) = text("type") {
                    write!(f, " [{kind}]")?;
                }
                let fields = problem
                    .get("errors")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                if fields.is_empty() {
                    match (text("detail"), problem.as_str()) {
                        (Some(detail), _) => write!(f, "\n  {detail}")?,
                        (None, Some(body)) if !body.trim().is_empty() => {
                            write!(f, "\n  {}", body.trim())?;
                        }
                        _ => {}
                    }
                }
                for error in fields {
                    let field = error.get("field").and_then(Value::as_str).unwrap_or("?");
                    let message = error.get("message").and_then(Value::as_str).unwrap_or("");
                    write!(f, "\n  {field}: {message}")?;
                }
                if let Some(state) = text("state") {
                    write!(f, "\n  current state: {state}")?;
                }
                Ok(())
            }
            Error::Unreachable {
                method,
                url,
                source,
            } => {
                // reqwest's own message repeats the URL; its causes say what went wrong.
                write!(f, "{method} {url}: cannot reach the server")?;
                let mut cause = std::error::Error::source(source);
                if cause.is_none() {
                    write!(f, ": {source}")?;
                }
                while let Some(inner) = cause {
                    write!(f, ": {inner}")?;
                    cause = inner.source();
                }
                Ok(())
            }
            Error::Unexpected(message) | Error::Invalid(message) | Error::Usage(message) => {
                f.write_str(message)
            }
        }
    }
}

impl std::error::Error for Error {}

/// The result of a CLI verb.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// Percent-encodes one path segment (job names and ids are already safe; this keeps a typo
/// from turning into another route).
pub(crate) fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A connection to one Pacer node.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client for the node at `base` (e.g. `http://127.0.0.1:8080`), sending `token` as the
    /// bearer token when given.
    pub(crate) fn new(base: &str, token: Option<String>) -> Result<Self> {
        let parsed = reqwest::Url::parse(base)
            .map_err(|e| Error::Usage(format!("--url `{base}` is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::Usage(format!(
                "--url `{base}` must start with http:// or https://"
            )));
        }
        pacer_engine::install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(concat!("pacer-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Unexpected(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.filter(|t| !t.trim().is_empty()),
        })
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
    ) -> reqwest::RequestBuilder {
        let mut url = format!("{}{path}", self.base);
        if !query.is_empty() {
            let pairs: String = reqwest::Url::parse("http://query.invalid/")
                .map(|mut u| {
                    u.query_pairs_mut().extend_pairs(query);
                    u.query().unwrap_or_default().to_owned()
                })
                .unwrap_or_default();
            url.push('?');
            url.push_str(&pairs);
        }
        let mut request = self.http.request(method, url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request
    }

    /// `GET path?query`: the JSON answer.
    pub(crate) async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value> {
        self.send(Method::GET, path, query, None).await
    }

    /// `POST path` with an optional JSON body: the JSON answer.
    pub(crate) async fn post(&self, path: &str, body: Option<&Value>) -> Result<Value> {
        self.send(Method::POST, path, &[], body).await
    }

    /// Sends a request and reads the JSON answer (null for an empty one, such as a 204).
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value> {
        let mut request = self
            .request(method.clone(), path, query)
            .timeout(Duration::from_secs(60));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self.execute(&method, path, request).await?;
        let text = response.text().await.map_err(|source| Error::Unreachable {
            method: method.clone(),
            url: format!("{}{path}", self.base),
            source,
        })?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| {
            Error::Unexpected(format!(
                "{method} {path}: the answer is not JSON ({e}): {}",
                truncate(&text)
            ))
        })
    }

    /// Opens a streaming `GET` (server-sent events), resuming after `last_event_id`.
    pub(crate) async fn stream(
        &self,
        path: &str,
        query: &[(&str, String)],
        last_event_id: Option<&str>,
    ) -> Result<reqwest::Response> {
        let mut request = self
            .request(Method::GET, path, query)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        self.execute(&Method::GET, path, request).await
    }

    /// Sends the request; an error status becomes [`Error::Status`] with the problem body.
    async fn execute(
        &self,
        method: &Method,
        path: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let response = request.send().await.map_err(|source| Error::Unreachable {
            method: method.clone(),
            url: format!("{}{path}", self.base),
            source,
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let problem =
            serde_json::from_str(&text).unwrap_or_else(|_| Value::String(truncate(&text)));
        Err(Error::Status {
            method: method.clone(),
            path: path.to_owned(),
            status,
            problem,
        })
    }

    /// Every item of a list route, following `next_cursor` to the last page, `limit` a page.
    pub(crate) async fn all_items(&self, path: &str, limit: Option<u32>) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut query: Vec<(&str, String)> = limit
                .map(|l| ("limit", l.to_string()))
                .into_iter()
                .collect();
            if let Some(cursor) = cursor.take() {
                query.push(("cursor", cursor));
            }
            let page = self.get(path, &query).await?;
            match page.get("items") {
                Some(Value::Array(page_items)) => items.extend(page_items.iter().cloned()),
                _ => {
                    return Err(Error::Unexpected(format!(
                        "GET {path}: expected a page with `items`, got {}",
                        truncate(&page.to_string())
                    )));
                }
            }
            match page.get("next_cursor").and_then(Value::as_str) {
                Some(next) => cursor = Some(next.to_owned()),
                None => return Ok(items),
            }
        }
    }
}

fn truncate(text: &str) -> String {
    const MAX: usize = 500;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_problem_is_shown_with_its_status_type_and_fields() {
        let error = Error::Status {
            method: Method::PUT,
            path: "/api/v1/jobs/x".into(),
            status: StatusCode::UNPROCESSABLE_ENTITY,
            problem: json!({
                "type": "/problems/validation", "title": "Invalid request", "status": 422,
                "detail": "retry.max_attempts: must be between 1 and 1000",
                "errors": [{"field": "retry.max_attempts", "message": "must be between 1 and 1000"}]
            }),
        };
        assert_eq!(
            error.to_string(),
            "PUT /api/v1/jobs/x: 422 Unprocessable Entity (Invalid request) [/problems/validation]\n  \
             retry.max_attempts: must be between 1 and 1000"
        );
        assert_eq!(error.exit_code(), exit::INVALID);
        let not_found = Error::Status {
            method: Method::GET,
            path: "/api/v1/jobs/nope".into(),
            status: StatusCode::NOT_FOUND,
            problem: json!({"type": "/problems/not-found", "title": "Not found", "detail": "job nope not found"}),
        };
        assert!(not_found.to_string().ends_with("\n  job nope not found"));
        assert_eq!(not_found.exit_code(), exit::NOT_FOUND);
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(segment("nightly-sync_1.a"), "nightly-sync_1.a");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }
}
