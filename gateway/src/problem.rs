//! RFC 9457 problem+json responses, and the one table that maps an
//! upstream's gRPC status to an HTTP status and problem type. Clients never
//! see internals: upstream messages are passed on only for client mistakes
//! (invalid argument, not found, conflict), never for server faults.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;
use tonic::Code;

pub type HttpResponse = Response<Full<Bytes>>;

use shortfleet_common::input::FIELD_METADATA;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        slug: &str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind: format!("urn:shortfleet:problem:{slug}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        let mut p = Self::new(
            StatusCode::BAD_REQUEST,
            "validation",
            "Invalid request",
            detail,
        );
        p.errors = errors;
        p
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError {
            field: field.to_owned(),
            message: message.into(),
        }])
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            "a valid API key is required: Authorization: Bearer <key>",
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn into_response(self) -> HttpResponse {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED.as_u16() {
            // RFC 6750 §3: say which scheme would work.
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"shortfleet\""),
            );
        }
        response
    }

    /// The one mapping from an upstream's gRPC status to what clients see.
    pub fn from_grpc(status: &tonic::Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::InvalidArgument => {
                let field = status
                    .metadata()
                    .get(FIELD_METADATA)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("request")
                    .to_owned();
                let message = message
                    .strip_prefix(&format!("{field}: "))
                    .unwrap_or(&message)
                    .to_owned();
                Self::validation(vec![FieldError { field, message }])
            }
            Code::NotFound => Self::not_found(message),
            Code::AlreadyExists => Self::new(StatusCode::CONFLICT, "conflict", "Conflict", message),
            Code::FailedPrecondition => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable",
                "Unprocessable request",
                message,
            ),
            Code::ResourceExhausted => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                "an upstream is overloaded",
            )
            .retry_after(1),
            Code::Unauthenticated => Self::unauthorized(),
            // Never leak whether something exists for another owner.
            Code::PermissionDenied => Self::not_found("not found"),
            Code::DeadlineExceeded => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream-timeout",
                "Upstream timed out",
                "a service did not answer in time; retry later",
            ),
            Code::Unavailable | Code::Cancelled | Code::Aborted => {
                match crate::resilience::retry_after_hint(status) {
                    // Whole seconds, rounded up: never invite a retry early.
                    Some(wait) => Self::unavailable()
                        .retry_after(wait.as_millis().div_ceil(1000).max(1) as u64),
                    None => Self::unavailable(),
                }
            }
            _ => Self::new(
                StatusCode::BAD_GATEWAY,
                "upstream-error",
                "Upstream error",
                "a service failed to answer this request",
            ),
        }
    }

    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            "a service this request needs is unavailable; retry later",
        )
        .retry_after(1)
    }
}

/// 405 with `Allow` listing what the path does answer.
pub fn method_not_allowed(allowed: &[http::Method]) -> HttpResponse {
    let list = allowed
        .iter()
        .map(http::Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let mut response = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!("allowed: {list}"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&list) {
        response.headers_mut().insert(header::ALLOW, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    #[test]
    fn grpc_codes_map_to_http_statuses() {
        let cases = [
            (Code::InvalidArgument, 400),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::FailedPrecondition, 422),
            (Code::ResourceExhausted, 429),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 404),
            (Code::DeadlineExceeded, 504),
            (Code::Unavailable, 503),
            (Code::Internal, 502),
            (Code::Unknown, 502),
        ];
        for (code, http) in cases {
            assert_eq!(
                Problem::from_grpc(&tonic::Status::new(code, "x")).status,
                http,
                "{code:?}"
            );
        }
    }

    #[test]
    fn invalid_argument_names_the_field() {
        let mut status = tonic::Status::invalid_argument("url: must use http or https");
        status
            .metadata_mut()
            .insert(FIELD_METADATA, MetadataValue::from_static("url"));
        let p = Problem::from_grpc(&status);
        assert_eq!(
            p.errors,
            vec![FieldError {
                field: "url".into(),
                message: "must use http or https".into()
            }]
        );
    }

    #[test]
    fn server_faults_hide_upstream_messages() {
        let p = Problem::from_grpc(&tonic::Status::internal(
            "pq: relation links does not exist",
        ));
        assert!(!p.detail.contains("relation"));
        let response = Problem::unavailable().into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
}
