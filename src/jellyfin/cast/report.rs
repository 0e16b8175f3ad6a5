//! The cast's playback reports: real library items, so they carry the ItemId (a GUID the server
//! knows), the PlaySessionId of the stream and the queue, unlike the Spotify reports.

use serde_json::{json, Value};

use super::queue::{PlaybackOrder, QueueItem, RepeatMode};
use crate::jellyfin::messages::volume_to_percent;
use crate::jellyfin::reporter::Report;

/// Everything a report says, gathered by the player.
#[derive(Debug, Clone)]
pub struct CastState<'a> {
    pub item: &'a QueueItem,
    pub play_session_id: &'a str,
    pub media_source_id: &'a str,
    pub position_ms: u64,
    pub paused: bool,
    pub volume: u16,
    pub repeat: RepeatMode,
    pub order: PlaybackOrder,
    pub queue: &'a [QueueItem],
    pub transcoding: bool,
    pub can_seek: bool,
}

pub const PLAYING: &str = "Sessions/Playing";
pub const PROGRESS: &str = "Sessions/Playing/Progress";
pub const STOPPED: &str = "Sessions/Playing/Stopped";

/// `Sessions/Playing` or `Sessions/Playing/Progress`.
pub fn playing(path: &'static str, s: &CastState<'_>) -> Report {
    let queue: Vec<Value> = s
        .queue
        .iter()
        .map(|e| json!({"Id": e.id, "PlaylistItemId": e.playlist_item_id}))
        .collect();
    Report {
        path,
        body: json!({
            "ItemId": s.item.id,
            "MediaSourceId": s.media_source_id,
            "PlaySessionId": s.play_session_id,
            "PlaylistItemId": s.item.playlist_item_id,
            "PositionTicks": s.position_ms * 10_000,
            "IsPaused": s.paused,
            "IsMuted": s.volume == 0,
            "VolumeLevel": volume_to_percent(s.volume),
            "CanSeek": s.can_seek,
            // The universal endpoint's transcode runs under a PlaySessionId of the server's own
            // making, which the speaker never learns; `Transcode` with ours is rewritten to
            // DirectPlay (PlaystateController `ValidatePlayMethod`). DirectStream is what the
            // server keeps and is the nearest truth: the server converts, the speaker plays.
            "PlayMethod": if s.transcoding { "DirectStream" } else { "DirectPlay" },
            "RepeatMode": s.repeat.as_str(),
            "PlaybackOrder": s.order.as_str(),
            "NowPlayingQueue": queue,
        }),
    }
}

/// `Sessions/Playing/Stopped`; `failed` when the item could not be streamed or decoded; `last`
/// when the cast ends with it: an empty `NowPlayingQueue` then clears the session's queue (the
/// server replaces it only with a non-null one, SessionManager `OnPlaybackStopped`).
pub fn stopped(s: &CastState<'_>, failed: bool, last: bool) -> Report {
    let mut report = Report {
        path: STOPPED,
        body: json!({
            "ItemId": s.item.id,
            "MediaSourceId": s.media_source_id,
            "PlaySessionId": s.play_session_id,
            "PlaylistItemId": s.item.playlist_item_id,
            "PositionTicks": s.position_ms * 10_000,
            "Failed": failed,
        }),
    };
    if last {
        report.body["NowPlayingQueue"] = json!([]);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_carry_the_item_the_session_and_the_queue() {
        let items = [
            QueueItem {
                id: "a".into(),
                playlist_item_id: "playlistItem1".into(),
            },
            QueueItem {
                id: "b".into(),
                playlist_item_id: "playlistItem2".into(),
            },
        ];
        let state = CastState {
            item: &items[1],
            play_session_id: "ps",
            media_source_id: "b",
            position_ms: 1_500,
            paused: true,
            volume: 32768,
            repeat: RepeatMode::RepeatAll,
            order: PlaybackOrder::Shuffle,
            queue: &items,
            transcoding: false,
            can_seek: true,
        };
        let r = playing(PROGRESS, &state);
        assert_eq!(r.body["ItemId"], "b");
        assert_eq!(r.body["PositionTicks"], 15_000_000u64);
        assert_eq!(r.body["IsPaused"], true);
        assert_eq!(r.body["VolumeLevel"], 50);
        assert_eq!(r.body["RepeatMode"], "RepeatAll");
        assert_eq!(r.body["PlaybackOrder"], "Shuffle");
        assert_eq!(r.body["NowPlayingQueue"][0]["Id"], "a");
        assert_eq!(
            r.body["NowPlayingQueue"][1]["PlaylistItemId"],
            "playlistItem2"
        );
        let s = stopped(&state, true, false);
        assert_eq!(s.path, STOPPED);
        assert_eq!(s.body["Failed"], true);
        assert_eq!(s.body["PlaySessionId"], "ps");
        assert!(s.body.get("NowPlayingQueue").is_none(), "between items");
        let last = stopped(&state, false, true);
        assert_eq!(last.body["NowPlayingQueue"], json!([]), "the cast ends");
    }
}
