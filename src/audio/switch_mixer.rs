//! The one mixer of the process, whose insides can be replaced while everything holds it.
//!
//! Spirc (through the start-up gate), the supervisor, the Jellyfin cast, the web API and the
//! player's software-volume getter all keep an `Arc<dyn Mixer>` for the life of the process. A new
//! DAC or volume curve chosen in the web app is a new mixer; handing it to each holder would mean
//! rebuilding them. So they hold this switch, and [`SwitchMixer::replace`] swaps what is behind it:
//! the volume (Spotify's 0..=65535, i.e. the slider's percent) carries over and is mapped through
//! the new curve, so the speaker neither jumps nor forgets where the user left it.

use std::sync::{Arc, Mutex, PoisonError};

use librespot_core::Error as LibrespotError;
use librespot_playback::mixer::{Mixer, MixerConfig, VolumeGetter};

struct Current {
    mixer: Arc<dyn Mixer>,
    /// The current mixer's software attenuation (librespot's player asks for it per packet).
    getter: Box<dyn VolumeGetter + Send>,
}

/// See the module doc.
pub struct SwitchMixer {
    current: Arc<Mutex<Current>>,
    /// Serialises replacements so two cannot interleave their volume hand-over.
    replacing: Mutex<()>,
}

impl SwitchMixer {
    pub fn new(mixer: Arc<dyn Mixer>) -> Arc<Self> {
        let getter = mixer.get_soft_volume();
        Arc::new(Self {
            current: Arc::new(Mutex::new(Current { mixer, getter })),
            replacing: Mutex::new(()),
        })
    }

    /// The mixer behind the switch now.
    pub fn current(&self) -> Arc<dyn Mixer> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .mixer
            .clone()
    }

    /// Puts `next` behind the switch, at the volume the old one was at (mapped through `next`'s
    /// own curve). The new mixer is set before it is swapped in, so no reader sees it at its
    /// opening level.
    pub fn replace(&self, next: Arc<dyn Mixer>) {
        let _one_at_a_time = self
            .replacing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let volume = self.volume();
        next.set_volume(volume);
        let getter = next.get_soft_volume();
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        *current = Current {
            mixer: next,
            getter,
        };
    }
}

impl Mixer for SwitchMixer {
    fn open(_: MixerConfig) -> Result<Self, LibrespotError> {
        Err(LibrespotError::unimplemented(
            "the switch wraps a mixer the daemon opened",
        ))
    }

    fn volume(&self) -> u16 {
        self.current().volume()
    }

    fn set_volume(&self, volume: u16) {
        self.current().set_volume(volume)
    }

    /// Follows the switch: the player took this getter once, at start.
    fn get_soft_volume(&self) -> Box<dyn VolumeGetter + Send> {
        Box::new(SwitchGetter(self.current.clone()))
    }
}

struct SwitchGetter(Arc<Mutex<Current>>);

impl VolumeGetter for SwitchGetter {
    fn attenuation_factor(&self) -> f64 {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .getter
            .attenuation_factor()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{HardwareMixer, SimControl, VolumeCurveKind};
    use librespot_playback::config::VolumeCtrl;
    use librespot_playback::mixer::softmixer::SoftMixer;
    use std::sync::atomic::Ordering;

    fn soft(curve: VolumeCtrl) -> Arc<dyn Mixer> {
        Arc::new(crate::audio::SoftwareMixer::new(
            SoftMixer::open(MixerConfig {
                volume_ctrl: curve,
                ..MixerConfig::default()
            })
            .unwrap(),
        ))
    }

    #[test]
    fn the_volume_carries_over_through_the_new_curve_and_the_players_getter_follows() {
        let switch = SwitchMixer::new(soft(VolumeCtrl::Linear));
        let getter = switch.get_soft_volume();
        switch.set_volume(u16::MAX / 2);
        let linear = getter.attenuation_factor();
        assert!((linear - 0.5).abs() < 0.01, "{linear}");

        // Software log curve: same slider position, a different attenuation, read through the
        // getter the player took before the switch.
        switch.replace(soft(VolumeCtrl::Log(60.0)));
        assert_eq!(switch.volume(), u16::MAX / 2);
        let log = getter.attenuation_factor();
        assert!(log < linear / 5.0, "log {log} vs linear {linear}");

        // A hardware control: the player no longer attenuates, the control is written.
        let sim = SimControl::pcm512x(0);
        let hardware: Arc<dyn Mixer> =
            Arc::new(HardwareMixer::new(sim.clone(), VolumeCurveKind::Linear, 60.0).unwrap());
        switch.replace(hardware);
        assert_eq!(getter.attenuation_factor(), 1.0);
        assert_ne!(sim.raw.load(Ordering::SeqCst), 0, "the control was set");
        let back = switch.volume();
        assert!(
            back.abs_diff(u16::MAX / 2) < 300,
            "{back} after the hand-over"
        );
    }
}
