//! Upstream messages: notices that something happened ("master data changed"), each creating a
//! task for every job subscribed to its type. [`MessageInput`] is what an upstream sends, over
//! REST or RabbitMQ; a [`Message`] exists only once every field has been checked.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ValidationErrors;

/// A message type, such as `masterdata.changed`: 1–128 letters, digits, `.`, `_`, `-`, `:` or
/// `/`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct MessageType(String);

/// Why a message type was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a message type is 1 to 128 letters, digits, '.', '_', '-', ':' or '/', starting with a letter or digit"
)]
pub struct InvalidMessageType;

impl FromStr for MessageType {
    type Err = InvalidMessageType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = !s.is_empty()
            && s.len() <= 128
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'));
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidMessageType)
        }
    }
}

/// On the wire a message type is a string.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for MessageType {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(128))
            .pattern(Some(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"))
            .description(Some(
                "A message type: 1–128 letters, digits, `.`, `_`, `-`, `:` or `/`, starting with \
                 a letter or digit.",
            ))
            .examples(["masterdata.changed"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for MessageType {}

impl MessageType {
    /// The type as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MessageType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A message as an upstream writes it. Only `type` is required; `payload` defaults to `{}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({
    "type": "masterdata.changed", "id": "evt-20261124-0042", "key": "centers",
    "payload": { "tables": ["centers"] }
})))]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageInput {
    /// The message type (required): 1–128 letters, digits, `.`, `_`, `-`, `:` or `/`, starting
    /// with a letter or digit.
    #[serde(rename = "type")]
    #[cfg_attr(feature = "openapi", schema(value_type = MessageType, required = true))]
    pub kind: Option<String>,
    /// The upstream's id for the message: its deduplication key (1–255 characters, no control
    /// characters).
    #[cfg_attr(feature = "openapi", schema(
        value_type = Option<String>, min_length = 1, max_length = 255,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    ))]
    pub id: Option<String>,
    /// What the message is about (`centers`); part of the deduplication key when `id` is absent
    /// (1–255 characters, no control characters).
    #[cfg_attr(feature = "openapi", schema(
        value_type = Option<String>, min_length = 1, max_length = 255,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    ))]
    pub key: Option<String>,
    /// A JSON object, laid over each subscribing job's payload key by key.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub payload: Option<Value>,
    /// Who to tell when each task the message creates ends (or at every state change): as a
    /// task's `notify`, the auth resolved per job.
    pub notify: Option<crate::Notify>,
}

/// A checked message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: MessageType,
    pub id: Option<String>,
    pub key: Option<String>,
    /// Laid over each subscribing job's payload, key by key.
    pub payload: Map<String, Value>,
    /// Who to tell about each task it creates; checked against the allowed URL prefixes by
    /// whoever receives the message.
    pub notify: Option<crate::Notify>,
}

/// Where a message came from.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageSource {
    /// `POST /api/v1/messages`.
    Api,
    /// The RabbitMQ consumer.
    Amqp,
}

impl MessageSource {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageSource::Api => "api",
            MessageSource::Amqp => "amqp",
        }
    }
}

/// The state of a node's RabbitMQ consumer, as `/readyz` and `GET /api/v1/cluster` show it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsumerStatus {
    pub state: ConsumerState,
    /// When the consumer entered this state.
    pub since: chrono::DateTime<chrono::Utc>,
    /// The queue consumed, when enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Why the last connection ended or failed, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Where a node's RabbitMQ consumer is.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerState {
    /// No broker is configured.
    Disabled,
    /// Connecting, or waiting to reconnect after the broker went away.
    Connecting,
    /// Consuming.
    Connected,
}

impl ConsumerStatus {
    /// The status of a node with no broker configured.
    pub fn disabled() -> Self {
        Self {
            state: ConsumerState::Disabled,
            since: chrono::Utc::now(),
            queue: None,
            last_error: None,
        }
    }

    /// The status of a node with a broker configured, before its consumer has connected.
    pub fn connecting(queue: &str) -> Self {
        Self {
            state: ConsumerState::Connecting,
            since: chrono::Utc::now(),
            queue: Some(queue.to_owned()),
            last_error: None,
        }
    }
}

/// True for 1 to `max` characters, none of them control characters.
fn is_plain_text(text: &str, max: usize) -> bool {
    !text.is_empty() && text.chars().count() <= max && !text.chars().any(char::is_control)
}

impl TryFrom<MessageInput> for Message {
    type Error = ValidationErrors;

    fn try_from(input: MessageInput) -> Result<Self, Self::Error> {
        let mut errors = ValidationErrors::new();
        let kind = match input.kind.as_deref().map(str::parse::<MessageType>) {
            None => {
                errors.push("type", "required");
                None
            }
            Some(Err(e)) => {
                errors.push("type", e.to_string());
                None
            }
            Some(Ok(kind)) => Some(kind),
        };
        if input
            .id
            .as_deref()
            .is_some_and(|id| !is_plain_text(id, 255))
        {
            errors.push("id", "1 to 255 characters, no control characters");
        }
        if input.key.as_deref().is_some_and(|k| !is_plain_text(k, 255)) {
            errors.push("key", "1 to 255 characters, no control characters");
        }
        let payload = match input.payload {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map,
            Some(_) => {
                errors.push("payload", "must be a JSON object");
                Map::new()
            }
        };
        match kind {
            Some(kind) if errors.is_empty() => Ok(Message {
                kind,
                id: input.id,
                key: input.key,
                payload,
                notify: input.notify,
            }),
            _ => Err(errors),
        }
    }
}

/// Parses a job's `on_messages`: valid types, at most 32, each once (the order is kept).
pub(crate) fn parse_subscriptions(
    errors: &mut ValidationErrors,
    raw: Option<Vec<String>>,
) -> Vec<MessageType> {
    let raw = raw.unwrap_or_default();
    if raw.len() > 32 {
        errors.push("on_messages", "at most 32 message types");
    }
    let mut types: Vec<MessageType> = Vec::with_capacity(raw.len());
    for (index, text) in raw.iter().enumerate() {
        match text.parse::<MessageType>() {
            Ok(kind) if !types.contains(&kind) => types.push(kind),
            Ok(_) => {}
            Err(e) => errors.push(format!("on_messages[{index}]"), e.to_string()),
        }
    }
    types
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(value: Value) -> Result<Message, ValidationErrors> {
        let input: MessageInput = serde_json::from_value(value).expect("input deserializes");
        Message::try_from(input)
    }

    fn fields(errors: &ValidationErrors) -> Vec<&str> {
        errors.errors().iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn a_message_needs_only_a_type() {
        let message = parse(json!({ "type": "masterdata.changed" })).expect("valid");
        assert_eq!(message.kind.as_str(), "masterdata.changed");
        assert_eq!(message.id, None);
        assert!(message.payload.is_empty());
    }

    #[test]
    fn every_bad_field_of_a_message_is_named() {
        let errors = parse(json!({ "type": "bad type", "id": "", "key": "a\nb", "payload": [1] }))
            .expect_err("invalid");
        assert_eq!(fields(&errors), ["type", "id", "key", "payload"]);
        let errors = parse(json!({ "payload": {} })).expect_err("no type");
        assert_eq!(fields(&errors), ["type"]);
    }

    #[test]
    fn unknown_message_fields_are_refused() {
        let result: Result<MessageInput, _> =
            serde_json::from_value(json!({ "type": "a", "colour": "red" }));
        assert!(result.is_err());
    }

    #[test]
    fn message_types_are_checked() {
        for good in ["masterdata.changed", "packet:uploaded", "a/b_c-1"] {
            assert!(good.parse::<MessageType>().is_ok(), "{good}");
        }
        let too_long = "a".repeat(129);
        for bad in ["", ".x", "has space", "é", too_long.as_str()] {
            assert!(bad.parse::<MessageType>().is_err(), "{bad}");
        }
    }

    #[test]
    fn subscriptions_are_checked_and_kept_once_each() {
        let mut errors = ValidationErrors::new();
        let types = parse_subscriptions(
            &mut errors,
            Some(vec![
                "b.x".into(),
                "a.y".into(),
                "b.x".into(),
                "no good".into(),
            ]),
        );
        assert_eq!(
            types.iter().map(MessageType::as_str).collect::<Vec<_>>(),
            ["b.x", "a.y"]
        );
        assert_eq!(fields(&errors), ["on_messages[3]"]);
    }
}
