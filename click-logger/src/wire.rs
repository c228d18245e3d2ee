//! Click batches taken as the bytes they arrived in.
//!
//! The gateway sends each click already encoded (`ClickEvent` bytes laid end
//! to end as a `ClickBatch`), and an AMQP click message is those same bytes
//! again. Decoding every click into eight owned strings only to encode it
//! back was most of click-logger's CPU (allocation and freeing alone a
//! quarter of it, BENCHMARKS.md, fourteenth session). So `StreamClicks`, the
//! gateway's path, reads a batch as a `RawClickBatch`
//! ([`shortfleet_proto::raw`]): each click a slice of the received buffer.
//! Each click is still decoded once, into one reused `ClickEvent`, to check
//! it ([`crate::service::validate`]), and published as the bytes it came in
//! (or as its own encoding, if those bytes hold more than its fields).
//!
//! The wire contract is unchanged, and reflection still describes
//! `ClickBatch`. Every other method is served by the generated server
//! ([`ClickLoggerRoutes`]).

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use shortfleet_proto::{
    codec::RequestCodec,
    raw::RawClickBatch,
    v1::{
        ClickAck,
        click_logger_server::{self, ClickLoggerServer},
    },
};
use tonic::{
    body::Body,
    codegen::{Body as HttpBody, BoxFuture, Service, StdError, http},
    server::{Grpc, NamedService, StreamingService},
};

use crate::service::ClickLoggerService;

/// The method taken raw.
pub const STREAM_CLICKS_PATH: &str = "/shortener.v1.ClickLogger/StreamClicks";

/// The `ClickLogger` service as served: `StreamClicks` raw, the rest
/// generated.
#[derive(Clone)]
pub struct ClickLoggerRoutes {
    service: ClickLoggerService,
    generated: ClickLoggerServer<ClickLoggerService>,
    max_message: usize,
}

impl ClickLoggerRoutes {
    /// `max_message` bounds a request's size on every method.
    pub fn new(service: ClickLoggerService, max_message: usize) -> Self {
        Self {
            generated: ClickLoggerServer::new(service.clone())
                .max_decoding_message_size(max_message),
            service,
            max_message,
        }
    }
}

impl NamedService for ClickLoggerRoutes {
    const NAME: &'static str = click_logger_server::SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for ClickLoggerRoutes
where
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != STREAM_CLICKS_PATH {
            return self.generated.call(request);
        }
        let method = RawStream(self.service.clone());
        let max_message = self.max_message;
        Box::pin(async move {
            let mut grpc = Grpc::new(RequestCodec::<ClickAck, RawClickBatch>::default())
                .apply_max_message_size_config(Some(max_message), None);
            Ok(grpc.streaming(method, request).await)
        })
    }
}

/// `StreamClicks` over raw batches.
struct RawStream(ClickLoggerService);

impl StreamingService<RawClickBatch> for RawStream {
    type Response = ClickAck;
    type ResponseStream = crate::service::AckStream;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<RawClickBatch>>) -> Self::Future {
        let acks = self.0.acknowledge(request.into_inner());
        Box::pin(async move { Ok(tonic::Response::new(acks)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raw_path_names_the_generated_method() {
        assert_eq!(
            STREAM_CLICKS_PATH,
            format!("/{}/StreamClicks", click_logger_server::SERVICE_NAME)
        );
    }
}
