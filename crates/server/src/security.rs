//! Turns the `auth`, `signing` and `secrets` configuration into the verifier, Pacer's keyset and
//! the outbound secrets; mints tokens for `pacer token` and `pacer dev`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use pacer_auth::signing::Keyset;
use pacer_auth::{Issuer, IssuerKey, Role, Verifier, VerifierConfig};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::config::{Config, IssuerSettings};

/// Everything security needs at run time, built once.
pub(crate) struct Security {
    pub(crate) verifier: Verifier,
    pub(crate) keyset: Keyset,
    pub(crate) secrets: HashMap<String, SecretString>,
}

fn issuer_key(settings: &IssuerSettings) -> anyhow::Result<IssuerKey> {
    let name = &settings.issuer;
    let pem = match (&settings.public_key_pem, &settings.public_key_file) {
        (Some(pem), None) => Some(pem.clone()),
        (None, Some(file)) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("issuer {name}: cannot read {}", file.display()))?,
        ),
        (None, None) => None,
        (Some(_), Some(_)) => {
            bail!("issuer {name}: give public_key_pem or public_key_file, not both")
        }
    };
    if settings.kid.is_some() && pem.is_none() {
        bail!(
            "issuer {name}: kid names a public key; it applies with public_key_pem or public_key_file only"
        )
    }
    match (&settings.hs256_secret, pem, &settings.jwks_url) {
        (Some(secret), None, None) => Ok(IssuerKey::Hs256(secret.clone())),
        (None, Some(pem), None) => {
            let algorithm = match settings.algorithm.as_deref() {
                Some("RS256") => jsonwebtoken::Algorithm::RS256,
                Some("ES256") => jsonwebtoken::Algorithm::ES256,
                Some("EdDSA") => jsonwebtoken::Algorithm::EdDSA,
                other => bail!(
                    "issuer {name}: a public key needs algorithm = \"RS256\", \"ES256\" or \"EdDSA\", got {other:?}"
                ),
            };
            Ok(IssuerKey::PublicKey {
                algorithm,
                pem,
                kid: settings.kid.clone(),
            })
        }
        (None, None, Some(url)) => Ok(IssuerKey::Jwks { url: url.clone() }),
        _ => {
            bail!("issuer {name}: configure exactly one of hs256_secret, a public key, or jwks_url")
        }
    }
}

/// A stable key id: a digest of the key, alike on every node.
fn key_id(pem: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, pem.trim().as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Builds the verifier, keyset and secrets, or says what is missing.
pub(crate) fn build(config: &Config, http: reqwest::Client) -> anyhow::Result<Security> {
    if config.auth.issuers.is_empty() {
        bail!(
            "no token issuer is configured: set PACER_JWT_HS256_SECRET or add [[auth.issuers]] (`pacer dev` needs neither)"
        );
    }
    let issuers = config
        .auth
        .issuers
        .iter()
        .map(|settings| {
            Ok(Issuer {
                issuer: settings.issuer.clone(),
                audience: settings.audience.clone(),
                key: issuer_key(settings)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let verifier = Verifier::new(
        VerifierConfig {
            issuers,
            role_claim: config.auth.role_claim.clone(),
            leeway: config.auth.leeway.as_duration(),
            jwks_min_refresh: config.auth.jwks_min_refresh.as_duration(),
            jwks_max_age: config.auth.jwks_max_age.as_duration(),
        },
        http,
    )
    .context("invalid auth configuration")?;
    if config.signing.keys.is_empty() {
        bail!(
            "no signing key is configured: create one with `pacer keygen > signing.pem` and set PACER_SIGNING_KEY_FILE, or add [[signing.keys]]"
        );
    }
    let mut keys = Vec::new();
    for (index, key) in config.signing.keys.iter().enumerate() {
        let pem = match (&key.private_key_pem, &key.private_key_file) {
            (Some(pem), None) => pem.expose_secret().to_owned(),
            (None, Some(file)) => std::fs::read_to_string(file)
                .with_context(|| format!("signing key {index}: cannot read {}", file.display()))?,
            _ => bail!(
                "signing key {index}: give exactly one of private_key_pem or private_key_file"
            ),
        };
        let kid = key.kid.clone().unwrap_or_else(|| key_id(&pem));
        keys.push((kid, SecretString::from(pem)));
    }
    let keyset = Keyset::from_pems(&config.signing.issuer, &keys).context("invalid signing key")?;
    let secrets = config
        .secrets
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    Ok(Security {
        verifier,
        keyset,
        secrets,
    })
}

/// Gives a development configuration what it lacks: an HS256 issuer and a signing key, both
/// random.
pub(crate) fn add_dev_keys(config: &mut Config) {
    if config.auth.issuers.is_empty() {
        let mut bytes = [0u8; 32];
        // The system generator only fails when the OS has no randomness; a fixed fallback would
        // be worse than the process refusing to run.
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .expect("the operating system provides random numbers");
        let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        config.auth.issuers.push(IssuerSettings {
            issuer: "pacer".into(),
            audience: "pacer".into(),
            hs256_secret: Some(SecretString::from(secret)),
            public_key_pem: None,
            public_key_file: None,
            algorithm: None,
            kid: None,
            jwks_url: None,
        });
    }
    if config.signing.keys.is_empty() {
        config.signing.keys.push(crate::config::SigningKeySettings {
            kid: None,
            private_key_pem: Some(SecretString::from(
                pacer_auth::signing::generate_ed25519_pem(),
            )),
            private_key_file: None,
        });
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    roles: Vec<&'static str>,
    iat: i64,
    exp: i64,
}

/// Mints a token with the HS256 secret of `issuer` (or the first HS256 issuer).
pub(crate) fn mint(
    config: &Config,
    issuer: Option<&str>,
    roles: &[Role],
    subject: &str,
    ttl: Duration,
) -> anyhow::Result<String> {
    let settings = config
        .auth
        .issuers
        .iter()
        .find(|i| i.hs256_secret.is_some() && issuer.is_none_or(|name| name == i.issuer))
        .context("no HS256 issuer is configured (set PACER_JWT_HS256_SECRET); tokens of other issuers come from their identity provider")?;
    let secret = settings
        .hs256_secret
        .as_ref()
        .context("the issuer has no HS256 secret")?;
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        iss: &settings.issuer,
        aud: &settings.audience,
        sub: subject,
        roles: roles.iter().map(|r| r.as_str()).collect(),
        iat: now,
        exp: now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
    };
    let key = jsonwebtoken::EncodingKey::from_secret(secret.expose_secret().as_bytes());
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &key,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=
-----END PUBLIC KEY-----";

    fn settings(public_key: bool, jwks: bool) -> IssuerSettings {
        IssuerSettings {
            issuer: "idp".into(),
            audience: "pacer".into(),
            hs256_secret: None,
            public_key_pem: public_key.then(|| ED25519_PUBLIC.to_owned()),
            public_key_file: None,
            algorithm: public_key.then(|| "EdDSA".to_owned()),
            kid: Some("ci-1".into()),
            jwks_url: jwks.then(|| "https://idp/jwks.json".to_owned()),
        }
    }

    #[test]
    fn a_kid_names_a_public_key_and_nothing_else() {
        match issuer_key(&settings(true, false)).expect("a public key with its kid") {
            IssuerKey::PublicKey { kid, .. } => assert_eq!(kid.as_deref(), Some("ci-1")),
            other => panic!("not a public key: {other:?}"),
        }
        let refused = issuer_key(&settings(false, true)).expect_err("a JWKS has kids of its own");
        assert!(refused.to_string().contains("kid"), "{refused}");
    }
}
