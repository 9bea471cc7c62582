//! Pacer's own signing keys: minting and verifying per-task callback tokens, signing outbound
//! dispatches (a JWT, or an HMAC over the body), and publishing the public keys as a JWKS. The
//! keys are loaded and parsed once, into a [`Keyset`] the application holds and passes on; no
//! key is kept anywhere else.

mod callback;
mod hmac;
mod keys;
mod outbound;

use std::fmt;
use std::sync::Arc;

pub use hmac::{hmac_signature, verify_hmac_signature};
pub use keys::generate_ed25519_pem;

use keys::SigningKey;

/// The audience of callback tokens.
pub const CALLBACK_AUDIENCE: &str = "pacer-callback";

/// The header Pacer adds to an HMAC-signed dispatch.
pub const SIGNATURE_HEADER: &str = "pacer-signature";

/// Why a key or token was refused. `Display` never includes key material or token text: token
/// refusals carry fixed reasons only, since everything in a refused token is attacker-chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// `from_pems` was given an empty list.
    #[error("no signing key is configured")]
    NoKeys,
    /// A key has an empty or blank `kid`.
    #[error("a signing key has an empty kid")]
    EmptyKid,
    /// Two keys share a `kid`, so a token could not name its key.
    #[error("two signing keys share the kid `{0}`")]
    DuplicateKid(String),
    /// A key that does not parse or cannot sign.
    #[error("signing key `{kid}`: {reason}")]
    InvalidKey {
        /// The key's `kid`.
        kid: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Signing failed (the keys are checked at construction, so this is not expected).
    #[error("signing failed: {0}")]
    Signing(String),
    /// Not three base64url segments with JSON inside, or a header naming an unknown algorithm
    /// (which is how `alg: none` ends up).
    #[error("the token is malformed")]
    Malformed,
    /// The header's `kid` is missing or names none of these keys.
    #[error("the token names no key of this keyset")]
    UnknownKey,
    /// The header's `alg` is neither HS256 nor the algorithm of the key its `kid` names.
    #[error("the token's algorithm is not its key's")]
    WrongAlgorithm,
    /// The signature does not verify.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// `exp` is past, beyond the leeway.
    #[error("the token has expired")]
    Expired,
    /// A claim is missing or wrong.
    #[error("the token's claims are refused: {0}")]
    Claims(&'static str),
    /// The token's `crit` header names extensions, and Pacer understands none.
    #[error("the token names critical extensions Pacer does not understand")]
    Critical,
}

/// Pacer's signing keys: the first signs, all verify, all are published (so keys can be rotated
/// without downtime: add the new key second, wait for caches, make it first, later drop the old).
/// Cheap to clone.
#[derive(Clone)]
pub struct Keyset {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: String,
    /// Never empty: `from_pems` refuses an empty list. The first signs.
    keys: Vec<SigningKey>,
    jwks: serde_json::Value,
}

impl fmt::Debug for Keyset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self
            .inner
            .keys
            .iter()
            .map(|key| format!("{} ({:?})", key.kid, key.algorithm))
            .collect();
        f.debug_struct("Keyset")
            .field("issuer", &self.inner.issuer)
            .field("keys", &keys)
            .finish()
    }
}

impl Keyset {
    /// The `iss` of every token Pacer signs.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// `{"keys": [...]}`: the public JWK of every key (`kty`, `crv`/`x` or `n`/`e`, `kid`, `alg`,
    /// `"use": "sig"`), never private parts.
    pub fn jwks(&self) -> serde_json::Value {
        self.inner.jwks.clone()
    }

    /// The key that signs.
    fn active(&self) -> &SigningKey {
        &self.inner.keys[0]
    }
}

#[cfg(test)]
mod tests;
