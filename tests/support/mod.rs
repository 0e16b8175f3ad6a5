//! Shared test support: the fake Jellyfin server and waiting for conditions.
pub mod fake_jellyfin;
pub mod wait;
