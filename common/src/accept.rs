//! Taking connections off a listening socket until shutdown: the one accept
//! loop of the gateway's public listener and every operator port.

use std::{net::SocketAddr, time::Duration};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The pause after a failed accept. The usual cause is running out of file
/// descriptors (EMFILE): retrying at once would spin a core while nothing
/// frees one.
const RETRY_AFTER: Duration = Duration::from_millis(20);

/// The next connection on `listener`, or `None` once `shutdown` fires. A
/// failed accept is logged (naming `listener_name`) and retried.
pub async fn next(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    listener_name: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => return Some(connection),
                Err(e) => {
                    tracing::warn!(error = %e, listener = listener_name, "accept failed");
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            },
            () = shutdown.cancelled() => return None,
        }
    }
}
