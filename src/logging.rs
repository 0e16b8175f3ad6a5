//! Logging: `log` + `env_logger`, `RUST_LOG` honoured.
//!
//! Under systemd (`JOURNAL_STREAM` set) journald adds its own timestamps, so lines carry none;
//! they start with a syslog priority prefix (`<3>` …) instead so `journalctl -p warning` works.

use std::io::Write;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Default filter when `RUST_LOG` is unset: our crate and librespot at info; chatty transport
/// crates at warn.
const DEFAULT_FILTER: &str = "info,libmdns=warn,hyper=warn,hyper_util=warn,rustls=warn,reqwest=warn,tungstenite=warn,tokio_tungstenite=warn";

/// Installs the global logger. Safe to call twice (the second call does nothing).
pub fn init() {
    let logger = builder().build();
    // librespot's connection warnings and its "Connecting to AP" line are recorded even when
    // the user filters them out.
    let max = logger.filter().max(LevelFilter::Info);
    if log::set_boxed_logger(Box::new(HintRecorder { inner: logger })).is_ok() {
        log::set_max_level(max);
    }
}

fn builder() -> env_logger::Builder {
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(DEFAULT_FILTER);
    if let Ok(filters) = std::env::var("RUST_LOG") {
        builder.parse_filters(&filters);
    }
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.format(|buf, record| {
            writeln!(
                buf,
                "<{}>{}: {}",
                syslog_priority(record.level()),
                record.target(),
                record.args()
            )
        });
    } else {
        builder.format_timestamp_millis();
    }
    builder
}

/// The last thing librespot's session said about its connection, with when it said it.
static CONNECTION_HINT: Mutex<Option<(Instant, String)>> = Mutex::new(None);

/// librespot does not say why a session was invalidated, but its session module logs the
/// symptom just before. The logger keeps the last such line so the supervisor can give a loss
/// its reason.
struct HintRecorder {
    inner: env_logger::Logger,
}

impl Log for HintRecorder {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata) || is_session_line(metadata)
    }

    fn log(&self, record: &Record) {
        if is_session_warning(record.metadata()) {
            record_hint(record.level(), &record.args().to_string());
        } else if is_session_line(record.metadata()) {
            note_session_info(&record.args().to_string());
        }
        if self.inner.enabled(record.metadata()) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

fn is_session_line(metadata: &Metadata) -> bool {
    metadata.target().starts_with("librespot_core::session") && metadata.level() <= Level::Info
}

/// The port of the access point librespot connected to last: 4070, or 443 or 80 behind a
/// firewall (core/src/apresolve.rs:131-136 hands them out in that order). 0: none yet.
static AP_PORT_IN_USE: AtomicU16 = AtomicU16::new(0);

/// Reads librespot's `Connecting to AP "host:port"` (core/src/session.rs:216).
pub fn note_session_info(message: &str) {
    if let Some(port) = parse_ap_line(message) {
        AP_PORT_IN_USE.store(port, Ordering::Relaxed);
    }
}

fn parse_ap_line(message: &str) -> Option<u16> {
    let address = message.strip_prefix("Connecting to AP ")?.trim_matches('"');
    address.rsplit_once(':')?.1.parse().ok()
}

/// See [`AP_PORT_IN_USE`].
pub fn ap_port_in_use() -> Option<u16> {
    match AP_PORT_IN_USE.load(Ordering::Relaxed) {
        0 => None,
        port => Some(port),
    }
}

fn is_session_warning(metadata: &Metadata) -> bool {
    metadata.target().starts_with("librespot_core::session") && metadata.level() <= Level::Warn
}

fn record_hint(level: Level, message: &str) {
    let reason = classify_session_message(level, message);
    if let Ok(mut hint) = CONNECTION_HINT.lock() {
        *hint = Some((Instant::now(), reason));
    }
}

/// Turns librespot's session log line into a loss reason a person understands.
fn classify_session_message(level: Level, message: &str) -> String {
    let lower = message.to_ascii_lowercase();
    if lower.contains("connection reset") {
        "connection reset".into()
    } else if lower.contains("timed out") {
        "connection timed out".into()
    } else if lower.contains("broken pipe") {
        "connection broken".into()
    } else if lower.contains("connection to server closed") {
        if level == Level::Error {
            "connection error (reset or timed out)".into()
        } else {
            "connection closed by Spotify".into()
        }
    } else {
        message.to_string()
    }
}

/// The connection hint recorded after `since`, if any.
pub fn connection_hint_since(since: Instant) -> Option<String> {
    let hint = CONNECTION_HINT.lock().ok()?;
    match hint.as_ref() {
        Some((at, reason)) if *at >= since => Some(reason.clone()),
        _ => None,
    }
}

fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_points_port_is_read_from_librespots_line() {
        assert_eq!(
            parse_ap_line("Connecting to AP \"ap-gew4.spotify.com:4070\""),
            Some(4070)
        );
        assert_eq!(
            parse_ap_line("Connecting to AP \"ap.spotify.com:443\""),
            Some(443)
        );
        assert_eq!(parse_ap_line("Connecting to AP \"[2600::1]:80\""), Some(80));
        assert_eq!(parse_ap_line("Connection to server closed."), None);
    }

    #[test]
    fn session_messages_become_reasons() {
        assert_eq!(
            classify_session_message(Level::Error, "Connection reset by peer (os error 104)"),
            "connection reset"
        );
        assert_eq!(
            classify_session_message(Level::Warn, "Connection to server closed."),
            "connection closed by Spotify"
        );
        assert_eq!(
            classify_session_message(Level::Error, "Connection to server closed."),
            "connection error (reset or timed out)"
        );
        let before = Instant::now();
        record_hint(Level::Error, "Broken pipe (os error 32)");
        assert_eq!(
            connection_hint_since(before).as_deref(),
            Some("connection broken")
        );
        assert_eq!(
            connection_hint_since(Instant::now() + std::time::Duration::from_secs(1)),
            None
        );
    }

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(syslog_priority(Level::Error), 3);
        assert_eq!(syslog_priority(Level::Warn), 4);
        assert_eq!(syslog_priority(Level::Info), 6);
        assert_eq!(syslog_priority(Level::Trace), 7);
    }
}
