//! Applies a changed configuration to the running daemon, without a restart where it can.
//!
//! Discovery and the Jellyfin sidecar are tasks that take their settings at start, so a change
//! (from the web app) stops the old task and starts a new one: a new name is what zeroconf
//! `getInfo` answers at once, and a new Jellyfin server (or on/off) pairs at once. The Spotify
//! session and the player are not touched by these.
//!
//! The audio side (board, device, mixer control, volume curve) is switched by the web API itself
//! through [`crate::audio::LiveAudio`], because the answer to the request must say whether the
//! new device could be opened; [`audio_spec`] is what both it and the daemon's start-up build
//! the audio side from.

use std::time::Duration;

use librespot_core::authentication::Credentials;
use librespot_core::config::DeviceType;
use log::info;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::audio::{self, AudioSpec, MixerSettings};
use crate::config::{Config, MixerKind};
use crate::connect::control::ControlHandle;
use crate::connect::discovery::{self, DiscoverySettings};
use crate::connect::netwatch::AddressEvents;
use crate::jellyfin::{self, cast, JellyfinState};

/// The audio side a config asks for. Only the default device falls back to the null sink when
/// the machine has no sound card: a PCM the user named must exist.
pub fn audio_spec(config: &Config) -> AudioSpec {
    let pcm =
        (config.device != "default" || audio::has_sound_card()).then(|| config.device.clone());
    AudioSpec {
        mixer: MixerSettings {
            use_hardware: config.mixer == MixerKind::Alsa && pcm.is_some(),
            device: config.alsa_mixer_device.clone(),
            control: config.alsa_mixer_control.clone(),
            index: config.alsa_mixer_index,
            curve: config.volume_ctrl,
            range_db: config.volume_range,
        },
        pcm,
    }
}

/// A task with its own stop switch.
struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Asks the task to stop and waits for it (mDNS unregisters, the zeroconf port is freed,
    /// the Jellyfin socket closes) before a new one starts.
    async fn stop(self, wait: Duration) {
        self.stop.send_replace(true);
        let _ = tokio::time::timeout(wait, self.task).await;
    }
}

/// What discovery needs besides the config.
pub struct DiscoveryParts {
    pub device_id: String,
    pub client_id: String,
    pub device_type: DeviceType,
    pub credentials: mpsc::Sender<Credentials>,
    /// Fired by the first launch (the daemon's READY waits for it).
    pub ready: Option<oneshot::Sender<Result<(), String>>>,
    /// New network addresses cut discovery's retry delay short.
    pub addresses: AddressEvents,
}

/// What the Jellyfin sidecar needs besides the config.
pub struct JellyfinParts {
    pub cast: Option<cast::CastSettings>,
    /// The web app's `Sources::mixer_changed`.
    pub mixer_changed: std::sync::Arc<tokio::sync::Notify>,
    pub control: ControlHandle,
    pub state: watch::Sender<JellyfinState>,
    pub cast_handle: watch::Sender<Option<cast::CastHandle>>,
}

fn start_discovery(config: &Config, parts: &mut DiscoveryParts) -> Option<Running> {
    if config.disable_discovery {
        if let Some(ready) = parts.ready.take() {
            let _ = ready.send(Ok(()));
        }
        return None;
    }
    let ready = parts.ready.take().unwrap_or_else(|| oneshot::channel().0);
    let (stop, stopped) = watch::channel(false);
    let settings = DiscoverySettings {
        device_id: parts.device_id.clone(),
        client_id: parts.client_id.clone(),
        name: config.name.clone(),
        device_type: parts.device_type,
        port: config.zeroconf_port,
    };
    let task = tokio::spawn(discovery::run(
        settings,
        parts.credentials.clone(),
        ready,
        stopped,
        parts.addresses.clone(),
    ));
    Some(Running { stop, task })
}

fn start_jellyfin(config: &Config, parts: &JellyfinParts) -> Option<Running> {
    if !config.jellyfin.enabled {
        parts.state.send_replace(JellyfinState::Disabled);
        return None;
    }
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(jellyfin::run(
        config.clone(),
        parts.cast.clone(),
        parts.mixer_changed.clone(),
        parts.control.clone(),
        parts.state.clone(),
        Some(parts.cast_handle.clone()),
        stopped,
    ));
    Some(Running { stop, task })
}

async fn stop(running: Option<Running>, wait: Duration) {
    if let Some(running) = running {
        running.stop(wait).await;
    }
}

/// Runs discovery and the Jellyfin sidecar for the current config, restarting each when a
/// setting it uses changes, until `shutdown`.
pub async fn run(
    mut config: watch::Receiver<Config>,
    mut discovery_parts: DiscoveryParts,
    jellyfin_parts: JellyfinParts,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut current = config.borrow_and_update().clone();
    let mut discovery = start_discovery(&current, &mut discovery_parts);
    let mut jellyfin = start_jellyfin(&current, &jellyfin_parts);
    loop {
        tokio::select! {
            changed = config.changed() => {
                if changed.is_err() {
                    // Nobody can change the settings any more: keep what runs.
                    let _ = shutdown.changed().await;
                    break;
                }
                let next = config.borrow_and_update().clone();
                if next.name != current.name
                    || next.zeroconf_port != current.zeroconf_port
                    || next.disable_discovery != current.disable_discovery
                {
                    info!("discovery restarts as \"{}\"", next.name);
                    stop(discovery.take(), Duration::from_secs(3)).await;
                    discovery = start_discovery(&next, &mut discovery_parts);
                }
                if next.name != current.name || next.jellyfin != current.jellyfin {
                    info!("the Jellyfin sidecar restarts with the new settings");
                    stop(jellyfin.take(), Duration::from_secs(3)).await;
                    jellyfin_parts.cast_handle.send_replace(None);
                    jellyfin = start_jellyfin(&next, &jellyfin_parts);
                }
                current = next;
            }
            _ = shutdown.changed() => break,
        }
    }
    stop(discovery, Duration::from_millis(300)).await;
    stop(jellyfin, Duration::from_millis(300)).await;
}
