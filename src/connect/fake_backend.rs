//! A scripted stand-in for librespot's Session + Spirc, for the supervisor's tests. It behaves
//! like the real pair where the supervisor can tell: Spirc sets the mixer to `initial_volume` at
//! start, pauses the player on shutdown, reports volume changes, and a transfer (automatic or
//! requested) activates the device with `SessionConnected`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use librespot_core::authentication::Credentials;
use librespot_playback::mixer::Mixer;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::session::{
    ConnectBackend, ConnectFailure, ConnectRequest, ConnectSession, PlayerSignal, SessionCommand,
};

/// Everything the fake saw, and how it should behave next.
#[derive(Default)]
pub struct FakeWorld {
    pub requests: Vec<(Instant, ConnectRequest)>,
    /// Results of the next connects; empty = success.
    pub script: VecDeque<ConnectFailure>,
    pub sessions: Vec<FakeSessionCtl>,
    /// (time, session index, command)
    pub commands: Vec<(Instant, usize, SessionCommand)>,
    /// (time, session index)
    pub shutdowns: Vec<(Instant, usize)>,
    /// Spotify's automatic transfer fires right after connecting.
    pub auto_transfer: bool,
    /// A `Transfer` command activates the device.
    pub transfer_on_request: bool,
    pub next_id: u32,
}

impl FakeWorld {
    pub fn plays_on(&self, session: usize) -> usize {
        self.commands
            .iter()
            .filter(|(_, s, c)| *s == session && *c == SessionCommand::Play)
            .count()
    }
}

/// How a test kills a session.
#[derive(Clone)]
pub struct FakeSessionCtl {
    pub id: String,
    invalid: Arc<AtomicBool>,
    end: Arc<watch::Sender<bool>>,
    reason: Arc<Mutex<Option<String>>>,
}

impl FakeSessionCtl {
    /// The connection dies and Spirc notices (its task ends).
    pub fn lose(&self, reason: Option<&str>) {
        *self.reason.lock().unwrap() = reason.map(str::to_string);
        self.invalid.store(true, Ordering::SeqCst);
        self.end.send_replace(true);
    }

    /// The connection dies but Spirc keeps waiting (upstream PR #1692).
    pub fn hang(&self) {
        self.invalid.store(true, Ordering::SeqCst);
    }

    /// Spirc ends with a live session (a logout from the app).
    pub fn end_spirc(&self) {
        self.end.send_replace(true);
    }
}

pub struct FakeBackend {
    pub world: Arc<Mutex<FakeWorld>>,
    pub events: mpsc::UnboundedSender<PlayerSignal>,
    pub mixer: Arc<dyn Mixer>,
}

pub struct FakeSession {
    index: usize,
    ctl: FakeSessionCtl,
    end_rx: watch::Receiver<bool>,
    ended: bool,
    world: Arc<Mutex<FakeWorld>>,
    events: mpsc::UnboundedSender<PlayerSignal>,
    mixer: Arc<dyn Mixer>,
}

impl ConnectBackend for FakeBackend {
    type Session = FakeSession;

    async fn connect(&mut self, request: ConnectRequest) -> Result<FakeSession, ConnectFailure> {
        let mut world = self.world.lock().unwrap();
        world.requests.push((Instant::now(), request.clone()));
        if let Some(failure) = world.script.pop_front() {
            return Err(failure);
        }
        // Spirc::new sets the mixer to the initial volume.
        self.mixer.set_volume(request.initial_volume);
        let id = match request.session_id {
            Some(id) => id,
            None => {
                world.next_id += 1;
                format!("{:08x}{}", world.next_id, "0".repeat(24))
            }
        };
        let (end_tx, end_rx) = watch::channel(false);
        let ctl = FakeSessionCtl {
            id,
            invalid: Arc::new(AtomicBool::new(false)),
            end: Arc::new(end_tx),
            reason: Arc::new(Mutex::new(None)),
        };
        world.sessions.push(ctl.clone());
        let index = world.sessions.len() - 1;
        if world.auto_transfer {
            let _ = self.events.send(PlayerSignal::SessionConnected);
        }
        Ok(FakeSession {
            index,
            ctl,
            end_rx,
            ended: false,
            world: self.world.clone(),
            events: self.events.clone(),
            mixer: self.mixer.clone(),
        })
    }
}

impl ConnectSession for FakeSession {
    fn session_id(&self) -> String {
        self.ctl.id.clone()
    }

    fn is_invalid(&self) -> bool {
        self.ctl.invalid.load(Ordering::SeqCst)
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

    fn command(&self, command: SessionCommand) -> Result<(), String> {
        let mut world = self.world.lock().unwrap();
        world.commands.push((Instant::now(), self.index, command));
        let signal = match command {
            SessionCommand::Play => Some(PlayerSignal::Playing { position_ms: 0 }),
            SessionCommand::Pause => Some(PlayerSignal::Paused { position_ms: 0 }),
            SessionCommand::SetVolume(v) => {
                self.mixer.set_volume(v);
                Some(PlayerSignal::VolumeChanged(v))
            }
            SessionCommand::Transfer if world.transfer_on_request => {
                Some(PlayerSignal::SessionConnected)
            }
            _ => None,
        };
        if let Some(signal) = signal {
            let _ = self.events.send(signal);
        }
        Ok(())
    }

    fn loss_reason(&self) -> Option<String> {
        self.ctl.reason.lock().unwrap().clone()
    }

    fn shutdown(&mut self) {
        self.world
            .lock()
            .unwrap()
            .shutdowns
            .push((Instant::now(), self.index));
        // Spirc's shutdown pauses the player.
        let _ = self.events.send(PlayerSignal::Paused { position_ms: 0 });
        self.ctl.end.send_replace(true);
    }
}
