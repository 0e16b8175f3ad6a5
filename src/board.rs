//! Board presets: what a DAC needs, as data (`board/presets/<name>.toml`, embedded at build time).
//!
//! A preset is the `config.txt` lines for the Pi's firmware and a configuration layer (PCM, mixer
//! control, volume curve) applied under the user's own keys, so `board = "hifiberry-dacplus"` is
//! all a HiFiBerry owner writes. Adding a board is adding a file and a line below.

use std::path::Path;

use serde::Deserialize;

use crate::config::Layer;

/// One preset.
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    pub description: String,
    /// Lines for `/boot/firmware/config.txt` on Raspberry Pi OS (its kernel and overlays).
    pub config_txt: Vec<String>,
    /// On the SD image (Debian's kernel, which has none of Raspberry Pi's overlays): our own
    /// overlay from `board/overlays/`, if the board needs one.
    pub image_overlay: Option<String>,
    /// The Pi models (device-tree names) `image_overlay` is checked against
    /// (`tests/overlays.sh`).
    pub image_dtbs: Vec<String>,
    /// Speaker settings this board needs.
    pub speaker: Layer,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct PresetFile {
    description: String,
    config_txt: Vec<String>,
    #[serde(default)]
    image_overlay: Option<String>,
    #[serde(default)]
    image_dtbs: Vec<String>,
    speaker: Layer,
}

const FILES: &[(&str, &str)] = &[
    (
        "bcm2835-headphones",
        include_str!("../board/presets/bcm2835-headphones.toml"),
    ),
    (
        "hifiberry-dac",
        include_str!("../board/presets/hifiberry-dac.toml"),
    ),
    (
        "hifiberry-dacplus",
        include_str!("../board/presets/hifiberry-dacplus.toml"),
    ),
    ("i2s-dac", include_str!("../board/presets/i2s-dac.toml")),
    (
        "iqaudio-dacplus",
        include_str!("../board/presets/iqaudio-dacplus.toml"),
    ),
    ("usb-dac", include_str!("../board/presets/usb-dac.toml")),
];

/// The name given is not a preset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown board {name:?}; known boards: {known}")]
pub struct UnknownBoard {
    pub name: String,
    pub known: String,
}

/// All presets, parsed. The files are part of the binary and checked by the tests, so a parse
/// failure here is a build defect; it is reported as a preset with the error in its description
/// rather than a panic.
pub fn presets() -> Vec<Preset> {
    FILES
        .iter()
        .map(|(name, text)| parse(name, text).unwrap_or_else(|e| broken(name, e)))
        .collect()
}

/// Looks a preset up by name.
pub fn find(name: &str) -> Result<Preset, UnknownBoard> {
    presets()
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| UnknownBoard {
            name: name.to_string(),
            known: names().join(", "),
        })
}

/// The preset names.
pub fn names() -> Vec<&'static str> {
    FILES.iter().map(|(name, _)| *name).collect()
}

fn parse(name: &'static str, text: &str) -> Result<Preset, String> {
    let file: PresetFile = toml::from_str(text).map_err(|e| e.to_string())?;
    if file.speaker.board.is_some() {
        return Err("a preset cannot name another board".into());
    }
    Ok(Preset {
        name,
        description: file.description,
        config_txt: file.config_txt,
        image_overlay: file.image_overlay,
        image_dtbs: file.image_dtbs,
        speaker: file.speaker,
    })
}

fn broken(name: &'static str, error: String) -> Preset {
    let origin = Path::new("board/presets").join(format!("{name}.toml"));
    Preset {
        name,
        description: format!("BROKEN PRESET {}: {error}", origin.display()),
        config_txt: Vec::new(),
        image_overlay: None,
        image_dtbs: Vec::new(),
        speaker: Layer::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, MixerKind};

    #[test]
    fn every_preset_parses_and_sets_a_device() {
        for (name, text) in FILES {
            let preset = parse(name, text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(preset.speaker.device.is_some(), "{name} sets no PCM");
            assert!(
                !preset.config_txt.is_empty(),
                "{name} has no config.txt lines"
            );
        }
    }

    #[test]
    fn hifiberry_dacplus_uses_its_digital_control() {
        let preset = find("hifiberry-dacplus").unwrap();
        let mut config = Config::default();
        config.apply(&preset.speaker);
        assert_eq!(config.alsa_mixer_control, "Digital");
        assert_eq!(config.mixer, MixerKind::Alsa);
        assert!(preset
            .config_txt
            .contains(&"dtoverlay=hifiberry-dacplus".to_string()));
    }

    #[test]
    fn every_image_overlay_exists_and_names_its_boards() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("board/overlays");
        let mut with_overlay = 0;
        for preset in presets() {
            let Some(overlay) = &preset.image_overlay else {
                continue;
            };
            with_overlay += 1;
            assert!(
                dir.join(format!("{overlay}.dts")).is_file(),
                "{}: no board/overlays/{overlay}.dts",
                preset.name
            );
            assert!(
                !preset.image_dtbs.is_empty(),
                "{} lists no boards",
                preset.name
            );
            // The same sound card on both systems: the overlay's card name gives the ALSA id the
            // preset's PCM names.
            let dts = std::fs::read_to_string(dir.join(format!("{overlay}.dts"))).unwrap();
            let name = dts
                .lines()
                .find_map(|l| l.trim().strip_prefix("simple-audio-card,name = \""))
                .and_then(|rest| rest.strip_suffix("\";"))
                .unwrap_or_else(|| panic!("{overlay} names no card"));
            let id: String = name
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(15)
                .collect();
            let device = preset.speaker.device.clone().unwrap();
            assert!(
                device.contains(&format!("CARD={id},")),
                "{}: PCM {device} but the overlay's card id is {id}",
                preset.name
            );
        }
        assert_eq!(with_overlay, 4, "the four HAT presets");
    }

    #[test]
    fn unknown_board_lists_the_known_ones() {
        let err = find("hifiberry-dacplsu").unwrap_err().to_string();
        for name in names() {
            assert!(err.contains(name), "{err}");
        }
    }
}
