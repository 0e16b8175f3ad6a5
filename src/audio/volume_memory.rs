//! The last volume, kept in the state directory.
//!
//! Two uses: a missing file means a fresh install (only then does the configured start-up volume
//! apply), and a software mixer, which forgets everything on restart, starts from it. A hardware
//! mixer keeps its own value, which is always read live. Writes are debounced: a slider dragged
//! across its range must not become a hundred SD-card writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use log::warn;
use tokio::sync::watch;

use crate::connect::control::{SpeakerStatus, SpotifyState};
use crate::state;

const FILE: &str = "volume";

/// Where the volume is kept.
#[derive(Debug, Clone)]
pub struct VolumeMemory {
    path: PathBuf,
}

impl VolumeMemory {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(FILE),
        }
    }

    /// The stored volume; `None` on a fresh install (or a corrupt file, which is moved aside).
    pub fn load(&self) -> Option<u16> {
        let bytes = state::read_optional(&self.path).ok()??;
        match String::from_utf8_lossy(&bytes).trim().parse::<u16>() {
            Ok(volume) => Some(volume),
            Err(_) => {
                if let Ok(moved) = state::quarantine(&self.path) {
                    warn!("volume file was corrupt; moved it to {}", moved.display());
                }
                None
            }
        }
    }

    pub fn store(&self, volume: u16) {
        if let Err(e) =
            state::write_atomic_with_mode(&self.path, volume.to_string().as_bytes(), 0o600)
        {
            warn!("cannot remember the volume in {}: {e}", self.path.display());
        }
    }

    /// Follows the status and stores the volume `debounce` after it stops changing, and once
    /// more when `shutdown` turns true. Nothing is stored before Spotify first connected: until
    /// then the install is still fresh, and a restart must still apply the configured start-up
    /// volume.
    pub async fn follow(
        self,
        mut status: watch::Receiver<SpeakerStatus>,
        debounce: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut stored = self.load();
        let mut pending: Option<u16> = None;
        let mut connected_once = stored.is_some();
        loop {
            let wait = tokio::time::sleep(if pending.is_some() {
                debounce
            } else {
                Duration::from_secs(3600)
            });
            tokio::select! {
                changed = status.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let (volume, connected) = {
                        let now = status.borrow_and_update();
                        (now.volume, now.spotify == SpotifyState::Connected)
                    };
                    connected_once |= connected;
                    pending = (connected_once && stored != Some(volume)).then_some(volume);
                }
                _ = wait => {
                    if let Some(volume) = pending.take() {
                        self.store(volume);
                        stored = Some(volume);
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        let last = status.borrow().volume;
        if connected_once && stored != Some(last) {
            self.store(last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_means_fresh_install_and_values_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let memory = VolumeMemory::new(dir.path());
        assert_eq!(memory.load(), None);
        memory.store(12345);
        assert_eq!(memory.load(), Some(12345));
        std::fs::write(dir.path().join(FILE), b"loud").unwrap();
        assert_eq!(memory.load(), None, "corrupt file moved aside");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dragged_slider_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let memory = VolumeMemory::new(dir.path());
        let (status_tx, status_rx) = watch::channel(SpeakerStatus::new("t", 0));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(memory.clone().follow(
            status_rx,
            Duration::from_secs(5),
            shutdown_rx,
        ));
        status_tx.send_modify(|s| s.volume = 1234);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            memory.load(),
            None,
            "still a fresh install while nobody connected"
        );
        status_tx.send_modify(|s| s.spotify = SpotifyState::Connected);
        for v in (0..100u16).map(|i| i * 600) {
            status_tx.send_modify(|s| s.volume = v);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(memory.load(), None, "nothing written while dragging");
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(memory.load(), Some(99 * 600));
        status_tx.send_modify(|s| s.volume = 7);
        shutdown_tx.send_replace(true);
        task.await.unwrap();
        assert_eq!(memory.load(), Some(7), "stored at shutdown");
    }
}
