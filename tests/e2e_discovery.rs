//! End to end on the built binary: the speaker announces itself over real mDNS, answers the
//! zeroconf `getInfo` request the Spotify app sends, and stops cleanly on SIGTERM.
//!
//! Runs inside a network namespace with its own interface, so the multicast traffic stays on this
//! machine. The mDNS client is the `mdns-sd` crate, not our code, browsing from a thread that
//! joined the namespace.

mod netns;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use mdns_sd::{ServiceDaemon, ServiceEvent};
use netns::NetNs;

const SPEAKER_ADDR: &str = "10.231.0.1";
const ZEROCONF_PORT: u16 = 45713;
const STATUS_PORT: u16 = 45714;

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn speaker_is_discoverable_answers_get_info_and_stops_on_sigterm() {
    if !netns::root_or_skip("speaker_is_discoverable_answers_get_info_and_stops_on_sigterm") {
        return;
    }
    let ns = NetNs::with_lan("pisp-e2e", SPEAKER_ADDR);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let cache = dir.path().join("state");
    let name = format!("E2E Speaker {}", std::process::id());
    std::fs::write(
        &config,
        format!(
            "name = \"{name}\"\ncache = \"{}\"\nzeroconf-port = {ZEROCONF_PORT}\n\n[status]\nlisten = \"127.0.0.1:{STATUS_PORT}\"\n",
            cache.display()
        ),
    )
    .unwrap();

    let log_path = dir.path().join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = ns
        .command(env!("CARGO_BIN_EXE_pispeaker"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start pispeaker");
    let mut daemon = Daemon(child);
    let daemon_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // Browse and query from a thread inside the namespace.
    let browse_name = name.clone();
    let ns_name = ns.name.clone();
    let found = std::thread::spawn(move || {
        netns::enter(&ns_name);
        browse_and_get_info(&browse_name)
    })
    .join()
    .expect("browser thread");
    let (resolved_port, info) = match found {
        Ok(v) => v,
        Err(e) => panic!("{e}\n--- daemon log ---\n{}", daemon_log()),
    };
    assert_eq!(resolved_port, ZEROCONF_PORT);

    let info: serde_json::Value = serde_json::from_str(&info).expect("getInfo returns JSON");
    assert_eq!(info["remoteName"], name.as_str());
    assert_eq!(info["deviceType"], "Speaker");
    let device_id = info["deviceID"].as_str().expect("deviceID");
    assert_eq!(
        device_id.len(),
        40,
        "stable 40-hex device id, got {device_id}"
    );
    let stored = std::fs::read_to_string(cache.join("device_id")).unwrap();
    assert_eq!(
        stored.trim(),
        device_id,
        "getInfo shows the stored device id"
    );
    assert!(
        info["publicKey"].as_str().is_some_and(|k| !k.is_empty()),
        "publicKey present"
    );
    assert!(info["version"].is_string(), "version present");
    assert_eq!(info["activeUser"], "", "no user yet");
    assert_eq!(info["status"], 101);

    // The status page and `pispeaker status`, read from inside the namespace.
    let status = ns
        .command(env!("CARGO_BIN_EXE_pispeaker"))
        .args(["--config"])
        .arg(&config)
        .arg("status")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(printed.contains(&name), "{printed}");
    assert!(printed.contains("spotify          discovery"), "{printed}");
    assert!(printed.contains("jellyfin         disabled"), "{printed}");

    // SIGTERM → exit 0 within 2 s.
    let pid = daemon.0.id() as i32;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = daemon.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "pispeaker did not stop within 2 s of SIGTERM\n{}",
            daemon_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status:?}\n{}", daemon_log());
    eprintln!("stopped {} ms after SIGTERM", start.elapsed().as_millis());
}

/// Finds the speaker with a real mDNS browser and sends `?action=getInfo` to the resolved
/// address, as the Spotify app does. Returns the resolved port and the response body.
fn browse_and_get_info(name: &str) -> Result<(u16, String), String> {
    let mdns = ServiceDaemon::new().map_err(|e| format!("mdns-sd: {e}"))?;
    let receiver = mdns
        .browse("_spotify-connect._tcp.local.")
        .map_err(|e| format!("browse: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let event = match receiver.recv_timeout(Duration::from_millis(500)) {
            Ok(event) => event,
            Err(_) => continue,
        };
        if let ServiceEvent::ServiceResolved(info) = event {
            if !info.get_fullname().starts_with(name) {
                continue;
            }
            let cpath = info
                .get_property_val_str("CPath")
                .unwrap_or("/")
                .to_string();
            let port = info.get_port();
            let body = http_get(SPEAKER_ADDR, port, &format!("{cpath}?action=getInfo"))?;
            let _ = mdns.shutdown();
            return Ok((port, body));
        }
    }
    let _ = mdns.shutdown();
    Err(format!(
        "no _spotify-connect._tcp service named {name:?} resolved within 20 s"
    ))
}

fn http_get(host: &str, port: u16, path: &str) -> Result<String, String> {
    let mut stream =
        TcpStream::connect((host, port)).map_err(|e| format!("connect {host}:{port}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed HTTP response: {response}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("getInfo answered {head}"));
    }
    Ok(body.to_string())
}
