//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of the public API,
//! compiled into the binary. `gateway/openapi.json` is its one source; this
//! module's tests hold it to the route table, the request field lists and
//! the response shapes, schemathesis holds the running fleet to it
//! (e2e/tests/openapi.rs), and docs/openapi.json is a byte-identical copy
//! for readers.

use std::sync::LazyLock;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use sha2::{Digest, Sha256};

use crate::problem::HttpResponse;

pub const DOCUMENT: &str = include_str!("../../openapi.json");

/// A strong validator: the document only changes with the binary.
static ETAG: LazyLock<HeaderValue> = LazyLock::new(|| {
    let digest = Sha256::digest(DOCUMENT.as_bytes());
    HeaderValue::from_str(&format!("\"{}\"", hex::encode(&digest[..12])))
        .unwrap_or(HeaderValue::from_static("\"openapi\""))
});

pub fn document(request_headers: &HeaderMap) -> HttpResponse {
    let fresh = request_headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == "*" || tag.trim() == ETAG.to_str().unwrap_or_default());
    let mut response = if fresh {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(DOCUMENT.as_bytes())));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, ETAG.clone());
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;
    use crate::{
        handlers::{links, view},
        routes::DEFAULT_ROUTES,
    };

    fn doc() -> Value {
        serde_json::from_str(DOCUMENT).expect("the document is JSON")
    }

    fn properties(doc: &Value, schema: &str) -> BTreeSet<String> {
        doc["components"]["schemas"][schema]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("schema {schema} has properties"))
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn every_route_has_an_operation_and_every_operation_a_route() {
        let doc = doc();
        let mut routed = BTreeSet::new();
        for line in DEFAULT_ROUTES.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [methods, pattern, _] = fields[..] else {
                continue;
            };
            for method in methods.split(',') {
                routed.insert((pattern.to_owned(), method.to_ascii_lowercase()));
            }
        }
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .expect("path item")
                    .keys()
                    .filter(|k| *k != "parameters")
                    .map(|m| (path.clone(), m.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(routed, documented);
    }

    #[test]
    fn request_schemas_name_exactly_the_accepted_fields() {
        let doc = doc();
        let set = |fields: &[&str]| fields.iter().map(|f| (*f).to_owned()).collect();
        assert_eq!(properties(&doc, "CreateLink"), set(links::CREATE_FIELDS));
        assert_eq!(properties(&doc, "UpdateLink"), set(links::UPDATE_FIELDS));
        for schema in ["CreateLink", "UpdateLink", "Link"] {
            assert_eq!(
                doc["components"]["schemas"][schema]["additionalProperties"],
                Value::Bool(false),
                "{schema} refuses unknown fields"
            );
        }
    }

    #[test]
    fn the_link_schema_matches_the_link_object() {
        let doc = doc();
        let link = view::link(&Default::default(), "https://sho.rt", Some(1));
        let keys: BTreeSet<String> = link.as_object().expect("object").keys().cloned().collect();
        assert_eq!(properties(&doc, "Link"), keys);
    }

    #[test]
    fn the_committed_copy_is_the_served_document() {
        let copy =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
                .expect("docs/openapi.json exists");
        assert!(
            copy == DOCUMENT,
            "docs/openapi.json differs from gateway/openapi.json: cp gateway/openapi.json docs/"
        );
    }

    #[test]
    fn answers_304_to_a_matching_validator() {
        let first = document(&HeaderMap::new());
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG].clone();
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(document(&headers).status(), StatusCode::NOT_MODIFIED);
    }
}
