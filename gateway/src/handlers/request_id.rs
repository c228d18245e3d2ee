//! The request id every answer carries (`X-Request-Id`) and every log line
//! and span names.

use http::Request;
use hyper::body::Incoming;

use super::framing;

/// Parsed once: a `&str` name is parsed again on every lookup and insert.
pub static REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Propagates a client-supplied id that is a plain token (letters, digits,
/// `.`, `_`, `:`, `-`; at most 128), or makes one: anything else could be
/// reflected into a log viewer or a page.
pub fn request_id(req: &Request<Incoming>) -> String {
    req.headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| framing::is_plain_token(v, 128))
        .map_or_else(fast_uuid, str::to_owned)
}

/// A random (v4) UUID from the thread's CSPRNG, seeded once from the OS:
/// `Uuid::new_v4` asks the kernel on every call, which showed up in the
/// redirect profile.
pub fn random_uuid() -> uuid::Uuid {
    use rand::Rng;
    uuid::Builder::from_random_bytes(rand::rng().random()).into_uuid()
}

/// [`random_uuid`] as text (hex written directly, not through `fmt`).
pub fn fast_uuid() -> String {
    random_uuid()
        .hyphenated()
        .encode_lower(&mut uuid::Uuid::encode_buffer())
        .to_owned()
}
