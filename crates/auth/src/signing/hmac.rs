//! HMAC-signed dispatches: the [`SIGNATURE_HEADER`](super::SIGNATURE_HEADER)(super::SIGNATURE_HEADER) over a timestamp
//! and the body, and its strict check.

use std::time::Duration;

use ring::hmac;

/// The value of the [`SIGNATURE_HEADER`](super::SIGNATURE_HEADER): `t=<unix seconds>,v1=<lowercase hex
/// HMAC-SHA256(secret, "<t>." + body)>`.
pub fn hmac_signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, &signed_message(&timestamp.to_string(), body));
    format!("t={timestamp},v1={}", to_hex(tag.as_ref()))
}

/// Checks a [`SIGNATURE_HEADER`](super::SIGNATURE_HEADER) value against `body`: true when some `v1` is the HMAC-SHA256 of
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

pub(super) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

pub(super) fn from_hex(text: &str) -> Option<Vec<u8>> {
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
