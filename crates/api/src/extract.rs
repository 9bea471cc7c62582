//! Extractors that turn a bad request into a problem naming what is wrong: JSON bodies (with the
//! path of the offending field), query strings, and ids in the path.

use axum::body::Bytes;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use pacer_domain::{TaskId, ValidationErrors};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{AppState, Error};

/// A JSON body. Unknown fields, wrong types and bad values become a 422 naming the field;
/// syntax errors a 400; another content type a 415. An empty body reads as `T::default()`
/// when `T` allows it (see [`JsonOrEmpty`]).
pub(crate) struct Json<T>(pub(crate) T);

/// Like [`Json`], but an empty body (or `null`) is the default value.
pub(crate) struct JsonOrEmpty<T>(pub(crate) T);

fn check_content_type(request: &Request) -> Result<(), Error> {
    let Some(value) = request.headers().get(CONTENT_TYPE) else {
        return Ok(());
    };
    let mime = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    let json = mime.eq_ignore_ascii_case("application/json")
        || mime.to_ascii_lowercase().ends_with("+json");
    if json {
        Ok(())
    } else {
        Err(Error::UnsupportedMediaType)
    }
}

async fn body_bytes(request: Request, state: &AppState) -> Result<Bytes, Error> {
    check_content_type(&request)?;
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| match rejection {
            BytesRejection::FailedToBufferBody(e)
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Error::PayloadTooLarge(state.body_limit)
            }
            other => Error::MalformedJson(other.body_text()),
        })
}

pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_data() {
            let message = strip_position(&inner.to_string());
            Error::Validation(ValidationErrors::single(field_of(&path, &message), message))
        } else {
            Error::MalformedJson(inner.to_string())
        }
    })?;
    // PostgreSQL stores no NUL character, in text or in jsonb: refuse it here, naming the field,
    // rather than fail on the insert.
    if has_escaped_nul(bytes) {
        let field = serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|v| nul_path(&v, ""))
            .unwrap_or_else(|| "body".to_owned());
        return Err(Error::field(&field, NUL_MESSAGE));
    }
    Ok(value)
}

pub(crate) const NUL_MESSAGE: &str = "must not contain the NUL character (\\u0000)";

/// Whether a JSON text holds a `\u0000` escape inside a string (a raw NUL is not valid JSON).
fn has_escaped_nul(bytes: &[u8]) -> bool {
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => in_string = !in_string,
            b'\\' if in_string => {
                if bytes.get(i + 1) == Some(&b'u') && bytes.get(i + 2..i + 6) == Some(b"0000") {
                    return true;
                }
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    false
}

/// The dotted path of the first string (or key) holding a NUL character.
fn nul_path(value: &Value, path: &str) -> Option<String> {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Value::String(text) if text.contains('\0') => Some(if path.is_empty() {
            "body".to_owned()
        } else {
            path.to_owned()
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_path(item, &join(&i.to_string()))),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            if key.contains('\0') {
                Some(join(&key.replace('\0', "\\u0000")))
            } else {
                nul_path(item, &join(key))
            }
        }),
        _ => None,
    }
}

/// The field a deserialization error is about. For a missing field serde reports the path of
/// the enclosing object, so the field's own name is taken from the message.
fn field_of(path: &str, message: &str) -> String {
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    match (path, missing) {
        (".", Some(name)) => name.to_owned(),
        (".", None) => "body".to_owned(),
        (path, Some(name)) => format!("{path}.{name}"),
        (path, None) => path.to_owned(),
    }
}

/// serde_json appends "at line 1 column 42"; the field name says more.
fn strip_position(message: &str) -> String {
    message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_owned()
}

impl<T: DeserializeOwned> FromRequest<AppState> for Json<T> {
    type Rejection = Error;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(request, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::MalformedJson(
                "the body is empty; a JSON object is required".into(),
            ));
        }
        parse_json(&bytes).map(Json)
    }
}

impl<T: DeserializeOwned + Default> FromRequest<AppState> for JsonOrEmpty<T> {
    type Rejection = Error;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(request, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonOrEmpty(T::default()));
        }
        // `null` says as much as no body.
        parse_json::<Option<T>>(&bytes).map(|value| JsonOrEmpty(value.unwrap_or_default()))
    }
}

/// A query string; unknown parameters and bad values become a 422.
pub(crate) struct Query<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        // PostgreSQL stores no NUL character; a filter holding one is refused, not failed on.
        if let Some((key, _)) =
            form_urlencoded::parse(query.as_bytes()).find(|(_, value)| value.contains('\0'))
        {
            return Err(Error::field(&key, NUL_MESSAGE));
        }
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(Query)
            .map_err(|error| {
                let path = error.path().to_string();
                let field = if path == "." {
                    "query".to_owned()
                } else {
                    path
                };
                Error::Validation(ValidationErrors::single(
                    field,
                    error.into_inner().to_string(),
                ))
            })
    }
}

/// Path parameters. A segment that cannot be read (invalid UTF-8 once percent-decoded, say)
/// becomes a 422 naming the parameter instead of axum's plain-text rejection.
pub(crate) struct Path<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                let field = match e.kind() {
                    ErrorKind::InvalidUtf8InPathParam { key }
                    | ErrorKind::ParseErrorAtKey { key, .. } => key.clone(),
                    _ => "path".to_owned(),
                };
                Err(Error::field(&field, e.body_text()))
            }
            Err(other) => Err(Error::Internal(other.body_text().into())),
        }
    }
}

/// Parses a task id from the path, naming the `id` field when it is not a UUID.
pub(crate) fn task_id(raw: &str) -> Result<TaskId, Error> {
    raw.parse().map_err(|_| {
        Error::Validation(ValidationErrors::single(
            "id",
            format!("`{raw}` is not a task id (a UUID)"),
        ))
    })
}

/// The largest page any list returns.
pub(crate) const MAX_LIMIT: i64 = 500;

/// A `limit` outside a list (a batch size): 1 to [`MAX_LIMIT`], `default` when absent.
pub(crate) fn limit(raw: Option<&str>, default: i64) -> Result<i64, Error> {
    crate::pagination::parse_limit(raw, default).map_err(|message| Error::field("limit", message))
}
