//! Wi-Fi and SSH set from the web app, on the SD image, without the daemon ever being root.
//!
//! The daemon runs as its own user under a hardened unit: it cannot write wpa_supplicant's
//! configuration or root's `authorized_keys`, nor restart services, and it must stay that way.
//! So a change goes through a request file:
//!
//! 1. the web app checks the change with the boot partition's own rules and messages
//!    (`boot_config::check_*`; a bad SSID or passphrase is a 400 naming the field, nothing is
//!    written), then writes `<state>/system-request.json` (0600, atomic);
//! 2. `pispeaker-apply-system.path` sees it and starts the root oneshot
//!    `pispeaker apply-system`, which takes the request (it deletes it first, so a bad one cannot
//!    trigger it again), checks it again with the same function, stores the result on the data
//!    partition (`/data/pispeaker-system/settings.toml`, root, 0600), rewrites the runtime files
//!    the boot config writes (`/run/pispeaker/wpa_supplicant-wlan0.conf`, `authorized_keys`,
//!    `ssh-enabled`) and restarts Wi-Fi or switches SSH on or off when they changed;
//! 3. it reports the outcome in `/run/pispeaker/system-result.json` (no secrets), which the web
//!    app waits for to answer the browser.
//!
//! At every boot the boot config merges the same store under the boot partition's settings: a
//! Wi-Fi network or SSH key in `pispeaker.toml` wins (the page then shows it as set there), so
//! editing the card always works, also to recover from a wrong network set in the browser. The
//! summary the web app shows (`/run/pispeaker/system.json`) never holds the passphrase.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::boot_config::{self, BootSettings, Wifi};
use crate::state;

/// The request, in the daemon's state directory.
pub const REQUEST_FILE: &str = "system-request.json";
/// What is in effect (no secrets), in the boot config's output directory.
pub const SUMMARY_FILE: &str = "system.json";
/// The last request's outcome, next to the summary.
pub const RESULT_FILE: &str = "system-result.json";
/// Where the root unit keeps the web app's Wi-Fi and SSH settings (the data partition).
pub const DEFAULT_STORE: &str = "/data/pispeaker-system/settings.toml";
/// The API fields handled here.
pub const FIELDS: &[&str] = &[
    "wifi_ssid",
    "wifi_passphrase",
    "wifi_country",
    "ssh_authorized_key",
];
/// Why a field is locked on the image when the boot partition sets it.
pub const SET_ON_BOOT: &str =
    "set in the boot partition's pispeaker.toml (edit it there, or remove it to change it here)";
/// Why these fields are locked off the image.
pub const NOT_MANAGED: &str = "not managed here: this is not the pispeaker SD image, so Wi-Fi and SSH are the operating system's (e.g. raspi-config)";
/// A request is a few hundred bytes.
const MAX_REQUEST: u64 = 64 * 1024;

/// The web app's Wi-Fi and SSH settings as stored by root. `Debug` hides the passphrase.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stored {
    pub wifi_ssid: Option<String>,
    pub wifi_passphrase: Option<String>,
    pub wifi_country: Option<String>,
    pub ssh_authorized_key: Option<String>,
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored")
            .field("wifi_ssid", &self.wifi_ssid)
            .field(
                "wifi_passphrase",
                &self.wifi_passphrase.as_ref().map(|_| "<hidden>"),
            )
            .field("wifi_country", &self.wifi_country)
            .field("ssh_authorized_key", &self.ssh_authorized_key)
            .finish()
    }
}

/// What the web app may know: the values in effect, whether a passphrase exists, and which
/// come from the boot partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub wifi_ssid: Option<String>,
    pub wifi_country: Option<String>,
    pub wifi_passphrase_set: bool,
    pub ssh_authorized_key: Option<String>,
    /// Wi-Fi is set in the boot partition's `pispeaker.toml`.
    pub boot_wifi: bool,
    /// SSH is switched on (with a key) in the boot partition's `pispeaker.toml`.
    pub boot_ssh: bool,
}

impl Summary {
    /// The stored settings as far as the web app can tell (a passphrase is a placeholder that
    /// never leaves the process: only "is there one" matters for the checks).
    pub fn as_stored(&self) -> Stored {
        Stored {
            wifi_ssid: self.wifi_ssid.clone(),
            wifi_passphrase: self.wifi_passphrase_set.then(String::new),
            wifi_country: self.wifi_country.clone(),
            ssh_authorized_key: self.ssh_authorized_key.clone(),
        }
    }

    /// The field's lock reason on the image, if the boot partition sets it.
    pub fn locked(&self, field: &str) -> Option<&'static str> {
        let boot = if field == "ssh_authorized_key" {
            self.boot_ssh
        } else {
            self.boot_wifi
        };
        boot.then_some(SET_ON_BOOT)
    }
}

/// A refused change: the field and the reason (the boot partition's words for the same value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn refuse(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// The changed fields of a JSON body: strings or `null` (remove); anything else is refused.
pub fn changes_from_json(
    object: &serde_json::Map<String, Value>,
) -> Result<BTreeMap<String, Option<String>>, FieldError> {
    let mut changes = BTreeMap::new();
    for (field, value) in object {
        if !FIELDS.contains(&field.as_str()) {
            continue;
        }
        let value = match value {
            Value::Null => None,
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) => Some(s.trim().to_string()),
            _ => return Err(refuse(field, "must be a quoted string or null")),
        };
        changes.insert(field.clone(), value);
    }
    Ok(changes)
}

/// Applies `changes` to `current`, with the boot partition's checks and messages. `None` for the
/// passphrase means "keep it"; a new network needs its passphrase in the same change (a kept
/// one belongs to the old network). The passphrase is never part of a message.
pub fn merge(
    current: &Stored,
    summary: &Summary,
    changes: &BTreeMap<String, Option<String>>,
) -> Result<Stored, FieldError> {
    let mut next = current.clone();
    for (field, value) in changes {
        if let Some(why) = summary.locked(field) {
            return Err(refuse(field, format!("cannot be changed here: {why}")));
        }
        let check = |f: fn(&str) -> Result<String, String>| -> Result<Option<String>, FieldError> {
            match value {
                None => Ok(None),
                Some(v) => f(v)
                    .map(Some)
                    .map_err(|why| refuse(field, format!("{v:?} {why}"))),
            }
        };
        match field.as_str() {
            "wifi_ssid" => next.wifi_ssid = check(boot_config::check_ssid)?,
            "wifi_country" => next.wifi_country = check(boot_config::check_country)?,
            "ssh_authorized_key" => next.ssh_authorized_key = check(boot_config::check_ssh_key)?,
            "wifi_passphrase" => {
                if let Some(pass) = value {
                    boot_config::check_passphrase(pass).map_err(|why| refuse(field, why))?;
                    next.wifi_passphrase = Some(pass.clone());
                }
            }
            _ => return Err(refuse(field, "is not a setting that can be changed here")),
        }
    }
    let new_pass = changes.get("wifi_passphrase").is_some_and(|p| p.is_some());
    match &next.wifi_ssid {
        None => {
            if new_pass {
                return Err(refuse("wifi_ssid", "not set, so the passphrase is unused"));
            }
            next.wifi_passphrase = None;
        }
        Some(ssid) if next.wifi_ssid != current.wifi_ssid && !new_pass => {
            return Err(refuse(
                "wifi_passphrase",
                format!(
                    "needed for the new network {ssid:?}: a WPA passphrase is 8-63 printable ASCII characters (or 64 hex digits)"
                ),
            ));
        }
        Some(_) => {}
    }
    Ok(next)
}

/// The fields whose value differs (a given passphrase always counts: it cannot be compared).
pub fn changed_fields(
    before: &Stored,
    after: &Stored,
    changes: &BTreeMap<String, Option<String>>,
) -> Vec<String> {
    let mut out = Vec::new();
    if before.wifi_ssid != after.wifi_ssid {
        out.push("wifi_ssid".to_string());
    }
    if changes.get("wifi_passphrase").is_some_and(|p| p.is_some()) {
        out.push("wifi_passphrase".to_string());
    }
    if before.wifi_country != after.wifi_country {
        out.push("wifi_country".to_string());
    }
    if before.ssh_authorized_key != after.ssh_authorized_key {
        out.push("ssh_authorized_key".to_string());
    }
    out
}

/// The request the web app writes and the root unit takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub id: String,
    pub changes: BTreeMap<String, Option<String>>,
}

/// The outcome the root unit reports (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub id: Option<String>,
    pub ok: bool,
    #[serde(default)]
    pub changed: Vec<String>,
    #[serde(default)]
    pub error: Option<FieldError>,
}

/// Writes the request (0600, atomic) for the root unit.
pub fn write_request(path: &Path, request: &Request) -> io::Result<()> {
    let json = serde_json::to_vec(request).map_err(io::Error::other)?;
    state::write_secret_atomic(path, &json)
}

/// The settings the root unit keeps; a broken file is set aside (reported) and counts as empty.
pub fn read_store(path: &Path) -> (Stored, Option<String>) {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (Stored::default(), None),
        Err(e) => {
            return (
                Stored::default(),
                Some(format!("{} cannot be read: {e}", path.display())),
            )
        }
    };
    match toml::from_str(&text) {
        Ok(stored) => (stored, None),
        Err(_) => {
            let moved = state::quarantine(path)
                .map(|p| format!("moved to {}", p.display()))
                .unwrap_or_else(|e| format!("could not be moved aside: {e}"));
            (
                Stored::default(),
                Some(format!(
                    "{} does not parse ({moved}); the web app's Wi-Fi and SSH settings are unset",
                    path.display()
                )),
            )
        }
    }
}

fn write_store(path: &Path, stored: &Stored) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    }
    let text = toml::to_string(stored).map_err(io::Error::other)?;
    state::write_secret_atomic(path, text.as_bytes())
}

/// The boot partition's settings with the stored ones filling the gaps.
#[derive(Debug, Clone)]
pub struct Merged {
    pub settings: BootSettings,
    pub summary: Summary,
}

/// Wi-Fi and SSH from the boot partition win; the store fills in what it leaves unset.
pub fn merge_boot_and_store(boot: &BootSettings, stored: &Stored) -> Merged {
    let mut settings = boot.clone();
    let boot_wifi = boot.wifi.is_some();
    let boot_ssh = boot.ssh_key.is_some();
    if !boot_wifi {
        settings.wifi = stored.wifi_ssid.as_ref().map(|ssid| Wifi {
            country: stored.wifi_country.clone(),
            ssid: ssid.clone(),
            passphrase: stored.wifi_passphrase.clone(),
        });
    }
    if !boot_ssh {
        settings.ssh_key = stored.ssh_authorized_key.clone();
    }
    let summary = Summary {
        wifi_ssid: settings.wifi.as_ref().map(|w| w.ssid.clone()),
        wifi_country: settings.wifi.as_ref().and_then(|w| w.country.clone()),
        wifi_passphrase_set: settings
            .wifi
            .as_ref()
            .is_some_and(|w| w.passphrase.is_some()),
        ssh_authorized_key: settings.ssh_key.clone(),
        boot_wifi,
        boot_ssh,
    };
    Merged { settings, summary }
}

/// Writes the summary the web app reads (0644: nothing secret in it).
pub fn write_summary(out: &Path, merged: &Merged) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(&merged.summary).map_err(io::Error::other)?;
    state::write_atomic_with_mode(&out.join(SUMMARY_FILE), &json, 0o644)
}

/// Reads the summary; `None` when there is none (not the image, or the boot config has not run).
pub fn read_summary(out: &Path) -> Option<Summary> {
    let bytes = std::fs::read(out.join(SUMMARY_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Reads the last outcome, if any.
pub fn read_outcome(out: &Path) -> Option<Outcome> {
    let bytes = std::fs::read(out.join(RESULT_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The root unit's paths.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The web app's request (`/var/lib/pispeaker/system-request.json`).
    pub request: PathBuf,
    /// The stored settings (`/data/pispeaker-system/settings.toml`).
    pub store: PathBuf,
    /// The boot partition's `pispeaker.toml` (it wins).
    pub source: PathBuf,
    /// The boot config's output directory (`/run/pispeaker`).
    pub out: PathBuf,
}

/// What changed on disk, so the caller restarts only what must.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    pub wifi_changed: bool,
    pub ssh_changed: bool,
    pub ssh_on: bool,
}

/// Takes the request (if any), applies it and reports the outcome. `Ok(None)`: no request.
pub fn apply_request(paths: &Paths) -> io::Result<Option<(Outcome, Effects)>> {
    let Some(bytes) = take_request(&paths.request)? else {
        return Ok(None);
    };
    let (outcome, effects) = match serde_json::from_slice::<Request>(&bytes) {
        Err(e) => (
            Outcome {
                id: None,
                ok: false,
                changed: Vec::new(),
                error: Some(refuse("", format!("the request does not parse: {e}"))),
            },
            Effects::default(),
        ),
        Ok(request) => apply_checked(paths, &request)?,
    };
    let json = serde_json::to_vec_pretty(&outcome).map_err(io::Error::other)?;
    std::fs::create_dir_all(&paths.out)?;
    state::write_atomic_with_mode(&paths.out.join(RESULT_FILE), &json, 0o644)?;
    Ok(Some((outcome, effects)))
}

fn apply_checked(paths: &Paths, request: &Request) -> io::Result<(Outcome, Effects)> {
    let (boot, _) = boot_config::read_source(&paths.source);
    let (stored, _) = read_store(&paths.store);
    let summary = merge_boot_and_store(&boot, &stored).summary;
    let next = match merge(&stored, &summary, &request.changes) {
        Ok(next) => next,
        Err(error) => {
            return Ok((
                Outcome {
                    id: Some(request.id.clone()),
                    ok: false,
                    changed: Vec::new(),
                    error: Some(error),
                },
                Effects::default(),
            ))
        }
    };
    let changed = changed_fields(&stored, &next, &request.changes);
    let before_wpa = std::fs::read(paths.out.join(boot_config::WPA_FILE)).ok();
    let before_keys = std::fs::read(paths.out.join("authorized_keys")).ok();
    write_store(&paths.store, &next)?;
    let merged = merge_boot_and_store(&boot, &next);
    std::fs::create_dir_all(&paths.out)?;
    boot_config::write_system_files(&merged.settings, &paths.out)?;
    write_summary(&paths.out, &merged)?;
    let effects = Effects {
        wifi_changed: std::fs::read(paths.out.join(boot_config::WPA_FILE)).ok() != before_wpa,
        ssh_changed: std::fs::read(paths.out.join("authorized_keys")).ok() != before_keys,
        ssh_on: merged.settings.ssh_key.is_some(),
    };
    Ok((
        Outcome {
            id: Some(request.id.clone()),
            ok: true,
            changed,
            error: None,
        },
        effects,
    ))
}

/// Reads and removes the request. It sits in a directory the (unprivileged) daemon owns, so it
/// is opened without following links, must be a small regular file, and is removed before it
/// is parsed: whatever it holds, it triggers the root unit once.
fn take_request(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            // A link or something odd: remove it so the path unit stops triggering.
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
    };
    std::fs::remove_file(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() || kind.is_fifo() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_REQUEST).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect()
    }

    #[test]
    fn a_new_network_needs_its_passphrase_and_bad_values_name_the_field() {
        let none = Stored::default();
        let s = Summary::default();
        let e = merge(&none, &s, &changes(&[("wifi_ssid", Some("home"))])).unwrap_err();
        assert_eq!(e.field, "wifi_passphrase");
        let e = merge(
            &none,
            &s,
            &changes(&[
                ("wifi_ssid", Some("home")),
                ("wifi_passphrase", Some("short")),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.field, "wifi_passphrase");
        assert!(e.message.contains("8-63"), "{e:?}");
        assert!(!e.message.contains("short"), "never echoed: {e:?}");
        let e = merge(
            &none,
            &s,
            &changes(&[
                ("wifi_ssid", Some(&"x".repeat(33))),
                ("wifi_passphrase", Some("correct horse")),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.field, "wifi_ssid");
        assert!(e.message.contains("32 bytes"), "{e:?}");
        let e = merge(
            &none,
            &s,
            &changes(&[("ssh_authorized_key", Some("hello"))]),
        )
        .unwrap_err();
        assert_eq!(e.field, "ssh_authorized_key");
        let ok = merge(
            &none,
            &s,
            &changes(&[
                ("wifi_ssid", Some("home")),
                ("wifi_passphrase", Some("correct horse")),
                ("wifi_country", Some("de")),
            ]),
        )
        .unwrap();
        assert_eq!(ok.wifi_country.as_deref(), Some("DE"));
        // The same network with the passphrase kept; no network, no passphrase.
        let same = merge(&ok, &s, &changes(&[("wifi_ssid", Some("home"))])).unwrap();
        assert_eq!(same, ok);
        let off = merge(&ok, &s, &changes(&[("wifi_ssid", None)])).unwrap();
        assert_eq!(off.wifi_passphrase, None);
        assert!(!format!("{ok:?}").contains("correct horse"));
    }

    #[test]
    fn the_boot_partition_wins_and_locks() {
        let (boot, _) = boot_config::parse(
            "wifi_ssid = \"card\"\nwifi_passphrase = \"card pass 1\"\nwifi_country = \"GB\"\n",
        );
        let stored = Stored {
            wifi_ssid: Some("web".into()),
            wifi_passphrase: Some("web pass 12".into()),
            ssh_authorized_key: Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIexample me".into()),
            ..Stored::default()
        };
        let merged = merge_boot_and_store(&boot, &stored);
        assert_eq!(merged.summary.wifi_ssid.as_deref(), Some("card"));
        assert!(merged.summary.boot_wifi && !merged.summary.boot_ssh);
        assert!(merged.settings.ssh_key.is_some(), "the store fills SSH in");
        let e = merge(
            &stored,
            &merged.summary,
            &changes(&[("wifi_country", Some("FR"))]),
        )
        .unwrap_err();
        assert_eq!(e.field, "wifi_country");
        assert!(e.message.contains("boot partition"), "{e:?}");
    }
}
