//! pispeaker: a Spotify Connect (and Jellyfin) network speaker for the Raspberry Pi.
//!
//! Start with `ARCHITECTURE.md` at the top of the repository: it maps these modules.

pub mod audio;
pub mod board;
pub mod board_overlay;
pub mod boot_config;
pub mod boot_password;
pub mod cli;
pub mod config;
pub mod connect;
pub mod daemon;
pub mod jellyfin;
pub mod live_settings;
pub mod logging;
pub mod source;
pub mod state;
pub mod status;
pub mod system_settings;
pub mod systemd;
pub mod update;
pub mod update_status;
pub mod web;
