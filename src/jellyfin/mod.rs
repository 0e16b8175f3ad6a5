//! Jellyfin sidecar.
