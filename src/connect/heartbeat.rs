//! Proof of life for the systemd watchdog, beaten by the supervisor.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Proof of life for the systemd watchdog: beats on every turn of the supervisor's loops (at
/// least every `watchdog_period`), whatever state it is in.
#[derive(Debug, Clone)]
pub struct Heartbeat(Arc<Mutex<Instant>>);

impl Heartbeat {
    pub(crate) fn new() -> Self {
        Self(Arc::new(Mutex::new(Instant::now())))
    }

    pub(crate) fn beat(&self) {
        if let Ok(mut last) = self.0.lock() {
            *last = Instant::now();
        }
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        self.0
            .lock()
            .map(|last| last.elapsed())
            .unwrap_or(Duration::MAX)
    }
}
