//! Spotify Connect: discovery, credentials, the session abstraction, the reconnect supervisor and
//! the tools around the access-point link.

pub mod ap_link;
pub mod backoff;
pub mod control;
pub mod credentials;
pub mod discovery;
pub mod drop_rules;
pub mod drop_test;
#[cfg(test)]
pub(crate) mod fake_backend;
pub mod librespot_backend;
pub mod session;
pub mod supervisor;
