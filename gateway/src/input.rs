//! Reading client input: bodies within a size limit, JSON objects field by
//! field (so every bad field is named in one answer), query strings.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value};

use crate::problem::{FieldError, Problem};

/// Reads the whole body, refusing more than `limit` bytes with 413.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, Problem> {
    match Limited::new(body, limit).collect().await {
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

/// Parses a JSON object body. The content type is not required to say JSON
/// (`curl -d` sends form encoding by default); a body that is not JSON under
/// a non-JSON content type is refused with 415.
pub fn json_object(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, Problem> {
    let declared_json = headers.get(header::CONTENT_TYPE).is_none_or(|ct| {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        ct.starts_with("application/json") || ct.contains("+json")
    });
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
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

    fn fail(&mut self, field: &str, message: &str) {
        self.errors.push(FieldError {
            field: field.to_owned(),
            message: message.to_owned(),
        });
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
