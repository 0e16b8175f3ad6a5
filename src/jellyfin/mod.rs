//! The Jellyfin sidecar: the speaker as a live, controllable Jellyfin session.
//!
//! It runs beside the Spotify supervisor and talks to it only through the [`ControlHandle`]
//! (status, playback events) and, for the remote control, through [`crate::source::Sources`]
//! like the web app, so a pause from a Jellyfin app pauses whatever plays. Nothing here can delay Spotify: every request has a
//! timeout, reports go through their own queue, and failures only change what the status page
//! says. A Spotify reconnect is invisible here, so it never creates a second Jellyfin session;
//! the DeviceId is stable and there is only ever one socket.

mod api;
pub mod cast;
mod identity;
mod messages;
mod play_clock;
mod reporter;
mod socket;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

pub use api::{Api, ApiError, CAST_COMMANDS, SUPPORTED_COMMANDS};
pub use identity::{Identity, JellyfinFiles, CLIENT};
pub use messages::{percent_to_volume, volume_to_percent};
pub use socket::{Binding, Liveness};

use crate::config::Config;
use crate::connect::backoff::Backoff;
use crate::connect::control::ControlHandle;
use crate::source::{CastSource, Source, Sources, SpotifySource};

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
    /// Signed in and reporting what plays, but the server placed the socket in no session of
    /// ours, so nothing can control or cast to the speaker (an API key on Jellyfin 10.9/10.10,
    /// or a token another app minted). Never shown as connected.
    NotControllable {
        server: String,
        problem: String,
        remedy: String,
    },
    Retrying {
        last_error: String,
    },
}

/// How often a paused playback checks in: well inside the server's 5 minutes.
pub const PAUSED_CHECK_IN: Duration = Duration::from_secs(60);

/// What to do about a socket the server bound to no session of ours.
const NOT_CONTROLLABLE_REMEDY: &str = "pair the speaker with Quick Connect instead of a provisioned token: remove the token file (or [jellyfin] token-file) and approve the code shown here, or run `pispeaker jellyfin pair`; an admin API key works as a token only on Jellyfin 10.11 and later";

/// Everything the sidecar needs, with the timings explicit (tests shorten them).
#[derive(Debug, Clone)]
pub struct JellyfinSettings {
    pub server: String,
    pub device_name: String,
    pub state_dir: PathBuf,
    pub token_file: Option<PathBuf>,
    pub request_timeout: Duration,
    pub liveness: Liveness,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub quick_connect_poll: Duration,
    pub progress_every: Duration,
    /// While paused, a progress report this often: the server stops a playback that has not
    /// checked in for 5 minutes (SessionManager `CheckForIdlePlayback`).
    pub paused_check_in: Duration,
    /// The cast target (playing the library), when the daemon has an audio device for it.
    pub cast: Option<cast::CastSettings>,
    /// Woken when a remote-control volume went straight to the mixer (no Spotify session to
    /// carry it): the daemon shares the web app's, so its `volume` event follows at once.
    pub mixer_changed: Arc<Notify>,
}

impl JellyfinSettings {
    pub fn from_config(config: &Config, server: String) -> Self {
        Self {
            server,
            device_name: config.name.clone(),
            state_dir: config.cache.clone(),
            token_file: config.jellyfin.token_file.clone(),
            request_timeout: Duration::from_secs(10),
            liveness: Liveness {
                ping_every: Duration::from_secs(15),
                dead_after: Duration::from_secs(45),
                capabilities_every: Duration::from_secs(60),
                bound_within: Duration::from_secs(10),
            },
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            quick_connect_poll: Duration::from_secs(5),
            progress_every: Duration::from_secs(10),
            paused_check_in: PAUSED_CHECK_IN,
            cast: None,
            mixer_changed: Arc::default(),
        }
    }
}

/// The sidecar task for the daemon.
pub async fn run(
    config: Config,
    cast: Option<cast::CastSettings>,
    mixer_changed: Arc<Notify>,
    control: ControlHandle,
    state: watch::Sender<JellyfinState>,
    cast_handle: Option<watch::Sender<Option<cast::CastHandle>>>,
    shutdown: watch::Receiver<bool>,
) {
    let Some(server) = config.jellyfin.server.clone() else {
        warn!(
            "[jellyfin] is enabled but has no server: set [jellyfin] server = \"http://host:8096\""
        );
        state.send_replace(JellyfinState::Retrying {
            last_error: "no server configured".into(),
        });
        return;
    };
    run_publishing_cast(
        JellyfinSettings {
            cast,
            mixer_changed,
            ..JellyfinSettings::from_config(&config, server)
        },
        control,
        state,
        cast_handle,
        shutdown,
    )
    .await;
}

/// The sidecar with explicit settings.
pub async fn run_with(
    settings: JellyfinSettings,
    control: ControlHandle,
    state: watch::Sender<JellyfinState>,
    shutdown: watch::Receiver<bool>,
) {
    run_publishing_cast(settings, control, state, None, shutdown).await
}

/// [`run_with`], publishing the cast player's handle (once it runs) for the web app's sources
/// (`crate::source`), which talk to "the active source" instead of to this sidecar.
pub async fn run_publishing_cast(
    settings: JellyfinSettings,
    control: ControlHandle,
    state: watch::Sender<JellyfinState>,
    cast_handle: Option<watch::Sender<Option<cast::CastHandle>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let files = JellyfinFiles::new(&settings.state_dir);
    let device_id = match files.device_id() {
        Ok(id) => id,
        Err(e) => {
            warn!("cannot store the Jellyfin device id: {e}");
            state.send_replace(JellyfinState::Retrying {
                last_error: format!("cannot store the device id: {e}"),
            });
            return;
        }
    };
    let identity = Identity {
        device: settings.device_name.clone(),
        device_id,
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let mut api = match Api::new(&settings.server, identity, settings.request_timeout) {
        Ok(api) => api,
        Err(e) => {
            state.send_replace(JellyfinState::Retrying {
                last_error: e.to_string(),
            });
            return;
        }
    };
    let token = files.token().or_else(|| {
        settings
            .token_file
            .as_deref()
            .and_then(|path| files.adopt_token_file(path))
    });
    api.set_token(token);

    let (api_tx, api_rx) = watch::channel(None::<Api>);
    let (report_tx, report_rx) = reporter::queue();
    let cast = settings.cast.clone().map(|cast| {
        cast::spawn(
            cast,
            api_rx.clone(),
            control.clone(),
            report_tx.clone(),
            shutdown.clone(),
        )
    });
    if let (Some(slot), Some(handle)) = (&cast_handle, &cast) {
        slot.send_replace(Some(handle.clone()));
    }
    // Remote control goes to whatever plays, as the web app's does.
    let sources = Sources {
        spotify: SpotifySource {
            control: control.clone(),
        },
        cast: cast
            .as_ref()
            .zip(settings.cast.as_ref())
            .map(|(handle, cast)| {
                Arc::new(CastSource {
                    handle: watch::channel(Some(handle.clone())).1,
                    status: cast.status.clone(),
                }) as Arc<dyn Source>
            }),
        mixer: settings.cast.as_ref().map(|cast| cast.mixer.clone()),
        mixer_changed: settings.mixer_changed.clone(),
    };
    // Play/PlayNext/PlayMediaSource are advertised only when the cast player really runs.
    api.set_cast(cast.is_some());
    let reporter = tokio::spawn(reporter::run(
        control.subscribe_events(),
        control.watch_status(),
        api_rx,
        (settings.progress_every, settings.paused_check_in),
        shutdown.clone(),
        (report_tx, report_rx),
        cast.as_ref().map(cast::CastHandle::watch_active),
    ));

    let mut backoff = Backoff::new(settings.backoff_initial, settings.backoff_max);
    loop {
        if *shutdown.borrow() {
            break;
        }
        if !api.has_token() {
            api_tx.send_replace(None);
            match pair(&api, &settings, &state, &mut shutdown, Some(&files)).await {
                Some(token) => {
                    if let Err(e) = files.store_token(&token) {
                        warn!("cannot store the Jellyfin token: {e}; pairing will be needed again after a restart");
                    }
                    info!("paired with Jellyfin");
                    api.set_token(Some(token));
                }
                None => break,
            }
        }
        api_tx.send_replace(Some(api.clone()));
        let error = match api.post_capabilities().await {
            Err(ApiError::Unauthorized) => {
                on_unauthorized(&files, &mut api);
                continue;
            }
            Err(e) => e.to_string(),
            Ok(()) => {
                if api.user_id().is_none() {
                    // Streams go out as the token's own user (see `Api::user_id`).
                    match api.current_user().await {
                        Ok(user) => {
                            api.set_user_id(user);
                            api_tx.send_replace(Some(api.clone()));
                        }
                        Err(e) => log::debug!("GET /Users/Me: {e}"),
                    }
                }
                let up_since = Instant::now();
                let on_connected = async {
                    // Capabilities live only in server memory: again after every (re)connect.
                    api.post_capabilities().await.map_err(|e| e.to_string())
                };
                let on_binding = |binding: Binding| match binding {
                    Binding::Bound => {
                        state.send_replace(JellyfinState::Connected {
                            server: settings.server.clone(),
                        });
                    }
                    Binding::NotBound { problem } => {
                        warn!("Jellyfin cannot control this speaker: {problem}. To fix: {NOT_CONTROLLABLE_REMEDY}");
                        state.send_replace(JellyfinState::NotControllable {
                            server: settings.server.clone(),
                            problem,
                            remedy: NOT_CONTROLLABLE_REMEDY.into(),
                        });
                    }
                };
                let end = socket::serve(
                    &api,
                    &sources,
                    cast.as_ref(),
                    settings.liveness,
                    &mut shutdown,
                    on_connected,
                    on_binding,
                )
                .await;
                if up_since.elapsed() >= Duration::from_secs(60) {
                    backoff.reset();
                }
                match end {
                    socket::SocketEnd::Shutdown => break,
                    socket::SocketEnd::Lost(why) => why,
                }
            }
        };
        let delay = backoff.next_delay();
        warn!(
            "Jellyfin: {error}; retrying in {:.1} s",
            delay.as_secs_f64()
        );
        state.send_replace(JellyfinState::Retrying { last_error: error });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), reporter).await;
}

/// The server rejected our token (401). Approving Quick Connect again (`pispeaker jellyfin pair`
/// while the daemon runs) revokes the older token of that user and device, so the 401 may come
/// just before or after the fresh token lands in the file: set the file aside only if it still
/// holds the rejected token, else use what it holds now.
fn on_unauthorized(files: &JellyfinFiles, api: &mut Api) {
    let rejected = api.token().map(str::to_string);
    match files.token() {
        Some(current) if Some(&current) != rejected.as_ref() => {
            info!("Jellyfin rejected the old token; using the new one in the token file");
            api.set_token(Some(current));
        }
        _ => {
            files.reject_token();
            api.set_token(None);
        }
    }
}

/// Quick Connect until approved (code on the status page and in the log). `None` on shutdown.
/// With `files` (the daemon), a token that appears in the token file meanwhile (from
/// `pispeaker jellyfin pair`) ends the pairing too.
async fn pair(
    api: &Api,
    settings: &JellyfinSettings,
    state: &watch::Sender<JellyfinState>,
    shutdown: &mut watch::Receiver<bool>,
    files: Option<&JellyfinFiles>,
) -> Option<String> {
    let from_file = || files.and_then(JellyfinFiles::token);
    let mut backoff = Backoff::new(settings.backoff_initial, settings.backoff_max);
    loop {
        let attempt = async {
            if !api.quick_connect_enabled().await? {
                return Err(ApiError::Protocol(
                    "Quick Connect is disabled on the server (Dashboard → General → Quick Connect), or provide a token file".into(),
                ));
            }
            api.quick_connect_initiate().await
        };
        let quick = tokio::select! {
            result = attempt => result,
            _ = shutdown.changed() => return None,
        };
        if let Some(token) = from_file() {
            return Some(token);
        }
        let quick = match quick {
            Ok(q) => q,
            Err(e) => {
                state.send_replace(JellyfinState::Retrying {
                    last_error: e.to_string(),
                });
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = shutdown.changed() => return None,
                }
            }
        };
        info!(
            "Jellyfin Quick Connect code: {} — approve it in Jellyfin under your profile → Quick Connect",
            quick.code
        );
        state.send_replace(JellyfinState::Pairing {
            code: quick.code.clone(),
        });
        let expires = Instant::now() + Duration::from_secs(600);
        while Instant::now() < expires {
            tokio::select! {
                _ = tokio::time::sleep(settings.quick_connect_poll) => {}
                _ = shutdown.changed() => return None,
            }
            if let Some(token) = from_file() {
                info!("a Jellyfin token appeared in the token file (pispeaker jellyfin pair); using it");
                return Some(token);
            }
            match api.quick_connect_approved(&quick.secret).await {
                Ok(true) => match api.authenticate_with_quick_connect(&quick.secret).await {
                    Ok(token) => return Some(token),
                    Err(e) => {
                        warn!("Jellyfin Quick Connect was approved but authentication failed: {e}");
                        break;
                    }
                },
                Ok(false) => {}
                Err(ApiError::Status(404)) => break, // expired: start over
                Err(e) => log::debug!("Quick Connect poll: {e}"),
            }
        }
    }
}

/// `pispeaker jellyfin pair [--server URL]`: pairs from a terminal and stores the token where the
/// daemon finds it.
pub async fn pair_interactive(config: Config, server: Option<String>) -> ExitCode {
    let Some(server) = server.or_else(|| config.jellyfin.server.clone()) else {
        eprintln!("give the server: pispeaker jellyfin pair --server http://jellyfin.local:8096");
        return ExitCode::from(2);
    };
    if let Err(e) = crate::config::check_state_dir(&config.cache) {
        eprintln!("{e}");
        return ExitCode::from(1);
    }
    let settings = JellyfinSettings::from_config(&config, server.clone());
    let files = JellyfinFiles::new(&settings.state_dir);
    let identity = match files.device_id() {
        Ok(device_id) => Identity {
            device: settings.device_name.clone(),
            device_id,
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
        Err(e) => {
            eprintln!(
                "cannot store the Jellyfin device id in {}: {e}",
                settings.state_dir.display()
            );
            return ExitCode::from(1);
        }
    };
    let api = match Api::new(&server, identity, settings.request_timeout) {
        Ok(api) => api,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let (state, mut state_rx) = watch::channel(JellyfinState::Disabled);
    let (_stop, mut shutdown) = watch::channel(false);
    let printer = tokio::spawn(async move {
        while state_rx.changed().await.is_ok() {
            match &*state_rx.borrow() {
                JellyfinState::Pairing { code } => println!("Quick Connect code: {code}\nApprove it in Jellyfin: your profile → Quick Connect. Waiting…"),
                JellyfinState::Retrying { last_error } => eprintln!("{server}: {last_error}; retrying"),
                _ => {}
            }
        }
    });
    let token = pair(&api, &settings, &state, &mut shutdown, None).await;
    printer.abort();
    match token.map(|t| files.store_token(&t)) {
        Some(Ok(())) => {
            println!("paired; the speaker will use this token from now on");
            ExitCode::SUCCESS
        }
        Some(Err(e)) => {
            eprintln!("paired, but the token could not be stored: {e}");
            ExitCode::from(1)
        }
        None => ExitCode::from(1),
    }
}
