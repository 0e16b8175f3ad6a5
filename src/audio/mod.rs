//! Audio output: the daemon-owned ALSA hardware mixer, volume curves, sinks and device listing.

mod curve;

pub use curve::VolumeCurveKind;
