//! Wire types poem-openapi lacks: `JsonBody<T>` (request bodies whose errors name the field) and
//! `Timestamp` (RFC 3339 in UTC with a `Z`, as the V1 document writes times).

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Utc};
use poem::{FromRequest, Request, RequestBody};
use poem_openapi::impl_apirequest_for_payload;
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::{ParseFromJSON, ParseResult, ToJSON, Type};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::ApiError;

/// A JSON request body. A wrong type, a missing field or an unknown value is a 400 whose
/// message starts with the path of the field (`messages[0].role: unknown variant ...`);
/// then the type's declared validators run (lengths, ranges), whose messages name the field.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T: Type> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn check_content_type(content_type: &str) -> bool {
        matches!(content_type.parse::<mime::Mime>(), Ok(ct) if ct.type_() == "application"
            && (ct.subtype() == "json" || ct.suffix().is_some_and(|s| s == "json")))
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: ParseFromJSON + DeserializeOwned> ParsePayload for JsonBody<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let data = Vec::<u8>::from_request(request, body).await?;
        if data.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid("body: empty; send a JSON object").into());
        }
        let mut value: Value = serde_json::from_slice(&data)
            .map_err(|e| ApiError::invalid(format!("body: not valid JSON: {e}")))?;
        whole_numbers_as_integers(&mut value);
        if let Err(e) = serde_path_to_error::deserialize::<_, T>(&value) {
            let path = e.path().to_string();
            let path = if path == "." {
                "body".to_string()
            } else {
                path
            };
            return Err(ApiError::invalid(format!("{path}: {}", e.inner())).into());
        }
        let parsed =
            T::parse_from_json(Some(value)).map_err(|e| ApiError::invalid(e.into_message()))?;
        Ok(JsonBody(parsed))
    }
}

impl_apirequest_for_payload!(JsonBody<T>, T: ParseFromJSON + DeserializeOwned);

/// Takes a field of the body written as a whole number with a fraction (`30.0`) as that
/// integer, as JSON Schema counts it (`type: integer` accepts `30.0`). Only the body's own
/// fields: the objects and arrays they hold (a run's `input`) are the client's data, kept as
/// sent.
fn whole_numbers_as_integers(body: &mut Value) {
    let Some(fields) = body.as_object_mut() else {
        return;
    };
    for v in fields.values_mut() {
        let Some(f) = v.as_f64().filter(|_| v.is_f64()) else {
            continue;
        };
        if f.fract() == 0.0 && f.abs() < 9.0e15 {
            // Exact: every whole number below 2^53 is an f64 and an i64.
            *v = Value::from(f as i64);
        }
    }
}

/// A point in time, written as RFC 3339 in UTC with `Z` (`2026-03-13T14:22:00Z`; fractions of a
/// second only when there are any).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub DateTime<Utc>);

impl From<DateTime<Utc>> for Timestamp {
    fn from(t: DateTime<Utc>) -> Self {
        Timestamp(t)
    }
}

impl Type for Timestamp {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string_date-time".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new_with_format("string", "date-time")))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(std::iter::once(self))
    }
}

impl ParseFromJSON for Timestamp {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        let value = value.unwrap_or_default();
        match value {
            Value::String(s) => Ok(Timestamp(s.parse::<DateTime<Utc>>()?)),
            other => Err(poem_openapi::types::ParseError::expected_type(other)),
        }
    }
}

impl ToJSON for Timestamp {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(
            self.0.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        ))
    }
}

/// A server-sent event stream whose every event is `data: <T as JSON>`. Unlike poem-openapi's
/// `EventStream` (described as an array), the spec describes its `text/event-stream` content
/// as the schema of one event, which is how SSE-aware tools (schemathesis, client generators)
/// read it.
pub struct Sse<T: Send + 'static>(pub futures_util::stream::BoxStream<'static, T>);

impl<T: Type + ToJSON + Send + 'static> Payload for Sse<T> {
    const CONTENT_TYPE: &'static str = "text/event-stream";

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type + ToJSON + Send + 'static> poem::IntoResponse for Sse<T> {
    fn into_response(self) -> poem::Response {
        use futures_util::StreamExt;
        let events = self
            .0
            .map(|item| poem::web::sse::Event::message(item.to_json_string()));
        poem::web::sse::SSE::new(events).into_response()
    }
}

impl<T: Type + ToJSON + Send + 'static> poem_openapi::ApiResponse for Sse<T> {
    fn meta() -> poem_openapi::registry::MetaResponses {
        use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses};
        MetaResponses {
            responses: vec![MetaResponse {
                description: "",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: Self::CONTENT_TYPE,
                    schema: Self::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

/// A server-sent event stream of numbered, named events: `id: <n>`, `event: <name>`,
/// `data: <T as JSON>`, so that a client can resume after the last id it received
/// (`Last-Event-ID`). Described in the spec as [`Sse`] is.
pub struct NumberedSse<T: Send + 'static>(
    pub futures_util::stream::BoxStream<'static, (u64, &'static str, T)>,
);

impl<T: Type + ToJSON + Send + 'static> Payload for NumberedSse<T> {
    const CONTENT_TYPE: &'static str = "text/event-stream";

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type + ToJSON + Send + 'static> poem::IntoResponse for NumberedSse<T> {
    fn into_response(self) -> poem::Response {
        use futures_util::StreamExt;
        let events = self.0.map(|(id, name, item)| {
            poem::web::sse::Event::message(item.to_json_string())
                .id(id.to_string())
                .event_type(name)
        });
        poem::web::sse::SSE::new(events).into_response()
    }
}

impl<T: Type + ToJSON + Send + 'static> poem_openapi::ApiResponse for NumberedSse<T> {
    fn meta() -> poem_openapi::registry::MetaResponses {
        <Sse<T> as poem_openapi::ApiResponse>::meta()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

/// An example from the V1 document (`contracts/document/*.json`, included at build time):
/// the value at `key` of the example file, parsed as `T`. The spec's examples are thus the
/// document's own, and a document example that stops fitting its type fails the build's tests.
pub fn parse_document_example<T: ParseFromJSON>(file: &str, key: &str) -> T {
    let v: Value = serde_json::from_str(file).expect("a contracts/document file is JSON");
    match T::parse_from_json(Some(v[key].clone())) {
        Ok(t) => t,
        Err(e) => panic!(
            "the document's example `{key}` does not fit its type: {}",
            e.into_message()
        ),
    }
}

/// Attaches the document's example at `key` of `contracts/document/<file>` to a type.
macro_rules! document_example {
    ($ty:ty, $file:literal, $key:literal) => {
        impl poem_openapi::types::Example for $ty {
            fn example() -> Self {
                $crate::api::wire::parse_document_example(
                    include_str!(concat!("../../contracts/document/", $file)),
                    $key,
                )
            }
        }
    };
}
pub(crate) use document_example;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_use_z() {
        let t: DateTime<Utc> = "2026-03-01T00:00:00Z".parse().unwrap();
        assert_eq!(Timestamp(t).to_json().unwrap(), "2026-03-01T00:00:00Z");
        let t: DateTime<Utc> = "2026-03-13T14:22:00.123Z".parse().unwrap();
        assert_eq!(Timestamp(t).to_json().unwrap(), "2026-03-13T14:22:00.123Z");
    }
}
