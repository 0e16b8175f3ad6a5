//! Update bundles with the real `rauc` (Debian bookworm's 1.8): `image/rauc/make-bundle.sh`
//! builds a signed verity bundle from a small ext4 image that verifies against its certificate,
//! and RAUC refuses a bundle with a flipped byte, one signed by another key and a truncated one,
//! each with its own reason. Skipped (with a message) only where rauc is not installed; CI
//! installs it (scripts/test.sh).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn have_rauc() -> bool {
    let found = Command::new("rauc")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
        && Command::new("mksquashfs").arg("-version").output().is_ok();
    if !found {
        eprintln!("SKIPPED: rauc or mksquashfs is not installed (apt-get install rauc squashfs-tools openssl)");
    }
    found
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn check(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    out
}

/// A small ext4 image with incompressible content (a verity bundle's squashfs must be larger
/// than one 4 KiB block, RAUC 1.8 src/bundle.c "squashfs size ... must be larger than 4096").
fn rootfs(dir: &Path) -> PathBuf {
    let content = dir.join("rootfs-content");
    fs::create_dir_all(content.join("etc")).unwrap();
    fs::write(content.join("etc/pispeaker-version"), "test\n").unwrap();
    let mut noise = vec![0u8; 64 * 1024];
    let mut x: u32 = 0x1234_5678;
    for b in noise.iter_mut() {
        // xorshift: incompressible enough for squashfs, and reproducible.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    fs::write(content.join("noise"), &noise).unwrap();
    let image = dir.join("rootfs.ext4");
    check(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "testroot", "-d"])
            .arg(&content)
            .arg(&image)
            .arg("2M")
            .output()
            .unwrap(),
        "mkfs.ext4",
    );
    image
}

/// A self-signed key pair, as a release's would be.
fn key_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key.pem"));
    let cert = dir.join(format!("{name}.cert.pem"));
    check(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
            ])
            .args(["-subj", &format!("/CN={name}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap(),
        "openssl req",
    );
    (key, cert)
}

fn make_bundle(dir: &Path, version: &str, out: &str, keys: Option<(&Path, &Path)>) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg(repo().join("image/rauc/make-bundle.sh"))
        .arg(rootfs(dir))
        .arg(version)
        .arg(dir.join(out))
        .env("PISPEAKER_KEYS_DIR", dir.join("keys"));
    if let Some((key, cert)) = keys {
        cmd.arg("--key").arg(key).arg("--cert").arg(cert);
    }
    cmd.output().unwrap()
}

fn rauc_info(bundle: &Path, cert: &Path) -> Output {
    Command::new("rauc")
        .arg("info")
        .arg("--output-format=json")
        .arg(format!("--keyring={}", cert.display()))
        .arg(format!(
            "--conf={}",
            repo().join("image/rauc/system.conf").display()
        ))
        .arg(bundle)
        .output()
        .unwrap()
}

/// `rauc extract` checks the payload against the signed verity hash tree (RAUC 1.8
/// src/bundle.c check_bundle_payload), which `rauc info` does not read; `rauc install` does the
/// same check (or dm-verity when streaming).
fn rauc_extract(bundle: &Path, cert: &Path, into: &Path) -> Output {
    Command::new("rauc")
        .arg("extract")
        .arg(format!("--keyring={}", cert.display()))
        .arg(bundle)
        .arg(into)
        .output()
        .unwrap()
}

#[test]
fn a_bundle_verifies_against_its_certificate() {
    if !have_rauc() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = key_pair(dir.path(), "release");
    let out = check(
        make_bundle(dir.path(), "1.2.3", "out", Some((&key, &cert))),
        "make-bundle",
    );
    let bundle = dir.path().join("out/pispeaker-1.2.3-armhf.raucb");
    assert!(bundle.is_file(), "{}", String::from_utf8_lossy(&out.stdout));
    println!(
        "bundle size for a 2 MiB root image: {} bytes",
        bundle.metadata().unwrap().len()
    );
    assert!(
        !stderr(&out).contains("DEVELOPMENT"),
        "a given key is not the development key"
    );

    // Against system.conf (so it parses) and the certificate.
    let info = check(rauc_info(&bundle, &cert), "rauc info");
    let json: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(json["compatible"], "pispeaker-armhf");
    assert_eq!(json["version"], "1.2.3");
    assert_eq!(json["images"][0]["rootfs"]["filename"], "rootfs.ext4");
    assert!(stderr(&info).contains("Verified inline signature by 'CN = release'"));

    // The verity format, and a payload that matches its hash tree.
    let plain = Command::new("rauc")
        .args(["info", "--no-verify"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&plain.stdout).contains("Bundle Format: \tverity"));
    check(
        rauc_extract(&bundle, &cert, &dir.path().join("extracted")),
        "rauc extract",
    );
    assert_eq!(
        fs::read(dir.path().join("extracted/rootfs.ext4")).unwrap(),
        fs::read(dir.path().join("rootfs.ext4")).unwrap()
    );
    // The hook that writes the new slot's boot files, run after the root image is written.
    assert_eq!(
        json["images"][0]["rootfs"]["hooks"],
        serde_json::json!(["post-install"])
    );
    assert_eq!(
        fs::read(dir.path().join("extracted/hook")).unwrap(),
        fs::read(repo().join("image/rauc/pispeaker-bundle-hook")).unwrap()
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(dir.path().join("extracted/hook"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "the hook is not executable");
}

#[test]
fn without_a_key_it_makes_and_says_it_uses_a_development_key() {
    if !have_rauc() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = check(make_bundle(dir.path(), "0.9.0", "out", None), "make-bundle");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(said.contains("made a DEVELOPMENT key pair"), "{said}");
    assert!(said.contains("signing with the DEVELOPMENT key"), "{said}");
    let key = dir.path().join("keys/development.key.pem");
    let cert = dir.path().join("keys/development.cert.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key.metadata().unwrap().permissions().mode() & 0o077, 0);
    let bundle = dir.path().join("out/pispeaker-0.9.0-armhf.raucb");
    check(rauc_info(&bundle, &cert), "rauc info");

    // The second bundle reuses the pair instead of making a new one.
    let out = check(make_bundle(dir.path(), "0.9.1", "out", None), "make-bundle");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("made a DEVELOPMENT key pair"));
    check(
        rauc_info(&dir.path().join("out/pispeaker-0.9.1-armhf.raucb"), &cert),
        "rauc info",
    );
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let script = repo().join("image/rauc/make-bundle.sh");
    let image = dir.path().join("rootfs.ext4");
    fs::write(&image, b"x").unwrap();
    for (args, why) in [
        (
            vec!["missing.ext4", "1.0.0", "out"],
            "no root file system image",
        ),
        (
            vec![image.to_str().unwrap(), "v1", "out"],
            "must look like 1.2.3",
        ),
        (
            vec![image.to_str().unwrap(), "1.0.0", "out", "--key", "k.pem"],
            "--key and --cert go together",
        ),
        (vec!["only-one"], "usage"),
    ] {
        let out = Command::new("sh")
            .arg(&script)
            .args(&args)
            .current_dir(dir.path())
            .env("PISPEAKER_KEYS_DIR", dir.path().join("keys"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr(&out).contains(why), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn tampered_foreign_and_truncated_bundles_are_refused() {
    if !have_rauc() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = key_pair(dir.path(), "release");
    check(
        make_bundle(dir.path(), "1.2.3", "out", Some((&key, &cert))),
        "make-bundle",
    );
    let bundle = fs::read(dir.path().join("out/pispeaker-1.2.3-armhf.raucb")).unwrap();
    let write = |name: &str, data: &[u8]| {
        let path = dir.path().join(name);
        fs::write(&path, data).unwrap();
        path
    };

    // A flipped byte in the payload (the squashfs at the start): the signature still verifies
    // (it covers the manifest, which holds the verity root hash), the payload check does not.
    let mut flipped = bundle.clone();
    flipped[8192] ^= 0x5a;
    let path = write("flipped-payload.raucb", &flipped);
    let out = rauc_extract(&path, &cert, &dir.path().join("x1"));
    assert!(!out.status.success(), "a corrupted payload was accepted");
    assert!(
        stderr(&out).contains("bundle payload is corrupted"),
        "{}",
        stderr(&out)
    );

    // A flipped byte in the signature (the CMS blob before the 8-byte size at the end).
    let mut flipped = bundle.clone();
    let at = bundle.len() - 100;
    flipped[at] ^= 0x5a;
    let path = write("flipped-signature.raucb", &flipped);
    let out = rauc_info(&path, &cert);
    assert!(!out.status.success(), "a corrupted signature was accepted");
    assert!(
        stderr(&out).contains("verification failure") || stderr(&out).contains("signature"),
        "{}",
        stderr(&out)
    );

    // Signed by another key: its certificate is not in the keyring.
    let (other_key, other_cert) = key_pair(dir.path(), "someone-else");
    check(
        make_bundle(
            dir.path(),
            "1.2.3",
            "other",
            Some((&other_key, &other_cert)),
        ),
        "make-bundle",
    );
    let out = rauc_info(&dir.path().join("other/pispeaker-1.2.3-armhf.raucb"), &cert);
    assert!(!out.status.success(), "a foreign signature was accepted");
    assert!(
        stderr(&out).contains("signature verification failed"),
        "{}",
        stderr(&out)
    );

    // Truncated: half a download.
    let path = write("truncated.raucb", &bundle[..bundle.len() / 2]);
    let out = rauc_info(&path, &cert);
    assert!(!out.status.success(), "a truncated bundle was accepted");
    assert!(
        stderr(&out).contains("Invalid bundle format")
            || stderr(&out).contains("exceeds bundle size"),
        "{}",
        stderr(&out)
    );
}

/// `pispeaker update --check-only`, the check every install goes through first, on real bundles
/// against the image's system.conf.
fn update_check(bundle: &Path, cert: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pispeaker"))
        .args(["update", "--check-only", "--rauc-conf"])
        .arg(repo().join("image/rauc/system.conf"))
        .arg("--keyring")
        .arg(cert)
        .arg(bundle)
        .output()
        .unwrap()
}

/// A bundle with another compatible string, built with rauc directly (make-bundle.sh only makes
/// armhf ones), as a bundle for another device would be.
fn foreign_bundle(dir: &Path, key: &Path, cert: &Path) -> PathBuf {
    let content = dir.join("arm64-content");
    fs::create_dir_all(&content).unwrap();
    fs::copy(rootfs(dir), content.join("rootfs.ext4")).unwrap();
    fs::write(
        content.join("manifest.raucm"),
        "[update]\ncompatible=pispeaker-arm64\nversion=99.0.0\n\n[bundle]\nformat=verity\n\n[image.rootfs]\nfilename=rootfs.ext4\n",
    )
    .unwrap();
    let bundle = dir.join("pispeaker-99.0.0-arm64.raucb");
    check(
        Command::new("rauc")
            .arg("bundle")
            .arg(format!("--cert={}", cert.display()))
            .arg(format!("--key={}", key.display()))
            .arg(&content)
            .arg(&bundle)
            .output()
            .unwrap(),
        "rauc bundle",
    );
    bundle
}

#[test]
fn update_check_accepts_a_newer_signed_bundle_and_refuses_the_rest_with_what_to_do() {
    if !have_rauc() {
        return;
    }
    let running = env!("CARGO_PKG_VERSION");
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = key_pair(dir.path(), "release");
    check(
        make_bundle(dir.path(), "99.0.0", "new", Some((&key, &cert))),
        "make-bundle",
    );
    let newer = dir.path().join("new/pispeaker-99.0.0-armhf.raucb");
    let out = check(update_check(&newer, &cert), "pispeaker update --check-only");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok: 99.0.0 can be installed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr(&out).contains("signature verified: signed by 'CN = release'"));
    assert!(stderr(&out).contains(&format!("running {running}")));

    let refused = |bundle: &Path, why: &str| {
        let out = update_check(bundle, &cert);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: {}",
            bundle.display(),
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(why),
            "{}: want {why:?} in:\n{}",
            bundle.display(),
            stderr(&out)
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("ok:"));
    };

    // Tampered: a byte of the signature flipped.
    let mut bytes = fs::read(&newer).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x5a;
    let tampered = dir.path().join("tampered.raucb");
    fs::write(&tampered, &bytes).unwrap();
    refused(&tampered, "not signed by a key this speaker trusts");

    // Signed by someone else.
    let (other_key, other_cert) = key_pair(dir.path(), "someone-else");
    check(
        make_bundle(
            dir.path(),
            "99.0.0",
            "other",
            Some((&other_key, &other_cert)),
        ),
        "make-bundle",
    );
    refused(
        &dir.path().join("other/pispeaker-99.0.0-armhf.raucb"),
        "signature verification failed",
    );

    // Truncated.
    let bytes = fs::read(&newer).unwrap();
    let truncated = dir.path().join("truncated.raucb");
    fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    refused(&truncated, "damaged or incomplete");

    // Older than what runs.
    check(
        make_bundle(dir.path(), "0.0.1", "old", Some((&key, &cert))),
        "make-bundle",
    );
    refused(
        &dir.path().join("old/pispeaker-0.0.1-armhf.raucb"),
        &format!("older than the running {running}"),
    );

    // For another device or architecture.
    refused(
        &foreign_bundle(dir.path(), &key, &cert),
        "another device or architecture",
    );
}

/// Serves `body` at any path over HTTP/1.0 (one response per connection), for rauc's curl.
fn serve(body: Vec<u8>) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if line == "\r\n" {
                    break;
                }
                line.clear();
            }
            let head = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    addr
}

#[test]
fn update_check_passes_a_url_to_rauc() {
    if !have_rauc() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = key_pair(dir.path(), "release");
    check(
        make_bundle(dir.path(), "99.0.0", "new", Some((&key, &cert))),
        "make-bundle",
    );
    let bytes = fs::read(dir.path().join("new/pispeaker-99.0.0-armhf.raucb")).unwrap();
    let size = bytes.len();
    let url = format!("http://{}/pispeaker-99.0.0-armhf.raucb", serve(bytes));
    let run = |conf: &Path| {
        Command::new(env!("CARGO_BIN_EXE_pispeaker"))
            .args(["update", "--check-only", "--rauc-conf"])
            .arg(conf)
            .arg("--keyring")
            .arg(&cert)
            .arg(&url)
            .output()
            .unwrap()
    };
    let out = check(
        run(&repo().join("image/rauc/system.conf")),
        "update --check-only URL",
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: 99.0.0 can be installed"));
    assert!(stderr(&out).contains("rauc reads it over the network"));

    // Debian's rauc 1.8 downloads a URL (no streaming), up to max-bundle-download-size: a
    // bundle larger than that is refused with what to do instead.
    let conf = fs::read_to_string(repo().join("image/rauc/system.conf"))
        .unwrap()
        .replace(
            "[system]\n",
            &format!("[system]\nmax-bundle-download-size={}\n", size / 2),
        );
    let small = dir.path().join("small-download.conf");
    fs::write(&small, conf).unwrap();
    let out = run(&small);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    eprintln!("{}", stderr(&out));
    assert!(
        stderr(&out).contains("run 'pispeaker update FILE'"),
        "{}",
        stderr(&out)
    );
}
