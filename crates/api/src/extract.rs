//! Extractors that turn a bad request into a problem naming what is wrong: JSON bodies (with the
//! path of the offending field), query strings, and ids in the path.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use pacer_domain::{TaskId, ValidationErrors};
use serde::de::DeserializeOwned;

use crate::{AppState, Error};

/// A JSON body. Unknown fields, wrong types and bad values become a 422 naming the field;
/// syntax errors a 400; another content type a 415. An empty body reads as `T::default()`
/// when `T` allows it (see [`JsonOrEmpty`]).
pub(crate) struct Json<T>(pub(crate) T);

/// Like [`Json`], but an empty body is the default value.
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
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_data() {
            let message = strip_position(&inner.to_string());
            Error::Validation(ValidationErrors::single(field_of(&path, &message), message))
        } else {
            Error::MalformedJson(inner.to_string())
        }
    })
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
        parse_json(&bytes).map(JsonOrEmpty)
    }
}

/// A query string; unknown parameters and bad values become a 422.
pub(crate) struct Query<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
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

/// A page size: 1 to [`MAX_LIMIT`], `default` when absent.
pub(crate) fn limit(raw: Option<&str>, default: i64) -> Result<i64, Error> {
    match raw {
        None => Ok(default),
        Some(text) => match text.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(Error::field(
                "limit",
                format!("must be a whole number from 1 to {MAX_LIMIT}, got `{text}`"),
            )),
        },
    }
}
