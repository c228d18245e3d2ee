//! Waiting for an asynchronous effect (a relay publish, a cache
//! invalidation, a dependency coming back) by polling it against a
//! deadline. The short poll interval is the only sleep; nothing here waits
//! a fixed time and hopes.

use std::{future::Future, time::Duration};

use crate::DEADLINE;

/// Between two looks at a condition: short, so a test waits little past
/// the moment the effect happens.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `check` until it returns `Some`, failing the test after
/// [`DEADLINE`] with a message naming `what` was awaited.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    within(DEADLINE, check)
        .await
        .unwrap_or_else(|| panic!("timed out after {DEADLINE:?} waiting for {what}"))
}

/// Polls `check` until it returns `Some` or `limit` passes (then `None`),
/// for a test that asserts its own deadline or message.
pub async fn within<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    within_or_last(limit, || {
        let look = check();
        async move { look.await.ok_or(()) }
    })
    .await
    .ok()
}

/// Polls `check` until it returns `Ok` or `limit` passes; then the last
/// `Err` it returned, for a failure message that says what was seen
/// instead (a status, a count).
pub async fn within_or_last<T, L, F, Fut>(limit: Duration, mut check: F) -> Result<T, L>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, L>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(last) if tokio::time::Instant::now() >= deadline => return Err(last),
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}
