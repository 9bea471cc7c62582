//! Outbound dispatch JWTs: short-lived, signed by the active key with its own algorithm, so
//! downstreams verify them through Pacer's JWKS.

use std::time::Duration;

use serde::Serialize;

use super::{KeyError, Keyset};

#[derive(Serialize)]
struct OutboundClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: String,
}

impl Keyset {
    /// A short-lived JWT for an outbound dispatch, signed by the active key with its own
    /// algorithm, so downstreams verify it through the JWKS: `iss`, `aud` = `audience`, `sub` =
    /// `subject`, `iat`, `nbf` = `iat`, `exp` = `iat + ttl`, and a fresh `jti`.
    pub fn sign_outbound(
        &self,
        audience: &str,
        subject: &str,
        ttl: Duration,
    ) -> Result<String, KeyError> {
        let iat = chrono::Utc::now().timestamp();
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        self.active().sign(&OutboundClaims {
            iss: &self.inner.issuer,
            aud: audience,
            sub: subject,
            iat,
            nbf: iat,
            exp: iat.saturating_add(ttl),
            jti: uuid::Uuid::now_v7().to_string(),
        })
    }
}
