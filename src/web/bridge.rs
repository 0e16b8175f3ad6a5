//! Turns what the sources and the Jellyfin sidecar publish into numbered events.
//!
//! Spotify is pushed (the supervisor's playback events and status changes); the active source
//! and the cast's state are read from their snapshots every `poll`, because the cast publishes
//! into a cell without a notifier. Volume comes from the status (the one mixer), so a change from
//! the app, the page or a knob gives one `volume` event, not one per path.

use std::time::Duration;

use serde_json::json;
use tokio::sync::{broadcast, watch};

use super::events::EventHub;
use crate::audio::MAX_VOLUME;
use crate::connect::control::{PlaybackEvent, SpeakerStatus, SpotifyState, TrackInfo};
use crate::jellyfin::JellyfinState;
use crate::source::{NowPlaying, PlayState, SourceKind, Sources};

/// Volume on the 0..=65535 scale → whole percent.
pub fn percent(volume: u16) -> u32 {
    (u32::from(volume) * 100 + u32::from(MAX_VOLUME) / 2) / u32::from(MAX_VOLUME)
}

fn track_json(source: SourceKind, t: &TrackInfo) -> serde_json::Value {
    json!({
        "source": source,
        "title": t.name,
        "artists": t.artists,
        "album": t.album,
        "uri": t.uri,
        "duration_ms": t.duration_ms,
    })
}

/// The `connection` events for one change of the Spotify state.
fn connection_events(hub: &EventHub, before: &SpeakerStatus, now: &SpeakerStatus) {
    if before.spotify == now.spotify {
        return;
    }
    match (before.spotify, now.spotify) {
        (_, SpotifyState::Reconnecting) => {
            let reason = now.last_loss.as_ref().map(|l| l.reason.clone());
            hub.publish("connection", json!({"state": "lost", "reason": reason}));
            hub.publish(
                "connection",
                json!({"state": "reconnecting", "reconnect_count": now.reconnect_count}),
            );
        }
        (SpotifyState::Reconnecting, SpotifyState::Connected) => {
            // The supervisor rebuilds with the same session_id, live volume and play intent.
            hub.publish(
                "connection",
                json!({"state": "reconnected", "session_kept": true, "reconnect_count": now.reconnect_count}),
            );
        }
        (_, state) => {
            hub.publish("connection", json!({"state": state}));
        }
    }
}

fn play_state_event(hub: &EventHub, now: &NowPlaying) {
    let kind = match now.state {
        PlayState::Playing => "playing",
        PlayState::Paused => "paused",
        PlayState::Stopped => "stopped",
    };
    hub.publish(
        kind,
        json!({"source": now.source, "position_ms": now.position_ms}),
    );
}

/// Runs until `shutdown`.
pub async fn run(
    hub: EventHub,
    sources: Sources,
    mut jellyfin: watch::Receiver<JellyfinState>,
    poll: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let control = sources.spotify.control.clone();
    let mut events = control.subscribe_events();
    let mut status = control.watch_status();
    let mut last_status = status.borrow_and_update().clone();
    let mut last_volume = last_status.volume;
    let volume_event = |hub: &EventHub, last: &mut u16, volume: u16| {
        if volume != *last {
            *last = volume;
            hub.publish(
                "volume",
                json!({"volume": volume, "percent": percent(volume)}),
            );
        }
    };
    jellyfin.borrow_and_update();
    let mut active = sources.active().kind();
    let mut cast_seen: Option<(PlayState, Option<String>)> = None;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => spotify_event(&hub, event),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            changed = status.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = status.borrow_and_update().clone();
                if now.volume != last_status.volume {
                    volume_event(&hub, &mut last_volume, now.volume);
                }
                connection_events(&hub, &last_status, &now);
                last_status = now;
            },
            changed = jellyfin.changed() => {
                if changed.is_err() {
                    // The sidecar is off for good; the rest still works.
                    jellyfin = watch::channel(JellyfinState::Disabled).1;
                    continue;
                }
                let state = jellyfin.borrow_and_update().clone();
                hub.publish("jellyfin", json!(state));
            },
            _ = sources.mixer_changed.notified() => {
                if let Some(mixer) = &sources.mixer {
                    volume_event(&hub, &mut last_volume, mixer.volume());
                }
            },
            _ = tick.tick() => {
                let now_active = sources.active().kind();
                if now_active != active {
                    hub.publish("source", json!({"active": now_active, "previous": active}));
                    active = now_active;
                }
                if let Some(cast) = &sources.cast {
                    let now = cast.now_playing();
                    let key = (now.state, now.title.clone());
                    if cast_seen.as_ref() != Some(&key) {
                        let first = cast_seen.is_none();
                        let track_changed = cast_seen.as_ref().map(|s| &s.1) != Some(&key.1);
                        cast_seen = Some(key);
                        // Nothing to say about a cast that never played.
                        if !(first && now.state == PlayState::Stopped) {
                            if track_changed && now.title.is_some() {
                                hub.publish("track", json!({"source": SourceKind::Jellyfin, "item_id": now.title, "duration_ms": now.duration_ms}));
                            }
                            play_state_event(&hub, &now);
                        }
                    }
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

fn spotify_event(hub: &EventHub, event: PlaybackEvent) {
    let source = SourceKind::Spotify;
    match event {
        PlaybackEvent::TrackChanged(t) => {
            hub.publish("track", track_json(source, &t));
        }
        PlaybackEvent::Playing { position_ms } => {
            hub.publish(
                "playing",
                json!({"source": source, "position_ms": position_ms}),
            );
        }
        PlaybackEvent::Paused { position_ms } => {
            hub.publish(
                "paused",
                json!({"source": source, "position_ms": position_ms}),
            );
        }
        PlaybackEvent::Stopped => {
            hub.publish("stopped", json!({"source": source}));
        }
        PlaybackEvent::Seeked { position_ms } => {
            hub.publish(
                "seeked",
                json!({"source": source, "position_ms": position_ms}),
            );
        }
        // The status change carries it (see the module comment).
        PlaybackEvent::VolumeChanged(_) => {}
    }
}

#[cfg(test)]
#[path = "bridge_tests.rs"]
mod tests;
