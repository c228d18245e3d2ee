//! gRPC clients for the fleet. Channels connect lazily (the gateway starts
//! and serves what it can while a service is down), and every call carries a
//! deadline (sent as `grpc-timeout`) and the request id.

use std::{future::Future, sync::Arc, time::Duration};

use crate::{clicks::wire::ClickStreamClient, problem::Problem, resilience::Guard};
use shortfleet_common::grpc::Balanced as Channel;
use shortfleet_common::tls::names;
use shortfleet_proto::v1::{
    analytics_client::AnalyticsClient, link_resolver_client::LinkResolverClient,
    link_writer_client::LinkWriterClient,
};
use tonic::metadata::MetadataValue;

#[derive(Clone)]
pub struct Upstreams {
    pub writer: LinkWriterClient<Channel>,
    pub resolver: LinkResolverClient<Channel>,
    pub clicks: ClickStreamClient,
    pub analytics: AnalyticsClient<Channel>,
    pub timeout: Duration,
    writer_guard: Arc<Guard>,
    resolver_guard: Arc<Guard>,
    analytics_guard: Arc<Guard>,
}

fn channel(
    config: &crate::config::Config,
    url: &str,
    key: &str,
    service: &str,
) -> anyhow::Result<Channel> {
    shortfleet_common::grpc::channel(
        url,
        key,
        config.upstream_timeout,
        config.tls.as_ref(),
        service,
        &config.discovery,
    )
}

impl Upstreams {
    pub fn new(config: &crate::config::Config) -> anyhow::Result<Self> {
        let t = config.upstream_timeout;
        Ok(Self {
            writer: LinkWriterClient::new(channel(
                config,
                &config.write_svc_url,
                "SHORTFLEET_WRITE_SVC_URL",
                names::WRITE_SVC,
            )?),
            resolver: LinkResolverClient::new(channel(
                config,
                &config.read_svc_url,
                "SHORTFLEET_READ_SVC_URL",
                names::READ_SVC,
            )?),
            clicks: ClickStreamClient::new(channel(
                config,
                &config.click_logger_url,
                "SHORTFLEET_CLICK_LOGGER_URL",
                names::CLICK_LOGGER,
            )?),
            analytics: AnalyticsClient::new(channel(
                config,
                &config.analytics_url,
                "SHORTFLEET_ANALYTICS_URL",
                names::ANALYTICS_SVC,
            )?),
            timeout: t,
            writer_guard: Arc::new(Guard::new(
                "write-svc",
                config.breaker,
                config.max_in_flight,
            )),
            resolver_guard: Arc::new(Guard::new("read-svc", config.breaker, config.max_in_flight)),
            analytics_guard: Arc::new(Guard::new(
                "analytics-svc",
                config.breaker,
                config.max_in_flight,
            )),
        })
    }

    /// Calls write-svc through its guard; `f` gets a fresh client per attempt.
    pub async fn writer<T, F, Fut>(&self, idempotent: bool, f: F) -> Result<T, Problem>
    where
        F: Fn(LinkWriterClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        guarded(&self.writer_guard, idempotent, || f(self.writer.clone())).await
    }

    /// Calls read-svc (always idempotent).
    pub async fn resolver<T, F, Fut>(&self, f: F) -> Result<T, tonic::Status>
    where
        F: Fn(LinkResolverClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.resolver_guard
            .call(true, || f(self.resolver.clone()))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Calls analytics-svc (reads only, so idempotent).
    pub async fn analytics<T, F, Fut>(&self, f: F) -> Result<T, Problem>
    where
        F: Fn(AnalyticsClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        guarded(&self.analytics_guard, true, || f(self.analytics.clone())).await
    }

    /// Wraps `message` with the deadline and request id every call carries.
    pub fn request<T>(&self, message: T, request_id: &str) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        if let Ok(v) = MetadataValue::try_from(request_id) {
            request.metadata_mut().insert("x-request-id", v);
        }
        shortfleet_common::trace::inject_grpc(request.metadata_mut());
        request
    }
}

async fn guarded<T, F, Fut>(guard: &Guard, idempotent: bool, f: F) -> Result<T, Problem>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    guard
        .call(idempotent, f)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| Problem::from_grpc(&s))
}
