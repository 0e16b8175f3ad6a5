//! Sources side by side: one interface for "something that plays on this speaker" and the
//! choice of the active one.
//!
//! The web API, the page, Jellyfin's remote control (Playstate and GeneralCommand messages on
//! its socket) and (later) an AirPlay or Snapcast source talk to [`Sources::active`] through
//! [`Source`], never to a source's own handle, so adding a
//! source is implementing this trait, not teaching every caller a new handle. Today there are two:
//! Spotify (over the supervisor's [`ControlHandle`]) and the Jellyfin cast (over its
//! [`CastHandle`]). Both sit on one audio layer, `crate::audio`: the mixer and the device lock
//! they share, Spotify's sinks, and the generic parts a decoding source plays through (HTTP
//! stream, symphonia decode, PCM output), which know neither Spotify nor Jellyfin.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use librespot_playback::mixer::Mixer;
use serde::Serialize;
use tokio::sync::watch;

use crate::connect::control::{Command, ControlError, ControlHandle};
use crate::jellyfin::cast::{CastCommand, CastHandle, CastPlayState, CastStatusCell};

/// Which source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Spotify,
    Jellyfin,
}

/// Playing, paused or stopped, the same words for every source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlayState {
    Playing,
    Paused,
    Stopped,
}

/// What a source plays now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NowPlaying {
    pub source: SourceKind,
    pub state: PlayState,
    /// Spotify's track name, or the Jellyfin item id (the cast knows no title yet).
    pub title: Option<String>,
    pub artists: Vec<String>,
    pub album: Option<String>,
    pub position_ms: Option<u64>,
    pub duration_ms: Option<u64>,
}

/// A transport command, the same for every source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceCommand {
    Play,
    Pause,
    PlayPause,
    Next,
    Previous,
    Seek {
        position_ms: u64,
    },
    /// Relative to where playback is now, in ms (Jellyfin's Rewind/FastForward).
    SeekBy(i64),
    /// Ends a cast; Spotify pauses (a Connect device cannot end the user's session).
    Stop,
    /// On Spotify's 0..=65535 scale (the one mixer's scale).
    SetVolume(u16),
    VolumeUp,
    VolumeDown,
}

/// A volume step of [`SourceCommand::VolumeUp`] when no source carries the volume (the cast
/// player's own step: 32 steps over the range).
pub const VOLUME_STEP: u16 = crate::audio::MAX_VOLUME / 32;

/// Why a command could not be carried out; the text is for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Spotify(#[from] ControlError),
    #[error("the Jellyfin cast is not running")]
    CastGone,
}

pub type CommandFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send + 'a>>;

/// Something that plays on the speaker.
pub trait Source: Send + Sync {
    fn kind(&self) -> SourceKind;
    /// True while this source owns the speaker (a cast from `Play` until it stops).
    fn is_active(&self) -> bool;
    fn now_playing(&self) -> NowPlaying;
    fn command(&self, command: SourceCommand) -> CommandFuture<'_>;
}

/// Spotify, over the supervisor's handle (which survives reconnects).
#[derive(Clone)]
pub struct SpotifySource {
    pub control: ControlHandle,
}

impl Source for SpotifySource {
    fn kind(&self) -> SourceKind {
        SourceKind::Spotify
    }

    fn is_active(&self) -> bool {
        let s = self.control.status();
        s.playing || s.track.is_some()
    }

    fn now_playing(&self) -> NowPlaying {
        let s = self.control.status();
        let state = match (s.playing, &s.track) {
            (true, _) => PlayState::Playing,
            (false, Some(_)) => PlayState::Paused,
            (false, None) => PlayState::Stopped,
        };
        NowPlaying {
            source: SourceKind::Spotify,
            state,
            title: s.track.as_ref().map(|t| t.name.clone()),
            artists: s
                .track
                .as_ref()
                .map(|t| t.artists.clone())
                .unwrap_or_default(),
            album: s.track.as_ref().map(|t| t.album.clone()),
            position_ms: Some(u64::from(s.position_ms)),
            duration_ms: s.track.as_ref().map(|t| u64::from(t.duration_ms)),
        }
    }

    fn command(&self, command: SourceCommand) -> CommandFuture<'_> {
        let command = match command {
            SourceCommand::Play => Command::Play,
            SourceCommand::Pause => Command::Pause,
            SourceCommand::PlayPause => Command::PlayPause,
            SourceCommand::Next => Command::Next,
            SourceCommand::Previous => Command::Previous,
            SourceCommand::Seek { position_ms } => Command::Seek {
                position_ms: u32::try_from(position_ms).unwrap_or(u32::MAX),
            },
            SourceCommand::SeekBy(delta_ms) => {
                // The last reported position: a caller that keeps a live clock (the Jellyfin
                // socket's) sends an absolute Seek instead.
                let now = i64::from(self.control.status().position_ms);
                Command::Seek {
                    position_ms: u32::try_from((now + delta_ms).max(0)).unwrap_or(u32::MAX),
                }
            }
            SourceCommand::Stop => Command::Stop,
            SourceCommand::SetVolume(v) => Command::SetVolume(v),
            SourceCommand::VolumeUp => Command::VolumeUp,
            SourceCommand::VolumeDown => Command::VolumeDown,
        };
        Box::pin(async move { self.control.send(command).await.map_err(SourceError::from) })
    }
}

/// The Jellyfin cast, over its handle (published by the sidecar once the player runs) and the
/// status cell the player writes.
#[derive(Clone)]
pub struct CastSource {
    pub handle: watch::Receiver<Option<CastHandle>>,
    pub status: CastStatusCell,
}

impl Source for CastSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Jellyfin
    }

    fn is_active(&self) -> bool {
        self.handle
            .borrow()
            .as_ref()
            .is_some_and(CastHandle::is_active)
    }

    fn now_playing(&self) -> NowPlaying {
        let cast = self.status.snapshot();
        let state = match cast.as_ref().map(|c| c.state) {
            Some(CastPlayState::Playing) => PlayState::Playing,
            Some(CastPlayState::Paused) => PlayState::Paused,
            _ => PlayState::Stopped,
        };
        NowPlaying {
            source: SourceKind::Jellyfin,
            state,
            title: cast.as_ref().and_then(|c| c.item_id.clone()),
            artists: Vec::new(),
            album: None,
            position_ms: cast
                .as_ref()
                .and_then(|c| c.position_seconds)
                .map(|s| (s * 1000.0) as u64),
            duration_ms: cast
                .as_ref()
                .and_then(|c| c.duration_seconds)
                .map(|s| (s * 1000.0) as u64),
        }
    }

    fn command(&self, command: SourceCommand) -> CommandFuture<'_> {
        let handle = self.handle.borrow().clone();
        Box::pin(async move {
            let handle = handle.ok_or(SourceError::CastGone)?;
            handle.send(match command {
                SourceCommand::Play => CastCommand::Unpause,
                SourceCommand::Pause => CastCommand::Pause,
                SourceCommand::PlayPause => CastCommand::PlayPause,
                SourceCommand::Next => CastCommand::Next,
                SourceCommand::Previous => CastCommand::Previous,
                SourceCommand::Seek { position_ms } => CastCommand::Seek { position_ms },
                SourceCommand::SeekBy(delta_ms) => CastCommand::SeekBy(delta_ms),
                SourceCommand::Stop => CastCommand::Stop,
                SourceCommand::SetVolume(v) => CastCommand::SetVolume(v),
                SourceCommand::VolumeUp => CastCommand::VolumeUp,
                SourceCommand::VolumeDown => CastCommand::VolumeDown,
            });
            Ok(())
        })
    }
}

/// Every source, and which one is active. Clones share the sources.
#[derive(Clone)]
pub struct Sources {
    pub spotify: SpotifySource,
    /// The Jellyfin cast (any other source that can take the speaker from Spotify, later).
    pub cast: Option<Arc<dyn Source>>,
    /// The one mixer: the volume when no source has a session to carry it.
    pub mixer: Option<Arc<dyn Mixer>>,
    /// Woken when a command changed the mixer directly (no source published it): the event
    /// bridge reads the volume then instead of at the supervisor's next idle tick.
    pub mixer_changed: Arc<tokio::sync::Notify>,
}

impl Sources {
    /// The cast while it plays (it took the device from Spotify), Spotify otherwise.
    pub fn active(&self) -> &dyn Source {
        match &self.cast {
            Some(cast) if cast.is_active() => cast.as_ref(),
            _ => &self.spotify,
        }
    }

    /// A command for the active source. The volume is the speaker's, not the session's: with
    /// no Spotify session to carry it (nobody picked the speaker yet, or reconnecting) it goes
    /// straight to the mixer, which the next session starts from.
    pub async fn command(&self, command: SourceCommand) -> Result<SourceKind, SourceError> {
        let active = self.active();
        let kind = active.kind();
        match (active.command(command).await, &self.mixer) {
            (Err(SourceError::Spotify(e)), Some(mixer)) => {
                let v = mixer.volume();
                let v = match command {
                    SourceCommand::SetVolume(v) => v,
                    SourceCommand::VolumeUp => v.saturating_add(VOLUME_STEP),
                    SourceCommand::VolumeDown => v.saturating_sub(VOLUME_STEP),
                    _ => return Err(SourceError::Spotify(e)),
                };
                mixer.set_volume(v);
                self.mixer_changed.notify_one();
                Ok(kind)
            }
            (result, _) => result.map(|()| kind),
        }
    }

    /// The speaker's volume: the mixer's (the truth, whoever plays), else Spotify's last.
    pub fn volume(&self) -> u16 {
        match &self.mixer {
            Some(mixer) => mixer.volume(),
            None => self.spotify.control.status().volume,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::control::{self, SpeakerStatus, TrackInfo};

    fn spotify() -> (SpotifySource, control::ControlEndpoint) {
        let (control, endpoint) = control::channel(SpeakerStatus::new("t", 0));
        (SpotifySource { control }, endpoint)
    }

    #[tokio::test]
    async fn spotify_commands_go_to_the_supervisor_and_its_answer_comes_back() {
        let (source, mut endpoint) = spotify();
        let seen = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some((command, reply)) = endpoint.commands.recv().await {
                let answer = if command == Command::Next {
                    Err(ControlError::NoSession)
                } else {
                    Ok(())
                };
                seen.push(command);
                let _ = reply.send(answer);
                if seen.len() == 2 {
                    break;
                }
            }
            seen
        });
        let sources = Sources {
            spotify: source,
            cast: None,
            mixer: None,
            mixer_changed: Default::default(),
        };
        assert_eq!(
            sources
                .command(SourceCommand::Seek {
                    position_ms: 61_000
                })
                .await,
            Ok(SourceKind::Spotify)
        );
        assert_eq!(
            sources.command(SourceCommand::Next).await,
            Err(SourceError::Spotify(ControlError::NoSession))
        );
        assert_eq!(
            seen.await.unwrap(),
            vec![
                Command::Seek {
                    position_ms: 61_000
                },
                Command::Next
            ]
        );
    }

    #[test]
    fn spotify_now_playing_follows_the_status() {
        let (source, endpoint) = spotify();
        assert_eq!(source.now_playing().state, PlayState::Stopped);
        assert!(!source.is_active());
        endpoint.status.send_modify(|s| {
            s.playing = true;
            s.track = Some(TrackInfo {
                uri: "spotify:track:x".into(),
                name: "Song".into(),
                artists: vec!["A".into()],
                album: "Al".into(),
                duration_ms: 1000,
            });
        });
        let now = source.now_playing();
        assert_eq!(now.state, PlayState::Playing);
        assert_eq!(now.title.as_deref(), Some("Song"));
        assert!(source.is_active());
    }

    #[tokio::test]
    async fn without_a_cast_player_spotify_is_active_and_a_cast_command_says_so() {
        let (source, _endpoint) = spotify();
        let (_tx, rx) = watch::channel(None);
        let cast = CastSource {
            handle: rx,
            status: CastStatusCell::new(),
        };
        assert!(!cast.is_active());
        assert_eq!(
            cast.command(SourceCommand::Pause).await,
            Err(SourceError::CastGone)
        );
        let sources = Sources {
            spotify: source,
            cast: Some(Arc::new(cast)),
            mixer: None,
            mixer_changed: Default::default(),
        };
        assert_eq!(sources.active().kind(), SourceKind::Spotify);
    }
}
