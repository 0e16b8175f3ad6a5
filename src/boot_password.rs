//! The SD image's `admin-password` file: the web password, preset on the FAT partition.
//!
//! Someone who flashes a card can put a file named `admin-password` (or `admin-password.txt`,
//! which is what Windows' Notepad makes of it) next to `pispeaker.toml`, holding the password on
//! its first line; `admin_password = "..."` in `pispeaker.toml` does the same. At the next boot
//! `pispeaker adopt-password` (the root unit `pispeaker-adopt-password.service`, ordered before
//! the speaker) hashes it with the web app's own hasher (argon2id, `web::auth`) into the state
//! directory's `web-password` and removes the plaintext from the card.
//!
//! Why a root unit and not the daemon: the image mounts the FAT read-only with `umask=0077`, and
//! the daemon runs as its own user, so it can neither read the file nor remove it. The unit
//! remounts the FAT read-write in its own mount namespace for the removal only.
//!
//! The password replaces one set earlier: having the card in hand is what proves ownership, so
//! this is also the way back in after a forgotten password. The API token (made from the old
//! password) is revoked with it. A password the page would refuse (too short) is not used, but
//! its file is removed all the same: a password must not stay readable on a card. The password
//! never reaches the log, only the file's name and the reason.

use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::{board_overlay, state, web};

/// The file names looked for on the boot partition, in this order.
pub const FILE_NAMES: &[&str] = &["admin-password", "admin-password.txt"];
/// The key in the boot partition's `pispeaker.toml`.
pub const TOML_KEY: &str = "admin_password";
/// A password file is a line; anything much longer is not one.
const MAX_FILE: u64 = 4096;

/// Where to look and where the hash goes.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The boot partition's mount point (`/boot/firmware`).
    pub boot: PathBuf,
    /// The daemon's state directory (`/var/lib/pispeaker`); the hash file gets its owner.
    pub state: PathBuf,
    /// If set and read-only, remounted read-write for the removal only (see `board_overlay`).
    pub remount: Option<PathBuf>,
}

/// What happened to one place a password can come from. Never holds the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Hashed into `web-password`; the plaintext is gone from the card.
    Adopted { from: PathBuf },
    /// Not used (the reason is for the journal); the plaintext is gone from the card.
    Refused { from: PathBuf, why: String },
}

/// Adopts every password found (the last usable one wins) and removes each from the card.
/// An error means the hash could not be stored: the plaintext is then left where it was, so
/// the next boot tries again.
pub fn adopt(paths: &Paths, auth: &web::auth::Auth) -> io::Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    for name in FILE_NAMES {
        let from = paths.boot.join(name);
        let Some(text) = read_small(&from)? else {
            continue;
        };
        let password = first_line(&text);
        let outcome = store(paths, auth, &from, password)?;
        board_overlay::with_writable(paths.remount.as_deref(), || {
            std::fs::remove_file(&from)?;
            sync_dir(&paths.boot)
        })?;
        outcomes.push(outcome);
    }
    let toml = paths.boot.join(crate::boot_config::DEFAULT_FILE_NAME);
    if let Some(text) = read_small(&toml)? {
        if let Some((password, rest)) = take_toml_key(&text) {
            let outcome = store(paths, auth, &toml, &password)?;
            board_overlay::with_writable(paths.remount.as_deref(), || {
                // The FAT partition has no permissions to keep: 0644 like the rest of it.
                state::write_atomic_with_mode(&toml, rest.as_bytes(), 0o644)
            })?;
            outcomes.push(outcome);
        }
    }
    Ok(outcomes)
}

/// Hashes and stores one password; a refused one is an outcome, a storage failure an error.
fn store(
    paths: &Paths,
    auth: &web::auth::Auth,
    from: &Path,
    password: &str,
) -> io::Result<Outcome> {
    let hash = match auth.hash_new_password(password) {
        Ok(hash) => hash,
        Err(web::auth::AuthError::TooShort) => {
            return Ok(Outcome::Refused {
                from: from.to_path_buf(),
                why: format!(
                    "it has {} characters, the web app needs at least {}",
                    password.chars().count(),
                    web::auth::MIN_PASSWORD
                ),
            })
        }
        Err(e) => return Err(io::Error::other(e.to_string())),
    };
    // The daemon (the state directory's owner) must be able to read it; nobody else.
    let owner = std::fs::metadata(&paths.state).map(|m| (m.uid(), m.gid()))?;
    state::write_atomic_owned(
        &paths.state.join(web::auth::PASSWORD_FILE),
        hash.as_bytes(),
        0o600,
        Some(owner),
    )?;
    // A token made from the old password goes with it.
    match std::fs::remove_file(paths.state.join(web::auth::TOKEN_FILE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    Ok(Outcome::Adopted {
        from: from.to_path_buf(),
    })
}

/// Reads a small regular file; `None` when absent. Links are not followed.
fn read_small(path: &Path) -> io::Result<Option<String>> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(MAX_FILE).read_to_end(&mut bytes)?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// The first line, without a UTF-8 byte-order mark or the line ending (Notepad adds both).
fn first_line(text: &str) -> &str {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.split('\n')
        .next()
        .unwrap_or_default()
        .trim_end_matches('\r')
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Finds a top-level `admin_password = "..."` and returns its value and the text without that
/// line (other lines, comments included, untouched).
fn take_toml_key(text: &str) -> Option<(String, String)> {
    let table: toml::Table = text.parse().ok()?;
    let password = table.get(TOML_KEY)?.as_str()?.to_string();
    let mut in_table = false;
    let mut rest = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            in_table = true;
        }
        let is_key = !in_table
            && trimmed
                .strip_prefix(TOML_KEY)
                .is_some_and(|after| after.trim_start().starts_with('='));
        if !is_key {
            rest.push_str(line);
        }
    }
    Some((password, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn cheap(dir: &Path) -> web::auth::Auth {
        web::auth::Auth::with_params(dir, argon2::Params::new(64, 1, 1, None).unwrap())
    }

    fn card() -> (tempfile::TempDir, Paths) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths {
            boot: dir.path().join("boot"),
            state: dir.path().join("state"),
            remount: None,
        };
        std::fs::create_dir(&paths.boot).unwrap();
        std::fs::create_dir(&paths.state).unwrap();
        (dir, paths)
    }

    const PEER: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn a_notepad_file_is_hashed_0600_and_removed() {
        let (_dir, paths) = card();
        let file = paths.boot.join("admin-password.txt");
        std::fs::write(&file, "\u{feff}correct horse\r\n").unwrap();
        std::fs::write(paths.state.join(web::auth::TOKEN_FILE), "x".repeat(64)).unwrap();
        let auth = cheap(&paths.state);
        assert_eq!(
            adopt(&paths, &auth).unwrap(),
            vec![Outcome::Adopted { from: file.clone() }]
        );
        assert!(!file.exists());
        let hash_file = paths.state.join(web::auth::PASSWORD_FILE);
        let hash = std::fs::read_to_string(&hash_file).unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        let mode = std::fs::metadata(&hash_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(auth.login(PEER, "correct horse").is_ok());
        assert!(!paths.state.join(web::auth::TOKEN_FILE).exists());
        // Nothing left to adopt.
        assert_eq!(adopt(&paths, &auth).unwrap(), vec![]);
    }

    #[test]
    fn it_replaces_a_forgotten_password() {
        let (_dir, paths) = card();
        let auth = cheap(&paths.state);
        auth.set_first_password("forgotten one").unwrap();
        std::fs::write(paths.boot.join("admin-password"), "a new password\n").unwrap();
        adopt(&paths, &auth).unwrap();
        assert!(auth.login(PEER, "a new password").is_ok());
        assert!(auth.login(PEER, "forgotten one").is_err());
    }

    #[test]
    fn a_short_password_is_refused_without_echo_and_still_removed() {
        let (_dir, paths) = card();
        let file = paths.boot.join("admin-password");
        std::fs::write(&file, "hunter2\n").unwrap();
        let outcomes = adopt(&paths, &cheap(&paths.state)).unwrap();
        let [Outcome::Refused { why, .. }] = outcomes.as_slice() else {
            panic!("{outcomes:?}");
        };
        assert!(why.contains("at least 8"), "{why}");
        assert!(!format!("{outcomes:?}").contains("hunter2"));
        assert!(!file.exists());
        assert!(!paths.state.join(web::auth::PASSWORD_FILE).exists());
    }

    #[test]
    fn the_toml_key_is_taken_out_of_pispeaker_toml() {
        let (_dir, paths) = card();
        let toml = paths.boot.join("pispeaker.toml");
        std::fs::write(
            &toml,
            "# my speaker\nname = \"Kitchen\"\nadmin_password = \"from the card\"\nwifi_ssid = \"home\"\n",
        )
        .unwrap();
        let auth = cheap(&paths.state);
        assert_eq!(
            adopt(&paths, &auth).unwrap(),
            vec![Outcome::Adopted { from: toml.clone() }]
        );
        assert_eq!(
            std::fs::read_to_string(&toml).unwrap(),
            "# my speaker\nname = \"Kitchen\"\nwifi_ssid = \"home\"\n"
        );
        assert!(auth.login(PEER, "from the card").is_ok());
    }

    #[test]
    fn a_storage_failure_leaves_the_file_for_the_next_boot() {
        let (_dir, paths) = card();
        let file = paths.boot.join("admin-password");
        std::fs::write(&file, "correct horse\n").unwrap();
        let broken = Paths {
            state: paths.state.join("missing"),
            ..paths.clone()
        };
        assert!(adopt(&broken, &cheap(&paths.state)).is_err());
        assert!(file.exists());
    }
}
