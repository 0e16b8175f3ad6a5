//! Keeps Spirc's start-up volume write off the hardware.
//!
//! `Spirc::new` writes `ConnectConfig::initial_volume` to the mixer at its very end, after the
//! login (librespot-connect 0.8.0 spirc.rs:262-270), seconds after the supervisor read the value.
//! A knob turned in between would be turned back. So the mixer Spirc gets is this gate: while a
//! connection attempt runs, writes are dropped; once `Spirc::new` has returned the gate opens and
//! the supervisor tells Spotify the live value instead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use librespot_core::Error as LibrespotError;
use librespot_playback::mixer::{Mixer, MixerConfig, VolumeGetter};
use log::debug;

pub struct StartupGate {
    inner: Arc<dyn Mixer>,
    holding: AtomicBool,
}

impl StartupGate {
    pub fn new(inner: Arc<dyn Mixer>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            holding: AtomicBool::new(false),
        })
    }

    /// Drops writes until [`Self::release`].
    pub fn hold(&self) {
        self.holding.store(true, Ordering::SeqCst);
    }

    pub fn release(&self) {
        self.holding.store(false, Ordering::SeqCst);
    }
}

impl Mixer for StartupGate {
    fn open(_: MixerConfig) -> Result<Self, LibrespotError> {
        Err(LibrespotError::unimplemented(
            "the start-up gate wraps the daemon's mixer",
        ))
    }

    fn volume(&self) -> u16 {
        self.inner.volume()
    }

    fn set_volume(&self, volume: u16) {
        if self.holding.load(Ordering::SeqCst) {
            debug!("ignoring Spirc's start-up volume {volume}: the live value is reported instead");
            return;
        }
        self.inner.set_volume(volume)
    }

    fn get_soft_volume(&self) -> Box<dyn VolumeGetter + Send> {
        self.inner.get_soft_volume()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{HardwareMixer, SimControl, VolumeCurveKind};

    #[test]
    fn writes_are_dropped_only_while_held() {
        let sim = SimControl::pcm512x(100);
        let mixer: Arc<dyn Mixer> =
            Arc::new(HardwareMixer::new(sim.clone(), VolumeCurveKind::Linear, 60.0).unwrap());
        let gate = StartupGate::new(mixer);
        gate.hold();
        gate.set_volume(0);
        assert_eq!(sim.raw.load(Ordering::SeqCst), 100);
        gate.release();
        gate.set_volume(0);
        assert_eq!(sim.raw.load(Ordering::SeqCst), 0);
    }
}
