//! The daemon: builds every long-lived part, runs them side by side, and stops them in order.
//!
//! Start-up order matters: configuration problems and missing devices are found before anything
//! is announced on the network, so a misconfigured speaker never shows up in the Spotify app only
//! to fail when picked. After that nothing may end the process but a signal: every task below
//! retries on its own.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use librespot_core::config::{DeviceType, SessionConfig};
use librespot_core::session::Session;
use librespot_playback::config::PlayerConfig;
use librespot_playback::player::Player;
use log::{error, info, warn};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};

use crate::audio;
use crate::config::{self, Config};
use crate::connect::control::{self, SpeakerStatus};
use crate::connect::credentials::{self, CredentialStore};
use crate::connect::discovery::{self, DiscoverySettings};
use crate::systemd;

/// Exit status for a problem with the machine (devices, state directory) rather than the config.
const EXIT_ENVIRONMENT: u8 = 1;

/// Runs the speaker until SIGTERM/SIGINT.
pub fn run(config: Config) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pispeaker")
        .build();
    match runtime {
        Ok(runtime) => {
            let code = runtime.block_on(run_async(config));
            // Player and discovery threads must not keep a stopping daemon alive.
            runtime.shutdown_timeout(Duration::from_millis(300));
            code
        }
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            ExitCode::from(EXIT_ENVIRONMENT)
        }
    }
}

async fn run_async(config: Config) -> ExitCode {
    if let Err(e) = config::check_state_dir(&config.cache) {
        error!("{e}");
        return ExitCode::from(EXIT_ENVIRONMENT);
    }
    let device_id = match credentials::load_or_create_device_id(&config.cache) {
        Ok(id) => id,
        Err(e) => {
            error!(
                "cannot create the device id in {}: {e}",
                config.cache.display()
            );
            return ExitCode::from(EXIT_ENVIRONMENT);
        }
    };
    // TODO(merge): audio, player, supervisor, status, jellyfin.
    ExitCode::SUCCESS
}
