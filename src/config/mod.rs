//! The speaker's configuration: the data model.
//!
//! Keys are kebab-case and spelled like librespot's flags where they overlap, so one name works
//! in the TOML file, as `--flag` and as `PISPEAKER_FLAG`. Precedence: CLI > env > the web app's
//! settings (`<cache>/web-settings.toml`) > file > board preset > defaults.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::audio::VolumeCurveKind;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/pispeaker/config.toml";
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/pispeaker";

/// Spotify streaming bitrate in kbit/s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub enum Bitrate {
    Kbps96,
    Kbps160,
    Kbps320,
}

/// Which mixer carries the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MixerKind {
    /// The ALSA hardware control (falls back to software volume if the device has none).
    Alsa,
    /// Software volume in the player.
    Softvol,
}

/// The whole configuration after merging all sources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Config {
    /// Name shown in the Spotify app (and Jellyfin).
    pub name: String,
    /// Icon shown in the Spotify app: speaker, avr, stb, audiodongle, ...
    pub device_type: String,
    pub bitrate: Bitrate,
    /// Volume (percent) for the very first connection of a fresh install.
    pub initial_volume: u8,
    /// ALSA PCM for playback.
    pub device: String,
    pub mixer: MixerKind,
    pub alsa_mixer_device: String,
    pub alsa_mixer_control: String,
    pub alsa_mixer_index: u32,
    pub volume_ctrl: VolumeCurveKind,
    /// dB range of the log and cubic curves.
    pub volume_range: f64,
    /// State directory: credentials, device id, tokens. Must be writable.
    pub cache: PathBuf,
    /// TCP port of the zeroconf HTTP endpoint; 0 picks a free one.
    pub zeroconf_port: u16,
    pub disable_discovery: bool,
    /// Board preset name from `board/presets` (sets device, mixer control and curve).
    pub board: Option<String>,
    pub reconnect: ReconnectConfig,
    pub status: StatusConfig,
    pub jellyfin: JellyfinConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ReconnectConfig {
    /// Seconds to wait for Spotify's automatic transfer after a reconnect before the speaker
    /// asks for the transfer itself.
    pub transfer_timeout_secs: u64,
    /// First backoff delay and cap, in seconds.
    pub backoff_initial_secs: u64,
    pub backoff_max_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct StatusConfig {
    pub enabled: bool,
    /// Listen address of the read-only status page.
    pub listen: String,
    /// The SD image's boot-config report (`pispeaker boot-config`), shown on the page.
    pub boot_config_report: Option<PathBuf>,
    /// The web app on the same server: settings, control and the event stream (writes need the
    /// password). Off leaves the read-only page.
    pub web: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct JellyfinConfig {
    pub enabled: bool,
    /// `http(s)://host[:port][/base]`.
    pub server: Option<String>,
    /// A token written by the user's own provisioning; read once and moved into the state dir.
    pub token_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "pispeaker".into(),
            device_type: "speaker".into(),
            bitrate: Bitrate::Kbps320,
            initial_volume: 50,
            device: "default".into(),
            mixer: MixerKind::Alsa,
            alsa_mixer_device: "default".into(),
            alsa_mixer_control: "PCM".into(),
            alsa_mixer_index: 0,
            volume_ctrl: VolumeCurveKind::Log,
            volume_range: 60.0,
            cache: PathBuf::from(DEFAULT_CACHE_DIR),
            zeroconf_port: 0,
            disable_discovery: false,
            board: None,
            reconnect: ReconnectConfig::default(),
            status: StatusConfig::default(),
            jellyfin: JellyfinConfig::default(),
        }
    }
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        Self {
            transfer_timeout_secs: 10,
            backoff_initial_secs: 1,
            backoff_max_secs: 60,
        }
    }
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            // Both IPv4 and IPv6 (v4-mapped): phones on the same Wi-Fi often come over IPv6.
            listen: "[::]:7070".into(),
            boot_config_report: None,
            web: true,
        }
    }
}

impl TryFrom<u32> for Bitrate {
    type Error = String;
    fn try_from(kbps: u32) -> Result<Self, Self::Error> {
        match kbps {
            96 => Ok(Self::Kbps96),
            160 => Ok(Self::Kbps160),
            320 => Ok(Self::Kbps320),
            other => Err(format!("bitrate {other} is not one of 96, 160, 320")),
        }
    }
}

impl From<Bitrate> for u32 {
    fn from(b: Bitrate) -> u32 {
        match b {
            Bitrate::Kbps96 => 96,
            Bitrate::Kbps160 => 160,
            Bitrate::Kbps320 => 320,
        }
    }
}

mod args;
mod layer;
mod load;
mod state_dir;

pub use args::ConfigArgs;
pub use layer::Layer;
pub(crate) use load::parse_layer;
pub use load::{load, ConfigError, WEB_SETTINGS_FILE};
pub use state_dir::{check_state_dir, StateDirError};

impl Config {
    /// Applies the values a layer sets; what it leaves unset stays as it is.
    pub fn apply(&mut self, layer: &Layer) {
        layer.apply_to(self);
    }

    /// The effective configuration as TOML, for `pispeaker config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
    }
}
