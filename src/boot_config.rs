//! The SD image's boot-partition settings: `/boot/firmware/pispeaker.toml`.
//!
//! Users of the image never open a shell: they edit one small file on the FAT partition from any
//! computer (speaker name, board, Wi-Fi, hostname, Jellyfin server, SSH). At every boot,
//! `pispeaker boot-config apply` (run by `pispeaker-boot-config.service`, before the network and
//! the speaker) turns it into runtime files under `/run/pispeaker/`, because the root file system
//! is read-only:
//!
//! - `boot.env`: `PISPEAKER_*` variables for `pispeaker.service` (the normal config precedence
//!   applies: they override `/etc/pispeaker/config.toml`);
//! - `wpa_supplicant-wlan0.conf` (0600): Wi-Fi country, SSID and passphrase;
//! - `ssh-enabled` + `authorized_keys`: only when SSH is switched on *and* a key is given (root
//!   has no password, so SSH without a key could never be used);
//! - `boot-config.json`: what was applied and every problem, for the status page;
//! - with `--system-store` (the image): Wi-Fi and SSH set from the web app fill in what the file
//!   leaves unset, and `system.json` tells the web app what is in effect (`system_settings`).
//!
//! A bad value never stops the speaker: it is reported (journal and status page) and that one
//! setting falls back to its default. Because the file is read again at every boot, later edits
//! apply on the next boot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;
use toml::Value;

use crate::{board, state};

/// Where the image mounts the FAT partition's settings file.
pub const DEFAULT_SOURCE: &str = "/boot/firmware/pispeaker.toml";
/// The settings file's name on the boot partition.
pub const DEFAULT_FILE_NAME: &str = "pispeaker.toml";
/// Where the runtime files go (a tmpfs: nothing here outlives the boot).
pub const DEFAULT_OUT_DIR: &str = "/run/pispeaker";
/// The report file inside the output directory, read by the status page.
pub const REPORT_FILE: &str = "boot-config.json";
/// wpa_supplicant's configuration for wlan0 in the output directory (0600: the passphrase).
pub const WPA_FILE: &str = "wpa_supplicant-wlan0.conf";
/// Present while SSH is on (`ssh.service` has it as a condition).
pub const SSH_MARKER: &str = "ssh-enabled";

/// Every key the file may hold, with what it is for (also the message for an unknown key).
const KEYS: &[(&str, &str)] = &[
    ("name", "the speaker's name in the Spotify app and Jellyfin"),
    (
        "board",
        "the sound output preset (`pispeaker boards` lists them)",
    ),
    ("hostname", "the network name of the Pi"),
    (
        "wifi_country",
        "two-letter country code for Wi-Fi regulations",
    ),
    ("wifi_ssid", "the Wi-Fi network's name"),
    ("wifi_passphrase", "the Wi-Fi password (8-63 characters)"),
    (
        "jellyfin_server",
        "Jellyfin server URL, e.g. http://jellyfin.local:8096",
    ),
    ("ssh", "true to switch the SSH server on"),
    (
        "ssh_authorized_key",
        "the public key allowed to log in as root over SSH",
    ),
    (
        "admin_password",
        "the web app's password (hashed and taken off the card at boot)",
    ),
];

/// One setting that could not be used, with the reason and what happens instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

/// The validated settings; `None` means "not set, or invalid": the default applies.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BootSettings {
    pub name: Option<String>,
    pub board: Option<String>,
    pub hostname: Option<String>,
    pub wifi: Option<Wifi>,
    pub jellyfin_server: Option<String>,
    /// The authorized key when SSH is on (SSH is only switched on with a key).
    pub ssh_key: Option<String>,
}

/// Wi-Fi settings: the passphrase is a secret and only ever goes to a 0600 file.
#[derive(Clone, PartialEq, Eq)]
pub struct Wifi {
    pub country: Option<String>,
    pub ssid: String,
    /// `None` for an open network.
    pub passphrase: Option<String>,
}

impl std::fmt::Debug for Wifi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wifi")
            .field("country", &self.country)
            .field("ssid", &self.ssid)
            .field("passphrase", &self.passphrase.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// Parses and validates the file's text. Never fails: every problem is collected instead.
pub fn parse(text: &str) -> (BootSettings, Vec<Problem>) {
    let mut problems = Vec::new();
    let table = match text.parse::<toml::Table>() {
        Ok(table) => table,
        Err(e) => {
            let message = match e.span() {
                Some(span) => {
                    let (line, col) = line_col(text, span.start);
                    format!(
                        "not valid TOML at line {line}, column {col}: {}; all settings use their defaults",
                        e.message()
                    )
                }
                None => format!(
                    "not valid TOML: {}; all settings use their defaults",
                    e.message()
                ),
            };
            problems.push(Problem {
                key: String::new(),
                message,
            });
            return (BootSettings::default(), problems);
        }
    };
    let mut p = |key: &str, message: String| {
        problems.push(Problem {
            key: key.to_string(),
            message,
        })
    };
    for key in table.keys() {
        if !KEYS.iter().any(|(known, _)| known == key) {
            let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
            p(
                key,
                format!("unknown setting (known: {}); ignored", known.join(", ")),
            );
        }
    }
    let text_of = |key: &str, p: &mut dyn FnMut(&str, String)| -> Option<String> {
        match table.get(key) {
            None => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(s)) => Some(s.trim().to_string()),
            Some(other) => {
                p(
                    key,
                    format!(
                        "must be a quoted string, not {}; using the default",
                        other.type_str()
                    ),
                );
                None
            }
        }
    };

    let mut settings = BootSettings::default();
    let ok_or_report = |key: &str,
                        value: Option<String>,
                        check: fn(&str) -> Result<String, String>,
                        p: &mut dyn FnMut(&str, String)| {
        value.and_then(|v| match check(&v) {
            Ok(v) => Some(v),
            Err(why) => {
                p(key, format!("{v:?} {why}; using the default"));
                None
            }
        })
    };
    let v = text_of("name", &mut p);
    settings.name = ok_or_report("name", v, check_name, &mut p);
    let v = text_of("board", &mut p);
    settings.board = ok_or_report("board", v, check_board, &mut p);
    let v = text_of("hostname", &mut p);
    settings.hostname = ok_or_report("hostname", v, check_hostname, &mut p);
    let v = text_of("jellyfin_server", &mut p);
    settings.jellyfin_server = ok_or_report("jellyfin_server", v, check_server, &mut p);

    // Wi-Fi: the three keys belong together.
    let country = text_of("wifi_country", &mut p);
    let country = ok_or_report("wifi_country", country, check_country, &mut p);
    let ssid = text_of("wifi_ssid", &mut p);
    let ssid = ok_or_report("wifi_ssid", ssid, check_ssid, &mut p);
    // The passphrase is never echoed into a message.
    let passphrase = match text_of("wifi_passphrase", &mut p) {
        Some(pass) => match check_passphrase(&pass) {
            Ok(()) => Some(pass),
            Err(why) => {
                p("wifi_passphrase", format!("{why}; Wi-Fi stays off"));
                None
            }
        },
        None => None,
    };
    let passphrase_was_set = table
        .get("wifi_passphrase")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.trim().is_empty());
    settings.wifi = match ssid {
        Some(ssid) if passphrase.is_some() || !passphrase_was_set => {
            if country.is_none() {
                p(
                    "wifi_country",
                    "not set: Wi-Fi uses the world-wide channel set (set it, e.g. \"GB\", for all local channels)".into(),
                );
            }
            Some(Wifi {
                country,
                ssid,
                passphrase,
            })
        }
        Some(_) => None, // the passphrase problem is already reported
        None => {
            if passphrase_was_set {
                p("wifi_ssid", "not set, so the passphrase is unused".into());
            }
            None
        }
    };

    // SSH: on only with a key.
    let ssh_on = match table.get("ssh") {
        None => false,
        Some(Value::Boolean(b)) => *b,
        Some(other) => {
            p(
                "ssh",
                format!(
                    "must be true or false (without quotes), not {}; SSH stays off",
                    other.type_str()
                ),
            );
            false
        }
    };
    let key = text_of("ssh_authorized_key", &mut p);
    let key = ok_or_report("ssh_authorized_key", key, check_ssh_key, &mut p);
    settings.ssh_key = match (ssh_on, key) {
        (true, Some(key)) => Some(key),
        (true, None) => {
            p(
                "ssh",
                "true, but there is no valid ssh_authorized_key: root has no password, so SSH stays off"
                    .into(),
            );
            None
        }
        (false, _) => None,
    };
    (settings, problems)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn check_name(v: &str) -> Result<String, String> {
    if v.chars().count() > 64 {
        return Err("is longer than 64 characters".into());
    }
    if v.chars().any(char::is_control) {
        return Err("contains control characters".into());
    }
    Ok(v.to_string())
}

fn check_board(v: &str) -> Result<String, String> {
    board::find(v).map(|_| v.to_string()).map_err(|_| {
        format!(
            "is not a known board (known: {})",
            board::names().join(", ")
        )
    })
}

/// RFC 1123 host name label: what DHCP and mDNS accept everywhere.
fn check_hostname(v: &str) -> Result<String, String> {
    let v = v.to_ascii_lowercase();
    let ok = (1..=63).contains(&v.len())
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(v)
    } else {
        Err(
            "is not a host name (1-63 letters, digits and '-', not starting or ending with '-')"
                .into(),
        )
    }
}

fn check_server(v: &str) -> Result<String, String> {
    match url::Url::parse(v) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {
            Ok(v.trim_end_matches('/').to_string())
        }
        Ok(_) => Err("is not an http:// or https:// URL with a host".into()),
        Err(e) => Err(format!("is not a URL ({e})")),
    }
}

pub(crate) fn check_country(v: &str) -> Result<String, String> {
    let upper = v.to_ascii_uppercase();
    if upper.len() == 2 && upper.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(upper)
    } else {
        Err("is not a two-letter country code (ISO 3166-1, e.g. \"US\", \"DE\")".into())
    }
}

pub(crate) fn check_ssid(v: &str) -> Result<String, String> {
    if v.len() > 32 {
        Err("is longer than 32 bytes, the Wi-Fi limit".into())
    } else if v.chars().any(char::is_control) {
        Err("contains control characters".into())
    } else {
        Ok(v.to_string())
    }
}

pub(crate) fn check_passphrase(v: &str) -> Result<(), String> {
    let hex_psk = v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit());
    if hex_psk || ((8..=63).contains(&v.len()) && v.bytes().all(|b| (32..127).contains(&b))) {
        Ok(())
    } else {
        Err(format!(
            "has {} characters: a WPA passphrase is 8-63 printable ASCII characters (or 64 hex digits)",
            v.chars().count()
        ))
    }
}

pub(crate) fn check_ssh_key(v: &str) -> Result<String, String> {
    let mut parts = v.split_whitespace();
    let kind = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let known_kind = kind.starts_with("ssh-")
        || kind.starts_with("ecdsa-")
        || kind.starts_with("sk-ssh-")
        || kind.starts_with("sk-ecdsa-");
    if known_kind && body.len() > 16 && !v.contains('\n') {
        Ok(v.to_string())
    } else {
        Err("is not an OpenSSH public key line (\"ssh-ed25519 AAAA... you@laptop\")".into())
    }
}

/// What `apply` wrote, for the caller's log line.
#[derive(Debug)]
pub struct Applied {
    pub settings: BootSettings,
    pub problems: Vec<Problem>,
}

/// Reads `source` (a missing file means "all defaults") and writes the runtime files to `out`.
/// Only an unwritable output directory is an error.
pub fn apply(source: &Path, out: &Path) -> io::Result<Applied> {
    apply_with_store(source, out, None)
}

/// [`apply`], with the Wi-Fi and SSH settings made in the web app (`store`, on the data
/// partition) filling in what the boot partition leaves unset; then also writes the summary the
/// web app reads ([`crate::system_settings::SUMMARY_FILE`]).
pub fn apply_with_store(source: &Path, out: &Path, store: Option<&Path>) -> io::Result<Applied> {
    let (settings, mut problems) = read_source(source);
    std::fs::create_dir_all(out)?;

    state::write_atomic_with_mode(&out.join("boot.env"), env_file(&settings).as_bytes(), 0o644)?;

    let merged = match store {
        Some(store) => {
            let (stored, problem) = crate::system_settings::read_store(store);
            problems.extend(problem.map(|message| Problem {
                key: String::new(),
                message,
            }));
            let merged = crate::system_settings::merge_boot_and_store(&settings, &stored);
            write_system_files(&merged.settings, out)?;
            crate::system_settings::write_summary(out, &merged)?;
            merged.settings
        }
        None => {
            write_system_files(&settings, out)?;
            settings.clone()
        }
    };

    if let Some(hostname) = &settings.hostname {
        if let Err(e) = set_hostname(hostname) {
            problems.push(Problem {
                key: "hostname".into(),
                message: format!("could not be set ({e}); the image's default stays"),
            });
        }
    }

    let report = Report {
        source: source.display().to_string(),
        found: source.exists(),
        applied: applied_summary(&merged),
        problems: problems.clone(),
    };
    let json = serde_json::to_vec_pretty(&report).map_err(io::Error::other)?;
    state::write_atomic_with_mode(&out.join(REPORT_FILE), &json, 0o644)?;
    Ok(Applied { settings, problems })
}

/// The boot partition's settings and their problems; a missing file means all defaults.
pub fn read_source(source: &Path) -> (BootSettings, Vec<Problem>) {
    match std::fs::read(source) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => parse(&text),
            Err(_) => (
                BootSettings::default(),
                vec![Problem {
                    key: String::new(),
                    message: "is not UTF-8 text; all settings use their defaults".into(),
                }],
            ),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => (BootSettings::default(), Vec::new()),
        Err(e) => (
            BootSettings::default(),
            vec![Problem {
                key: String::new(),
                message: format!("cannot be read ({e}); all settings use their defaults"),
            }],
        ),
    }
}

/// The Wi-Fi and SSH runtime files for `settings` (removed when unset).
pub fn write_system_files(settings: &BootSettings, out: &Path) -> io::Result<()> {
    let wpa = out.join(WPA_FILE);
    match &settings.wifi {
        Some(wifi) => state::write_secret_atomic(&wpa, wpa_conf(wifi).as_bytes())?,
        None => remove_if_present(&wpa)?,
    }
    let ssh_marker = out.join(SSH_MARKER);
    let keys = out.join("authorized_keys");
    match &settings.ssh_key {
        Some(key) => {
            state::write_atomic_with_mode(&keys, format!("{key}\n").as_bytes(), 0o644)?;
            state::write_atomic_with_mode(&ssh_marker, b"", 0o644)?;
        }
        None => {
            remove_if_present(&ssh_marker)?;
            remove_if_present(&keys)?;
        }
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Sets the kernel host name for this boot (the root file system is read-only, so
/// `/etc/hostname` keeps the image's default and this runs at every boot). Only as root; a
/// test or a user running the tool by hand leaves the host name alone.
fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    // SAFETY: the pointer and length describe `name`'s bytes, which live across the call.
    let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// systemd `EnvironmentFile=` syntax: double-quoted, with `\` and `"` escaped.
fn env_file(s: &BootSettings) -> String {
    let mut out = String::from("# Written at boot by pispeaker-boot-config.service from the boot partition's pispeaker.toml.\n");
    let mut var = |k: &str, v: &str| {
        let escaped = v.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(out, "{k}=\"{escaped}\"");
    };
    if let Some(name) = &s.name {
        var("PISPEAKER_NAME", name);
    }
    if let Some(board) = &s.board {
        var("PISPEAKER_BOARD", board);
    }
    if let Some(server) = &s.jellyfin_server {
        var("PISPEAKER_JELLYFIN_SERVER", server);
        var("PISPEAKER_JELLYFIN_ENABLED", "true");
    }
    out
}

/// wpa_supplicant's format: strings are double-quoted and may not contain `"` or newlines
/// unescaped, so they are written as hex (`ssid=6869…`), which takes any byte.
fn wpa_conf(w: &Wifi) -> String {
    let mut out =
        String::from("ctrl_interface=DIR=/run/wpa_supplicant GROUP=netdev\nupdate_config=0\n");
    if let Some(country) = &w.country {
        let _ = writeln!(out, "country={country}");
    }
    out.push_str("network={\n");
    let _ = writeln!(out, "    ssid={}", hex::encode(w.ssid.as_bytes()));
    out.push_str("    scan_ssid=1\n");
    match &w.passphrase {
        Some(p) if p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit()) => {
            let _ = writeln!(out, "    psk={p}");
        }
        Some(p) => {
            // A quoted passphrase: check_passphrase allows printable ASCII, so only `"` and `\`
            // need care; wpa_supplicant reads the quoted form literally up to the last quote.
            let _ = writeln!(out, "    psk=\"{p}\"");
        }
        None => out.push_str("    key_mgmt=NONE\n"),
    }
    out.push_str("}\n");
    out
}

/// What the status page shows: no secrets (no passphrase, no key).
fn applied_summary(s: &BootSettings) -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    if let Some(v) = &s.name {
        m.insert("name", v.clone());
    }
    if let Some(v) = &s.board {
        m.insert("board", v.clone());
    }
    if let Some(v) = &s.hostname {
        m.insert("hostname", v.clone());
    }
    if let Some(w) = &s.wifi {
        m.insert("wifi_ssid", w.ssid.clone());
        if let Some(c) = &w.country {
            m.insert("wifi_country", c.clone());
        }
    }
    if let Some(v) = &s.jellyfin_server {
        m.insert("jellyfin_server", v.clone());
    }
    m.insert(
        "ssh",
        if s.ssh_key.is_some() { "on" } else { "off" }.to_string(),
    );
    m
}

#[derive(Debug, Serialize)]
struct Report {
    source: String,
    found: bool,
    applied: BTreeMap<&'static str, String>,
    problems: Vec<Problem>,
}

/// Reads a report written by `apply`, for the status page. `None` when there is none (not the
/// image, or the boot-config service did not run).
pub fn read_report(path: &Path) -> Option<serde_json::Value> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The report path inside the default output directory.
pub fn default_report_path() -> PathBuf {
    Path::new(DEFAULT_OUT_DIR).join(REPORT_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "Kitchen"
board = "usb-dac"
hostname = "Kitchen-Pi"
wifi_country = "de"
wifi_ssid = "Home \"5G\""
wifi_passphrase = "correct horse"
jellyfin_server = "http://jellyfin.local:8096/"
ssh = true
ssh_authorized_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIexample me@laptop"
"#;

    #[test]
    fn a_good_file_is_applied_without_problems() {
        let (s, problems) = parse(GOOD);
        assert_eq!(problems, vec![]);
        assert_eq!(s.name.as_deref(), Some("Kitchen"));
        assert_eq!(s.board.as_deref(), Some("usb-dac"));
        assert_eq!(s.hostname.as_deref(), Some("kitchen-pi"));
        let wifi = s.wifi.clone().expect("wifi");
        assert_eq!(wifi.country.as_deref(), Some("DE"));
        assert_eq!(wifi.ssid, "Home \"5G\"");
        assert_eq!(
            s.jellyfin_server.as_deref(),
            Some("http://jellyfin.local:8096")
        );
        assert!(s
            .ssh_key
            .as_deref()
            .is_some_and(|k| k.starts_with("ssh-ed25519 ")));
    }

    #[test]
    fn each_bad_value_is_reported_and_only_that_setting_falls_back() {
        let text = r#"
name = "Living room"
board = "hifiberry-dac-plus-typo"
hostname = "-bad-"
wifi_country = "XYZ"
jellyfin_server = "ftp://x"
ssh = "yes"
volume = 3
"#;
        let (s, problems) = parse(text);
        assert_eq!(
            s.name.as_deref(),
            Some("Living room"),
            "good values still apply"
        );
        assert_eq!(s.board, None);
        assert_eq!(s.hostname, None);
        assert_eq!(s.jellyfin_server, None);
        assert_eq!(s.ssh_key, None);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "board",
            "hostname",
            "wifi_country",
            "jellyfin_server",
            "ssh",
            "volume",
        ] {
            assert!(keys.contains(&key), "{key} not reported in {problems:?}");
        }
        let board = problems
            .iter()
            .find(|p| p.key == "board")
            .map(|p| &p.message);
        assert!(
            board.is_some_and(|m| m.contains("usb-dac")),
            "known boards listed: {board:?}"
        );
    }

    #[test]
    fn a_syntax_error_names_line_and_column_and_keeps_all_defaults() {
        let (s, problems) = parse("name = \"ok\"\nboard = usb-dac\n");
        assert_eq!(s, BootSettings::default());
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("line 2"), "{problems:?}");
    }

    #[test]
    fn the_passphrase_is_never_echoed() {
        let (s, problems) = parse("wifi_ssid = \"net\"\nwifi_passphrase = \"short\"\n");
        assert_eq!(s.wifi, None, "a bad passphrase keeps Wi-Fi off");
        let all = format!("{problems:?}");
        assert!(!all.contains("short"), "{all}");
        assert!(all.contains("8-63"), "{all}");
        let (s, _) = parse(GOOD);
        assert!(!format!("{s:?}").contains("correct horse"));
    }

    #[test]
    fn ssh_needs_a_key() {
        let (s, problems) = parse("ssh = true\n");
        assert_eq!(s.ssh_key, None);
        assert!(problems
            .iter()
            .any(|p| p.key == "ssh" && p.message.contains("stays off")));
        let (s, problems) =
            parse("ssh = false\nssh_authorized_key = \"ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB x\"\n");
        assert_eq!((s.ssh_key, problems), (None, vec![]));
    }

    #[test]
    fn an_open_network_has_no_passphrase() {
        let (s, _) = parse("wifi_ssid = \"cafe\"\nwifi_country = \"fr\"\n");
        let conf = wpa_conf(&s.wifi.expect("wifi"));
        assert!(conf.contains("key_mgmt=NONE"), "{conf}");
        assert!(conf.contains("country=FR"), "{conf}");
        assert!(
            conf.contains(&format!("ssid={}", hex::encode("cafe"))),
            "{conf}"
        );
    }

    #[test]
    fn apply_writes_runtime_files_and_a_report_without_secrets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("pispeaker.toml");
        std::fs::write(&source, GOOD).expect("write");
        let out = dir.path().join("run");
        let applied = apply(&source, &out).expect("apply");
        assert!(applied.problems.is_empty(), "{:?}", applied.problems);

        let env = std::fs::read_to_string(out.join("boot.env")).expect("env");
        assert!(env.contains("PISPEAKER_NAME=\"Kitchen\""), "{env}");
        assert!(env.contains("PISPEAKER_BOARD=\"usb-dac\""), "{env}");
        assert!(env.contains("PISPEAKER_JELLYFIN_SERVER=\"http://jellyfin.local:8096\""));

        use std::os::unix::fs::PermissionsExt;
        let wpa = out.join("wpa_supplicant-wlan0.conf");
        let mode = std::fs::metadata(&wpa).expect("wpa").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the Wi-Fi passphrase file is private");
        assert!(std::fs::read_to_string(&wpa)
            .expect("wpa")
            .contains("psk=\"correct horse\""));
        assert!(out.join("ssh-enabled").exists());

        let report = std::fs::read_to_string(out.join(REPORT_FILE)).expect("report");
        assert!(!report.contains("correct horse"), "{report}");
        assert!(!report.contains("AAAAC3Nza"), "{report}");
        let json = read_report(&out.join(REPORT_FILE)).expect("json");
        assert_eq!(json["applied"]["ssh"], "on");

        // A later edit switches SSH and Wi-Fi off again at the next boot.
        std::fs::write(&source, "name = \"Kitchen\"\n").expect("write");
        apply(&source, &out).expect("apply again");
        assert!(!out.join("ssh-enabled").exists());
        assert!(!wpa.exists());
    }

    #[test]
    fn a_missing_file_means_defaults_and_no_problems() {
        let dir = tempfile::tempdir().expect("tempdir");
        let applied = apply(&dir.path().join("absent.toml"), dir.path()).expect("apply");
        assert_eq!(applied.settings, BootSettings::default());
        assert!(applied.problems.is_empty());
        let json = read_report(&dir.path().join(REPORT_FILE)).expect("json");
        assert_eq!(json["found"], false);
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../image/boot/pispeaker.toml");
        let (_, problems) = parse(text);
        assert_eq!(problems, vec![]);
    }
}
