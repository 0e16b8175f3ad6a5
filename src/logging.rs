//! Logging: `log` + `env_logger`, `RUST_LOG` honoured.
//!
//! Under systemd (`JOURNAL_STREAM` set) journald adds its own timestamps, so lines carry none;
//! they start with a syslog priority prefix (`<3>` …) instead so `journalctl -p warning` works.

use std::io::Write;

use log::Level;

/// Default filter when `RUST_LOG` is unset: our crate and librespot at info; chatty transport
/// crates at warn.
const DEFAULT_FILTER: &str = "info,libmdns=warn,hyper=warn,hyper_util=warn,rustls=warn,reqwest=warn,tungstenite=warn,tokio_tungstenite=warn";

/// Installs the global logger. Safe to call twice (the second call does nothing).
pub fn init() {
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
    let _ = builder.try_init();
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
    fn priorities_follow_syslog() {
        assert_eq!(syslog_priority(Level::Error), 3);
        assert_eq!(syslog_priority(Level::Warn), 4);
        assert_eq!(syslog_priority(Level::Info), 6);
        assert_eq!(syslog_priority(Level::Trace), 7);
    }
}
