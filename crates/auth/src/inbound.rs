//! Verifying the bearer tokens callers present. Each configured issuer has exactly one kind of
//! key, and the token's algorithm must be that key's: an HS256 secret, one public key (RS256,
//! ES256 or EdDSA), or a JWKS URL (asymmetric keys only, fetched with caching, refreshed when an
//! unknown `kid` appears, at a bounded rate). `none` is never accepted, and a token can never
//! pick its own key type. A caller usually presents the same token on many requests, so a token
//! that verified is remembered (by its SHA-256, never the token itself) until it expires, for at
//! most a minute, never past the time its JWKS is due to be fetched again (so never past the key
//! that verified it), and forgotten whenever a JWKS is fetched again (a key may have been
//! withdrawn). A token whose `crit` header names any extension is refused: Pacer understands
//! none.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Who may do what. `admin` may do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Systems that create tasks and post messages.
    Upstream,
    /// Services that report on tasks.
    Downstream,
    /// People who read, run, pause, cancel and retry.
    Operator,
    /// People who define jobs and triggers; may do everything.
    Admin,
}

impl Role {
    /// The claim value naming the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Upstream => "upstream",
            Role::Downstream => "downstream",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The role a claim value names, if any.
    pub fn parse(text: &str) -> Option<Role> {
        [
            Role::Upstream,
            Role::Downstream,
            Role::Operator,
            Role::Admin,
        ]
        .into_iter()
        .find(|r| r.as_str() == text)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`.
    pub subject: String,
    /// The token's `iss`.
    pub issuer: String,
    pub roles: Vec<Role>,
}

impl Principal {
    /// True when the caller holds `role`, or `admin`.
    pub fn may(&self, role: Role) -> bool {
        self.roles.iter().any(|r| *r == role || *r == Role::Admin)
    }
}

/// The key of one trusted issuer.
#[derive(Clone)]
pub enum IssuerKey {
    /// A shared HS256 secret.
    Hs256(SecretString),
    /// One public key in PEM, used with exactly `algorithm`. With a `kid`, a token naming
    /// another `kid` is refused (one without a `kid` is checked against the key).
    PublicKey {
        algorithm: Algorithm,
        pem: String,
        kid: Option<String>,
    },
    /// Keys published at a JWKS URL.
    Jwks { url: String },
}

impl fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IssuerKey::Hs256(_) => f.write_str("Hs256(<secret>)"),
            IssuerKey::PublicKey { algorithm, kid, .. } => {
                write!(f, "PublicKey({algorithm:?}, kid {kid:?})")
            }
            IssuerKey::Jwks { url } => write!(f, "Jwks({url})"),
        }
    }
}

/// One trusted issuer: tokens must carry this `iss` and this `aud`.
#[derive(Debug, Clone)]
pub struct Issuer {
    pub issuer: String,
    pub audience: String,
    pub key: IssuerKey,
}

/// How tokens are checked.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    pub issuers: Vec<Issuer>,
    /// The claim holding roles: an array of role names, or a space-separated string (`scope`).
    pub role_claim: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Least time between two fetches of one JWKS (refreshes on unknown `kid` wait this long).
    pub jwks_min_refresh: Duration,
    /// A fetched JWKS is refreshed after this long.
    pub jwks_max_age: Duration,
}

/// Why a token was refused. `Display` never includes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("the token is invalid: {0}")]
    Invalid(String),
    #[error("the token does not grant the `{0}` role")]
    Forbidden(Role),
    #[error("{0}")]
    WrongTask(String),
}

impl AuthError {
    /// True for 401 (not authenticated), false for 403 (authenticated, not allowed).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, AuthError::Missing | AuthError::Invalid(_))
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

enum Keys {
    Fixed {
        algorithm: Algorithm,
        key: DecodingKey,
        kid: Option<String>,
    },
    Jwks(Mutex<JwksCache>),
}

struct JwksCache {
    url: String,
    keys: Option<JwkSet>,
    fetched_at: Option<Instant>,
}

struct Trusted {
    issuer: Issuer,
    keys: Keys,
}

/// Verifies bearer tokens; built once at start-up, cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    issuers: HashMap<String, Trusted>,
    config: VerifierConfig,
    http: reqwest::Client,
    verified: std::sync::Mutex<HashMap<[u8; 32], Verified>>,
}

/// A token that verified: who presented it, and until when that holds without checking again.
struct Verified {
    principal: Principal,
    until: Instant,
}

/// How long a verified token is taken at its word at most (a JWKS refetch forgets it sooner).
const REMEMBERED_FOR: Duration = Duration::from_secs(60);

/// The most tokens remembered; past it, all are forgotten and verified again as they come.
const REMEMBERED_TOKENS: usize = 1024;

/// Until when a token verified `now` (also `now_unix`, in seconds) may be taken at its word: not
/// past its `exp` with the `leeway` verification allows, and at most [`REMEMBERED_FOR`].
fn remember_until(now: Instant, now_unix: i64, exp: i64, leeway: Duration) -> Instant {
    let leeway = i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX);
    let left = exp.saturating_add(leeway).saturating_sub(now_unix);
    let left = Duration::from_secs(u64::try_from(left).unwrap_or(0));
    now + left.min(REMEMBERED_FOR)
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("issuers", &self.inner.config.issuers)
            .finish()
    }
}

const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl Verifier {
    /// Builds the verifier; fails on a key that does not parse or an issuer listed twice.
    pub fn new(config: VerifierConfig, http: reqwest::Client) -> Result<Self, ConfigError> {
        if config.issuers.is_empty() {
            return Err(ConfigError("no token issuer is configured".into()));
        }
        let mut issuers = HashMap::new();
        for issuer in &config.issuers {
            let keys = match &issuer.key {
                IssuerKey::Hs256(secret) => {
                    if secret.expose_secret().len() < 32 {
                        return Err(ConfigError(format!(
                            "the HS256 secret of issuer {} must be at least 32 characters",
                            issuer.issuer
                        )));
                    }
                    Keys::Fixed {
                        algorithm: Algorithm::HS256,
                        key: DecodingKey::from_secret(secret.expose_secret().as_bytes()),
                        kid: None,
                    }
                }
                IssuerKey::PublicKey {
                    algorithm,
                    pem,
                    kid,
                } => {
                    let key = match algorithm {
                        Algorithm::RS256 => DecodingKey::from_rsa_pem(pem.as_bytes()),
                        Algorithm::ES256 => DecodingKey::from_ec_pem(pem.as_bytes()),
                        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem.as_bytes()),
                        other => {
                            return Err(ConfigError(format!(
                                "issuer {}: algorithm {other:?} is not supported for a public key; use RS256, ES256 or EdDSA",
                                issuer.issuer
                            )));
                        }
                    }
                    .map_err(|e| ConfigError(format!("issuer {}: the public key does not parse: {e}", issuer.issuer)))?;
                    Keys::Fixed {
                        algorithm: *algorithm,
                        key,
                        kid: kid.clone(),
                    }
                }
                IssuerKey::Jwks { url } => Keys::Jwks(Mutex::new(JwksCache {
                    url: url.clone(),
                    keys: None,
                    fetched_at: None,
                })),
            };
            let trusted = Trusted {
                issuer: issuer.clone(),
                keys,
            };
            if issuers.insert(issuer.issuer.clone(), trusted).is_some() {
                return Err(ConfigError(format!(
                    "issuer {} is configured twice",
                    issuer.issuer
                )));
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                issuers,
                config,
                http,
                verified: std::sync::Mutex::default(),
            }),
        })
    }

    /// Verifies `token` and returns who presented it.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .unwrap_or_default();
        if let Some(principal) = self.remembered(&digest) {
            return Ok(principal);
        }
        let (principal, exp, keys_fresh_until) = self.check(token).await?;
        self.remember(digest, &principal, exp, keys_fresh_until);
        Ok(principal)
    }

    fn remembered(&self, digest: &[u8; 32]) -> Option<Principal> {
        let verified = self
            .inner
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        verified
            .get(digest)
            .filter(|v| Instant::now() < v.until)
            .map(|v| v.principal.clone())
    }

    /// Remembers a verified token until it expires, for at most [`REMEMBERED_FOR`], and never
    /// past `keys_fresh_until`: when the key set that verified it is due to be fetched again,
    /// the token is checked in full, so it triggers that fetch and a withdrawn key stops
    /// counting.
    fn remember(
        &self,
        digest: [u8; 32],
        principal: &Principal,
        exp: i64,
        keys_fresh_until: Option<Instant>,
    ) {
        let now_unix = chrono::Utc::now().timestamp();
        let mut until = remember_until(Instant::now(), now_unix, exp, self.inner.config.leeway);
        if let Some(fresh_until) = keys_fresh_until {
            until = until.min(fresh_until);
        }
        let mut verified = self
            .inner
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if verified.len() >= REMEMBERED_TOKENS {
            verified.clear();
        }
        verified.insert(
            digest,
            Verified {
                principal: principal.clone(),
                until,
            },
        );
    }

    /// Checks `token` in full: who presented it, its `exp`, and, for a JWKS issuer, until when
    /// the key set that verified it is current.
    async fn check(&self, token: &str) -> Result<(Principal, i64, Option<Instant>), AuthError> {
        let invalid = |why: &str| AuthError::Invalid(why.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
        // RFC 7515 §4.1.11: an extension named critical must be understood, and Pacer
        // understands none (an empty list is not allowed either).
        if header.crit.is_some() {
            return Err(invalid(
                "the token's `crit` header names extensions Pacer does not understand",
            ));
        }
        // The issuer only routes to the key to check against; nothing is trusted before the
        // signature has been verified with that key.
        let unverified: UnverifiedClaims = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| invalid("malformed token"))?;
        let iss = unverified
            .iss
            .ok_or_else(|| invalid("the token has no `iss`"))?;
        let trusted = self
            .inner
            .issuers
            .get(&iss)
            .ok_or_else(|| invalid("the token's issuer is not trusted"))?;
        let (algorithm, key, keys_fresh_until) = match &trusted.keys {
            Keys::Fixed {
                algorithm,
                key,
                kid,
            } => {
                if header.alg != *algorithm {
                    return Err(invalid(
                        "the token's algorithm is not the one configured for its issuer",
                    ));
                }
                if let (Some(expected), Some(named)) = (kid, &header.kid)
                    && expected != named
                {
                    return Err(invalid("the token's key (kid) is not its issuer's key"));
                }
                (*algorithm, key.clone(), None)
            }
            Keys::Jwks(cache) => {
                if !ASYMMETRIC.contains(&header.alg) {
                    return Err(invalid(
                        "the token's algorithm is not allowed for a JWKS issuer",
                    ));
                }
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| invalid("the token has no `kid`"))?;
                let (key, fresh_until) = self.jwks_key(cache, kid, header.alg).await?;
                (header.alg, key, Some(fresh_until))
            }
        };
        let config = &self.inner.config;
        let mut validation = Validation::new(algorithm);
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&trusted.issuer.issuer]);
        validation.set_audience(&[&trusted.issuer.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                let why = match e.kind() {
                    K::ExpiredSignature => "the token has expired",
                    K::ImmatureSignature => "the token is not valid yet (nbf)",
                    K::InvalidIssuer => "the token's issuer is not trusted",
                    K::InvalidAudience => "the token is not meant for Pacer (aud)",
                    K::InvalidSignature => "the token's signature does not verify",
                    K::MissingRequiredClaim(_) => {
                        "the token lacks a required claim (exp, iss, aud, sub)"
                    }
                    K::InvalidAlgorithm => "the token's algorithm is not allowed",
                    _ => "the token does not verify",
                };
                invalid(why)
            })?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let roles = match claims.get(&config.role_claim) {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(serde_json::Value::as_str)
                .filter_map(Role::parse)
                .collect(),
            Some(serde_json::Value::String(text)) => {
                text.split_whitespace().filter_map(Role::parse).collect()
            }
            _ => Vec::new(),
        };
        let exp = claims
            .get("exp")
            .and_then(|exp| exp.as_i64().or_else(|| exp.as_f64().map(|f| f as i64)))
            .unwrap_or_default();
        Ok((
            Principal {
                subject,
                issuer: iss,
                roles,
            },
            exp,
            keys_fresh_until,
        ))
    }

    /// The key `kid` of a JWKS issuer, fetching the set when it is due or lacks the key, and
    /// until when the set it came from is current (`jwks_max_age` after it was fetched).
    async fn jwks_key(
        &self,
        cache: &Mutex<JwksCache>,
        kid: &str,
        algorithm: Algorithm,
    ) -> Result<(DecodingKey, Instant), AuthError> {
        let config = &self.inner.config;
        let mut cache = cache.lock().await;
        let stale = cache
            .fetched_at
            .is_none_or(|at| at.elapsed() >= config.jwks_max_age);
        let unknown = cache
            .keys
            .as_ref()
            .is_none_or(|set| set.find(kid).is_none());
        let may_fetch = cache
            .fetched_at
            .is_none_or(|at| at.elapsed() >= config.jwks_min_refresh);
        if (stale || unknown) && may_fetch {
            match self.fetch(&cache.url).await {
                Ok(keys) => {
                    cache.keys = Some(keys);
                    cache.fetched_at = Some(Instant::now());
                    // A key may have been withdrawn: nothing verified before counts any more.
                    self.inner
                        .verified
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clear();
                }
                Err(error) => {
                    // Keep serving the keys we have; try again after the refresh interval.
                    tracing::warn!(url = %cache.url, %error, "fetching the JWKS failed");
                    cache.fetched_at = Some(Instant::now());
                }
            }
        }
        let jwk = cache
            .keys
            .as_ref()
            .and_then(|set| set.find(kid))
            .ok_or_else(|| {
                AuthError::Invalid("the token's key (kid) is not published by its issuer".into())
            })?;
        // A key that names its algorithm is used with that algorithm only.
        if let Some(declared) = jwk.common.key_algorithm
            && format!("{declared:?}") != format!("{algorithm:?}")
        {
            return Err(AuthError::Invalid(
                "the token's algorithm does not match its key".into(),
            ));
        }
        let fresh_until = cache
            .fetched_at
            .map_or_else(Instant::now, |at| at + config.jwks_max_age);
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|_| AuthError::Invalid("the issuer's key cannot be used".into()))?;
        Ok((key, fresh_until))
    }

    async fn fetch(&self, url: &str) -> Result<JwkSet, String> {
        let response = self
            .inner
            .http
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .error_for_status()
            .map_err(|e| e.to_string())?;
        response.json::<JwkSet>().await.map_err(|e| e.to_string())
    }
}

#[derive(Deserialize)]
struct UnverifiedClaims {
    iss: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-unit-test-secret-long-enough-for-hs256";

    fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    }

    fn verifier(role_claim: &str) -> Verifier {
        let issuer = Issuer {
            issuer: "idp".into(),
            audience: "pacer".into(),
            key: IssuerKey::Hs256(SECRET.to_owned().into()),
        };
        let config = VerifierConfig {
            issuers: vec![issuer],
            role_claim: role_claim.into(),
            leeway: Duration::from_secs(5),
            jwks_min_refresh: Duration::from_secs(30),
            jwks_max_age: Duration::from_secs(600),
        };
        Verifier::new(config, client()).expect("verifier")
    }

    fn token(claims: serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("token")
    }

    fn claims(extra: serde_json::Value) -> serde_json::Value {
        let now = chrono::Utc::now().timestamp();
        let mut claims =
            serde_json::json!({ "iss": "idp", "aud": "pacer", "sub": "alice", "exp": now + 60 });
        if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
            claims.extend(extra.clone());
        }
        claims
    }

    fn digest(token: &str) -> [u8; 32] {
        ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .expect("32 bytes")
    }

    #[test]
    fn a_token_is_remembered_until_its_expiry_and_at_most_a_minute() {
        let now = Instant::now();
        let leeway = Duration::from_secs(5);
        let at = 1_000_000;
        assert_eq!(
            remember_until(now, at, at + 3600, leeway),
            now + REMEMBERED_FOR
        );
        assert_eq!(
            remember_until(now, at, at + 10, leeway),
            now + Duration::from_secs(15)
        );
        assert_eq!(remember_until(now, at, at - 5, leeway), now);
        assert_eq!(remember_until(now, at, at - 3600, leeway), now);
    }

    #[tokio::test]
    async fn a_verified_token_answers_from_memory_until_its_time_and_a_refused_one_never() {
        let verifier = verifier("roles");
        let good = token(claims(serde_json::json!({ "roles": ["upstream"] })));
        let principal = verifier.verify(&good).await.expect("verifies");
        assert_eq!(verifier.remembered(&digest(&good)), Some(principal.clone()));
        assert_eq!(verifier.verify(&good).await, Ok(principal));

        let expired = token(claims(
            serde_json::json!({ "exp": chrono::Utc::now().timestamp() - 60 }),
        ));
        assert!(verifier.verify(&expired).await.is_err());
        assert_eq!(verifier.remembered(&digest(&expired)), None);
        // A token with the right claims but another signature is its own entry, refused.
        let (body, _) = good.rsplit_once('.').expect("three parts");
        let forged = format!("{body}.{}", "A".repeat(43));
        assert!(verifier.verify(&forged).await.is_err());

        // Once its time is up, the token is not taken at its word: it is checked again.
        if let Some(entry) = verifier
            .inner
            .verified
            .lock()
            .expect("not poisoned")
            .get_mut(&digest(&good))
        {
            entry.until = Instant::now();
        }
        assert_eq!(verifier.remembered(&digest(&good)), None);
    }

    #[tokio::test]
    async fn roles_come_from_an_array_or_a_space_separated_scope() {
        let array = verifier("roles")
            .verify(&token(claims(
                serde_json::json!({ "roles": ["operator", "wizard"] }),
            )))
            .await;
        assert_eq!(
            array.expect("valid").roles,
            [Role::Operator],
            "unknown role names are ignored"
        );
        let scope = verifier("scope")
            .verify(&token(claims(
                serde_json::json!({ "scope": "upstream admin" }),
            )))
            .await;
        let principal = scope.expect("valid");
        assert_eq!(principal.roles, [Role::Upstream, Role::Admin]);
        assert!(principal.may(Role::Downstream), "admin may do everything");
        let none = verifier("roles")
            .verify(&token(claims(serde_json::json!({}))))
            .await
            .expect("valid");
        assert!(
            !none.may(Role::Operator),
            "a token without roles grants nothing"
        );
    }

    #[test]
    fn a_short_secret_or_a_twice_listed_issuer_is_refused() {
        let issuer = |secret: &str| Issuer {
            issuer: "idp".into(),
            audience: "pacer".into(),
            key: IssuerKey::Hs256(secret.to_owned().into()),
        };
        let config = |issuers| VerifierConfig {
            issuers,
            role_claim: "roles".into(),
            leeway: Duration::ZERO,
            jwks_min_refresh: Duration::ZERO,
            jwks_max_age: Duration::ZERO,
        };
        assert!(Verifier::new(config(vec![issuer("short")]), client()).is_err());
        assert!(Verifier::new(config(vec![issuer(SECRET), issuer(SECRET)]), client()).is_err());
        assert!(Verifier::new(config(vec![]), client()).is_err());
        assert!(
            format!("{:?}", issuer(SECRET)).contains("<secret>"),
            "Debug hides the secret"
        );
    }
}
