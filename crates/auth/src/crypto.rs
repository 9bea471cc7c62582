//! The JWT crypto of the process: jsonwebtoken's RustCrypto provider, with Ed25519 keys kept
//! parsed between tokens.
//!
//! jsonwebtoken builds a signer or a verifier from a key's bytes for every token. For Ed25519
//! that is the dearest part of signing (deriving the public key is a scalar multiplication) and a
//! good part of verifying (decompressing the public key). A node signs outbound JWTs, and checks
//! callback tokens of the earlier, signed form, always with the same few keys, so the parsed keys
//! are kept, by their bytes. Every other algorithm goes to the RustCrypto provider unchanged.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Once, PoisonError};

use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, rust_crypto};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};

/// The most keys of one kind kept; past it, the kept keys are dropped and parsed again as used.
/// Keys change only when they are rotated, so this is never reached in practice.
const KEPT_KEYS: usize = 64;

static PROVIDER: LazyLock<CryptoProvider> = LazyLock::new(|| CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    key_utils: rust_crypto::DEFAULT_PROVIDER.key_utils.clone(),
});

static SIGNING: Kept<SigningKey> = Kept::new();
static VERIFYING: Kept<VerifyingKey> = Kept::new();

/// Makes this the process's provider, once, before any token is signed or verified. Should
/// something else have installed one first, that one stays: tokens still work, only slower.
pub(crate) fn install() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        if CryptoProvider::install_default(&PROVIDER).is_err() {
            tracing::debug!(
                "another JWT crypto provider is installed; Ed25519 keys are parsed per token"
            );
        }
    });
}

fn signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    if *algorithm != Algorithm::EdDSA || key.family() != AlgorithmFamily::Ed {
        return (rust_crypto::DEFAULT_PROVIDER.signer_factory)(algorithm, key);
    }
    let key = SIGNING
        .get(key.as_bytes(), |der| SigningKey::from_pkcs8_der(der).ok())
        .ok_or(ErrorKind::InvalidEddsaKey)?;
    Ok(Box::new(EdSigner(key)))
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    if *algorithm != Algorithm::EdDSA || key.family() != AlgorithmFamily::Ed {
        return (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(algorithm, key);
    }
    let key = VERIFYING
        .get(key.try_get_as_bytes()?, |bytes| {
            let bytes: &[u8; 32] = bytes.get(..32)?.try_into().ok()?;
            VerifyingKey::from_bytes(bytes).ok()
        })
        .ok_or(ErrorKind::InvalidEddsaKey)?;
    Ok(Box::new(EdVerifier(key)))
}

/// Parsed keys by the bytes they were parsed from.
struct Kept<K>(Mutex<Option<HashMap<Vec<u8>, Arc<K>>>>);

impl<K> Kept<K> {
    const fn new() -> Self {
        Self(Mutex::new(None))
    }

    /// The key parsed from `bytes`, parsing it with `parse` the first time; `None` if it does
    /// not parse (which is not kept).
    fn get(&self, bytes: &[u8], parse: impl FnOnce(&[u8]) -> Option<K>) -> Option<Arc<K>> {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = kept.get_or_insert_with(HashMap::new);
        if let Some(key) = kept.get(bytes) {
            return Some(Arc::clone(key));
        }
        let key = Arc::new(parse(bytes)?);
        if kept.len() >= KEPT_KEYS {
            kept.clear();
        }
        kept.insert(bytes.to_vec(), Arc::clone(&key));
        Some(key)
    }
}

struct EdSigner(Arc<SigningKey>);

impl Signer<Vec<u8>> for EdSigner {
    fn try_sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        Ok(self.0.sign(message).to_bytes().to_vec())
    }
}

impl JwtSigner for EdSigner {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

struct EdVerifier(Arc<VerifyingKey>);

impl Verifier<Vec<u8>> for EdVerifier {
    fn verify(
        &self,
        message: &[u8],
        signature: &Vec<u8>,
    ) -> std::result::Result<(), signature::Error> {
        self.0.verify(message, &Signature::from_slice(signature)?)
    }
}

impl JwtVerifier for EdVerifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{Header, Validation};
    use pacer_domain::TaskId;
    use secrecy::SecretString;
    use serde_json::{Value, json};

    use super::*;
    use crate::signing::{CALLBACK_AUDIENCE, Keyset, generate_ed25519_pem};

    fn kept<K>(kept: &Kept<K>) -> usize {
        kept.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, HashMap::len)
    }

    #[test]
    fn ed25519_tokens_are_signed_and_verified_with_kept_keys() {
        let pem = generate_ed25519_pem();
        let keys = Keyset::from_pems(
            "pacer",
            &[("ed".to_owned(), SecretString::from(pem.clone()))],
        )
        .expect("loads");
        let other = Keyset::generate("pacer");
        let jwks: JwkSet = serde_json::from_value(keys.jwks()).expect("a JWKS");
        let public = DecodingKey::from_jwk(&jwks.keys[0]).expect("a decoding key");
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&["https://downstream.example"]);
        validation.set_issuer(&["pacer"]);
        // A callback token in the form earlier versions minted, checked with the public key.
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("ed".to_owned());
        let private = EncodingKey::from_ed_pem(pem.as_bytes()).expect("a key");
        let now = chrono::Utc::now().timestamp();
        let outbound = |keys: &Keyset| {
            keys.sign_outbound(
                "https://downstream.example",
                "subject",
                Duration::from_secs(60),
            )
            .expect("signed")
        };
        for _ in 0..3 {
            let token = outbound(&keys);
            assert!(jsonwebtoken::decode::<Value>(&token, &public, &validation).is_ok());
            // Another key's signature over the same kind of claims does not verify.
            let forged = outbound(&other);
            let (body, _) = token.rsplit_once('.').expect("three parts");
            let (_, signature) = forged.rsplit_once('.').expect("three parts");
            assert!(
                jsonwebtoken::decode::<Value>(format!("{body}.{signature}"), &public, &validation)
                    .is_err()
            );

            let task = TaskId::new();
            let claims = json!({
                "iss": "pacer", "aud": CALLBACK_AUDIENCE, "sub": task.to_string(),
                "iat": now, "exp": now + 600,
            });
            let old = jsonwebtoken::encode(&header, &claims, &private).expect("signed");
            assert_eq!(
                keys.verify_callback_token(&old, Duration::from_secs(60)),
                Ok(task)
            );
        }
        // Each key signs and verifies a probe as it loads; after that, nothing more is parsed.
        assert_eq!(kept(&SIGNING), 2, "one parsed signing key per key");
        assert_eq!(kept(&VERIFYING), 2, "one parsed public key per key");
    }

    #[test]
    fn a_kept_key_is_parsed_once_and_a_bad_one_never_kept() {
        let kept: Kept<u32> = Kept::new();
        let mut parsed = 0;
        for _ in 0..3 {
            let key = kept.get(b"seven", |_| {
                parsed += 1;
                Some(7)
            });
            assert_eq!(key.as_deref(), Some(&7));
        }
        assert_eq!(parsed, 1);
        assert!(kept.get(b"bad", |_| None).is_none());
        assert_eq!(kept.get(b"bad", |_| Some(1)).as_deref(), Some(&1));
    }
}
