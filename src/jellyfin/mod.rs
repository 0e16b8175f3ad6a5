//! Jellyfin sidecar.

use std::process::ExitCode;

/// `pispeaker jellyfin pair` (interim until the sidecar lands).
pub async fn pair_interactive(_config: crate::config::Config, _server: Option<String>) -> ExitCode {
    eprintln!("Jellyfin pairing is not part of this build yet");
    ExitCode::from(1)
}
