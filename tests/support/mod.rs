//! Shared test support: the fake Jellyfin server.
pub mod fake_jellyfin;
