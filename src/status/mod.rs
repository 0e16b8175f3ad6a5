//! The status page (served by the daemon) and `pispeaker status` (its client).

mod client;

pub use client::print_status;
