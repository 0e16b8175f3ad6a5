//! The Wi-Fi and SSH settings on the page: on the SD image a request to the root unit
//! (`crate::system_settings` has the whole path), elsewhere "not managed here".
//!
//! The daemon checks a change with the same function the root unit uses, against the summary
//! the root side publishes (no passphrase in it), so a bad value is a 400 naming the field before
//! anything is written. The passphrase is write-only: the page gets `null` and
//! `wifi_passphrase_set`, never the value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use super::settings::SettingsError;
use crate::system_settings::{self, Outcome, Request, Summary};

/// Where the daemon and the root unit meet, on the image.
#[derive(Debug, Clone)]
pub struct SystemFiles {
    /// The boot config's runtime directory (`/run/pispeaker`): summary and outcome.
    pub out: PathBuf,
    /// The request file in the daemon's state directory.
    pub request: PathBuf,
}

impl SystemFiles {
    /// On the image: beside the boot-config report, and the request in the state directory.
    pub fn for_image(boot_report: &Path, state_dir: &Path) -> Self {
        Self {
            out: boot_report
                .parent()
                .unwrap_or(Path::new(crate::boot_config::DEFAULT_OUT_DIR))
                .to_path_buf(),
            request: state_dir.join(system_settings::REQUEST_FILE),
        }
    }

    fn summary(&self) -> Summary {
        system_settings::read_summary(&self.out).unwrap_or_default()
    }
}

/// A change handed to the root unit: its id and the fields it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub id: String,
    pub fields: Vec<String>,
}

/// Adds the Wi-Fi/SSH values and their locks to the page's view.
pub fn add_to_view(
    files: Option<&SystemFiles>,
    values: &mut Map<String, Value>,
    locked: &mut Map<String, Value>,
) -> bool {
    let summary = files.map(SystemFiles::summary).unwrap_or_default();
    values.insert("wifi_ssid".into(), summary.wifi_ssid.clone().into());
    values.insert("wifi_country".into(), summary.wifi_country.clone().into());
    // Write-only: the page shows an empty field meaning "keep".
    values.insert("wifi_passphrase".into(), Value::Null);
    values.insert(
        "ssh_authorized_key".into(),
        summary.ssh_authorized_key.clone().into(),
    );
    for field in system_settings::FIELDS {
        let why = match files {
            None => Some(system_settings::NOT_MANAGED),
            Some(_) => summary.locked(field),
        };
        if let Some(why) = why {
            locked.insert((*field).to_string(), why.into());
        }
    }
    summary.wifi_passphrase_set
}

/// Checks the Wi-Fi/SSH fields of a change; `Ok(None)` when they change nothing.
pub fn check(
    files: Option<&SystemFiles>,
    object: &Map<String, Value>,
) -> Result<Option<Request>, SettingsError> {
    let to_error = |e: system_settings::FieldError| SettingsError {
        field: e.field,
        message: e.message,
    };
    let changes = system_settings::changes_from_json(object).map_err(to_error)?;
    if changes.is_empty() {
        return Ok(None);
    }
    let Some(files) = files else {
        let field = changes.keys().next().cloned().unwrap_or_default();
        return Err(SettingsError {
            field,
            message: format!("cannot be changed here: {}", system_settings::NOT_MANAGED),
        });
    };
    let summary = files.summary();
    let current = summary.as_stored();
    let next = system_settings::merge(&current, &summary, &changes).map_err(to_error)?;
    if system_settings::changed_fields(&current, &next, &changes).is_empty() {
        return Ok(None);
    }
    Ok(Some(Request {
        id: random_id(),
        changes: only_changed(&current, &next, changes),
    }))
}

/// The request carries only what changes, so an unchanged field the page sends along is never
/// applied twice (nor refused for a lock it does not need).
fn only_changed(
    current: &system_settings::Stored,
    next: &system_settings::Stored,
    changes: BTreeMap<String, Option<String>>,
) -> BTreeMap<String, Option<String>> {
    let changed = system_settings::changed_fields(current, next, &changes);
    changes
        .into_iter()
        .filter(|(k, _)| changed.contains(k))
        .collect()
}

/// Writes the request for the root unit.
pub fn submit(files: &SystemFiles, request: &Request) -> Result<Submitted, SettingsError> {
    system_settings::write_request(&files.request, request).map_err(|e| SettingsError {
        field: String::new(),
        message: format!("cannot write {}: {e}", files.request.display()),
    })?;
    let mut fields: Vec<String> = request.changes.keys().cloned().collect();
    fields.sort();
    Ok(Submitted {
        id: request.id.clone(),
        fields,
    })
}

/// Waits for the root unit's outcome of request `id`, at most `limit`.
pub async fn outcome(files: &SystemFiles, id: &str, limit: Duration) -> Option<Outcome> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(o) = system_settings::read_outcome(&files.out) {
            if o.id.as_deref() == Some(id) {
                return Some(o);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn random_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}
