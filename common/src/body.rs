//! A response body that holds something until the body is done: read to
//! its end, or dropped. What it holds marks the response as still going on
//! (a call counted in flight on an endpoint, a request in flight on a
//! connection), so streams count for as long as they stream.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

/// `body`, unchanged to whoever reads it, holding `held` until dropped.
pub struct Holding<B, G> {
    body: B,
    _held: G,
}

impl<B, G> Holding<B, G> {
    pub fn new(body: B, held: G) -> Self {
        Self { body, _held: held }
    }
}

impl<B: http_body::Body + Unpin, G: Unpin> http_body::Body for Holding<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
