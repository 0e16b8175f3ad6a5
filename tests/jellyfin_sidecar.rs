//! The Jellyfin sidecar against the strict fake server, over real TCP and WebSockets on loopback.
//!
//! Time: real, not paused (the sockets are real). The fake server's keep-alive timings scale
//! with a knob so "ten server minutes" take thirty seconds; the sidecar follows the server's
//! `ForceKeepAlive`, so it is tested at the scaled pace too, which is the same proof.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pispeaker::connect::control::{
    self, Command, ControlHandle, PlaybackEvent, SpeakerStatus, TrackInfo,
};
use pispeaker::jellyfin::{self, JellyfinSettings, JellyfinState, Liveness};
use serde_json::Value;
use support::fake_jellyfin::{FakeJellyfin, ServerVersion};
use support::wait::until;
use tokio::sync::watch;
use tokio::time::Instant;

struct Sidecar {
    control: ControlHandle,
    commands: Arc<Mutex<Vec<Command>>>,
    events: tokio::sync::broadcast::Sender<PlaybackEvent>,
    state: watch::Receiver<JellyfinState>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
}

fn settings(server: &str, dir: &std::path::Path) -> JellyfinSettings {
    JellyfinSettings {
        server: server.to_string(),
        device_name: "Living Room".into(),
        state_dir: dir.to_path_buf(),
        token_file: None,
        request_timeout: Duration::from_secs(2),
        liveness: Liveness {
            ping_every: Duration::from_millis(500),
            dead_after: Duration::from_secs(3),
            capabilities_every: Duration::from_secs(60),
            bound_within: Duration::from_secs(10),
        },
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(1),
        quick_connect_poll: Duration::from_millis(100),
        progress_every: Duration::from_secs(10),
        paused_check_in: jellyfin::PAUSED_CHECK_IN,
        mixer_changed: Default::default(),
        cast: None,
    }
}

/// Starts the sidecar with a stand-in supervisor that records every command it gets.
fn start(server: &str, token: Option<&str>, tweak: impl FnOnce(&mut JellyfinSettings)) -> Sidecar {
    let dir = tempfile::tempdir().unwrap();
    if let Some(token) = token {
        std::fs::write(dir.path().join("jellyfin_token"), token).unwrap();
    }
    let (handle, mut endpoint) = control::channel(SpeakerStatus::new("Living Room", 30000));
    let commands = Arc::new(Mutex::new(Vec::new()));
    let recorded = commands.clone();
    let events = endpoint.events.clone();
    tokio::spawn(async move {
        while let Some((command, reply)) = endpoint.commands.recv().await {
            if let Command::SetVolume(v) = command {
                endpoint.status.send_modify(|s| s.volume = v);
            }
            recorded.lock().unwrap().push(command);
            let _ = reply.send(Ok(()));
        }
    });
    let mut s = settings(server, dir.path());
    tweak(&mut s);
    let (state_tx, state) = watch::channel(JellyfinState::Disabled);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(jellyfin::run_with(s, handle.clone(), state_tx, shutdown_rx));
    Sidecar {
        control: handle,
        commands,
        events,
        state,
        shutdown,
        task,
        dir: dir.path().to_path_buf(),
        _dir: dir,
    }
}

impl Sidecar {
    async fn stop(self) {
        self.shutdown.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("sidecar stops on shutdown")
            .unwrap();
    }
}

fn connected(fake: &FakeJellyfin) -> bool {
    let seen = fake.seen.lock().unwrap();
    seen.sessions.len() == 1
        && seen.sessions.values().all(|s| {
            s.socket_open
                && s.capabilities
                    .as_ref()
                    .is_some_and(|c| c.get("SupportsMediaControl").is_some())
        })
}

async fn registration_is_visible_with_the_right_identity_and_capabilities(version: ServerVersion) {
    let fake = FakeJellyfin::start_version("127.0.0.1:0", 1.0, version).await;
    fake.add_token("tok");
    let sidecar = start(&fake.url(), Some("tok"), |_| {});
    // The deadline is generous on purpose (armv7 under qemu on a loaded machine); the time is a
    // figure to read in the log, not an assertion.
    let took = until(Duration::from_secs(10), "session with socket", || {
        connected(&fake)
    })
    .await;
    println!(
        "Jellyfin session visible {} ms after start",
        took.as_millis()
    );
    // Capabilities are posted before the socket opens and again once it is open; the server can
    // see the socket a moment before that second post arrives, so wait for it.
    until(
        Duration::from_secs(10),
        "capabilities posted before and after the socket opened",
        || fake.only_session().capability_posts >= 2,
    )
    .await;
    let session = fake.only_session();
    assert_eq!(session.client, "pispeaker");
    assert_eq!(session.device, "Living Room");
    assert!(uuid::Uuid::parse_str(&session.device_id).is_ok());
    let caps = session.capabilities.unwrap();
    assert_eq!(caps["PlayableMediaTypes"], serde_json::json!(["Audio"]));
    assert_eq!(caps["SupportsMediaControl"], true);
    assert_eq!(caps["SupportsPersistentIdentifier"], true);
    {
        let seen = fake.seen.lock().unwrap();
        assert_eq!(seen.legacy_auth_refused, 0);
        assert!(seen.bad_requests.is_empty(), "{:?}", seen.bad_requests);
    }
    // The server can see the second capabilities post a moment before the sidecar's task
    // publishes its state (on a loaded machine, a scheduling slice later).
    until(Duration::from_secs(2), "the sidecar says Connected", || {
        matches!(&*sidecar.state.borrow(), JellyfinState::Connected { .. })
    })
    .await;
    sidecar.stop().await;
}

async fn quick_connect_pairing_shows_the_code_on_the_status_page_and_stores_the_token(
    version: ServerVersion,
) {
    let fake = FakeJellyfin::start_version("127.0.0.1:0", 1.0, version).await;
    let sidecar = start(&fake.url(), None, |_| {});
    // The status page, as the daemon serves it.
    let listener = pispeaker::status::bind("127.0.0.1:0").await.unwrap();
    let page = format!("http://{}/status.json", listener.local_addr().unwrap());
    let (_stop, stop_rx) = watch::channel(false);
    tokio::spawn(pispeaker::status::serve(
        listener,
        sidecar.control.clone(),
        sidecar.state.clone(),
        stop_rx,
    ));
    let mut code = String::new();
    let start = Instant::now();
    while code.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no code on the status page"
        );
        let status: Value = reqwest::get(&page).await.unwrap().json().await.unwrap();
        if status["jellyfin"]["state"] == "pairing" {
            code = status["jellyfin"]["code"].as_str().unwrap().to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(code.len(), 6);
    assert!(fake.approve(&code), "the fake knows the code");
    until(Duration::from_secs(5), "paired and connected", || {
        connected(&fake)
    })
    .await;
    let stored = std::fs::read_to_string(sidecar.dir.join("jellyfin_token")).unwrap();
    assert!(fake.seen.lock().unwrap().tokens.contains(&stored));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(sidecar.dir.join("jellyfin_token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    sidecar.stop().await;
}

async fn ten_server_minutes_of_keep_alive_never_lose_the_session(version: ServerVersion) {
    // Scale 0.05: ForceKeepAlive 3 s, lost after 3 s without KeepAlive, checked every 0.6 s.
    let fake = FakeJellyfin::start_version("127.0.0.1:0", 0.05, version).await;
    fake.add_token("tok");
    let sidecar = start(&fake.url(), Some("tok"), |s| {
        s.liveness.dead_after = Duration::from_secs(10);
    });
    until(Duration::from_secs(3), "connected", || connected(&fake)).await;
    let bytes_before = {
        let s = fake.seen.lock().unwrap();
        s.socket_bytes_in
    };
    tokio::time::sleep(Duration::from_secs(30)).await; // = 10 minutes at scale 0.05
    {
        let seen = fake.seen.lock().unwrap();
        assert_eq!(
            seen.sockets_lost_by_timeout, 0,
            "the server never declared the socket lost"
        );
        assert_eq!(seen.socket_connects, 1, "one socket the whole time");
        assert_eq!(seen.sessions.len(), 1);
        assert!(
            seen.keepalives >= 19,
            "a KeepAlive every 1.5 s: {}",
            seen.keepalives
        );
        let per_minute = (seen.socket_bytes_in - bytes_before) as f64 / 30.0 * 60.0 * 0.05;
        println!("idle keep-alive traffic (payload, client to server, at the real server's pace): {per_minute:.0} bytes/minute");
    }
    sidecar.stop().await;
}

async fn a_server_restart_gets_exactly_one_session_with_capabilities_again(version: ServerVersion) {
    let fake = FakeJellyfin::start_version("127.0.0.1:0", 1.0, version).await;
    fake.add_token("tok");
    let sidecar = start(&fake.url(), Some("tok"), |_| {});
    until(Duration::from_secs(3), "connected", || connected(&fake)).await;
    for _ in 0..3 {
        fake.restart(Duration::from_millis(500));
        assert_eq!(fake.session_count(), 0);
        until(Duration::from_secs(5), "back after restart", || {
            connected(&fake)
        })
        .await;
        assert_eq!(fake.session_count(), 1, "exactly one session");
    }
    assert_eq!(fake.seen.lock().unwrap().socket_connects, 4);
    sidecar.stop().await;
}

async fn a_revoked_token_is_set_aside_and_pairing_starts_again(version: ServerVersion) {
    let fake = FakeJellyfin::start_version("127.0.0.1:0", 1.0, version).await;
    fake.add_token("old");
    let sidecar = start(&fake.url(), Some("old"), |_| {});
    until(Duration::from_secs(3), "connected", || connected(&fake)).await;
    fake.revoke_all_tokens();
    fake.restart(Duration::from_millis(100));
    let mut state = sidecar.state.clone();
    let code = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let JellyfinState::Pairing { code } = &*state.borrow_and_update() {
                return code.clone();
            }
            state.changed().await.unwrap();
        }
    })
    .await
    .expect("pairing again after 401");
    let aside = std::fs::read_dir(&sidecar.dir).unwrap().flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .starts_with("jellyfin_token.corrupt-")
    });
    assert!(aside, "the rejected token was moved aside");
    fake.approve(&code);
    until(Duration::from_secs(5), "connected with a new token", || {
        connected(&fake)
    })
    .await;
    sidecar.stop().await;
}

async fn every_remote_command_reaches_the_control_handle(version: ServerVersion) {
    let fake = FakeJellyfin::start_version("127.0.0.1:0", 1.0, version).await;
    fake.add_token("tok");
    let sidecar = start(&fake.url(), Some("tok"), |_| {});
    until(Duration::from_secs(3), "connected", || connected(&fake)).await;
    let playstate = |c: &str, extra: &str| {
        format!(r#"{{"MessageType":"Playstate","Data":{{"Command":"{c}"{extra}}}}}"#)
    };
    let general = |n: &str, args: &str| {
        format!(
            r#"{{"MessageType":"GeneralCommand","Data":{{"Name":"{n}","Arguments":{{{args}}}}}}}"#
        )
    };
    for message in [
        playstate("Pause", ""),
        playstate("Unpause", ""),
        playstate("PlayPause", ""),
        playstate("Stop", ""),
        playstate("NextTrack", ""),
        playstate("PreviousTrack", ""),
        playstate("Seek", r#","SeekPositionTicks":1234560000"#),
        general("SetVolume", r#""Volume":"40""#),
        general("VolumeUp", ""),
        general("VolumeDown", ""),
        general("Mute", ""),
        general("Unmute", ""),
        general("ToggleMute", ""),
    ] {
        fake.push(&message);
    }
    let expected = vec![
        Command::Pause,
        Command::Play,
        Command::PlayPause,
        Command::Stop,
        Command::Next,
        Command::Previous,
        Command::Seek {
            position_ms: 123_456,
        },
        Command::SetVolume(26214),
        Command::VolumeUp,
        Command::VolumeDown,
        Command::SetVolume(0),
        Command::SetVolume(26214),
        Command::SetVolume(0),
    ];
    until(Duration::from_secs(3), "all commands", || {
        sidecar.commands.lock().unwrap().len() >= expected.len()
    })
    .await;
    assert_eq!(*sidecar.commands.lock().unwrap(), expected);
    sidecar.stop().await;
}

async fn now_playing_reports_are_correct_and_in_order(version: ServerVersion) {
    let fake = FakeJellyfin::start_version("127.0.0.1:0", 1.0, version).await;
    fake.add_token("tok");
    let sidecar = start(&fake.url(), Some("tok"), |_| {});
    until(Duration::from_secs(3), "connected", || connected(&fake)).await;
    let track = |n: u32| TrackInfo {
        uri: format!("spotify:track:{n}"),
        name: format!("Song {n}"),
        artists: vec!["Artist".into()],
        album: "Album".into(),
        duration_ms: 200_000,
    };
    let e = &sidecar.events;
    e.send(PlaybackEvent::TrackChanged(track(1))).unwrap();
    e.send(PlaybackEvent::Playing { position_ms: 0 }).unwrap();
    e.send(PlaybackEvent::Paused { position_ms: 5_000 })
        .unwrap();
    e.send(PlaybackEvent::Seeked {
        position_ms: 60_000,
    })
    .unwrap();
    e.send(PlaybackEvent::TrackChanged(track(2))).unwrap();
    e.send(PlaybackEvent::Playing { position_ms: 0 }).unwrap();
    e.send(PlaybackEvent::Stopped).unwrap();
    until(Duration::from_secs(5), "7 reports", || {
        fake.reports().len() >= 6
    })
    .await;
    let reports = fake.reports();
    let paths: Vec<&str> = reports.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/Sessions/Playing",
            "/Sessions/Playing/Progress",
            "/Sessions/Playing/Progress",
            "/Sessions/Playing/Stopped",
            "/Sessions/Playing",
            "/Sessions/Playing/Stopped",
        ]
    );
    let first = &reports[0].1;
    assert!(first.get("ItemId").is_none());
    assert_eq!(first["Item"]["Name"], "Song 1");
    assert_eq!(first["Item"]["Type"], "Audio");
    assert_eq!(first["Item"]["RunTimeTicks"], 2_000_000_000u64);
    assert_eq!(reports[1].1["IsPaused"], true);
    assert_eq!(reports[2].1["PositionTicks"], 600_000_000u64);
    assert_eq!(reports[3].1["Item"]["Name"], "Song 1");
    assert_eq!(reports[4].1["Item"]["Name"], "Song 2");
    assert!(fake.seen.lock().unwrap().bad_requests.is_empty());
    sidecar.stop().await;
}

async fn a_thousand_malformed_or_unknown_messages_change_nothing(version: ServerVersion) {
    let fake = FakeJellyfin::start_version("127.0.0.1:0", 1.0, version).await;
    fake.add_token("tok");
    let sidecar = start(&fake.url(), Some("tok"), |_| {});
    until(Duration::from_secs(3), "connected", || connected(&fake)).await;
    let junk = [
        "",
        "{",
        "null",
        "[1,2]",
        "\"text\"",
        r#"{"MessageType":null}"#,
        r#"{"MessageType":"Sessions","Data":[]}"#,
        r#"{"MessageType":"Playstate"}"#,
        r#"{"MessageType":"Playstate","Data":{"Command":"Explode"}}"#,
        r#"{"MessageType":"GeneralCommand","Data":{"Name":"SetVolume","Arguments":{"Volume":"NaN"}}}"#,
        r#"{"MessageType":"GeneralCommand","Data":{"Name":"SetVolume","Arguments":{"Volume":"1e999"}}}"#,
        r#"{"MessageType":"Playstate","Data":{"Command":"Seek","SeekPositionTicks":"soon"}}"#,
        "\u{0}\u{1}\u{2}",
        r#"{"MessageType":"UserDataChanged","Data":{"UserId":"x"}}"#,
    ];
    for i in 0..1000 {
        fake.push(junk[i % junk.len()]);
    }
    // A repeated MessageId is acted on once.
    let once = r#"{"MessageType":"Playstate","MessageId":"m-1","Data":{"Command":"NextTrack"}}"#;
    fake.push(once);
    fake.push(once);
    // A last, distinct command marks the end: the socket delivers in order, so once it has
    // arrived everything before it has been handled (no fixed sleep to outlast a slow machine).
    fake.push(r#"{"MessageType":"Playstate","MessageId":"m-end","Data":{"Command":"Pause"}}"#);
    until(Duration::from_secs(10), "the closing Pause", || {
        sidecar.commands.lock().unwrap().contains(&Command::Pause)
    })
    .await;
    let commands = sidecar.commands.lock().unwrap().clone();
    assert!(
        commands.iter().all(|c| !matches!(c, Command::Seek { .. })),
        "{commands:?}"
    );
    assert_eq!(
        commands.iter().filter(|c| **c == Command::Next).count(),
        1,
        "{commands:?}"
    );
    assert!(connected(&fake), "session kept");
    assert_eq!(fake.seen.lock().unwrap().socket_connects, 1, "socket kept");
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_server_never_blocks_the_control_handle() {
    // Nothing listens here: every request fails; the speaker's control handle is unaffected.
    let sidecar = start("http://127.0.0.1:9", Some("tok"), |_| {});
    for _ in 0..50 {
        let started = Instant::now();
        sidecar
            .events
            .send(PlaybackEvent::Playing { position_ms: 0 })
            .ok();
        // Sending never waits for the sidecar: a blocked send would take the request timeout
        // (2 s) or forever; 500 ms leaves room for a descheduled thread on a loaded machine.
        assert!(started.elapsed() < Duration::from_millis(500));
    }
    until(Duration::from_secs(5), "the sidecar says Retrying", || {
        matches!(&*sidecar.state.borrow(), JellyfinState::Retrying { .. })
    })
    .await;
    assert_eq!(sidecar.control.status().name, "Living Room");
    sidecar.stop().await;
}

async fn pispeaker_jellyfin_pair_pairs_from_a_terminal(version: ServerVersion) {
    let fake = FakeJellyfin::start_version("127.0.0.1:0", 1.0, version).await;
    let dir = tempfile::tempdir().unwrap();
    pair_from_a_terminal(dir.path(), &fake).await;
    let token = std::fs::read_to_string(dir.path().join("jellyfin_token")).unwrap();
    assert!(fake.seen.lock().unwrap().tokens.contains(&token));
}

/// Every state the sidecar published, in order (a watcher task; the sidecar changes state
/// seconds apart, so none is missed).
fn record_states(sidecar: &Sidecar) -> Arc<Mutex<Vec<JellyfinState>>> {
    let states = Arc::new(Mutex::new(vec![sidecar.state.borrow().clone()]));
    let (mut rx, out) = (sidecar.state.clone(), states.clone());
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let state = rx.borrow_and_update().clone();
            out.lock().unwrap().push(state);
        }
    });
    states
}

fn is_connected(state: &JellyfinState) -> bool {
    matches!(state, JellyfinState::Connected { .. })
}

fn is_not_controllable(state: &JellyfinState) -> bool {
    matches!(state, JellyfinState::NotControllable { .. })
}

/// An admin API key as `token-file`: 10.9/10.10 bind its socket to no session (no ForceKeepAlive,
/// no commands, never a cast target), so the speaker must say so, with the remedy, and never
/// "Connected"; 10.11 binds it (to a session named after the key) and it works.
async fn an_api_key_token_is_not_controllable_before_10_11_and_says_so(version: ServerVersion) {
    let fake = FakeJellyfin::start_version("127.0.0.1:0", 1.0, version).await;
    fake.add_api_key("apikey", "provisioning");
    let sidecar = start(&fake.url(), Some("apikey"), |s| {
        s.liveness.bound_within = Duration::from_secs(2);
    });
    let states = record_states(&sidecar);
    if version.socket_from_device_record() {
        until(
            Duration::from_secs(20),
            "the not-controllable state",
            || is_not_controllable(&sidecar.state.borrow()),
        )
        .await;
        match &*sidecar.state.borrow() {
            JellyfinState::NotControllable {
                problem, remedy, ..
            } => {
                assert!(problem.contains("ForceKeepAlive"), "{problem}");
                assert!(remedy.contains("Quick Connect"), "{remedy}");
            }
            other => panic!("{other:?}"),
        }
        let seen = fake.seen.lock().unwrap();
        assert!(
            seen.unbound_sockets >= 1,
            "the server bound the socket nowhere"
        );
        assert!(seen.sessions.values().all(|r| !r.cast_target()));
    } else {
        until(Duration::from_secs(10), "connected", || {
            is_connected(&sidecar.state.borrow())
        })
        .await;
        let session = fake.only_session();
        assert_eq!(
            session.client, "provisioning",
            "an API key names the client"
        );
        assert!(session.cast_target());
    }
    let states = states.lock().unwrap().clone();
    println!("{}: states {states:?}", version.name());
    if version.socket_from_device_record() {
        assert!(
            !states.iter().any(is_connected),
            "never Connected: {states:?}"
        );
    }
    sidecar.stop().await;
}

/// A user token minted by another app (here "Jellyfin Web") on 10.9/10.10: the socket joins that
/// app's session, which gets ForceKeepAlive but not our capabilities, so the speaker is no cast
/// target: the server's session list shows it, and the speaker says so.
async fn a_token_minted_by_another_app_is_not_controllable_before_10_11(version: ServerVersion) {
    let fake = FakeJellyfin::start_version("127.0.0.1:0", 1.0, version).await;
    fake.add_user_token(
        "webtok",
        support::fake_jellyfin::ADMIN_ID,
        "Jellyfin Web",
        None,
    );
    let sidecar = start(&fake.url(), Some("webtok"), |_| {});
    if version.socket_from_device_record() {
        until(
            Duration::from_secs(20),
            "the not-controllable state",
            || is_not_controllable(&sidecar.state.borrow()),
        )
        .await;
        assert!(fake
            .seen
            .lock()
            .unwrap()
            .sessions
            .values()
            .all(|r| !r.cast_target()));
    } else {
        until(Duration::from_secs(10), "connected", || {
            is_connected(&sidecar.state.borrow()) && connected(&fake)
        })
        .await;
    }
    sidecar.stop().await;
}

fn token_file(sidecar: &Sidecar) -> String {
    std::fs::read_to_string(sidecar.dir.join("jellyfin_token")).unwrap_or_default()
}

fn set_aside(sidecar: &Sidecar) -> bool {
    std::fs::read_dir(&sidecar.dir).unwrap().flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .starts_with("jellyfin_token.corrupt-")
    })
}

/// The fresh token is in the file before the old one is signed out: on the 401 the sidecar uses
/// the file's token instead of setting it aside.
async fn a_401_reloads_a_fresh_token_from_the_file_instead_of_setting_it_aside(
    version: ServerVersion,
) {
    let fake = FakeJellyfin::start_version("127.0.0.1:0", 1.0, version).await;
    fake.add_token("old");
    let sidecar = start(&fake.url(), Some("old"), |_| {});
    until(Duration::from_secs(5), "connected", || connected(&fake)).await;
    let states = record_states(&sidecar);
    let device_id = std::fs::read_to_string(sidecar.dir.join("jellyfin_device_id")).unwrap();
    fake.add_user_token(
        "new",
        support::fake_jellyfin::ADMIN_ID,
        "pispeaker",
        Some(device_id.trim()),
    );
    std::fs::write(sidecar.dir.join("jellyfin_token"), "new").unwrap();
    fake.logout("old");
    until(
        Duration::from_secs(10),
        "connected with the new token",
        || connected(&fake) && fake.seen.lock().unwrap().unauthorized >= 1,
    )
    .await;
    assert_eq!(token_file(&sidecar), "new");
    assert!(!set_aside(&sidecar), "the fresh token was not set aside");
    let states = states.lock().unwrap().clone();
    assert!(
        !states
            .iter()
            .any(|s| matches!(s, JellyfinState::Pairing { .. })),
        "no pairing: {states:?}"
    );
    sidecar.stop().await;
}

/// `pispeaker jellyfin pair` while the daemon runs: approving revokes the daemon's token at once,
/// the CLI writes the fresh one a poll later. The daemon ends up on the fresh token, whichever
/// comes first, and nobody has to approve a second code.
async fn pairing_from_a_terminal_while_the_daemon_runs_keeps_the_fresh_token(
    version: ServerVersion,
) {
    let fake = FakeJellyfin::start_version("127.0.0.1:0", 1.0, version).await;
    fake.add_token("old");
    let sidecar = start(&fake.url(), Some("old"), |_| {});
    until(Duration::from_secs(5), "connected", || connected(&fake)).await;
    pair_from_a_terminal(&sidecar.dir, &fake).await;
    let fresh = token_file(&sidecar);
    assert_ne!(fresh, "old");
    until(
        Duration::from_secs(20),
        "the daemon on the fresh token",
        || connected(&fake) && is_connected(&sidecar.state.borrow()),
    )
    .await;
    assert_eq!(
        token_file(&sidecar),
        fresh,
        "the fresh token stays in the file"
    );
    {
        let seen = fake.seen.lock().unwrap();
        assert!(seen.tokens.contains(&fresh) && !seen.tokens.iter().any(|t| t == "old"));
    }
    sidecar.stop().await;
}

/// A long pause on a server whose 5 minutes are scaled to 6 s: the paused speaker checks in, so
/// the server's idle check never stops its now-playing (12 server minutes: two idle checks).
async fn a_long_pause_keeps_now_playing_on_the_server(version: ServerVersion) {
    let scale = 0.02;
    let fake = FakeJellyfin::start_version("127.0.0.1:0", scale, version).await;
    fake.add_token("tok");
    let sidecar = start(&fake.url(), Some("tok"), |s| {
        s.progress_every = Duration::from_millis(200);
        s.paused_check_in = Duration::from_secs_f64(60.0 * scale);
    });
    until(Duration::from_secs(5), "connected", || connected(&fake)).await;
    let track = TrackInfo {
        uri: "spotify:track:1".into(),
        name: "Song".into(),
        artists: vec!["A".into()],
        album: "Album".into(),
        duration_ms: 600_000,
    };
    sidecar
        .events
        .send(PlaybackEvent::TrackChanged(track))
        .unwrap();
    sidecar
        .events
        .send(PlaybackEvent::Playing { position_ms: 0 })
        .unwrap();
    sidecar
        .events
        .send(PlaybackEvent::Paused { position_ms: 1_000 })
        .unwrap();
    until(Duration::from_secs(5), "now playing on the server", || {
        fake.only_session().now_playing.is_some()
    })
    .await;
    let paused_at = Instant::now();
    // Two idle checks (at 5 and 10 scaled minutes after the first report) and a margin.
    tokio::time::sleep(Duration::from_secs_f64(720.0 * scale)).await;
    let session = fake.only_session();
    println!(
        "{}: paused for {:.1} s (scaled {:.0} server minutes), {} progress reports, idle stops {}",
        version.name(),
        paused_at.elapsed().as_secs_f64(),
        paused_at.elapsed().as_secs_f64() / scale / 60.0,
        fake.reports()
            .iter()
            .filter(|(p, _)| p.ends_with("Progress"))
            .count(),
        session.idle_stops
    );
    assert_eq!(
        session.idle_stops, 0,
        "the server never stopped the paused playback"
    );
    assert_eq!(session.now_playing.as_ref().unwrap()["Name"], "Song");
    sidecar.stop().await;
}

/// `Rewind`/`FastForward` while Spotify plays: a seek 10 s back / 30 s forward from where the
/// track is (the server's default skip lengths).
async fn rewind_and_fast_forward_seek_spotify_by_the_servers_skip_lengths(version: ServerVersion) {
    let fake = FakeJellyfin::start_version("127.0.0.1:0", 1.0, version).await;
    fake.add_token("tok");
    let sidecar = start(&fake.url(), Some("tok"), |_| {});
    until(Duration::from_secs(5), "connected", || connected(&fake)).await;
    let track = TrackInfo {
        uri: "spotify:track:1".into(),
        name: "Song".into(),
        artists: vec!["A".into()],
        album: "Album".into(),
        duration_ms: 200_000,
    };
    sidecar
        .events
        .send(PlaybackEvent::TrackChanged(track))
        .unwrap();
    sidecar
        .events
        .send(PlaybackEvent::Playing {
            position_ms: 60_000,
        })
        .unwrap();
    // Paused, so the position stands still whatever the machine's pace.
    sidecar
        .events
        .send(PlaybackEvent::Paused {
            position_ms: 60_000,
        })
        .unwrap();
    // The paused report shows the events were sent; the socket task takes every event sent
    // before it handles the server's command (it failed under load when it did not).
    until(Duration::from_secs(5), "the paused report", || {
        fake.reports().iter().any(|(_, b)| b["IsPaused"] == true)
    })
    .await;
    let playstate =
        |c: &str| format!(r#"{{"MessageType":"Playstate","Data":{{"Command":"{c}"}}}}"#);
    fake.push(&playstate("Rewind"));
    until(Duration::from_secs(5), "a seek", || {
        !sidecar.commands.lock().unwrap().is_empty()
    })
    .await;
    fake.push(&playstate("FastForward"));
    until(Duration::from_secs(5), "two seeks", || {
        sidecar.commands.lock().unwrap().len() >= 2
    })
    .await;
    assert_eq!(
        *sidecar.commands.lock().unwrap(),
        vec![
            Command::Seek {
                position_ms: 50_000
            },
            Command::Seek {
                position_ms: 90_000
            },
        ],
        "from the paused position (the stand-in supervisor sends no Seeked event)"
    );
    sidecar.stop().await;
}

/// Quick Connect switched off on the server: the status page says so and what to do instead.
async fn quick_connect_disabled_on_the_server_is_explained(version: ServerVersion) {
    let fake = FakeJellyfin::start_version("127.0.0.1:0", 1.0, version).await;
    fake.seen.lock().unwrap().quick_connect_disabled = true;
    let sidecar = start(&fake.url(), None, |_| {});
    until(Duration::from_secs(10), "the explanation", || {
        matches!(&*sidecar.state.borrow(),
            JellyfinState::Retrying { last_error } if last_error.contains("Quick Connect is disabled"))
    })
    .await;
    sidecar.stop().await;
}

/// Runs `pispeaker jellyfin pair` as a user would from a terminal, approves the code it prints
/// on the fake server, and waits for it to succeed.
async fn pair_from_a_terminal(cache: &std::path::Path, fake: &FakeJellyfin) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pispeaker"))
        .args(["--config", "/dev/null", "--cache"])
        .arg(cache)
        .args(["jellyfin", "pair", "--server", &fake.url()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let code = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(code) = line.strip_prefix("Quick Connect code: ") {
                return code.trim().to_string();
            }
        }
        panic!("no code printed");
    })
    .await
    .expect("code printed");
    assert!(fake.approve(&code));
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

every_version!(
    registration_is_visible_with_the_right_identity_and_capabilities,
    quick_connect_pairing_shows_the_code_on_the_status_page_and_stores_the_token,
    ten_server_minutes_of_keep_alive_never_lose_the_session,
    a_server_restart_gets_exactly_one_session_with_capabilities_again,
    a_revoked_token_is_set_aside_and_pairing_starts_again,
    every_remote_command_reaches_the_control_handle,
    now_playing_reports_are_correct_and_in_order,
    a_thousand_malformed_or_unknown_messages_change_nothing,
    pispeaker_jellyfin_pair_pairs_from_a_terminal,
    an_api_key_token_is_not_controllable_before_10_11_and_says_so,
    a_token_minted_by_another_app_is_not_controllable_before_10_11,
    a_401_reloads_a_fresh_token_from_the_file_instead_of_setting_it_aside,
    pairing_from_a_terminal_while_the_daemon_runs_keeps_the_fresh_token,
    a_long_pause_keeps_now_playing_on_the_server,
    rewind_and_fast_forward_seek_spotify_by_the_servers_skip_lengths,
    quick_connect_disabled_on_the_server_is_explained,
);
