//! The `LinkResolver` gRPC service.
//!
//! The code passes the fleet's input policy first: empty, over 64 bytes or
//! holding a control character is INVALID_ARGUMENT; a printable code that
//! is not code-shaped names no link (NOT_FOUND, without a lookup).

use chrono::Utc;
use shortfleet_common::input;
use shortfleet_proto::v1::{
    LinkState, ResolveRequest, ResolveResponse, link_resolver_server::LinkResolver,
};
use tonic::{Request, Response, Status};

use crate::{
    lookup::{Lookup, response},
    resolver::{ResolveError, Resolver},
};

pub struct LinkResolverService {
    resolver: Resolver,
}

impl LinkResolverService {
    pub fn new(resolver: Resolver) -> Self {
        Self { resolver }
    }
}

#[tonic::async_trait]
impl LinkResolver for LinkResolverService {
    async fn resolve(
        &self,
        request: Request<ResolveRequest>,
    ) -> Result<Response<ResolveResponse>, Status> {
        let code = input::CODE.check(&request.get_ref().code)?;
        let started = std::time::Instant::now();
        let result = self.resolve_code(code, request.get_ref()).await;
        metrics::histogram!("shortfleet_resolve_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        result
    }
}

impl LinkResolverService {
    /// A link with `max_clicks` counts this redirect, unless it is
    /// password-protected and the caller has not passed its check yet, or
    /// the caller is a cache refreshing its copy (no redirect at all).
    async fn resolve_code(
        &self,
        code: &str,
        asked: &ResolveRequest,
    ) -> Result<Response<ResolveResponse>, Status> {
        match self.resolver.resolve(code).await {
            Ok(Lookup::Found(link)) => {
                let mut answer = response(&link, Utc::now());
                let counts = !asked.refresh && (link.password_hash.is_empty() || asked.unlocked);
                if let (Some(max), true, true) = (
                    link.max_clicks,
                    answer.state == LinkState::Active as i32,
                    counts,
                ) {
                    match self.resolver.count_click(code, max).await {
                        Ok(true) => {}
                        Ok(false) => answer.state = LinkState::Gone as i32,
                        Err(_) => return Err(Status::unavailable("click counter unavailable")),
                    }
                }
                Ok(Response::new(answer))
            }
            Ok(Lookup::Missing) => Err(Status::not_found("unknown code")),
            Err(ResolveError::Timeout) => Err(Status::deadline_exceeded("link store timed out")),
            Err(ResolveError::Unavailable) => Err(Status::unavailable("link store unavailable")),
        }
    }
}

/// Registers the HELP text and unit of the metrics this module records.
pub fn describe_metrics() {
    metrics::describe_histogram!(
        "shortfleet_resolve_duration_seconds",
        metrics::Unit::Seconds,
        "Time to resolve a short code."
    );
}
