//! Metric label values as static strings: a label lookup on every request
//! must not allocate (the redirect path records two per request).

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
