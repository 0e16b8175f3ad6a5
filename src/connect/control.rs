//! The control handle: how the status page and the Jellyfin sidecar drive the Spotify side.
//!
//! It outlives every Session/Spirc pair: commands go to the supervisor, which forwards them to
//! whatever Spirc is current. While there is none (discovery, reconnecting) a command is answered
//! at once with a clear error instead of being dropped.

use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// A remote-control command for the current Spotify Connect session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Play,
    Pause,
    PlayPause,
    /// Stop is a pause on Spotify: a Connect device cannot end the user's session.
    Stop,
    Next,
    Previous,
    Seek {
        position_ms: u32,
    },
    /// Volume on Spotify's 0..=65535 scale.
    SetVolume(u16),
    VolumeUp,
    VolumeDown,
}

/// Why a command could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("reconnecting to Spotify; try again in a moment")]
    Reconnecting,
    #[error("no Spotify user has picked this speaker yet")]
    NoSession,
    #[error("the speaker is shutting down")]
    ShuttingDown,
    /// Connected, but Spotify has not made this speaker the active device (or another device
    /// took over): Spirc ignores every command then, so none is claimed to have worked.
    #[error("this speaker is not the active Spotify device; pick it in the Spotify app first")]
    NotActive,
    #[error("Spotify refused the command: {0}")]
    Rejected(String),
}

/// State of the Spotify side, as shown on the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpotifyState {
    /// No credentials: waiting for a user to pick the speaker in the Spotify app.
    Discovery,
    Connecting,
    Connected,
    Reconnecting,
}

/// The most recent loss of the access-point connection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LossRecord {
    pub reason: String,
    #[serde(serialize_with = "serialize_time")]
    pub at: SystemTime,
}

/// What the speaker is playing, as far as the status page and Jellyfin care.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrackInfo {
    pub uri: String,
    pub name: String,
    pub artists: Vec<String>,
    pub album: String,
    pub duration_ms: u32,
}

/// A snapshot of the speaker, published by the supervisor on every change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpeakerStatus {
    pub name: String,
    pub spotify: SpotifyState,
    pub reconnect_count: u64,
    pub last_loss: Option<LossRecord>,
    /// Live hardware volume on Spotify's 0..=65535 scale.
    pub volume: u16,
    pub playing: bool,
    pub position_ms: u32,
    pub track: Option<TrackInfo>,
    /// librespot sessions not yet released: 1 while connected; more means one leaks.
    pub sessions_alive: u32,
    /// The cached account lacks Spotify Premium (librespot exited right after its logins).
    pub premium_required: bool,
}

impl SpeakerStatus {
    pub fn new(name: impl Into<String>, volume: u16) -> Self {
        Self {
            name: name.into(),
            spotify: SpotifyState::Discovery,
            reconnect_count: 0,
            last_loss: None,
            volume,
            playing: false,
            position_ms: 0,
            track: None,
            sessions_alive: 0,
            premium_required: false,
        }
    }
}

/// Playback events for listeners that report what plays (the Jellyfin sidecar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaybackEvent {
    TrackChanged(TrackInfo),
    Playing { position_ms: u32 },
    Paused { position_ms: u32 },
    Stopped,
    Seeked { position_ms: u32 },
    VolumeChanged(u16),
}

/// A command on its way to the supervisor, with the channel for its answer.
pub type CommandRequest = (Command, oneshot::Sender<Result<(), ControlError>>);

/// Cloneable handle held by everything outside the supervisor.
#[derive(Clone)]
pub struct ControlHandle {
    commands: mpsc::Sender<CommandRequest>,
    status: watch::Receiver<SpeakerStatus>,
    events: broadcast::Sender<PlaybackEvent>,
}

/// The supervisor's side of a [`ControlHandle`].
pub struct ControlEndpoint {
    pub commands: mpsc::Receiver<CommandRequest>,
    pub status: watch::Sender<SpeakerStatus>,
    pub events: broadcast::Sender<PlaybackEvent>,
}

/// Creates a connected handle/endpoint pair.
pub fn channel(initial: SpeakerStatus) -> (ControlHandle, ControlEndpoint) {
    let (cmd_tx, cmd_rx) = mpsc::channel(32);
    let (status_tx, status_rx) = watch::channel(initial);
    let (events_tx, _) = broadcast::channel(64);
    (
        ControlHandle {
            commands: cmd_tx,
            status: status_rx,
            events: events_tx.clone(),
        },
        ControlEndpoint {
            commands: cmd_rx,
            status: status_tx,
            events: events_tx,
        },
    )
}

impl ControlHandle {
    /// Sends a command and waits for the supervisor's answer.
    pub async fn send(&self, command: Command) -> Result<(), ControlError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.commands
            .send((command, reply_tx))
            .await
            .map_err(|_| ControlError::ShuttingDown)?;
        reply_rx.await.unwrap_or(Err(ControlError::ShuttingDown))
    }

    /// The latest published status.
    pub fn status(&self) -> SpeakerStatus {
        self.status.borrow().clone()
    }

    /// A receiver that wakes on every status change.
    pub fn watch_status(&self) -> watch::Receiver<SpeakerStatus> {
        self.status.clone()
    }

    /// Playback events from now on.
    pub fn subscribe_events(&self) -> broadcast::Receiver<PlaybackEvent> {
        self.events.subscribe()
    }
}

fn serialize_time<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_seconds(*time).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_command_gets_the_supervisors_answer() {
        let (handle, mut endpoint) = channel(SpeakerStatus::new("test", 0));
        tokio::spawn(async move {
            while let Some((cmd, reply)) = endpoint.commands.recv().await {
                let answer = match cmd {
                    Command::Play => Ok(()),
                    _ => Err(ControlError::Reconnecting),
                };
                let _ = reply.send(answer);
            }
        });
        assert_eq!(handle.send(Command::Play).await, Ok(()));
        assert_eq!(
            handle.send(Command::Next).await,
            Err(ControlError::Reconnecting)
        );
    }

    #[tokio::test]
    async fn a_gone_supervisor_is_reported_not_hung() {
        let (handle, endpoint) = channel(SpeakerStatus::new("test", 0));
        drop(endpoint);
        assert_eq!(
            handle.send(Command::Play).await,
            Err(ControlError::ShuttingDown)
        );
    }
}
