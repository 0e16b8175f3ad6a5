//! The daemon: builds every long-lived part, runs them side by side, and stops them in order.
//!
//! Start-up order matters: the state directory and the audio devices are checked before anything
//! is announced on the network, so a misconfigured speaker never shows up in the Spotify app only
//! to fail when picked. After that nothing ends the process but a signal: every task retries on
//! its own, and the systemd watchdog is fed only while the supervisor's heartbeat is fresh.

use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use librespot_core::config::{DeviceType, SessionConfig};
use librespot_core::session::Session;
use librespot_playback::config::{Bitrate as LibrespotBitrate, PlayerConfig};
use librespot_playback::mixer::Mixer;
use librespot_playback::player::Player;
use log::{error, info, warn};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};

use crate::audio::{self, AudioError, SinkFactory, VolumeMemory, MAX_VOLUME};
use crate::config::{self, Bitrate, Config, ConfigArgs};
use crate::connect::ap_link::{self, LinkTuning};
use crate::connect::control::{self, SpeakerStatus};
use crate::connect::credentials::{self, CredentialStore};

use crate::connect::librespot_backend::{self, LibrespotBackend};
use crate::connect::netwatch;
use crate::connect::supervisor::{Supervisor, SupervisorSettings};
use crate::connect::volume_gate::StartupGate;
use crate::live_settings::{self, DiscoveryParts, JellyfinParts};
use crate::source::{CastSource, Sources, SpotifySource};
use crate::{jellyfin, status, systemd, web};

/// Exit status for a problem with the machine (devices, state directory) rather than the config.
const EXIT_ENVIRONMENT: u8 = 1;

/// Runs the speaker until SIGTERM/SIGINT. `args` are what the configuration was loaded from:
/// the web app writes settings into that file and re-reads it the same way.
pub fn run(config: Config, args: ConfigArgs) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("pispeaker")
        .build();
    match runtime {
        Ok(runtime) => {
            let code = runtime.block_on(run_async(config, args));
            // Tasks still winding down (mDNS, a Spirc on a dead link) must not hold up the exit.
            runtime.shutdown_timeout(Duration::from_millis(300));
            code
        }
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            ExitCode::from(EXIT_ENVIRONMENT)
        }
    }
}

/// The audio side, opened before anything else.
struct Audio {
    /// The mixer and the output route, switched live when the web app changes the board, the
    /// device or the curve.
    live: Arc<audio::LiveAudio>,
    sink: SinkFactory,
    /// The PCM the Jellyfin cast plays into: the same one as Spotify; none with the null sink.
    cast_output: Option<audio::OutputFactory>,
}

fn open_audio(config: &Config, remembered_volume: Option<u16>) -> Result<Audio, AudioError> {
    let start_volume =
        remembered_volume.unwrap_or_else(|| percent_to_volume(config.initial_volume));
    let spec = live_settings::audio_spec(config);
    if spec.pcm.is_none() {
        info!("no sound card found: playing into a null sink so the speaker stays discoverable");
    }
    let opener = audio::LiveAudio::alsa_opener();
    let opened = opener(&spec)?;
    if !opened.hardware {
        // Software volume forgets everything on restart: start where the user left it (or, on a
        // fresh install, at the configured start-up volume).
        opened.mixer.set_volume(start_volume);
    }
    let has_card = spec.pcm.is_some();
    let live = Arc::new(audio::LiveAudio::new(spec, opened, opener));
    let sink = audio::RoutedSink::factory(live.route()).ok_or_else(|| {
        AudioError::Other(
            "this build has no ALSA backend (rebuild with librespot-playback's alsa-backend feature)"
                .into(),
        )
    })?;
    // Without a sound card at start the cast is not offered (nothing to play it on).
    let cast_output = has_card.then(|| audio::RoutedOutput::factory(live.route()));
    Ok(Audio {
        live,
        sink,
        cast_output,
    })
}

fn player_config(config: &Config) -> PlayerConfig {
    PlayerConfig {
        bitrate: match config.bitrate {
            Bitrate::Kbps96 => LibrespotBitrate::Bitrate96,
            Bitrate::Kbps160 => LibrespotBitrate::Bitrate160,
            Bitrate::Kbps320 => LibrespotBitrate::Bitrate320,
        },
        ..PlayerConfig::default()
    }
}

async fn run_async(config: Config, args: ConfigArgs) -> ExitCode {
    if let Err(e) = config::check_state_dir(&config.cache) {
        error!("{e}");
        return ExitCode::from(config::StateDirError::EXIT_CODE);
    }
    let device_id = match credentials::load_or_create_device_id(&config.cache) {
        Ok(id) => id,
        Err(e) => {
            error!(
                "cannot store the device id in {}: {e}",
                config.cache.display()
            );
            return ExitCode::from(EXIT_ENVIRONMENT);
        }
    };
    let volume_memory = VolumeMemory::new(&config.cache);
    let remembered_volume = volume_memory.load();
    let audio = match open_audio(&config, remembered_volume) {
        Ok(audio) => audio,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(AudioError::EXIT_CODE);
        }
    };
    // The name and type were validated by the config loader.
    let device_type = DeviceType::from_str(&config.device_type).unwrap_or_default();
    let session_config = SessionConfig {
        device_id: device_id.clone(),
        ..SessionConfig::default()
    };
    let client_id = session_config.client_id.clone();

    // One player for the life of the process; sessions come and go.
    let Audio {
        live: live_audio,
        sink,
        cast_output,
    } = audio;
    let mixer: Arc<dyn Mixer> = live_audio.mixer();
    // One audio device, two sources: Spotify's sink and the Jellyfin cast both go through this.
    let device_lock = audio::AudioDeviceLock::new();
    let sink = audio::LockedSink::factory(sink, device_lock.clone());
    let first_session = Session::new(session_config.clone(), None);
    let player = Player::new(
        player_config(&config),
        first_session,
        mixer.get_soft_volume(),
        sink,
    );
    let signals = librespot_backend::spawn_signal_bridge(&player);

    let (control, endpoint) = control::channel(SpeakerStatus::new(&config.name, mixer.volume()));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (credentials_tx, credentials_rx) = mpsc::channel(4);

    // New network addresses cut discovery's and the supervisor's retry delays short.
    let addresses = netwatch::spawn(shutdown_rx.clone());

    // Discovery first: READY means the speaker can be found (started below, with the Jellyfin
    // sidecar, by `live_settings`, which restarts both when the web app changes their settings).
    let (ready_tx, ready_rx) = oneshot::channel();
    let discovery_parts = DiscoveryParts {
        device_id,
        client_id,
        device_type,
        credentials: credentials_tx,
        ready: Some(ready_tx),
        addresses: addresses.clone(),
    };

    let supervisor_settings = SupervisorSettings {
        first_volume: percent_to_volume(config.initial_volume),
        fresh_install: remembered_volume.is_none(),
        transfer_timeout: Duration::from_secs(config.reconnect.transfer_timeout_secs),
        backoff_initial: Duration::from_secs(config.reconnect.backoff_initial_secs.max(1)),
        backoff_max: Duration::from_secs(config.reconnect.backoff_max_secs.max(1)),
        ..SupervisorSettings::default()
    };
    let watchdog_poll = supervisor_settings.watchdog_period;
    // Spirc writes its start-up volume late (after login); the supervisor holds this gate while
    // connecting so that write cannot undo a knob turned meanwhile.
    let startup_gate = StartupGate::new(mixer.clone());
    // The running configuration: the web app changes it, live_settings and the backend follow.
    let (config_tx, config_rx) = watch::channel(config.clone());
    let backend = LibrespotBackend::new(
        player.clone(),
        startup_gate.clone(),
        session_config,
        config.name.clone(),
        device_type,
    )
    .with_live_name(config_rx.clone());
    let supervisor = Supervisor::new(
        backend,
        mixer.clone(),
        Box::new(CredentialStore::new(&config.cache)),
        credentials_rx,
        signals,
        endpoint,
        supervisor_settings,
    )
    .with_startup_gate(startup_gate)
    .with_address_events(addresses);
    let heartbeat = supervisor.heartbeat();
    let supervisor_task = tokio::spawn(supervisor.run(shutdown_rx.clone()));

    tokio::spawn(ap_link::run_tuner(
        LinkTuning::default(),
        watchdog_poll,
        shutdown_rx.clone(),
    ));
    let memory_task = tokio::spawn(volume_memory.follow(
        control.watch_status(),
        Duration::from_secs(5),
        shutdown_rx.clone(),
    ));

    let (jellyfin_state_tx, jellyfin_state_rx) = watch::channel(jellyfin::JellyfinState::Disabled);
    // The cast player writes it, the status page reads it.
    let cast_status = jellyfin::cast::CastStatusCell::new();
    let (cast_handle_tx, cast_handle_rx) = watch::channel(None);
    let cast = cast_output.map(|output| jellyfin::cast::CastSettings {
        output,
        mixer: mixer.clone(),
        lock: device_lock.clone(),
        stream: audio::StreamSettings::default(),
        handover_wait: Duration::from_secs(3),
        progress_every: Duration::from_secs(10),
        paused_check_in: jellyfin::PAUSED_CHECK_IN,
        status: cast_status.clone(),
    });
    let web = config.status.enabled && config.status.web;
    let sources = Sources {
        spotify: SpotifySource {
            control: control.clone(),
        },
        cast: cast.as_ref().map(|_| {
            Arc::new(CastSource {
                handle: cast_handle_rx,
                status: cast_status.clone(),
            }) as Arc<dyn crate::source::Source>
        }),
        mixer: Some(mixer.clone()),
        mixer_changed: Default::default(),
    };
    let mixer_changed = sources.mixer_changed.clone();
    // The web app's event bridge subscribes before the sidecar and discovery start.
    let web_app = web.then(|| {
        start_web(
            &config,
            &args,
            sources,
            config_tx,
            live_audio.clone(),
            &jellyfin_state_rx,
            &shutdown_rx,
        )
    });
    let live_task = tokio::spawn(live_settings::run(
        config_rx,
        discovery_parts,
        JellyfinParts {
            cast,
            mixer_changed,
            control: control.clone(),
            state: jellyfin_state_tx,
            cast_handle: cast_handle_tx,
        },
        shutdown_rx.clone(),
    ));
    if config.status.enabled {
        match status::bind(&config.status.listen).await {
            Ok(listener) => {
                let boot_config = config
                    .status
                    .boot_config_report
                    .as_deref()
                    .and_then(crate::boot_config::read_report);
                // On the SD image (it sets the boot-config report), the A/B update fields, read
                // from the RAUC service beside start-up rather than before it.
                if config.status.boot_config_report.is_some() {
                    tokio::spawn(async {
                        if let Some(summary) = crate::update_status::read().await {
                            crate::update_status::publish(summary);
                        }
                    });
                }
                tokio::spawn(status::serve_with_web(
                    listener,
                    control.clone(),
                    jellyfin_state_rx,
                    Some(cast_status),
                    boot_config,
                    web_app,
                    shutdown_rx.clone(),
                ));
            }
            // The page is a convenience: the speaker plays on without it.
            Err(e) => warn!("status page disabled: {e}"),
        }
    }

    match tokio::time::timeout(Duration::from_secs(10), ready_rx).await {
        Ok(Ok(Ok(()))) | Err(_) | Ok(Err(_)) => {}
        Ok(Ok(Err(message))) => warn!("{message}; still trying"),
    }
    systemd::notify_ready();
    systemd::notify_status(&format!("\"{}\" is ready", config.name));
    info!("speaker \"{}\" is ready", config.name);

    let code = wait_for_signal(&heartbeat_check(heartbeat, watchdog_poll)).await;

    // Shutdown: announce, stop the tasks, give them a moment, go.
    systemd::notify_stopping();
    info!("stopping");
    shutdown_tx.send_replace(true);
    // The supervisor lets Spirc pause and say goodbye (at most 2 s), or abandons it and closes
    // its dealer (at most 3 s more).
    let _ = tokio::time::timeout(Duration::from_millis(5500), supervisor_task).await;
    let _ = tokio::time::timeout(Duration::from_millis(700), live_task).await;
    let _ = tokio::time::timeout(Duration::from_millis(200), memory_task).await;
    player.stop();
    code
}

/// The web app: auth (adopting the image's boot-partition password), the event bridge, the
/// settings file (in the state directory).
fn start_web(
    config: &Config,
    args: &ConfigArgs,
    sources: Sources,
    config_tx: watch::Sender<Config>,
    live_audio: Arc<audio::LiveAudio>,
    jellyfin: &watch::Receiver<jellyfin::JellyfinState>,
    shutdown: &watch::Receiver<bool>,
) -> web::WebApp {
    // The image's `admin-password` on the FAT partition is adopted before the daemon starts, by
    // a root unit (`pispeaker adopt-password`): the daemon can neither read nor change the FAT.
    let auth = web::auth::Auth::new(&config.cache);
    let hub = web::events::EventHub::new();
    tokio::spawn(web::bridge::run(
        hub.clone(),
        sources.clone(),
        jellyfin.clone(),
        Duration::from_millis(250),
        shutdown.clone(),
    ));
    let reload_args = args.clone();
    web::WebApp {
        auth,
        hub,
        sources,
        settings: Arc::new(web::settings::SettingsFile::from_args(
            args,
            &config.cache,
            config.status.boot_config_report.as_deref(),
        )),
        config: Arc::new(config_tx),
        audio: live_audio,
        reload: Arc::new(move || config::load(&reload_args).map_err(|e| e.to_string())),
        jellyfin: jellyfin.clone(),
        keep_alive: Duration::from_secs(15),
        streams: Default::default(),
    }
}

/// A closure that says whether the supervisor is alive (heartbeat fresh within 3 polls).
fn heartbeat_check(
    heartbeat: crate::connect::heartbeat::Heartbeat,
    poll: Duration,
) -> impl Fn() -> bool {
    move || heartbeat.age() <= poll * 3
}

/// Waits for SIGTERM/SIGINT, feeding the systemd watchdog while the supervisor lives.
async fn wait_for_signal(alive: &impl Fn() -> bool) -> ExitCode {
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            error!("cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_ENVIRONMENT);
        }
    };
    let period = systemd::watchdog_interval().unwrap_or(Duration::from_secs(3600));
    let mut watchdog = tokio::time::interval(period);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = term.recv() => return ExitCode::SUCCESS,
            _ = int.recv() => return ExitCode::SUCCESS,
            _ = watchdog.tick() => {
                if alive() {
                    systemd::notify_watchdog();
                    warned = false;
                } else if !warned {
                    // Let systemd's watchdog restart a wedged supervisor.
                    error!("the Spotify supervisor stopped responding; not feeding the watchdog");
                    warned = true;
                }
            }
        }
    }
}

/// Percent (0-100) to Spotify's 0..=65535.
fn percent_to_volume(percent: u8) -> u16 {
    let scaled = u32::from(percent.min(100)) * u32::from(MAX_VOLUME) / 100;
    u16::try_from(scaled).unwrap_or(MAX_VOLUME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_maps_onto_spotify_scale() {
        assert_eq!(percent_to_volume(0), 0);
        assert_eq!(percent_to_volume(100), u16::MAX);
        assert_eq!(percent_to_volume(50), 32767);
    }
}
