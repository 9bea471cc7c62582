//! Authentication and authorization on every route but health and key publication. A route group
//! declares its role; this layer checks the bearer token, refuses what the role does not allow,
//! limits the write rate per caller, and leaves the caller in the request for the audit log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use pacer_auth::signing::{CALLBACK_AUDIENCE, Keyset};
use pacer_auth::{AuthError, Principal, Role, Verifier};
use pacer_domain::TaskId;

use crate::{AppState, Error};

/// What checks tokens and signs Pacer's own.
#[derive(Debug, Clone)]
pub struct Auth {
    pub verifier: Verifier,
    pub keyset: Keyset,
    /// Clock skew allowed on callback tokens.
    pub leeway: Duration,
    pub limiter: RateLimiter,
}

/// A token bucket per caller for write requests.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Arc<Mutex<HashMap<String, (f64, Instant)>>>,
}

impl RateLimiter {
    /// `per_second` sustained writes per caller, bursts of up to `burst`.
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self {
            per_second,
            burst: f64::from(burst),
            buckets: Arc::default(),
        }
    }

    /// Takes one token for `caller`, or says how long until one is available.
    fn take(&self, caller: &str) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let (tokens, last) = buckets
            .entry(caller.to_owned())
            .or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_second))
        }
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?;
    let text = value
        .to_str()
        .map_err(|_| AuthError::Invalid("malformed Authorization header".into()))?;
    match text.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(AuthError::Invalid(
            "the Authorization header must be `Bearer <token>`".into(),
        )),
    }
}

fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn limit(state: &AppState, method: &Method, caller: &str) -> Result<(), Error> {
    if is_write(method) {
        state
            .auth
            .limiter
            .take(caller)
            .map_err(|wait| Error::RateLimited { retry_after: wait })?;
    }
    Ok(())
}

/// The caller a token stands for, if it verifies and grants `role` (or `admin`).
async fn verified(state: &AppState, token: &str, role: Role) -> Result<Principal, Error> {
    let principal = state
        .auth
        .verifier
        .verify(token)
        .await
        .map_err(Error::Unauthenticated)?;
    if principal.may(role) {
        Ok(principal)
    } else {
        Err(Error::Forbidden(AuthError::Forbidden(role)))
    }
}

/// Checks that the caller holds `role` (or `admin`).
pub(crate) async fn authorize(
    State((state, role)): State<(AppState, Role)>,
    mut request: Request,
    next: Next,
) -> Result<Response, Error> {
    let token = bearer(request.headers()).map_err(Error::Unauthenticated)?;
    let principal = verified(&state, token, role).await?;
    limit(&state, request.method(), &principal.subject)?;
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

/// Any verified token, whatever its roles: for routes that only say who the caller is.
pub(crate) async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, Error> {
    let token = bearer(request.headers()).map_err(Error::Unauthenticated)?;
    let principal = state
        .auth
        .verifier
        .verify(token)
        .await
        .map_err(Error::Unauthenticated)?;
    limit(&state, request.method(), &principal.subject)?;
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

/// The callback route: a callback token minted by Pacer for this very task, or a caller with the
/// `downstream` role.
pub(crate) async fn authorize_callback(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, Error> {
    let token = bearer(request.headers()).map_err(Error::Unauthenticated)?;
    let principal = if audience_is_callback(token) {
        let task = state
            .auth
            .keyset
            .verify_callback_token(token, state.auth.leeway)
            .map_err(|e| {
                tracing::debug!(error = %e, "callback token refused");
                Error::Unauthenticated(AuthError::Invalid(
                    "the callback token does not verify".into(),
                ))
            })?;
        let path_task = request
            .uri()
            .path()
            .split('/')
            .nth(4)
            .and_then(|id| id.parse::<TaskId>().ok());
        if path_task != Some(task) {
            return Err(Error::Forbidden(AuthError::WrongTask(
                "this callback token was minted for another task".into(),
            )));
        }
        // A callback token reports on one task only, so it needs no rate limit of its own (and a
        // bucket per task would never be freed).
        Principal {
            subject: format!("task:{task}"),
            issuer: state.auth.keyset.issuer().to_owned(),
            roles: vec![],
        }
    } else {
        let principal = verified(&state, token, Role::Downstream).await?;
        limit(&state, request.method(), &principal.subject)?;
        principal
    };
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

/// Whether a token claims the callback audience (checked properly by the keyset afterwards).
fn audience_is_callback(token: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Audience {
        aud: Option<serde_json::Value>,
    }
    jsonwebtoken::dangerous::insecure_decode_claims::<Audience>(token).is_ok_and(|claims| {
        match claims.aud {
            Some(serde_json::Value::String(aud)) => aud == CALLBACK_AUDIENCE,
            Some(serde_json::Value::Array(items)) => items.iter().any(|a| a == CALLBACK_AUDIENCE),
            _ => false,
        }
    })
}

/// The caller of an authorized request and its request id, for the audit log.
#[derive(Debug, Clone)]
pub(crate) struct Actor {
    pub(crate) principal: Principal,
    pub(crate) request_id: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| {
                Error::Internal("a handler needing a caller ran without authorization".into())
            })?;
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Self {
            principal,
            request_id,
        })
    }
}
