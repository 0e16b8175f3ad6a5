//! The production [`ConnectBackend`]: librespot 0.8's `Session` + `Spirc`, following
//! `../shared/notes/librespot-reconnect.md`: the session id is set on the new `Session` before
//! `Spirc::new` (which copies it), the player is moved to the new session, and Spirc starts with
//! the volume the supervisor read from the mixer.

use std::sync::Arc;
use std::time::Duration;

use librespot_connect::{ConnectConfig, Spirc};
use librespot_core::authentication::Credentials;
use librespot_core::config::{DeviceType, SessionConfig};
use librespot_core::dealer::protocol::TransferOptions;
use librespot_core::error::ErrorKind;
use librespot_core::session::Session;
use librespot_core::spclient::TransferRequest;
use librespot_core::Error as LibrespotError;
use librespot_metadata::audio::UniqueFields;
use librespot_playback::mixer::Mixer;
use librespot_playback::player::{Player, PlayerEvent};
use librespot_protocol::authentication::AuthenticationType;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::control::TrackInfo;
use super::session::{
    ConnectBackend, ConnectFailure, ConnectRequest, ConnectSession, PlayerSignal, SessionCommand,
    SessionToken,
};
use crate::logging;

/// Builds sessions for the one player and mixer of the process.
pub struct LibrespotBackend {
    player: Arc<Player>,
    mixer: Arc<dyn Mixer>,
    session_config: SessionConfig,
    name: String,
    device_type: DeviceType,
    /// The name as renamed from the web app since start (each new Spirc takes it).
    live_name: Option<tokio::sync::watch::Receiver<crate::config::Config>>,
}

impl LibrespotBackend {
    /// Each new session announces the name the running config has now, so a rename from the
    /// web app reaches the Spotify app at the next (re)connect without a restart.
    pub fn with_live_name(
        mut self,
        config: tokio::sync::watch::Receiver<crate::config::Config>,
    ) -> Self {
        self.live_name = Some(config);
        self
    }

    pub fn new(
        player: Arc<Player>,
        mixer: Arc<dyn Mixer>,
        session_config: SessionConfig,
        name: String,
        device_type: DeviceType,
    ) -> Self {
        Self {
            player,
            mixer,
            session_config,
            name,
            device_type,
            live_name: None,
        }
    }
}

/// A live librespot session and its Spirc task.
pub struct LibrespotSession {
    session: Session,
    spirc: Spirc,
    task: Option<JoinHandle<()>>,
    connected_at: std::time::Instant,
    /// Held here and by the Spirc task; see [`ConnectSession::liveness`].
    token: Arc<SessionToken>,
}

/// Longest wait for `dealer().close()` after an abort. Its reconnect loop only looks at the close
/// signal between attempts (core/src/dealer/mod.rs:700-716); dropping the close future aborts the
/// dealer task anyway (`CancelOnDrop`, core/src/dealer/mod.rs:485-495).
const DEALER_CLOSE_LIMIT: Duration = Duration::from_secs(3);

impl ConnectBackend for LibrespotBackend {
    type Session = LibrespotSession;

    async fn connect(
        &mut self,
        request: ConnectRequest,
    ) -> Result<LibrespotSession, ConnectFailure> {
        let session = Session::new(self.session_config.clone(), None);
        if let Some(id) = &request.session_id {
            // Before Spirc::new: ConnectState::new copies the id from the session.
            session.set_session_id(id);
        }
        self.player.set_session(session.clone());
        let name = match &self.live_name {
            Some(config) => config.borrow().name.clone(),
            None => self.name.clone(),
        };
        let config = ConnectConfig {
            name,
            device_type: self.device_type,
            initial_volume: request.initial_volume,
            ..ConnectConfig::default()
        };
        let started = std::time::Instant::now();
        let (spirc, task) = Spirc::new(
            config,
            session.clone(),
            request.credentials,
            self.player.clone(),
            self.mixer.clone(),
        )
        .await
        .map_err(|e| {
            session.shutdown();
            classify(&e)
        })?;
        let token = Arc::new(SessionToken);
        let held = token.clone();
        Ok(LibrespotSession {
            session,
            spirc,
            task: Some(tokio::spawn(async move {
                task.await;
                drop(held);
            })),
            connected_at: started,
            token,
        })
    }
}

impl ConnectSession for LibrespotSession {
    fn session_id(&self) -> String {
        self.session.session_id()
    }

    fn is_invalid(&self) -> bool {
        self.session.is_invalid()
    }

    async fn ended(&mut self) {
        match self.task.as_mut() {
            Some(task) => {
                let _ = task.await;
                self.task = None;
            }
            None => std::future::pending().await,
        }
    }

    fn reusable_credentials(&self) -> Option<Credentials> {
        let auth_data = self.session.auth_data();
        if auth_data.is_empty() {
            return None;
        }
        Some(Credentials {
            username: Some(self.session.username()),
            auth_type: AuthenticationType::AUTHENTICATION_STORED_SPOTIFY_CREDENTIALS,
            auth_data,
        })
    }

    fn command(&self, command: SessionCommand) -> Result<(), String> {
        let spirc = &self.spirc;
        let result = match command {
            SessionCommand::Play => spirc.play(),
            SessionCommand::Pause => spirc.pause(),
            SessionCommand::PlayPause => spirc.play_pause(),
            SessionCommand::Next => spirc.next(),
            SessionCommand::Previous => spirc.prev(),
            SessionCommand::Seek(ms) => spirc.set_position_ms(ms),
            SessionCommand::SetVolume(v) => spirc.set_volume(v),
            SessionCommand::VolumeUp => spirc.volume_up(),
            SessionCommand::VolumeDown => spirc.volume_down(),
            SessionCommand::Transfer => spirc.transfer(Some(transfer_request("resume"))),
            SessionCommand::TransferPaused => spirc.transfer(Some(transfer_request("pause"))),
        };
        result.map_err(|e| e.to_string())
    }

    fn loss_reason(&self) -> Option<String> {
        logging::connection_hint_since(self.connected_at)
    }

    fn shutdown(&mut self) {
        // Spirc pauses, says goodbye over HTTPS and closes its dealer; invalidating the session
        // makes its loop end after the Shutdown command even if nothing else wakes it.
        let _ = self.spirc.shutdown();
        self.session.shutdown();
    }

    async fn abandon(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Wait for the abort to land so the task no longer runs anything of Spirc's.
            let _ = task.await;
        }
        self.session.shutdown();
        // What the abort skipped (spirc.rs:579): the dealer holds a strong Session and retries
        // every 10 s until closed.
        if tokio::time::timeout(DEALER_CLOSE_LIMIT, self.session.dealer().close())
            .await
            .is_err()
        {
            log::debug!("dealer did not close within {DEALER_CLOSE_LIMIT:?}; its task was aborted");
        }
    }

    fn liveness(&self) -> std::sync::Weak<SessionToken> {
        Arc::downgrade(&self.token)
    }
}

fn transfer_request(restore_paused: &str) -> TransferRequest {
    TransferRequest {
        transfer_options: TransferOptions {
            restore_paused: Some(restore_paused.into()),
            restore_position: None,
            restore_track: None,
            retain_session: None,
        },
    }
}

/// Login failures that mean the credentials will never work again. librespot keeps its
/// `AuthenticationError` private; what it exposes is `ErrorKind::PermissionDenied` and the
/// message "Login failed with reason: <reason>".
const FATAL_LOGIN_REASONS: &[&str] = &[
    "Bad credentials",
    "Premium account required",
    "Extra verification required",
    "Application banned",
];

/// Transient unless Spotify refused the credentials themselves.
pub fn classify(error: &LibrespotError) -> ConnectFailure {
    let message = error.error.to_string();
    if error.kind == ErrorKind::PermissionDenied {
        if let Some(reason) = message.strip_prefix("Login failed with reason: ") {
            if FATAL_LOGIN_REASONS.contains(&reason) {
                return ConnectFailure::CredentialsRejected(reason.to_string());
            }
        }
    }
    ConnectFailure::Transient(error.to_string())
}

/// Maps the player's events to [`PlayerSignal`]s for the supervisor, for the life of the player.
pub fn spawn_signal_bridge(player: &Player) -> mpsc::UnboundedReceiver<PlayerSignal> {
    let mut events = player.get_player_event_channel();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let Some(signal) = map_event(event) {
                if tx.send(signal).is_err() {
                    break;
                }
            }
        }
    });
    rx
}

fn map_event(event: PlayerEvent) -> Option<PlayerSignal> {
    Some(match event {
        PlayerEvent::SessionConnected { .. } => PlayerSignal::SessionConnected,
        PlayerEvent::SessionDisconnected { .. } => PlayerSignal::SessionDisconnected,
        PlayerEvent::Playing { position_ms, .. } => PlayerSignal::Playing { position_ms },
        PlayerEvent::Paused { position_ms, .. } => PlayerSignal::Paused { position_ms },
        PlayerEvent::Stopped { .. } => PlayerSignal::Stopped,
        PlayerEvent::Loading { .. } => PlayerSignal::Loading,
        PlayerEvent::Seeked { position_ms, .. } => PlayerSignal::Seeked { position_ms },
        PlayerEvent::PositionChanged { position_ms, .. }
        | PlayerEvent::PositionCorrection { position_ms, .. } => {
            PlayerSignal::Position { position_ms }
        }
        PlayerEvent::VolumeChanged { volume } => PlayerSignal::VolumeChanged(volume),
        PlayerEvent::EndOfTrack { .. } => PlayerSignal::EndOfTrack,
        PlayerEvent::Unavailable { .. } => PlayerSignal::Unavailable,
        PlayerEvent::TrackChanged { audio_item } => {
            let (artists, album) = match &audio_item.unique_fields {
                UniqueFields::Track { artists, album, .. } => (
                    artists.iter().map(|a| a.name.clone()).collect(),
                    album.clone(),
                ),
                UniqueFields::Local { artists, album, .. } => (
                    artists.iter().cloned().collect(),
                    album.clone().unwrap_or_default(),
                ),
                UniqueFields::Episode { show_name, .. } => (Vec::new(), show_name.clone()),
            };
            PlayerSignal::TrackChanged(TrackInfo {
                uri: audio_item.uri.clone(),
                name: audio_item.name.clone(),
                artists,
                album,
                duration_ms: audio_item.duration_ms,
            })
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_credentials_are_fatal_other_login_errors_transient() {
        // As librespot builds them: From<AuthenticationError> gives permission_denied(err).
        let fatal = LibrespotError::permission_denied("Login failed with reason: Bad credentials");
        assert_eq!(
            classify(&fatal),
            ConnectFailure::CredentialsRejected("Bad credentials".into())
        );
        let retry =
            LibrespotError::permission_denied("Login failed with reason: Try another access point");
        assert!(matches!(classify(&retry), ConnectFailure::Transient(_)));
        let network = LibrespotError::unavailable("dns error: failed to lookup address");
        assert!(matches!(classify(&network), ConnectFailure::Transient(_)));
        let http = LibrespotError::unavailable("HTTP status 503");
        assert!(matches!(classify(&http), ConnectFailure::Transient(_)));
    }
}
