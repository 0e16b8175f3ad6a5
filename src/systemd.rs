//! systemd integration: readiness, status text and the watchdog.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op, so the same binary runs from a
//! terminal. The watchdog is pinged only while the supervisor's heartbeat is fresh: a wedged
//! supervisor must let systemd restart the daemon rather than be hidden by a timer that ticks on
//! regardless.

use std::time::Duration;

use log::{debug, warn};
use sd_notify::NotifyState;

/// Tells systemd the speaker is up (discovery is announced and the supervisor runs).
pub fn notify_ready() {
    notify(&[NotifyState::Ready]);
}

/// Tells systemd the daemon is stopping, so it does not count the exit as a crash.
pub fn notify_stopping() {
    notify(&[NotifyState::Stopping]);
}

/// Shown by `systemctl status pispeaker`.
pub fn notify_status(text: &str) {
    notify(&[NotifyState::Status(text)]);
}

/// Pings the watchdog.
pub fn notify_watchdog() {
    notify(&[NotifyState::Watchdog]);
}

/// How often to ping, if systemd asked for a watchdog: half its timeout, as sd_watchdog_enabled(3)
/// recommends.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}

fn notify(state: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, state) {
        warn!("could not notify systemd: {e}");
    } else {
        debug!("notified systemd: {state:?}");
    }
}
