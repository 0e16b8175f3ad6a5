//! The supervisor wired to the librespot fake, on tokio's paused clock, for the supervisor's
//! tests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use librespot_core::authentication::Credentials;
use librespot_playback::mixer::Mixer;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::backoff::Backoff;
use super::control::{self, ControlHandle, SpeakerStatus};
use super::fake_backend::{FakeBackend, FakeSessionCtl, FakeWorld};
use super::session::PlayerSignal;
use super::supervisor::{CredentialCache, Supervisor, SupervisorSettings};
use super::volume_gate::StartupGate;
use crate::audio::{HardwareMixer, SimControl, VolumeCurveKind};

#[derive(Default)]
pub struct StoreLog {
    pub current: Option<Credentials>,
    pub saved: usize,
    pub set_aside: Vec<String>,
    pub login_deaths: u32,
    pub premium_required: bool,
}

#[derive(Clone, Default)]
pub struct FakeStore(pub Arc<Mutex<StoreLog>>);

impl CredentialCache for FakeStore {
    fn load(&self) -> Option<Credentials> {
        self.0.lock().unwrap().current.clone()
    }
    fn save(&self, credentials: &Credentials) {
        let mut log = self.0.lock().unwrap();
        log.current = Some(credentials.clone());
        log.saved += 1;
    }
    fn set_aside(&self, why: &str) {
        let mut log = self.0.lock().unwrap();
        log.current = None;
        log.set_aside.push(why.to_string());
    }
    fn login_deaths(&self) -> u32 {
        self.0.lock().unwrap().login_deaths
    }
    fn set_login_deaths(&self, deaths: u32) {
        self.0.lock().unwrap().login_deaths = deaths;
    }
    fn premium_required(&self) -> bool {
        self.0.lock().unwrap().premium_required
    }
    fn set_premium_required(&self, required: bool) {
        self.0.lock().unwrap().premium_required = required;
    }
}

pub fn creds(user: &str) -> Credentials {
    Credentials {
        username: Some(user.into()),
        auth_data: vec![1, 2, 3],
        ..Credentials::default()
    }
}

pub struct Harness {
    pub world: Arc<Mutex<FakeWorld>>,
    pub sim: SimControl,
    pub mixer: Arc<dyn Mixer>,
    pub handle: ControlHandle,
    pub events: mpsc::UnboundedSender<PlayerSignal>,
    pub discovered: mpsc::Sender<Credentials>,
    pub store: FakeStore,
    pub shutdown: watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<()>,
    /// Bump to say a network address appeared (netlink in production).
    pub addresses: watch::Sender<u64>,
}

pub fn settings() -> SupervisorSettings {
    SupervisorSettings {
        transfer_timeout: Duration::from_secs(10),
        ..SupervisorSettings::default()
    }
}

pub fn start(
    cached: Option<Credentials>,
    settings: SupervisorSettings,
    auto_transfer: bool,
) -> Harness {
    let sim = SimControl::pcm512x(160);
    let mixer: Arc<dyn Mixer> =
        Arc::new(HardwareMixer::new(sim.clone(), VolumeCurveKind::Log, 60.0).unwrap());
    let mut world = FakeWorld::default();
    world.auto_transfer = auto_transfer;
    world.transfer_on_request = true;
    let world = Arc::new(Mutex::new(world));
    start_with(cached, settings, world, FakeStore::default(), sim, mixer)
}

/// As [`start`], with a given world and store (a restart keeps both) and mixer.
pub fn start_with(
    cached: Option<Credentials>,
    settings: SupervisorSettings,
    world: Arc<Mutex<FakeWorld>>,
    store: FakeStore,
    sim: SimControl,
    mixer: Arc<dyn Mixer>,
) -> Harness {
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (discovered_tx, discovered_rx) = mpsc::channel(4);
    let (handle, endpoint) = control::channel(SpeakerStatus::new("test", 0));
    if cached.is_some() {
        store.0.lock().unwrap().current = cached;
    }
    // As the daemon: Spirc gets the start-up gate, the supervisor holds it while connecting.
    let gate = StartupGate::new(mixer.clone());
    let backend = FakeBackend {
        world: world.clone(),
        events: events_tx.clone(),
        mixer: gate.clone(),
    };
    let supervisor = Supervisor::with_backoff(
        backend,
        mixer.clone(),
        Box::new(store.clone()),
        discovered_rx,
        events_rx,
        endpoint,
        settings.clone(),
        Backoff::with_rng(
            settings.backoff_initial,
            settings.backoff_max,
            StdRng::seed_from_u64(7),
        ),
    )
    .with_startup_gate(gate);
    let (addresses_tx, addresses_rx) = watch::channel(0u64);
    let supervisor = supervisor.with_address_events(addresses_rx);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(supervisor.run(shutdown_rx));
    Harness {
        world,
        sim,
        mixer,
        handle,
        events: events_tx,
        discovered: discovered_tx,
        store,
        shutdown: shutdown_tx,
        task,
        addresses: addresses_tx,
    }
}

impl Harness {
    /// Lets virtual time pass until `cond` holds (at most `limit`).
    pub async fn until(&self, limit: Duration, what: &str, cond: impl Fn(&FakeWorld) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if cond(&self.world.lock().unwrap()) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn wait_sessions(&self, n: usize) {
        self.until(Duration::from_secs(600), &format!("{n} sessions"), |w| {
            w.sessions.len() >= n
        })
        .await;
    }

    pub fn session(&self, i: usize) -> FakeSessionCtl {
        self.world.lock().unwrap().sessions[i].clone()
    }

    /// The user presses play in the app (the player reports it).
    pub async fn user_plays(&self) {
        self.events
            .send(PlayerSignal::Playing { position_ms: 1000 })
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    pub async fn user_pauses(&self) {
        self.events
            .send(PlayerSignal::Paused { position_ms: 2000 })
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    pub async fn stop(self) {
        self.shutdown.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("supervisor stops on shutdown")
            .unwrap();
    }
}
