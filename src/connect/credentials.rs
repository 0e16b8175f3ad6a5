//! The cached Spotify credentials and the speaker's stable device id.
//!
//! librespot's own `Cache` writes credentials in place with the default umask; we keep them
//! ourselves so they are 0600 and written atomically (see [`crate::state`]).

use std::io;
use std::path::{Path, PathBuf};

use librespot_core::authentication::Credentials;
use log::{info, warn};

use crate::state;

const CREDENTIALS_FILE: &str = "credentials.json";
const DEVICE_ID_FILE: &str = "device_id";

/// Reusable credentials on disk.
#[derive(Debug, Clone)]
pub struct CredentialStore {
    path: PathBuf,
}

impl CredentialStore {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(CREDENTIALS_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cached credentials, if any. A file that does not parse is moved aside and logged,
    /// and `None` is returned so zeroconf discovery takes over.
    pub fn load(&self) -> Option<Credentials> {
        let bytes = match state::read_optional(&self.path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return None,
            Err(e) => {
                warn!(
                    "cannot read cached credentials {}: {e}; waiting for discovery",
                    self.path.display()
                );
                return None;
            }
        };
        match serde_json::from_slice::<Credentials>(&bytes) {
            Ok(creds) if !creds.auth_data.is_empty() => Some(creds),
            Ok(_) | Err(_) => {
                self.set_aside("is corrupt");
                None
            }
        }
    }

    /// Stores reusable credentials (mode 0600, atomic). Writes nothing if they did not change,
    /// to spare the SD card.
    pub fn save(&self, creds: &Credentials) -> io::Result<()> {
        let json = serde_json::to_vec(creds).map_err(io::Error::other)?;
        if state::read_optional(&self.path)?.as_deref() == Some(json.as_slice()) {
            return Ok(());
        }
        state::write_secret_atomic(&self.path, &json)?;
        info!("cached reusable credentials in {}", self.path.display());
        Ok(())
    }

    /// Moves the credentials aside (revoked, corrupt) so the next start uses discovery.
    pub fn set_aside(&self, why: &str) {
        match state::quarantine(&self.path) {
            Ok(moved) => warn!(
                "cached credentials {why}: moved {} to {}; pick the speaker in the Spotify app again",
                self.path.display(),
                moved.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(
                "cached credentials {why}, and moving {} aside failed: {e}",
                self.path.display()
            ),
        }
    }
}

/// The speaker's Spotify device id: generated once, stored, never changed, so the Spotify app
/// keeps recognising the speaker across reboots and renames.
pub fn load_or_create_device_id(state_dir: &Path) -> io::Result<String> {
    let path = state_dir.join(DEVICE_ID_FILE);
    if let Some(bytes) = state::read_optional(&path)? {
        let id = String::from_utf8_lossy(&bytes).trim().to_string();
        if id.len() == 40 && id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(id);
        }
        let moved = state::quarantine(&path)?;
        warn!(
            "device id file was corrupt; moved it to {} and generated a new id",
            moved.display()
        );
    }
    let id = hex::encode(rand::random::<[u8; 20]>());
    state::write_atomic_with_mode(&path, id.as_bytes(), 0o644)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use librespot_core::authentication::Credentials;
    use librespot_protocol::authentication::AuthenticationType;

    fn sample() -> Credentials {
        Credentials {
            username: Some("someone".into()),
            auth_type: AuthenticationType::AUTHENTICATION_STORED_SPOTIFY_CREDENTIALS,
            auth_data: vec![1, 2, 3, 4],
        }
    }

    #[test]
    fn credentials_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::new(dir.path());
        assert!(store.load().is_none());
        store.save(&sample()).unwrap();
        assert_eq!(store.load(), Some(sample()));
    }

    #[test]
    fn corrupt_credentials_are_moved_aside_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::new(dir.path());
        std::fs::write(store.path(), b"{\"username\": 12").unwrap();
        assert!(store.load().is_none());
        assert!(!store.path().exists());
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("credentials.json.corrupt-")
            });
        assert!(aside);
    }

    #[test]
    fn device_id_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_device_id(dir.path()).unwrap();
        let second = load_or_create_device_id(dir.path()).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.len(), 40);
    }
}
