//! Now playing: turns the speaker's playback events into Jellyfin playback reports.
//!
//! One task owns the queue and sends reports one at a time, in order, so a `Stopped` can never
//! overtake the next `Playing`. Spotify tracks are not in the library: reports carry no ItemId
//! (a non-GUID one is a 400) but an `Item` describing the track.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use super::api::Api;
use super::messages::volume_to_percent;
use crate::connect::control::{PlaybackEvent, SpeakerStatus, TrackInfo};

/// A report waiting to be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub path: &'static str,
    pub body: Value,
}

/// Builds reports from events; pure, so the order and content are tested directly.
#[derive(Debug, Default)]
pub struct ReportBuilder {
    track: Option<TrackInfo>,
    started: bool,
    paused: bool,
    /// Position at `position_at`.
    position_ms: u32,
    position_at: Option<Instant>,
    volume: u16,
    /// When the last report for the current playback was built.
    last_report: Option<Instant>,
}

impl ReportBuilder {
    pub fn new(volume: u16) -> Self {
        Self {
            volume,
            ..Self::default()
        }
    }

    /// The reports an event causes (zero, one, or a Stopped followed by a Playing).
    pub fn on_event(&mut self, event: &PlaybackEvent) -> Vec<Report> {
        let mut out = Vec::new();
        match event {
            PlaybackEvent::TrackChanged(track) => {
                if self.started && self.track.as_ref().is_some_and(|t| t.uri != track.uri) {
                    out.push(self.report("Sessions/Playing/Stopped"));
                    self.started = false;
                }
                self.track = Some(track.clone());
                self.set_position(0);
            }
            PlaybackEvent::Playing { position_ms } => {
                self.paused = false;
                self.set_position(*position_ms);
                if self.track.is_some() {
                    let path = if self.started {
                        "Sessions/Playing/Progress"
                    } else {
                        "Sessions/Playing"
                    };
                    self.started = true;
                    out.push(self.report(path));
                }
            }
            PlaybackEvent::Paused { position_ms } => {
                self.paused = true;
                self.set_position(*position_ms);
                if self.started {
                    out.push(self.report("Sessions/Playing/Progress"));
                }
            }
            PlaybackEvent::Seeked { position_ms } => {
                self.set_position(*position_ms);
                if self.started {
                    out.push(self.report("Sessions/Playing/Progress"));
                }
            }
            PlaybackEvent::VolumeChanged(volume) => {
                self.volume = *volume;
                if self.started {
                    out.push(self.report("Sessions/Playing/Progress"));
                }
            }
            PlaybackEvent::Stopped => {
                if self.started {
                    out.push(self.report("Sessions/Playing/Stopped"));
                }
                self.started = false;
                self.track = None;
            }
        }
        out
    }

    /// The periodic progress report while something plays, and while paused one every
    /// `paused_check_in`: the server stops a playback that has not checked in for 5 minutes
    /// (SessionManager `CheckForIdlePlayback`), and the dashboard would lose it mid-pause.
    pub fn tick(&mut self, paused_check_in: Duration) -> Option<Report> {
        let due = !self.paused
            || self
                .last_report
                .is_none_or(|at| at.elapsed() >= paused_check_in);
        (self.started && due).then(|| self.report("Sessions/Playing/Progress"))
    }

    fn set_position(&mut self, ms: u32) {
        self.position_ms = ms;
        self.position_at = Some(Instant::now());
    }

    fn position_ms(&self) -> u64 {
        let elapsed = match (self.paused, self.position_at) {
            (false, Some(at)) => at.elapsed().as_millis() as u64,
            _ => 0,
        };
        let ms = u64::from(self.position_ms) + elapsed;
        match &self.track {
            Some(t) if t.duration_ms > 0 => ms.min(u64::from(t.duration_ms)),
            _ => ms,
        }
    }

    fn report(&mut self, path: &'static str) -> Report {
        self.last_report = Some(Instant::now());
        let item = self.track.as_ref().map(|t| {
            json!({
                "Name": t.name,
                "Type": "Audio",
                "MediaType": "Audio",
                "Artists": t.artists,
                "Album": t.album,
                "RunTimeTicks": u64::from(t.duration_ms) * 10_000,
            })
        });
        let ticks = self.position_ms() * 10_000;
        let body = if path.ends_with("Stopped") {
            json!({ "Item": item, "PositionTicks": ticks, "Failed": false })
        } else {
            json!({
                "Item": item,
                "PositionTicks": ticks,
                "IsPaused": self.paused,
                "IsMuted": self.volume == 0,
                "VolumeLevel": volume_to_percent(self.volume),
                "CanSeek": true,
                "PlayMethod": "DirectPlay",
                "RepeatMode": "RepeatNone",
                "PlaybackOrder": "Default",
            })
        };
        Report { path, body }
    }
}

/// The one ordered report queue: Spotify's reports and the cast's go through the same sender.
pub fn queue() -> (mpsc::Sender<Report>, mpsc::Receiver<Report>) {
    mpsc::channel(64)
}

/// Follows playback events and sends reports in order through `api` (while it has a token),
/// with whatever else is put on the queue (`queue_tx` is a clone of the cast's sender).
pub async fn run(
    mut events: broadcast::Receiver<PlaybackEvent>,
    status: watch::Receiver<SpeakerStatus>,
    api: watch::Receiver<Option<Api>>,
    (progress_every, paused_check_in): (Duration, Duration),
    mut shutdown: watch::Receiver<bool>,
    (queue_tx, mut queue_rx): (mpsc::Sender<Report>, mpsc::Receiver<Report>),
    casting: Option<watch::Receiver<bool>>,
) {
    // The sender: strictly one report at a time, in queue order.
    let sender = tokio::spawn(async move {
        while let Some(report) = queue_rx.recv().await {
            let current = api.borrow().clone();
            if let Some(api) = current.filter(Api::has_token) {
                if let Err(e) = api.report(report.path, &report.body).await {
                    log::debug!("Jellyfin report {} failed: {e}", report.path);
                }
            }
        }
    });
    let mut builder = ReportBuilder::new(status.borrow().volume);
    let mut tick = tokio::time::interval(progress_every);
    loop {
        let reports = tokio::select! {
            event = events.recv() => match event {
                Ok(event) => builder.on_event(&event),
                Err(broadcast::error::RecvError::Lagged(_)) => Vec::new(),
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = tick.tick() => builder.tick(paused_check_in).into_iter().collect(),
            _ = shutdown.changed() => break,
        };
        // While a Jellyfin cast plays, the session's now-playing is the cast's: Spotify's side
        // (paused, or a volume echo from the shared mixer) must not overwrite it.
        if casting.as_ref().is_some_and(|c| *c.borrow()) {
            continue;
        }
        for report in reports {
            // A full queue means Jellyfin is far behind: drop progress, keep state changes.
            if report.path.ends_with("Progress") {
                let _ = queue_tx.try_send(report);
            } else if queue_tx.send(report).await.is_err() {
                break;
            }
        }
    }
    drop(queue_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), sender).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(uri: &str) -> TrackInfo {
        TrackInfo {
            uri: uri.into(),
            name: "Song".into(),
            artists: vec!["A".into(), "B".into()],
            album: "Album".into(),
            duration_ms: 180_000,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reports_follow_the_events_in_order() {
        let mut b = ReportBuilder::new(32768);
        assert!(
            b.on_event(&PlaybackEvent::Playing { position_ms: 0 })
                .is_empty(),
            "nothing before a track"
        );
        assert!(b
            .on_event(&PlaybackEvent::TrackChanged(track("spotify:track:1")))
            .is_empty());
        let r = b.on_event(&PlaybackEvent::Playing { position_ms: 0 });
        assert_eq!(r[0].path, "Sessions/Playing");
        assert_eq!(r[0].body["Item"]["Name"], "Song");
        assert_eq!(r[0].body["Item"]["Artists"][1], "B");
        assert_eq!(r[0].body["Item"]["RunTimeTicks"], 1_800_000_000u64);
        assert!(r[0].body.get("ItemId").is_none());
        assert_eq!(r[0].body["VolumeLevel"], 50);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let progress = b.tick(Duration::from_secs(60)).unwrap();
        assert_eq!(progress.body["PositionTicks"], 100_000_000u64);
        let r = b.on_event(&PlaybackEvent::Paused {
            position_ms: 10_000,
        });
        assert_eq!(r[0].body["IsPaused"], true);
        assert!(
            b.tick(Duration::from_secs(60)).is_none(),
            "no periodic progress right after a pause"
        );
        // Next track: Stopped for the old one, then Playing for the new one, in that order.
        let mut all = b.on_event(&PlaybackEvent::TrackChanged(track("spotify:track:2")));
        all.extend(b.on_event(&PlaybackEvent::Playing { position_ms: 0 }));
        let paths: Vec<_> = all.iter().map(|r| r.path).collect();
        assert_eq!(paths, ["Sessions/Playing/Stopped", "Sessions/Playing"]);
        let r = b.on_event(&PlaybackEvent::Stopped);
        assert_eq!(r[0].path, "Sessions/Playing/Stopped");
        assert!(r[0].body["PositionTicks"].as_u64().is_some());
    }

    /// The dashboard asks for a now-playing image only for an item with image tags and an id
    /// to fetch them from (jellyfin-web `getNowPlayingImageUrl`: BackdropImageTags + Id,
    /// ParentBackdropImageTags + ParentBackdropItemId, ImageTags.Thumb/Primary + Id,
    /// ParentThumbImageTag + ParentThumbItemId, AlbumPrimaryImageTag + AlbumId). A Spotify track
    /// has nothing the server can serve, so its Item carries none of them: no image, no 404.
    #[tokio::test(start_paused = true)]
    async fn a_spotify_item_offers_no_image_the_server_cannot_serve() {
        let mut b = ReportBuilder::new(32768);
        b.on_event(&PlaybackEvent::TrackChanged(track("spotify:track:1")));
        let r = b.on_event(&PlaybackEvent::Playing { position_ms: 0 });
        let item = r[0].body["Item"].as_object().unwrap();
        for key in [
            "Id",
            "ImageTags",
            "BackdropImageTags",
            "ParentBackdropImageTags",
            "ParentBackdropItemId",
            "ParentThumbImageTag",
            "ParentThumbItemId",
            "AlbumPrimaryImageTag",
            "AlbumId",
        ] {
            assert!(!item.contains_key(key), "{key} in {item:?}");
        }
    }

    /// A six-minute pause: the server stops a playback that has not checked in for 5 minutes,
    /// so the paused speaker checks in every minute (ticked every 10 s like the daemon).
    #[tokio::test(start_paused = true)]
    async fn a_six_minute_pause_checks_in_every_minute() {
        let mut b = ReportBuilder::new(32768);
        b.on_event(&PlaybackEvent::TrackChanged(track("spotify:track:1")));
        b.on_event(&PlaybackEvent::Playing { position_ms: 0 });
        b.on_event(&PlaybackEvent::Paused { position_ms: 5_000 });
        let paused_at = Instant::now();
        let mut check_ins = Vec::new();
        let mut last = paused_at;
        let mut longest = Duration::ZERO;
        while paused_at.elapsed() < Duration::from_secs(360) {
            tokio::time::sleep(Duration::from_secs(10)).await;
            if let Some(r) = b.tick(Duration::from_secs(60)) {
                assert_eq!(r.body["IsPaused"], true);
                assert_eq!(r.body["PositionTicks"], 50_000_000u64, "the position stays");
                longest = longest.max(last.elapsed());
                last = Instant::now();
                check_ins.push(r);
            }
        }
        longest = longest.max(last.elapsed());
        assert_eq!(check_ins.len(), 6, "one a minute for six minutes");
        assert!(longest <= Duration::from_secs(60), "{longest:?}");
    }
}
