//! The audio side as the running daemon has it, and switching it to a new DAC or curve live.
//!
//! What a user expects (Volumio and moOde do the same): picking another board or volume curve in
//! the web app uses it at once; the music does not stop, the volume slider stays where it is (the
//! same percent, mapped through the new curve), and if the new device cannot be opened the page
//! says why and the speaker keeps playing on the old one, untouched. So a switch first opens the
//! new mixer and checks the new PCM, and only when both work swaps them in: the mixer behind the
//! [`SwitchMixer`] everything holds, and the [`OutputRoute`] that Spotify's sink and the
//! Jellyfin cast's output follow at their next write. Nothing else restarts: the Spotify session,
//! the player, the web server, discovery and the Jellyfin sidecar keep running.

use std::sync::{Arc, Mutex, PoisonError};

use log::{info, warn};
use serde::Serialize;
use tokio::sync::watch;

use super::curve::VolumeCurveKind;
use super::devices::{check_pcm, AudioError};
use super::mixer::{open_mixer, MixerSettings, OpenedMixer};
use super::route::OutputRoute;
use super::switch_mixer::SwitchMixer;

/// What the audio side is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioSpec {
    /// The PCM; `None`: no sound card, audio goes to the null sink.
    pub pcm: Option<String>,
    pub mixer: MixerSettings,
}

/// What the status and the web app show of the audio side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AudioState {
    /// The PCM in use (`null`: no sound card).
    pub device: Option<String>,
    /// "hardware <device> '<control>'" or "software".
    pub volume_control: String,
    pub curve: VolumeCurveKind,
    /// Why the last change could not be applied; the output above stayed in use.
    pub error: Option<String>,
}

/// Opens the mixer for a spec after checking its PCM (tests substitute their own).
pub type MixerOpener = Arc<dyn Fn(&AudioSpec) -> Result<OpenedMixer, AudioError> + Send + Sync>;

/// See the module doc. One per process.
pub struct LiveAudio {
    mixer: Arc<SwitchMixer>,
    route: OutputRoute,
    open: MixerOpener,
    spec: Mutex<AudioSpec>,
    state: watch::Sender<AudioState>,
}

fn describe(spec: &AudioSpec, hardware: bool, error: Option<String>) -> AudioState {
    AudioState {
        device: spec.pcm.clone(),
        volume_control: if hardware {
            format!("hardware {} '{}'", spec.mixer.device, spec.mixer.control)
        } else {
            "software".to_string()
        },
        curve: spec.mixer.curve,
        error,
    }
}

impl LiveAudio {
    /// The audio side as opened at start.
    pub fn new(spec: AudioSpec, opened: OpenedMixer, open: MixerOpener) -> Self {
        let state = describe(&spec, opened.hardware, None);
        Self {
            mixer: SwitchMixer::new(opened.mixer),
            route: OutputRoute::new(spec.pcm.clone()),
            open,
            spec: Mutex::new(spec),
            state: watch::channel(state).0,
        }
    }

    /// The real thing: the PCM must open for playback (busy counts as there), then the mixer.
    pub fn alsa_opener() -> MixerOpener {
        Arc::new(|spec: &AudioSpec| {
            if let Some(pcm) = &spec.pcm {
                check_pcm(pcm)?;
            }
            open_mixer(&spec.mixer)
        })
    }

    /// The mixer everything holds.
    pub fn mixer(&self) -> Arc<SwitchMixer> {
        self.mixer.clone()
    }

    /// What the sinks follow.
    pub fn route(&self) -> OutputRoute {
        self.route.clone()
    }

    pub fn spec(&self) -> AudioSpec {
        self.spec
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn state(&self) -> watch::Receiver<AudioState> {
        self.state.subscribe()
    }

    /// Switches to `spec` if it differs from what runs. Blocks (ALSA opens): call it off the
    /// async threads. `Ok(false)`: nothing to do. On an error nothing changed and the error is
    /// in [`Self::state`] until the next switch.
    pub fn switch(&self, spec: AudioSpec) -> Result<bool, AudioError> {
        let mut current = self.spec.lock().unwrap_or_else(PoisonError::into_inner);
        if *current == spec {
            // Back to what runs (say, after a board that failed): nothing is wrong any more.
            self.state.send_modify(|s| s.error = None);
            return Ok(false);
        }
        let opened = match (self.open)(&spec) {
            Ok(opened) => opened,
            Err(e) => {
                warn!(
                    "the new audio settings cannot be used; {} stays in use: {e}",
                    current.pcm.as_deref().unwrap_or("the null sink")
                );
                self.state.send_modify(|s| s.error = Some(e.to_string()));
                return Err(e);
            }
        };
        let state = describe(&spec, opened.hardware, None);
        self.mixer.replace(opened.mixer);
        if spec.pcm != current.pcm {
            self.route.set(spec.pcm.clone());
        }
        info!(
            "audio now: {} ({}, {:?} curve), volume kept",
            spec.pcm.as_deref().unwrap_or("null sink"),
            state.volume_control,
            spec.mixer.curve
        );
        *current = spec;
        self.state.send_replace(state);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use librespot_playback::mixer::Mixer;

    fn spec(pcm: &str, curve: VolumeCurveKind) -> AudioSpec {
        AudioSpec {
            pcm: Some(pcm.to_string()),
            mixer: MixerSettings {
                use_hardware: false,
                device: pcm.to_string(),
                control: "PCM".into(),
                index: 0,
                curve,
                range_db: 60.0,
            },
        }
    }

    /// Software mixers for any PCM but "broken", which fails as check_pcm does.
    fn opener(opened: Arc<Mutex<Vec<AudioSpec>>>) -> MixerOpener {
        Arc::new(move |spec: &AudioSpec| {
            opened.lock().unwrap().push(spec.clone());
            if spec.pcm.as_deref() == Some("broken") {
                return Err(AudioError::Other("no such card".into()));
            }
            open_mixer(&spec.mixer)
        })
    }

    #[test]
    fn a_new_device_and_curve_are_switched_to_with_the_volume_kept() {
        let first = spec("hw:0", VolumeCurveKind::Linear);
        let opened = Arc::new(Mutex::new(Vec::new()));
        let live = LiveAudio::new(
            first.clone(),
            open_mixer(&first.mixer).unwrap(),
            opener(opened.clone()),
        );
        let mixer = live.mixer();
        let getter = mixer.get_soft_volume();
        mixer.set_volume(40_000);
        let loud = getter.attenuation_factor();
        let generation = live.route().generation();

        let next = spec("hw:1", VolumeCurveKind::Cubic);
        assert!(live.switch(next.clone()).unwrap());
        assert_eq!(*opened.lock().unwrap(), vec![next.clone()]);
        assert_eq!(mixer.volume(), 40_000, "the slider stays");
        assert!(
            getter.attenuation_factor() < loud,
            "through the cubic curve"
        );
        assert_eq!(
            live.route().current(),
            (generation + 1, Some("hw:1".into()))
        );
        assert_eq!(live.state().borrow().curve, VolumeCurveKind::Cubic);
        assert!(!live.switch(next).unwrap(), "nothing to do");
    }

    #[test]
    fn a_device_that_cannot_be_opened_leaves_the_old_one_untouched_and_says_why() {
        let first = spec("hw:0", VolumeCurveKind::Log);
        let live = LiveAudio::new(
            first.clone(),
            open_mixer(&first.mixer).unwrap(),
            opener(Default::default()),
        );
        let mixer = live.mixer();
        mixer.set_volume(20_000);
        let before = mixer.current();
        let generation = live.route().generation();
        let err = live
            .switch(spec("broken", VolumeCurveKind::Linear))
            .unwrap_err();
        assert!(err.to_string().contains("no such card"));
        assert!(Arc::ptr_eq(&before, &mixer.current()), "same mixer");
        assert_eq!(mixer.volume(), 20_000);
        assert_eq!(live.route().current(), (generation, Some("hw:0".into())));
        let state = live.state().borrow().clone();
        assert_eq!(state.device.as_deref(), Some("hw:0"));
        assert_eq!(state.curve, VolumeCurveKind::Log);
        assert!(state.error.unwrap().contains("no such card"));
        // Choosing the running settings again clears the error.
        assert!(!live.switch(first).unwrap());
        assert_eq!(live.state().borrow().error, None);
    }
}
