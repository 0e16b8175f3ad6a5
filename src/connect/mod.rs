//! Spotify Connect: session, supervisor, discovery, credentials.
pub mod ap_link;
pub mod control;
pub mod credentials;
pub mod discovery;
pub mod drop_rules;
pub mod drop_test;
