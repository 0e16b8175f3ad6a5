//! Shared test support: the fake Jellyfin server, signal comparison and waiting for conditions.
pub mod fake_jellyfin;
pub mod signal;
pub mod wait;
