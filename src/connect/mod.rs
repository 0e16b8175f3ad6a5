//! Spotify Connect: session, supervisor, discovery, credentials.
pub mod control;
pub mod credentials;
