//! What the machine has: sound cards, PCMs and mixer controls. Used to check the configured
//! device at start-up and to tell the user what to pick when it does not exist.

use std::ffi::CString;
use std::fmt;

use alsa::card::Iter as CardIter;
use alsa::device_name::HintIter;
use alsa::mixer::{Mixer as AlsaMixerHandle, Selem};
use alsa::{Ctl, Direction, PCM};

/// A sound card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    pub index: i32,
    /// The stable id used in `hw:CARD=<id>`.
    pub id: String,
    pub name: String,
    pub controls: Vec<Control>,
}

/// A simple mixer control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub name: String,
    pub index: u32,
    pub playback_volume: bool,
}

/// Everything found, for messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub cards: Vec<Card>,
    /// PCM names with their descriptions.
    pub pcms: Vec<(String, String)>,
}

impl Inventory {
    /// Reads the machine's ALSA configuration. Never fails: what cannot be read is left out.
    pub fn read() -> Inventory {
        let mut cards = Vec::new();
        for card in CardIter::new().flatten() {
            let index = card.get_index();
            let (id, name) = match Ctl::from_card(&card, false).and_then(|ctl| {
                let info = ctl.card_info()?;
                Ok((
                    info.get_id().unwrap_or("?").to_string(),
                    info.get_name().unwrap_or("?").to_string(),
                ))
            }) {
                Ok(pair) => pair,
                Err(_) => (format!("{index}"), card.get_name().unwrap_or_default()),
            };
            let controls = list_controls(&format!("hw:{index}"));
            cards.push(Card {
                index,
                id,
                name,
                controls,
            });
        }
        let pcms = HintIter::new_str(None, "pcm")
            .map(|hints| {
                hints
                    .filter(|h| h.direction != Some(Direction::Capture))
                    .filter_map(|h| {
                        let name = h.name?;
                        let desc = h.desc.unwrap_or_default().replace('\n', ", ");
                        Some((name, desc))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Inventory { cards, pcms }
    }

    /// Whether the card behind a mixer device has any playback-volume control; `None` when the
    /// device cannot be opened at all.
    pub fn has_volume_controls(&self, mixer_device: &str) -> Option<bool> {
        if !valid_name(mixer_device) {
            return None;
        }
        let handle = AlsaMixerHandle::new(mixer_device, false).ok()?;
        let found = handle
            .iter()
            .filter_map(Selem::new)
            .any(|s| s.has_playback_volume());
        Some(found)
    }
}

fn list_controls(device: &str) -> Vec<Control> {
    let Ok(handle) = AlsaMixerHandle::new(device, false) else {
        return Vec::new();
    };
    handle
        .iter()
        .filter_map(Selem::new)
        .filter_map(|s| {
            let id = s.get_id();
            Some(Control {
                name: id.get_name().ok()?.to_string(),
                index: id.get_index(),
                playback_volume: s.has_playback_volume(),
            })
        })
        .collect()
}

impl fmt::Display for Inventory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.cards.is_empty() {
            writeln!(f, "  this machine has no sound cards")?;
        }
        for card in &self.cards {
            writeln!(
                f,
                "  card {}: {} ({}) — PCM hw:CARD={},DEV=0, mixer device hw:CARD={}",
                card.index, card.id, card.name, card.id, card.id
            )?;
            let volume: Vec<String> = card
                .controls
                .iter()
                .filter(|c| c.playback_volume)
                .map(|c| format!("{:?},{}", c.name, c.index))
                .collect();
            if volume.is_empty() {
                writeln!(f, "    no volume controls (use mixer = \"softvol\")")?;
            } else {
                writeln!(f, "    volume controls: {}", volume.join(" "))?;
            }
        }
        if !self.pcms.is_empty() {
            writeln!(f, "  PCMs:")?;
            for (name, desc) in &self.pcms {
                writeln!(f, "    {name}  {desc}")?;
            }
        }
        Ok(())
    }
}

/// A configured audio device that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("ALSA PCM {name:?} cannot be opened for playback ({reason}).\nSet `device` in the config (or --device / PISPEAKER_DEVICE) to one of:\n{inventory}")]
    UnknownPcm {
        name: String,
        reason: String,
        inventory: Inventory,
    },
    #[error("ALSA mixer control {control:?},{index} on {device:?} cannot be used ({reason}).\nSet `alsa-mixer-control` / `alsa-mixer-index` (or `alsa-mixer-device`, or mixer = \"softvol\") to one of:\n{inventory}")]
    UnknownMixerControl {
        device: String,
        control: String,
        index: u32,
        reason: String,
        inventory: Inventory,
    },
    #[error("{0}")]
    Other(String),
}

impl AudioError {
    /// A problem with the machine's devices rather than the config's syntax.
    pub const EXIT_CODE: u8 = 1;
}

/// True if the machine has at least one sound card.
pub fn has_sound_card() -> bool {
    CardIter::new().flatten().next().is_some()
}

/// Checks that a PCM exists and can be opened for playback. A device busy with another
/// program exists: that is not an error at start-up.
pub fn check_pcm(name: &str) -> Result<(), AudioError> {
    let fail = |reason: String| AudioError::UnknownPcm {
        name: name.to_string(),
        reason,
        inventory: Inventory::read(),
    };
    if !valid_name(name) {
        return Err(fail("the name contains a NUL character".into()));
    }
    match PCM::new(name, Direction::Playback, true) {
        Ok(_) => Ok(()),
        Err(e) if e.errno() == libc::EBUSY => Ok(()),
        Err(e) => Err(fail(e.to_string())),
    }
}

/// The alsa crate turns names into C strings with `unwrap`; refuse NULs before it sees them.
pub(crate) fn valid_name(name: &str) -> bool {
    CString::new(name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_pcm_lists_what_the_machine_has_and_names_the_key() {
        let err = check_pcm("hw:CARD=pispeaker-no-such-card,DEV=0")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hw:CARD=pispeaker-no-such-card,DEV=0"),
            "{err}"
        );
        assert!(err.contains("--device"), "{err}");
        let inventory = Inventory::read();
        if inventory.cards.is_empty() {
            assert!(err.contains("no sound cards"), "{err}");
        }
    }

    #[test]
    fn a_nul_in_a_name_is_refused_not_a_panic() {
        assert!(check_pcm("default\0x").is_err());
        assert_eq!(Inventory::default().has_volume_controls("a\0b"), None);
    }

    #[test]
    fn inventory_display_suggests_softvol_for_cards_without_volume() {
        let inv = Inventory {
            cards: vec![Card {
                index: 0,
                id: "sndrpihifiberry".into(),
                name: "snd_rpi_hifiberry_dac".into(),
                controls: vec![],
            }],
            pcms: vec![("default".into(), "Default ALSA Output".into())],
        };
        let text = inv.to_string();
        assert!(text.contains("hw:CARD=sndrpihifiberry,DEV=0"), "{text}");
        assert!(text.contains("softvol"), "{text}");
        assert!(text.contains("default  Default ALSA Output"), "{text}");
    }
}
