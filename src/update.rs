//! `pispeaker update FILE|URL`: install a signed update bundle into the other root slot with
//! RAUC, after checking it is one this speaker should take.
//!
//! RAUC does the real work (signature, verity payload, writing the slot, switching with
//! `image/rauc/pispeaker-slot`); this module exists so that a user gets a decision in plain words
//! *before* anything is written: a bundle signed by another key, damaged, for another device or
//! older than what runs is refused with what to do about it. The decision logic is pure
//! (`parse_info`, `decide`, `compare_versions`, `failure_hint`) and unit-tested against output
//! captured from the real rauc 1.8 (`tests/fixtures/rauc/`).
//!
//! A URL goes to rauc as it is. The SD image's rauc is Debian's 1.8-2 rebuilt with streaming
//! (`image/rauc/build-rauc.sh`): it reads the bundle over HTTP range requests without storing
//! it, so the web server must answer range requests, and installing needs the kernel's nbd
//! device. A rauc without streaming (Debian's own package, e.g. on a build machine) downloads into
//! a temporary directory instead (at most `max-bundle-download-size`, 8 MiB by default).
//! `failure_hint` explains the failures of both.

use std::cmp::Ordering;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

/// Where the image installs RAUC's configuration (`image/rauc/system.conf`).
pub const DEFAULT_SYSTEM_CONF: &str = "/etc/rauc/system.conf";

/// The version of this binary, which is the version of the root file system it runs from.
pub const RUNNING_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `pispeaker update` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// A bundle file or an http(s) URL.
    pub source: String,
    /// RAUC's system.conf: the compatible string and the keyring.
    pub conf: PathBuf,
    /// A keyring other than system.conf's (tests, or checking a bundle on a build machine).
    pub keyring: Option<PathBuf>,
    /// Check only; install nothing.
    pub check_only: bool,
    /// The version to compare with (the running one unless a test says otherwise).
    pub running_version: String,
}

/// The parts of `rauc info --output-format=json` the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleInfo {
    pub compatible: String,
    pub version: String,
    pub description: Option<String>,
}

/// Reads `rauc info --output-format=json` (RAUC 1.8 src/main.c info_formatter_json: an object
/// with "compatible", "version", "description", "build", "hooks", "images").
pub fn parse_info(json: &str) -> Result<BundleInfo, String> {
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| format!("rauc info printed something that is not JSON ({e})"))?;
    let text = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let compatible = text("compatible").ok_or("the bundle's manifest has no compatible string")?;
    let version = text("version").ok_or("the bundle's manifest has no version")?;
    Ok(BundleInfo {
        compatible,
        version,
        description: text("description"),
    })
}

/// The `compatible=` of system.conf's `[system]` section (a GLib key file).
pub fn system_compatible(conf: &str) -> Option<String> {
    let mut in_system = false;
    for line in conf.lines().map(str::trim) {
        if line.starts_with('[') {
            in_system = line == "[system]";
        } else if in_system {
            if let Some(value) = line.strip_prefix("compatible=") {
                return Some(value.trim().to_string());
            }
        }
    }
    None
}

/// Compares dotted versions ("1.2.3", "1.2.3-rc1", "1.2.3+git5"): numbers compare as numbers, a
/// pre-release (after `-` or `~`) comes before its release, build metadata (after `+`) is
/// ignored. `None` when either is not such a version.
pub fn compare_versions(a: &str, b: &str) -> Option<Ordering> {
    fn split(v: &str) -> Option<(Vec<u64>, Option<&str>)> {
        let v = v.split('+').next().unwrap_or(v);
        let (release, pre) = match v.find(['-', '~']) {
            Some(at) => (&v[..at], Some(&v[at + 1..])),
            None => (v, None),
        };
        let numbers = release
            .split('.')
            .map(|n| n.parse::<u64>().ok())
            .collect::<Option<Vec<_>>>()?;
        Some((numbers, pre))
    }
    let (mut a_num, a_pre) = split(a)?;
    let (mut b_num, b_pre) = split(b)?;
    // 1.2 == 1.2.0
    let len = a_num.len().max(b_num.len());
    a_num.resize(len, 0);
    b_num.resize(len, 0);
    Some(a_num.cmp(&b_num).then_with(|| match (a_pre, b_pre) {
        (None, None) => Ordering::Equal,
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (Some(x), Some(y)) => x.cmp(y),
    }))
}

/// Whether this bundle may be installed here; the refusal says why and what to do.
pub fn decide(bundle: &BundleInfo, compatible: &str, running: &str) -> Result<(), String> {
    if bundle.compatible != compatible {
        // make-bundle.sh names a bundle after its compatible's architecture (pispeaker-arm64 ->
        // pispeaker-<version>-arm64.raucb).
        let arch = compatible.strip_prefix("pispeaker-").unwrap_or(compatible);
        return Err(format!(
            "this bundle is for '{}', but this speaker is '{compatible}' (another device or architecture); download the pispeaker-<version>-{arch}.raucb bundle",
            bundle.compatible
        ));
    }
    match compare_versions(&bundle.version, running) {
        Some(Ordering::Greater) => Ok(()),
        Some(Ordering::Equal) => Err(format!(
            "this bundle is version {}, which is already running; nothing to do",
            bundle.version
        )),
        Some(Ordering::Less) => Err(format!(
            "this bundle is version {}, older than the running {running}; pispeaker does not go back to an older version (its saved settings may not be readable by it). Use a bundle newer than {running}",
            bundle.version
        )),
        None => Err(format!(
            "cannot compare the bundle's version '{}' with the running '{running}'; the bundle was not made by image/rauc/make-bundle.sh",
            bundle.version
        )),
    }
}

/// What to do about a failure, from rauc's own reason (RAUC 1.8 messages, captured in
/// `tests/fixtures/rauc/`).
pub fn failure_hint(rauc_stderr: &str) -> &'static str {
    let has = |s: &str| rauc_stderr.contains(s);
    if has("signature verification failed") || has("CMS_SignerInfo_verify") {
        "the bundle is not signed by a key this speaker trusts, or its signature was changed. Use an official bundle; a bundle you built yourself must be signed with the key your image was built with"
    } else if has("payload is corrupted")
        || has("Invalid bundle format")
        || has("exceeds bundle size")
        || has("squashfs")
    {
        "the bundle file is damaged or incomplete (an interrupted download?). Download it again and check its size"
    } else if has("'nbd' netlink family") || has("BLK_DEV_NBD") {
        // RAUC 1.8 src/nbd.c netlink_connect: the kernel has no nbd (network block device).
        // Before the mount failure below: an install says "Failed mounting bundle: " first
        // (src/install.c).
        "this kernel has no network block device (nbd), which installing a bundle from a URL needs; the SD image loads it at boot ('modprobe nbd'), or copy the bundle onto the speaker and run 'pispeaker update FILE'"
    } else if has("/dev/mapper/control") || has("Failed mounting bundle") {
        "this kernel cannot mount the verity bundle (it needs device-mapper with dm-verity, loop and squashfs); the SD image's kernel has them, so this is not the speaker's own system"
    } else if has("slot hook") {
        // The bundle's hook (image/rauc/pispeaker-bundle-hook) writes the new slot's boot files;
        // RAUC reports only its exit code, its message goes to the service's log.
        "the update's own install step (writing its boot files to the boot partition) failed, so nothing was switched. Its reason is in the RAUC service's log: 'journalctl -u rauc'"
    } else if has("Compatible mismatch") {
        "the bundle is for another device or architecture; use the bundle of this speaker's image: pispeaker-<version>-armhf.raucb for the 32-bit image, pispeaker-<version>-arm64.raucb for the 64-bit one"
    } else if has("range requests not supported") {
        // RAUC 1.8 src/nbd.c finish_configure: a 200 where a 206 answers its first range request.
        "the web server sends the whole file instead of answering HTTP range requests, which streaming the bundle needs. Serve it from a server that supports them (nginx, Apache, lighttpd and Caddy do for static files), or copy the bundle onto the speaker and run 'pispeaker update FILE'"
    } else if has("max-bundle-download-size") || has("Maximum file size exceeded") {
        "this rauc downloads a URL instead of streaming it, and the bundle is larger than it may download. Copy the bundle onto the speaker (or a USB stick) and run 'pispeaker update FILE'"
    } else if has("Failed to download") || has("Transfer failed") || has("Failed to stream") {
        "the bundle could not be downloaded: check the URL and that the speaker is online"
    } else if has("D-Bus") || has("Error creating proxy") {
        // Before "No such file": a missing D-Bus socket says "No such file or directory" too.
        "the RAUC service is not running; start it with 'systemctl start rauc' and try again"
    } else if has("No such file") {
        "there is no bundle at that path; check it"
    } else if has("already in progress") || has("Already processing") {
        "another update is being installed; wait for it to finish"
    } else {
        "see rauc's message above"
    }
}

/// A source rauc fetches itself rather than a local file.
pub fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// `rauc info` with the options that check a bundle the way an install will.
pub fn info_args(opts: &Options) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![format!("--conf={}", opts.conf.display()).into()];
    if let Some(keyring) = &opts.keyring {
        args.push(format!("--keyring={}", keyring.display()).into());
    }
    args.push("info".into());
    args.push("--output-format=json".into());
    args.push(opts.source.clone().into());
    args
}

/// `rauc install`: the RAUC service does the install with its own system.conf.
pub fn install_args(opts: &Options) -> Vec<OsString> {
    vec!["install".into(), opts.source.clone().into()]
}

/// rauc's reason without its informational chatter (`rauc-Message:` lines, the streaming
/// helper's `rauc-nbd-Message:` lines, curl's verbose
/// `*`/`>`/`<` lines and the request headers after them): the error lines when there are any.
fn reason(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("rauc-Message:")
                && !l.starts_with("rauc-nbd-Message:")
                && !l.starts_with("* ")
                && !l.starts_with("> ")
                && !l.starts_with("< ")
        })
        .collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| {
            [
                "fail",
                "Fail",
                "error",
                "Error",
                "Invalid",
                "No such file",
                "exceeds",
            ]
            .iter()
            .any(|word| l.contains(word))
        })
        .collect();
    if !errors.is_empty() {
        errors.join("\n")
    } else if !lines.is_empty() {
        lines.join("\n")
    } else {
        stderr.trim().to_string()
    }
}

/// Checks the bundle and says whether it fits; `Ok` holds what it is.
pub fn check(opts: &Options) -> Result<BundleInfo, String> {
    let conf = std::fs::read_to_string(&opts.conf).map_err(|e| {
        format!(
            "cannot read RAUC's configuration {} ({e}); this command works on the pispeaker SD image, whose rauc is set up for its A/B slots",
            opts.conf.display()
        )
    })?;
    let compatible = system_compatible(&conf).ok_or_else(|| {
        format!(
            "{} has no compatible= in its [system] section",
            opts.conf.display()
        )
    })?;
    if is_url(&opts.source) {
        eprintln!(
            "update: checking {} (rauc reads it over the network)",
            opts.source
        );
    } else {
        eprintln!("update: checking {}", opts.source);
    }
    let out = Command::new("rauc")
        .args(info_args(opts))
        .output()
        .map_err(|e| format!("cannot run rauc ({e}); install it with 'apt-get install rauc'"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "rauc refused the bundle:\n{}\n=> {}",
            reason(&stderr),
            failure_hint(&stderr)
        ));
    }
    let info = parse_info(&String::from_utf8_lossy(&out.stdout))?;
    if let Some(signer) = stderr
        .lines()
        .find_map(|l| l.split("Verified inline signature by ").nth(1))
    {
        eprintln!("update: signature verified: signed by {signer}");
    }
    decide(&info, &compatible, &opts.running_version)?;
    Ok(info)
}

/// Runs `rauc install`, passing its progress through and keeping its messages for the hint
/// (the RAUC 1.8 client prints progress and `LastError:` on stdout, its own errors on stderr).
fn install(opts: &Options) -> Result<(), String> {
    let mut child = Command::new("rauc")
        .args(install_args(opts))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run rauc ({e}); install it with 'apt-get install rauc'"))?;
    let stderr_reader = child.stderr.take().map(|stderr| {
        std::thread::spawn(move || {
            let mut kept = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                kept.push_str(&line);
                kept.push('\n');
            }
            kept
        })
    });
    let mut messages = String::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            let _ = std::io::stdout().flush();
            messages.push_str(&line);
            messages.push('\n');
        }
    }
    if let Some(reader) = stderr_reader {
        messages.push_str(&reader.join().unwrap_or_default());
    }
    let status = child
        .wait()
        .map_err(|e| format!("lost track of rauc install ({e})"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "the update was not installed ({status}); the running version is untouched.\n=> {}",
            failure_hint(&messages)
        ))
    }
}

/// `pispeaker update`.
pub fn run(opts: &Options) -> ExitCode {
    let info = match check(opts) {
        Ok(info) => info,
        Err(e) => {
            eprintln!("error: update: {e}");
            return ExitCode::from(1);
        }
    };
    eprintln!(
        "update: bundle {} version {} fits this speaker (running {})",
        info.compatible, info.version, opts.running_version
    );
    if opts.check_only {
        println!("ok: {} can be installed", info.version);
        return ExitCode::SUCCESS;
    }
    eprintln!("update: installing into the other slot; the running system is not touched");
    match install(opts) {
        Ok(()) => {
            println!(
                "installed pispeaker {}: it runs after the next reboot ('systemctl reboot'); until then {} keeps running",
                info.version, opts.running_version
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: update: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = include_str!("../tests/fixtures/rauc/info-ok.json");

    fn bundle(compatible: &str, version: &str) -> BundleInfo {
        BundleInfo {
            compatible: compatible.into(),
            version: version.into(),
            description: None,
        }
    }

    #[test]
    fn reads_rauc_info_json() {
        let info = parse_info(INFO).unwrap();
        assert_eq!(info.compatible, "pispeaker-armhf");
        assert_eq!(info.version, "0.2.0");
        assert_eq!(
            info.description.as_deref(),
            Some("pispeaker 0.2.0 for Raspberry Pi (armhf)")
        );
        assert!(parse_info("not json").is_err());
        assert!(parse_info(r#"{"version":"1.0"}"#)
            .unwrap_err()
            .contains("compatible"));
        assert!(parse_info(r#"{"compatible":"x"}"#)
            .unwrap_err()
            .contains("version"));
    }

    #[test]
    fn reads_the_compatible_of_the_system_section_only() {
        let conf = include_str!("../image/rauc/system.conf");
        assert_eq!(system_compatible(conf).as_deref(), Some("pispeaker-armhf"));
        assert_eq!(
            system_compatible("[update]\ncompatible=no\n[system]\n compatible=yes \n"),
            Some("yes".into())
        );
        assert_eq!(system_compatible("[system]\nbootloader=custom\n"), None);
    }

    #[test]
    fn compares_versions() {
        use Ordering::*;
        for (a, b, want) in [
            ("0.2.0", "0.1.0", Greater),
            ("0.10.0", "0.9.9", Greater),
            ("1.2", "1.2.0", Equal),
            ("1.2.3", "1.2.3+git5", Equal),
            ("1.2.3-rc1", "1.2.3", Less),
            ("1.2.3-rc2", "1.2.3-rc1", Greater),
            ("1.2.3~rc1", "1.2.2", Greater),
            ("0.0.9", "0.1.0", Less),
        ] {
            assert_eq!(compare_versions(a, b), Some(want), "{a} vs {b}");
        }
        assert_eq!(compare_versions("abc", "1.0"), None);
        assert_eq!(compare_versions("1.0", ""), None);
    }

    #[test]
    fn decides_with_a_reason() {
        assert_eq!(
            decide(
                &bundle("pispeaker-armhf", "0.2.0"),
                "pispeaker-armhf",
                "0.1.0"
            ),
            Ok(())
        );
        let older = decide(
            &bundle("pispeaker-armhf", "0.0.9"),
            "pispeaker-armhf",
            "0.1.0",
        )
        .unwrap_err();
        assert!(older.contains("older than the running 0.1.0"), "{older}");
        let same = decide(
            &bundle("pispeaker-armhf", "0.1.0"),
            "pispeaker-armhf",
            "0.1.0",
        )
        .unwrap_err();
        assert!(same.contains("already running"), "{same}");
        let arch = decide(
            &bundle("pispeaker-arm64", "9.0.0"),
            "pispeaker-armhf",
            "0.1.0",
        )
        .unwrap_err();
        assert!(arch.contains("another device or architecture"), "{arch}");
        assert!(arch.contains("-armhf.raucb"), "{arch}");
        // A 64-bit speaker is pointed at the arm64 bundle, not the armhf one.
        let on_arm64 = decide(
            &bundle("pispeaker-armhf", "9.0.0"),
            "pispeaker-arm64",
            "0.1.0",
        )
        .unwrap_err();
        assert!(
            on_arm64.contains("pispeaker-<version>-arm64.raucb"),
            "{on_arm64}"
        );
        let odd = decide(
            &bundle("pispeaker-armhf", "nightly"),
            "pispeaker-armhf",
            "0.1.0",
        )
        .unwrap_err();
        assert!(odd.contains("cannot compare"), "{odd}");
    }

    #[test]
    fn explains_rauc_failures_captured_from_rauc_1_8() {
        for (fixture, want) in [
            (
                include_str!("../tests/fixtures/rauc/info-flipped-signature.stderr"),
                "not signed by a key this speaker trusts",
            ),
            (
                include_str!("../tests/fixtures/rauc/info-other-key.stderr"),
                "not signed by a key this speaker trusts",
            ),
            (
                include_str!("../tests/fixtures/rauc/info-truncated.stderr"),
                "damaged or incomplete",
            ),
            (
                include_str!("../tests/fixtures/rauc/extract-flipped-payload.stderr"),
                "damaged or incomplete",
            ),
            (
                include_str!("../tests/fixtures/rauc/info-missing.stderr"),
                "no bundle at that path",
            ),
            (
                include_str!("../tests/fixtures/rauc/info-url-refused.stderr"),
                "could not be downloaded",
            ),
            (
                include_str!("../tests/fixtures/rauc/info-url-stream-refused.stderr"),
                "could not be downloaded",
            ),
            (
                include_str!("../tests/fixtures/rauc/info-url-stream-not-found.stderr"),
                "could not be downloaded",
            ),
            (
                include_str!("../tests/fixtures/rauc/info-url-stream-no-range.stderr"),
                "HTTP range requests",
            ),
            (
                include_str!("../tests/fixtures/rauc/mount-url-no-nbd.stderr"),
                "no network block device (nbd)",
            ),
            (
                include_str!("../tests/fixtures/rauc/install-no-service.stderr"),
                "RAUC service is not running",
            ),
            (
                include_str!("../tests/fixtures/rauc/info-url-too-large.stderr"),
                "run 'pispeaker update FILE'",
            ),
            (
                include_str!("../tests/fixtures/rauc/install-no-dm-verity.stdout"),
                "cannot mount the verity bundle",
            ),
            (
                include_str!("../tests/fixtures/rauc/install-hook-failed.stdout"),
                "journalctl -u rauc",
            ),
        ] {
            assert!(failure_hint(fixture).contains(want), "{fixture}");
        }
        // What an install through the service reports for the same (RAUC 1.8 src/install.c
        // prefixes mount_bundle's error with "Failed mounting bundle: ").
        assert!(failure_hint(
            "Failed mounting bundle: failed to resolve 'nbd' netlink family - BLK_DEV_NBD not enabled in kernel?"
        )
        .contains("no network block device (nbd)"));
        // Only the reason is shown, not rauc's progress chatter.
        let shown = reason(include_str!("../tests/fixtures/rauc/info-other-key.stderr"));
        assert_eq!(
            shown,
            "signature verification failed: Verify error: self-signed certificate"
        );
        let shown = reason(include_str!(
            "../tests/fixtures/rauc/info-url-too-large.stderr"
        ));
        assert_eq!(
            shown,
            "Failed to download bundle http://127.0.0.1:35993/pispeaker-99.0.0-armhf.raucb: Transfer failed: Maximum file size exceeded"
        );
        // The streaming helper's chatter ("request failed ... retrying") is not the reason.
        let shown = reason(include_str!(
            "../tests/fixtures/rauc/info-url-stream-no-range.stderr"
        ));
        assert_eq!(
            shown,
            "Failed to stream bundle http://127.0.0.1:8766/pispeaker-1.0-armhf.raucb: failed to configure streaming: range requests not supported by server"
        );
    }

    #[test]
    fn passes_a_url_to_rauc_as_it_is() {
        let opts = Options {
            source: "https://example.com/pispeaker-0.2.0-armhf.raucb".into(),
            conf: "/etc/rauc/system.conf".into(),
            keyring: Some("/tmp/cert.pem".into()),
            check_only: false,
            running_version: RUNNING_VERSION.into(),
        };
        assert!(is_url(&opts.source));
        assert!(!is_url("/data/pispeaker-0.2.0-armhf.raucb"));
        assert_eq!(
            info_args(&opts),
            [
                "--conf=/etc/rauc/system.conf",
                "--keyring=/tmp/cert.pem",
                "info",
                "--output-format=json",
                "https://example.com/pispeaker-0.2.0-armhf.raucb"
            ]
            .map(OsString::from)
        );
        assert_eq!(
            install_args(&opts),
            ["install", "https://example.com/pispeaker-0.2.0-armhf.raucb"].map(OsString::from)
        );
    }
}
