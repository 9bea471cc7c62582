//! Loading Pacer's signing keys: parsing each PEM once, deriving its public JWK and its
//! callback secret, checking it signs, and signing JWTs with it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signer;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, OctetKeyPairParameters,
    OctetKeyPairType, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::Serialize;

use super::callback::{CALLBACK_ALGORITHM, callback_secret};
use super::hmac::to_hex;
use std::sync::Arc;

use super::{Inner, KeyError, Keyset};

/// RSA keys shorter than this are refused (NIST SP 800-131A).
const MIN_RSA_BITS: usize = 2048;

/// One of Pacer's keys, parsed once at start-up.
pub(super) struct SigningKey {
    pub(super) kid: String,
    pub(super) algorithm: Algorithm,
    /// What signs this key's JWTs: an Ed25519 key is held parsed (deriving its public half is
    /// the dearest part of signing), an RSA key as jsonwebtoken's encoding key.
    signer: KeySigner,
    /// Built from the published JWK, so what verifies here is what downstreams see.
    pub(super) decoding: DecodingKey,
    /// The HS256 secret of callback tokens, from [`callback_secret`], to mint and to verify.
    callback_encoding: EncodingKey,
    pub(super) callback_decoding: DecodingKey,
}

/// How a key signs.
enum KeySigner {
    Ed25519(Box<ed25519_dalek::SigningKey>),
    Encoding(EncodingKey),
}

impl Keyset {
    /// Keys from (kid, PEM private key) pairs: Ed25519 (PKCS#8 `PRIVATE KEY`, v1 or v2) signs
    /// EdDSA, RSA of at least 2048 bits (`RSA PRIVATE KEY` or PKCS#8) signs RS256. kids must be
    /// unique and non-empty, and there must be at least one key. Each key signs and verifies a
    /// probe here, so a key that loads is a key that works, and derives its callback secret.
    pub fn from_pems(issuer: &str, keys: &[(String, SecretString)]) -> Result<Keyset, KeyError> {
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
        let signer = if algorithm == Algorithm::EdDSA {
            let parsed = ed25519_dalek::SigningKey::from_pkcs8_der(der)
                .map_err(|e| invalid(format!("not a usable Ed25519 key: {e}")))?;
            KeySigner::Ed25519(Box::new(parsed))
        } else {
            KeySigner::Encoding(encoding)
        };
        let key = SigningKey {
            kid: kid.to_owned(),
            algorithm,
            signer,
            decoding,
            callback_encoding: EncodingKey::from_secret(secret.as_ref()),
            callback_decoding: DecodingKey::from_secret(secret.as_ref()),
        };
        Ok((key, jwk))
    }

    /// A JWT over `claims` under this key's `kid`, signed with the key itself.
    pub(super) fn sign(&self, claims: &impl Serialize) -> Result<String, KeyError> {
        match &self.signer {
            KeySigner::Encoding(encoding) => encode(&self.kid, self.algorithm, encoding, claims),
            KeySigner::Ed25519(key) => {
                let mut header = Header::new(Algorithm::EdDSA);
                header.kid = Some(self.kid.clone());
                let json = |value: serde_json::Result<Vec<u8>>| {
                    value
                        .map(|json| URL_SAFE_NO_PAD.encode(json))
                        .map_err(|e| KeyError::Signing(e.to_string()))
                };
                // The signing input as jsonwebtoken writes it: base64url JSON header and claims.
                let input = format!(
                    "{}.{}",
                    json(serde_json::to_vec(&header))?,
                    json(serde_json::to_vec(claims))?
                );
                let signature = key.sign(input.as_bytes());
                Ok(format!(
                    "{input}.{}",
                    URL_SAFE_NO_PAD.encode(signature.to_bytes())
                ))
            }
        }
    }

    /// A JWT over `claims` under this key's `kid`, HS256 with its callback secret.
    pub(super) fn mac(&self, claims: &impl Serialize) -> Result<String, KeyError> {
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
