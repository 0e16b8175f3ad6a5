//! The LAN web app and its API, on the status server: settings and control from a browser or a
//! script, and a live event stream.
//!
//! `lan` decides who is on the local network, `auth` who may write, `events` the numbered event
//! stream, `bridge` turns the sources' and sidecar's state into events, `settings` validates and
//! writes settings (`system`: Wi-Fi and SSH, handed to a root unit on the image), `api` routes `/api/*`, and `assets` is the page (one HTML file in the binary).

pub mod api;
pub mod assets;
pub mod auth;
pub mod bridge;
pub mod events;
pub mod lan;
pub mod settings;
pub mod system;

pub use api::WebApp;
