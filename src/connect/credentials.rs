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
/// See [`CredentialStore::login_deaths`].
const LOGIN_MARKER_FILE: &str = "login-in-flight";
/// See [`CredentialStore::premium_required`].
const PREMIUM_NOTE_FILE: &str = "premium-required";

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

impl CredentialStore {
    fn marker_path(&self) -> PathBuf {
        self.path.with_file_name(LOGIN_MARKER_FILE)
    }

    /// How many runs in a row died while logging in or within seconds after (the marker was
    /// left behind). librespot calls `exit(1)` right after the login of an account without
    /// Premium (core/src/session.rs:364-372), and systemd restarts us: this is how we notice.
    pub fn login_deaths(&self) -> u32 {
        match state::read_optional(&self.marker_path()) {
            Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).trim().parse().unwrap_or(1),
            Ok(None) => 0,
            Err(e) => {
                warn!("cannot read {}: {e}", self.marker_path().display());
                0
            }
        }
    }

    /// Sets the marker (0 removes it). Not a secret; written atomically like every state file.
    pub fn set_login_deaths(&self, deaths: u32) {
        let path = self.marker_path();
        let result = if deaths == 0 {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        } else {
            state::write_atomic_with_mode(&path, deaths.to_string().as_bytes(), 0o644)
        };
        if let Err(e) = result {
            warn!("cannot update {}: {e}", path.display());
        }
    }
}

impl CredentialStore {
    fn premium_note_path(&self) -> PathBuf {
        self.path.with_file_name(PREMIUM_NOTE_FILE)
    }

    /// Whether the credentials were last set aside because the account has no Premium: kept on
    /// disk so the status page still says why after a reboot, when there are no credentials
    /// left to try and nothing else would tell the user.
    pub fn premium_required(&self) -> bool {
        self.premium_note_path().exists()
    }

    /// Sets or clears the note. Clearing an absent note writes nothing (the SD card is spared
    /// at each reconnect).
    pub fn set_premium_required(&self, required: bool) {
        let path = self.premium_note_path();
        let result = if required {
            state::write_atomic_with_mode(&path, b"Spotify Premium is required\n", 0o644)
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        };
        if let Err(e) = result {
            warn!("cannot update {}: {e}", path.display());
        }
    }
}

/// Where cached credentials live; [`CredentialStore`] in production.
pub trait CredentialCache: Send {
    fn load(&self) -> Option<Credentials>;
    fn save(&self, credentials: &Credentials);
    fn set_aside(&self, why: &str);
    /// Runs in a row that died within seconds of logging in (see
    /// [`CredentialStore::login_deaths`]).
    fn login_deaths(&self) -> u32;
    fn set_login_deaths(&self, deaths: u32);
    /// See [`CredentialStore::premium_required`].
    fn premium_required(&self) -> bool;
    fn set_premium_required(&self, required: bool);
}

impl CredentialCache for CredentialStore {
    fn load(&self) -> Option<Credentials> {
        CredentialStore::load(self)
    }
    fn save(&self, credentials: &Credentials) {
        if let Err(e) = CredentialStore::save(self, credentials) {
            warn!(
                "cannot cache credentials in {}: {e}; the speaker will need to be picked again after a reboot",
                self.path().display()
            );
        }
    }
    fn set_aside(&self, why: &str) {
        CredentialStore::set_aside(self, why)
    }
    fn login_deaths(&self) -> u32 {
        CredentialStore::login_deaths(self)
    }
    fn set_login_deaths(&self, deaths: u32) {
        CredentialStore::set_login_deaths(self, deaths)
    }
    fn premium_required(&self) -> bool {
        CredentialStore::premium_required(self)
    }
    fn set_premium_required(&self, required: bool) {
        CredentialStore::set_premium_required(self, required)
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
    fn login_marker_counts_and_clears() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::new(dir.path());
        assert_eq!(store.login_deaths(), 0);
        store.set_login_deaths(2);
        assert_eq!(store.login_deaths(), 2);
        store.set_login_deaths(0);
        assert_eq!(store.login_deaths(), 0);
        store.set_login_deaths(0);
    }

    #[test]
    fn the_premium_note_outlives_the_process_and_clears() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::new(dir.path());
        assert!(!store.premium_required());
        store.set_premium_required(true);
        assert!(CredentialStore::new(dir.path()).premium_required());
        store.set_premium_required(false);
        assert!(!CredentialStore::new(dir.path()).premium_required());
        store.set_premium_required(false);
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
