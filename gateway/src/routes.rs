//! L7 routing: a table of (methods, path pattern) → endpoint, read from
//! configuration. `SHORTFLEET_ROUTES_FILE` may replace the built-in table
//! (for example to add a `/v2` prefix, or to stop serving an endpoint); the
//! file has the same format as [`DEFAULT_ROUTES`]. Each endpoint names the
//! handler that calls its upstream service. Matching is by path segments;
//! `{name}` captures one segment. Unknown paths answer 404 and known paths
//! with another method 405, both as problem+json.

use std::str::FromStr;

use http::Method;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    CreateLink,
    ListLinks,
    GetLink,
    UpdateLink,
    DeleteLink,
    LinkStats,
    TopLinks,
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    Redirect,
    App,
    AppAsset,
    LinkQr,
    Events,
    /// `POST /{code}`: a password-protected link's form.
    Unlock,
    Robots,
}

impl Endpoint {
    /// The name used in route tables, metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::CreateLink => "create_link",
            Self::ListLinks => "list_links",
            Self::GetLink => "get_link",
            Self::UpdateLink => "update_link",
            Self::DeleteLink => "delete_link",
            Self::LinkStats => "link_stats",
            Self::TopLinks => "top_links",
            Self::Healthz => "healthz",
            Self::Readyz => "readyz",
            Self::Metrics => "metrics",
            Self::OpenApi => "openapi",
            Self::Redirect => "redirect",
            Self::App => "app",
            Self::AppAsset => "app_asset",
            Self::LinkQr => "link_qr",
            Self::Events => "events",
            Self::Unlock => "unlock",
            Self::Robots => "robots",
        }
    }

    /// How many `{…}` segments the endpoint's handler expects (the code).
    fn captures(self) -> usize {
        match self {
            Self::GetLink
            | Self::UpdateLink
            | Self::DeleteLink
            | Self::LinkStats
            | Self::LinkQr
            | Self::AppAsset
            | Self::Unlock
            | Self::Redirect => 1,
            _ => 0,
        }
    }
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [
            Self::CreateLink,
            Self::ListLinks,
            Self::GetLink,
            Self::UpdateLink,
            Self::DeleteLink,
            Self::LinkStats,
            Self::TopLinks,
            Self::Healthz,
            Self::Readyz,
            Self::Metrics,
            Self::OpenApi,
            Self::Redirect,
            Self::App,
            Self::AppAsset,
            Self::LinkQr,
            Self::Events,
            Self::Unlock,
            Self::Robots,
        ]
        .into_iter()
        .find(|e| e.name() == s)
        .ok_or_else(|| format!("unknown endpoint {s:?}"))
    }
}

/// The public contract of DESIGN §3, in the route file format:
/// `METHODS  PATTERN  ENDPOINT`, `#` comments.
pub const DEFAULT_ROUTES: &str = "
POST      /api/v1/links               create_link
GET       /api/v1/links               list_links
GET       /api/v1/links/{code}        get_link
PATCH     /api/v1/links/{code}        update_link
DELETE    /api/v1/links/{code}        delete_link
GET       /api/v1/links/{code}/stats  link_stats
GET       /api/v1/stats/top           top_links
GET       /api/v1/links/{code}/qr     link_qr
GET       /api/v1/events              events
GET,HEAD  /app                        app
GET,HEAD  /app/                       app
GET,HEAD  /app/{asset}                app_asset
GET,HEAD  /healthz                    healthz
GET,HEAD  /readyz                     readyz
GET       /metrics                    metrics
GET       /api/v1/openapi.json        openapi
GET,HEAD  /robots.txt                 robots
GET,HEAD  /{code}                     redirect
POST      /{code}                     unlock
";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Capture,
}

#[derive(Debug, Clone)]
struct Route {
    methods: Vec<Method>,
    pattern: Vec<Segment>,
    endpoint: Endpoint,
}

/// The gateway's routes, in match order.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    NotFound,
    MethodNotAllowed(Vec<Method>),
}

impl Default for RouteTable {
    #[allow(clippy::expect_used)] // reason: a constant, parsed in this module's tests
    fn default() -> Self {
        Self::parse(DEFAULT_ROUTES).expect("the built-in route table is valid")
    }
}

impl RouteTable {
    /// Parses a route file; errors name the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut routes = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [methods, pattern, endpoint] = fields[..] else {
                return Err(format!("line {}: expected METHODS PATTERN ENDPOINT", n + 1));
            };
            let methods = methods
                .split(',')
                .map(|m| {
                    Method::from_str(m).map_err(|_| format!("line {}: bad method {m:?}", n + 1))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let endpoint: Endpoint = endpoint
                .parse()
                .map_err(|e| format!("line {}: {e}", n + 1))?;
            let Some(path) = pattern.strip_prefix('/') else {
                return Err(format!("line {}: the pattern must start with '/'", n + 1));
            };
            let pattern: Vec<Segment> = path
                .split('/')
                .map(|s| {
                    if s.starts_with('{') && s.ends_with('}') {
                        Segment::Capture
                    } else {
                        Segment::Literal(s.to_owned())
                    }
                })
                .collect();
            // Only a trailing slash may leave an empty segment (`/app/`).
            let inner = &pattern[..pattern.len().saturating_sub(1)];
            if pattern.first() == Some(&Segment::Literal(String::new()))
                || inner.iter().any(|s| *s == Segment::Literal(String::new()))
            {
                return Err(format!("line {}: empty path segment", n + 1));
            }
            let captures = pattern.iter().filter(|s| **s == Segment::Capture).count();
            if captures != endpoint.captures() {
                return Err(format!(
                    "line {}: {} takes {} {{…}} segment(s), the pattern has {captures}",
                    n + 1,
                    endpoint.name(),
                    endpoint.captures()
                ));
            }
            routes.push(Route {
                methods,
                pattern,
                endpoint,
            });
        }
        if routes.is_empty() {
            return Err("no routes".into());
        }
        Ok(Self { routes })
    }

    /// Finds the endpoint for `method` and `path`, with the captured segments.
    pub fn route<'p>(
        &self,
        method: &Method,
        path: &'p str,
    ) -> Result<(Endpoint, Vec<&'p str>), RouteError> {
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        let segments: Vec<&str> = if trimmed.is_empty() {
            Vec::new()
        } else {
            trimmed.split('/').collect()
        };
        let mut allowed = Vec::new();
        for r in &self.routes {
            let Some(captures) = match_pattern(&r.pattern, &segments) else {
                continue;
            };
            // A leading capture never swallows another route's first literal
            // (GET /api is a 404, not a redirect lookup of "api").
            if r.pattern.first() == Some(&Segment::Capture) && self.is_reserved(segments[0]) {
                continue;
            }
            if r.methods.contains(method) {
                return Ok((r.endpoint, captures));
            }
            allowed.extend(r.methods.iter().cloned());
        }
        if allowed.is_empty() {
            Err(RouteError::NotFound)
        } else {
            Err(RouteError::MethodNotAllowed(allowed))
        }
    }

    fn is_reserved(&self, first: &str) -> bool {
        self.routes
            .iter()
            .any(|o| matches!(o.pattern.first(), Some(Segment::Literal(l)) if l == first))
    }
}

fn match_pattern<'p>(pattern: &[Segment], segments: &[&'p str]) -> Option<Vec<&'p str>> {
    if pattern.len() != segments.len() {
        return None;
    }
    let mut captures = Vec::new();
    for (p, s) in pattern.iter().zip(segments) {
        match p {
            Segment::Literal(lit) if lit == s => {}
            Segment::Literal(_) => return None,
            Segment::Capture if s.is_empty() => return None,
            Segment::Capture => captures.push(*s),
        }
    }
    Some(captures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_the_public_contract() {
        let t = RouteTable::default();
        assert_eq!(
            t.route(&Method::POST, "/api/v1/links"),
            Ok((Endpoint::CreateLink, vec![]))
        );
        assert_eq!(
            t.route(&Method::GET, "/api/v1/links"),
            Ok((Endpoint::ListLinks, vec![]))
        );
        assert_eq!(
            t.route(&Method::GET, "/api/v1/links/abc"),
            Ok((Endpoint::GetLink, vec!["abc"]))
        );
        assert_eq!(
            t.route(&Method::PATCH, "/api/v1/links/abc"),
            Ok((Endpoint::UpdateLink, vec!["abc"]))
        );
        assert_eq!(
            t.route(&Method::DELETE, "/api/v1/links/abc"),
            Ok((Endpoint::DeleteLink, vec!["abc"]))
        );
        assert_eq!(
            t.route(&Method::GET, "/api/v1/links/abc/stats"),
            Ok((Endpoint::LinkStats, vec!["abc"]))
        );
        assert_eq!(
            t.route(&Method::GET, "/api/v1/stats/top"),
            Ok((Endpoint::TopLinks, vec![]))
        );
        assert_eq!(
            t.route(&Method::GET, "/aB3xY9z"),
            Ok((Endpoint::Redirect, vec!["aB3xY9z"]))
        );
        assert_eq!(
            t.route(&Method::HEAD, "/aB3xY9z"),
            Ok((Endpoint::Redirect, vec!["aB3xY9z"]))
        );
        assert_eq!(
            t.route(&Method::GET, "/healthz"),
            Ok((Endpoint::Healthz, vec![]))
        );
    }

    #[test]
    fn routes_the_dashboard_qr_and_events() {
        let t = RouteTable::default();
        assert_eq!(t.route(&Method::GET, "/app"), Ok((Endpoint::App, vec![])));
        assert_eq!(t.route(&Method::GET, "/app/"), Ok((Endpoint::App, vec![])));
        assert_eq!(
            t.route(&Method::GET, "/app/app.js"),
            Ok((Endpoint::AppAsset, vec!["app.js"]))
        );
        assert_eq!(
            t.route(&Method::GET, "/api/v1/links/abc/qr"),
            Ok((Endpoint::LinkQr, vec!["abc"]))
        );
        assert_eq!(
            t.route(&Method::GET, "/api/v1/events"),
            Ok((Endpoint::Events, vec![]))
        );
        assert_eq!(t.route(&Method::GET, "/app/a/b"), Err(RouteError::NotFound));
        assert!(RouteTable::parse("GET / healthz").is_err());
        assert!(RouteTable::parse("GET /a//b healthz").is_err());
    }

    #[test]
    fn unknown_paths_and_methods() {
        let t = RouteTable::default();
        assert_eq!(t.route(&Method::GET, "/"), Err(RouteError::NotFound));
        assert_eq!(t.route(&Method::GET, "/api"), Err(RouteError::NotFound));
        assert_eq!(t.route(&Method::GET, "/a/b"), Err(RouteError::NotFound));
        assert_eq!(
            t.route(&Method::GET, "/api/v1/links/"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            t.route(&Method::PUT, "/api/v1/links"),
            Err(RouteError::MethodNotAllowed(vec![
                Method::POST,
                Method::GET
            ]))
        );
        assert_eq!(
            t.route(&Method::PUT, "/abc"),
            Err(RouteError::MethodNotAllowed(vec![
                Method::GET,
                Method::HEAD,
                Method::POST
            ]))
        );
        assert_eq!(
            t.route(&Method::POST, "/abc"),
            Ok((Endpoint::Unlock, vec!["abc"]))
        );
        assert_eq!(
            t.route(&Method::GET, "/robots.txt"),
            Ok((Endpoint::Robots, vec![]))
        );
    }

    #[test]
    fn a_route_file_can_remap_and_drop_endpoints() {
        let t = RouteTable::parse(
            "# v2 only, no top links\nPOST /v2/links create_link\nGET /v2/links/{id} get_link\nGET,HEAD /{code} redirect\n",
        )
        .unwrap();
        assert_eq!(
            t.route(&Method::GET, "/v2/links/x"),
            Ok((Endpoint::GetLink, vec!["x"]))
        );
        assert_eq!(
            t.route(&Method::GET, "/api/v1/stats/top"),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            t.route(&Method::GET, "/v2"),
            Err(RouteError::NotFound),
            "v2 is reserved"
        );
    }

    #[test]
    fn bad_route_files_name_the_line() {
        assert!(
            RouteTable::parse("GET /x")
                .unwrap_err()
                .starts_with("line 1")
        );
        assert!(
            RouteTable::parse("\nGET /x nope")
                .unwrap_err()
                .contains("line 2: unknown endpoint")
        );
        assert!(
            RouteTable::parse("GET /x/{a} top_links")
                .unwrap_err()
                .contains("segment")
        );
        assert!(
            RouteTable::parse("GET x redirect")
                .unwrap_err()
                .contains("'/'")
        );
        assert!(
            RouteTable::parse("G@T /{c} redirect")
                .unwrap_err()
                .contains("bad method")
        );
        assert!(RouteTable::parse("# nothing").is_err());
    }
}
