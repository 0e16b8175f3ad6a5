//! What the player reports, applied: the status, the user's play intent (frozen across a loss),
//! the volume Spotify was told, and the play that resumes a re-attached session.

use std::sync::atomic::Ordering;

use log::{info, warn};

use super::super::control::PlaybackEvent;
use super::super::session::{ConnectBackend, ConnectSession, PlayerSignal, SessionCommand};
use super::{Frozen, Supervisor};

impl<B: ConnectBackend> Supervisor<B> {
    /// After the new session is activated: play exactly once if the user was playing.
    pub(super) fn resolve_intent(&mut self, session: &B::Session, path: &str) {
        match self.frozen_intent.take() {
            Some(Frozen { playing: true, .. }) => {
                info!("playback re-attached ({path}); resuming play as the user was playing");
                if let Err(e) = session.command(SessionCommand::Play) {
                    warn!("could not resume playback: {e}");
                }
            }
            Some(Frozen { playing: false, .. }) => {
                info!("playback re-attached ({path}); staying paused as the user left it")
            }
            None => {}
        }
    }

    /// Tells Spotify about a volume changed outside the daemon (a knob, amixer). The mixer
    /// writes nothing for the step it is already on, so this cannot loop or drift.
    pub(super) fn sync_volume(&mut self, session: &B::Session, force: bool) {
        let live = self.mixer.volume();
        if live != self.told_volume || force {
            if let Err(e) = session.command(SessionCommand::SetVolume(live)) {
                warn!("could not report the volume to Spotify: {e}");
                return;
            }
            if live != self.told_volume {
                self.told_volume = live;
                self.publish(|s| s.volume = live);
                let _ = self
                    .endpoint
                    .events
                    .send(PlaybackEvent::VolumeChanged(live));
            }
        }
    }

    /// Player events while connected.
    pub(super) fn on_signal(&mut self, signal: PlayerSignal) {
        let tracking = self.frozen_intent.is_none();
        let event = match signal {
            PlayerSignal::Playing { position_ms } => {
                self.playback_changed(tracking, true, position_ms);
                Some(PlaybackEvent::Playing { position_ms })
            }
            PlayerSignal::Paused { position_ms } => {
                self.playback_changed(tracking, false, position_ms);
                Some(PlaybackEvent::Paused { position_ms })
            }
            PlayerSignal::Stopped => {
                if tracking {
                    self.was_playing.store(false, Ordering::SeqCst);
                }
                self.publish(|s| {
                    s.playing = false;
                    s.track = None;
                });
                Some(PlaybackEvent::Stopped)
            }
            PlayerSignal::Seeked { position_ms } => {
                self.publish(|s| s.position_ms = position_ms);
                Some(PlaybackEvent::Seeked { position_ms })
            }
            PlayerSignal::Position { position_ms } => {
                self.publish(|s| s.position_ms = position_ms);
                None
            }
            PlayerSignal::TrackChanged(track) => {
                self.publish(|s| s.track = Some(track.clone()));
                Some(PlaybackEvent::TrackChanged(track))
            }
            PlayerSignal::VolumeChanged(_) => {
                // Spirc reports the value it was given (an app's slider); the hardware took the
                // nearest step. Spotify already has its value: remember the step's, or the next
                // sync would send it back as a change (an echo).
                let live = self.mixer.volume();
                self.told_volume = live;
                self.publish(|s| s.volume = live);
                Some(PlaybackEvent::VolumeChanged(live))
            }
            PlayerSignal::SessionConnected
            | PlayerSignal::SessionDisconnected
            | PlayerSignal::Loading
            | PlayerSignal::EndOfTrack
            | PlayerSignal::Unavailable => None,
        };
        if let Some(event) = event {
            // No listener is fine: the Jellyfin sidecar may be off.
            let _ = self.endpoint.events.send(event);
        }
    }

    /// Playing or paused at a position: the status follows always, the intent only while it is
    /// not frozen.
    pub(super) fn playback_changed(&mut self, tracking: bool, playing: bool, position_ms: u32) {
        if tracking {
            self.was_playing.store(playing, Ordering::SeqCst);
        }
        self.publish(|s| {
            s.playing = playing;
            s.position_ms = position_ms;
        });
    }

    /// Player events with no session (the shutdown's pause, a load failing on the dead session):
    /// they change what the status shows, never the frozen intent.
    pub(super) fn on_signal_disconnected(&mut self, signal: PlayerSignal) {
        if matches!(
            signal,
            PlayerSignal::SessionConnected | PlayerSignal::SessionDisconnected
        ) {
            return;
        }
        self.on_signal(signal);
    }
}
