//! The event sequences clients see, with the real supervisor on the scripted fake backend
//! (`connect::fake_backend`) on tokio's paused clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use librespot_core::authentication::Credentials;
use librespot_playback::mixer::Mixer;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::*;
use crate::audio::{HardwareMixer, SimControl, VolumeCurveKind};
use crate::connect::control::{self, SpeakerStatus};
use crate::connect::fake_backend::{FakeBackend, FakeWorld};
use crate::connect::session::PlayerSignal;
use crate::connect::supervisor::{CredentialCache, Supervisor, SupervisorSettings};
use crate::source::{CommandFuture, Source, SourceCommand, SpotifySource};
use crate::web::events::Event;

struct OneUser;

impl CredentialCache for OneUser {
    fn load(&self) -> Option<Credentials> {
        Some(Credentials {
            username: Some("u".into()),
            auth_data: vec![1, 2, 3],
            ..Credentials::default()
        })
    }
    fn save(&self, _: &Credentials) {}
    fn set_aside(&self, _: &str) {}
    fn login_deaths(&self) -> u32 {
        0
    }
    fn set_login_deaths(&self, _: u32) {}
    fn premium_required(&self) -> bool {
        false
    }
    fn set_premium_required(&self, _: bool) {}
}

struct Speaker {
    world: Arc<Mutex<FakeWorld>>,
    signals: mpsc::UnboundedSender<PlayerSignal>,
    sources: Sources,
    hub: EventHub,
    jellyfin: watch::Sender<JellyfinState>,
    _shutdown: watch::Sender<bool>,
}

fn speaker(cast: Option<Arc<dyn Source>>) -> Speaker {
    speaker_with(cast, true)
}

/// `spotify_takes_over`: Spotify has a playback to hand us (the session activates at once);
/// false: the session logs in and waits, inactive, until someone picks the speaker.
fn speaker_with(cast: Option<Arc<dyn Source>>, spotify_takes_over: bool) -> Speaker {
    let sim = SimControl::pcm512x(160);
    let mixer: Arc<dyn Mixer> =
        Arc::new(HardwareMixer::new(sim, VolumeCurveKind::Log, 60.0).unwrap());
    let mut fake_world = FakeWorld::default();
    fake_world.auto_transfer = spotify_takes_over;
    fake_world.transfer_on_request = spotify_takes_over;
    let world = Arc::new(Mutex::new(fake_world));
    let (signals_tx, signals_rx) = mpsc::unbounded_channel();
    let (_discovered_tx, discovered_rx) = mpsc::channel(1);
    let (handle, endpoint) = control::channel(SpeakerStatus::new("test", mixer.volume()));
    let backend = FakeBackend {
        world: world.clone(),
        events: signals_tx.clone(),
        mixer: mixer.clone(),
    };
    let supervisor = Supervisor::new(
        backend,
        mixer.clone(),
        Box::new(OneUser),
        discovered_rx,
        signals_rx,
        endpoint,
        SupervisorSettings::default(),
    );
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Keep discovery's sender alive for the supervisor's whole life.
    std::mem::forget(_discovered_tx);
    let sources = Sources {
        spotify: SpotifySource { control: handle },
        cast,
        mixer: Some(mixer),
        mixer_changed: Default::default(),
    };
    let hub = EventHub::new();
    let (jellyfin_tx, jellyfin_rx) = watch::channel(JellyfinState::Disabled);
    tokio::spawn(run(
        hub.clone(),
        sources.clone(),
        jellyfin_rx,
        Duration::from_millis(100),
        shutdown_rx.clone(),
    ));
    // The bridge subscribes first, so it sees the supervisor from its first state change.
    tokio::spawn(supervisor.run(shutdown_rx));
    Speaker {
        world,
        signals: signals_tx,
        sources,
        hub,
        jellyfin: jellyfin_tx,
        _shutdown: shutdown_tx,
    }
}

impl Speaker {
    /// Every event so far (the ring, from the start).
    fn events(&self) -> Vec<Event> {
        self.hub.subscribe(Some(0)).0
    }

    /// Waits (virtual time) until an event matching `what` was published.
    async fn until_event(&self, what: &str, matches: impl Fn(&Event) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.events().iter().any(&matches) {
            assert!(
                Instant::now() < deadline,
                "no {what} event; got {:?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn until_sessions(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.world.lock().unwrap().sessions.len() < n {
            assert!(Instant::now() < deadline, "no session {n}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn is(kind: &'static str, field: &'static str, value: &'static str) -> impl Fn(&Event) -> bool {
    move |e| e.kind == kind && e.data[field] == value
}

/// Kind, plus the `state` of connection events: what a client reacts to.
fn summary(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e.data.get("state").and_then(Value::as_str) {
            Some(state) => format!("{}:{state}", e.kind),
            None => e.kind.to_string(),
        })
        .collect()
}

fn assert_numbered(events: &[Event]) {
    for pair in events.windows(2) {
        assert_eq!(pair[1].id, pair[0].id + 1, "{events:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn play_volume_loss_reconnect_in_order_with_the_session_kept() {
    let s = speaker(None);
    s.until_sessions(1).await;
    s.until_event("connected", is("connection", "state", "connected"))
        .await;

    assert_eq!(
        s.sources.command(SourceCommand::Play).await,
        Ok(SourceKind::Spotify)
    );
    s.until_event("playing", |e| e.kind == "playing").await;
    s.sources
        // Not the start-up volume's step (39867), or nothing would change.
        .command(SourceCommand::SetVolume(20_000))
        .await
        .unwrap();
    s.until_event("volume", |e| {
        // The value the control took: the nearest of its 208 steps.
        e.kind == "volume" && e.data["percent"] == 31
    })
    .await;

    let first = s.world.lock().unwrap().sessions[0].clone();
    first.lose(Some("connection reset"));
    s.until_sessions(2).await;
    s.until_event("reconnected", is("connection", "state", "reconnected"))
        .await;

    let events = s.events();
    assert_numbered(&events);
    let seen = summary(&events);
    let wanted = [
        "connection:connected",
        "playing",
        "volume",
        "connection:lost",
        "connection:reconnecting",
        "connection:reconnected",
    ];
    // In this order (other events, such as the pause Spirc's shutdown reports, may be between).
    let mut at = 0;
    for w in wanted {
        match seen[at..].iter().position(|k| k == w) {
            Some(i) => at += i + 1,
            None => panic!("{w} missing or out of order in {seen:?}"),
        }
    }
    let lost = events
        .iter()
        .find(|e| e.kind == "connection" && e.data["state"] == "lost")
        .unwrap();
    assert_eq!(lost.data["reason"], "connection reset");
    let back = events
        .iter()
        .find(|e| e.kind == "connection" && e.data["state"] == "reconnected")
        .unwrap();
    assert_eq!(back.data["session_kept"], true);
    assert_eq!(back.data["reconnect_count"], 1);
    // The supervisor really kept it (what `session_kept` promises).
    let world = s.world.lock().unwrap();
    assert_eq!(world.sessions[0].id, world.sessions[1].id);
    // The volume in percent too. The hardware control has 208 steps, so the supervisor's poll
    // may report the value the control really took (within a step of 20000) once more: same percent.
    let volumes: Vec<_> = events.iter().filter(|e| e.kind == "volume").collect();
    assert!((1..=2).contains(&volumes.len()), "{volumes:?}");
    assert!(
        volumes.iter().all(|v| v.data["percent"] == 31),
        "{volumes:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_volume_from_the_page_while_spotify_is_inactive_goes_to_the_mixer() {
    // Connected, but nobody picked the speaker: Spirc drops commands while inactive
    // (spirc.rs:660-662), so the ControlHandle answers NotActive, and the page's volume must
    // still change the speaker (the next session starts from the mixer).
    let s = speaker_with(None, false);
    s.until_sessions(1).await;
    s.until_event("connected", is("connection", "state", "connected"))
        .await;
    assert_eq!(
        s.sources
            .spotify
            .control
            .send(crate::connect::control::Command::SetVolume(30_000))
            .await,
        Err(crate::connect::control::ControlError::NotActive)
    );
    assert_eq!(
        s.sources.command(SourceCommand::SetVolume(30_000)).await,
        Ok(SourceKind::Spotify)
    );
    let mixer = s.sources.mixer.clone().unwrap();
    // The control has 208 steps: the value it really took is within one step.
    assert!(
        (i32::from(mixer.volume()) - 30_000).abs() < 400,
        "{}",
        mixer.volume()
    );
    s.until_event("volume", |e| e.kind == "volume").await;
    // Nothing was sent to Spotify for it: the supervisor's sync gets NotActive too and drops it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let world = s.world.lock().unwrap();
    assert!(
        !world
            .commands
            .iter()
            .any(|(_, _, c)| matches!(c, crate::connect::session::SessionCommand::SetVolume(_))),
        "{:?}",
        world.commands
    );
    assert!((i32::from(mixer.volume()) - 30_000).abs() < 400);
}

/// A source that can take the speaker, under the test's control (the real cast needs a Jellyfin
/// server; its handle is covered by `source`'s tests and the daemon's).
#[derive(Default)]
struct TestCast {
    active: AtomicBool,
    playing: AtomicBool,
}

impl Source for TestCast {
    fn kind(&self) -> SourceKind {
        SourceKind::Jellyfin
    }
    fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }
    fn now_playing(&self) -> NowPlaying {
        let playing = self.playing.load(Ordering::SeqCst);
        NowPlaying {
            source: SourceKind::Jellyfin,
            state: if playing {
                PlayState::Playing
            } else {
                PlayState::Stopped
            },
            title: playing.then(|| "0123abcd".to_string()),
            artists: Vec::new(),
            album: None,
            position_ms: Some(0),
            duration_ms: None,
        }
    }
    fn command(&self, _: SourceCommand) -> CommandFuture<'_> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test(start_paused = true)]
async fn spotify_to_jellyfin_handover_and_the_pairing_are_events() {
    let cast = Arc::new(TestCast::default());
    let s = speaker(Some(cast.clone()));
    s.until_sessions(1).await;
    s.sources.command(SourceCommand::Play).await.unwrap();
    s.until_event("spotify playing", is("playing", "source", "spotify"))
        .await;

    s.jellyfin.send_replace(JellyfinState::Pairing {
        code: "123456".into(),
    });
    s.until_event("pairing", is("jellyfin", "state", "pairing"))
        .await;
    s.jellyfin.send_replace(JellyfinState::Connected {
        server: "http://jf:8096".into(),
    });
    s.until_event("connected", is("jellyfin", "state", "connected"))
        .await;

    // The cast takes the device: it pauses Spotify (as the cast player does) and plays.
    cast.active.store(true, Ordering::SeqCst);
    cast.playing.store(true, Ordering::SeqCst);
    s.signals
        .send(PlayerSignal::Paused { position_ms: 1000 })
        .unwrap();
    s.until_event("jellyfin playing", is("playing", "source", "jellyfin"))
        .await;
    s.until_event("source", is("source", "active", "jellyfin"))
        .await;
    // Commands now go to the cast.
    assert_eq!(
        s.sources.command(SourceCommand::Pause).await,
        Ok(SourceKind::Jellyfin)
    );

    let events = s.events();
    assert_numbered(&events);
    let pairing = events.iter().find(|e| e.kind == "jellyfin").unwrap();
    assert_eq!(pairing.data["code"], "123456");
    let source = events.iter().find(|e| e.kind == "source").unwrap();
    assert_eq!(source.data["previous"], "spotify");
    let pos = |f: &dyn Fn(&Event) -> bool| events.iter().position(f).unwrap();
    assert!(pos(&is("playing", "source", "spotify")) < pos(&is("jellyfin", "state", "connected")));
    assert!(pos(&is("jellyfin", "state", "connected")) < pos(&is("track", "source", "jellyfin")));

    // And back: the cast stops, Spotify is the active source again.
    cast.active.store(false, Ordering::SeqCst);
    cast.playing.store(false, Ordering::SeqCst);
    s.until_event("back to spotify", is("source", "active", "spotify"))
        .await;
    s.until_event("jellyfin stopped", is("stopped", "source", "jellyfin"))
        .await;
}
