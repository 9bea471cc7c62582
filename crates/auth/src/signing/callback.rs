//! Per-task callback tokens: HS256 JWTs keyed by a secret each node derives from a signing
//! key, minted for each dispatch and checked on each callback.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, EncodingKey, Validation};
use pacer_domain::TaskId;
use ring::hmac;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::{Deserialize, Serialize};

use super::{CALLBACK_AUDIENCE, KeyError, Keyset};

/// The algorithm of the callback tokens Pacer mints, keyed by each key's derived secret.
pub(super) const CALLBACK_ALGORITHM: Algorithm = Algorithm::HS256;

/// What a key signs to derive its callback secret. It has no `.`, so it is never the signing
/// input of a JWT (`header.payload`), the only other thing Pacer signs with the key.
const CALLBACK_SECRET_MESSAGE: &[u8] = b"pacer callback token key v1";

/// The HMAC key under which that signature is condensed to the callback secret.
const CALLBACK_SECRET_LABEL: &[u8] = b"pacer callback token hs256 secret v1";

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
        // RFC 7515 §4.1.11: Pacer mints no critical extension and understands none.
        if header.crit.is_some() {
            return Err(KeyError::Critical);
        }
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
pub(super) fn callback_secret(
    encoding: &EncodingKey,
    algorithm: Algorithm,
) -> Result<hmac::Tag, String> {
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
