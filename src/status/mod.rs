//! The status page (served by the daemon) and `pispeaker status` (its client).

pub(crate) mod client;
mod server;

pub use client::print_status;
pub use server::{bind, serve, serve_with_boot_config, serve_with_web, status_json};
