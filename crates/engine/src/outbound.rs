//! What a dispatch carries to prove it comes from Pacer: the job's outbound auth (a configured
//! bearer secret, a short-lived JWT signed by Pacer, an HMAC signature over the body, or an
//! OAuth2 access token), and the per-task callback token in the body.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pacer_auth::signing::{Keyset, SIGNATURE_HEADER, hmac_signature};
use pacer_domain::{OutboundAuth, TaskId};
use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

use crate::oauth2::{TokenKey, Tokens};

/// How long a JWT on a dispatch stays valid.
const DISPATCH_TOKEN_TTL: Duration = Duration::from_secs(300);

/// A callback token outlives the task's timeout by this much, so a late callback is answered
/// `409` with the task's state rather than `401`.
const CALLBACK_GRACE: chrono::Duration = chrono::Duration::hours(1);

/// Pacer's keys, the named secrets jobs may use, and the OAuth2 access tokens this node holds
/// (shared by every clone); cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    keyset: Keyset,
    secrets: Arc<HashMap<String, SecretString>>,
    tokens: Tokens,
}

/// An OAuth2 access token a request carries, to hand back with [`Outbound::refused`] when the
/// downstream answers `401`.
pub(crate) struct Granted {
    key: TokenKey,
    token: Arc<SecretString>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&String> = self.secrets.keys().collect();
        f.debug_struct("Outbound")
            .field("keyset", &self.keyset)
            .field("secrets", &names)
            .finish()
    }
}

impl Outbound {
    /// Signs with `keyset`; `secrets` maps names to values.
    pub fn new(keyset: Keyset, secrets: HashMap<String, SecretString>) -> Self {
        Self {
            keyset,
            secrets: Arc::new(secrets),
            tokens: Tokens::default(),
        }
    }

    /// A callback token for `task`, valid until after its hard timeout.
    pub(crate) fn callback_token(
        &self,
        task: TaskId,
        timeout_at: DateTime<Utc>,
    ) -> Result<String, String> {
        self.keyset
            .mint_callback_token(task, timeout_at + CALLBACK_GRACE)
            .map_err(|e| format!("minting the callback token failed: {e}"))
    }

    /// The headers `auth` adds to a dispatch of `task` whose body is `body`, but for an OAuth2
    /// access token, which [`Outbound::authorize`] adds when the request is sent. An error (a
    /// secret missing from this node's configuration) fails the attempt as transient, so a node
    /// configured correctly, or this one once fixed, can dispatch it.
    pub(crate) fn headers(
        &self,
        auth: &OutboundAuth,
        task: TaskId,
        body: &[u8],
    ) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
        self.headers_for(auth, &task.to_string(), body)
    }

    /// Every header `auth` adds to a call about `subject` (a signed JWT names it as its `sub`),
    /// an OAuth2 access token included.
    pub(crate) async fn all_headers_for(
        &self,
        client: &reqwest::Client,
        auth: &OutboundAuth,
        subject: &str,
        body: &[u8],
    ) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
        let mut headers = self.headers_for(auth, subject, body)?;
        if let Some((_, header)) = self.authorize(client, auth).await? {
            headers.push((AUTHORIZATION, header));
        }
        Ok(headers)
    }

    /// For an `oauth2` auth, the `Authorization` header carrying this node's access token
    /// (fetched first when it holds none that is fresh), and the token to hand back with
    /// [`Outbound::refused`] if the downstream answers `401`; `None` for any other auth. An error
    /// (the token endpoint failing, the client secret not configured) names the token URL.
    pub(crate) async fn authorize(
        &self,
        client: &reqwest::Client,
        auth: &OutboundAuth,
    ) -> Result<Option<(Granted, HeaderValue)>, String> {
        let OutboundAuth::OAuth2 {
            token_url,
            client_id,
            client_secret,
            scope,
            audience,
        } = auth
        else {
            return Ok(None);
        };
        let secret = self.secrets.get(client_secret).ok_or_else(|| {
            format!("oauth2 token from {token_url}: the job's client secret `{client_secret}` is not configured on this node")
        })?;
        let key = TokenKey {
            token_url: token_url.clone(),
            client_id: client_id.clone(),
            scope: scope.clone(),
            audience: audience.clone(),
        };
        let token = self.tokens.token(client, &key, secret).await?;
        let mut header = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
            .map_err(|_| {
                format!(
                    "oauth2 token from {token_url}: the access token is not a valid header value"
                )
            })?;
        header.set_sensitive(true);
        Ok(Some((Granted { key, token }, header)))
    }

    /// A downstream refused `granted` (`401`): the next [`Outbound::authorize`] fetches a new
    /// token, unless another refusal already did.
    pub(crate) async fn refused(&self, granted: &Granted) {
        self.tokens.refused(&granted.key, &granted.token).await;
    }

    /// Like [`Outbound::headers`], for a call about `subject` rather than a task (a signed JWT
    /// names it as its `sub`).
    pub(crate) fn headers_for(
        &self,
        auth: &OutboundAuth,
        subject: &str,
        body: &[u8],
    ) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
        let secret = |name: &str| {
            self.secrets.get(name).ok_or_else(|| {
                format!("the job's outbound secret `{name}` is not configured on this node")
            })
        };
        let value = |text: String| {
            HeaderValue::from_str(&text)
                .map_err(|_| "the outbound credential is not a valid header value".to_owned())
        };
        Ok(match auth {
            // The access token is added when the request is sent.
            OutboundAuth::None {} | OutboundAuth::OAuth2 { .. } => Vec::new(),
            OutboundAuth::Bearer { secret: name } => {
                let mut header = value(format!("Bearer {}", secret(name)?.expose_secret()))?;
                header.set_sensitive(true);
                vec![(AUTHORIZATION, header)]
            }
            OutboundAuth::Jwt { audience } => {
                let token = self
                    .keyset
                    .sign_outbound(audience, subject, DISPATCH_TOKEN_TTL)
                    .map_err(|e| format!("signing the dispatch token failed: {e}"))?;
                let mut header = value(format!("Bearer {token}"))?;
                header.set_sensitive(true);
                vec![(AUTHORIZATION, header)]
            }
            OutboundAuth::Hmac { secret: name } => {
                let signature = hmac_signature(
                    secret(name)?.expose_secret().as_bytes(),
                    Utc::now().timestamp(),
                    body,
                );
                vec![(HeaderName::from_static(SIGNATURE_HEADER), value(signature)?)]
            }
        })
    }
}
