//! Status page.
