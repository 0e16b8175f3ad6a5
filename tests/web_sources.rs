//! The web app's sources over the real Jellyfin cast player (fake Jellyfin server, loopback): a
//! Spotify → Jellyfin handover is seen as `source`, `track` and `playing` events, and the API's
//! commands (through `Sources`) reach the cast while it plays, then Spotify again.

mod support;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use librespot_playback::mixer::Mixer;
use librespot_playback::mixer::MixerConfig;
use pispeaker::audio::{AudioDeviceLock, CaptureOutput, StreamSettings};
use pispeaker::connect::control::{self, Command, SpeakerStatus};
use pispeaker::jellyfin::cast::{CastSettings, CastStatusCell};
use pispeaker::jellyfin::{self, JellyfinSettings, JellyfinState, Liveness};
use pispeaker::source::{CastSource, SourceCommand, SourceKind, Sources, SpotifySource};
use pispeaker::web::bridge;
use pispeaker::web::events::{Event, EventHub};
use support::fake_jellyfin::{FakeJellyfin, Media};
use support::wait::until;
use tokio::sync::watch;

/// The one mixer, as a number.
struct TestMixer(AtomicU16);
impl Mixer for TestMixer {
    fn open(_: MixerConfig) -> Result<Self, librespot_core::Error> {
        Ok(TestMixer(AtomicU16::new(30_000)))
    }
    fn volume(&self) -> u16 {
        self.0.load(Ordering::SeqCst)
    }
    fn set_volume(&self, volume: u16) {
        self.0.store(volume, Ordering::SeqCst)
    }
}

/// `seconds` of a 440 Hz tone as a 16-bit stereo 44.1 kHz WAV file.
fn wav(seconds: u32) -> Vec<u8> {
    let frames = 44_100 * seconds;
    let data_len = frames * 4;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&44_100u32.to_le_bytes());
    out.extend_from_slice(&(44_100u32 * 4).to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..frames {
        let s = ((i as f64 * 440.0 * std::f64::consts::TAU / 44_100.0).sin() * 8000.0) as i16;
        out.extend_from_slice(&s.to_le_bytes());
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

fn has(hub: &EventHub, kind: &str, field: &str, value: &str) -> bool {
    events(hub)
        .iter()
        .any(|e| e.kind == kind && e.data[field] == value)
}

fn events(hub: &EventHub) -> Vec<Event> {
    hub.subscribe(Some(0)).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cast_takes_over_from_spotify_and_the_commands_follow_it() {
    let fake = FakeJellyfin::start("127.0.0.1:0", 1.0).await;
    fake.add_token("tok");
    let item = "0123456789abcdef0123456789abcdef";
    fake.add_media(
        item,
        Media {
            bytes: wav(20),
            content_type: "audio/wav".into(),
            ..Media::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jellyfin_token"), "tok").unwrap();

    // A stand-in supervisor: Spotify is playing and takes every command.
    let (control, mut endpoint) = control::channel(SpeakerStatus::new("Living Room", 30_000));
    endpoint.status.send_modify(|s| s.playing = true);
    let spotify_commands = Arc::new(Mutex::new(Vec::new()));
    {
        let seen = spotify_commands.clone();
        tokio::spawn(async move {
            while let Some((command, reply)) = endpoint.commands.recv().await {
                seen.lock().unwrap().push(command);
                let _ = reply.send(Ok(()));
            }
        });
    }

    let mixer: Arc<dyn Mixer> = Arc::new(TestMixer::open(MixerConfig::default()).unwrap());
    let captured = Arc::new(Mutex::new(Default::default()));
    let cell = CastStatusCell::new();
    let settings = JellyfinSettings {
        cast: Some(CastSettings {
            output: CaptureOutput::factory(captured, Some(1.0)),
            mixer: mixer.clone(),
            lock: AudioDeviceLock::new(),
            stream: StreamSettings::default(),
            handover_wait: Duration::from_secs(3),
            progress_every: Duration::from_secs(10),
            paused_check_in: pispeaker::jellyfin::PAUSED_CHECK_IN,
            status: cell.clone(),
        }),
        request_timeout: Duration::from_secs(5),
        liveness: Liveness {
            ping_every: Duration::from_secs(1),
            dead_after: Duration::from_secs(10),
            capabilities_every: Duration::from_secs(60),
            bound_within: Duration::from_secs(10),
        },
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(1),
        ..JellyfinSettings::from_config(
            &pispeaker::config::Config {
                name: "Living Room".into(),
                cache: dir.path().to_path_buf(),
                ..Default::default()
            },
            fake.url(),
        )
    };
    let (state_tx, state_rx) = watch::channel(JellyfinState::Disabled);
    let (slot_tx, slot_rx) = watch::channel(None);
    let (_shutdown, shutdown) = watch::channel(false);
    let sources = Sources {
        spotify: SpotifySource {
            control: control.clone(),
        },
        cast: Some(Arc::new(CastSource {
            handle: slot_rx,
            status: cell,
        })),
        mixer: Some(mixer.clone()),
        mixer_changed: Default::default(),
    };
    let hub = EventHub::new();
    tokio::spawn(bridge::run(
        hub.clone(),
        sources.clone(),
        state_rx,
        Duration::from_millis(50),
        shutdown.clone(),
    ));
    tokio::spawn(jellyfin::run_publishing_cast(
        settings,
        control,
        state_tx,
        Some(slot_tx),
        shutdown,
    ));
    until(Duration::from_secs(30), "the sidecar connected", || {
        has(&hub, "jellyfin", "state", "connected")
    })
    .await;
    assert_eq!(sources.active().kind(), SourceKind::Spotify);

    // "Play on" this speaker from Jellyfin.
    fake.push(&format!(
        r#"{{"MessageType":"Play","Data":{{"ItemIds":["{item}"],"PlayCommand":"PlayNow","StartIndex":0,"StartPositionTicks":0,"ControllingUserId":"0f0e0d0c0b0a09080706050403020100"}}}}"#
    ));
    until(Duration::from_secs(30), "the handover events", || {
        has(&hub, "source", "active", "jellyfin") && has(&hub, "playing", "source", "jellyfin")
    })
    .await;
    // (Spotify's sink does not hold the device here, so the cast had nothing to take from it;
    // the device handover itself is tests/jellyfin_cast.rs's.)
    let all = events(&hub);
    let track = all
        .iter()
        .find(|e| e.kind == "track" && e.data["source"] == "jellyfin")
        .expect("a track event");
    assert_eq!(track.data["item_id"], item);
    let at = |kind: &str| all.iter().position(|e| e.kind == kind).unwrap();
    assert!(at("jellyfin") < at("source"), "{all:?}");

    // The API's commands now reach the cast.
    assert_eq!(
        sources.command(SourceCommand::SetVolume(12_345)).await,
        Ok(SourceKind::Jellyfin)
    );
    until(Duration::from_secs(10), "the cast set the mixer", || {
        mixer.volume() == 12_345
    })
    .await;
    assert_eq!(
        sources.command(SourceCommand::Pause).await,
        Ok(SourceKind::Jellyfin)
    );
    until(Duration::from_secs(10), "paused event", || {
        has(&hub, "paused", "source", "jellyfin")
    })
    .await;
    let spotify_before = spotify_commands.lock().unwrap().len();

    // Jellyfin stops the cast: Spotify is the active source again and gets the commands.
    fake.push(r#"{"MessageType":"Playstate","Data":{"Command":"Stop"}}"#);
    until(Duration::from_secs(10), "back to spotify", || {
        has(&hub, "source", "active", "spotify")
    })
    .await;
    assert_eq!(
        sources.command(SourceCommand::Next).await,
        Ok(SourceKind::Spotify)
    );
    let spotify = spotify_commands.lock().unwrap();
    assert_eq!(spotify[spotify_before..], [Command::Next]);
    let ids: Vec<u64> = events(&hub).iter().map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
}

/// Issue 15: a new board or volume curve posted to `/api/settings` while a Jellyfin cast plays
/// switches the audio side in place: the cast plays on into the new board's PCM, the volume
/// stays, the answer needs no restart, and the sidecar (and everything else) keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::result_large_err)] // the opener returns the daemon's own AudioError
async fn a_new_board_or_curve_from_the_web_app_switches_the_audio_while_a_cast_plays() {
    use pispeaker::audio::{open_mixer, AudioSpec, LiveAudio, MixerOpener, MixerSettings};
    use pispeaker::audio::{Captured, PcmOutput, RoutedOutput};
    use std::collections::HashMap;

    let fake = FakeJellyfin::start("127.0.0.1:0", 1.0).await;
    fake.add_token("tok");
    let item = "0123456789abcdef0123456789abcdef";
    fake.add_media(
        item,
        Media {
            bytes: wav(60),
            content_type: "audio/wav".into(),
            ..Media::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jellyfin_token"), "tok").unwrap();
    let config_file = dir.path().join("config.toml");
    std::fs::write(
        &config_file,
        format!(
            "board = \"bcm2835-headphones\"\ncache = \"{}\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let args = pispeaker::config::ConfigArgs {
        config: Some(config_file),
        ..Default::default()
    };
    let config = pispeaker::config::load(&args).unwrap();

    // The audio side as the daemon builds it, with the machine's ALSA replaced by a record of
    // what was opened (this machine has no sound card): software mixers with the spec's curve,
    // and one capture "device" per PCM name.
    let opened: Arc<Mutex<Vec<AudioSpec>>> = Default::default();
    let opener: MixerOpener = {
        let opened = opened.clone();
        Arc::new(move |spec: &AudioSpec| {
            opened.lock().unwrap().push(spec.clone());
            open_mixer(&MixerSettings {
                use_hardware: false,
                ..spec.mixer.clone()
            })
        })
    };
    let spec = pispeaker::live_settings::audio_spec(&config);
    assert_eq!(spec.pcm.as_deref(), Some("hw:CARD=Headphones,DEV=0"));
    let live = Arc::new(LiveAudio::new(spec.clone(), opener(&spec).unwrap(), opener));
    let devices: Arc<Mutex<HashMap<String, Arc<Mutex<Captured>>>>> = Default::default();
    let output = {
        let devices = devices.clone();
        RoutedOutput::factory_with(
            live.route(),
            Arc::new(move |pcm| {
                let log = devices
                    .lock()
                    .unwrap()
                    .entry(pcm.unwrap_or_default())
                    .or_default()
                    .clone();
                Box::new(CaptureOutput::new(log, Some(1.0))) as Box<dyn PcmOutput>
            }),
        )
    };
    let written = |pcm: &str| {
        devices.lock().unwrap().get(pcm).map_or(0, |c| {
            let c = c.lock().unwrap();
            c.segments.iter().map(|s| s.1.len()).sum::<usize>()
        })
    };
    let mixer: Arc<dyn Mixer> = live.mixer();
    mixer.set_volume(26_214); // 40 %

    let (control, mut endpoint) = control::channel(SpeakerStatus::new("Living Room", 26_214));
    tokio::spawn(async move {
        while let Some((_, reply)) = endpoint.commands.recv().await {
            let _ = reply.send(Ok(()));
        }
    });
    let cell = CastStatusCell::new();
    let settings = JellyfinSettings {
        cast: Some(CastSettings {
            output,
            mixer: mixer.clone(),
            lock: AudioDeviceLock::new(),
            stream: StreamSettings::default(),
            handover_wait: Duration::from_secs(3),
            progress_every: Duration::from_secs(10),
            paused_check_in: pispeaker::jellyfin::PAUSED_CHECK_IN,
            status: cell.clone(),
        }),
        request_timeout: Duration::from_secs(5),
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(1),
        ..JellyfinSettings::from_config(&config, fake.url())
    };
    let (state_tx, state_rx) = watch::channel(JellyfinState::Disabled);
    let (slot_tx, slot_rx) = watch::channel(None);
    let (_shutdown, shutdown) = watch::channel(false);
    let sources = Sources {
        spotify: SpotifySource {
            control: control.clone(),
        },
        cast: Some(Arc::new(CastSource {
            handle: slot_rx,
            status: cell.clone(),
        })),
        mixer: Some(mixer.clone()),
        mixer_changed: Default::default(),
    };
    let hub = EventHub::new();
    tokio::spawn(bridge::run(
        hub.clone(),
        sources.clone(),
        state_rx.clone(),
        Duration::from_millis(50),
        shutdown.clone(),
    ));
    tokio::spawn(jellyfin::run_publishing_cast(
        settings,
        control.clone(),
        state_tx,
        Some(slot_tx),
        shutdown.clone(),
    ));

    // The web app on a real socket, as the daemon serves it.
    let auth = pispeaker::web::auth::Auth::new(dir.path());
    auth.set_first_password("correct horse").unwrap();
    let token = auth
        .new_api_token("127.0.0.1".parse().unwrap(), "correct horse")
        .unwrap();
    let (config_tx, _config_rx) = watch::channel(config.clone());
    let reload_args = args.clone();
    let web = pispeaker::web::WebApp {
        auth,
        hub: hub.clone(),
        sources: sources.clone(),
        settings: Arc::new(pispeaker::web::settings::SettingsFile::from_args(
            &args,
            dir.path(),
            None,
        )),
        config: Arc::new(config_tx),
        audio: live.clone(),
        reload: Arc::new(move || pispeaker::config::load(&reload_args).map_err(|e| e.to_string())),
        jellyfin: state_rx.clone(),
        keep_alive: Duration::from_secs(15),
        streams: Default::default(),
    };
    let listener = pispeaker::status::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(pispeaker::status::serve_with_web(
        listener,
        control,
        state_rx,
        Some(cell.clone()),
        None,
        Some(web),
        shutdown,
    ));
    let http = reqwest::Client::new();
    let post = |body: serde_json::Value| {
        let request = http
            .post(format!("{base}/api/settings"))
            .bearer_auth(&token)
            .json(&body);
        async move {
            let r = request.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };

    until(Duration::from_secs(30), "the sidecar connected", || {
        has(&hub, "jellyfin", "state", "connected")
    })
    .await;
    fake.push(&format!(
        r#"{{"MessageType":"Play","Data":{{"ItemIds":["{item}"],"PlayCommand":"PlayNow","StartIndex":0,"StartPositionTicks":0,"ControllingUserId":"0f0e0d0c0b0a09080706050403020100"}}}}"#
    ));
    until(
        Duration::from_secs(30),
        "the cast plays on the headphones",
        || written("hw:CARD=Headphones,DEV=0") > 44_100 * 2,
    )
    .await;

    // A new board: its PCM, with the volume where it was; nothing waits for a restart.
    let (code, body) = post(serde_json::json!({"board": "hifiberry-dac"})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["restart_needed"], serde_json::json!([]), "{body}");
    assert_eq!(body["audio"]["device"], "hw:CARD=sndrpihifiberry,DEV=0");
    assert_eq!(body["audio"]["error"], serde_json::Value::Null);
    let last = opened.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.pcm.as_deref(), Some("hw:CARD=sndrpihifiberry,DEV=0"));
    assert!(!last.mixer.use_hardware, "the preset's softvol");
    assert_eq!(mixer.volume(), 26_214, "the volume stays");
    // The cast plays on, into the new device: two more seconds arrive there.
    until(
        Duration::from_secs(30),
        "the cast plays on the new board",
        || written("hw:CARD=sndrpihifiberry,DEV=0") > 2 * 44_100 * 2,
    )
    .await;
    assert!(
        !devices.lock().unwrap()["hw:CARD=Headphones,DEV=0"]
            .lock()
            .unwrap()
            .open
    );
    assert_eq!(
        sources.active().now_playing().state,
        pispeaker::source::PlayState::Playing
    );
    assert!(has(
        &hub,
        "audio",
        "device",
        "hw:CARD=sndrpihifiberry,DEV=0"
    ));

    // A new curve: the same device, a mixer with the new curve, the same volume.
    let (code, body) = post(serde_json::json!({"volume_ctrl": "cubic"})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["restart_needed"], serde_json::json!([]), "{body}");
    assert_eq!(body["audio"]["curve"], "cubic");
    let last = opened.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.mixer.curve, pispeaker::audio::VolumeCurveKind::Cubic);
    assert_eq!(mixer.volume(), 26_214);
    let now = http
        .get(format!("{base}/api/now"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(now["percent"], 40, "{now}");
    assert_eq!(now["audio"]["curve"], "cubic", "{now}");
    assert_eq!(
        now["jellyfin"]["state"], "connected",
        "the sidecar kept running: {now}"
    );
    let before = written("hw:CARD=sndrpihifiberry,DEV=0");
    until(
        Duration::from_secs(30),
        "still playing after the curve",
        || written("hw:CARD=sndrpihifiberry,DEV=0") > before + 44_100 * 2,
    )
    .await;
    // One connection of the sidecar from start to end: it was never restarted.
    let connected = events(&hub)
        .iter()
        .filter(|e| e.kind == "jellyfin" && e.data["state"] == "connected")
        .count();
    assert_eq!(connected, 1);
}

/// Issue 15: Jellyfin's remote control goes through `Sources`, like the page's buttons: with no
/// Spotify session (nobody picked the speaker) a volume from the Jellyfin app still sets the
/// speaker's volume and the web app sees it at once; while a cast plays, a pause from the app
/// pauses the cast and a volume step moves the one mixer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jellyfin_remote_control_goes_to_whatever_plays() {
    let fake = FakeJellyfin::start("127.0.0.1:0", 1.0).await;
    fake.add_token("tok");
    let item = "0123456789abcdef0123456789abcdef";
    fake.add_media(
        item,
        Media {
            bytes: wav(30),
            content_type: "audio/wav".into(),
            ..Media::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jellyfin_token"), "tok").unwrap();

    // A stand-in supervisor with no session: every command is refused, as the real one
    // answers while waiting in discovery (supervisor.rs `wait`: ControlError::NoSession).
    let (control, mut endpoint) = control::channel(SpeakerStatus::new("Living Room", 30_000));
    let spotify_commands = Arc::new(Mutex::new(Vec::new()));
    {
        let seen = spotify_commands.clone();
        tokio::spawn(async move {
            while let Some((command, reply)) = endpoint.commands.recv().await {
                seen.lock().unwrap().push(command);
                let _ = reply.send(Err(control::ControlError::NoSession));
            }
        });
    }
    let mixer: Arc<dyn Mixer> = Arc::new(TestMixer::open(MixerConfig::default()).unwrap());
    let cell = CastStatusCell::new();
    let (slot_tx, slot_rx) = watch::channel(None);
    let sources = Sources {
        spotify: SpotifySource {
            control: control.clone(),
        },
        cast: Some(Arc::new(CastSource {
            handle: slot_rx,
            status: cell.clone(),
        })),
        mixer: Some(mixer.clone()),
        mixer_changed: Default::default(),
    };
    let settings = JellyfinSettings {
        cast: Some(CastSettings {
            output: CaptureOutput::factory(Arc::new(Mutex::new(Default::default())), Some(1.0)),
            mixer: mixer.clone(),
            lock: AudioDeviceLock::new(),
            stream: StreamSettings::default(),
            handover_wait: Duration::from_secs(3),
            progress_every: Duration::from_secs(10),
            paused_check_in: pispeaker::jellyfin::PAUSED_CHECK_IN,
            status: cell.clone(),
        }),
        request_timeout: Duration::from_secs(5),
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(1),
        mixer_changed: sources.mixer_changed.clone(),
        ..JellyfinSettings::from_config(
            &pispeaker::config::Config {
                name: "Living Room".into(),
                cache: dir.path().to_path_buf(),
                ..Default::default()
            },
            fake.url(),
        )
    };
    let (state_tx, state_rx) = watch::channel(JellyfinState::Disabled);
    let (_shutdown, shutdown) = watch::channel(false);
    let hub = EventHub::new();
    // A poll far longer than the test: the volume event can only come from the shared notify.
    tokio::spawn(bridge::run(
        hub.clone(),
        sources.clone(),
        state_rx,
        Duration::from_secs(3600),
        shutdown.clone(),
    ));
    tokio::spawn(jellyfin::run_publishing_cast(
        settings,
        control,
        state_tx,
        Some(slot_tx),
        shutdown,
    ));
    until(Duration::from_secs(30), "the sidecar connected", || {
        has(&hub, "jellyfin", "state", "connected")
    })
    .await;

    // Idle speaker: the app's volume slider still moves the speaker's volume.
    fake.push(r#"{"MessageType":"GeneralCommand","Data":{"Name":"SetVolume","Arguments":{"Volume":"25"}}}"#);
    until(Duration::from_secs(10), "the mixer at 25 %", || {
        mixer.volume() == pispeaker::jellyfin::percent_to_volume(25.0)
    })
    .await;
    until(Duration::from_secs(10), "a volume event", || {
        events(&hub)
            .iter()
            .any(|e| e.kind == "volume" && e.data["percent"] == 25)
    })
    .await;
    // A pause reaches Spotify (which has nothing to pause, and says so).
    fake.push(r#"{"MessageType":"Playstate","Data":{"Command":"Pause"}}"#);
    until(Duration::from_secs(10), "Spotify got the pause", || {
        spotify_commands.lock().unwrap().contains(&Command::Pause)
    })
    .await;

    // A cast plays: the same remote commands now reach it.
    fake.push(&format!(
        r#"{{"MessageType":"Play","Data":{{"ItemIds":["{item}"],"PlayCommand":"PlayNow","StartIndex":0,"StartPositionTicks":0,"ControllingUserId":"0f0e0d0c0b0a09080706050403020100"}}}}"#
    ));
    until(Duration::from_secs(30), "the cast plays", || {
        sources.active().kind() == SourceKind::Jellyfin
            && sources.active().now_playing().state == pispeaker::source::PlayState::Playing
    })
    .await;
    let spotify_before = spotify_commands.lock().unwrap().len();
    fake.push(r#"{"MessageType":"GeneralCommand","Data":{"Name":"VolumeUp"}}"#);
    until(Duration::from_secs(10), "one step up", || {
        mixer.volume() > pispeaker::jellyfin::percent_to_volume(25.0)
    })
    .await;
    fake.push(r#"{"MessageType":"Playstate","Data":{"Command":"Pause"}}"#);
    until(Duration::from_secs(10), "the cast paused", || {
        sources.active().now_playing().state == pispeaker::source::PlayState::Paused
    })
    .await;
    assert_eq!(
        spotify_commands.lock().unwrap().len(),
        spotify_before,
        "nothing went to Spotify while the cast played"
    );
}
