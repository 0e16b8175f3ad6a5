//! The reconnect supervisor: owns the speaker's Spotify side for the life of the process.
//!
//! Loop: get credentials (cached, or from discovery) → connect (Session + Spirc) → watch →
//! on loss, rebuild — forever. What makes a reconnect invisible to the listener:
//!
//! - **session id**: the lost session's id is handed to the new one before Spirc starts, so
//!   Spotify's automatic transfer re-attaches playback;
//! - **volume**: the new Spirc starts with the mixer's *live* volume (what the knob says now), and
//!   the mixer writes nothing when asked for the step it is on, so there is no jump and no drift;
//! - **play intent**: whether the user was playing is tracked from player events and frozen the
//!   moment the loss is seen (the shutdown that follows pauses the player); after the new session
//!   is activated, `play()` is issued exactly once if the user had been playing. If no automatic
//!   transfer arrives in time, the speaker asks for the transfer itself.
//!
//! Loss is detected by the Spirc task ending, by a watchdog polling `is_invalid()` (Spirc can hang
//! on a dead session), and — underneath both — by librespot's keep-alive and the TCP options set
//! by [`super::ap_link`]. Network errors are retried with [`Backoff`] forever; only rejected
//! credentials end the loop for that account, sending the speaker back to discovery.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use librespot_core::authentication::Credentials;
use librespot_playback::mixer::Mixer;
use log::{debug, error, info, warn};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};

use super::backoff::Backoff;
use super::control::{Command, ControlEndpoint, ControlError, LossRecord, SpotifyState};
pub use super::credentials::CredentialCache;
pub use super::heartbeat::Heartbeat;
use super::liveness::SessionRegistry;
use super::netwatch::AddressEvents;
use super::session::{
    ConnectBackend, ConnectFailure, ConnectRequest, ConnectSession, PlayerSignal, SessionCommand,
};
use super::volume_gate::StartupGate;

/// Tunables, from the configuration.
#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    /// Volume for the very first connection of a fresh install (Spotify scale).
    pub first_volume: u16,
    /// True when no volume was ever stored: the first connection uses `first_volume`.
    pub fresh_install: bool,
    pub transfer_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A connection up this long resets the backoff.
    pub stable_after: Duration,
    /// How often `is_invalid()` is polled (and the heartbeat beats).
    pub watchdog_period: Duration,
    /// How often the mixer is read for changes made outside the daemon.
    pub volume_poll: Duration,
    /// Longest a single connection attempt may take.
    pub connect_timeout: Duration,
    /// Longest wait for an old Spirc's goodbye before it is abandoned and the next one starts.
    pub goodbye_timeout: Duration,
    /// A run that dies within this time after logging in leaves the login marker behind (see
    /// [`CredentialCache::login_deaths`]).
    pub login_check_window: Duration,
}

/// Runs in a row that died right after logging in before the account is taken to lack Premium.
/// Two, so that one power cut at the wrong second does not throw a user's login away.
pub const DEATHS_MEAN_NO_PREMIUM: u32 = 2;

impl Default for SupervisorSettings {
    fn default() -> Self {
        Self {
            first_volume: u16::MAX / 2,
            fresh_install: false,
            transfer_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            stable_after: Duration::from_secs(60),
            watchdog_period: Duration::from_secs(2),
            volume_poll: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(30),
            goodbye_timeout: Duration::from_secs(2),
            login_check_window: Duration::from_secs(15),
        }
    }
}

/// How a wait between connections ended.
enum Interrupt {
    Elapsed,
    NewCredentials(Credentials),
    Shutdown,
}

/// How a connection attempt ended.
enum AttemptEnd<S> {
    /// The backend answered (`Err(())`: the attempt timed out).
    Done(Result<Result<S, ConnectFailure>, ()>),
    NewCredentials(Credentials),
    Shutdown,
}

/// The user's intent, frozen at a loss.
#[derive(Debug, Clone, Copy)]
struct Frozen {
    playing: bool,
    /// This speaker was the active device: Spotify may still list it as active.
    active: bool,
}

/// How watching a live session ended.
enum WatchEnd {
    Lost {
        session_id: String,
        uptime: Duration,
    },
    NewCredentials(Credentials),
    Shutdown,
}

/// The supervisor. Build it, take its [`Heartbeat`], then `run` it.
pub struct Supervisor<B: ConnectBackend> {
    backend: B,
    mixer: Arc<dyn Mixer>,
    store: Box<dyn CredentialCache>,
    discovered: mpsc::Receiver<Credentials>,
    events: mpsc::UnboundedReceiver<PlayerSignal>,
    endpoint: ControlEndpoint,
    settings: SupervisorSettings,
    heartbeat: Heartbeat,
    backoff: Backoff,
    /// The user's intent as the player reports it.
    was_playing: Arc<AtomicBool>,
    /// The intent frozen at the moment of a loss; `Some` until the new session resolves it.
    frozen_intent: Option<Frozen>,
    /// Spirc has activated this device (it ignores every command but a transfer until then).
    active: bool,
    /// Set: Spirc's start-up volume write is kept off the mixer while connecting.
    gate: Option<Arc<StartupGate>>,
    registry: SessionRegistry,
    /// The login marker as found at start (runs that died after login).
    marker_base: u32,
    /// The marker is raised for the attempt or session in flight.
    marker_raised: bool,
    /// Ticks when a network address appears: a backoff wait ends at once.
    addresses: Option<AddressEvents>,
    /// The last connection failure, logged once until it changes or a connection succeeds.
    last_failure: Option<String>,
    /// What Spotify was last told the volume is.
    told_volume: u16,
    discovery_open: bool,
}

impl<B: ConnectBackend> Supervisor<B> {
    pub fn new(
        backend: B,
        mixer: Arc<dyn Mixer>,
        store: Box<dyn CredentialCache>,
        discovered: mpsc::Receiver<Credentials>,
        events: mpsc::UnboundedReceiver<PlayerSignal>,
        endpoint: ControlEndpoint,
        settings: SupervisorSettings,
    ) -> Self {
        let backoff = Backoff::new(settings.backoff_initial, settings.backoff_max);
        Self::with_backoff(
            backend, mixer, store, discovered, events, endpoint, settings, backoff,
        )
    }

    /// As [`Supervisor::new`] with a given backoff (seeded, in tests).
    #[allow(clippy::too_many_arguments)]
    pub fn with_backoff(
        backend: B,
        mixer: Arc<dyn Mixer>,
        store: Box<dyn CredentialCache>,
        discovered: mpsc::Receiver<Credentials>,
        events: mpsc::UnboundedReceiver<PlayerSignal>,
        endpoint: ControlEndpoint,
        settings: SupervisorSettings,
        backoff: Backoff,
    ) -> Self {
        Self {
            backend,
            mixer,
            store,
            discovered,
            events,
            endpoint,
            settings,
            heartbeat: Heartbeat::new(),
            backoff,
            was_playing: Arc::new(AtomicBool::new(false)),
            frozen_intent: None,
            active: false,
            gate: None,
            registry: SessionRegistry::default(),
            marker_base: 0,
            marker_raised: false,
            addresses: None,
            last_failure: None,
            told_volume: 0,
            discovery_open: true,
        }
    }

    /// The mixer handed to the backend (and so to Spirc) is `gate`: the supervisor holds it
    /// while connecting, so Spirc's late start-up write cannot undo a knob turned meanwhile.
    pub fn with_startup_gate(mut self, gate: Arc<StartupGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// A new network address ends a backoff wait at once (the Wi-Fi came up).
    pub fn with_address_events(mut self, addresses: AddressEvents) -> Self {
        self.addresses = Some(addresses);
        self
    }

    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat.clone()
    }

    /// Runs until `shutdown` turns true. Never returns on errors.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut credentials = self.store.load();
        let mut session_id: Option<String> = None;
        self.publish(|s| s.volume = self.mixer.volume());
        self.check_exit_loop(&mut credentials);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let creds = match credentials.take() {
                Some(creds) => creds,
                None => {
                    self.publish(|s| s.spotify = SpotifyState::Discovery);
                    match self.wait(None, &mut shutdown).await {
                        Interrupt::NewCredentials(c) => c,
                        Interrupt::Shutdown => return,
                        Interrupt::Elapsed => continue,
                    }
                }
            };

            let reconnecting = session_id.is_some();
            self.publish(|s| {
                s.spotify = if reconnecting {
                    SpotifyState::Reconnecting
                } else {
                    SpotifyState::Connecting
                }
            });
            let initial_volume = if self.settings.fresh_install {
                self.settings.first_volume
            } else {
                self.mixer.volume()
            };
            let request = ConnectRequest {
                credentials: creds.clone(),
                session_id: session_id.clone(),
                initial_volume,
            };
            self.raise_login_marker();
            let gate = match &self.gate {
                Some(gate) if !self.settings.fresh_install => Some(gate.clone()),
                _ => None,
            };
            if let Some(gate) = &gate {
                gate.hold();
            }

            let outcome = {
                // Only fields disjoint from `backend` are touched while the attempt runs; player
                // events are kept and handled afterwards.
                let Self {
                    backend,
                    heartbeat,
                    discovered,
                    endpoint,
                    events,
                    settings,
                    discovery_open,
                    ..
                } = &mut self;
                let mut signals = Vec::new();
                let connect =
                    tokio::time::timeout(settings.connect_timeout, backend.connect(request));
                tokio::pin!(connect);
                let mut tick = tokio::time::interval(settings.watchdog_period);
                let outcome = loop {
                    tokio::select! {
                        result = &mut connect => break AttemptEnd::Done(result.map_err(|_| ())),
                        _ = tick.tick() => heartbeat.beat(),
                        _ = shutdown.changed() => break AttemptEnd::Shutdown,
                        received = discovered.recv(), if *discovery_open => match received {
                            Some(c) => break AttemptEnd::NewCredentials(c),
                            None => *discovery_open = false,
                        },
                        Some((_, reply)) = endpoint.commands.recv() => {
                            let _ = reply.send(Err(ControlError::Reconnecting));
                        }
                        Some(signal) = events.recv() => signals.push(signal),
                    }
                };
                (outcome, signals)
            };
            let (outcome, signals) = outcome;
            if let Some(gate) = &gate {
                gate.release();
            }
            for signal in signals {
                self.on_signal_disconnected(signal);
            }
            let result = match outcome {
                AttemptEnd::Shutdown => return,
                AttemptEnd::NewCredentials(c) => {
                    info!("a new Spotify user picked the speaker while connecting");
                    self.lower_login_marker(self.marker_base);
                    credentials = Some(c);
                    session_id = None;
                    self.frozen_intent = None;
                    continue;
                }
                AttemptEnd::Done(Ok(result)) => result,
                AttemptEnd::Done(Err(())) => Err(ConnectFailure::Transient(format!(
                    "no answer within {} s",
                    self.settings.connect_timeout.as_secs()
                ))),
            };
            match result {
                Ok(session) => {
                    if let Some(previous) = &session_id {
                        let now = session.session_id();
                        if &now == previous {
                            info!("preserved session_id {}…", short_id(&now));
                        } else {
                            warn!(
                                "session_id changed across the reconnect ({}… → {}…)",
                                short_id(previous),
                                short_id(&now)
                            );
                        }
                    }
                    if let Some(reusable) = session.reusable_credentials() {
                        self.store.save(&reusable);
                    }
                    if self.last_failure.take().is_some() {
                        info!("reached Spotify again");
                    }
                    self.registry.register(session.liveness());
                    self.publish_alive();
                    self.settings.fresh_install = false;
                    match self.watch(session, reconnecting, &mut shutdown).await {
                        WatchEnd::Shutdown => return,
                        WatchEnd::NewCredentials(c) => {
                            credentials = Some(c);
                            session_id = None;
                            self.frozen_intent = None;
                            self.backoff.reset();
                        }
                        WatchEnd::Lost {
                            session_id: id,
                            uptime,
                        } => {
                            session_id = Some(id);
                            credentials = Some(creds);
                            if uptime >= self.settings.stable_after {
                                self.backoff.reset();
                            }
                            if self
                                .pause_before_retry(&mut credentials, &mut shutdown)
                                .await
                            {
                                return;
                            }
                        }
                    }
                }
                Err(ConnectFailure::CredentialsRejected(why)) => {
                    error!("Spotify rejected the stored credentials ({why}); waiting for the speaker to be picked in the Spotify app again");
                    self.store.set_aside("were rejected by Spotify");
                    self.lower_login_marker(0);
                    self.marker_base = 0;
                    session_id = None;
                    self.frozen_intent = None;
                    credentials = None;
                }
                Err(ConnectFailure::Transient(why)) => {
                    // The process survived the attempt: it says nothing about the account.
                    self.lower_login_marker(self.marker_base);
                    credentials = Some(creds);
                    // One line per kind of failure, not per attempt (the image's journal is in
                    // RAM and an access point may be off for hours); the rest at debug.
                    let repeated = self.last_failure.as_deref() == Some(why.as_str());
                    if !repeated {
                        warn!("cannot reach Spotify: {why}; retrying, waiting longer after each failure (at most {} s)", self.settings.backoff_max.as_secs());
                    } else {
                        debug!("cannot reach Spotify: {why}");
                    }
                    self.last_failure = Some(why);
                    if self
                        .pause_before_retry(&mut credentials, &mut shutdown)
                        .await
                    {
                        return;
                    }
                }
            }
        }
    }

    /// Waits the next backoff delay. New credentials replace the pending ones. True on shutdown.
    async fn pause_before_retry(
        &mut self,
        credentials: &mut Option<Credentials>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let delay = self.backoff.next_delay();
        if self.last_failure.is_none() {
            info!("reconnecting in {:.1} s", delay.as_secs_f64());
        } else {
            debug!("reconnecting in {:.1} s", delay.as_secs_f64());
        }
        match self.wait(Some(Instant::now() + delay), shutdown).await {
            Interrupt::Shutdown => true,
            Interrupt::Elapsed => false,
            Interrupt::NewCredentials(c) => {
                *credentials = Some(c);
                self.frozen_intent = None;
                false
            }
        }
    }

    /// Idles until `until` (or forever), staying alive for the watchdog and the control handle.
    async fn wait(
        &mut self,
        until: Option<Instant>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Interrupt {
        let mut tick = tokio::time::interval(self.settings.watchdog_period);
        let deadline = sleep_until(until.unwrap_or_else(far_future));
        tokio::pin!(deadline);
        let waiting_for_user = until.is_none();
        let mut addresses = self.addresses.clone();
        loop {
            let address_appeared = async {
                match addresses.as_mut() {
                    Some(rx) if !waiting_for_user => rx.changed().await.is_ok(),
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut deadline => return Interrupt::Elapsed,
                appeared = address_appeared => {
                    if appeared {
                        info!("a network address appeared; reconnecting now");
                        self.backoff.reset();
                        return Interrupt::Elapsed;
                    }
                    addresses = None;
                }
                _ = shutdown.changed() => return Interrupt::Shutdown,
                _ = tick.tick() => {
                    self.heartbeat.beat();
                    let live = self.mixer.volume();
                    self.publish(|s| s.volume = live);
                    self.publish_alive();
                }
                received = self.discovered.recv(), if self.discovery_open => match received {
                    Some(c) => return Interrupt::NewCredentials(c),
                    None => {
                        self.discovery_open = false;
                        if waiting_for_user {
                            warn!("discovery is off and there are no cached credentials: nothing to connect with");
                        }
                    }
                },
                Some((_, reply)) = self.endpoint.commands.recv() => {
                    let answer = if waiting_for_user { ControlError::NoSession } else { ControlError::Reconnecting };
                    let _ = reply.send(Err(answer));
                }
                Some(signal) = self.events.recv() => self.on_signal_disconnected(signal),
            }
        }
    }

    /// Watches a live session until it is lost, replaced or shut down.
    async fn watch(
        &mut self,
        mut session: B::Session,
        reconnected: bool,
        shutdown: &mut watch::Receiver<bool>,
    ) -> WatchEnd {
        let connected_at = Instant::now();
        self.active = false;
        self.told_volume = self.mixer.volume();
        let told = self.told_volume;
        self.publish(|s| {
            s.spotify = SpotifyState::Connected;
            s.volume = told;
            s.premium_required = false;
        });
        self.store.set_premium_required(false);
        // Only a reconnect of a speaker that was the active device needs the transfer
        // fallback; one that was not has nothing to restore.
        let mut transfer_deadline = match self.frozen_intent {
            Some(frozen) if reconnected && frozen.active => {
                Some(Instant::now() + self.settings.transfer_timeout)
            }
            Some(_) => {
                self.frozen_intent = None;
                None
            }
            None => None,
        };
        let mut fallback_requested = false;
        let mut watchdog = tokio::time::interval(self.settings.watchdog_period);
        let mut volume_poll = tokio::time::interval(self.settings.volume_poll);

        let mut spirc_ended = false;
        let reason = loop {
            let deadline = sleep_until(transfer_deadline.unwrap_or_else(far_future));
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    self.retire(session, ControlError::ShuttingDown, false).await;
                    return WatchEnd::Shutdown;
                }
                _ = session.ended() => {
                    spirc_ended = true;
                    break match (session.is_invalid(), session.loss_reason()) {
                        (_, Some(reason)) => reason,
                        (true, None) => "keep-alive timeout".to_string(),
                        (false, None) => "spirc ended".to_string(),
                    };
                }
                _ = watchdog.tick() => {
                    self.heartbeat.beat();
                    self.publish_alive();
                    if self.marker_raised && connected_at.elapsed() >= self.settings.login_check_window {
                        // Still alive well after the login: librespot did not exit, Premium.
                        self.lower_login_marker(0);
                        self.marker_base = 0;
                    }
                    if session.is_invalid() {
                        let cause = session.loss_reason().unwrap_or_else(|| "keep-alive timeout".into());
                        break format!("spirc hung on invalid session ({cause})");
                    }
                }
                Some(signal) = self.events.recv() => {
                    if signal == PlayerSignal::SessionDisconnected {
                        info!("another device took over playback; this speaker is no longer active");
                        self.active = false;
                    }
                    if signal == PlayerSignal::SessionConnected {
                        self.active = true;
                        transfer_deadline = None;
                        self.resolve_intent(&session, if fallback_requested { "transfer fallback" } else { "automatic transfer" });
                        // Spirc's own idea of the volume may be stale after a transfer.
                        self.sync_volume(&session, true);
                    }
                    self.on_signal(signal);
                }
                _ = deadline, if transfer_deadline.is_some() => {
                    transfer_deadline = None;
                    // librespot transfers by itself only when Spotify lists no active device
                    // (or the same or an empty session id, spirc.rs:845-850); after an outage
                    // it may still list this speaker, whose new Spirc then ignores the app.
                    // Ask for the transfer to ourselves, keeping the user's play/pause.
                    let (command, how) = match self.frozen_intent {
                        Some(Frozen { playing: true, .. }) => (SessionCommand::Transfer, "resuming"),
                        _ => (SessionCommand::TransferPaused, "paused as the user left it"),
                    };
                    info!(
                        "no automatic transfer within {} s (Spotify may still list the old connection as active); asking Spotify to transfer playback here, {how} (fallback)",
                        self.settings.transfer_timeout.as_secs()
                    );
                    fallback_requested = true;
                    if let Err(e) = session.command(command) {
                        warn!("transfer fallback failed: {e}");
                    }
                }
                _ = volume_poll.tick() => self.sync_volume(&session, false),
                Some((command, reply)) = self.endpoint.commands.recv() => {
                    // Spirc drops every command but a transfer while not active (spirc.rs:660).
                    let answer = if self.active { forward(&session, command) } else { Err(ControlError::NotActive) };
                    let _ = reply.send(answer);
                }
                received = self.discovered.recv(), if self.discovery_open => match received {
                    Some(c) => {
                        info!("another Spotify user picked the speaker; switching accounts");
                        self.retire(session, ControlError::Reconnecting, false).await;
                        return WatchEnd::NewCredentials(c);
                    }
                    None => self.discovery_open = false,
                },
            }
        };

        // Freeze the intent before anything pauses the player. A loss while already frozen (a
        // reconnect that failed before resolving) keeps the user's original intent.
        if self.frozen_intent.is_none() {
            self.frozen_intent = Some(Frozen {
                playing: self.was_playing.load(Ordering::SeqCst),
                active: self.active,
            });
        }
        self.active = false;
        let session_id = session.session_id();
        warn!("session lost: {reason}");
        self.publish(|s| {
            s.spotify = SpotifyState::Reconnecting;
            s.reconnect_count += 1;
            s.last_loss = Some(LossRecord {
                reason: reason.clone(),
                at: SystemTime::now(),
            });
        });
        self.retire(session, ControlError::Reconnecting, spirc_ended)
            .await;
        WatchEnd::Lost {
            session_id,
            uptime: connected_at.elapsed(),
        }
    }

    pub(super) fn publish(&self, change: impl FnOnce(&mut super::control::SpeakerStatus)) {
        self.endpoint.status.send_modify(change);
    }
}

/// Maps a control-handle command onto the session.
fn forward<S: ConnectSession>(session: &S, command: Command) -> Result<(), ControlError> {
    let command = match command {
        Command::Play => SessionCommand::Play,
        Command::Pause | Command::Stop => SessionCommand::Pause,
        Command::PlayPause => SessionCommand::PlayPause,
        Command::Next => SessionCommand::Next,
        Command::Previous => SessionCommand::Previous,
        Command::Seek { position_ms } => SessionCommand::Seek(position_ms),
        Command::SetVolume(v) => SessionCommand::SetVolume(v),
        Command::VolumeUp => SessionCommand::VolumeUp,
        Command::VolumeDown => SessionCommand::VolumeDown,
    };
    session.command(command).map_err(ControlError::Rejected)
}

fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// A deadline that never comes (a year away), for optional timers in `select!`.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

#[path = "supervisor_premium.rs"]
mod premium;
#[path = "supervisor_retire.rs"]
mod retire;
#[path = "supervisor_signals.rs"]
mod signals;
#[cfg(test)]
#[path = "supervisor_tests.rs"]
mod tests;
