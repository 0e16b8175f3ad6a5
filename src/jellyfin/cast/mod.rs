//! The Jellyfin cast target: the speaker as a "Play on" device for a Jellyfin music library.
//!
//! `queue` is the pure queue logic, `stream` the HTTP byte source with its bounded read-ahead,
//! `decode` symphonia, `output` the PCM (ALSA, or a capture for tests), `report` the playback
//! reports, `snapshot` what the status page shows, and `player` ties them together: one task for control, one thread for audio. The
//! audio device is shared with Spotify through [`crate::audio::AudioDeviceLock`]: never two
//! streams into one PCM.

mod decode;
pub mod hook;
mod output;
mod player;
mod queue;
mod report;
mod routed_output;
mod snapshot;
mod stream;

pub use decode::{DecodeError, PcmFormat, TrackDecoder};
pub use output::{AlsaOutput, CaptureOutput, Captured, OutputFactory, PcmOutput};
pub use player::{spawn, CastCommand, CastHandle, CastSettings, CastStats, PlayRequest};
pub use queue::{PlayCommand, PlaybackOrder, Queue, QueueItem, RepeatMode};
pub use routed_output::{RouteOutputBuilder, RoutedOutput};
pub use snapshot::{CastPlayState, CastStatus, CastStatusCell, FailedItem};
pub use stream::{HttpSource, StreamSettings};
