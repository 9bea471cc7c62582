//! Access tokens from OAuth2 token endpoints (the client credentials grant, RFC 6749 §4.4), for
//! jobs whose outbound auth is `oauth2`.
//!
//! A node keeps one token per (token URL, client id, scope, audience) until shortly before it
//! expires. Each key has its own lock, held while its token is fetched: dispatches that need the
//! token at the same time wait for the one fetch under way instead of making their own, and
//! when that fetch fails they share its error rather than trying again one after the other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::time::Instant;

/// How long a token endpoint has to answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a token is kept when its endpoint does not say (`expires_in` is optional).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// A token is refreshed this long before it expires at most; a short-lived one a tenth of its
/// lifetime early.
const MAX_EARLY: Duration = Duration::from_secs(30);

/// At most this many bytes of a refusing token endpoint's answer are quoted in an error.
const QUOTED_ANSWER: usize = 200;

/// What identifies a token: the endpoint, the client and what was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TokenKey {
    pub(crate) token_url: String,
    pub(crate) client_id: String,
    pub(crate) scope: Option<String>,
    pub(crate) audience: Option<String>,
}

/// An access token and until when to use it.
struct Cached {
    token: Arc<SecretString>,
    refresh_at: Instant,
}

/// What a key's lock guards: the token, or the last fetch's failure.
#[derive(Default)]
struct Slot {
    cached: Option<Cached>,
    /// When the last failed fetch ended, and why it failed.
    failed: Option<(Instant, String)>,
}

/// The tokens this node holds; cheap to clone, shared by every clone.
#[derive(Clone, Default)]
pub(crate) struct Tokens {
    slots: Arc<Mutex<HashMap<TokenKey, Arc<tokio::sync::Mutex<Slot>>>>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").finish_non_exhaustive()
    }
}

/// The successful answer of a token endpoint (RFC 6749 §5.1).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl Tokens {
    fn slot(&self, key: &TokenKey) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.entry(key.clone()).or_default().clone()
    }

    /// The token for `key`, fetched with `client_secret` when none is held or it is about to
    /// expire. Fails with a one-line reason naming the token URL.
    pub(crate) async fn token(
        &self,
        client: &reqwest::Client,
        key: &TokenKey,
        client_secret: &SecretString,
    ) -> Result<Arc<SecretString>, String> {
        let asked = Instant::now();
        let slot = self.slot(key);
        let mut slot = slot.lock().await;
        if let Some(cached) = &slot.cached
            && cached.refresh_at > Instant::now()
        {
            return Ok(cached.token.clone());
        }
        // A fetch that failed while this caller waited for the lock answers it too.
        if let Some((at, error)) = &slot.failed
            && *at >= asked
        {
            return Err(error.clone());
        }
        match fetch(client, key, client_secret).await {
            Ok(cached) => {
                let token = cached.token.clone();
                slot.cached = Some(cached);
                slot.failed = None;
                Ok(token)
            }
            Err(error) => {
                slot.cached = None;
                slot.failed = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    /// Forgets `used` (a downstream refused it), unless another caller has already replaced it,
    /// so that many refusals of one token make one new fetch.
    pub(crate) async fn refused(&self, key: &TokenKey, used: &Arc<SecretString>) {
        let slot = self.slot(key);
        let mut slot = slot.lock().await;
        if slot
            .cached
            .as_ref()
            .is_some_and(|cached| Arc::ptr_eq(&cached.token, used))
        {
            slot.cached = None;
        }
    }
}

/// When to stop using a token that lives `lifetime`: a tenth of it early, at most 30 s early.
fn refresh_after(lifetime: Duration) -> Duration {
    lifetime - (lifetime / 10).min(MAX_EARLY)
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// One client credentials grant. The client authenticates with HTTP Basic, its id and secret
/// form-encoded first (RFC 6749 §2.3.1).
async fn fetch(
    client: &reqwest::Client,
    key: &TokenKey,
    client_secret: &SecretString,
) -> Result<Cached, String> {
    let fail = |reason: String| format!("oauth2 token from {}: {reason}", key.token_url);
    let form = {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if let Some(scope) = &key.scope {
            form.append_pair("scope", scope);
        }
        if let Some(audience) = &key.audience {
            form.append_pair("audience", audience);
        }
        form.finish()
    };
    let started = Instant::now();
    let response = client
        .post(&key.token_url)
        .basic_auth(
            form_encode(&key.client_id),
            Some(form_encode(client_secret.expose_secret())),
        )
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(ACCEPT, "application/json")
        .timeout(FETCH_TIMEOUT)
        .body(form)
        .send()
        .await;
    let response = match response {
        Ok(response) => response,
        Err(error) if error.is_timeout() => {
            return Err(fail(format!(
                "no answer within {}s",
                FETCH_TIMEOUT.as_secs()
            )));
        }
        Err(error) if error.is_connect() => {
            return Err(fail(crate::with_causes(
                "connection failed".to_owned(),
                &error,
            )));
        }
        Err(error) => return Err(fail(crate::with_causes(error.to_string(), &error))),
    };
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|error| fail(crate::with_causes(error.to_string(), &error)))?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let text: String = text.trim().chars().take(QUOTED_ANSWER).collect();
        return Err(fail(if text.is_empty() {
            status.to_string()
        } else {
            format!("{status}: {text}")
        }));
    }
    let answer: TokenResponse = serde_json::from_slice(&body)
        .map_err(|error| fail(format!("the answer is not a token response: {error}")))?;
    if answer.access_token.is_empty() {
        return Err(fail("the answer's access_token is empty".to_owned()));
    }
    if let Some(kind) = &answer.token_type
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(fail(format!("the token_type is `{kind}`, not `Bearer`")));
    }
    let lifetime = answer
        .expires_in
        .map_or(DEFAULT_LIFETIME, Duration::from_secs);
    Ok(Cached {
        token: Arc::new(SecretString::from(answer.access_token)),
        refresh_at: started + refresh_after(lifetime),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};

    use super::*;

    /// A token endpoint counting its calls: `token-<n>` for the n-th, or 503 while `down`.
    #[derive(Clone, Default)]
    struct Endpoint {
        calls: Arc<AtomicUsize>,
        down: Arc<std::sync::atomic::AtomicBool>,
    }

    async fn issue(State(endpoint): State<Endpoint>) -> Response {
        let n = endpoint.calls.fetch_add(1, Ordering::SeqCst) + 1;
        // Long enough that every caller of a test asks while this fetch is under way.
        tokio::time::sleep(Duration::from_millis(200)).await;
        if endpoint.down.load(Ordering::SeqCst) {
            return (StatusCode::SERVICE_UNAVAILABLE, "maintenance").into_response();
        }
        axum::Json(serde_json::json!({
            "access_token": format!("token-{n}"), "token_type": "bearer", "expires_in": 3600
        }))
        .into_response()
    }

    async fn endpoint() -> (Endpoint, TokenKey) {
        let endpoint = Endpoint::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let app = Router::new()
            .route("/token", axum::routing::post(issue))
            .with_state(endpoint.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let key = TokenKey {
            token_url: format!("http://{address}/token"),
            client_id: "pacer".into(),
            scope: None,
            audience: None,
        };
        (endpoint, key)
    }

    async fn ask_at_once(
        tokens: &Tokens,
        key: &TokenKey,
        n: usize,
    ) -> Vec<Result<Arc<SecretString>, String>> {
        let client = crate::http_client().expect("a client");
        let secret = SecretString::from("s");
        join_all(
            (0..n)
                .map(|_| tokens.token(&client, key, &secret))
                .collect(),
        )
        .await
    }

    /// Polls every future to completion concurrently on this task.
    async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
        let mut set = Vec::new();
        for future in futures {
            set.push(Box::pin(future));
        }
        let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (future, output) in set.iter_mut().zip(outputs.iter_mut()) {
                if output.is_none() {
                    match future.as_mut().poll(cx) {
                        std::task::Poll::Ready(value) => *output = Some(value),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        outputs.into_iter().flatten().collect()
    }

    #[tokio::test]
    async fn many_callers_share_one_fetch_and_one_refusal_makes_one_more() {
        let (endpoint, key) = endpoint().await;
        let tokens = Tokens::default();
        let first = ask_at_once(&tokens, &key, 10).await;
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 1);
        let first: Vec<Arc<SecretString>> =
            first.into_iter().map(|r| r.expect("a token")).collect();
        assert!(first.iter().all(|t| t.expose_secret() == "token-1"));

        // Every holder of the refused token reports it; one new fetch serves them all.
        for token in &first {
            tokens.refused(&key, token).await;
        }
        let second = ask_at_once(&tokens, &key, 10).await;
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 2);
        let second = second.into_iter().next().expect("one").expect("a token");
        assert_eq!(second.expose_secret(), "token-2");
        // A late report of the old token leaves the new one alone.
        tokens.refused(&key, &first[0]).await;
        let again = ask_at_once(&tokens, &key, 1).await;
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            again[0].as_ref().expect("a token").expose_secret(),
            "token-2"
        );
    }

    #[tokio::test]
    async fn callers_waiting_on_a_failed_fetch_share_its_error_and_a_later_one_tries_again() {
        let (endpoint, key) = endpoint().await;
        endpoint.down.store(true, Ordering::SeqCst);
        let tokens = Tokens::default();
        let failed = ask_at_once(&tokens, &key, 5).await;
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 1);
        for result in &failed {
            let error = result.as_ref().expect_err("the endpoint is down");
            assert_eq!(
                *error,
                format!(
                    "oauth2 token from {}: 503 Service Unavailable: maintenance",
                    key.token_url
                )
            );
        }
        endpoint.down.store(false, Ordering::SeqCst);
        let later = ask_at_once(&tokens, &key, 1).await;
        assert_eq!(endpoint.calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            later[0].as_ref().expect("a token").expose_secret(),
            "token-2"
        );
    }

    #[test]
    fn a_token_is_refreshed_a_tenth_of_its_life_early_and_at_most_thirty_seconds_early() {
        assert_eq!(
            refresh_after(Duration::from_secs(10)),
            Duration::from_secs(9)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(100)),
            Duration::from_secs(90)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(3570)
        );
        assert_eq!(refresh_after(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn client_credentials_are_form_encoded_before_basic_auth() {
        assert_eq!(form_encode("a b:c/ü"), "a+b%3Ac%2F%C3%BC");
        assert_eq!(form_encode("plain-id_1.x"), "plain-id_1.x");
    }
}
