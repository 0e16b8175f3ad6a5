//! A layer of configuration: every key optional. Defaults, a board preset, the file and the
//! command line/environment are each a layer, applied in that order.
//!
//! Values are validated while they are deserialized (through the small types below), so a bad
//! value in the file is reported by toml with its line and column, and the same checks serve the
//! presets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use librespot_core::config::DeviceType;
use serde::Deserialize;

use super::{Bitrate, Config, MixerKind};
use crate::audio::VolumeCurveKind;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Layer {
    pub name: Option<SpeakerName>,
    pub device_type: Option<DeviceTypeName>,
    pub bitrate: Option<Bitrate>,
    pub initial_volume: Option<Percent>,
    pub device: Option<String>,
    pub mixer: Option<MixerKind>,
    pub alsa_mixer_device: Option<String>,
    pub alsa_mixer_control: Option<String>,
    pub alsa_mixer_index: Option<u32>,
    pub volume_ctrl: Option<VolumeCurveKind>,
    pub volume_range: Option<DbRange>,
    pub cache: Option<PathBuf>,
    pub zeroconf_port: Option<u16>,
    pub disable_discovery: Option<bool>,
    pub board: Option<BoardName>,
    pub reconnect: Option<ReconnectLayer>,
    pub status: Option<StatusLayer>,
    pub jellyfin: Option<JellyfinLayer>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ReconnectLayer {
    pub transfer_timeout_secs: Option<Seconds>,
    pub backoff_initial_secs: Option<Seconds>,
    pub backoff_max_secs: Option<Seconds>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StatusLayer {
    pub enabled: Option<bool>,
    pub listen: Option<ListenAddr>,
    pub boot_config_report: Option<PathBuf>,
    pub web: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct JellyfinLayer {
    pub enabled: Option<bool>,
    pub server: Option<ServerUrl>,
    pub token_file: Option<PathBuf>,
}

impl Layer {
    pub(super) fn apply_to(&self, c: &mut Config) {
        fn set<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *target = v.clone();
            }
        }
        if let Some(v) = &self.name {
            c.name = v.0.clone();
        }
        if let Some(v) = &self.device_type {
            c.device_type = v.0.clone();
        }
        set(&mut c.bitrate, &self.bitrate);
        if let Some(v) = self.initial_volume {
            c.initial_volume = v.0;
        }
        set(&mut c.device, &self.device);
        set(&mut c.mixer, &self.mixer);
        set(&mut c.alsa_mixer_device, &self.alsa_mixer_device);
        set(&mut c.alsa_mixer_control, &self.alsa_mixer_control);
        set(&mut c.alsa_mixer_index, &self.alsa_mixer_index);
        set(&mut c.volume_ctrl, &self.volume_ctrl);
        if let Some(v) = self.volume_range {
            c.volume_range = v.0;
        }
        set(&mut c.cache, &self.cache);
        set(&mut c.zeroconf_port, &self.zeroconf_port);
        set(&mut c.disable_discovery, &self.disable_discovery);
        if let Some(b) = &self.board {
            c.board = Some(b.0.clone());
        }
        if let Some(r) = &self.reconnect {
            if let Some(v) = r.transfer_timeout_secs {
                c.reconnect.transfer_timeout_secs = v.0;
            }
            if let Some(v) = r.backoff_initial_secs {
                c.reconnect.backoff_initial_secs = v.0;
            }
            if let Some(v) = r.backoff_max_secs {
                c.reconnect.backoff_max_secs = v.0;
            }
        }
        if let Some(s) = &self.status {
            set(&mut c.status.enabled, &s.enabled);
            if let Some(v) = &s.listen {
                c.status.listen = v.0.to_string();
            }
            if let Some(v) = &s.boot_config_report {
                c.status.boot_config_report = Some(v.clone());
            }
            set(&mut c.status.web, &s.web);
        }
        if let Some(j) = &self.jellyfin {
            set(&mut c.jellyfin.enabled, &j.enabled);
            if let Some(v) = &j.server {
                c.jellyfin.server = Some(v.0.clone());
            }
            if j.token_file.is_some() {
                c.jellyfin.token_file = j.token_file.clone();
            }
        }
    }
}

/// Declares a validated newtype: deserialized from `$raw`, checked by `$check` (which returns the
/// message for a bad value), and parsed the same way from the command line through `FromStr`.
macro_rules! validated {
    ($(#[$doc:meta])* $name:ident($inner:ty) from $raw:ty = $raw_name:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Deserialize)]
        #[serde(try_from = $raw_name)]
        pub struct $name(pub $inner);

        impl TryFrom<$raw> for $name {
            type Error = String;
            fn try_from(raw: $raw) -> Result<Self, String> {
                let check: fn($raw) -> Result<$inner, String> = $check;
                check(raw).map($name)
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let raw: $raw = s.parse().map_err(|_| format!("{s:?} is not a valid value"))?;
                Self::try_from(raw)
            }
        }
    };
}

validated!(
    /// 1 to 64 characters: what the Spotify app and Jellyfin show.
    SpeakerName(String) from String = "String",
    |s| {
        let trimmed = s.trim();
        if trimmed.is_empty() {
            Err("the speaker name must not be empty".into())
        } else if trimmed.chars().count() > 64 {
            Err(format!("the speaker name is {} characters; at most 64 fit in the Spotify app", trimmed.chars().count()))
        } else {
            Ok(trimmed.to_string())
        }
    }
);

validated!(
    /// One of librespot's device types (the icon in the Spotify app).
    DeviceTypeName(String) from String = "String",
    |s| match DeviceType::from_str(&s) {
        Ok(_) => Ok(s),
        Err(()) => Err(format!(
            "device type {s:?} is not one of computer, tablet, smartphone, speaker, tv, avr, stb, audiodongle, gameconsole, castaudio, castvideo, automobile, smartwatch, chromebook, carthing"
        )),
    }
);

validated!(
    /// A preset from `board/presets`.
    BoardName(String) from String = "String",
    |s| crate::board::find(&s).map(|_| s).map_err(|e| e.to_string())
);

validated!(
    /// 0 to 100.
    Percent(u8) from i64 = "i64",
    |v| u8::try_from(v).ok().filter(|v| *v <= 100).ok_or_else(|| format!("{v} is not a volume between 0 and 100"))
);

validated!(
    /// A dB range for the volume curves: more than 0, at most 100.
    DbRange(f64) from f64 = "f64",
    |v| if v > 0.0 && v <= 100.0 { Ok(v) } else { Err(format!("volume range {v} dB is not in 0 < range <= 100")) }
);

validated!(
    /// Whole seconds, at most a day.
    Seconds(u64) from i64 = "i64",
    |v| u64::try_from(v).ok().filter(|v| *v <= 86_400).ok_or_else(|| format!("{v} is not a number of seconds between 0 and 86400"))
);

validated!(
    /// `address:port` for the status page.
    ListenAddr(SocketAddr) from String = "String",
    |s| s.parse::<SocketAddr>().map_err(|_| format!("{s:?} is not an address:port such as 0.0.0.0:7070"))
);

validated!(
    /// `http(s)://host[:port][/base]`.
    ServerUrl(String) from String = "String",
    |s| match url::Url::parse(&s) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host_str().is_some() => {
            Ok(s.trim_end_matches('/').to_string())
        }
        _ => Err(format!("{s:?} is not an http:// or https:// server URL such as http://jellyfin.local:8096")),
    }
);

impl Copy for Percent {}
impl Copy for DbRange {}
impl Copy for Seconds {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validators_accept_good_and_explain_bad_values() {
        assert_eq!(Percent::try_from(100).unwrap().0, 100);
        assert!(Percent::try_from(101)
            .unwrap_err()
            .contains("between 0 and 100"));
        assert!(DbRange::try_from(0.0).is_err());
        assert!(SpeakerName::try_from(" ".to_string()).is_err());
        assert!(SpeakerName::try_from("x".repeat(65)).is_err());
        assert_eq!(
            SpeakerName::try_from(" Kitchen ".to_string()).unwrap().0,
            "Kitchen"
        );
        assert!(DeviceTypeName::try_from("avr".to_string()).is_ok());
        assert!(DeviceTypeName::try_from("toaster".to_string()).is_err());
        assert!(ServerUrl::try_from("ftp://x".to_string()).is_err());
        assert_eq!(
            ServerUrl::try_from("https://jf.example/base/".to_string())
                .unwrap()
                .0,
            "https://jf.example/base"
        );
        assert!("127.0.0.1:7070".parse::<ListenAddr>().is_ok());
        assert!("7070".parse::<ListenAddr>().is_err());
    }
}
