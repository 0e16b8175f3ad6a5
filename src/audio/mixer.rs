//! The daemon's own mixer behind librespot's public `Mixer` trait.
//!
//! librespot's `AlsaMixer` panics on any ALSA error, so a USB DAC pulled out kills the speaker.
//! This one keeps the control open, reads the live value on every `volume()` (after handling
//! ALSA's events, so a knob or `amixer` is seen), logs an error once, answers with the last known
//! value meanwhile and reopens on the next call. It writes only when the target step differs from
//! the step the control is on, so reading a volume and setting it back changes nothing.

use std::sync::{Arc, Mutex, MutexGuard};

use alsa::mixer::{Mixer as AlsaMixerHandle, SelemChannelId, SelemId};
use librespot_core::Error as LibrespotError;
use librespot_playback::config::VolumeCtrl;
use librespot_playback::mixer::softmixer::SoftMixer;
use librespot_playback::mixer::{Mixer, MixerConfig, NoOpVolume, VolumeGetter};
use log::{info, warn};

use super::curve::{ControlRange, VolumeCurveKind, VolumeMapping, MAX_VOLUME};
use super::devices::{AudioError, Inventory};

/// A volume control the mixer can drive: the real ALSA one, or a simulated one in tests.
pub trait VolumeControl: Send {
    /// (Re)opens the control and describes its range.
    fn open(&mut self) -> Result<ControlRange, String>;
    /// The control's current raw value (front-left channel for stereo controls).
    fn read(&mut self) -> Result<i64, String>;
    /// Sets every channel to `raw`.
    fn write(&mut self, raw: i64) -> Result<(), String>;
    /// Drops the handle; the next `open` starts afresh.
    fn close(&mut self);
    /// For log lines: which control this is.
    fn describe(&self) -> String;
}

/// The control name that means "the device's main playback volume, whatever it is called": USB
/// DACs name theirs after the USB terminal ("PCM", "Speaker", "Audio Output", a product name).
pub const AUTO_CONTROL: &str = "auto";

/// Picks the main playback volume among a card's controls: the usual names first (in the order
/// ALSA's own tools treat as "the" volume), else the first control with a playback volume.
pub fn pick_auto_control(candidates: &[(String, u32)]) -> Option<(String, u32)> {
    const PREFERRED: [&str; 6] = [
        "Master",
        "PCM",
        "Speaker",
        "Headphone",
        "Digital",
        "Headphones",
    ];
    PREFERRED
        .iter()
        .find_map(|want| candidates.iter().find(|(name, _)| name == want))
        .or_else(|| candidates.first())
        .cloned()
}

/// A simple-mixer control on an ALSA mixer device.
pub struct AlsaControl {
    device: String,
    control: String,
    index: u32,
    handle: Option<AlsaMixerHandle>,
}

impl AlsaControl {
    pub fn new(device: &str, control: &str, index: u32) -> Self {
        Self {
            device: device.to_string(),
            control: control.to_string(),
            index,
            handle: None,
        }
    }

    fn handle(&mut self) -> Result<&AlsaMixerHandle, String> {
        match &mut self.handle {
            Some(handle) => {
                // Pull in changes made by other clients (a knob, amixer) since the last call.
                handle
                    .handle_events()
                    .map_err(|e| format!("ALSA mixer {}: {e}", self.device))?;
                Ok(handle)
            }
            None => Err("mixer not open".into()),
        }
    }
}

impl AlsaControl {
    /// Runs `f` on the open control (looked up again each time: a replugged card gets new
    /// element handles).
    fn with_selem<R>(
        &mut self,
        f: impl FnOnce(&alsa::mixer::Selem<'_>, &str) -> Result<R, String>,
    ) -> Result<R, String> {
        let (control, index) = (self.control.clone(), self.index);
        let handle = self.handle()?;
        let selem = handle
            .find_selem(&SelemId::new(&control, index))
            .ok_or_else(|| format!("ALSA control {control:?} disappeared"))?;
        f(&selem, &control)
    }
}

impl VolumeControl for AlsaControl {
    fn open(&mut self) -> Result<ControlRange, String> {
        self.handle = None;
        if !super::devices::valid_name(&self.device) || !super::devices::valid_name(&self.control) {
            return Err("device or control name contains a NUL character".into());
        }
        let handle = AlsaMixerHandle::new(&self.device, false)
            .map_err(|e| format!("cannot open ALSA mixer {:?}: {e}", self.device))?;
        if self.control.eq_ignore_ascii_case(AUTO_CONTROL) {
            let candidates: Vec<(String, u32)> = handle
                .iter()
                .filter_map(alsa::mixer::Selem::new)
                .filter(|selem| selem.has_playback_volume())
                .filter_map(|selem| {
                    let id = selem.get_id();
                    Some((id.get_name().ok()?.to_string(), id.get_index()))
                })
                .collect();
            let (control, index) = pick_auto_control(&candidates).ok_or_else(|| {
                format!(
                    "ALSA mixer {:?} has no playback volume control",
                    self.device
                )
            })?;
            info!(
                "volume: alsa-mixer-control = \"auto\" picked {control:?} index {index} on {} (of {})",
                self.device,
                candidates
                    .iter()
                    .map(|(name, _)| format!("{name:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            // Kept for the reopen path: a replugged DAC has the same control names.
            self.control = control;
            self.index = index;
        }
        let selem = handle
            .find_selem(&SelemId::new(&self.control, self.index))
            .ok_or_else(|| {
                format!(
                    "ALSA mixer {:?} has no control {:?} index {}",
                    self.device, self.control, self.index
                )
            })?;
        if !selem.has_playback_volume() {
            return Err(format!(
                "ALSA control {:?} on {:?} has no playback volume",
                self.control, self.device
            ));
        }
        let (min, max) = selem.get_playback_volume_range();
        let steps = max.saturating_sub(min).saturating_add(1);
        // dB per step when the control has a dB scale (TLV); the curves then work in dB.
        let db = if (1..=65_536).contains(&steps)
            && selem.get_playback_vol_db(SelemChannelId::mono()).is_ok()
        {
            (min..=max)
                .map(|raw| {
                    selem
                        .ask_playback_vol_db(raw)
                        .map(|mb| {
                            // ALSA reports "mute" as -9999999 mB.
                            if mb.0 <= -9_999_999 {
                                f64::NEG_INFINITY
                            } else {
                                f64::from(mb.to_db())
                            }
                        })
                        .ok()
                })
                .collect::<Option<Vec<f64>>>()
        } else {
            None
        };
        self.handle = Some(handle);
        Ok(ControlRange { min, max, db })
    }

    fn read(&mut self) -> Result<i64, String> {
        self.with_selem(|selem, control| {
            selem
                .get_playback_volume(SelemChannelId::mono())
                .map_err(|e| format!("cannot read ALSA control {control:?}: {e}"))
        })
    }

    fn write(&mut self, raw: i64) -> Result<(), String> {
        self.with_selem(|selem, control| {
            selem
                .set_playback_volume_all(raw)
                .map_err(|e| format!("cannot set ALSA control {control:?}: {e}"))
        })
    }

    fn close(&mut self) {
        self.handle = None;
    }

    fn describe(&self) -> String {
        format!("{},{} on {}", self.control, self.index, self.device)
    }
}

struct State<C> {
    control: C,
    mapping: Option<VolumeMapping>,
    last_volume: u16,
    /// An error was logged and nothing has worked since: stay quiet until it recovers.
    failing: bool,
}

/// The hardware mixer: Spotify volume on a real control through a [`VolumeMapping`].
pub struct HardwareMixer<C: VolumeControl = AlsaControl> {
    state: Mutex<State<C>>,
    curve: VolumeCurveKind,
    range_db: f64,
}

impl<C: VolumeControl> HardwareMixer<C> {
    /// Opens the control; an error here is a configuration problem the daemon reports at start.
    pub fn new(mut control: C, curve: VolumeCurveKind, range_db: f64) -> Result<Self, String> {
        let range = control.open()?;
        let mapping = VolumeMapping::new(curve, range_db, &range);
        let raw = control.read()?;
        let last_volume = mapping.from_raw(raw);
        Ok(Self {
            state: Mutex::new(State {
                control,
                mapping: Some(mapping),
                last_volume,
                failing: false,
            }),
            curve,
            range_db,
        })
    }

    /// Which control this is (after `auto` was resolved), for log lines.
    pub fn describe(&self) -> String {
        self.lock().control.describe()
    }

    fn lock(&self) -> MutexGuard<'_, State<C>> {
        // A panic while holding the lock cannot leave the state inconsistent in a way that
        // matters (it is a cache of the hardware); keep serving rather than poisoning the speaker.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` with an open control, reopening it if a previous call failed.
    fn with_control<R>(
        &self,
        f: impl FnOnce(&mut C, &VolumeMapping) -> Result<R, String>,
    ) -> Result<R, String> {
        let mut state = self.lock();
        let state = &mut *state;
        if state.mapping.is_none() {
            let range = state.control.open()?;
            state.mapping = Some(VolumeMapping::new(self.curve, self.range_db, &range));
        }
        let Some(mapping) = state.mapping.as_ref() else {
            return Err("mixer not open".into());
        };
        f(&mut state.control, mapping)
    }

    fn record(&self, result: Result<u16, String>) -> u16 {
        let mut state = self.lock();
        match result {
            Ok(volume) => {
                if state.failing {
                    info!(
                        "mixer control {} is working again",
                        state.control.describe()
                    );
                    state.failing = false;
                }
                state.last_volume = volume;
                volume
            }
            Err(e) => {
                if !state.failing {
                    warn!(
                        "mixer control {}: {e}; keeping volume {} and retrying",
                        state.control.describe(),
                        state.last_volume
                    );
                    state.failing = true;
                }
                state.control.close();
                state.mapping = None;
                state.last_volume
            }
        }
    }

    /// The live volume on Spotify's scale.
    pub fn live_volume(&self) -> u16 {
        if self.curve == VolumeCurveKind::Fixed {
            return MAX_VOLUME;
        }
        let result = self.with_control(|control, mapping| Ok(mapping.from_raw(control.read()?)));
        self.record(result)
    }

    /// Moves the control to the step for `volume`, unless it is already there.
    pub fn write_volume(&self, volume: u16) {
        if self.curve == VolumeCurveKind::Fixed {
            return;
        }
        let result = self.with_control(|control, mapping| {
            let target = mapping.to_raw(volume);
            let current = control.read()?;
            if current != target {
                control.write(target)?;
            }
            Ok(mapping.from_raw(target))
        });
        self.record(result);
    }
}

impl<C: VolumeControl + 'static> Mixer for HardwareMixer<C> {
    fn open(_: MixerConfig) -> Result<Self, LibrespotError> {
        Err(LibrespotError::unimplemented(
            "pispeaker builds its mixer with audio::open_mixer",
        ))
    }

    fn volume(&self) -> u16 {
        self.live_volume()
    }

    fn set_volume(&self, volume: u16) {
        self.write_volume(volume)
    }

    fn get_soft_volume(&self) -> Box<dyn VolumeGetter + Send> {
        Box::new(NoOpVolume)
    }
}

/// Software volume: librespot's `SoftMixer` does the attenuation, but it reports the volume back
/// through a float round trip that loses a step now and then (1234 comes back as 1233), which a
/// reconnect would turn into a slow slide downwards. This wrapper answers with exactly the value
/// last set.
pub struct SoftwareMixer {
    inner: SoftMixer,
    volume: std::sync::atomic::AtomicU16,
}

impl SoftwareMixer {
    pub fn new(inner: SoftMixer) -> Self {
        let volume = inner.volume();
        Self {
            inner,
            volume: std::sync::atomic::AtomicU16::new(volume),
        }
    }
}

impl Mixer for SoftwareMixer {
    fn open(config: MixerConfig) -> Result<Self, LibrespotError> {
        SoftMixer::open(config).map(Self::new)
    }

    fn volume(&self) -> u16 {
        self.volume.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn set_volume(&self, volume: u16) {
        if self
            .volume
            .swap(volume, std::sync::atomic::Ordering::SeqCst)
            != volume
        {
            self.inner.set_volume(volume);
        }
    }

    fn get_soft_volume(&self) -> Box<dyn VolumeGetter + Send> {
        self.inner.get_soft_volume()
    }
}

/// Which mixer to open (from the configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct MixerSettings {
    /// Hardware control (`mixer = "alsa"`) or software volume (`"softvol"`).
    pub use_hardware: bool,
    pub device: String,
    pub control: String,
    pub index: u32,
    pub curve: VolumeCurveKind,
    pub range_db: f64,
}

/// The mixer the daemon runs with.
pub struct OpenedMixer {
    pub mixer: Arc<dyn Mixer>,
    /// False when volume is scaled in software (asked for, or the device has no control).
    pub hardware: bool,
}

/// Opens the configured mixer. An unknown control on a device that has other volume controls is
/// an error listing them; a device without any volume control falls back to software volume
/// with one log line.
pub fn open_mixer(settings: &MixerSettings) -> Result<OpenedMixer, AudioError> {
    if settings.use_hardware {
        let control = AlsaControl::new(&settings.device, &settings.control, settings.index);
        match HardwareMixer::new(control, settings.curve, settings.range_db) {
            Ok(mixer) => {
                info!(
                    "volume: hardware control {} ({:?} curve)",
                    mixer.describe(),
                    settings.curve
                );
                return Ok(OpenedMixer {
                    mixer: Arc::new(mixer),
                    hardware: true,
                });
            }
            Err(reason) => {
                let inventory = Inventory::read();
                let has_volume_controls = inventory.has_volume_controls(&settings.device);
                if has_volume_controls != Some(false) {
                    return Err(AudioError::UnknownMixerControl {
                        device: settings.device.clone(),
                        control: settings.control.clone(),
                        index: settings.index,
                        reason,
                        inventory,
                    });
                }
                info!(
                    "{} has no hardware volume control; using software volume",
                    settings.device
                );
            }
        }
    }
    let volume_ctrl = match settings.curve {
        VolumeCurveKind::Log => VolumeCtrl::Log(settings.range_db),
        VolumeCurveKind::Cubic => VolumeCtrl::Cubic(settings.range_db),
        VolumeCurveKind::Linear => VolumeCtrl::Linear,
        VolumeCurveKind::Fixed => VolumeCtrl::Fixed,
    };
    let soft = SoftwareMixer::open(MixerConfig {
        volume_ctrl,
        ..MixerConfig::default()
    })
    .map_err(|e| AudioError::Other(format!("software mixer: {e}")))?;
    Ok(OpenedMixer {
        mixer: Arc::new(soft),
        hardware: false,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn auto_control_prefers_the_usual_names_then_the_first() {
        let c = |names: &[&str]| -> Vec<(String, u32)> {
            names.iter().map(|n| (n.to_string(), 0)).collect()
        };
        assert_eq!(
            pick_auto_control(&c(&["Mic", "PCM", "Master"])),
            Some(("Master".into(), 0))
        );
        assert_eq!(
            pick_auto_control(&c(&["Audio Output", "Headphone"])),
            Some(("Headphone".into(), 0))
        );
        assert_eq!(
            pick_auto_control(&c(&["Audio Output", "Other"])),
            Some(("Audio Output".into(), 0))
        );
        assert_eq!(pick_auto_control(&[]), None);
    }
    use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

    /// A simulated control with shared counters, so a test can turn the "knob" and count
    /// opens and writes while the mixer owns the control.
    #[derive(Clone, Default)]
    pub struct SimControl {
        pub raw: Arc<AtomicI64>,
        pub writes: Arc<AtomicUsize>,
        pub opens: Arc<AtomicUsize>,
        pub broken: Arc<AtomicBool>,
        pub range: Option<ControlRange>,
    }

    impl SimControl {
        pub fn pcm512x(start_raw: i64) -> Self {
            let sim = SimControl {
                range: Some(ControlRange {
                    min: 0,
                    max: 207,
                    db: Some((0..=207).map(|r| -103.5 + 0.5 * f64::from(r)).collect()),
                }),
                ..Default::default()
            };
            sim.raw.store(start_raw, Ordering::SeqCst);
            sim
        }
    }

    impl VolumeControl for SimControl {
        fn open(&mut self) -> Result<ControlRange, String> {
            self.opens.fetch_add(1, Ordering::SeqCst);
            if self.broken.load(Ordering::SeqCst) {
                return Err("No such device".into());
            }
            self.range.clone().ok_or_else(|| "no range".into())
        }
        fn read(&mut self) -> Result<i64, String> {
            if self.broken.load(Ordering::SeqCst) {
                return Err("No such device".into());
            }
            Ok(self.raw.load(Ordering::SeqCst))
        }
        fn write(&mut self, raw: i64) -> Result<(), String> {
            if self.broken.load(Ordering::SeqCst) {
                return Err("No such device".into());
            }
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.raw.store(raw, Ordering::SeqCst);
            Ok(())
        }
        fn close(&mut self) {}
        fn describe(&self) -> String {
            "simulated".into()
        }
    }

    /// Defect 4 at the mixer: the top of a 0..=65536 control is read and set back (what every
    /// Spirc start did) without moving a step.
    #[test]
    fn the_top_of_a_65537_step_control_is_not_rewritten() {
        let sim = SimControl {
            range: Some(ControlRange {
                min: 0,
                max: 65_536,
                db: None,
            }),
            ..Default::default()
        };
        sim.raw.store(65_536, Ordering::SeqCst);
        let mixer = HardwareMixer::new(sim.clone(), VolumeCurveKind::Log, 60.0).unwrap();
        for _ in 0..10 {
            let v = mixer.volume();
            assert_eq!(v, u16::MAX);
            mixer.set_volume(v);
        }
        assert_eq!(sim.raw.load(Ordering::SeqCst), 65_536);
        assert_eq!(sim.writes.load(Ordering::SeqCst), 0);
        mixer.set_volume(u16::MAX);
        assert_eq!(sim.raw.load(Ordering::SeqCst), 65_536);
    }

    #[test]
    fn a_thousand_read_write_round_trips_never_drift_nor_write() {
        for curve in [
            VolumeCurveKind::Log,
            VolumeCurveKind::Cubic,
            VolumeCurveKind::Linear,
        ] {
            let sim = SimControl::pcm512x(150);
            let mixer = HardwareMixer::new(sim.clone(), curve, 60.0).unwrap();
            for cycle in 0..1000i64 {
                // Sometimes a knob moves between cycles, as a user would.
                if cycle % 7 == 0 {
                    sim.raw.store(cycle % 208, Ordering::SeqCst);
                }
                let before = sim.raw.load(Ordering::SeqCst);
                let volume = mixer.volume();
                mixer.set_volume(volume);
                assert_eq!(
                    sim.raw.load(Ordering::SeqCst),
                    before,
                    "{curve:?}: drift at cycle {cycle}"
                );
            }
            assert_eq!(
                sim.writes.load(Ordering::SeqCst),
                0,
                "{curve:?}: equal values must not be written"
            );
        }
    }

    #[test]
    fn a_change_is_written_once_and_read_back() {
        let sim = SimControl::pcm512x(0);
        let mixer = HardwareMixer::new(sim.clone(), VolumeCurveKind::Log, 60.0).unwrap();
        mixer.set_volume(MAX_VOLUME / 2);
        assert_eq!(sim.raw.load(Ordering::SeqCst), 147);
        assert_eq!(sim.writes.load(Ordering::SeqCst), 1);
        mixer.set_volume(mixer.volume());
        assert_eq!(sim.writes.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn errors_keep_the_last_value_and_the_control_is_reopened() {
        let sim = SimControl::pcm512x(207);
        let mixer = HardwareMixer::new(sim.clone(), VolumeCurveKind::Log, 60.0).unwrap();
        assert_eq!(mixer.volume(), MAX_VOLUME);
        sim.broken.store(true, Ordering::SeqCst);
        for _ in 0..5 {
            assert_eq!(
                mixer.volume(),
                MAX_VOLUME,
                "last known value while unplugged"
            );
            mixer.set_volume(100);
        }
        let opens_while_broken = sim.opens.load(Ordering::SeqCst);
        assert!(
            opens_while_broken >= 5,
            "reopened on each call: {opens_while_broken}"
        );
        // Plugged back in with a different level: the live value is seen again.
        sim.raw.store(147, Ordering::SeqCst);
        sim.broken.store(false, Ordering::SeqCst);
        assert_eq!(mixer.volume(), mixer_volume_for(147));
    }

    fn mixer_volume_for(raw: i64) -> u16 {
        let sim = SimControl::pcm512x(raw);
        HardwareMixer::new(sim, VolumeCurveKind::Log, 60.0)
            .unwrap()
            .volume()
    }

    #[test]
    fn fixed_curve_reports_full_scale_and_never_writes() {
        let sim = SimControl::pcm512x(100);
        let mixer = HardwareMixer::new(sim.clone(), VolumeCurveKind::Fixed, 60.0).unwrap();
        assert_eq!(mixer.volume(), MAX_VOLUME);
        mixer.set_volume(0);
        assert_eq!(sim.writes.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn an_unusable_control_is_an_error_that_lists_the_machine_and_names_the_keys() {
        let settings = MixerSettings {
            use_hardware: true,
            device: "hw:CARD=pispeaker-no-such-card".into(),
            control: "Digital".into(),
            index: 0,
            curve: VolumeCurveKind::Log,
            range_db: 60.0,
        };
        let err = match open_mixer(&settings) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a missing card must not open"),
        };
        assert!(err.contains("\"Digital\",0"), "{err}");
        assert!(err.contains("alsa-mixer-control"), "{err}");
        if Inventory::read().cards.is_empty() {
            assert!(err.contains("no sound cards"), "{err}");
        }
    }

    #[test]
    fn softvol_needs_no_device() {
        let settings = MixerSettings {
            use_hardware: false,
            device: "hw:CARD=pispeaker-no-such-card".into(),
            control: "x".into(),
            index: 0,
            curve: VolumeCurveKind::Log,
            range_db: 60.0,
        };
        let opened = open_mixer(&settings).map_err(|e| e.to_string()).unwrap();
        assert!(!opened.hardware);
        for v in [1234u16, 1, 65535, 40000] {
            opened.mixer.set_volume(v);
            for _ in 0..100 {
                opened.mixer.set_volume(opened.mixer.volume());
            }
            assert_eq!(opened.mixer.volume(), v, "software volume drifts");
        }
    }

    #[test]
    fn a_missing_alsa_device_is_an_error_not_a_panic() {
        let control = AlsaControl::new("hw:CARD=pispeaker-no-such-card", "PCM", 0);
        assert!(HardwareMixer::new(control, VolumeCurveKind::Log, 60.0).is_err());
        let mut control = AlsaControl::new("hw:99", "PCM", 0);
        assert!(control.read().is_err());
        assert!(control.write(1).is_err());
    }
}
