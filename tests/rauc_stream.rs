//! Updating from a URL streams the bundle: the image's rauc (Debian's 1.8-2 rebuilt with
//! streaming by `image/rauc/build-rauc.sh`; here the same build for the host's architecture)
//! reads a bundle larger than Debian's download cap (`max-bundle-download-size`, 8 MiB) through
//! HTTP range requests, takes a few kilobytes of it and stores nothing in its temporary
//! directory; a server that does not answer range requests is refused with what to do.
//!
//! `rauc info` reads only the signature and manifest at the bundle's end (RAUC 1.8 src/bundle.c
//! `check_bundle` → `read_signature` over the helper's socket, `r_nbd_read`): no nbd device, so
//! it runs on a host without the nbd module (this one has none). `rauc install` then reads the
//! payload through the kernel's nbd device, which only the emulator or a Pi can show.
//!
//! Needs the streaming rauc at `$PISPEAKER_STREAMING_RAUC` (scripts/test.sh builds it with
//! `image/rauc/build-rauc.sh` and sets it); skipped with a message without it, except in CI.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

/// Debian's default `max-bundle-download-size` (RAUC 1.8 include/config_file.h
/// `DEFAULT_MAX_BUNDLE_DOWNLOAD_SIZE`, 8 MiB): the most the non-streaming rauc downloads.
const OLD_DOWNLOAD_CAP: u64 = 8 * 1024 * 1024;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn streaming_rauc() -> Option<PathBuf> {
    match std::env::var_os("PISPEAKER_STREAMING_RAUC") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "PISPEAKER_STREAMING_RAUC={} is not a file",
                path.display()
            );
            Some(path)
        }
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run this test: scripts/test.sh builds the streaming rauc and sets PISPEAKER_STREAMING_RAUC"
            );
            eprintln!(
                "SKIPPED: no streaming rauc. Build it with: bash image/rauc/build-rauc.sh amd64 \"$(dpkg-query -W -f='${{source:Version}}' rauc)\" image/cache target/rauc-streaming/rauc; then PISPEAKER_STREAMING_RAUC=target/rauc-streaming/rauc"
            );
            None
        }
    }
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

/// A bundle larger than the old download cap: an ext4 root holding 10 MiB of incompressible
/// bytes (squashfs cannot shrink them), signed by a fresh key.
fn large_bundle(dir: &Path) -> (PathBuf, PathBuf) {
    let content = dir.join("rootfs-content");
    fs::create_dir_all(content.join("etc")).unwrap();
    fs::write(content.join("etc/pispeaker-version"), "99.0.0\n").unwrap();
    let mut noise = vec![0u8; 10 * 1024 * 1024];
    let mut x: u32 = 0x9e37_79b9;
    for b in noise.iter_mut() {
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
            .arg("16M")
            .output()
            .unwrap(),
        "mkfs.ext4",
    );
    let key = dir.join("release.key.pem");
    let cert = dir.join("release.cert.pem");
    check(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
            ])
            .args(["-subj", "/CN=release"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap(),
        "openssl req",
    );
    check(
        Command::new("sh")
            .arg(repo().join("image/rauc/make-bundle.sh"))
            .arg(&image)
            .arg("99.0.0")
            .arg(dir.join("out"))
            .arg("--key")
            .arg(&key)
            .arg("--cert")
            .arg(&cert)
            .output()
            .unwrap(),
        "make-bundle",
    );
    (dir.join("out/pispeaker-99.0.0-armhf.raucb"), cert)
}

/// One HTTP request as the server saw it: its Range header and the body bytes it sent.
#[derive(Debug, Clone)]
struct Served {
    range: Option<String>,
    bytes: usize,
}

/// Serves `body` at any path, one request per connection (`Connection: close`; curl opens the
/// next). With `ranges`, a `Range: bytes=FIRST-LAST` request gets `206 Partial Content` with
/// `Content-Range: bytes FIRST-LAST/LENGTH` (RFC 7233 sections 2.1, 4.1 and 4.2); that is what
/// RAUC's streaming helper asks for and requires (RAUC 1.8 src/nbd.c: `start_configure` asks
/// for "0-3" and `header_cb` reads the total size from the Content-Range reply, `finish_configure`
/// refuses anything but 206, `start_read` asks for each block it needs). Without `ranges` the
/// whole body with `200 OK`, as a server that ignores Range does (RFC 7233 section 3.1 allows it;
/// `python3 -m http.server` is one).
fn serve(body: Vec<u8>, ranges: bool) -> (SocketAddr, Arc<Mutex<Vec<Served>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut range = None;
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("range") {
                        range = Some(value.trim().to_string());
                    }
                }
                line.clear();
            }
            let len = body.len();
            let span = range
                .as_deref()
                .filter(|_| ranges)
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.split_once('-'))
                .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
                .filter(|&(first, last)| first <= last && first < len)
                .map(|(first, last)| (first, last.min(len - 1)));
            let (head, part) = match span {
                Some((first, last)) => (
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {first}-{last}/{len}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        last - first + 1
                    ),
                    &body[first..=last],
                ),
                None => (
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                    ),
                    &body[..],
                ),
            };
            let _ = stream.write_all(head.as_bytes());
            // A client that gives up early (RAUC refusing a 200) closes the connection.
            let sent = stream.write_all(part).map(|_| part.len()).unwrap_or(0);
            seen.lock().unwrap().push(Served { range, bytes: sent });
        }
    });
    (addr, log)
}

fn pispeaker_check_only(rauc: &Path, cert: &Path, url: &str, dir: &Path) -> Output {
    // `pispeaker update` runs the `rauc` on PATH: the streaming one, as on the image.
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let link = bin.join("rauc");
    if !link.exists() {
        std::os::unix::fs::symlink(rauc, &link).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new(env!("CARGO_BIN_EXE_pispeaker"))
        .args(["update", "--check-only", "--rauc-conf"])
        .arg(repo().join("image/rauc/system.conf"))
        .arg("--keyring")
        .arg(cert)
        .arg(url)
        .env("PATH", path)
        .output()
        .unwrap()
}

#[test]
fn a_bundle_larger_than_the_old_download_cap_is_streamed_not_stored() {
    let Some(rauc) = streaming_rauc() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (bundle, cert) = large_bundle(dir.path());
    let body = fs::read(&bundle).unwrap();
    let size = body.len() as u64;
    assert!(size > OLD_DOWNLOAD_CAP, "the bundle is only {size} bytes");
    let (addr, served) = serve(body, true);
    let url = format!("http://{addr}/pispeaker-99.0.0-armhf.raucb");

    // RAUC's temporary directory (GLib's g_get_tmp_dir: $TMPDIR), where the non-streaming rauc
    // downloads a URL to (src/bundle.c check_bundle, "download.raucb").
    let tmp = dir.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let out = check(
        Command::new(&rauc)
            .arg(format!("--keyring={}", cert.display()))
            .arg(format!(
                "--conf={}",
                repo().join("image/rauc/system.conf").display()
            ))
            .args(["info", "--output-format=json"])
            .arg(&url)
            .env("TMPDIR", &tmp)
            .output()
            .unwrap(),
        "rauc info URL",
    );
    assert!(
        stderr(&out).contains("Remote URI detected, streaming bundle"),
        "{}",
        stderr(&out)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["version"], "99.0.0");
    assert_eq!(info["compatible"], "pispeaker-armhf");

    let requests = served.lock().unwrap().clone();
    let total: usize = requests.iter().map(|r| r.bytes).sum();
    eprintln!(
        "streamed rauc info of a {size}-byte bundle: {} range requests, {total} bytes read ({:?})",
        requests.len(),
        requests.iter().map(|r| r.range.clone()).collect::<Vec<_>>()
    );
    assert!(
        requests.iter().all(|r| r.range.is_some()),
        "a request without Range: {requests:?}"
    );
    assert_eq!(requests[0].range.as_deref(), Some("bytes=0-3"));
    // The signature and manifest at the end, not the payload.
    assert!((total as u64) < size / 100, "{total} of {size} bytes read");
    let left: Vec<_> = fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "rauc left files in TMPDIR: {left:?}");

    // `pispeaker update --check-only URL` with this rauc, as on the image.
    let out = pispeaker_check_only(&rauc, &cert, &url, dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("ok: 99.0.0 can be installed"),
        "{text}\n{}",
        stderr(&out)
    );
}

#[test]
fn a_server_without_range_requests_is_refused_with_what_to_do() {
    let Some(rauc) = streaming_rauc() else { return };
    let dir = tempfile::tempdir().unwrap();
    // RAUC refuses at its first request (a 200 answering "Range: bytes=0-3"), before it reads a
    // byte of the bundle or checks a key: any content and any certificate do.
    let cert = dir.path().join("unused.cert.pem");
    fs::write(&cert, "").unwrap();
    let (addr, served) = serve(vec![0x5a; 1 << 20], false);
    let url = format!("http://{addr}/pispeaker-99.0.0-armhf.raucb");
    let out = pispeaker_check_only(&rauc, &cert, &url, dir.path());
    let err = stderr(&out);
    eprintln!("{err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("range requests not supported by server"),
        "{err}"
    );
    assert!(err.contains("HTTP range requests"), "{err}");
    assert!(err.contains("pispeaker update FILE"), "{err}");
    assert!(!served.lock().unwrap().is_empty());
}
