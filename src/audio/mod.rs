//! Audio output: the daemon-owned ALSA hardware mixer, volume curves, sinks and device listing.

mod curve;
mod device_lock;
mod devices;
mod live;
mod mixer;
mod route;
mod sink;
mod switch_mixer;
mod volume_memory;

pub use curve::{ControlRange, VolumeCurveKind, VolumeMapping, MAX_VOLUME};
pub use device_lock::{AudioDeviceLock, DeviceBusy, DeviceGuard, Holder};
pub use devices::{check_pcm, has_sound_card, AudioError, Inventory};
pub use live::{AudioSpec, AudioState, LiveAudio, MixerOpener};
pub use mixer::{
    open_mixer, AlsaControl, HardwareMixer, MixerSettings, OpenedMixer, SoftwareMixer,
    VolumeControl,
};
pub use route::{OutputRoute, RouteSinkBuilder, RoutedSink};
pub use sink::{alsa_sink, null_sink, LockedSink, NullSink, ResilientSink, SinkFactory};
pub use switch_mixer::SwitchMixer;
pub use volume_memory::VolumeMemory;

#[cfg(test)]
pub(crate) use mixer::tests::SimControl;
