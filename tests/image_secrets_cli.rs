//! The SD image's root helpers for what the daemon may not touch, through the built binary, on
//! temporary directories standing for the FAT partition, the data partition, `/run/pispeaker`
//! and the state directory (as root, also a real read-only mount for the FAT):
//!
//! - `pispeaker adopt-password` (pispeaker-adopt-password.service): `admin-password` on the
//!   card becomes the web app's password, the file goes, and logging in with it works;
//! - `pispeaker apply-system` (pispeaker-apply-system.path/.service): the web app's Wi-Fi/SSH
//!   request becomes wpa_supplicant's and sshd's files, or is refused with the reason and
//!   nothing applied; and the whole way from `POST /api/settings` on the running daemon.
//!
//! No password or passphrase may appear in any output.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_pispeaker");
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGexampleexampleexample me@laptop";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The partitions and directories of one speaker.
struct Card {
    dir: tempfile::TempDir,
}

impl Card {
    fn new() -> Self {
        let card = Card {
            dir: tempfile::tempdir().unwrap(),
        };
        for d in [card.fat(), card.state(), card.run()] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::set_permissions(card.state(), PermissionsExt::from_mode(0o700)).unwrap();
        card
    }
    fn fat(&self) -> PathBuf {
        self.dir.path().join("boot-firmware")
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("var-lib-pispeaker")
    }
    fn run(&self) -> PathBuf {
        self.dir.path().join("run-pispeaker")
    }
    fn store(&self) -> PathBuf {
        self.dir.path().join("data/pispeaker-system/settings.toml")
    }
    fn adopt(&self) -> Output {
        Command::new(BIN)
            .args(["adopt-password", "--boot"])
            .arg(self.fat())
            .arg("--state")
            .arg(self.state())
            .output()
            .unwrap()
    }
    fn boot_config(&self) -> Output {
        Command::new(BIN)
            .arg("boot-config")
            .arg("--source")
            .arg(self.fat().join("pispeaker.toml"))
            .arg("--out")
            .arg(self.run())
            .arg("--system-store")
            .arg(self.store())
            .output()
            .unwrap()
    }
    fn apply_system(&self) -> Output {
        Command::new(BIN)
            .arg("apply-system")
            .arg("--request")
            .arg(self.state().join("system-request.json"))
            .arg("--store")
            .arg(self.store())
            .arg("--source")
            .arg(self.fat().join("pispeaker.toml"))
            .arg("--out")
            .arg(self.run())
            .output()
            .unwrap()
    }
    fn request(&self, body: Value) {
        std::fs::write(self.state().join("system-request.json"), body.to_string()).unwrap();
    }
    fn result(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.run().join("system-result.json")).unwrap())
            .unwrap()
    }
}

fn needs_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("PISPEAKER_SKIP_ROOT_TESTS").is_some() {
        eprintln!("SKIPPED: needs root (PISPEAKER_SKIP_ROOT_TESTS set)");
        return false;
    }
    panic!("needs root; run the tests as root (CI does) or set PISPEAKER_SKIP_ROOT_TESTS=1");
}

// ---------------------------------------------------------------- the daemon, for the web side

struct Daemon {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// The daemon on `card`'s state directory; `on_image` points it at `card`'s run directory
    /// as the image's drop-in does (`PISPEAKER_STATUS_BOOT_CONFIG_REPORT`).
    async fn start(card: &Card, on_image: bool) -> Daemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = card.dir.path().join("config.toml");
        let report = if on_image {
            format!(
                "boot-config-report = \"{}\"\n",
                card.run().join("boot-config.json").display()
            )
        } else {
            String::new()
        };
        std::fs::write(
            &config,
            format!(
                "name = \"Secrets Test\"\ncache = \"{}\"\ndisable-discovery = true\n\n[status]\nlisten = \"127.0.0.1:{port}\"\n{report}",
                card.state().display()
            ),
        )
        .unwrap();
        let log = card.dir.path().join("daemon.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "debug")
            .env_remove("PISPEAKER_NAME")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let daemon = Daemon {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/status.json", daemon.base)).await {
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

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn post(&self, path: &str, body: Value, auth: Option<&str>) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(60))
            .json(&body);
        if let Some(token) = auth {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn settings(&self) -> (Value, String) {
        let text = reqwest::get(format!("{}/api/settings", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        (serde_json::from_str(&text).unwrap(), text)
    }

    /// A script's API token, from the password.
    async fn token(&self, password: &str) -> String {
        let (status, body) = self
            .post("/api/token", json!({ "password": password }), None)
            .await;
        assert_eq!(status, 200, "{body}\n{}", self.log());
        body["token"].as_str().unwrap().to_string()
    }
}

// ---------------------------------------------------------------- admin-password

#[tokio::test]
async fn admin_password_on_the_card_is_adopted_removed_and_logs_in() {
    let card = Card::new();
    let secret = "Card Password 42";
    std::fs::write(card.fat().join("admin-password"), format!("{secret}\r\n")).unwrap();

    let out = card.adopt();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains(secret), "{}", text(&out));
    assert!(
        text(&out).contains("removed it from the card"),
        "{}",
        text(&out)
    );
    assert!(
        !card.fat().join("admin-password").exists(),
        "the plaintext is gone"
    );
    let hash_file = card.state().join("web-password");
    let hash = std::fs::read_to_string(&hash_file).unwrap();
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    assert!(!hash.contains(secret));
    assert_eq!(mode(&hash_file), 0o600);

    // The daemon (the web app's own hasher) accepts it.
    let daemon = Daemon::start(&card, true).await;
    let (status, body) = daemon
        .post("/api/login", json!({ "password": "wrong password" }), None)
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = daemon
        .post("/api/login", json!({ "password": secret }), None)
        .await;
    assert_eq!(status, 200, "{body}\n{}", daemon.log());
    assert!(!daemon.log().contains(secret));
}

#[test]
fn a_short_admin_password_is_not_used_and_not_echoed() {
    let card = Card::new();
    std::fs::write(card.fat().join("admin-password.txt"), "hunter2\n").unwrap();
    let out = card.adopt();
    assert!(out.status.success(), "{}", text(&out));
    let log = text(&out);
    assert!(log.contains("at least 8"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
    assert!(!card.fat().join("admin-password.txt").exists());
    assert!(!card.state().join("web-password").exists());
}

#[test]
fn the_hash_belongs_to_the_state_directorys_owner() {
    if !needs_root() {
        return;
    }
    let card = Card::new();
    std::os::unix::fs::chown(card.state(), Some(4242), Some(4343)).unwrap();
    std::fs::write(card.fat().join("admin-password"), "for the daemon user\n").unwrap();
    let out = card.adopt();
    assert!(out.status.success(), "{}", text(&out));
    let meta = std::fs::metadata(card.state().join("web-password")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (4242, 4343));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

#[test]
fn a_read_only_fat_is_made_writable_for_the_removal_only() {
    if !needs_root() {
        return;
    }
    let card = Card::new();
    let staging = card.dir.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    std::fs::write(staging.join("admin-password"), "read only card\n").unwrap();
    // A private mount namespace: a read-only tmpfs holding the file (the image mounts its FAT
    // `ro`), gone with the shell whatever happens.
    let script = format!(
        r#"set -e
mount -t tmpfs -o size=1M pispeaker-test "{fat}"
cp "{staging}/admin-password" "{fat}/"
mount -o remount,ro "{fat}"
"{bin}" adopt-password --boot "{fat}" --state "{state}" --remount "{fat}"
ls -A "{fat}"
if touch "{fat}/after" 2>/dev/null; then echo STILL-WRITABLE; fi
"#,
        fat = card.fat().display(),
        staging = staging.display(),
        state = card.state().display(),
        bin = BIN,
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux)");
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("admin-password\n"), "the file is gone: {log}");
    assert!(!log.contains("read only card"), "{log}");
    assert!(!log.contains("STILL-WRITABLE"), "read-only again: {log}");
    assert!(card.state().join("web-password").exists());
}

// ---------------------------------------------------------------- Wi-Fi and SSH

#[test]
fn a_request_becomes_wpa_supplicant_and_sshd_files() {
    let card = Card::new();
    let out = card.boot_config();
    assert!(out.status.success(), "{}", text(&out));
    let pass = "Wi-Fi Secret 99";
    card.request(json!({
        "id": "r1",
        "changes": {"wifi_ssid": "Home \"5G\"", "wifi_passphrase": pass, "wifi_country": "de",
                    "ssh_authorized_key": KEY}
    }));
    let out = card.apply_system();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains(pass), "{}", text(&out));
    assert!(!card.state().join("system-request.json").exists(), "taken");

    let wpa = card.run().join("wpa_supplicant-wlan0.conf");
    assert_eq!(mode(&wpa), 0o600);
    let conf = std::fs::read_to_string(&wpa).unwrap();
    assert!(conf.contains("country=DE\n"), "{conf}");
    assert!(
        conf.contains(&format!("ssid={}\n", hex::encode("Home \"5G\""))),
        "{conf}"
    );
    assert!(conf.contains(&format!("psk=\"{pass}\"\n")), "{conf}");
    assert_eq!(
        std::fs::read_to_string(card.run().join("authorized_keys")).unwrap(),
        format!("{KEY}\n")
    );
    assert!(card.run().join("ssh-enabled").exists());
    assert_eq!(mode(&card.store()), 0o600);
    assert_eq!(mode(card.store().parent().unwrap()), 0o700);

    let summary = std::fs::read_to_string(card.run().join("system.json")).unwrap();
    assert!(!summary.contains(pass), "{summary}");
    let result = card.result();
    assert_eq!(result["id"], "r1");
    assert_eq!(result["ok"], true, "{result}");

    // The next boot keeps them (the store fills what the card leaves unset).
    std::fs::remove_dir_all(card.run()).unwrap();
    let out = card.boot_config();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&wpa).unwrap(), conf);
    assert!(card.run().join("ssh-enabled").exists());

    // Switching SSH off and leaving the network.
    card.request(json!({"id": "r2", "changes": {"ssh_authorized_key": null, "wifi_ssid": null}}));
    let out = card.apply_system();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(card.result()["ok"], true);
    assert!(!card.run().join("ssh-enabled").exists());
    assert!(!wpa.exists());
}

#[test]
fn an_invalid_request_applies_nothing_and_says_why() {
    let card = Card::new();
    card.boot_config();
    card.request(json!({
        "id": "ok",
        "changes": {"wifi_ssid": "home", "wifi_passphrase": "first secret"}
    }));
    assert!(card.apply_system().status.success());
    let store = std::fs::read(card.store()).unwrap();
    let wpa = std::fs::read(card.run().join("wpa_supplicant-wlan0.conf")).unwrap();

    // A good SSID with a passphrase too short, and a bad key: nothing of it applies.
    card.request(json!({
        "id": "bad",
        "changes": {"wifi_ssid": "other", "wifi_passphrase": "short", "ssh_authorized_key": KEY}
    }));
    let out = card.apply_system();
    assert!(
        out.status.success(),
        "a refusal is not a unit failure: {}",
        text(&out)
    );
    let log = text(&out);
    assert!(
        log.contains("wifi_passphrase") && log.contains("8-63"),
        "{log}"
    );
    assert!(!log.contains("short\""), "{log}");
    let result = card.result();
    assert_eq!(result["id"], "bad");
    assert_eq!(result["ok"], false);
    assert_eq!(result["error"]["field"], "wifi_passphrase", "{result}");
    assert_eq!(std::fs::read(card.store()).unwrap(), store);
    assert_eq!(
        std::fs::read(card.run().join("wpa_supplicant-wlan0.conf")).unwrap(),
        wpa
    );
    assert!(!card.run().join("ssh-enabled").exists());
    assert!(!card.state().join("system-request.json").exists());

    // Not even JSON: taken (so the path unit does not loop) and reported.
    std::fs::write(card.state().join("system-request.json"), "{oops").unwrap();
    assert!(card.apply_system().status.success());
    assert_eq!(card.result()["ok"], false);
    assert!(!card.state().join("system-request.json").exists());

    // What the card sets wins and cannot be changed from the web.
    std::fs::write(
        card.fat().join("pispeaker.toml"),
        "wifi_ssid = \"card\"\nwifi_passphrase = \"card secret\"\n",
    )
    .unwrap();
    card.boot_config();
    card.request(json!({"id": "locked", "changes": {"wifi_country": "FR"}}));
    card.apply_system();
    let result = card.result();
    assert_eq!(result["error"]["field"], "wifi_country", "{result}");
    assert!(
        result["error"]["message"]
            .as_str()
            .unwrap()
            .contains("boot partition"),
        "{result}"
    );
}

#[test]
fn a_link_planted_as_the_request_is_not_followed() {
    let card = Card::new();
    card.boot_config();
    let target = card.dir.path().join("secret-elsewhere");
    std::fs::write(&target, "{\"id\":\"x\",\"changes\":{}}").unwrap();
    std::os::unix::fs::symlink(&target, card.state().join("system-request.json")).unwrap();
    let out = card.apply_system();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        std::fs::symlink_metadata(card.state().join("system-request.json")).is_err(),
        "removed so the path unit stops"
    );
    assert!(target.exists());
}

/// The whole way: the page's `POST /api/settings` → the request → the root unit (this test
/// plays the .path unit) → the answer; a bad value is a 400 before anything is written.
#[tokio::test]
async fn wifi_and_ssh_from_the_web_api_on_the_image() {
    let card = Card::new();
    card.boot_config();
    std::fs::write(card.fat().join("admin-password"), "web admin pass\n").unwrap();
    assert!(card.adopt().status.success());
    let daemon = Daemon::start(&card, true).await;
    let token = daemon.token("web admin pass").await;
    let pass = "Browser Wi-Fi 7";

    let (settings, _) = daemon.settings().await;
    assert_eq!(settings["locked"].get("wifi_ssid"), None, "{settings}");

    // Bad values: 400 naming the field, no request written.
    for (body, field) in [
        (
            json!({"wifi_ssid": "home", "wifi_passphrase": "short"}),
            "wifi_passphrase",
        ),
        (
            json!({"wifi_ssid": "x".repeat(33), "wifi_passphrase": pass}),
            "wifi_ssid",
        ),
        (json!({"wifi_ssid": "home"}), "wifi_passphrase"),
        (
            json!({"ssh_authorized_key": "not a key"}),
            "ssh_authorized_key",
        ),
        (
            json!({"name": "Renamed", "wifi_country": "XYZ"}),
            "wifi_country",
        ),
    ] {
        let (status, answer) = daemon
            .post("/api/settings", body.clone(), Some(&token))
            .await;
        assert_eq!(status, 400, "{body} -> {answer}");
        assert_eq!(answer["field"], field, "{body} -> {answer}");
        assert!(!card.state().join("system-request.json").exists());
    }
    let (settings, _) = daemon.settings().await;
    assert_eq!(
        settings["values"]["name"], "Secrets Test",
        "nothing half-applied"
    );

    // A good change: the test plays the path unit once the request appears.
    let player = {
        let request = card.state().join("system-request.json");
        let card_paths = (card.fat(), card.state(), card.run(), card.store());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !request.exists() {
                assert!(Instant::now() < deadline, "no request written");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mode = std::fs::metadata(&request).unwrap().permissions().mode() & 0o777;
            let (fat, _state, run, store) = card_paths;
            let out = Command::new(BIN)
                .arg("apply-system")
                .arg("--request")
                .arg(&request)
                .arg("--store")
                .arg(store)
                .arg("--source")
                .arg(fat.join("pispeaker.toml"))
                .arg("--out")
                .arg(run)
                .output()
                .unwrap();
            (mode, out)
        })
    };
    let (status, answer) = daemon
        .post(
            "/api/settings",
            json!({"wifi_ssid": "home", "wifi_passphrase": pass, "wifi_country": "gb",
                   "ssh_authorized_key": KEY}),
            Some(&token),
        )
        .await;
    let (request_mode, out) = player.await.unwrap();
    assert_eq!(request_mode, 0o600, "the request holds the passphrase");
    assert_eq!(status, 200, "{answer}\n{}\n{}", text(&out), daemon.log());
    let changed: Vec<&str> = answer["changed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for field in [
        "wifi_ssid",
        "wifi_passphrase",
        "wifi_country",
        "ssh_authorized_key",
    ] {
        assert!(changed.contains(&field), "{answer}");
    }
    assert!(
        std::fs::read_to_string(card.run().join("wpa_supplicant-wlan0.conf"))
            .unwrap()
            .contains(&format!("psk=\"{pass}\""))
    );

    // The page sees the network and the key, never the passphrase; saving the form again
    // unchanged (the passphrase field empty) writes no request.
    let (settings, raw) = daemon.settings().await;
    assert_eq!(settings["values"]["wifi_ssid"], "home");
    assert_eq!(settings["values"]["wifi_country"], "GB");
    assert_eq!(settings["values"]["wifi_passphrase"], Value::Null);
    assert_eq!(settings["wifi_passphrase_set"], true);
    assert_eq!(settings["values"]["ssh_authorized_key"], KEY);
    assert!(!raw.contains(pass), "{raw}");
    let (status, answer) = daemon
        .post(
            "/api/settings",
            json!({"wifi_ssid": "home", "wifi_passphrase": null, "wifi_country": "GB",
                   "ssh_authorized_key": KEY}),
            Some(&token),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(!card.state().join("system-request.json").exists());
    assert!(!daemon.log().contains(pass));
    assert!(!daemon.log().contains("web admin pass"));
}

#[tokio::test]
async fn off_the_image_wifi_and_ssh_are_not_managed_here() {
    let card = Card::new();
    let daemon = Daemon::start(&card, false).await;
    let (status, _) = daemon
        .post("/api/password", json!({"password": "off image pass"}), None)
        .await;
    assert_eq!(status, 200);
    let token = daemon.token("off image pass").await;
    let (settings, _) = daemon.settings().await;
    for field in [
        "wifi_ssid",
        "wifi_passphrase",
        "wifi_country",
        "ssh_authorized_key",
    ] {
        let why = settings["locked"][field].as_str().unwrap_or_default();
        assert!(why.contains("not managed here"), "{field}: {settings}");
    }
    let (status, answer) = daemon
        .post(
            "/api/settings",
            json!({"wifi_ssid": "home", "wifi_passphrase": "long enough"}),
            Some(&token),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not managed here")
            || answer.to_string().contains("not managed here"),
        "{answer}"
    );
    assert!(!card.state().join("system-request.json").exists());
}
