//! Who the speaker is to Jellyfin, and the only authorization header it sends.
//!
//! Jellyfin keys sessions on Client + DeviceId: both must never change, or the dashboard fills
//! with duplicates. The DeviceId is a UUID generated once and stored; the token from pairing is a
//! secret (0600, atomic, never logged).

use std::io;
use std::path::{Path, PathBuf};

use log::warn;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::state;

/// What the server shows as the client.
pub const CLIENT: &str = "pispeaker";

const DEVICE_ID_FILE: &str = "jellyfin_device_id";
const TOKEN_FILE: &str = "jellyfin_token";

/// encodeURIComponent's set: everything but A-Z a-z 0-9 - _ . ! ~ * ' ( ).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// The speaker's identity towards one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub device: String,
    pub device_id: String,
    pub version: String,
}

impl Identity {
    /// `Authorization: MediaBrowser …` with every value percent-encoded (the server URL-decodes
    /// them), with the token once there is one. The legacy X-Emby-* headers are never sent.
    pub fn authorization(&self, token: Option<&str>) -> String {
        let enc = |v: &str| utf8_percent_encode(v, COMPONENT).to_string();
        let mut header = format!(
            "MediaBrowser Client=\"{}\", Device=\"{}\", DeviceId=\"{}\", Version=\"{}\"",
            enc(CLIENT),
            enc(&self.device),
            enc(&self.device_id),
            enc(&self.version)
        );
        if let Some(token) = token {
            header.push_str(&format!(", Token=\"{}\"", enc(token)));
        }
        header
    }
}

/// The Jellyfin files in the state directory.
#[derive(Debug, Clone)]
pub struct JellyfinFiles {
    dir: PathBuf,
}

impl JellyfinFiles {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.to_path_buf(),
        }
    }

    /// The stable DeviceId, created on first use.
    pub fn device_id(&self) -> io::Result<String> {
        let path = self.dir.join(DEVICE_ID_FILE);
        if let Some(bytes) = state::read_optional(&path)? {
            let text = String::from_utf8_lossy(&bytes).trim().to_string();
            if uuid::Uuid::parse_str(&text).is_ok() {
                return Ok(text);
            }
            let moved = state::quarantine(&path)?;
            warn!(
                "Jellyfin device id was corrupt; moved it to {}",
                moved.display()
            );
        }
        let id = uuid::Uuid::new_v4().to_string();
        state::write_secret_atomic(&path, id.as_bytes())?;
        Ok(id)
    }

    pub fn token(&self) -> Option<String> {
        let bytes = state::read_optional(&self.dir.join(TOKEN_FILE)).ok()??;
        let token = String::from_utf8_lossy(&bytes).trim().to_string();
        (!token.is_empty()).then_some(token)
    }

    pub fn store_token(&self, token: &str) -> io::Result<()> {
        state::write_secret_atomic(&self.dir.join(TOKEN_FILE), token.as_bytes())
    }

    /// Moves a rejected token aside so pairing starts again.
    pub fn reject_token(&self) {
        match state::quarantine(&self.dir.join(TOKEN_FILE)) {
            Ok(moved) => warn!(
                "Jellyfin rejected the stored token (401); moved it to {} and pairing again",
                moved.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!("Jellyfin rejected the stored token and moving it aside failed: {e}"),
        }
    }

    /// Adopts a token file written by the user's own provisioning (once: it is copied into the
    /// state directory with mode 0600).
    pub fn adopt_token_file(&self, path: &Path) -> Option<String> {
        let bytes = std::fs::read(path).ok()?;
        let token = String::from_utf8_lossy(&bytes).trim().to_string();
        if token.is_empty() {
            return None;
        }
        if let Err(e) = self.store_token(&token) {
            warn!("cannot store the provisioned Jellyfin token: {e}");
        }
        Some(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_mediabrowser_with_encoded_values() {
        let id = Identity {
            device: "Küche \"Pi\"".into(),
            device_id: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
            version: "0.1.0".into(),
        };
        let h = id.authorization(Some("abc=="));
        assert!(
            h.starts_with("MediaBrowser Client=\"pispeaker\", Device=\"K%C3%BCche%20%22Pi%22\""),
            "{h}"
        );
        assert!(h.contains("DeviceId=\"0f8fad5b-d9cb-469f-a165-70867728950e\""));
        assert!(h.ends_with("Token=\"abc%3D%3D\""), "{h}");
        assert!(!id.authorization(None).contains("Token"));
    }

    #[test]
    fn a_provisioned_token_file_is_adopted_once_into_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let provisioned = dir.path().join("provisioned.token");
        std::fs::write(&provisioned, "  tok-from-ansible\n").unwrap();
        let files = JellyfinFiles::new(&dir.path().join("state"));
        std::fs::create_dir(dir.path().join("state")).unwrap();
        assert_eq!(
            files.adopt_token_file(&provisioned).as_deref(),
            Some("tok-from-ansible")
        );
        assert_eq!(files.token().as_deref(), Some("tok-from-ansible"));
        std::fs::write(&provisioned, "").unwrap();
        assert_eq!(
            files.adopt_token_file(&provisioned),
            None,
            "an empty file is no token"
        );
    }

    #[test]
    fn device_id_is_stable_and_token_is_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let files = JellyfinFiles::new(dir.path());
        let id = files.device_id().unwrap();
        assert_eq!(files.device_id().unwrap(), id);
        files.store_token("secret").unwrap();
        assert_eq!(files.token().as_deref(), Some("secret"));
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        files.reject_token();
        assert_eq!(files.token(), None);
    }
}
