//! Waiting for a condition in async tests, on tokio's clock (so it also works with a paused
//! clock, where the limit is simulated time).
#![allow(dead_code)]

use std::time::Duration;

use tokio::time::Instant;

/// Polls `cond` every 10 ms until it holds; fails the test after `limit`. Returns how long it took.
pub async fn until(limit: Duration, what: &str, cond: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}
