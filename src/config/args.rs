//! Every configuration key as a flag and a `PISPEAKER_*` environment variable.
//!
//! Flags reuse the validated types of the file layer, so `--initial-volume 150` and
//! `initial-volume = 150` are refused with the same words.

use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::Args;

use super::layer::{
    BoardName, DbRange, DeviceTypeName, JellyfinLayer, Layer, ListenAddr, Percent, ReconnectLayer,
    Seconds, ServerUrl, SpeakerName, StatusLayer,
};
use super::{Bitrate, MixerKind};
use crate::audio::VolumeCurveKind;

#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// Configuration file [default: /etc/pispeaker/config.toml; missing is fine there]
    #[arg(long, env = "PISPEAKER_CONFIG", value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
    /// Speaker name shown in the Spotify app and Jellyfin
    #[arg(long, short = 'n', env = "PISPEAKER_NAME", global = true)]
    pub name: Option<SpeakerName>,
    /// Icon in the Spotify app: speaker, avr, stb, audiodongle, tv, computer, ...
    #[arg(long, env = "PISPEAKER_DEVICE_TYPE", global = true)]
    pub device_type: Option<DeviceTypeName>,
    /// Streaming bitrate: 96, 160 or 320
    #[arg(long, short = 'b', env = "PISPEAKER_BITRATE", value_parser = parse_bitrate, global = true)]
    pub bitrate: Option<Bitrate>,
    /// Volume (0-100) for the very first connection of a fresh install
    #[arg(long, env = "PISPEAKER_INITIAL_VOLUME", global = true)]
    pub initial_volume: Option<Percent>,
    /// ALSA PCM to play on (e.g. default, hw:CARD=sndrpihifiberry,DEV=0)
    #[arg(long, env = "PISPEAKER_DEVICE", global = true)]
    pub device: Option<String>,
    /// Mixer: alsa (hardware control) or softvol
    #[arg(long, env = "PISPEAKER_MIXER", value_parser = parse_mixer, global = true)]
    pub mixer: Option<MixerKind>,
    /// ALSA mixer device (e.g. default, hw:1)
    #[arg(long, env = "PISPEAKER_ALSA_MIXER_DEVICE", global = true)]
    pub alsa_mixer_device: Option<String>,
    /// ALSA mixer control (e.g. PCM, Digital, Master)
    #[arg(long, env = "PISPEAKER_ALSA_MIXER_CONTROL", global = true)]
    pub alsa_mixer_control: Option<String>,
    /// ALSA mixer control index
    #[arg(long, env = "PISPEAKER_ALSA_MIXER_INDEX", global = true)]
    pub alsa_mixer_index: Option<u32>,
    /// Volume curve: log, cubic, linear or fixed
    #[arg(long, env = "PISPEAKER_VOLUME_CTRL", global = true)]
    pub volume_ctrl: Option<VolumeCurveKind>,
    /// dB range of the log and cubic curves
    #[arg(long, env = "PISPEAKER_VOLUME_RANGE", global = true)]
    pub volume_range: Option<DbRange>,
    /// State directory (credentials, device id, tokens)
    #[arg(
        long,
        short = 'c',
        env = "PISPEAKER_CACHE",
        value_name = "DIR",
        global = true
    )]
    pub cache: Option<PathBuf>,
    /// Port of the zeroconf HTTP endpoint (0 = any free port)
    #[arg(long, env = "PISPEAKER_ZEROCONF_PORT", global = true)]
    pub zeroconf_port: Option<u16>,
    /// Do not announce the speaker on the network (cached credentials only)
    #[arg(long, env = "PISPEAKER_DISABLE_DISCOVERY", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new(), global = true)]
    pub disable_discovery: Option<bool>,
    /// Board preset (see `pispeaker boards`)
    #[arg(long, env = "PISPEAKER_BOARD", global = true)]
    pub board: Option<BoardName>,
    /// Seconds to wait for Spotify's own transfer after a reconnect
    #[arg(long, env = "PISPEAKER_RECONNECT_TRANSFER_TIMEOUT_SECS", global = true)]
    pub reconnect_transfer_timeout_secs: Option<Seconds>,
    /// First reconnect delay in seconds
    #[arg(long, env = "PISPEAKER_RECONNECT_BACKOFF_INITIAL_SECS", global = true)]
    pub reconnect_backoff_initial_secs: Option<Seconds>,
    /// Longest reconnect delay in seconds
    #[arg(long, env = "PISPEAKER_RECONNECT_BACKOFF_MAX_SECS", global = true)]
    pub reconnect_backoff_max_secs: Option<Seconds>,
    /// Serve the status page
    #[arg(long, env = "PISPEAKER_STATUS_ENABLED", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new(), global = true)]
    pub status_enabled: Option<bool>,
    /// Listen address of the status page
    #[arg(
        long,
        env = "PISPEAKER_STATUS_LISTEN",
        value_name = "ADDR:PORT",
        global = true
    )]
    pub status_listen: Option<ListenAddr>,
    /// Show this boot-config report (written by `pispeaker boot-config`) on the status page
    #[arg(
        long,
        env = "PISPEAKER_STATUS_BOOT_CONFIG_REPORT",
        value_name = "PATH",
        global = true
    )]
    pub status_boot_config_report: Option<PathBuf>,
    /// Serve the web app (settings, control, events) with the status page
    #[arg(long, env = "PISPEAKER_STATUS_WEB", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new(), global = true)]
    pub status_web: Option<bool>,
    /// Register the speaker with a Jellyfin server
    #[arg(long, env = "PISPEAKER_JELLYFIN_ENABLED", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new(), global = true)]
    pub jellyfin_enabled: Option<bool>,
    /// Jellyfin server URL (http(s)://host[:port][/base])
    #[arg(
        long,
        env = "PISPEAKER_JELLYFIN_SERVER",
        value_name = "URL",
        global = true
    )]
    pub jellyfin_server: Option<ServerUrl>,
    /// A Jellyfin access token file provisioned by your own scripts
    #[arg(
        long,
        env = "PISPEAKER_JELLYFIN_TOKEN_FILE",
        value_name = "PATH",
        global = true
    )]
    pub jellyfin_token_file: Option<PathBuf>,
}

fn parse_bitrate(s: &str) -> Result<Bitrate, String> {
    let kbps: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not one of 96, 160, 320"))?;
    Bitrate::try_from(kbps)
}

fn parse_mixer(s: &str) -> Result<MixerKind, String> {
    match s {
        "alsa" => Ok(MixerKind::Alsa),
        "softvol" => Ok(MixerKind::Softvol),
        _ => Err(format!("{s:?} is not alsa or softvol")),
    }
}

impl ConfigArgs {
    pub(super) fn to_layer(&self) -> Layer {
        let reconnect = ReconnectLayer {
            transfer_timeout_secs: self.reconnect_transfer_timeout_secs,
            backoff_initial_secs: self.reconnect_backoff_initial_secs,
            backoff_max_secs: self.reconnect_backoff_max_secs,
        };
        let status = StatusLayer {
            enabled: self.status_enabled,
            listen: self.status_listen.clone(),
            boot_config_report: self.status_boot_config_report.clone(),
            web: self.status_web,
        };
        let jellyfin = JellyfinLayer {
            enabled: self.jellyfin_enabled,
            server: self.jellyfin_server.clone(),
            token_file: self.jellyfin_token_file.clone(),
        };
        Layer {
            name: self.name.clone(),
            device_type: self.device_type.clone(),
            bitrate: self.bitrate,
            initial_volume: self.initial_volume,
            device: self.device.clone(),
            mixer: self.mixer,
            alsa_mixer_device: self.alsa_mixer_device.clone(),
            alsa_mixer_control: self.alsa_mixer_control.clone(),
            alsa_mixer_index: self.alsa_mixer_index,
            volume_ctrl: self.volume_ctrl,
            volume_range: self.volume_range,
            cache: self.cache.clone(),
            zeroconf_port: self.zeroconf_port,
            disable_discovery: self.disable_discovery,
            board: self.board.clone(),
            reconnect: Some(reconnect),
            status: Some(status),
            jellyfin: Some(jellyfin),
        }
    }
}
