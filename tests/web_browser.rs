//! The web app in a real browser: Debian's `chromium`, headless, driven over the DevTools
//! protocol (a WebSocket, with the tokio-tungstenite the daemon already links) against the built
//! daemon, all inside a network namespace with its own LAN interface.
//!
//! Set the password, rename the speaker (zeroconf `getInfo` answers the new name), enter the fake
//! Jellyfin server and watch the Quick Connect code appear and turn into "connected" without a
//! reload, change the volume. Screenshots of each view go to `target/ci-artifacts/` (CI keeps
//! them); page weight, first paint and the pairing's live update are printed as figures.

mod netns;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use netns::NetNs;
use serde_json::{json, Value};
use support::fake_jellyfin::FakeJellyfin;
use tokio_tungstenite::tungstenite::Message;

const SPEAKER_ADDR: &str = "10.232.0.1";
const STATUS_PORT: u16 = 45720;
const ZEROCONF_PORT: u16 = 45721;
const DEVTOOLS_PORT: u16 = 45722;

/// A child killed with its whole process group (chromium starts several processes).
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let pid = self.0.id() as i32;
        // SAFETY: signalling the process group of a child this test started.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn spawn_group(command: &mut Command) -> Group {
    Group(
        command
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}")),
    )
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ci-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A GET over HTTP/1.1 (DevTools refuses 1.0 and may keep the connection open, so the body is
/// read by its Content-Length when there is one).
fn http_get(host: &str, port: u16, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect((host, port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if let Some(length) = length {
                if raw.len() >= end + 4 + length {
                    return Ok(String::from_utf8_lossy(&raw[end + 4..end + 4 + length]).into());
                }
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
    let text = String::from_utf8_lossy(&raw).to_string();
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .ok_or_else(|| "malformed response".into())
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The few DevTools calls the test needs.
struct Cdp {
    ws: Ws,
    next_id: u64,
    /// Logs whose ends go into a timeout's message (the daemon's, chromium's).
    logs: Vec<PathBuf>,
}

/// The last lines of a log, for a failure message.
fn tail(path: &PathBuf, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    format!(
        "--- {} (last {lines} lines) ---\n{}",
        path.display(),
        all[all.len().saturating_sub(lines)..].join("\n")
    )
}

impl Cdp {
    async fn connect(logs: Vec<PathBuf>) -> Cdp {
        // The page target chromium opened at start.
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = loop {
            if let Ok(body) = http_get("127.0.0.1", DEVTOOLS_PORT, "/json/list") {
                if let Ok(targets) = serde_json::from_str::<Vec<Value>>(&body) {
                    if let Some(url) = targets
                        .iter()
                        .find(|t| t["type"] == "page")
                        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                    {
                        break url.to_string();
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromium's DevTools did not come up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("DevTools WebSocket");
        Cdp {
            ws,
            next_id: 1,
            logs,
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let text = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::Text(text.into())).await.unwrap();
        // One deadline for the answer: events chromium sends meanwhile do not extend it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer within 60 s\n{}", self.logs()))
                .expect("DevTools socket open")
                .unwrap();
            let Message::Text(text) = message else {
                continue;
            };
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["id"] == id {
                assert!(value.get("error").is_none(), "{method}: {value}");
                return value["result"].clone();
            }
        }
    }

    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Polls a JavaScript condition until it is true; returns how long it took.
    async fn until(&mut self, what: &str, expression: &str) -> Duration {
        let start = Instant::now();
        while self.eval(expression).await != Value::Bool(true) {
            let page = self.eval("document.body.innerText").await;
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "timed out waiting for {what}; the page says:\n{page}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        start.elapsed()
    }

    fn logs(&self) -> String {
        self.logs
            .iter()
            .map(|p| tail(p, 30))
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn screenshot(&mut self, name: &str) {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64_decode(shot["data"].as_str().unwrap());
        let path = artifacts().join(name);
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
    }

    async fn set_value(&mut self, id: &str, value: &str) {
        self.eval(&format!(
            "(() => {{ const e = document.getElementById({id:?}); e.value = {value:?}; e.dispatchEvent(new Event('input', {{bubbles: true}})); return true; }})()"
        ))
        .await;
    }

    async fn click(&mut self, id: &str) {
        self.eval(&format!("document.getElementById({id:?}).click(), true"))
            .await;
    }
}

/// Standard base64 (what DevTools sends screenshots in), without a crate for one call.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = text.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, c)| n | value(*c) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

fn get_info_name() -> Option<String> {
    let body = http_get(SPEAKER_ADDR, ZEROCONF_PORT, "/?action=getInfo").ok()?;
    let info: Value = serde_json::from_str(&body).ok()?;
    info["remoteName"].as_str().map(str::to_string)
}

#[test]
fn set_up_and_control_the_speaker_from_a_browser() {
    if !netns::root_or_skip("set_up_and_control_the_speaker_from_a_browser") {
        return;
    }
    let ns = NetNs::with_lan("pisp-web", SPEAKER_ADDR);
    let name = ns.name.clone();
    // Everything below runs in the namespace: this thread, the runtime on it, and the children
    // it starts (they inherit the thread's namespace).
    std::thread::spawn(move || {
        netns::enter(&name);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(browser_session());
    })
    .join()
    .unwrap_or_else(|payload| {
        // The session's own message, here at the end of the output where CI's summary shows it
        // (the first panic's message scrolls away behind its backtrace).
        let why = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        panic!("the browser session failed: {why}")
    });
}

async fn browser_session() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeJellyfin::start("127.0.0.1:0", 1.0).await;
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"Before\"\ncache = \"{}\"\nzeroconf-port = {ZEROCONF_PORT}\n\n[status]\nlisten = \"{SPEAKER_ADDR}:{STATUS_PORT}\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let log_path = dir.path().join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _daemon = spawn_group(
        Command::new(env!("CARGO_BIN_EXE_pispeaker"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    );
    let daemon_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while get_info_name().as_deref() != Some("Before") {
        assert!(Instant::now() < deadline, "no getInfo\n{}", daemon_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let profile = dir.path().join("chromium");
    let chromium_log_path = dir.path().join("chromium.log");
    let chromium_log = std::fs::File::create(&chromium_log_path).unwrap();
    let _chromium = spawn_group(
        Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                // /dev/shm may be small on a CI machine; chromium then writes its shared memory
                // to /tmp instead of failing renderers.
                "--disable-dev-shm-usage",
                "--window-size=412,915",
                &format!("--remote-debugging-port={DEVTOOLS_PORT}"),
                &format!("--user-data-dir={}", profile.display()),
                "about:blank",
            ])
            .stdout(chromium_log.try_clone().unwrap())
            .stderr(chromium_log),
    );
    let mut cdp = Cdp::connect(vec![log_path.clone(), chromium_log_path]).await;
    cdp.call("Page.enable", json!({})).await;
    let url = format!("http://{SPEAKER_ADDR}:{STATUS_PORT}/");
    cdp.call("Page.navigate", json!({"url": url})).await;
    cdp.until("the page", "document.readyState === 'complete' && document.getElementById('conn').textContent === 'live'")
        .await;
    let paint = cdp
        .eval(
            "JSON.stringify(performance.getEntriesByType('paint').map(e => [e.name, e.startTime]))",
        )
        .await;
    let weight = cdp
        .eval("performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource')).reduce((n, e) => n + e.transferSize, 0)")
        .await;
    println!("FIGURE first paint in headless chromium (ms since navigation): {paint}");
    println!("FIGURE page weight transferred (HTML + script + headers): {weight} bytes");
    // The page is the speaker's, with nothing fetched from elsewhere.
    let origins = cdp
        .eval("performance.getEntriesByType('resource').every(e => e.name.startsWith(location.origin))")
        .await;
    assert_eq!(origins, Value::Bool(true));
    // A marker that a reload would wipe: the pairing must arrive without one.
    cdp.eval("window.noReload = 1, true").await;

    // 1. The first visit sets the password.
    cdp.until(
        "the set-password form",
        "!document.getElementById('set-password').hidden",
    )
    .await;
    cdp.screenshot("web-1-first-visit.png").await;
    cdp.set_value("new-password", "correct horse").await;
    cdp.click("set-password-btn").await;
    cdp.until("the settings form", "!document.getElementById('settings').hidden && document.getElementById('s-name').value === 'Before'")
        .await;
    cdp.screenshot("web-2-settings.png").await;

    // 2. Rename: getInfo answers the new name (discovery restarted with it). The name is typed
    // while a reload of the settings is on its way, held until after the typing: a `settings`
    // event follows every save, and on a loaded CI machine its reload landed after the test had
    // typed the next change and put the old values back (the change was then saved as "off").
    let kept = cdp
        .eval(
            r#"(async () => {
                const realFetch = window.fetch;
                let release;
                const held = new Promise((r) => { release = r; });
                window.fetch = async (...args) => {
                    const answer = await realFetch(...args);
                    const get = !args[1] || !args[1].method || args[1].method === "GET";
                    if (get && String(args[0]).endsWith("/api/settings")) await held;
                    return answer;
                };
                const reload = loadSettings();
                const e = document.getElementById("s-name");
                e.value = "Browser Named";
                e.dispatchEvent(new Event("input", {bubbles: true}));
                release();
                await reload;
                window.fetch = realFetch;
                return e.value;
            })()"#,
        )
        .await;
    assert_eq!(
        kept, "Browser Named",
        "a settings reload that arrived while the user typed put the old value back"
    );
    cdp.click("save").await;
    cdp.until(
        "saved",
        "document.getElementById('settings-msg').textContent.startsWith('Saved')",
    )
    .await;
    let renamed = Instant::now();
    while get_info_name().as_deref() != Some("Browser Named") {
        assert!(
            renamed.elapsed() < Duration::from_secs(60),
            "getInfo still says {:?}\n{}",
            get_info_name(),
            daemon_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "FIGURE rename → getInfo answers the new name: {} ms",
        renamed.elapsed().as_millis()
    );
    cdp.until(
        "the new name on the page",
        "document.getElementById('name').textContent === 'Browser Named'",
    )
    .await;

    // 3. Jellyfin: the Quick Connect code appears live, then "connected", without a reload.
    cdp.set_value("s-jellyfin_server", &fake.url()).await;
    cdp.eval("(() => { const c = document.getElementById('s-jellyfin_enabled'); c.checked = true; c.dispatchEvent(new Event('change', {bubbles: true})); return true; })()")
        .await;
    cdp.eval("document.getElementById('settings-msg').textContent = '', true")
        .await;
    // A status answer read before the pairing code but delivered after its `jellyfin` event
    // must not put "off" back (under load the save's `settings` event started a status read that
    // came back after the code, and the page stayed "off"). Made certain here: the first status
    // read after the save gets an answer read before it, once the code is on the page.
    cdp.eval(
        r#"(async () => {
            const realFetch = window.fetch;
            const older = await (await realFetch("/api/now")).text();
            window.fetch = async (...args) => {
                if (!String(args[0]).endsWith("/api/now")) return realFetch(...args);
                window.fetch = realFetch;
                const start = Date.now();
                while (document.getElementById("quick").hidden && Date.now() - start < 10000) {
                    await new Promise((r) => setTimeout(r, 20));
                }
                return new Response(older, {status: 200, headers: {"Content-Type": "application/json"}});
            };
            return true;
        })()"#,
    )
    .await;
    cdp.click("save").await;
    cdp.until(
        "the answer to saving",
        "document.getElementById('settings-msg').textContent !== ''",
    )
    .await;
    let answer = cdp
        .eval("document.getElementById('settings-msg').textContent")
        .await;
    assert_eq!(
        answer,
        "Saved.",
        "{}",
        std::fs::read_to_string(&config).unwrap()
    );
    cdp.until("the Quick Connect code", "/^[0-9]{6}$/.test(document.getElementById('quick-code').textContent) && !document.getElementById('quick').hidden")
        .await;
    cdp.screenshot("web-3-quick-connect-code.png").await;
    let code = cdp
        .eval("document.getElementById('quick-code').textContent")
        .await;
    let code = code.as_str().unwrap().to_string();
    assert!(fake.approve(&code), "the fake server issued {code}");
    let approved = Instant::now();
    cdp.until("connected", "document.getElementById('jellyfin').textContent.startsWith('connected') && document.getElementById('quick').hidden")
        .await;
    println!(
        "FIGURE approval → page says connected (includes the 5 s Quick Connect poll): {} ms",
        approved.elapsed().as_millis()
    );
    assert_eq!(cdp.eval("window.noReload").await, json!(1), "no reload");
    cdp.screenshot("web-4-jellyfin-connected.png").await;
    assert_eq!(
        fake.only_session().device,
        "Browser Named",
        "Jellyfin knows the new name"
    );

    // 4. The volume slider.
    cdp.eval("(() => { const v = document.getElementById('volume'); v.value = 35; v.dispatchEvent(new Event('change')); return true; })()")
        .await;
    cdp.until(
        "35 %",
        "document.getElementById('volume-text').textContent === '35 %'",
    )
    .await;
    let now: Value =
        serde_json::from_str(&http_get(SPEAKER_ADDR, STATUS_PORT, "/api/now").unwrap()).unwrap();
    assert_eq!(now["percent"], 35, "{now}");
    assert_eq!(cdp.eval("window.noReload").await, json!(1), "no reload");
    cdp.screenshot("web-5-volume.png").await;

    // 5. A DAC that cannot be opened (this machine has no sound card): saved for the next start,
    // the page says why the switch failed and that the old output stays in use.
    cdp.until(
        "the output in use",
        "document.getElementById('audio').textContent.startsWith('Output ')",
    )
    .await;
    cdp.set_value("s-board", "hifiberry-dac").await;
    cdp.eval("document.getElementById('settings-msg').textContent = '', true")
        .await;
    cdp.click("save").await;
    cdp.until(
        "the answer to the board change",
        "document.getElementById('settings-msg').textContent.includes('board apply at the next restart')",
    )
    .await;
    cdp.until(
        "why the new DAC failed",
        "document.getElementById('audio').textContent.includes('The new one failed')",
    )
    .await;
    println!(
        "page after a DAC that cannot open: {}",
        cdp.eval("document.getElementById('audio').textContent")
            .await
    );
    cdp.screenshot("web-6-dac-failed.png").await;
}
