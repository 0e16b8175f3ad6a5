//! The Jellyfin cast target: the speaker as a "Play on" device for a Jellyfin music library.
//!
//! `queue` is the pure queue logic, `report` the playback reports, `snapshot` what the status
//! page shows, and `player` ties them together: one task for control (the queue, reports,
//! handover), one thread for audio. The generic parts it plays through live in `crate::audio`:
//! the HTTP byte stream with its bounded read-ahead (`HttpSource`, fetched through
//! [`crate::jellyfin::Api`]'s `StreamFetch`: the universal-audio URL and the token stay here),
//! the symphonia decoder (`TrackDecoder`) and the PCM output (`PcmOutput`, following the
//! `OutputRoute`). The audio device is shared with Spotify through
//! [`crate::audio::AudioDeviceLock`]: never two streams into one PCM.

pub mod hook;
mod player;
mod queue;
mod report;
mod snapshot;

pub use player::{spawn, CastCommand, CastHandle, CastSettings, CastStats, PlayRequest};
pub use queue::{PlayCommand, PlaybackOrder, Queue, QueueItem, RepeatMode};
pub use snapshot::{CastPlayState, CastStatus, CastStatusCell, FailedItem};
