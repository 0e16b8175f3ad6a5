//! The audio layer every source sits on: the daemon-owned ALSA hardware mixer, volume curves,
//! Spotify's sinks, device listing and arbitration, the live switch to a new DAC, and for sources
//! that decode themselves (the Jellyfin cast) the HTTP byte stream, the symphonia decoder and the
//! PCM output. Nothing here knows Spotify or Jellyfin: their specifics (URLs, authentication,
//! reports, queues) stay in `connect/` and `jellyfin/`.

mod curve;
mod decode;
mod device_lock;
mod devices;
mod live;
mod mixer;
mod output;
mod route;
mod routed_output;
mod sink;
mod stream;
mod switch_mixer;
mod volume_memory;

pub use curve::{ControlRange, VolumeCurveKind, VolumeMapping, MAX_VOLUME};
pub use decode::{DecodeError, PcmFormat, TrackDecoder};
pub use device_lock::{AudioDeviceLock, DeviceBusy, DeviceGuard, Holder};
pub use devices::{check_pcm, has_sound_card, AudioError, Inventory};
pub use live::{AudioSpec, AudioState, LiveAudio, MixerOpener};
pub use mixer::{
    open_mixer, AlsaControl, HardwareMixer, MixerSettings, OpenedMixer, SoftwareMixer,
    VolumeControl,
};
pub use output::{AlsaOutput, CaptureOutput, Captured, OutputFactory, PcmOutput};
pub use route::{OutputRoute, RouteSinkBuilder, RoutedSink};
pub use routed_output::{RouteOutputBuilder, RoutedOutput};
pub use sink::{alsa_sink, null_sink, LockedSink, NullSink, ResilientSink, SinkFactory};
pub use stream::{HttpSource, StreamFetch, StreamSettings};
pub use switch_mixer::SwitchMixer;
pub use volume_memory::VolumeMemory;

#[cfg(test)]
pub(crate) use mixer::tests::SimControl;
