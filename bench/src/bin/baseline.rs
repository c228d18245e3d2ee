//! The ceiling for any redirect on this machine: a bare hyper server that
//! answers every request with a 301 and a 60-byte `Location`, nothing else.
//! Usage: `baseline <addr>` (prints the bound address once listening).

use std::convert::Infallible;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Exactly 60 bytes, like a typical short link's target.
const LOCATION: &str = "https://example.com/a/fairly/typical/landing/page?utm=bench1";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    const _: () = assert!(LOCATION.len() == 60);
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = TcpListener::bind(&addr).await?;
    println!("{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|_req| async {
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
                response
                    .headers_mut()
                    .insert(header::LOCATION, header::HeaderValue::from_static(LOCATION));
                Ok::<_, Infallible>(response)
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
