//! A scripted stand-in for librespot 0.8's Session + Spirc, for the supervisor's tests.
//!
//! It does for the supervisor only what the real pair does, with the same timing and ordering;
//! each behaviour cites the librespot 0.8.0 source it models (`connect/src/spirc.rs`,
//! `core/src/session.rs`, `core/src/dealer/{mod,manager}.rs`). What the real pair does that the
//! supervisor has to cope with, and that an obliging fake would hide:
//!
//! - the start-up volume is written to the mixer only after login, at the end of `Spirc::new`;
//! - every command but `transfer` is ignored while the device is not active;
//! - `SessionConnected` comes only when Spotify's cluster allows the automatic transfer;
//! - shutting down pauses the player and says goodbye over HTTPS, which can take long or hang;
//! - the dealer holds the session until it is closed, so an aborted Spirc leaks its session;
//! - a non-premium account makes librespot call `exit(1)`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use librespot_core::authentication::Credentials;
use librespot_playback::mixer::Mixer;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::session::{
    ConnectBackend, ConnectFailure, ConnectRequest, ConnectSession, PlayerSignal, SessionCommand,
    SessionToken,
};

/// The device id every fake session registers (one speaker).
pub const THIS_DEVICE: &str = "this-speaker";

/// core/src/dealer/mod.rs:57 (`RECONNECT_INTERVAL`): a dealer whose websocket is gone retries
/// this often, for as long as it is not closed.
pub const DEALER_RETRY: Duration = Duration::from_secs(10);

/// Everything the fake saw, and how it should behave next.
pub struct FakeWorld {
    pub requests: Vec<(Instant, ConnectRequest)>,
    /// Results of the next connects; empty = success.
    pub script: VecDeque<ConnectFailure>,
    pub sessions: Vec<FakeSessionCtl>,
    /// Commands Spirc acted on: (time, session index, command).
    pub commands: Vec<(Instant, usize, SessionCommand)>,
    /// Commands Spirc dropped because the device was not active (spirc.rs:660-662).
    pub ignored: Vec<(Instant, usize, SessionCommand)>,
    /// (time, session index): `shutdown()` was asked.
    pub shutdowns: Vec<(Instant, usize)>,
    /// (time, session index): the Spirc put its connect state, i.e. registered the device.
    pub registrations: Vec<(Instant, usize)>,
    /// (time, session index): the Spirc's goodbye (disconnect + delete_connect_state) reached
    /// Spotify.
    pub goodbyes: Vec<(Instant, usize)>,
    /// Spotify has a transfer state to take over (`cluster.transfer_data` non-empty).
    pub auto_transfer: bool,
    /// What Spotify's cluster lists as the active device. Set when a session activates, cleared
    /// by its goodbye; an abandoned session leaves it set, as an outage does on the server.
    pub active_device: Option<String>,
    /// The cluster's `player_state.session_id`: the last active session's id.
    pub cluster_session_id: String,
    /// A `transfer` request activates the device.
    pub transfer_on_request: bool,
    /// How long `Spirc::new` takes to log in before it writes the start-up volume.
    pub login_time: Duration,
    /// How long the goodbye's two HTTPS requests take; `None`: they hang (every packet dropped).
    pub goodbye_time: Option<Duration>,
    /// The account has Spotify Premium.
    pub premium: bool,
    /// How many times librespot would have called `exit(1)` (session.rs:364-372).
    pub process_exits: usize,
    /// Reconnect attempts of dealers whose session is dead.
    pub dealer_retries: u64,
    /// Registrations made while an older Spirc task was still running (its goodbye could still
    /// unregister the device after the new one registered).
    pub overlapping_registrations: usize,
    pub next_id: u32,
    session_refs: Vec<Weak<Inner>>,
    spirc_refs: Vec<Weak<SpircAlive>>,
    dealer_refs: Vec<Weak<DealerAlive>>,
}

impl Default for FakeWorld {
    fn default() -> Self {
        Self {
            requests: Vec::new(),
            script: VecDeque::new(),
            sessions: Vec::new(),
            commands: Vec::new(),
            ignored: Vec::new(),
            shutdowns: Vec::new(),
            registrations: Vec::new(),
            goodbyes: Vec::new(),
            auto_transfer: false,
            active_device: None,
            cluster_session_id: String::new(),
            transfer_on_request: false,
            // Client token, AP handshake, login and login5 token: about a second on a Pi.
            login_time: Duration::from_millis(500),
            // Two HTTPS requests to spclient.
            goodbye_time: Some(Duration::from_millis(100)),
            premium: true,
            process_exits: 0,
            dealer_retries: 0,
            overlapping_registrations: 0,
            next_id: 0,
            session_refs: Vec::new(),
            spirc_refs: Vec::new(),
            dealer_refs: Vec::new(),
        }
    }
}

impl FakeWorld {
    pub fn plays_on(&self, session: usize) -> usize {
        self.commands
            .iter()
            .filter(|(_, s, c)| *s == session && *c == SessionCommand::Play)
            .count()
    }

    /// Fake sessions something still holds (a Spirc task, a dealer, a handle).
    pub fn live_sessions(&self) -> usize {
        self.session_refs
            .iter()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    /// Spirc tasks still running.
    pub fn live_spircs(&self) -> usize {
        self.spirc_refs
            .iter()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    /// Dealer tasks still running.
    pub fn live_dealers(&self) -> usize {
        self.dealer_refs
            .iter()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

/// State shared by a session's handle, its Spirc task and its dealer task.
struct Inner {
    index: usize,
    id: String,
    invalid: AtomicBool,
    logged_out: AtomicBool,
    reason: Mutex<Option<String>>,
    /// `connect_state.is_active()`.
    active: AtomicBool,
    /// `connect_state.device_info().volume`.
    device_volume: AtomicU16,
    /// A dealer message or command wakes the Spirc loop (spirc.rs:447-560, `select!`).
    wake: Notify,
    /// The dealer, owned by the session as in `DealerManager` (core/src/dealer/manager.rs:169).
    dealer: Mutex<Option<watch::Sender<bool>>>,
    token: Arc<SessionToken>,
    world: Arc<Mutex<FakeWorld>>,
    events: mpsc::UnboundedSender<PlayerSignal>,
    mixer: Arc<dyn Mixer>,
}

struct DealerAlive;
struct SpircAlive;

impl Inner {
    fn world(&self) -> std::sync::MutexGuard<'_, FakeWorld> {
        self.world.lock().unwrap()
    }

    fn emit(&self, signal: PlayerSignal) {
        let _ = self.events.send(signal);
    }

    /// spirc.rs:1806-1822 `set_volume`: the mixer is written when the value differs from the
    /// device's or the mixer's; `VolumeChanged` only while active.
    fn set_volume(&self, volume: u16) {
        let old = self.device_volume.load(Ordering::SeqCst);
        if old != volume || self.mixer.volume() != volume {
            self.device_volume.store(volume, Ordering::SeqCst);
            self.mixer.set_volume(volume);
            if self.active.load(Ordering::SeqCst) {
                self.emit(PlayerSignal::VolumeChanged(volume));
            }
        }
    }

    /// spirc.rs:1241-1252 `handle_activate`: active, `SessionConnected`, then the volume.
    fn activate(&self) {
        self.active.store(true, Ordering::SeqCst);
        {
            let mut world = self.world();
            world.active_device = Some(THIS_DEVICE.to_string());
            world.cluster_session_id = self.id.clone();
        }
        self.emit(PlayerSignal::SessionConnected);
        self.emit(PlayerSignal::VolumeChanged(
            self.device_volume.load(Ordering::SeqCst),
        ));
    }

    /// core/src/dealer/manager.rs:169-173: closing takes the dealer and ends its loop.
    fn close_dealer(&self) {
        if let Some(close) = self.dealer.lock().unwrap().take() {
            close.send_replace(true);
        }
    }
}

/// How a test drives a session.
#[derive(Clone)]
pub struct FakeSessionCtl {
    pub id: String,
    inner: Weak<Inner>,
}

impl FakeSessionCtl {
    fn with(&self, f: impl FnOnce(&Inner)) {
        if let Some(inner) = self.inner.upgrade() {
            f(&inner);
        }
    }

    /// The connection dies and Spirc notices (a dealer message wakes its loop, which checks
    /// `is_invalid()` at the top, spirc.rs:441).
    pub fn lose(&self, reason: Option<&str>) {
        self.with(|inner| {
            *inner.reason.lock().unwrap() = reason.map(str::to_string);
            inner.invalid.store(true, Ordering::SeqCst);
            inner.wake.notify_one();
        });
    }

    /// The connection dies but nothing wakes Spirc's loop: it waits (upstream PR #1692).
    pub fn hang(&self) {
        self.with(|inner| inner.invalid.store(true, Ordering::SeqCst));
    }

    /// Spirc ends with a live session (a logout from the app).
    pub fn end_spirc(&self) {
        self.with(|inner| {
            inner.logged_out.store(true, Ordering::SeqCst);
            inner.wake.notify_one();
        });
    }

    /// The user moves the slider in the app: Spotify's volume message (spirc.rs:473-477).
    pub fn app_sets_volume(&self, volume: u16) {
        self.with(|inner| inner.set_volume(volume));
    }

    /// The user picks this speaker in the app: Spotify sends the transfer command
    /// (spirc.rs:1093-1154 `handle_transfer` → `handle_activate`).
    pub fn app_transfers_here(&self) {
        self.with(|inner| inner.activate());
    }

    /// Another device takes over: `handle_disconnect` (spirc.rs:1215-1228) makes this one
    /// inactive and emits `SessionDisconnected`.
    pub fn another_device_takes_over(&self) {
        self.with(|inner| {
            inner.active.store(false, Ordering::SeqCst);
            inner.world().active_device = Some("another-device".into());
            inner.emit(PlayerSignal::Stopped);
            inner.emit(PlayerSignal::SessionDisconnected);
        });
    }

    pub fn is_active(&self) -> bool {
        self.inner
            .upgrade()
            .is_some_and(|i| i.active.load(Ordering::SeqCst))
    }
}

pub struct FakeBackend {
    pub world: Arc<Mutex<FakeWorld>>,
    pub events: mpsc::UnboundedSender<PlayerSignal>,
    pub mixer: Arc<dyn Mixer>,
}

pub struct FakeSession {
    inner: Arc<Inner>,
    shutdown_tx: watch::Sender<bool>,
    end_rx: watch::Receiver<bool>,
    ended: bool,
    task: JoinHandle<()>,
}

impl ConnectBackend for FakeBackend {
    type Session = FakeSession;

    async fn connect(&mut self, request: ConnectRequest) -> Result<FakeSession, ConnectFailure> {
        let login_time = {
            let mut world = self.world.lock().unwrap();
            world.requests.push((Instant::now(), request.clone()));
            world.login_time
        };
        // spirc.rs:209-216: client token, `session.connect` (login), login5 token; a failure of
        // any of them is what `Spirc::new` returns.
        tokio::time::sleep(login_time).await;
        let (failure, premium) = {
            let mut world = self.world.lock().unwrap();
            (world.script.pop_front(), world.premium)
        };
        if let Some(failure) = failure {
            return Err(failure);
        }
        if !premium {
            // core/src/session.rs:364-372: `check_catalogue` calls `exit(1)` for any account
            // type but premium, right after login. The process is gone: nothing returns.
            self.world.lock().unwrap().process_exits += 1;
            return std::future::pending().await;
        }
        let id = match request.session_id {
            Some(id) => id,
            None => {
                let mut world = self.world.lock().unwrap();
                world.next_id += 1;
                format!("{:08x}{}", world.next_id, "0".repeat(24))
            }
        };
        let (dealer_tx, dealer_rx) = watch::channel(false);
        let index = self.world.lock().unwrap().sessions.len();
        let inner = Arc::new(Inner {
            index,
            id: id.clone(),
            invalid: AtomicBool::new(false),
            logged_out: AtomicBool::new(false),
            reason: Mutex::new(None),
            active: AtomicBool::new(false),
            device_volume: AtomicU16::new(0),
            wake: Notify::new(),
            dealer: Mutex::new(Some(dealer_tx)),
            token: Arc::new(SessionToken),
            world: self.world.clone(),
            events: self.events.clone(),
            mixer: self.mixer.clone(),
        });
        let dealer_alive = Arc::new(DealerAlive);
        {
            let mut world = self.world.lock().unwrap();
            world.sessions.push(FakeSessionCtl {
                id,
                inner: Arc::downgrade(&inner),
            });
            world.session_refs.push(Arc::downgrade(&inner));
            world.dealer_refs.push(Arc::downgrade(&dealer_alive));
        }
        // spirc.rs:262-270: at the very end of `Spirc::new`, after login, the device volume is
        // zeroed and `set_volume(initial_volume)` writes the mixer (not active: no event).
        inner.set_volume(request.initial_volume);
        tokio::spawn(run_dealer(inner.clone(), dealer_rx, dealer_alive));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (end_tx, end_rx) = watch::channel(false);
        let spirc_alive = Arc::new(SpircAlive);
        self.world
            .lock()
            .unwrap()
            .spirc_refs
            .push(Arc::downgrade(&spirc_alive));
        let task = tokio::spawn(run_spirc(inner.clone(), shutdown_rx, end_tx, spirc_alive));
        Ok(FakeSession {
            inner,
            shutdown_tx,
            end_rx,
            ended: false,
            task,
        })
    }
}

/// The dealer's reconnect loop (core/src/dealer/mod.rs:700-716): it holds a strong `Session`
/// (the `get_url` closure, core/src/dealer/manager.rs:150-153) and runs until closed.
async fn run_dealer(
    inner: Arc<Inner>,
    mut closed: watch::Receiver<bool>,
    _alive: Arc<DealerAlive>,
) {
    loop {
        if *closed.borrow_and_update() {
            return;
        }
        tokio::select! {
            changed = closed.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(DEALER_RETRY) => {
                if inner.invalid.load(Ordering::SeqCst) {
                    inner.world().dealer_retries += 1;
                }
            }
        }
    }
}

/// `SpircTask::run` (spirc.rs:437-580).
async fn run_spirc(
    inner: Arc<Inner>,
    mut shutdown: watch::Receiver<bool>,
    end: watch::Sender<bool>,
    alive: Arc<SpircAlive>,
) {
    register(&inner, &alive);
    // spirc.rs:441: the loop runs while the session is valid and no shutdown was asked, checked
    // only when something wakes it.
    let asked = loop {
        if inner.invalid.load(Ordering::SeqCst) || inner.logged_out.load(Ordering::SeqCst) {
            break false;
        }
        tokio::select! {
            _ = shutdown.changed() => break true,
            _ = inner.wake.notified() => {}
        }
    };
    if asked {
        // spirc.rs:635-638: Shutdown pauses the player, then `handle_disconnect`.
        inner.emit(PlayerSignal::Paused { position_ms: 0 });
    }
    // spirc.rs:567-571 (`handle_disconnect` when active) and 575 (`delete_connect_state`):
    // both over HTTPS, which works while only the access point is unreachable.
    let goodbye = inner.world().goodbye_time;
    match goodbye {
        Some(time) => tokio::time::sleep(time).await,
        None => std::future::pending().await,
    }
    {
        let mut world = inner.world();
        world.goodbyes.push((Instant::now(), inner.index));
        // The goodbye clears this device from the cluster, whichever Spirc registered it last.
        if world.active_device.as_deref() == Some(THIS_DEVICE) {
            world.active_device = None;
        }
    }
    if inner.active.swap(false, Ordering::SeqCst) || asked {
        // `handle_disconnect` ends with `emit_session_disconnected_event` (spirc.rs:1221-1222).
        inner.emit(PlayerSignal::SessionDisconnected);
    }
    // spirc.rs:579
    inner.close_dealer();
    end.send_replace(true);
}

/// spirc.rs:820-866 `handle_connection_id_update`: the device is put into the cluster; the
/// automatic transfer happens only when no device is active and the cluster's session id is
/// empty or this session's, and there is a transfer state.
fn register(inner: &Inner, alive: &Arc<SpircAlive>) {
    let take_over = {
        let mut world = inner.world();
        world.registrations.push((Instant::now(), inner.index));
        let others = world
            .spirc_refs
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|other| !Arc::ptr_eq(other, alive))
            .count();
        if others > 0 {
            world.overlapping_registrations += 1;
        }
        world.spirc_refs.retain(|w| w.strong_count() > 0);
        let same_session =
            world.cluster_session_id.is_empty() || world.cluster_session_id == inner.id;
        world.active_device.is_none() && same_session && world.auto_transfer
    };
    if take_over {
        // spirc.rs:1093-1154 `handle_transfer` → `handle_activate`.
        inner.activate();
    }
}

impl ConnectSession for FakeSession {
    fn session_id(&self) -> String {
        self.inner.id.clone()
    }

    fn is_invalid(&self) -> bool {
        self.inner.invalid.load(Ordering::SeqCst)
    }

    async fn ended(&mut self) {
        if self.ended {
            return std::future::pending().await;
        }
        while !*self.end_rx.borrow_and_update() {
            if self.end_rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
        self.ended = true;
    }

    fn reusable_credentials(&self) -> Option<Credentials> {
        Some(Credentials {
            username: Some("fake-user".into()),
            ..Credentials::default()
        })
    }

    /// `Spirc`'s methods only queue the command (spirc.rs:282-370) and return Ok.
    fn command(&self, command: SessionCommand) -> Result<(), String> {
        let inner = &self.inner;
        let now = Instant::now();
        let active = inner.active.load(Ordering::SeqCst);
        let is_transfer = matches!(
            command,
            SessionCommand::Transfer | SessionCommand::TransferPaused
        );
        if is_transfer == active {
            // spirc.rs:656-662: a transfer while active, or anything else while not active, is
            // ignored with a warning.
            inner.world().ignored.push((now, inner.index, command));
            return Ok(());
        }
        let transfer_works = {
            let mut world = inner.world();
            world.commands.push((now, inner.index, command));
            world.transfer_on_request
        };
        match command {
            SessionCommand::Play => inner.emit(PlayerSignal::Playing { position_ms: 0 }),
            SessionCommand::Pause => inner.emit(PlayerSignal::Paused { position_ms: 0 }),
            SessionCommand::SetVolume(v) => inner.set_volume(v),
            // spirc.rs:644-650: a transfer to ourselves; Spotify answers with the transfer
            // command, which activates the device (spirc.rs:1093-1154).
            SessionCommand::Transfer | SessionCommand::TransferPaused if transfer_works => {
                inner.activate();
                if command == SessionCommand::TransferPaused {
                    inner.emit(PlayerSignal::Paused { position_ms: 0 });
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn loss_reason(&self) -> Option<String> {
        self.inner.reason.lock().unwrap().clone()
    }

    fn shutdown(&mut self) {
        self.inner
            .world()
            .shutdowns
            .push((Instant::now(), self.inner.index));
        // spirc.rs:282: `Spirc::shutdown` sends the command; the task does the rest.
        self.shutdown_tx.send_replace(true);
    }

    async fn abandon(&mut self) {
        // A tokio abort drops SpircTask::run where it stands: no goodbye (spirc.rs:567-575),
        // no `dealer().close()` (spirc.rs:579).
        self.task.abort();
        // What the production backend does next: core/src/dealer/manager.rs:169.
        self.inner.close_dealer();
    }

    fn liveness(&self) -> Weak<SessionToken> {
        Arc::downgrade(&self.inner.token)
    }
}
