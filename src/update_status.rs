//! What the status page shows about updates: the running version, the other slot's version and
//! the last update's result, from `rauc status --detailed --output-format=json`.
//!
//! Separate from `update` (which installs) because this is read by the daemon, once at start:
//! slots only change with an install, and an install takes effect at the next boot, when the
//! daemon starts again. The interpretation is pure and tested against output captured from the
//! real RAUC 1.8 service (`tests/fixtures/rauc/status-*.json`).

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};

/// What the daemon read at start. A process-wide cell rather than one more parameter through the
/// status server's layers: it is written once, at start, and never changes until the next boot.
static CURRENT: OnceLock<Value> = OnceLock::new();

/// Makes `summary` the page's `update` object (the first call wins).
pub fn publish(summary: Value) {
    let _ = CURRENT.set(summary);
}

/// The page's `update` object, once the daemon has read it.
pub fn current() -> Option<&'static Value> {
    CURRENT.get()
}

/// One slot as RAUC 1.8 reports it (src/main.c r_status_formatter_json: "slots" is an array of
/// one-key objects, slot name → fields; "slot_status" only with --detailed).
struct Slot<'a> {
    name: &'a str,
    fields: &'a Value,
}

impl Slot<'_> {
    fn bootname(&self) -> Option<&str> {
        self.fields["bootname"].as_str()
    }
    fn version(&self) -> Option<&str> {
        self.fields["slot_status"]["bundle"]["version"].as_str()
    }
    fn installed_at(&self) -> Option<&str> {
        self.fields["slot_status"]["installed"]["timestamp"].as_str()
    }
}

/// The status page's `update` object, from `rauc status --detailed --output-format=json`;
/// `running` is this binary's version, shown when the booted slot was flashed, not installed.
pub fn summarize(rauc_status: &str, running: &str) -> Result<Value, String> {
    let status: Value = serde_json::from_str(rauc_status)
        .map_err(|e| format!("rauc status printed something that is not JSON ({e})"))?;
    let slots: Vec<Slot> = status["slots"]
        .as_array()
        .ok_or("rauc status has no slots")?
        .iter()
        .filter_map(|entry| entry.as_object())
        .flat_map(|object| object.iter())
        .map(|(name, fields)| Slot { name, fields })
        .filter(|slot| slot.bootname().is_some())
        .collect();
    let booted_name = status["booted"].as_str().unwrap_or_default();
    let booted = slots
        .iter()
        .find(|s| s.bootname() == Some(booted_name))
        .ok_or_else(|| format!("rauc says slot '{booted_name}' booted, which is not a slot"))?;
    let other = slots.iter().find(|s| s.name != booted.name);
    let primary = slots
        .iter()
        .find(|s| Some(s.name) == status["boot_primary"].as_str());
    // The last update is the slot installed most recently (RFC 3339 UTC times sort as text).
    let last = slots
        .iter()
        .filter(|s| s.installed_at().is_some())
        .max_by_key(|s| s.installed_at());
    let last_update = last.map(|slot| {
        let result = match slot.fields["slot_status"]["status"].as_str() {
            Some("ok") | None => {
                if slot.name == booted.name {
                    "running".to_string()
                } else if slot.fields["boot_status"] == "bad" {
                    "rolled back: it did not become ready, so the speaker returned to the other slot"
                        .to_string()
                } else if primary.map(|p| p.name) == Some(slot.name) {
                    "installed; runs after the next reboot".to_string()
                } else {
                    "installed, but not selected to boot".to_string()
                }
            }
            Some(other) => format!("install failed ({other})"),
        };
        json!({
            "version": slot.version(),
            "slot": slot.bootname(),
            "installed_at": slot.installed_at(),
            "result": result,
        })
    });
    Ok(json!({
        "running_version": booted.version().unwrap_or(running),
        "booted_slot": booted.bootname(),
        "other_slot": other.and_then(Slot::bootname),
        "other_version": other.and_then(Slot::version),
        "other_boot_status": other.map(|s| &s.fields["boot_status"]),
        "next_boot_slot": primary.and_then(Slot::bootname),
        "last_update": last_update,
    }))
}

/// Asks the RAUC service, with a deadline; `None` (and a log line) when it cannot answer, so
/// the page simply has no update section.
pub async fn read() -> Option<Value> {
    let run = tokio::process::Command::new("rauc")
        .args(["status", "--detailed", "--output-format=json"])
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(Duration::from_secs(20), run).await {
        Ok(Ok(out)) if out.status.success() => out,
        Ok(Ok(out)) => {
            log::warn!(
                "update status: rauc status failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Ok(Err(e)) => {
            log::warn!("update status: cannot run rauc ({e})");
            return None;
        }
        Err(_) => {
            log::warn!("update status: rauc status did not answer within 20 s");
            return None;
        }
    };
    match summarize(
        &String::from_utf8_lossy(&out.stdout),
        env!("CARGO_PKG_VERSION"),
    ) {
        Ok(value) => Some(value),
        Err(e) => {
            log::warn!("update status: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_the_reboot_the_new_slot_is_next() {
        let v = summarize(
            include_str!("../tests/fixtures/rauc/status-after-install.json"),
            "0.1.0",
        )
        .unwrap();
        assert_eq!(
            v["running_version"], "0.1.0",
            "flashed slot: the binary's version"
        );
        assert_eq!(v["booted_slot"], "A");
        assert_eq!(v["other_slot"], "B");
        assert_eq!(v["other_version"], "0.3.0");
        assert_eq!(v["next_boot_slot"], "B");
        assert_eq!(v["last_update"]["version"], "0.3.0");
        assert_eq!(v["last_update"]["installed_at"], "2026-12-04T09:43:44Z");
        assert_eq!(
            v["last_update"]["result"],
            "installed; runs after the next reboot"
        );
    }

    #[test]
    fn after_the_reboot_it_is_running() {
        for fixture in [
            include_str!("../tests/fixtures/rauc/status-after-reboot.json"),
            include_str!("../tests/fixtures/rauc/status-marked-good.json"),
        ] {
            let v = summarize(fixture, "0.1.0").unwrap();
            assert_eq!(
                v["running_version"], "0.3.0",
                "the installed slot's version"
            );
            assert_eq!(v["booted_slot"], "B");
            assert_eq!(v["other_slot"], "A");
            assert_eq!(v["other_version"], Value::Null, "A was flashed");
            assert_eq!(v["last_update"]["result"], "running");
        }
    }

    #[test]
    fn a_slot_marked_bad_after_the_update_is_a_rollback() {
        // The after-install sample as the next boot would see it once the initramfs gave up on
        // B: A booted and primary again, B bad.
        let mut status: Value = serde_json::from_str(include_str!(
            "../tests/fixtures/rauc/status-after-install.json"
        ))
        .unwrap();
        status["boot_primary"] = json!("rootfs.0");
        status["slots"][0]["rootfs.1"]["boot_status"] = json!("bad");
        let v = summarize(&status.to_string(), "0.1.0").unwrap();
        assert_eq!(v["booted_slot"], "A");
        assert_eq!(v["other_boot_status"], "bad");
        assert!(v["last_update"]["result"]
            .as_str()
            .unwrap()
            .starts_with("rolled back"));

        status["slots"][0]["rootfs.1"]["slot_status"]["status"] = json!("failed");
        let v = summarize(&status.to_string(), "0.1.0").unwrap();
        assert_eq!(v["last_update"]["result"], "install failed (failed)");
    }

    #[test]
    fn no_update_yet_and_garbage() {
        let mut status: Value = serde_json::from_str(include_str!(
            "../tests/fixtures/rauc/status-after-install.json"
        ))
        .unwrap();
        status["slots"][0]["rootfs.1"]["slot_status"] = json!({"bundle": {"compatible": null}});
        let v = summarize(&status.to_string(), "0.1.0").unwrap();
        assert_eq!(v["last_update"], Value::Null);
        assert_eq!(v["other_version"], Value::Null);
        assert!(summarize("nope", "0.1.0").is_err());
        assert!(summarize(r#"{"booted":"C","slots":[]}"#, "0.1.0").is_err());
    }
}
