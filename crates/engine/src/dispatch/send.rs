//! Sending a prepared dispatch, over HTTP or AMQP, and classifying what the downstream answered
//! (DESIGN §6's table, through [`classify_status`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use pacer_domain::dispatch::{DispatchOutcome, Report, ResponseClass};
use pacer_domain::{AmqpTarget, Span, classify_status};
use pacer_store::ClaimedTask;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER};

use super::request::Prepared;
use crate::amqp::Publisher;
use crate::outbound::Outbound;

/// Sends a prepared dispatch and classifies the answer; at most `max_response_bytes` of the
/// answer's body are read (to look for a status report).
///
/// A target with `oauth2` auth gets this node's access token first (a token endpoint failing
/// is a transient error naming it); when the downstream answers `401`, the token is dropped, a
/// new one fetched and the request sent once more, and that answer is the dispatch's.
pub(crate) async fn send(
    task: &ClaimedTask,
    prepared: Prepared,
    client: &reqwest::Client,
    outbound: &Outbound,
    publisher: &Publisher,
    max_response_bytes: usize,
) -> DispatchOutcome {
    let (mut request, auth) = match prepared {
        Prepared::Http { request, auth } => (request, auth),
        Prepared::Amqp {
            target,
            body,
            headers,
        } => return publish(task, &target, &headers, &body, publisher).await,
    };
    let timeout = task.job.dispatch_timeout;
    let token_failed = |status: Option<u16>, error: String| DispatchOutcome::Transient {
        status,
        error,
        retry_after: None,
    };
    let mut granted = None;
    if let Some(auth) = &auth {
        match outbound.authorize(client, auth).await {
            Ok(Some((token, header))) => {
                request.headers_mut().insert(AUTHORIZATION, header);
                granted = Some(token);
            }
            Ok(None) => {}
            Err(error) => return token_failed(None, error),
        }
    }
    // A body held in memory clones; kept for one more try should the token be refused.
    let again = granted.as_ref().and_then(|_| request.try_clone());
    let mut response = match client.execute(request).await {
        Ok(response) => response,
        Err(error) => {
            return DispatchOutcome::Transient {
                status: None,
                error: describe(&error, timeout),
                retry_after: None,
            };
        }
    };
    if response.status() == StatusCode::UNAUTHORIZED
        && let (Some(refused), Some(auth), Some(mut again)) = (granted, &auth, again)
    {
        outbound.refused(&refused).await;
        match outbound.authorize(client, auth).await {
            Ok(Some((_, header))) => {
                again.headers_mut().insert(AUTHORIZATION, header);
            }
            Ok(None) => {}
            Err(error) => return token_failed(Some(StatusCode::UNAUTHORIZED.as_u16()), error),
        }
        response = match client.execute(again).await {
            Ok(response) => response,
            Err(error) => {
                return DispatchOutcome::Transient {
                    status: None,
                    error: describe(&error, timeout),
                    retry_after: None,
                };
            }
        };
    }
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(parse_retry_after);
    let body = match read_limited(response, max_response_bytes).await {
        Ok(body) => body,
        Err(error) => {
            return DispatchOutcome::Transient {
                status: Some(status.as_u16()),
                error: describe(&error, timeout),
                retry_after: None,
            };
        }
    };
    let summary = || {
        let text = String::from_utf8_lossy(&body);
        let text: String = text.chars().take(300).collect();
        if text.trim().is_empty() {
            status.to_string()
        } else {
            format!("{status}: {}", text.trim())
        }
    };
    match classify_status(status.as_u16(), &task.job.retry) {
        ResponseClass::Accepted => DispatchOutcome::Accepted {
            status: status.as_u16(),
            report: serde_json::from_slice::<Report>(&body)
                .ok()
                .map(Report::without_bad_fingerprint),
        },
        ResponseClass::AlreadyRunning => DispatchOutcome::AlreadyRunning,
        ResponseClass::Transient => DispatchOutcome::Transient {
            status: Some(status.as_u16()),
            error: summary(),
            retry_after,
        },
        ResponseClass::Permanent => DispatchOutcome::Permanent {
            status: status.as_u16(),
            error: summary(),
        },
    }
}

/// Publishes the dispatch to the job's exchange: the same body, and as AMQP headers the trace
/// context, the job's static headers and `idempotency-key`.
async fn publish(
    task: &ClaimedTask,
    target: &AmqpTarget,
    trace: &HeaderMap,
    body: &[u8],
    publisher: &Publisher,
) -> DispatchOutcome {
    let mut headers: Vec<(String, String)> = trace
        .iter()
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    headers.extend(target.headers.iter().map(|(n, v)| (n.clone(), v.clone())));
    headers.push(("idempotency-key".into(), task.id.to_string()));
    publisher
        .publish(
            target,
            headers,
            &task.id.to_string(),
            body,
            task.job.dispatch_timeout.as_duration(),
        )
        .await
}

/// Reads at most `limit` bytes of a response body; the rest is dropped.
async fn read_limited(mut response: reqwest::Response, limit: usize) -> reqwest::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    Ok(body)
}

/// A one-line description of a failed request, with its cause.
pub(crate) fn describe(error: &reqwest::Error, timeout: Span) -> String {
    if error.is_timeout() {
        return format!("no answer within the dispatch timeout ({timeout})");
    }
    let text = if error.is_connect() {
        "connection failed".to_owned()
    } else {
        error.to_string()
    };
    crate::with_causes(text, error)
}

/// `Retry-After` as delay-seconds or an HTTP date.
fn parse_retry_after(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(text).ok()?;
    (at.with_timezone(&Utc) - Utc::now()).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("120")),
            Some(Duration::from_secs(120))
        );
        let later = (Utc::now() + chrono::Duration::seconds(90))
            .to_rfc2822()
            .replace("+0000", "GMT");
        let parsed = parse_retry_after(&HeaderValue::from_str(&later).expect("header"));
        assert!(
            parsed.is_some_and(|d| d > Duration::from_secs(80) && d <= Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(parse_retry_after(&HeaderValue::from_static("soon")), None);
    }
}
