//! Settings changed from the browser or a script: validated with the config file's own rules,
//! written atomically into the file the running system reads, never half-applied.
//!
//! That file is `web-settings.toml` in the state directory (the daemon's own, writable under the
//! hardened unit; the data partition on the image), a config layer between the config file and
//! the environment (`config::load`). The config file itself stays the administrator's.
//!
//! Validation is the config loader's: each changed field is parsed as a one-key TOML layer
//! (so a bad value gets the same words as in the file), and the whole new file is parsed again
//! before it is written, so what is on disk always loads. Edits go through `toml_edit`, so the
//! user's comments and layout survive. Settings that a flag, the environment or the image's boot
//! partition sets win over the file (the config precedence), so they are refused here with where
//! they come from instead of being written to no effect.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::config::{parse_layer, Config, ConfigArgs};
use crate::state;

/// One editable setting: its API field, its key in the config file, and its `PISPEAKER_*`
/// variable (also what the image's boot partition sets through `boot.env`).
struct Field {
    api: &'static str,
    /// Dotted path in the config file.
    key: &'static str,
    env: &'static str,
}

const FIELDS: &[Field] = &[
    Field {
        api: "name",
        key: "name",
        env: "PISPEAKER_NAME",
    },
    Field {
        api: "board",
        key: "board",
        env: "PISPEAKER_BOARD",
    },
    Field {
        api: "volume_ctrl",
        key: "volume-ctrl",
        env: "PISPEAKER_VOLUME_CTRL",
    },
    Field {
        api: "jellyfin_server",
        key: "jellyfin.server",
        env: "PISPEAKER_JELLYFIN_SERVER",
    },
    Field {
        api: "jellyfin_enabled",
        key: "jellyfin.enabled",
        env: "PISPEAKER_JELLYFIN_ENABLED",
    },
];

/// A refused change: the API field and the reason (the config loader's words).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SettingsError {
    pub field: String,
    pub message: String,
}

impl SettingsError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// Where the settings live and which ones are fixed elsewhere.
#[derive(Debug, Clone)]
pub struct SettingsFile {
    pub path: PathBuf,
    /// API field → where it is set instead ("the command line", "the environment", ...).
    pub locked: BTreeMap<&'static str, String>,
    /// Wi-Fi and SSH: on the SD image, where the root unit takes requests; `None` elsewhere
    /// (the operating system's own tools manage them).
    pub system: Option<super::system::SystemFiles>,
}

impl SettingsFile {
    /// The web settings file in the state directory `cache`, and what overrides it.
    /// `boot_report` (the image's boot-config report) set: the `PISPEAKER_*` variables come from
    /// the boot partition's `pispeaker.toml`, and Wi-Fi and SSH are managed here.
    pub fn from_args(args: &ConfigArgs, cache: &Path, boot_report: Option<&Path>) -> Self {
        let on_image = boot_report.is_some();
        let path = cache.join(crate::config::WEB_SETTINGS_FILE);
        let given: [(&str, bool); 5] = [
            ("name", args.name.is_some()),
            ("board", args.board.is_some()),
            ("volume_ctrl", args.volume_ctrl.is_some()),
            ("jellyfin_server", args.jellyfin_server.is_some()),
            ("jellyfin_enabled", args.jellyfin_enabled.is_some()),
        ];
        let mut locked = BTreeMap::new();
        for (field, (api, set)) in FIELDS.iter().zip(given) {
            if !set {
                continue;
            }
            let from = if std::env::var_os(field.env).is_none() {
                format!(
                    "set by a command-line flag (--{})",
                    field.key.replace('.', "-")
                )
            } else if on_image {
                "set in the boot partition's pispeaker.toml (edit it there, or remove it to change it here)".to_string()
            } else {
                format!("set by the environment ({})", field.env)
            };
            locked.insert(api, from);
        }
        let system = boot_report.map(|r| super::system::SystemFiles::for_image(r, cache));
        Self {
            path,
            locked,
            system,
        }
    }

    /// The current values for the page (from the effective config) and what is locked.
    pub fn view(&self, config: &Config) -> Value {
        let mut locked: serde_json::Map<String, Value> = self
            .locked
            .iter()
            .map(|(k, v)| ((*k).to_string(), Value::String(v.clone())))
            .collect();
        let mut values = serde_json::Map::new();
        values.insert("name".into(), config.name.clone().into());
        values.insert("board".into(), config.board.clone().into());
        values.insert("volume_ctrl".into(), serde_json::json!(config.volume_ctrl));
        values.insert(
            "jellyfin_server".into(),
            config.jellyfin.server.clone().into(),
        );
        values.insert("jellyfin_enabled".into(), config.jellyfin.enabled.into());
        let passphrase_set =
            super::system::add_to_view(self.system.as_ref(), &mut values, &mut locked);
        serde_json::json!({
            "values": values,
            "wifi_passphrase_set": passphrase_set,
            "locked": locked,
            "file": self.path,
            "boards": crate::board::presets().iter().map(|p| p.name.to_string()).collect::<Vec<_>>(),
        })
    }

    /// Validates every field of `changes` (a JSON object of API fields), then writes the file
    /// once. On any refusal nothing is written. Returns the fields that changed.
    pub fn apply(&self, changes: &Value) -> Result<Vec<String>, SettingsError> {
        self.apply_with_system(changes).map(|(changed, _)| changed)
    }

    /// [`Self::apply`], and the Wi-Fi/SSH fields checked with the rest (a bad one refuses the
    /// whole change) and handed to the root unit after the file is written.
    pub fn apply_with_system(
        &self,
        changes: &Value,
    ) -> Result<(Vec<String>, Option<super::system::Submitted>), SettingsError> {
        let object = changes
            .as_object()
            .ok_or_else(|| SettingsError::new("", "expected a JSON object of settings"))?;
        let system_request = super::system::check(self.system.as_ref(), object)?;
        let current = read_text(&self.path)?;
        let mut doc: toml_edit::DocumentMut = current.parse().map_err(|e| {
            SettingsError::new(
                "",
                format!(
                    "{} does not parse ({e}); fix it by hand first",
                    self.path.display()
                ),
            )
        })?;
        let mut changed = Vec::new();
        for (api, value) in object {
            if crate::system_settings::FIELDS.contains(&api.as_str()) {
                continue;
            }
            let field = FIELDS.iter().find(|f| f.api == api).ok_or_else(|| {
                SettingsError::new(api, "is not a setting that can be changed here")
            })?;
            if let Some(from) = self.locked.get(field.api) {
                return Err(SettingsError::new(
                    api,
                    format!("cannot be changed here: {from}"),
                ));
            }
            let item = to_toml(api, value)?;
            // The loader's own check, on this key alone: the same message as in the file.
            let probe = one_key_layer(field.key, &item);
            parse_layer(&probe, Path::new(api))
                .map_err(|e| SettingsError::new(api, loader_message(&e.to_string())))?;
            set_key(&mut doc, field.key, item);
            changed.push(api.clone());
        }
        let text = doc.to_string();
        // The whole file, as the daemon will read it at the next start.
        parse_layer(&text, &self.path).map_err(|e| SettingsError::new("", e.to_string()))?;
        if text != current {
            state::write_atomic_with_mode(&self.path, text.as_bytes(), 0o644).map_err(|e| {
                SettingsError::new("", format!("cannot write {}: {e}", self.path.display()))
            })?;
        }
        let submitted = match (&self.system, &system_request) {
            (Some(files), Some(request)) => Some(super::system::submit(files, request)?),
            _ => None,
        };
        Ok((changed, submitted))
    }
}

fn read_text(path: &Path) -> Result<String, SettingsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(SettingsError::new(
            "",
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

/// A JSON value as a TOML value: strings, booleans, integers; `null` clears the key.
fn to_toml(api: &str, value: &Value) -> Result<Option<toml_edit::Value>, SettingsError> {
    Ok(Some(match value {
        Value::Null => return Ok(None),
        Value::String(s) => toml_edit::Value::from(s.as_str()),
        Value::Bool(b) => toml_edit::Value::from(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml_edit::Value::from(i),
            None => {
                return Err(SettingsError::new(
                    api,
                    format!("{n} is not a whole number"),
                ))
            }
        },
        _ => {
            return Err(SettingsError::new(
                api,
                "must be a string, a number or true/false",
            ))
        }
    }))
}

/// `key = value` (or `[table]\nkey = value`) for the loader's check of one key.
fn one_key_layer(key: &str, item: &Option<toml_edit::Value>) -> String {
    let Some(value) = item else {
        return String::new();
    };
    match key.split_once('.') {
        Some((table, leaf)) => format!("[{table}]\n{leaf} = {value}\n"),
        None => format!("{key} = {value}\n"),
    }
}

/// The loader's message without the `origin:line:col: key '…': ` prefix (the field is named
/// separately).
fn loader_message(full: &str) -> String {
    match full.find("': ") {
        Some(i) => full[i + 3..].to_string(),
        None => full.to_string(),
    }
}

fn set_key(doc: &mut toml_edit::DocumentMut, key: &str, value: Option<toml_edit::Value>) {
    let (table, leaf) = match key.split_once('.') {
        Some((table, leaf)) => {
            if !doc.contains_table(table) {
                doc.insert(table, toml_edit::table());
            }
            match doc.get_mut(table).and_then(toml_edit::Item::as_table_mut) {
                Some(t) => (t, leaf),
                None => return,
            }
        }
        None => (doc.as_table_mut(), key),
    };
    match value {
        Some(v) => {
            // Keep the decor (comments) of an existing key.
            match table.get_mut(leaf).and_then(toml_edit::Item::as_value_mut) {
                Some(old) => {
                    let decor = old.decor().clone();
                    *old = v;
                    *old.decor_mut() = decor;
                }
                None => {
                    table.insert(leaf, toml_edit::value(v));
                }
            }
        }
        None => {
            table.remove(leaf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::json;

    fn file(dir: &Path, text: &str) -> SettingsFile {
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        SettingsFile {
            path,
            locked: BTreeMap::new(),
            system: None,
        }
    }

    fn load(path: &Path) -> Config {
        let layer = parse_layer(&std::fs::read_to_string(path).unwrap(), path).unwrap();
        let mut c = Config::default();
        c.apply(&layer);
        c
    }

    #[test]
    fn a_good_change_keeps_comments_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(
            dir.path(),
            "# the kitchen speaker\nname = \"Old\" # shown in the app\n\n[status]\nlisten = \"0.0.0.0:7070\"\n",
        );
        let changed = f
            .apply(&json!({"name": " New ", "jellyfin_server": "http://jf.local:8096/", "jellyfin_enabled": true}))
            .unwrap();
        assert_eq!(changed.len(), 3);
        let text = std::fs::read_to_string(&f.path).unwrap();
        assert!(text.contains("# the kitchen speaker"), "{text}");
        assert!(text.contains("# shown in the app"), "{text}");
        let c = load(&f.path);
        assert_eq!(c.name, "New");
        assert_eq!(c.jellyfin.server.as_deref(), Some("http://jf.local:8096"));
        assert!(c.jellyfin.enabled);
        assert_eq!(c.status.listen, "0.0.0.0:7070");
    }

    #[test]
    fn a_bad_value_names_the_field_with_the_loaders_words_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), "name = \"Old\"\n");
        let err = f
            .apply(&json!({"name": "Fine", "jellyfin_server": "jellyfin.local"}))
            .unwrap_err();
        assert_eq!(err.field, "jellyfin_server");
        assert!(
            err.message
                .contains("is not an http:// or https:// server URL"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(&f.path).unwrap(),
            "name = \"Old\"\n"
        );
        let err = f.apply(&json!({"board": "toaster"})).unwrap_err();
        assert_eq!(err.field, "board");
        let err = f.apply(&json!({"volume_ctrl": "loud"})).unwrap_err();
        assert_eq!(err.field, "volume_ctrl");
        let err = f.apply(&json!({"cache": "/tmp"})).unwrap_err();
        assert_eq!(err.field, "cache");
        let err = f.apply(&json!({"name": ["x"]})).unwrap_err();
        assert_eq!(err.field, "name");
        assert_eq!(
            std::fs::read_to_string(&f.path).unwrap(),
            "name = \"Old\"\n"
        );
    }

    #[test]
    fn a_locked_setting_says_where_it_comes_from() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = file(dir.path(), "");
        f.locked
            .insert("name", "set by the environment (PISPEAKER_NAME)".into());
        let err = f.apply(&json!({"name": "X"})).unwrap_err();
        assert_eq!(err.field, "name");
        assert!(err.message.contains("PISPEAKER_NAME"), "{err}");
        let view = f.view(&Config::default());
        assert_eq!(
            view["locked"]["name"],
            "set by the environment (PISPEAKER_NAME)"
        );
    }

    /// Random valid and invalid inputs, one after another: after each, the file parses and every
    /// field holds either the value just sent (accepted) or the one before (refused).
    #[test]
    fn property_the_file_always_loads_with_the_new_or_the_old_value() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), "# mine\nname = \"Start\"\n");
        let mut rng = StdRng::seed_from_u64(15);
        let names = [
            "Kitchen",
            "  ",
            "Bad\"quote",
            "é日本",
            "x\ny",
            "",
            "Living room",
        ];
        let long = "n".repeat(65);
        let servers = [
            "http://jf:8096",
            "ftp://x",
            "jellyfin",
            "https://a.b/base/",
            "",
        ];
        let curves = ["log", "cubic", "linear", "fixed", "loud", "LOG"];
        let boards: Vec<String> = crate::board::presets()
            .iter()
            .map(|p| p.name.to_string())
            .chain(["nope".to_string()])
            .collect();
        let mut expected = load(&f.path);
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..300 {
            let mut change = serde_json::Map::new();
            for _ in 0..rng.random_range(1..=3) {
                let (k, v) = match rng.random_range(0..6) {
                    0 => ("name", json!(names[rng.random_range(0..names.len())])),
                    1 => ("name", json!(long)),
                    2 => (
                        "jellyfin_server",
                        json!(servers[rng.random_range(0..servers.len())]),
                    ),
                    3 => (
                        "volume_ctrl",
                        json!(curves[rng.random_range(0..curves.len())]),
                    ),
                    4 => ("board", json!(boards[rng.random_range(0..boards.len())])),
                    _ => (
                        "jellyfin_enabled",
                        match rng.random_range(0..3) {
                            0 => json!(true),
                            1 => json!(false),
                            _ => json!("yes"),
                        },
                    ),
                };
                change.insert(k.into(), v);
            }
            let before = expected.clone();
            let result = f.apply(&Value::Object(change.clone()));
            let now = load(&f.path);
            match result {
                Ok(_) => {
                    accepted += 1;
                    if let Some(v) = change.get("name") {
                        assert_eq!(now.name, v.as_str().unwrap().trim(), "{change:?}");
                    }
                    if let Some(v) = change.get("volume_ctrl") {
                        assert_eq!(json!(now.volume_ctrl), *v, "{change:?}");
                    }
                    if let Some(v) = change.get("jellyfin_enabled") {
                        assert_eq!(json!(now.jellyfin.enabled), *v);
                    }
                    if let Some(v) = change.get("board") {
                        assert_eq!(now.board.as_deref(), v.as_str());
                    }
                    if let Some(v) = change.get("jellyfin_server") {
                        assert_eq!(
                            now.jellyfin.server.as_deref(),
                            Some(v.as_str().unwrap().trim_end_matches('/'))
                        );
                    }
                    expected = now;
                }
                Err(e) => {
                    refused += 1;
                    assert!(change.contains_key(&e.field), "{e} for {change:?}");
                    assert_eq!(now, before, "refused {change:?} but the file changed");
                }
            }
        }
        assert!(
            accepted > 30 && refused > 30,
            "{accepted} accepted, {refused} refused"
        );
        assert!(std::fs::read_to_string(&f.path)
            .unwrap()
            .starts_with("# mine\n"));
    }
}
