//! What the status page shows about the cast: a small snapshot the player task publishes after
//! every command and audio event it handles, read by the status server on each request.
//!
//! Cheap on both sides and never in the audio path: the audio thread only stores the heard
//! position in an atomic (it did so already, for the reports) and never touches the mutex; the
//! player task replaces a small struct under a mutex that nobody holds longer than a clone. So a
//! status client polling in a loop costs the audio nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

/// Playing, paused or stopped (the queue ended, Stop, or Spotify took the speaker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CastPlayState {
    Playing,
    Paused,
    Stopped,
}

/// The last item that could not be streamed or decoded, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedItem {
    pub item_id: String,
    pub reason: String,
}

/// The cast as the status page shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CastStatus {
    pub state: CastPlayState,
    /// The item playing (or paused, or being opened); `None` when stopped.
    pub item_id: Option<String>,
    /// Heard position in the item; filled in live by [`CastStatusCell::snapshot`].
    pub position_seconds: Option<f64>,
    /// When the stream says (a file's header; a progressive transcode usually does not).
    pub duration_seconds: Option<f64>,
    /// 0-based, in play order (the order `NowPlayingQueue` reports).
    pub queue_index: Option<usize>,
    pub queue_length: usize,
    /// Jellyfin's RepeatMode name: RepeatNone, RepeatAll or RepeatOne.
    pub repeat: &'static str,
    pub shuffle: bool,
    /// Kept after the queue moved on: the reason an item was skipped is what a user looks for.
    pub last_failed: Option<FailedItem>,
}

/// Shared between the player (writer), its audio thread (the position) and the status server
/// (reader). Clones share the same cell.
#[derive(Debug, Clone, Default)]
pub struct CastStatusCell {
    published: Arc<Mutex<Option<CastStatus>>>,
    /// The heard position of the current item in ms, stored by the audio thread as it writes.
    position_ms: Arc<AtomicU64>,
}

impl CastStatusCell {
    pub fn new() -> Self {
        Self::default()
    }

    /// The cast now; `None` until the first `Play` since the daemon started.
    pub fn snapshot(&self) -> Option<CastStatus> {
        let mut status = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()?;
        if status.state != CastPlayState::Stopped && status.item_id.is_some() {
            let ms = self.position_ms.load(Ordering::SeqCst);
            status.position_seconds = Some(ms as f64 / 1000.0);
        }
        Some(status)
    }

    pub(super) fn publish(&self, status: CastStatus) {
        *self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(status);
    }

    /// The atomic the player and its audio thread keep the position in.
    pub(super) fn position(&self) -> Arc<AtomicU64> {
        self.position_ms.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn playing() -> CastStatus {
        CastStatus {
            state: CastPlayState::Playing,
            item_id: Some("a".into()),
            position_seconds: None,
            duration_seconds: Some(180.5),
            queue_index: Some(1),
            queue_length: 3,
            repeat: "RepeatAll",
            shuffle: true,
            last_failed: None,
        }
    }

    #[test]
    fn nothing_before_the_first_play_then_the_live_position() {
        let cell = CastStatusCell::new();
        assert_eq!(cell.snapshot(), None);
        cell.publish(playing());
        cell.position().store(12_345, Ordering::SeqCst);
        let shared = cell.clone();
        let s = shared.snapshot().unwrap();
        assert_eq!(
            s.position_seconds,
            Some(12.345),
            "read live, through a clone"
        );
        assert_eq!(s.queue_index, Some(1));
        cell.position().store(13_000, Ordering::SeqCst);
        assert_eq!(cell.snapshot().unwrap().position_seconds, Some(13.0));
        // Stopped: no position, whatever the atomic still holds.
        cell.publish(CastStatus {
            state: CastPlayState::Stopped,
            item_id: None,
            queue_index: None,
            ..playing()
        });
        assert_eq!(cell.snapshot().unwrap().position_seconds, None);
    }

    #[test]
    fn serializes_with_the_names_the_status_page_documents() {
        let status = CastStatus {
            state: CastPlayState::Paused,
            position_seconds: Some(1.5),
            last_failed: Some(FailedItem {
                item_id: "b".into(),
                reason: "stream: HTTP 500".into(),
            }),
            ..playing()
        };
        let v = serde_json::to_value(&status).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "state": "paused",
                "item_id": "a",
                "position_seconds": 1.5,
                "duration_seconds": 180.5,
                "queue_index": 1,
                "queue_length": 3,
                "repeat": "RepeatAll",
                "shuffle": true,
                "last_failed": {"item_id": "b", "reason": "stream: HTTP 500"},
            })
        );
    }
}
