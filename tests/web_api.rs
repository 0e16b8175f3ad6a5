//! The web API on the built daemon, over real HTTP on loopback: who may write (401 / 403 / 400
//! naming the field, nothing changed), the login rate limit, settings written into the state
//! directory and applied at once, and the event stream (latency, resuming with `Last-Event-ID`).
//!
//! No Spotify account here: discovery is off, so the volume goes to the mixer (the speaker's
//! volume with no session) and shows up as a `volume` event, which is what a client sees.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Daemon {
    child: Child,
    base: String,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(web: bool) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "# my speaker\nname = \"Web Test\"\ncache = \"{}\"\ndisable-discovery = true\n\n[status]\nlisten = \"127.0.0.1:{port}\"\nweb = {web}\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    let log = dir.path().join("daemon.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_pispeaker"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .env_remove("PISPEAKER_NAME")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let daemon = Daemon {
        child,
        base: format!("http://127.0.0.1:{port}"),
        config,
        log,
        _dir: dir,
    };
    let url = format!("{}/status.json", daemon.base);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(&url).await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no status page\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon
}

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A client that keeps the session cookie and the CSRF token like the page does.
struct Client {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
    csrf: Option<String>,
    bearer: Option<String>,
}

impl Client {
    fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base: base.to_string(),
            cookie: None,
            csrf: None,
            bearer: None,
        }
    }

    async fn post(&mut self, path: &str, body: Value) -> (u16, Value) {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(c) = &self.cookie {
            request = request.header("Cookie", c);
        }
        if let Some(c) = &self.csrf {
            request = request.header("X-CSRF-Token", c);
        }
        if let Some(t) = &self.bearer {
            request = request.header("Authorization", format!("Bearer {t}"));
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        if let Some(set) = response.headers().get("set-cookie") {
            let set = set.to_str().unwrap();
            assert!(set.contains("HttpOnly"), "{set}");
            assert!(set.contains("SameSite=Strict"), "{set}");
            self.cookie = Some(set.split(';').next().unwrap().to_string());
        }
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if let Some(csrf) = value.get("csrf").and_then(Value::as_str) {
            self.csrf = Some(csrf.to_string());
        }
        (status, value)
    }

    async fn get(&self, path: &str) -> Value {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            request = request.header("Cookie", c);
        }
        request.send().await.unwrap().json().await.unwrap()
    }
}

/// An SSE reader: events as (id, kind, data).
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(base: &str, last_id: Option<u64>) -> Events {
        let mut request = reqwest::Client::new().get(format!("{base}/api/events"));
        if let Some(id) = last_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "SSE"
        );
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (skipping comments and `retry`), within a generous deadline.
    async fn next(&mut self) -> (u64, String, Value) {
        // One deadline for the event, not per chunk: keep-alive comments every 15 s must not
        // let a missing event wait forever.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (None, None, None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        kind = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = serde_json::from_str(v).ok();
                    }
                }
                if let (Some(id), Some(kind), Some(data)) = (id, kind, data) {
                    return (id, kind, data);
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("an event within 30 s")
                .unwrap()
                .expect("the stream stays open");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next event of `kind`.
    async fn next_of(&mut self, kind: &str) -> (u64, Value) {
        loop {
            let (id, k, data) = self.next().await;
            if k == kind {
                return (id, data);
            }
        }
    }
}

#[tokio::test]
async fn writes_need_a_session_and_csrf_or_the_token_and_bad_values_change_nothing() {
    let d = start(true).await;
    let mut c = Client::new(&d.base);
    let session = c.get("/api/session").await;
    assert_eq!(session["password_set"], false);
    assert_eq!(session["csrf"], Value::Null);

    // No session, no token: 401 for every write.
    for path in [
        "/api/volume",
        "/api/settings",
        "/api/play",
        "/api/pause",
        "/api/next",
        "/api/previous",
        "/api/seek",
    ] {
        let (code, body) = c.post(path, json!({"percent": 10})).await;
        assert_eq!(code, 401, "{path}: {body}");
    }
    // The first visit sets the password (too short is refused, with the reason).
    let (code, body) = c.post("/api/password", json!({"password": "short"})).await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = c
        .post("/api/password", json!({"password": "correct horse"}))
        .await;
    assert_eq!(code, 200, "{body}");
    let csrf = c.csrf.clone().unwrap();
    // Nobody else can "set the first password" now.
    let mut stranger = Client::new(&d.base);
    let (code, _) = stranger
        .post("/api/password", json!({"password": "mine now!"}))
        .await;
    assert_eq!(code, 401);
    // The hash, not the password, is stored; no secret is in what the browser can read.
    let stored = std::fs::read_to_string(d._dir.path().join("state/web-password")).unwrap();
    assert!(stored.starts_with("$argon2id$"));
    for path in ["/api/session", "/api/settings", "/api/now", "/status.json"] {
        let text = c.get(path).await.to_string();
        assert!(!text.contains("argon2"), "{path}: {text}");
        assert!(!text.contains("correct horse"), "{path}: {text}");
    }

    // The cookie without the CSRF token: 403.
    c.csrf = None;
    let (code, _) = c.post("/api/volume", json!({"percent": 10})).await;
    assert_eq!(code, 403);
    c.csrf = Some("0".repeat(64));
    let (code, _) = c.post("/api/settings", json!({"name": "X"})).await;
    assert_eq!(code, 403);
    c.csrf = Some(csrf);

    // Bad values: 400 naming the field, and nothing changed.
    let web_settings = d._dir.path().join("state/web-settings.toml");
    let saved = || std::fs::read_to_string(&web_settings).ok();
    let before = saved();
    let config_before = std::fs::read_to_string(&d.config).unwrap();
    let (code, body) = c
        .post(
            "/api/settings",
            json!({"name": "Fine", "jellyfin_server": "jellyfin.local"}),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["field"], "jellyfin_server");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("http:// or https://"),
        "{body}"
    );
    let (code, body) = c.post("/api/settings", json!({"name": ""})).await;
    assert_eq!((code, body["field"].as_str()), (400, Some("name")));
    let (code, body) = c.post("/api/volume", json!({"percent": 150})).await;
    assert_eq!((code, body["field"].as_str()), (400, Some("percent")));
    let (code, body) = c.post("/api/seek", json!({})).await;
    assert_eq!((code, body["field"].as_str()), (400, Some("position_ms")));
    assert_eq!(saved(), before);
    assert_eq!(c.get("/api/now").await["name"], "Web Test");

    // A good change: written (comments kept), applied at once.
    let (code, body) = c
        .post(
            "/api/settings",
            json!({"name": "Kitchen", "volume_ctrl": "cubic"}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    // The curve switches live (the audio side is rebuilt, not the process).
    assert_eq!(body["restart_needed"], json!([]), "{body}");
    assert_eq!(body["audio"]["curve"], "cubic", "{body}");
    // Into the state directory; the administrator's config file is left alone.
    let text = saved().unwrap();
    assert!(text.contains("name = \"Kitchen\""), "{text}");
    assert_eq!(std::fs::read_to_string(&d.config).unwrap(), config_before);
    // The next start uses it; a flag or the environment still wins.
    let effective = |env: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pispeaker"));
        command.arg("--config").arg(&d.config).arg("config");
        command.env_remove("PISPEAKER_NAME");
        if let Some(name) = env {
            command.env("PISPEAKER_NAME", name);
        }
        String::from_utf8(command.output().unwrap().stdout).unwrap()
    };
    assert!(effective(None).contains("name = \"Kitchen\""));
    assert!(effective(Some("From Env")).contains("name = \"From Env\""));
    assert_eq!(c.get("/api/now").await["name"], "Kitchen");
    assert_eq!(c.get("/status.json").await["name"], "Kitchen");
    assert_eq!(
        c.get("/api/settings").await["values"]["volume_ctrl"],
        "cubic"
    );

    // Scripts: a token from the password, then no cookie and no CSRF needed.
    let mut script = Client::new(&d.base);
    let (code, body) = script
        .post("/api/token", json!({"password": "correct horse"}))
        .await;
    assert_eq!(code, 200, "{body}");
    script.bearer = Some(body["token"].as_str().unwrap().to_string());
    let (code, body) = script.post("/api/volume", json!({"percent": 30})).await;
    assert_eq!(code, 200, "{body}");
    script.bearer = Some("f".repeat(64));
    let (code, _) = script.post("/api/volume", json!({"percent": 30})).await;
    assert_eq!(code, 401);

    // Logged out: the old cookie and CSRF token are worthless.
    let (code, _) = c.post("/api/logout", json!({})).await;
    assert_eq!(code, 200);
    let (code, _) = c.post("/api/volume", json!({"percent": 10})).await;
    assert_eq!(code, 401);
}

/// Issue 15: a new curve or board applies to the audio side of the running daemon: the same
/// process keeps serving, the volume stays, and a device that cannot be opened leaves the old one
/// in use, says why, and is kept for the next start (`restart_needed`). This machine has no sound
/// card, so the daemon plays into its null sink with software volume; a HAT's PCM cannot open.
#[tokio::test]
async fn a_new_curve_applies_live_and_a_board_that_cannot_open_keeps_the_old_output() {
    let mut d = start(true).await;
    let mut c = Client::new(&d.base);
    let (code, body) = c
        .post("/api/password", json!({"password": "correct horse"}))
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = c.post("/api/volume", json!({"percent": 30})).await;
    assert_eq!(code, 200, "{body}");
    let pid = d.child.id();
    let before = c.get("/api/now").await;
    assert_eq!(before["percent"], 30, "{before}");
    assert_eq!(before["audio"]["curve"], "log", "{before}");

    let (code, body) = c
        .post("/api/settings", json!({"volume_ctrl": "linear"}))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["restart_needed"], json!([]), "{body}");
    assert_eq!(body["audio"]["curve"], "linear", "{body}");
    assert_eq!(body["audio"]["error"], Value::Null, "{body}");
    let now = c.get("/api/now").await;
    assert_eq!(now["percent"], 30, "the volume stays: {now}");
    assert_eq!(now["audio"]["curve"], "linear", "{now}");

    let (code, body) = c
        .post("/api/settings", json!({"board": "hifiberry-dac"}))
        .await;
    assert_eq!(code, 200, "saved for the next start: {body}");
    assert_eq!(body["restart_needed"], json!(["board"]), "{body}");
    let error = body["audio"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("sndrpihifiberry"), "{body}");
    assert_eq!(body["audio"]["device"], before["audio"]["device"], "{body}");
    assert_eq!(
        body["audio"]["curve"], "linear",
        "the old side untouched: {body}"
    );
    let now = c.get("/api/now").await;
    assert_eq!(now["percent"], 30, "{now}");
    assert_eq!(now["audio"]["error"], body["audio"]["error"], "{now}");
    assert_eq!(
        c.get("/api/settings").await["values"]["board"],
        "hifiberry-dac"
    );
    let status = c.get("/status.json").await;
    assert_eq!(status["audio"]["error"], body["audio"]["error"], "{status}");

    // One process all along, that started once.
    assert!(d.child.try_wait().unwrap().is_none(), "{}", d.log());
    assert_eq!(d.child.id(), pid);
    let log = d.log();
    assert_eq!(log.matches("is ready").count(), 1, "{log}");
    assert!(log.contains("audio now:"), "{log}");
}

#[tokio::test]
async fn twenty_rapid_wrong_passwords_are_rate_limited() {
    let d = start(true).await;
    let mut c = Client::new(&d.base);
    c.post("/api/password", json!({"password": "correct horse"}))
        .await;
    let mut attacker = Client::new(&d.base);
    let mut codes = Vec::new();
    for i in 0..20 {
        let (code, _) = attacker
            .post("/api/login", json!({"password": format!("guess {i}")}))
            .await;
        codes.push(code);
    }
    assert!(codes.iter().all(|c| *c == 401 || *c == 429), "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 15, "{codes:?}");
    // Limited means limited: even the right password waits.
    let (code, body) = attacker
        .post("/api/login", json!({"password": "correct horse"}))
        .await;
    assert_eq!(code, 429, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("try again"),
        "{body}"
    );
}

#[tokio::test]
async fn events_arrive_live_and_a_returning_client_misses_nothing() {
    let d = start(true).await;
    let mut c = Client::new(&d.base);
    c.post("/api/password", json!({"password": "correct horse"}))
        .await;
    let mut events = Events::open(&d.base, None).await;

    // Event latency: from the write to the client.
    let sent = Instant::now();
    let (code, body) = c.post("/api/volume", json!({"percent": 20})).await;
    assert_eq!(code, 200, "{body}");
    let (first_id, data) = events.next_of("volume").await;
    let latency = sent.elapsed();
    assert_eq!(data["percent"], 20);
    eprintln!(
        "FIGURE event latency (POST /api/volume → SSE volume event): {:.1} ms",
        latency.as_secs_f64() * 1000.0
    );

    // The client drops; three changes happen; it comes back with its last id.
    drop(events);
    let mut published = first_id;
    for percent in [30, 40, 50] {
        let (code, _) = c.post("/api/volume", json!({"percent": percent})).await;
        assert_eq!(code, 200);
        // Published before the next one, so each is its own event: the bridge reads the
        // mixer when woken, so two writes before it wakes are one event (the state stream
        // coalesces; under load it did).
        let target = percent;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = c.get("/api/now").await;
            if now["percent"] == target && now["last_event_id"].as_u64() > Some(published) {
                published += 1;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "volume {target} not published: {now}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut events = Events::open(&d.base, Some(first_id)).await;
    let mut missed = Vec::new();
    while missed.len() < 3 {
        let (id, kind, data) = events.next().await;
        if kind == "volume" {
            missed.push((id, data["percent"].as_u64().unwrap()));
        }
    }
    assert_eq!(
        missed,
        vec![(first_id + 1, 30), (first_id + 2, 40), (first_id + 3, 50)]
    );
    // At most 32 streams at once (this one and 31 more); the 33rd is told to come back.
    let mut more = Vec::new();
    for _ in 0..31 {
        more.push(Events::open(&d.base, None).await);
    }
    let refused = reqwest::get(format!("{}/api/events", d.base))
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 503);
    drop(more);
    // A closed stream gives its place back.
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{}/api/events", d.base))
        .await
        .unwrap()
        .status()
        .as_u16()
        != 200
    {
        assert!(Instant::now() < deadline, "places not given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And live again after the replay.
    c.post("/api/volume", json!({"percent": 60})).await;
    let (id, data) = events.next_of("volume").await;
    assert_eq!((id, data["percent"].as_u64()), (first_id + 4, Some(60)));
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A figure, not an assertion: resident memory after start with the web app on and off, and
/// after a page view and an open event stream.
#[tokio::test]
async fn figure_rss_with_the_web_app_on_and_off() {
    let off = start(false).await;
    let on = start(true).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_off, rss_on) = (rss_kib(off.child.id()), rss_kib(on.child.id()));
    let page = reqwest::get(format!("{}/", on.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("<script src=\"/app.js\">"));
    let _events = Events::open(&on.base, None).await;
    let mut c = Client::new(&on.base);
    c.post("/api/password", json!({"password": "correct horse"}))
        .await;
    let rss_used = rss_kib(on.child.id());
    eprintln!(
        "FIGURE RSS (debug build) web off {rss_off} KiB, web on {rss_on} KiB, on after a login and an open event stream {rss_used} KiB"
    );
    // Off means off: the API is not there.
    let r = reqwest::Client::new()
        .post(format!("{}/api/volume", off.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        405,
        "read-only page without the web app"
    );
}
