//! Reading client input: bodies within a size limit, JSON objects field by
//! field (so every bad field is named in one answer), query strings.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use std::time::Duration;

use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value};
use shortfleet_common::input::Bound;

use crate::problem::{FieldError, Problem};

/// Reads the whole body: refuses an encoding we do not decode (415), more
/// than `limit` bytes (413), or a body still arriving after `within` (408:
/// a client trickling bytes cannot hold a connection and a task forever).
pub async fn read_body(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
    within: Duration,
) -> Result<Bytes, Problem> {
    refuse_content_encoding(headers)?;
    let collected = match tokio::time::timeout(within, Limited::new(body, limit).collect()).await {
        Err(_) => {
            return Err(Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                "Request timeout",
                format!("the body must arrive within {} s", within.as_secs()),
            ));
        }
        Ok(collected) => collected,
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
                format!("the body may be at most {limit} bytes"),
            ))
        }
        Err(_) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-body",
            "Unreadable body",
            "the request body could not be read",
        )),
    }
}

/// Bodies are read as sent: any `Content-Encoding` but `identity` would be
/// parsed as if it were plain, so it is refused (RFC 9110 §15.5.16).
fn refuse_content_encoding(headers: &HeaderMap) -> Result<(), Problem> {
    let encoded = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .any(|coding| !coding.trim().eq_ignore_ascii_case("identity"));
    if encoded {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "request bodies must not be content-encoded",
        ));
    }
    Ok(())
}

/// Parses a JSON object body. The content type is not required to say JSON
/// (`curl -d` sends form encoding by default); a body that is not JSON under
/// a non-JSON content type is refused with 415. A key given twice in one
/// object is refused (parsers disagree on which one wins, so a proxy and we
/// could read different requests).
pub fn json_object(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, Problem> {
    let declared_json = headers.get(header::CONTENT_TYPE).is_none_or(|ct| {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        ct.starts_with("application/json") || ct.contains("+json")
    });
    match serde_json::from_slice::<UniqueKeys>(body) {
        Ok(UniqueKeys(Value::Object(map))) => Ok(map),
        Ok(_) => Err(Problem::field("body", "must be a JSON object")),
        Err(_) if !declared_json => Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send the body as application/json",
        )),
        Err(e) => Err(Problem::field("body", format!("is not valid JSON: {e}"))),
    }
}

/// A JSON value whose objects, at any depth, name each key once.
struct UniqueKeys(Value);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(UniqueKeysVisitor)
            .map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueKeys(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                let shown: String = key.chars().take(64).collect();
                return Err(serde::de::Error::custom(format!("duplicate key {shown:?}")));
            }
            let UniqueKeys(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// `value` if it meets `bound` (the fleet's input policy, shared with the
/// services), else 400 naming the field.
pub fn bounded(bound: Bound, value: &str) -> Result<&str, Problem> {
    bound
        .check(value)
        .map_err(|e| Problem::field(e.field, e.rule.to_string()))
}

/// Field-by-field extraction that gathers every problem before answering.
pub struct Fields {
    map: Map<String, Value>,
    errors: Vec<FieldError>,
}

impl Fields {
    /// `allowed` lists the accepted field names; any other is an error.
    pub fn new(map: Map<String, Value>, allowed: &[&str]) -> Self {
        let errors = map
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .map(|k| FieldError {
                field: k.clone(),
                message: "is not a known field".into(),
            })
            .collect();
        Self { map, errors }
    }

    pub fn fail(&mut self, field: &str, message: &str) {
        self.errors.push(FieldError {
            field: field.to_owned(),
            message: message.to_owned(),
        });
    }

    /// The field's JSON as sent, for shapes the typed getters do not cover.
    pub fn raw(&self, field: &str) -> Option<&Value> {
        self.map.get(field)
    }

    pub fn has(&self, field: &str) -> bool {
        self.map.contains_key(field)
    }

    /// Present and explicitly `null` (PATCH: clear the value).
    pub fn is_null(&self, field: &str) -> bool {
        matches!(self.map.get(field), Some(Value::Null))
    }

    pub fn string(&mut self, field: &str) -> Option<String> {
        match self.map.get(field) {
            None | Some(Value::Null) => None,
            // The fleet's input policy at the public edge: bytes a datastore
            // or a log would choke on never leave the gateway.
            Some(Value::String(s)) if s.chars().any(char::is_control) => {
                self.fail(field, "must not contain control characters");
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.fail(field, "must be a string");
                None
            }
        }
    }

    pub fn required_string(&mut self, field: &str) -> Option<String> {
        let value = self.string(field);
        if value.is_none() && !self.errors.iter().any(|e| e.field == field) {
            self.fail(field, "is required");
        }
        value
    }

    pub fn u64(&mut self, field: &str) -> Option<u64> {
        match self.map.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
            Some(_) => {
                self.fail(field, "must be a non-negative integer");
                None
            }
        }
    }

    pub fn bool(&mut self, field: &str) -> Option<bool> {
        match self.map.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                self.fail(field, "must be true or false");
                None
            }
        }
    }

    pub fn time(&mut self, field: &str) -> Option<DateTime<Utc>> {
        let raw = self.string(field)?;
        match DateTime::parse_from_rfc3339(&raw) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                self.fail(field, "must be an RFC 3339 time, e.g. 2030-01-31T12:00:00Z");
                None
            }
        }
    }

    pub fn strings(&mut self, field: &str) -> Option<Vec<String>> {
        match self.map.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => Some(
                items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
            ),
            Some(_) => {
                self.fail(field, "must be an array of strings");
                None
            }
        }
    }

    /// `Ok` when every field was valid.
    pub fn finish(self) -> Result<(), Problem> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(Problem::validation(self.errors))
        }
    }
}

/// Decoded `?a=b&c=d` pairs.
pub fn query(uri: &http::Uri) -> Vec<(String, String)> {
    uri.query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

pub fn query_param<'q>(pairs: &'q [(String, String)], name: &str) -> Option<&'q str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_report_every_problem_at_once() {
        let map = json!({"url": 5, "max_clicks": -1, "bogus": true})
            .as_object()
            .unwrap()
            .clone();
        let mut f = Fields::new(map, &["url", "max_clicks"]);
        assert_eq!(f.required_string("url"), None);
        assert_eq!(f.u64("max_clicks"), None);
        let p = f.finish().unwrap_err();
        let fields: Vec<_> = p.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["bogus", "url", "max_clicks"]);
        assert_eq!(p.status, 400);
    }

    #[test]
    fn times_must_be_rfc3339() {
        let map = json!({"a": "2030-01-01T00:00:00+01:00", "b": "tomorrow"})
            .as_object()
            .unwrap()
            .clone();
        let mut f = Fields::new(map, &["a", "b"]);
        assert_eq!(
            f.time("a").unwrap().to_rfc3339(),
            "2029-12-31T23:00:00+00:00"
        );
        assert!(f.time("b").is_none());
        assert!(f.finish().is_err());
    }
}
