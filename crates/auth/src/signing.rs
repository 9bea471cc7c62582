//! Pacer's own signing keys: minting and verifying per-task callback tokens, signing outbound
//! dispatches (a JWT, or an HMAC over the body), and publishing the public keys as a JWKS.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, OctetKeyPairParameters,
    OctetKeyPairType, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use pacer_domain::TaskId;
use ring::hmac;
use ring::signature::{Ed25519KeyPair, KeyPair};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::{Deserialize, Serialize};

/// The audience of callback tokens.
pub const CALLBACK_AUDIENCE: &str = "pacer-callback";

/// The header Pacer adds to an HMAC-signed dispatch.
pub const SIGNATURE_HEADER: &str = "pacer-signature";

/// RSA keys shorter than this are refused (NIST SP 800-131A).
const MIN_RSA_BITS: usize = 2048;

/// The algorithm of the callback tokens Pacer mints, keyed by each key's derived secret.
const CALLBACK_ALGORITHM: Algorithm = Algorithm::HS256;

/// What a key signs to derive its callback secret. It has no `.`, so it is never the signing
/// input of a JWT (`header.payload`), the only other thing Pacer signs with the key.
const CALLBACK_SECRET_MESSAGE: &[u8] = b"pacer callback token key v1";

/// The HMAC key under which that signature is condensed to the callback secret.
const CALLBACK_SECRET_LABEL: &[u8] = b"pacer callback token hs256 secret v1";

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

struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    /// Built from the published JWK, so what verifies here is what downstreams see.
    decoding: DecodingKey,
    /// The HS256 secret of callback tokens, from [`callback_secret`], to mint and to verify.
    callback_encoding: EncodingKey,
    callback_decoding: DecodingKey,
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

#[derive(Serialize)]
struct CallbackClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: String,
    iat: i64,
    exp: i64,
}

/// What `verify_callback_token` reads beyond what `Validation` checks.
#[derive(Deserialize)]
struct VerifiedCallback {
    sub: String,
    iat: Option<i64>,
}

impl Keyset {
    /// Keys from (kid, PEM private key) pairs: Ed25519 (PKCS#8 `PRIVATE KEY`, v1 or v2) signs
    /// EdDSA, RSA of at least 2048 bits (`RSA PRIVATE KEY` or PKCS#8) signs RS256. kids must be
    /// unique and non-empty, and there must be at least one key. Each key signs and verifies a
    /// probe here, so a key that loads is a key that works, and derives its callback secret.
    pub fn from_pems(issuer: &str, keys: &[(String, SecretString)]) -> Result<Keyset, KeyError> {
        crate::crypto::install();
        if keys.is_empty() {
            return Err(KeyError::NoKeys);
        }
        let mut loaded: Vec<SigningKey> = Vec::with_capacity(keys.len());
        let mut published = Vec::with_capacity(keys.len());
        for (kid, pem) in keys {
            if kid.trim().is_empty() {
                return Err(KeyError::EmptyKid);
            }
            if loaded.iter().any(|key| key.kid == *kid) {
                return Err(KeyError::DuplicateKid(kid.clone()));
            }
            let (key, jwk) = SigningKey::from_pem(kid, pem.expose_secret())?;
            let jwk = serde_json::to_value(jwk).map_err(|e| KeyError::InvalidKey {
                kid: kid.clone(),
                reason: format!("its JWK does not serialize: {e}"),
            })?;
            loaded.push(key);
            published.push(jwk);
        }
        let mut jwks = serde_json::Map::new();
        jwks.insert("keys".to_owned(), serde_json::Value::Array(published));
        let jwks = serde_json::Value::Object(jwks);
        Ok(Keyset {
            inner: Arc::new(Inner {
                issuer: issuer.to_owned(),
                keys: loaded,
                jwks,
            }),
        })
    }

    /// A fresh random Ed25519 key (kid `dev-<8 hex>`), for development.
    ///
    /// # Panics
    ///
    /// If the operating system's random number generator fails.
    pub fn generate(issuer: &str) -> Keyset {
        let pem = generate_ed25519_pem();
        let mut random = [0u8; 4];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
            .expect("the system random number generator failed");
        let kid = format!("dev-{}", to_hex(&random));
        Keyset::from_pems(issuer, &[(kid, SecretString::from(pem))])
            .expect("a freshly generated Ed25519 key loads")
    }

    /// The `iss` of every token Pacer signs.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// `{"keys": [...]}`: the public JWK of every key (`kty`, `crv`/`x` or `n`/`e`, `kid`, `alg`,
    /// `"use": "sig"`), never private parts.
    pub fn jwks(&self) -> serde_json::Value {
        self.inner.jwks.clone()
    }

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

    /// A callback token for one task: an HS256 JWT under the active key's `kid`, keyed by a
    /// secret every node derives from that private key when it loads, so minting and checking
    /// one costs a hash rather than a signature. Only Pacer checks it; downstreams hand it back
    /// as an opaque bearer token. Claims: `iss`, `aud` = [`CALLBACK_AUDIENCE`], `sub` = the task
    /// id, `iat`, `exp` = `expires_at`.
    pub fn mint_callback_token(
        &self,
        task: TaskId,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<String, KeyError> {
        self.active().mac(&CallbackClaims {
            iss: &self.inner.issuer,
            aud: CALLBACK_AUDIENCE,
            sub: task.to_string(),
            iat: chrono::Utc::now().timestamp(),
            exp: expires_at.timestamp(),
        })
    }

    /// Verifies a callback token and returns the task in its `sub`. The header's `kid` must name
    /// one of these keys (any of them, so tokens minted before a rotation keep verifying). An
    /// `alg` of HS256 is checked with that key's derived secret; the key's own algorithm is
    /// checked with its public key, which is the form earlier versions minted (a token stays
    /// valid until an hour after its task's timeout, so tokens minted before an upgrade are still
    /// presented after it). Any other `alg` is refused, so a token never chooses its key: `none`
    /// does not parse, and HS256 is only ever keyed by the derived secret, never by public key
    /// bytes. Then the signature, `iss`, `aud` = [`CALLBACK_AUDIENCE`], a required `exp` not past,
    /// `nbf` if present, and a required `iat` not in the future, with `leeway` on the times.
    pub fn verify_callback_token(&self, token: &str, leeway: Duration) -> Result<TaskId, KeyError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| KeyError::Malformed)?;
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.inner.keys.iter().find(|key| key.kid == kid))
            .ok_or(KeyError::UnknownKey)?;
        let (algorithm, decoding) = if header.alg == CALLBACK_ALGORITHM {
            (CALLBACK_ALGORITHM, &key.callback_decoding)
        } else if header.alg == key.algorithm {
            (key.algorithm, &key.decoding)
        } else {
            return Err(KeyError::WrongAlgorithm);
        };

        let now = chrono::Utc::now().timestamp();
        let mut validation = Validation::new(algorithm);
        // jsonwebtoken computes `now - leeway` in u64, so a leeway beyond the epoch would wrap.
        validation.leeway = leeway.as_secs().min(now.unsigned_abs());
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.inner.issuer]);
        validation.set_audience(&[CALLBACK_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<VerifiedCallback>(token, decoding, &validation)
            .map_err(|e| refusal(e.kind()))?
            .claims;

        let leeway = i64::try_from(validation.leeway).unwrap_or(i64::MAX);
        match claims.iat {
            None => return Err(KeyError::Claims("`iat` is missing")),
            Some(iat) if iat > now.saturating_add(leeway) => {
                return Err(KeyError::Claims("`iat` is in the future"));
            }
            Some(_) => {}
        }
        claims
            .sub
            .parse()
            .map_err(|_| KeyError::Claims("`sub` is not a task id"))
    }

    /// The key that signs.
    fn active(&self) -> &SigningKey {
        &self.inner.keys[0]
    }
}

impl SigningKey {
    /// Parses one PEM private key and derives its public JWK.
    fn from_pem(kid: &str, pem_text: &str) -> Result<(SigningKey, Jwk), KeyError> {
        let invalid = |reason: String| KeyError::InvalidKey {
            kid: kid.to_owned(),
            reason,
        };
        let parsed = pem::parse(pem_text)
            .map_err(|_| invalid("not a PEM block (`-----BEGIN PRIVATE KEY-----`)".into()))?;
        let tag = parsed.tag().to_owned();
        let der = SecretSlice::from(parsed.into_contents());
        let der = der.expose_secret();

        let (algorithm, encoding, params) = match tag.as_str() {
            "PRIVATE KEY" => match Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
                // jsonwebtoken's own JWK derivation only takes 48-byte (v1) PKCS#8, and ring
                // writes v2, so the public key comes from ring.
                Ok(pair) => (
                    Algorithm::EdDSA,
                    EncodingKey::from_ed_der(der),
                    AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                        key_type: OctetKeyPairType::OctetKeyPair,
                        curve: EllipticCurve::Ed25519,
                        x: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
                    }),
                ),
                Err(_) => {
                    let encoding =
                        EncodingKey::from_rsa_pem(pem_text.as_bytes()).map_err(|_| {
                            invalid("a PKCS#8 key that is neither Ed25519 nor RSA".into())
                        })?;
                    (
                        Algorithm::RS256,
                        encoding.clone(),
                        rsa_params(&encoding, &invalid)?,
                    )
                }
            },
            "RSA PRIVATE KEY" => {
                let encoding = EncodingKey::from_rsa_der(der);
                (
                    Algorithm::RS256,
                    encoding.clone(),
                    rsa_params(&encoding, &invalid)?,
                )
            }
            "PUBLIC KEY" | "RSA PUBLIC KEY" | "CERTIFICATE" => {
                return Err(invalid(format!("a `{tag}`, not a private key")));
            }
            "ENCRYPTED PRIVATE KEY" => {
                return Err(invalid("an encrypted private key; decrypt it first".into()));
            }
            "EC PRIVATE KEY" => {
                return Err(invalid(
                    "an EC key; use Ed25519 (`pacer keygen`) or RSA".into(),
                ));
            }
            _ => return Err(invalid(format!("a `{tag}`, not a private key"))),
        };

        let jwk = Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(algorithm.into()),
                key_id: Some(kid.to_owned()),
                ..CommonParameters::default()
            },
            algorithm: params,
        };
        let decoding = DecodingKey::from_jwk(&jwk)
            .map_err(|e| invalid(format!("its public key does not load: {e}")))?;

        // The public key was read by one crate (ring, rsa) and the signer reads the private key
        // with another (ed25519-dalek, rsa): sign and verify once so that a key they disagree
        // on fails here at start-up rather than at the first dispatch.
        const PROBE: &[u8] = b"pacer signing key check";
        let signature = jsonwebtoken::crypto::sign(PROBE, &encoding, algorithm)
            .map_err(|e| invalid(format!("it cannot sign: {e}")))?;
        if !jsonwebtoken::crypto::verify(&signature, PROBE, &decoding, algorithm).unwrap_or(false) {
            return Err(invalid(
                "its signatures do not verify with its public key".into(),
            ));
        }

        let secret = callback_secret(&encoding, algorithm)
            .map_err(|e| invalid(format!("it cannot derive a callback secret: {e}")))?;
        let key = SigningKey {
            kid: kid.to_owned(),
            algorithm,
            encoding,
            decoding,
            callback_encoding: EncodingKey::from_secret(secret.as_ref()),
            callback_decoding: DecodingKey::from_secret(secret.as_ref()),
        };
        Ok((key, jwk))
    }

    /// A JWT over `claims` under this key's `kid`, signed with the key itself.
    fn sign(&self, claims: &impl Serialize) -> Result<String, KeyError> {
        encode(&self.kid, self.algorithm, &self.encoding, claims)
    }

    /// A JWT over `claims` under this key's `kid`, HS256 with its callback secret.
    fn mac(&self, claims: &impl Serialize) -> Result<String, KeyError> {
        encode(
            &self.kid,
            CALLBACK_ALGORITHM,
            &self.callback_encoding,
            claims,
        )
    }
}

fn encode(
    kid: &str,
    algorithm: Algorithm,
    key: &EncodingKey,
    claims: &impl Serialize,
) -> Result<String, KeyError> {
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).map_err(|e| KeyError::Signing(e.to_string()))
}

/// The 32-byte secret of a key's callback tokens: HMAC-SHA256 under [`CALLBACK_SECRET_LABEL`] of
/// the key's signature over [`CALLBACK_SECRET_MESSAGE`].
///
/// Every node configured with the key derives the same secret with no secret of its own to
/// distribute: Ed25519 and RSA PKCS#1 v1.5 signatures are deterministic, and they depend on the
/// key alone, not on how its PEM is encoded (PKCS#1 or PKCS#8, v1 or v2, line endings). Nobody
/// without the private key can compute it: the message is never signed for anything published
/// (JWT signing inputs always contain a `.`), so knowing the secret would mean forging a
/// signature. The JWKS publishes only public keys, and the secret is never logged or sent.
fn callback_secret(encoding: &EncodingKey, algorithm: Algorithm) -> Result<hmac::Tag, String> {
    let signature = SecretString::from(
        jsonwebtoken::crypto::sign(CALLBACK_SECRET_MESSAGE, encoding, algorithm)
            .map_err(|e| e.to_string())?,
    );
    let signature = SecretSlice::from(
        URL_SAFE_NO_PAD
            .decode(signature.expose_secret())
            .map_err(|e| e.to_string())?,
    );
    let label = hmac::Key::new(hmac::HMAC_SHA256, CALLBACK_SECRET_LABEL);
    Ok(hmac::sign(&label, signature.expose_secret()))
}

/// The public `n`/`e` of an RSA private key, refusing keys below [`MIN_RSA_BITS`].
fn rsa_params(
    encoding: &EncodingKey,
    invalid: &impl Fn(String) -> KeyError,
) -> Result<AlgorithmParameters, KeyError> {
    let AlgorithmParameters::RSA(params) = Jwk::from_encoding_key(encoding, Algorithm::RS256)
        .map_err(|e| invalid(format!("not a valid RSA private key: {e}")))?
        .algorithm
    else {
        return Err(invalid("not an RSA key".into()));
    };
    let modulus = URL_SAFE_NO_PAD
        .decode(&params.n)
        .map_err(|_| invalid("its modulus does not decode".into()))?;
    let bits = modulus.first().map_or(0, |top| {
        modulus.len() * 8 - usize::try_from(top.leading_zeros()).unwrap_or(0)
    });
    if bits < MIN_RSA_BITS {
        return Err(invalid(format!(
            "an RSA key of {bits} bits; at least {MIN_RSA_BITS} are required"
        )));
    }
    Ok(AlgorithmParameters::RSA(params))
}

/// Maps a jsonwebtoken refusal to a fixed reason.
fn refusal(kind: &ErrorKind) -> KeyError {
    match kind {
        ErrorKind::InvalidSignature => KeyError::BadSignature,
        ErrorKind::ExpiredSignature => KeyError::Expired,
        ErrorKind::ImmatureSignature => KeyError::Claims("the token is not yet valid (`nbf`)"),
        ErrorKind::InvalidIssuer => KeyError::Claims("wrong issuer"),
        ErrorKind::InvalidAudience => KeyError::Claims("wrong audience"),
        ErrorKind::MissingRequiredClaim(_) => KeyError::Claims("a required claim is missing"),
        ErrorKind::InvalidAlgorithm => KeyError::WrongAlgorithm,
        ErrorKind::InvalidToken
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => KeyError::Malformed,
        _ => KeyError::BadSignature,
    }
}

/// A new Ed25519 private key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, the v2 form that
/// includes the public key), for `pacer keygen`.
///
/// # Panics
///
/// If the operating system's random number generator fails.
pub fn generate_ed25519_pem() -> String {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
        .expect("the system random number generator failed");
    let block = pem::Pem::new("PRIVATE KEY", pkcs8.as_ref());
    // pem's default line ending is CRLF.
    pem::encode_config(
        &block,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The value of the [`SIGNATURE_HEADER`]: `t=<unix seconds>,v1=<lowercase hex
/// HMAC-SHA256(secret, "<t>." + body)>`.
pub fn hmac_signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, &signed_message(&timestamp.to_string(), body));
    format!("t={timestamp},v1={}", to_hex(tag.as_ref()))
}

/// Checks a [`SIGNATURE_HEADER`] value against `body`: true when some `v1` is the HMAC-SHA256 of
/// `"<t>." + body` under `secret` (compared in constant time) and `t` is within `tolerance` of
/// `now` (unix seconds). Unknown `k=v` parts are ignored so a future scheme can be added beside
/// `v1`; anything else malformed is refused.
pub fn verify_hmac_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> bool {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", _)) if timestamp.is_some() => return false,
            Some(("t", value)) => timestamp = Some(value),
            Some(("v1", value)) => signatures.push(value),
            Some(_) => {}
            None => return false,
        }
    }
    let Some(timestamp) = timestamp else {
        return false;
    };
    let Ok(seconds) = timestamp.parse::<i64>() else {
        return false;
    };
    if now.abs_diff(seconds) > tolerance.as_secs() {
        return false;
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let message = signed_message(timestamp, body);
    signatures
        .iter()
        .filter_map(|signature| from_hex(signature))
        .any(|tag| hmac::verify(&key, &message, &tag).is_ok())
}

fn signed_message(timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(timestamp.len() + 1 + body.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.push(b'.');
    message.extend_from_slice(body);
    message
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let high = char::from(pair[0]).to_digit(16)?;
            let low = char::from(pair[1]).to_digit(16)?;
            u8::try_from(high * 16 + low).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use jsonwebtoken::jwk::JwkSet;
    use serde_json::{Value, json};

    use super::*;

    // Test-only keys, generated with openssl for this module. The two RSA constants are one key
    // in its two encodings; `RSA_PUBLIC_PEM` is its public half.
    const RSA_PKCS1_PEM: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEA3DZbBmFZCj9b+Gj1AVGO4+DMRvDquRCcz8/ksnS67mBfQF8g
+RZYEC4culZUCrwXQ/K3SUdy+vzT1Te14FJzf7TF79WfdTx9ei2dszegTIvNCIWC
MCvPnhcu9vg1I/5NnMpnbC8Vbc14M9KEfwdchBxhxmD9XwfXvQa/YYgfSP8UnoAn
tyVZM7XNisO2VoL8072aP1iNaJRRqMScOHZGg5V/kD2uX1xBlas/wHc4LXCTIhV8
rnqPHy2NI9alXywfkFz63kUhiDvxuh7TNXWr0xFVJJAgVgdTiFtYuxXTh4Y89VUF
uVK2cqyaCvmPhJqHIgG8SatXUsvqE1Qvg6/v4QIDAQABAoIBAAOBUqdCLcEl1ghu
X0FTSNjOugxXsbIawMGRYmdcHUzwYsPAX+LRx2VmiSrcIeqpKMj6QuRF4LTRs8DS
lLC1Oe+/8wtIwAjahXgdjsOMsJ6soP8Fj6zFncCQnOeYdtFpBFeTudwKedGtchWH
wHfR0wKqqFHDNx/n8jf+NKtQQoiOY0wpdVUuitT2Q3nHkpigdbSA6RFmQSDmfBaa
kq2fjoGiTu0p96Yo7yKnoKhdc1Vw6tBDaLa8qaR5Wa9pMcvWOv4UaPs3l3EUme4m
r5YnSlsjeq8cf8W7v9zViqiAW7uxd9vKJpN9u6oPD/1cjn2xUVzzS1DFqnADW2sI
z4fe0isCgYEA+Fjwtkaq0QiLyViXwzAFV1wacCY2opQRHLtCQgW3LsIz0Bps8YcK
9lpTDQ5DVP8QpuHtOxSnh/jA1iGR/PQIoavqgolgHPWC5LZvK1d1/8rWCJFhNX3h
yNHV+i7YL24X5R9hm2WLzJbwniyaY5AfE6kK6xjOKk+fkGEesJRyAJsCgYEA4v95
j/VGN05bRtAzoPjU2Q14fK7qPnnOlxwOVBjB7I7VF+2ugilc9cSA0WTp+KPSbKLB
jyeJOySLg+ZxrhiX+qV7vVdpnwOuX32qZykAKRWQnxdUqB5T2/aDh9jtIYfGEDIO
z6U3jtKZPzXjheBS8f7ga36UpcpUiDownNRoAzMCgYBVtJP1w7OFihZ7uPg+4x6k
xGNXWsi2GLVDHhjCoihSmbC527THMZyF4iwRMF/qQFAl14hAQGOEmEMsYs935Vvp
N2QqAnDJ7axrc84vvfI6AW0V7d4HUNcPr+LRgUMYMz1J1CeiMkwpodmOLMRnIcCn
z0m2Uowrq+jcMbgepkwliwKBgDfcpw3GToFNxyimFA6JLdg8eGo2oW6+ixikzuHj
NdYBUG+TDl75zuasdQcSzoFhz2bsprWUBTGIzMyo6VDuvHfyQYFXAacgQMk/I7A/
Zsq1g+Gi3DKDRB/dioDj4Xde8l8J8psnDYUYTp4/pL5NdhwXnSLXA73JDQR5TX1K
yE4BAoGBAJOMN5YKAlGX+xDAp4Tdu83OMDNwOkyt4zKPa3Uhd5QgVYs1IQRQpVHz
bI3K2PKXG5Nmj5XHRDRIiwuGL8qTtwLohoFHVxpHEVtAQoVQpgZAkA+yoI/mosPI
ULov6OdpIWfKyFzLr6Dkw9QYK9xUWhTul9XRG42iDSgJv6N31HkB
-----END RSA PRIVATE KEY-----
";
    const RSA_PKCS8_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDcNlsGYVkKP1v4
aPUBUY7j4MxG8Oq5EJzPz+SydLruYF9AXyD5FlgQLhy6VlQKvBdD8rdJR3L6/NPV
N7XgUnN/tMXv1Z91PH16LZ2zN6BMi80IhYIwK8+eFy72+DUj/k2cymdsLxVtzXgz
0oR/B1yEHGHGYP1fB9e9Br9hiB9I/xSegCe3JVkztc2Kw7ZWgvzTvZo/WI1olFGo
xJw4dkaDlX+QPa5fXEGVqz/AdzgtcJMiFXyueo8fLY0j1qVfLB+QXPreRSGIO/G6
HtM1davTEVUkkCBWB1OIW1i7FdOHhjz1VQW5UrZyrJoK+Y+EmociAbxJq1dSy+oT
VC+Dr+/hAgMBAAECggEAA4FSp0ItwSXWCG5fQVNI2M66DFexshrAwZFiZ1wdTPBi
w8Bf4tHHZWaJKtwh6qkoyPpC5EXgtNGzwNKUsLU577/zC0jACNqFeB2Ow4ywnqyg
/wWPrMWdwJCc55h20WkEV5O53Ap50a1yFYfAd9HTAqqoUcM3H+fyN/40q1BCiI5j
TCl1VS6K1PZDeceSmKB1tIDpEWZBIOZ8FpqSrZ+OgaJO7Sn3pijvIqegqF1zVXDq
0ENotryppHlZr2kxy9Y6/hRo+zeXcRSZ7iavlidKWyN6rxx/xbu/3NWKqIBbu7F3
28omk327qg8P/VyOfbFRXPNLUMWqcANbawjPh97SKwKBgQD4WPC2RqrRCIvJWJfD
MAVXXBpwJjailBEcu0JCBbcuwjPQGmzxhwr2WlMNDkNU/xCm4e07FKeH+MDWIZH8
9Aihq+qCiWAc9YLktm8rV3X/ytYIkWE1feHI0dX6LtgvbhflH2GbZYvMlvCeLJpj
kB8TqQrrGM4qT5+QYR6wlHIAmwKBgQDi/3mP9UY3TltG0DOg+NTZDXh8ruo+ec6X
HA5UGMHsjtUX7a6CKVz1xIDRZOn4o9JsosGPJ4k7JIuD5nGuGJf6pXu9V2mfA65f
fapnKQApFZCfF1SoHlPb9oOH2O0hh8YQMg7PpTeO0pk/NeOF4FLx/uBrfpSlylSI
OjCc1GgDMwKBgFW0k/XDs4WKFnu4+D7jHqTEY1dayLYYtUMeGMKiKFKZsLnbtMcx
nIXiLBEwX+pAUCXXiEBAY4SYQyxiz3flW+k3ZCoCcMntrGtzzi+98joBbRXt3gdQ
1w+v4tGBQxgzPUnUJ6IyTCmh2Y4sxGchwKfPSbZSjCur6NwxuB6mTCWLAoGAN9yn
DcZOgU3HKKYUDokt2Dx4ajahbr6LGKTO4eM11gFQb5MOXvnO5qx1BxLOgWHPZuym
tZQFMYjMzKjpUO68d/JBgVcBpyBAyT8jsD9myrWD4aLcMoNEH92KgOPhd17yXwny
mycNhRhOnj+kvk12HBedItcDvckNBHlNfUrITgECgYEAk4w3lgoCUZf7EMCnhN27
zc4wM3A6TK3jMo9rdSF3lCBVizUhBFClUfNsjcrY8pcbk2aPlcdENEiLC4YvypO3
AuiGgUdXGkcRW0BChVCmBkCQD7Kgj+aiw8hQui/o52khZ8rIXMuvoOTD1Bgr3FRa
FO6X1dEbjaINKAm/o3fUeQE=
-----END PRIVATE KEY-----
";
    const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA3DZbBmFZCj9b+Gj1AVGO
4+DMRvDquRCcz8/ksnS67mBfQF8g+RZYEC4culZUCrwXQ/K3SUdy+vzT1Te14FJz
f7TF79WfdTx9ei2dszegTIvNCIWCMCvPnhcu9vg1I/5NnMpnbC8Vbc14M9KEfwdc
hBxhxmD9XwfXvQa/YYgfSP8UnoAntyVZM7XNisO2VoL8072aP1iNaJRRqMScOHZG
g5V/kD2uX1xBlas/wHc4LXCTIhV8rnqPHy2NI9alXywfkFz63kUhiDvxuh7TNXWr
0xFVJJAgVgdTiFtYuxXTh4Y89VUFuVK2cqyaCvmPhJqHIgG8SatXUsvqE1Qvg6/v
4QIDAQAB
-----END PUBLIC KEY-----
";
    /// `openssl genpkey -algorithm ed25519`: PKCS#8 v1, unlike ring's v2.
    const ED25519_V1_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIHJn3eaYJMwKeuECcjAy6Tn7mHwpOlP60GFcb1wZIiYW
-----END PRIVATE KEY-----
";
    const RSA_1024_PEM: &str = "-----BEGIN RSA PRIVATE KEY-----
MIICXAIBAAKBgQDLC+3rgDj6FZXxuW7ED90ydzAQcq12Xv6XNP25/rl8/4xaTVGo
Qb56CRu3W50orm3XMt8e44y8OqiMXtr9cl4l/+f4bnpvnbbqlVUJ1hOryE9dS7VY
wP+zf3aMV5jVG2CSoXJWRDowMWTZ6GiQ8LWCVugbY2eUx7g0GwuoQ6TPsQIDAQAB
AoGAcpJEqgIsJFFRzpgHvHIHKpa+dEmBP63SkpfAI9dr6vB3zeybCwot5MaG8Sus
vmvOZwO5isBzhTLEMJDFmQWTwXLZRDjZeL5Gw8d4T6v25AAWr2ZJmpW8t1flzxkV
QMckLPlhup2mVamdvTjT7GMdYUj6OMSPfDKXR8D+xx3XxJECQQD7vdQSJg5pEB6p
Fi56BEQQEJ+T6J0U/tvhZqsPBizC2pK6flA6uiad3KPI5XY804s7/0i/s3z1T1og
J0cmSiT7AkEAzns6Bx0gN6xZITB9yoAbN6/ACYkbQ7mkYq9wwaJKOPopO8dUteVA
YF0pFzmFmF+meziPTeNwVaOfW2d3UXnGQwJBAJPMXo8NMtayNR4WvNC8Ym2AJQCE
yHzEKLoMOhAHEw6PnyfI8zeXhQaXvL09Iw8RMCTYe5C5Q3sOzJ4mEVrEmzMCQG7z
qGrKK9W+tuYuuGloDTgPKJH3Kr9psfuVanGiU1/qjN2ibtKPLdiaNspUDoWiYEM2
UUr5PBPIqIjlQCh31yECQA3piwMpupJLu4fcwEPoyfrAZT5PgL6LaLY9ed/QMHV4
VF00glaLr+iqvfrWEuSBTlXYZNvZSH0SyEC84C29V7I=
-----END RSA PRIVATE KEY-----
";
    const EC_P256_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg4YicWU8MwDohLRby
PBGwtWqOvtXK1qlweM7RW6BhRX2hRANCAAQ58AVUbMRP2f574KXUyPNmXHurJ95C
29WFq9QEPrln8/ffyZHsH9OD5KmbsTGgjG4rDCoD47W8uq1bysR6sSgf
-----END PRIVATE KEY-----
";

    const LEEWAY: Duration = Duration::from_secs(60);

    fn keyset(issuer: &str, keys: &[(&str, &str)]) -> Result<Keyset, KeyError> {
        let keys: Vec<(String, SecretString)> = keys
            .iter()
            .map(|(kid, pem)| ((*kid).to_owned(), SecretString::from(*pem)))
            .collect();
        Keyset::from_pems(issuer, &keys)
    }

    fn in_an_hour() -> DateTime<Utc> {
        Utc::now() + chrono::Duration::hours(1)
    }

    fn header_of(token: &str) -> Header {
        jsonwebtoken::decode_header(token).expect("a header")
    }

    fn published_key<'a>(jwks: &'a Value, kid: &str) -> &'a serde_json::Map<String, Value> {
        jwks["keys"]
            .as_array()
            .expect("a key array")
            .iter()
            .find(|key| key["kid"] == kid)
            .and_then(Value::as_object)
            .expect("the kid is published")
    }

    /// A token assembled by hand: `sign` gets the signing input `header.payload`.
    fn forge(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
        let encode = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
        let input = format!("{}.{}", encode(header), encode(claims));
        let signature = URL_SAFE_NO_PAD.encode(sign(input.as_bytes()));
        format!("{input}.{signature}")
    }

    /// A token in the form Pacer mints, with the given claims, keyed by the callback secret of
    /// the key `kid` of `keys`.
    fn maced(keys: &Keyset, kid: &str, claims: &Value) -> String {
        keys.inner
            .keys
            .iter()
            .find(|key| key.kid == kid)
            .expect("the kid is loaded")
            .mac(claims)
            .expect("signing")
    }

    /// A correctly signed token with the given claims, made with `pem` under `kid`.
    fn signed(kid: &str, algorithm: Algorithm, pem: &str, claims: &Value) -> String {
        let key = match algorithm {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
            _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
        }
        .expect("a test key");
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &key).expect("signing")
    }

    #[test]
    fn callback_tokens_round_trip_as_hs256_and_the_jwks_verifies_outbound_tokens() {
        let cases = [
            (Keyset::generate("pacer"), Algorithm::EdDSA),
            (
                keyset("pacer", &[("ed", ED25519_V1_PEM)]).expect("loads"),
                Algorithm::EdDSA,
            ),
            (
                keyset("pacer", &[("rsa1", RSA_PKCS1_PEM)]).expect("loads"),
                Algorithm::RS256,
            ),
            (
                keyset("pacer", &[("rsa8", RSA_PKCS8_PEM)]).expect("loads"),
                Algorithm::RS256,
            ),
        ];
        for (keys, algorithm) in cases {
            let task = TaskId::new();
            let expires = in_an_hour();
            let token = keys.mint_callback_token(task, expires).expect("minted");
            let header = header_of(&token);
            assert_eq!(header.alg, Algorithm::HS256, "{keys:?}");
            assert_eq!(
                header.kid.as_deref(),
                keys.jwks()["keys"][0]["kid"].as_str(),
                "the active key's kid"
            );
            assert_eq!(
                keys.verify_callback_token(&token, LEEWAY),
                Ok(task),
                "{keys:?}"
            );
            let claims =
                jsonwebtoken::dangerous::insecure_decode_claims::<Value>(&token).expect("claims");
            let iat = claims["iat"].as_i64().expect("iat");
            assert!((iat - Utc::now().timestamp()).abs() <= 5);
            assert_eq!(
                claims,
                json!({
                    "iss": "pacer", "aud": CALLBACK_AUDIENCE, "sub": task.to_string(),
                    "iat": iat, "exp": expires.timestamp(),
                })
            );

            let token = keys
                .sign_outbound(
                    "https://downstream.example",
                    "the-subject",
                    Duration::from_secs(300),
                )
                .expect("signed");
            let header = header_of(&token);
            assert_eq!(header.alg, algorithm);
            let kid = header.kid.expect("a kid");
            let jwks: JwkSet = serde_json::from_value(keys.jwks()).expect("a JWKS");
            let jwk = jwks.find(&kid).expect("the signing key is published");
            let mut validation = Validation::new(algorithm);
            validation.set_audience(&["https://downstream.example"]);
            validation.set_issuer(&["pacer"]);
            let claims = jsonwebtoken::decode::<Value>(
                &token,
                &DecodingKey::from_jwk(jwk).expect("a decoding key"),
                &validation,
            )
            .expect("the published key verifies the token")
            .claims;
            assert_eq!(claims["sub"], "the-subject");
            let iat = claims["iat"].as_i64().expect("iat");
            assert!((iat - Utc::now().timestamp()).abs() <= 5);
            assert_eq!(claims["nbf"], iat);
            assert_eq!(claims["exp"], iat + 300);
            let jti = claims["jti"].as_str().expect("jti");
            assert!(jti.parse::<uuid::Uuid>().is_ok());

            let again = keys
                .sign_outbound(
                    "https://downstream.example",
                    "the-subject",
                    Duration::from_secs(300),
                )
                .expect("signed");
            let again =
                jsonwebtoken::dangerous::insecure_decode_claims::<Value>(&again).expect("claims");
            assert_ne!(again["jti"], jti, "every dispatch token has its own jti");
        }
    }

    #[test]
    fn keys_are_detected_and_published_with_their_algorithm() {
        let keys = keyset(
            "pacer",
            &[
                ("ed", ED25519_V1_PEM),
                ("rsa1", RSA_PKCS1_PEM),
                ("rsa8", RSA_PKCS8_PEM),
            ],
        )
        .expect("loads");
        let jwks = keys.jwks();
        let ed = published_key(&jwks, "ed");
        assert_eq!(
            (&ed["kty"], &ed["crv"], &ed["alg"]),
            (&json!("OKP"), &json!("Ed25519"), &json!("EdDSA"))
        );
        let x = URL_SAFE_NO_PAD
            .decode(ed["x"].as_str().expect("x"))
            .expect("base64url");
        assert_eq!(x.len(), 32);

        let (pkcs1, pkcs8) = (published_key(&jwks, "rsa1"), published_key(&jwks, "rsa8"));
        assert_eq!(
            (&pkcs1["kty"], &pkcs1["alg"]),
            (&json!("RSA"), &json!("RS256"))
        );
        assert_eq!(
            (&pkcs1["n"], &pkcs1["e"]),
            (&pkcs8["n"], &pkcs8["e"]),
            "one key, two encodings"
        );
        assert_eq!(pkcs1["e"], "AQAB");

        for key in jwks["keys"].as_array().expect("keys") {
            assert_eq!(key["use"], "sig");
            for private in ["d", "p", "q", "dp", "dq", "qi", "k", "oth"] {
                assert!(key.get(private).is_none(), "{private} is published: {key}");
            }
        }

        let generated = generate_ed25519_pem();
        assert!(generated.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(generated.trim_end().ends_with("-----END PRIVATE KEY-----"));
        assert!(!generated.contains('\r'));
        assert_ne!(generated, generate_ed25519_pem());
        let dev = Keyset::generate("pacer");
        let kid = dev.jwks()["keys"][0]["kid"]
            .as_str()
            .expect("a kid")
            .to_owned();
        let hex = kid.strip_prefix("dev-").expect("a dev- kid");
        assert!(
            hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "{kid}"
        );
        assert_eq!(dev.issuer(), "pacer");
    }

    #[test]
    fn a_rotated_keyset_verifies_old_tokens_and_publishes_both_keys() {
        let old_pem = generate_ed25519_pem();
        let new_pem = generate_ed25519_pem();
        let old = keyset("pacer", &[("old", &old_pem)]).expect("loads");
        let rotated = keyset("pacer", &[("new", &new_pem), ("old", &old_pem)]).expect("loads");
        let task = TaskId::new();

        let from_old = old.mint_callback_token(task, in_an_hour()).expect("minted");
        assert_eq!(rotated.verify_callback_token(&from_old, LEEWAY), Ok(task));

        let from_rotated = rotated
            .mint_callback_token(task, in_an_hour())
            .expect("minted");
        assert_eq!(
            header_of(&from_rotated).kid.as_deref(),
            Some("new"),
            "the first key signs"
        );
        assert_eq!(
            rotated.verify_callback_token(&from_rotated, LEEWAY),
            Ok(task)
        );
        assert_eq!(
            old.verify_callback_token(&from_rotated, LEEWAY),
            Err(KeyError::UnknownKey)
        );
        // A node that lists the same keys the other way round (mid-rotation) verifies with the
        // second key's secret, and the other way about.
        let reordered = keyset("pacer", &[("old", &old_pem), ("new", &new_pem)]).expect("loads");
        assert_eq!(
            reordered.verify_callback_token(&from_rotated, LEEWAY),
            Ok(task)
        );
        let from_reordered = reordered
            .mint_callback_token(task, in_an_hour())
            .expect("minted");
        assert_eq!(header_of(&from_reordered).kid.as_deref(), Some("old"));
        assert_eq!(
            rotated.verify_callback_token(&from_reordered, LEEWAY),
            Ok(task)
        );

        let jwks = rotated.jwks();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|key| key["kid"].as_str().expect("a kid"))
            .collect();
        assert_eq!(kids, ["new", "old"]);

        // The same kid on another key (say, a second deployment) is a bad signature, not a pass.
        let impostor = keyset("pacer", &[("old", &new_pem)]).expect("loads");
        let forged = impostor
            .mint_callback_token(task, in_an_hour())
            .expect("minted");
        assert_eq!(
            old.verify_callback_token(&forged, LEEWAY),
            Err(KeyError::BadSignature)
        );
    }

    #[test]
    fn a_callback_token_is_a_mac_under_the_active_kid_that_only_its_key_verifies() {
        let keys =
            keyset("pacer", &[("ed", ED25519_V1_PEM), ("rsa", RSA_PKCS1_PEM)]).expect("loads");
        let task = TaskId::new();
        let token = keys
            .mint_callback_token(task, in_an_hour())
            .expect("minted");
        let header = header_of(&token);
        assert_eq!(
            (header.alg, header.kid.as_deref()),
            (Algorithm::HS256, Some("ed"))
        );
        assert_eq!(keys.verify_callback_token(&token, LEEWAY), Ok(task));

        // One bit of the MAC changed.
        let (input, signature) = token.rsplit_once('.').expect("three parts");
        let mut signature = URL_SAFE_NO_PAD.decode(signature).expect("base64url");
        assert_eq!(signature.len(), 32);
        signature[17] ^= 0x01;
        let flipped = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&signature));
        assert_eq!(
            keys.verify_callback_token(&flipped, LEEWAY),
            Err(KeyError::BadSignature)
        );

        // Another key under the same kid (say, a second deployment): neither verifies the other's.
        let impostor = keyset("pacer", &[("ed", &generate_ed25519_pem())]).expect("loads");
        let forged = impostor
            .mint_callback_token(task, in_an_hour())
            .expect("minted");
        assert_eq!(header_of(&forged).kid.as_deref(), Some("ed"));
        assert_eq!(
            keys.verify_callback_token(&forged, LEEWAY),
            Err(KeyError::BadSignature)
        );
        assert_eq!(
            impostor.verify_callback_token(&token, LEEWAY),
            Err(KeyError::BadSignature)
        );

        // The asymmetric form earlier versions minted, with each key, still verifies.
        let now = Utc::now().timestamp();
        let claims = json!({
            "iss": "pacer", "aud": CALLBACK_AUDIENCE, "sub": task.to_string(),
            "iat": now, "exp": now + 3600,
        });
        let old_ed = signed("ed", Algorithm::EdDSA, ED25519_V1_PEM, &claims);
        let old_rsa = signed("rsa", Algorithm::RS256, RSA_PKCS1_PEM, &claims);
        assert_eq!(keys.verify_callback_token(&old_ed, LEEWAY), Ok(task));
        assert_eq!(keys.verify_callback_token(&old_rsa, LEEWAY), Ok(task));
        assert_eq!(
            impostor.verify_callback_token(&old_ed, LEEWAY),
            Err(KeyError::BadSignature)
        );
        let mut expired = claims.clone();
        expired["exp"] = json!(now - 3600);
        assert_eq!(
            keys.verify_callback_token(
                &signed("ed", Algorithm::EdDSA, ED25519_V1_PEM, &expired),
                LEEWAY
            ),
            Err(KeyError::Expired)
        );
        // The old form is the key's own algorithm only.
        assert_eq!(
            keys.verify_callback_token(
                &signed("ed", Algorithm::RS256, RSA_PKCS1_PEM, &claims),
                LEEWAY
            ),
            Err(KeyError::WrongAlgorithm)
        );

        // An RSA key's callback tokens are MACs as well.
        let rsa_first =
            keyset("pacer", &[("rsa", RSA_PKCS8_PEM), ("ed", ED25519_V1_PEM)]).expect("loads");
        let token = rsa_first
            .mint_callback_token(task, in_an_hour())
            .expect("minted");
        let header = header_of(&token);
        assert_eq!(
            (header.alg, header.kid.as_deref()),
            (Algorithm::HS256, Some("rsa"))
        );
        assert_eq!(rsa_first.verify_callback_token(&token, LEEWAY), Ok(task));
        assert_eq!(keys.verify_callback_token(&token, LEEWAY), Ok(task));
    }

    #[test]
    fn every_encoding_of_a_key_derives_the_same_callback_secret() {
        // Known answers, computed with Python's `cryptography`:
        // hmac.new(LABEL, key.sign(MESSAGE[, PKCS1v15(), SHA256()]), sha256).hexdigest()
        const ED25519_SECRET: &str =
            "1d1c04201fca3c34881c40c7d955a1ce5e35ae1c70d9344f1d032f563deb715b";
        const RSA_SECRET: &str = "f2639bfa75210b46ace8669f54b7b78d7cb8ead19eae3e123d87837c7d67c7eb";
        let ed = EncodingKey::from_ed_pem(ED25519_V1_PEM.as_bytes()).expect("a key");
        let rsa = EncodingKey::from_rsa_pem(RSA_PKCS1_PEM.as_bytes()).expect("a key");
        assert_eq!(
            callback_secret(&ed, Algorithm::EdDSA).map(|tag| to_hex(tag.as_ref())),
            Ok(ED25519_SECRET.to_owned())
        );
        assert_eq!(
            callback_secret(&rsa, Algorithm::RS256).map(|tag| to_hex(tag.as_ref())),
            Ok(RSA_SECRET.to_owned())
        );
        let crlf = |pem: &str| pem.replace('\n', "\r\n");
        let loaded = keyset("pacer", &[("ed", &crlf(ED25519_V1_PEM))]).expect("loads");
        let task = TaskId::new();
        let now = Utc::now().timestamp();
        let claims = json!({
            "iss": "pacer", "aud": CALLBACK_AUDIENCE, "sub": task.to_string(),
            "iat": now, "exp": now + 600,
        });
        let secret = from_hex(ED25519_SECRET).expect("hex");
        let known = forge(
            &json!({"alg": "HS256", "typ": "JWT", "kid": "ed"}),
            &claims,
            |input| {
                hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &secret), input)
                    .as_ref()
                    .to_vec()
            },
        );
        assert_eq!(loaded.verify_callback_token(&known, LEEWAY), Ok(task));

        // One generated key as ring writes it (PKCS#8 v2, with the public key) and as openssl
        // does (v1: the same prefix as `ED25519_V1_PEM` and the same 32-byte seed), each with LF
        // and CRLF line endings.
        let v2 = generate_ed25519_pem();
        let v2_der = pem::parse(&v2).expect("a PEM").into_contents();
        let v1_der = pem::parse(ED25519_V1_PEM).expect("a PEM").into_contents();
        assert_eq!((v2_der.len(), v1_der.len()), (83, 48));
        let v1_der = [&v1_der[..16], &v2_der[16..48]].concat();
        let v1 = pem::encode_config(
            &pem::Pem::new("PRIVATE KEY", v1_der),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        );
        let ed_encodings = [v2.clone(), crlf(&v2), v1.clone(), crlf(&v1)];
        let rsa_encodings = [
            RSA_PKCS1_PEM.to_owned(),
            RSA_PKCS8_PEM.to_owned(),
            crlf(RSA_PKCS1_PEM),
            crlf(RSA_PKCS8_PEM),
        ];
        for encodings in [&ed_encodings, &rsa_encodings] {
            let keysets: Vec<Keyset> = encodings
                .iter()
                .map(|pem| keyset("pacer", &[("k", pem)]).expect("loads"))
                .collect();
            let jwk = &keysets[0].jwks()["keys"][0];
            for (i, minting) in keysets.iter().enumerate() {
                assert_eq!(&minting.jwks()["keys"][0], jwk, "one key, encoding {i}");
                let token = minting
                    .mint_callback_token(task, in_an_hour())
                    .expect("minted");
                for (j, verifying) in keysets.iter().enumerate() {
                    assert_eq!(
                        verifying.verify_callback_token(&token, LEEWAY),
                        Ok(task),
                        "minted with encoding {i}, verified with encoding {j}"
                    );
                }
            }
        }
    }

    #[test]
    fn forged_expired_and_misdirected_callback_tokens_are_refused() {
        let ed = keyset("pacer", &[("ed", ED25519_V1_PEM)]).expect("loads");
        let rsa = keyset("pacer", &[("rsa", RSA_PKCS8_PEM)]).expect("loads");
        let task = TaskId::new();
        let now = Utc::now().timestamp();
        let claims = json!({
            "iss": "pacer", "aud": CALLBACK_AUDIENCE, "sub": task.to_string(),
            "iat": now, "exp": now + 600,
        });
        assert_eq!(
            ed.verify_callback_token(
                &signed("ed", Algorithm::EdDSA, ED25519_V1_PEM, &claims),
                LEEWAY
            ),
            Ok(task)
        );

        // Expired: past the leeway is refused, within it is not.
        let expired = ed
            .mint_callback_token(task, Utc::now() - chrono::Duration::minutes(2))
            .expect("minted");
        assert_eq!(
            ed.verify_callback_token(&expired, LEEWAY),
            Err(KeyError::Expired)
        );
        let just = ed
            .mint_callback_token(task, Utc::now() - chrono::Duration::seconds(10))
            .expect("minted");
        assert_eq!(ed.verify_callback_token(&just, LEEWAY), Ok(task));

        // A dispatch token is not a callback token.
        let outbound = ed
            .sign_outbound(
                "https://downstream.example",
                &task.to_string(),
                Duration::from_secs(300),
            )
            .expect("signed");
        assert_eq!(
            ed.verify_callback_token(&outbound, LEEWAY),
            Err(KeyError::Claims("wrong audience"))
        );

        // Another issuer's token, though signed by the same key.
        let elsewhere = keyset("elsewhere", &[("ed", ED25519_V1_PEM)]).expect("loads");
        let foreign = elsewhere
            .mint_callback_token(task, in_an_hour())
            .expect("minted");
        assert_eq!(
            ed.verify_callback_token(&foreign, LEEWAY),
            Err(KeyError::Claims("wrong issuer"))
        );

        // A flipped character in the payload.
        let token = ed.mint_callback_token(task, in_an_hour()).expect("minted");
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let middle = parts[1].len() / 2;
        let flipped = if parts[1].as_bytes()[middle] == b'A' {
            "B"
        } else {
            "A"
        };
        parts[1].replace_range(middle..=middle, flipped);
        assert_eq!(
            ed.verify_callback_token(&parts.join("."), LEEWAY),
            Err(KeyError::BadSignature)
        );

        // `alg: none`, with and without a signature.
        let none = json!({"alg": "none", "typ": "JWT", "kid": "ed"});
        let unsigned = forge(&none, &claims, |_| Vec::new());
        assert!(unsigned.ends_with('.'));
        assert_eq!(
            ed.verify_callback_token(&unsigned, LEEWAY),
            Err(KeyError::Malformed)
        );
        assert_eq!(
            ed.verify_callback_token(&format!("{unsigned}AAAA"), LEEWAY),
            Err(KeyError::Malformed)
        );

        // Algorithm confusion: HS256 keyed with what an attacker knows, the public key.
        let hs256 = |kid: &str, secret: &[u8]| {
            forge(
                &json!({"alg": "HS256", "typ": "JWT", "kid": kid}),
                &claims,
                |input| {
                    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), input)
                        .as_ref()
                        .to_vec()
                },
            )
        };
        // HS256 is accepted, but only ever keyed by the secret derived from the private key.
        let confused = hs256("rsa", RSA_PUBLIC_PEM.as_bytes());
        assert_eq!(
            rsa.verify_callback_token(&confused, LEEWAY),
            Err(KeyError::BadSignature)
        );
        let n = rsa.jwks()["keys"][0]["n"].as_str().expect("n").to_owned();
        let n = URL_SAFE_NO_PAD.decode(n).expect("base64url");
        assert_eq!(
            rsa.verify_callback_token(&hs256("rsa", &n), LEEWAY),
            Err(KeyError::BadSignature)
        );
        let x = ed.jwks()["keys"][0]["x"].as_str().expect("x").to_owned();
        let x = URL_SAFE_NO_PAD.decode(x).expect("base64url");
        assert_eq!(
            ed.verify_callback_token(&hs256("ed", &x), LEEWAY),
            Err(KeyError::BadSignature)
        );
        let jwk = ed.jwks()["keys"][0].to_string();
        assert_eq!(
            ed.verify_callback_token(&hs256("ed", jwk.as_bytes()), LEEWAY),
            Err(KeyError::BadSignature)
        );
        // Other HMAC algorithms are not the callback algorithm, whatever they are keyed with.
        let hs512 = forge(
            &json!({"alg": "HS512", "typ": "JWT", "kid": "ed"}),
            &claims,
            |input| {
                hmac::sign(&hmac::Key::new(hmac::HMAC_SHA512, &x), input)
                    .as_ref()
                    .to_vec()
            },
        );
        assert_eq!(
            ed.verify_callback_token(&hs512, LEEWAY),
            Err(KeyError::WrongAlgorithm)
        );
        // And a key's token presented under another key's kid and algorithm.
        let both =
            keyset("pacer", &[("ed", ED25519_V1_PEM), ("rsa", RSA_PKCS8_PEM)]).expect("loads");
        let swapped = signed("rsa", Algorithm::EdDSA, ED25519_V1_PEM, &claims);
        assert_eq!(
            both.verify_callback_token(&swapped, LEEWAY),
            Err(KeyError::WrongAlgorithm)
        );

        // Unknown or missing kid.
        let unknown = signed("someone", Algorithm::EdDSA, ED25519_V1_PEM, &claims);
        assert_eq!(
            ed.verify_callback_token(&unknown, LEEWAY),
            Err(KeyError::UnknownKey)
        );
        let key = EncodingKey::from_ed_pem(ED25519_V1_PEM.as_bytes()).expect("a key");
        let kidless =
            jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key).expect("signed");
        assert_eq!(
            ed.verify_callback_token(&kidless, LEEWAY),
            Err(KeyError::UnknownKey)
        );

        // Signed by the right key, but with claims Pacer never mints: refused alike in both
        // forms.
        let with = |patch: Value| {
            let mut claims = claims.clone();
            for (name, value) in patch.as_object().expect("an object") {
                if value.is_null() {
                    claims.as_object_mut().expect("an object").remove(name);
                } else {
                    claims[name] = value.clone();
                }
            }
            let signed = ed.verify_callback_token(
                &signed("ed", Algorithm::EdDSA, ED25519_V1_PEM, &claims),
                LEEWAY,
            );
            let maced = ed.verify_callback_token(&maced(&ed, "ed", &claims), LEEWAY);
            assert_eq!(signed, maced, "{claims}");
            maced
        };
        assert_eq!(
            with(json!({"exp": null})),
            Err(KeyError::Claims("a required claim is missing"))
        );
        assert_eq!(
            with(json!({"iat": null})),
            Err(KeyError::Claims("`iat` is missing"))
        );
        assert_eq!(
            with(json!({"iat": now + 3600})),
            Err(KeyError::Claims("`iat` is in the future"))
        );
        assert_eq!(
            with(json!({"nbf": now + 3600})),
            Err(KeyError::Claims("the token is not yet valid (`nbf`)"))
        );
        assert_eq!(
            with(json!({"sub": "not-a-task"})),
            Err(KeyError::Claims("`sub` is not a task id"))
        );
        assert_eq!(
            with(json!({"aud": ["someone", CALLBACK_AUDIENCE]})),
            Ok(task)
        );
        // jsonwebtoken counts an `exp` that is not a number as absent.
        assert_eq!(
            with(json!({"exp": "soon"})),
            Err(KeyError::Claims("a required claim is missing"))
        );
        assert_eq!(
            ed.verify_callback_token("not.a-token", LEEWAY),
            Err(KeyError::Malformed)
        );
        assert_eq!(
            ed.verify_callback_token("", LEEWAY),
            Err(KeyError::Malformed)
        );
    }

    #[test]
    fn unusable_keys_are_refused_without_echoing_key_material() {
        assert_eq!(keyset("pacer", &[]).err(), Some(KeyError::NoKeys));
        assert_eq!(
            keyset("pacer", &[(" ", ED25519_V1_PEM)]).err(),
            Some(KeyError::EmptyKid)
        );
        assert_eq!(
            keyset("pacer", &[("a", ED25519_V1_PEM), ("a", RSA_PKCS1_PEM)]).err(),
            Some(KeyError::DuplicateKid("a".into()))
        );
        let refused = [
            ("public", RSA_PUBLIC_PEM, "not a private key"),
            ("ec", EC_P256_PEM, "neither Ed25519 nor RSA"),
            ("small", RSA_1024_PEM, "1024 bits"),
            (
                "garbage",
                "MC4CAQAwBQYDK2VwBCIEIHJn3eaYJMwKeuECcjAy6Tn7mHwpOlP60GFcb1wZIiYW",
                "not a PEM block",
            ),
        ];
        for (kid, pem, reason) in refused {
            let error = keyset("pacer", &[(kid, pem)]).expect_err(kid);
            let message = error.to_string();
            assert!(
                matches!(&error, KeyError::InvalidKey { kid: k, .. } if k == kid),
                "{error:?}"
            );
            assert!(message.contains(reason), "{kid}: {message}");
            for line in pem.lines().filter(|line| !line.starts_with("-----")) {
                assert!(
                    !message.contains(line) && !format!("{error:?}").contains(line),
                    "{kid}: {message}"
                );
            }
        }
    }

    #[test]
    fn debug_names_the_keys_without_their_material() {
        let keys =
            keyset("pacer", &[("ed", ED25519_V1_PEM), ("rsa", RSA_PKCS1_PEM)]).expect("loads");
        let debug = format!("{keys:?}");
        assert!(
            debug.contains("pacer")
                && debug.contains("ed (EdDSA)")
                && debug.contains("rsa (RS256)"),
            "{debug}"
        );
        let jwks = keys.jwks();
        let public = [
            published_key(&jwks, "ed")["x"].clone(),
            published_key(&jwks, "rsa")["n"].clone(),
        ];
        for pem in [ED25519_V1_PEM, RSA_PKCS1_PEM] {
            for line in pem.lines().filter(|line| !line.starts_with("-----")) {
                assert!(!debug.contains(line), "{debug}");
            }
        }
        for value in public {
            let value = value.as_str().expect("a string");
            assert!(!debug.contains(&value[..16]), "{debug}");
        }
    }

    #[test]
    fn hmac_signatures_match_the_known_answer_and_verify_strictly() {
        let body = br#"{"a":1}"#;
        let tolerance = Duration::from_secs(300);
        // python3 -c 'import hmac,hashlib; print(hmac.new(b"secret", b"1700000000.{\"a\":1}", hashlib.sha256).hexdigest())'
        const TAG: &str = "49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686";
        let expected = format!("t=1700000000,v1={TAG}");
        assert_eq!(hmac_signature(b"secret", 1_700_000_000, body), expected);

        let verify = |secret: &[u8], header: &str, body: &[u8], now: i64| {
            verify_hmac_signature(secret, header, body, now, tolerance)
        };
        assert!(verify(b"secret", &expected, body, 1_700_000_000));
        assert!(verify(b"secret", &expected, body, 1_700_000_300));
        assert!(verify(b"secret", &expected, body, 1_699_999_700));
        let upper = format!("t=1700000000,v1={}", TAG.to_uppercase());
        assert!(verify(b"secret", &upper, body, 1_700_000_000));
        let extended = format!("t=1700000000, v1=00ff, v1={TAG}, v2=later");
        assert!(verify(b"secret", &extended, body, 1_700_000_000));

        assert!(
            !verify(b"secret", &expected, br#"{"a":2}"#, 1_700_000_000),
            "tampered body"
        );
        assert!(
            !verify(b"secreT", &expected, body, 1_700_000_000),
            "wrong secret"
        );
        assert!(
            !verify(b"secret", &expected, body, 1_700_000_301),
            "too late"
        );
        assert!(
            !verify(b"secret", &expected, body, 1_699_999_699),
            "too early"
        );
        let moved = format!("t=1700000100,v1={TAG}");
        assert!(
            !verify(b"secret", &moved, body, 1_700_000_100),
            "the timestamp is signed"
        );
        for malformed in [
            String::new(),
            "garbage".to_owned(),
            "t=1700000000".to_owned(),
            format!("v1={TAG}"),
            format!("t=soon,v1={TAG}"),
            format!("t=1700000000,v1={}", &TAG[1..]),
            format!("t=1700000000,v1=zz{}", &TAG[2..]),
            format!("t=1700000000,t=1700000000,v1={TAG}"),
            format!("t=1700000000,v1={TAG},v1"),
        ] {
            assert!(
                !verify(b"secret", &malformed, body, 1_700_000_000),
                "{malformed}"
            );
        }
    }
}
