//! Test support: the API's state with a known HS256 issuer and a fresh signing keyset, and tokens
//! for it, built without Pacer's own minting code.

// Each test file uses a part of this module.
#![allow(dead_code)]

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pacer_api::{ApiConfig, AppState, Auth, RateLimiter};
use pacer_auth::signing::Keyset;
use pacer_auth::{Issuer, IssuerKey, Verifier, VerifierConfig};
use pacer_domain::Span;
use pacer_store::Store;
use serde_json::{Value, json};
use sqlx::PgPool;

/// The HS256 secret of the test issuer `test-idp`, audience `pacer`.
pub(crate) const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

/// State for in-process API tests, with room for `config` changes and extra issuers.
pub(crate) fn state(pool: PgPool, config: ApiConfig, issuers: Vec<Issuer>) -> (AppState, Keyset) {
    state_with(pool, config, issuers, RateLimiter::new(1000.0, 1000))
}

/// Like [`state`], with a given write rate limit.
pub(crate) fn state_with(
    pool: PgPool,
    config: ApiConfig,
    issuers: Vec<Issuer>,
    limiter: RateLimiter,
) -> (AppState, Keyset) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut issuers = issuers;
    issuers.push(Issuer {
        issuer: "test-idp".into(),
        audience: "pacer".into(),
        key: IssuerKey::Hs256(SECRET.to_owned().into()),
    });
    let verifier = Verifier::new(
        VerifierConfig {
            issuers,
            role_claim: "roles".into(),
            leeway: Duration::from_secs(5),
            jwks_min_refresh: Duration::ZERO,
            jwks_max_age: Duration::from_secs(600),
        },
        reqwest::Client::new(),
    )
    .expect("verifier");
    let keyset = Keyset::generate("pacer");
    let auth = Auth {
        verifier,
        keyset: keyset.clone(),
        leeway: Duration::from_secs(5),
        limiter,
    };
    (
        AppState::new(Store::new(pool), "test-node", None, &config, auth),
        keyset,
    )
}

/// The default API settings for tests.
pub(crate) fn config() -> ApiConfig {
    ApiConfig {
        body_limit: 4096,
        dead_after: Span::from_secs(10),
        secrets: ["registry-token".to_owned()].into(),
        request_timeout: Duration::from_secs(30),
        notify_urls: vec!["https://notify.test/".to_owned()],
    }
}

/// A JWT signed with HMAC-SHA256 by hand (ring, base64), so the tests do not trust Pacer's own
/// token code to check Pacer's token code.
pub(crate) fn hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let encode = |value: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("json"));
    let signing_input = format!("{}.{}", encode(header), encode(claims));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let signature = ring::hmac::sign(&key, signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    )
}

/// Claims for the test issuer granting `roles`, valid for an hour.
pub(crate) fn claims(roles: &[&str]) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({ "iss": "test-idp", "aud": "pacer", "sub": "tester", "roles": roles, "iat": now, "exp": now + 3600 })
}

/// A valid token of the test issuer granting `roles`.
pub(crate) fn token(roles: &[&str]) -> String {
    hs256(
        SECRET.as_bytes(),
        &json!({ "alg": "HS256", "typ": "JWT" }),
        &claims(roles),
    )
}
