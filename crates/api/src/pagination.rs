//! Paging, the same for every list: one extractor reads a list's filters with `limit` and
//! `cursor`, one opaque [`Cursor`] says where a page starts, one builder makes the page.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use pacer_domain::{TaskId, ValidationErrors};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::IntoParams;
use utoipa::openapi::Required;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use uuid::Uuid;

use crate::Error;
use crate::extract::{MAX_LIMIT, NUL_MESSAGE};
use crate::views::Page;

/// Base64url without padding; the unused low bits of the last character are ignored, so every
/// string of the alphabet with a whole number of bytes decodes, as the schema's pattern says.
const CURSOR_TEXT: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

/// The position a list's pages are keyed on, as the bytes of its cursor.
pub(crate) trait CursorKey: Sized {
    /// The regular expression (without anchors) every encoded key matches; each string that
    /// matches is a position of the list (the schema promises no more and no less).
    const PATTERN: &'static str;
    /// The shortest and longest encoded key.
    const LENGTH: (usize, usize);

    fn to_bytes(&self) -> Vec<u8>;
    fn from_bytes(bytes: &[u8]) -> Option<Self>;
}

/// 16 bytes: 22 characters.
const UUID_PATTERN: &str = "[A-Za-z0-9_-]{22}";

impl CursorKey for Uuid {
    const PATTERN: &'static str = UUID_PATTERN;
    const LENGTH: (usize, usize) = (22, 22);

    fn to_bytes(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Uuid::from_slice(bytes).ok()
    }
}

impl CursorKey for TaskId {
    const PATTERN: &'static str = UUID_PATTERN;
    const LENGTH: (usize, usize) = (22, 22);

    fn to_bytes(&self) -> Vec<u8> {
        self.as_uuid().as_bytes().to_vec()
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Uuid::from_slice(bytes).ok().map(TaskId::from)
    }
}

/// A position in a sequence that only grows (a message's ordinal): 8 bytes big-endian, never
/// negative, so the first character carries a clear top bit.
impl CursorKey for i64 {
    const PATTERN: &'static str = "[A-Za-f][A-Za-z0-9_-]{10}";
    const LENGTH: (usize, usize) = (11, 11);

    fn to_bytes(&self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let value = i64::from_be_bytes(bytes.try_into().ok()?);
        (value >= 0).then_some(value)
    }
}

/// A position in name order: any text is one (the page starts after it), so any bytes are,
/// read as UTF-8 with what is not replaced. PostgreSQL takes no NUL in text, and no name has
/// one: it is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NameKey(pub(crate) String);

impl CursorKey for NameKey {
    const PATTERN: &'static str = "(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2,3})?";
    /// 1 to 66 bytes (a name has at most 64).
    const LENGTH: (usize, usize) = (2, 88);

    fn to_bytes(&self) -> Vec<u8> {
        self.0.as_bytes().to_vec()
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let text = String::from_utf8_lossy(bytes).replace('\0', "");
        Some(Self(text))
    }
}

/// Where a page of list `L` starts: opaque to clients, who only pass a `next_cursor` back.
/// Its text is the list's tag and the key in base64url, so a cursor of one list is refused
/// by another.
pub(crate) struct Cursor<L>(PhantomData<L>);

impl<L: Listing> Cursor<L> {
    pub(crate) fn encode(key: &L::Key) -> String {
        format!("{}{}", L::TAG, CURSOR_TEXT.encode(key.to_bytes()))
    }

    /// The key a cursor stands for; `None` for text this API never gave out as a cursor of
    /// this list.
    pub(crate) fn decode(text: &str) -> Option<L::Key> {
        let encoded = text.strip_prefix(L::TAG)?;
        let (shortest, longest) = <L::Key as CursorKey>::LENGTH;
        if !(shortest..=longest).contains(&encoded.len()) {
            return None;
        }
        CURSOR_TEXT
            .decode(encoded)
            .ok()
            .and_then(|bytes| <L::Key as CursorKey>::from_bytes(&bytes))
    }

    /// The schema's pattern: exactly the texts [`Cursor::decode`] takes.
    fn pattern() -> String {
        format!(
            "^{}{}$",
            L::TAG.replace('.', "\\."),
            <L::Key as CursorKey>::PATTERN
        )
    }
}

/// What one list pages on, and how much by default.
pub(crate) trait Listing {
    type Key: CursorKey;
    /// The start of every cursor of this list: a few letters, then `.`.
    const TAG: &'static str;
    /// The page size without `limit`.
    const DEFAULT_LIMIT: i64 = 50;
}

/// The page a request asks for: at most `limit` items after `after`.
#[derive(Debug)]
pub(crate) struct PageRequest<L: Listing> {
    pub(crate) limit: i64,
    pub(crate) after: Option<L::Key>,
    listing: PhantomData<L>,
}

impl<L: Listing> PageRequest<L> {
    /// How many rows to ask the store for: one more than a page, to know whether another
    /// page follows without a request for an empty one.
    pub(crate) fn fetch(&self) -> i64 {
        self.limit + 1
    }

    /// The page: the first `limit` rows as views, and a cursor after the last when more rows
    /// were found.
    pub(crate) fn page<R, V>(
        &self,
        mut rows: Vec<R>,
        key: impl Fn(&R) -> L::Key,
        view: impl FnMut(R) -> V,
    ) -> Page<V> {
        let limit = usize::try_from(self.limit).unwrap_or(usize::MAX);
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = more
            .then(|| rows.last().map(|row| Cursor::<L>::encode(&key(row))))
            .flatten();
        Page {
            items: rows.into_iter().map(view).collect(),
            next_cursor,
        }
    }
}

/// A list's query string: the list's own filters `F` (unknown parameters refused) and the
/// page. Every problem with either is a 422 naming the parameter, all of them at once: the
/// page is only usable once [`Unchecked::check`] has added its problems to the handler's.
pub(crate) struct ListQuery<F, L: Listing> {
    pub(crate) filter: F,
    pub(crate) page: Unchecked<L>,
}

/// A page request whose `limit` or `cursor` may have been refused.
pub(crate) struct Unchecked<L: Listing> {
    page: PageRequest<L>,
    errors: ValidationErrors,
}

impl<L: Listing> Unchecked<L> {
    /// The page, or a 422 naming its refused fields, for a list with no checks of its own.
    pub(crate) fn checked(self) -> Result<PageRequest<L>, Error> {
        self.check(ValidationErrors::new())
    }

    /// The page, or a 422 naming every field in `errors` (the handler's own, about its
    /// filters) and then the page's.
    pub(crate) fn check(self, mut errors: ValidationErrors) -> Result<PageRequest<L>, Error> {
        for error in self.errors.errors() {
            errors.push(error.field.clone(), error.message.clone());
        }
        errors.into_result(self.page).map_err(Error::Validation)
    }
}

/// A list without filters of its own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoFilter {}

pub(crate) fn parse_limit(raw: Option<&str>, default: i64) -> Result<i64, String> {
    match raw {
        None => Ok(default),
        Some(text) => match text.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(format!(
                "must be a whole number from 1 to {MAX_LIMIT}, got `{text}`"
            )),
        },
    }
}

impl<S, F, L> FromRequestParts<S> for ListQuery<F, L>
where
    S: Send + Sync,
    F: DeserializeOwned,
    L: Listing,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let mut errors = ValidationErrors::new();
        let mut page_errors = ValidationErrors::new();
        let mut limit = None;
        let mut cursor = None;
        let mut rest = form_urlencoded::Serializer::new(String::new());
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match &*key {
                "limit" => &mut limit,
                "cursor" => &mut cursor,
                _ => {
                    // PostgreSQL stores no NUL character; a filter holding one is refused.
                    if value.contains('\0') {
                        errors.push(key.to_string(), NUL_MESSAGE);
                    } else {
                        rest.append_pair(&key, &value);
                    }
                    continue;
                }
            };
            if slot.replace(value.into_owned()).is_some() {
                page_errors.push(key.to_string(), "is given more than once");
            }
        }
        let after = cursor.as_deref().and_then(|text| {
            let key = Cursor::<L>::decode(text);
            if key.is_none() {
                page_errors.push(
                    "cursor",
                    "is not a cursor of this list: pass back a `next_cursor` it returned",
                );
            }
            key
        });
        let limit = parse_limit(limit.as_deref(), L::DEFAULT_LIMIT).unwrap_or_else(|message| {
            page_errors.push("limit", message);
            L::DEFAULT_LIMIT
        });
        let rest = rest.finish();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(rest.as_bytes()));
        let filter = serde_path_to_error::deserialize::<_, F>(deserializer).map_err(|error| {
            let path = error.path().to_string();
            let field = if path == "." {
                "query".to_owned()
            } else {
                path
            };
            errors.push(field, error.into_inner().to_string());
        });
        match filter {
            Ok(filter) if errors.is_empty() => Ok(ListQuery {
                filter,
                page: Unchecked {
                    page: PageRequest {
                        limit,
                        after,
                        listing: PhantomData,
                    },
                    errors: page_errors,
                },
            }),
            _ => {
                for error in page_errors.errors() {
                    errors.push(error.field.clone(), error.message.clone());
                }
                Err(Error::Validation(errors))
            }
        }
    }
}

/// The `limit` and `cursor` query parameters of a list, as the schema shows them.
pub(crate) struct PageParams<L>(PhantomData<L>);

impl<L: Listing> IntoParams for PageParams<L> {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let limit = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Int64,
            )))
            .minimum(Some(1))
            .maximum(Some(MAX_LIMIT))
            .default(Some(L::DEFAULT_LIMIT.into()));
        let (shortest, longest) = <L::Key as CursorKey>::LENGTH;
        let cursor = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(Cursor::<L>::pattern()))
            .min_length(Some(L::TAG.len() + shortest))
            .max_length(Some(L::TAG.len() + longest));
        vec![
            ParameterBuilder::new()
                .name("limit")
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some("Most items to return."))
                .schema(Some(limit))
                .build(),
            ParameterBuilder::new()
                .name("cursor")
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(
                    "The `next_cursor` of the previous page, as it was returned: an opaque \
                     token; anything else is refused with a 422.",
                ))
                .schema(Some(cursor))
                .build(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ids;
    impl Listing for Ids {
        type Key = Uuid;
        const TAG: &'static str = "i.";
    }
    struct Tasks;
    impl Listing for Tasks {
        type Key = TaskId;
        const TAG: &'static str = "t.";
    }
    struct Ordinals;
    impl Listing for Ordinals {
        type Key = i64;
        const TAG: &'static str = "o.";
    }
    struct Names;
    impl Listing for Names {
        type Key = NameKey;
        const TAG: &'static str = "n.";
    }

    #[test]
    fn cursors_round_trip_and_refuse_what_this_api_never_returned() {
        let id = Uuid::now_v7();
        let text = Cursor::<Ids>::encode(&id);
        assert!(text.starts_with("i."));
        assert_eq!(Cursor::<Ids>::decode(&text), Some(id));
        assert_eq!(
            Cursor::<Tasks>::decode(&text),
            None,
            "another list's cursor"
        );
        let task = TaskId::from(id);
        assert_eq!(
            Cursor::<Tasks>::decode(&Cursor::<Tasks>::encode(&task)),
            Some(task)
        );
        assert_eq!(
            Cursor::<Ordinals>::decode(&Cursor::<Ordinals>::encode(&42)),
            Some(42)
        );
        let name = NameKey("master-data.sync".to_owned());
        assert_eq!(
            Cursor::<Names>::decode(&Cursor::<Names>::encode(&name)),
            Some(name)
        );
        for bad in [
            "",
            "-1",
            "x",
            "nope",
            "i.",
            "i.x",
            &id.to_string(),
            "n.AAAAA",
            "o.-1",
        ] {
            assert_eq!(Cursor::<Ids>::decode(bad), None, "{bad}");
            assert_eq!(Cursor::<Ordinals>::decode(bad), None, "{bad}");
            assert_eq!(Cursor::<Names>::decode(bad), None, "{bad}");
        }
        // A negative ordinal is no message's.
        assert_eq!(
            Cursor::<Ordinals>::decode(&Cursor::<Ordinals>::encode(&-1)),
            None
        );
    }

    #[test]
    fn every_string_the_pattern_allows_is_a_cursor() {
        assert_eq!(Cursor::<Ids>::pattern(), "^i\\.[A-Za-z0-9_-]{22}$");
        // The edges of each pattern: all bits set where the pattern allows them.
        assert!(Cursor::<Ids>::decode("i.AAAAAAAAAAAAAAAAAAAAA_").is_some());
        assert!(Cursor::<Ids>::decode("i.______________________").is_some());
        assert!(Cursor::<Ordinals>::decode("o.f__________").is_some());
        assert!(Cursor::<Ordinals>::decode("o.g__________").is_none());
        assert!(Cursor::<Names>::decode("n._-").is_some());
        assert!(Cursor::<Names>::decode("n.AAAAA_").is_some());
        assert!(Cursor::<Names>::decode(&format!("n.{}", "_".repeat(88))).is_some());
        assert!(Cursor::<Names>::decode(&format!("n.{}", "A".repeat(89))).is_none());
    }
}
