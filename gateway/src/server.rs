//! The HTTP listener: HTTP/1.1 with keep-alive and h2c on one port, the
//! socket deadlines (a header read timeout against slowloris among them)
//! and per-address cap of [`crate::sockets`], and a graceful drain on
//! shutdown (stop accepting, let in-flight requests finish within the
//! grace period).

use std::{convert::Infallible, sync::Arc, time::Duration};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use shortfleet_common::body::Holding;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    handlers,
    sockets::{self, Activity, ConnectionCounts, Deadlines, Expiry, Opening, Watched},
    state::State,
};

pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    header_read_timeout: Duration,
    grace: Duration,
    shutdown: CancellationToken,
) {
    let policy = state.config.sockets;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // No timer, so no header timeout of hyper's: the connection's own
        // watch enforces it (see `sockets`), once per connection instead
        // of a timer armed and cancelled on every request.
        .header_read_timeout(None)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(policy.h2_ping_interval)
        .keep_alive_timeout(policy.h2_ping_timeout);
    let deadlines = Deadlines {
        idle: policy.idle,
        header_read: header_read_timeout,
    };
    let graceful = GracefulShutdown::new();
    let counts = Arc::new(ConnectionCounts::default());
    while let Some((stream, peer)) =
        shortfleet_common::accept::next(&listener, &shutdown, "http").await
    {
        // Refused before any parsing: dropping the stream closes it.
        let slot = if state.config.trusted_proxies.contains(peer.ip()) {
            None
        } else {
            match counts.admit(peer.ip(), policy.max_per_ip) {
                Some(slot) => Some(slot),
                None => {
                    metrics::counter!("shortfleet_connections_refused_total", "reason" => "per_ip_cap")
                        .increment(1);
                    continue;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            let opening = sockets::opening(&stream, policy.first_byte).await;
            if opening == Opening::Silent {
                metrics::counter!("shortfleet_connections_refused_total", "reason" => "no_first_byte")
                    .increment(1);
                return;
            }
            let activity = Activity::new();
            activity.serving_http2(opening == Opening::Http2);
            let io = TokioIo::new(Watched::new(stream, activity.clone()));
            let requests = activity.clone();
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                requests.serving_http2(req.version() == http::Version::HTTP_2);
                let in_flight = requests.request();
                let answer = handlers::handle(state.clone(), req, peer);
                async move {
                    Ok::<_, Infallible>(answer.await?.map(|body| Holding::new(body, in_flight)))
                }
            });
            let conn = watcher.watch(
                builder
                    .serve_connection_with_upgrades(io, service)
                    .into_owned(),
            );
            // The connection first: a head that arrived as a deadline
            // passed is served, as hyper's own timeout would have done.
            tokio::select! {
                biased;
                ended = conn => if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                },
                // Dropping the connection closes the socket.
                expiry = sockets::expired(&activity, deadlines) => match expiry {
                    Expiry::Idle => {
                        metrics::counter!("shortfleet_connections_closed_idle_total").increment(1);
                    }
                    Expiry::HeaderRead => {
                        metrics::counter!("shortfleet_connections_header_timeouts_total").increment(1);
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over with connections still open");
    }
}

/// Registers the HELP text and unit of the metrics this module records.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "shortfleet_connections_refused_total",
        metrics::Unit::Count,
        "Client connections refused, by reason."
    );
    metrics::describe_counter!(
        "shortfleet_connections_closed_idle_total",
        metrics::Unit::Count,
        "Client connections closed for being idle too long."
    );
    metrics::describe_counter!(
        "shortfleet_connections_header_timeouts_total",
        metrics::Unit::Count,
        "HTTP/1 client connections closed for sending no request head within the header read timeout."
    );
}
