//! Definitions as comparable values: the domain's defaults filled in, and a server's view cut
//! down to the fields the input types read.

use pacer_domain::{JobInput, JobSpec, TriggerInput, TriggerSpec};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::client::Result;

use super::*;

/// Fields of a job view the server manages; everything else is the definition.
pub(super) const JOB_SERVER_FIELDS: [&str; 5] =
    ["name", "version", "paused", "created_at", "updated_at"];
/// Fields of a trigger view the server manages.
pub(super) const TRIGGER_SERVER_FIELDS: [&str; 8] = [
    "id",
    "job",
    "paused",
    "next_fire_at",
    "last_fired_at",
    "skipped",
    "created_at",
    "updated_at",
];

/// Reads a value as `T`, naming the field a mistake is in (as the API does).
pub(super) fn read<T: DeserializeOwned>(value: &Value) -> std::result::Result<T, FieldErrors> {
    serde_path_to_error::deserialize(value.clone()).map_err(|error| {
        let path = error.path().to_string();
        let message = error.into_inner().to_string();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        let field = match (path.as_str(), missing) {
            (".", Some(name)) => name.to_owned(),
            (".", None) => "definition".to_owned(),
            (path, Some(name)) => format!("{path}.{name}"),
            (path, None) => path.to_owned(),
        };
        vec![(field, message)]
    })
}

/// A job definition validated and with its defaults filled in, as the server would store it.
pub(super) fn normalize_job(body: &Value) -> std::result::Result<Value, FieldErrors> {
    let input: JobInput = read(body)?;
    let spec = JobSpec::try_from(input).map_err(|e| field_errors(&e))?;
    serde_json::to_value(spec).map_err(|e| vec![("definition".into(), e.to_string())])
}

/// A trigger definition validated and with its defaults filled in.
pub(super) fn normalize_trigger(body: &Value) -> std::result::Result<Value, FieldErrors> {
    let input: TriggerInput = read(body)?;
    let spec = TriggerSpec::try_from(input).map_err(|e| field_errors(&e))?;
    serde_json::to_value(spec).map_err(|e| vec![("definition".into(), e.to_string())])
}

/// The field names a struct reads: serde hands them to `deserialize_struct`, which is all this
/// deserializer answers.
pub(super) fn struct_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error as _, Visitor};

    struct Fields<'a>(&'a std::cell::Cell<&'static [&'static str]>);

    impl<'de> serde::Deserializer<'de> for Fields<'_> {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Self::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.set(fields);
            Err(Self::Error::custom("fields read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let fields = std::cell::Cell::new(&[][..]);
    let _ = T::deserialize(Fields(&fields));
    fields.get()
}

/// A view without the fields the server manages: the definition as a client writes it. Only
/// fields the input type reads are kept (when it is a struct), so a field a newer server adds
/// to its views is not mistaken for part of the definition.
pub(super) fn definition<T: DeserializeOwned>(
    view: &Value,
    server_fields: &[&str],
) -> Map<String, Value> {
    let input_fields = struct_fields::<T>();
    let mut fields = view.as_object().cloned().unwrap_or_default();
    fields.retain(|key, _| {
        !server_fields.contains(&key.as_str())
            && (input_fields.is_empty() || input_fields.contains(&key.as_str()))
    });
    fields
}

pub(super) fn job_definition(view: &Value) -> Map<String, Value> {
    definition::<JobInput>(view, &JOB_SERVER_FIELDS)
}

pub(super) fn trigger_definition(view: &Value) -> Map<String, Value> {
    definition::<TriggerInput>(view, &TRIGGER_SERVER_FIELDS)
}

/// What the server holds, normalized as a declared definition is (or as it is, when this client
/// cannot read it: then it differs and is rewritten).
pub(super) fn normalized_view(
    view: &Value,
    definition: fn(&Value) -> Map<String, Value>,
    normalize: fn(&Value) -> std::result::Result<Value, FieldErrors>,
) -> Value {
    let definition = Value::Object(definition(view));
    normalize(&definition).unwrap_or(definition)
}
