//! Spotify Connect: discovery, credentials, the session abstraction, the reconnect supervisor and
//! the tools around the access-point link.

pub mod ap_link;
pub mod backoff;
pub mod control;
pub mod credentials;
pub mod discovery;
pub mod drop_progress;
pub mod drop_rules;
pub mod drop_test;
#[cfg(test)]
pub(crate) mod fake_backend;
pub mod heartbeat;
pub mod librespot_backend;
pub mod liveness;
pub mod netwatch;
#[cfg(test)]
mod reconnect_defect_tests;
pub mod session;
pub mod supervisor;
#[cfg(test)]
mod supervisor_harness;
pub mod volume_gate;
