//! Where Spotify's playback is now, for `Rewind`/`FastForward` while Spotify plays: the status
//! snapshot holds the position of the last playback event only, so this follows the events.

use std::time::Instant;

use crate::connect::control::PlaybackEvent;

/// The position at the last event, and since when it runs (None: paused or stopped).
#[derive(Debug, Default)]
pub struct PlayClock {
    position_ms: u64,
    since: Option<Instant>,
    duration_ms: u64,
}

impl PlayClock {
    pub fn on_event(&mut self, event: &PlaybackEvent, now: Instant) {
        match event {
            PlaybackEvent::TrackChanged(track) => {
                self.duration_ms = u64::from(track.duration_ms);
                self.position_ms = 0;
                self.since = None;
            }
            PlaybackEvent::Playing { position_ms } => {
                self.position_ms = u64::from(*position_ms);
                self.since = Some(now);
            }
            PlaybackEvent::Paused { position_ms } => {
                self.position_ms = u64::from(*position_ms);
                self.since = None;
            }
            PlaybackEvent::Seeked { position_ms } => {
                self.position_ms = u64::from(*position_ms);
                if self.since.is_some() {
                    self.since = Some(now);
                }
            }
            PlaybackEvent::Stopped => *self = Self::default(),
            PlaybackEvent::VolumeChanged(_) => {}
        }
    }

    /// The seek target `delta_ms` from now, kept inside the track.
    pub fn target(&self, delta_ms: i64, now: Instant) -> u32 {
        let elapsed = self
            .since
            .map_or(0, |at| now.saturating_duration_since(at).as_millis() as u64);
        let at = (self.position_ms + elapsed) as i64;
        let mut to = (at + delta_ms).max(0) as u64;
        if self.duration_ms > 0 {
            to = to.min(self.duration_ms.saturating_sub(1_000));
        }
        u32::try_from(to).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::control::TrackInfo;

    #[test]
    fn the_clock_runs_while_playing_and_stands_while_paused() {
        let t0 = Instant::now();
        let mut clock = PlayClock::default();
        clock.on_event(
            &PlaybackEvent::TrackChanged(TrackInfo {
                uri: "u".into(),
                name: "n".into(),
                artists: vec![],
                album: "a".into(),
                duration_ms: 100_000,
            }),
            t0,
        );
        clock.on_event(&PlaybackEvent::Playing { position_ms: 5_000 }, t0);
        let later = t0 + std::time::Duration::from_secs(20);
        assert_eq!(clock.target(-10_000, later), 15_000, "25 s in, back 10");
        assert_eq!(clock.target(30_000, later), 55_000);
        assert_eq!(clock.target(-60_000, later), 0, "not before the start");
        assert_eq!(clock.target(300_000, later), 99_000, "not past the end");
        clock.on_event(
            &PlaybackEvent::Paused {
                position_ms: 30_000,
            },
            later,
        );
        let much_later = later + std::time::Duration::from_secs(60);
        assert_eq!(
            clock.target(30_000, much_later),
            60_000,
            "paused: the clock stands"
        );
    }
}
