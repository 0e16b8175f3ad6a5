//! The Jellyfin sidecar: the speaker as a Jellyfin session.

use std::process::ExitCode;

use serde::Serialize;
use tokio::sync::watch;

use crate::config::Config;
use crate::connect::control::ControlHandle;

/// What the status page shows about Jellyfin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JellyfinState {
    Disabled,
    /// Waiting for the user to approve the Quick Connect code in Jellyfin.
    Pairing {
        code: String,
    },
    Connected {
        server: String,
    },
    Retrying {
        last_error: String,
    },
}

/// Message for the parts of Jellyfin support that are not in this version yet.
const NOT_YET: &str = "Jellyfin support is not in this version of pispeaker yet";

/// The sidecar task. Until it is built, an enabled `[jellyfin]` section is reported (log and
/// status page) instead of being silently ignored.
pub async fn run(
    _config: Config,
    _control: ControlHandle,
    state: watch::Sender<JellyfinState>,
    _shutdown: watch::Receiver<bool>,
) {
    log::warn!("{NOT_YET}: the [jellyfin] section is ignored");
    state.send_replace(JellyfinState::Retrying {
        last_error: NOT_YET.to_string(),
    });
}

/// `pispeaker jellyfin pair`.
pub async fn pair_interactive(_config: Config, _server: Option<String>) -> ExitCode {
    eprintln!("{NOT_YET}: nothing to pair");
    ExitCode::from(1)
}
