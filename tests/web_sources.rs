//! The web app's sources over the real Jellyfin cast player (fake Jellyfin server, loopback): a
//! Spotify → Jellyfin handover is seen as `source`, `track` and `playing` events, and the API's
//! commands (through `Sources`) reach the cast while it plays, then Spotify again.

mod support;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use librespot_playback::mixer::Mixer;
use librespot_playback::mixer::MixerConfig;
use pispeaker::audio::AudioDeviceLock;
use pispeaker::connect::control::{self, Command, SpeakerStatus};
use pispeaker::jellyfin::cast::{CaptureOutput, CastSettings, CastStatusCell, StreamSettings};
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
