//! Metric label values as static strings: a label lookup on every request
//! must not allocate (the redirect path records two per request).

use std::{cell::RefCell, collections::HashMap};

use metrics::{Counter, Histogram};

pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        _ => "other",
    }
}

pub fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        204 => "204",
        301 => "301",
        302 => "302",
        307 => "307",
        308 => "308",
        400 => "400",
        401 => "401",
        404 => "404",
        405 => "405",
        409 => "409",
        410 => "410",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s >= 500 => "5xx",
        s if s >= 400 => "4xx",
        _ => "other",
    }
}

/// Records one answered request in `shortfleet_http_request_duration_seconds`
/// and `shortfleet_http_requests_total`. The handles are kept per worker
/// thread by their (static) labels: finding one is a small hash lookup,
/// where asking the registry built a key with its labels, hashed it and
/// searched a shared map, twice on every request (about 4 % of the
/// gateway's CPU per redirect with the metric calls on the path).
pub fn record_request(
    endpoint: &'static str,
    method: &'static str,
    status: &'static str,
    elapsed: std::time::Duration,
) {
    type Handles<T> =
        RefCell<HashMap<(&'static str, &'static str), T, foldhash::fast::RandomState>>;
    thread_local! {
        static DURATIONS: Handles<Histogram> = RefCell::default();
        static REQUESTS: Handles<Counter> = RefCell::default();
    }
    DURATIONS.with_borrow_mut(|kept| {
        kept.entry((endpoint, method))
            .or_insert_with(|| {
                metrics::histogram!("shortfleet_http_request_duration_seconds", "endpoint" => endpoint, "method" => method)
            })
            .record(elapsed.as_secs_f64())
    });
    REQUESTS.with_borrow_mut(|kept| {
        kept.entry((endpoint, status))
            .or_insert_with(|| {
                metrics::counter!("shortfleet_http_requests_total", "endpoint" => endpoint, "status" => status)
            })
            .increment(1)
    });
}
