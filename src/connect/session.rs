//! What the supervisor needs from "a Connect session": a librespot `Session` and its `Spirc`,
//! seen through a small trait so the reconnect logic is tested against a scripted fake and runs
//! against exactly one production implementation ([`super::librespot_backend`]).

use std::future::Future;

use librespot_core::authentication::Credentials;

use super::control::TrackInfo;

/// Everything a new session needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectRequest {
    pub credentials: Credentials,
    /// The session id of the lost session, set on the new one *before* Spirc starts so Spotify's
    /// automatic transfer re-attaches playback. `None` for a first connection or a new user.
    pub session_id: Option<String>,
    /// Spotify volume the new Spirc starts with: the mixer's live value.
    pub initial_volume: u16,
}

/// Why a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Network, DNS, TLS, server trouble: try again later.
    Transient(String),
    /// Spotify refused the credentials (revoked, password changed, not premium): they will never
    /// work again, so they are set aside and discovery takes over.
    CredentialsRejected(String),
}

/// A command for the current session's Spirc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionCommand {
    Play,
    Pause,
    PlayPause,
    Next,
    Previous,
    Seek(u32),
    SetVolume(u16),
    VolumeUp,
    VolumeDown,
    /// Ask Spotify to transfer playback here, resuming (the fallback when the automatic transfer
    /// does not come and the user was playing).
    Transfer,
    /// Ask Spotify to transfer playback here, paused (the fallback when the user had paused but
    /// Spotify may still list this speaker as the active device, which then ignores the app).
    TransferPaused,
}

/// What the one `Player` reports, reduced to what the supervisor and its listeners use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlayerSignal {
    /// Spirc activated this device (a transfer arrived); emitted just before the track loads.
    SessionConnected,
    /// Spirc made this device inactive (another device took over, spirc.rs:1215-1228): from
    /// now on it ignores every command but a transfer.
    SessionDisconnected,
    Playing {
        position_ms: u32,
    },
    Paused {
        position_ms: u32,
    },
    Stopped,
    Loading,
    Seeked {
        position_ms: u32,
    },
    Position {
        position_ms: u32,
    },
    TrackChanged(TrackInfo),
    VolumeChanged(u16),
    EndOfTrack,
    Unavailable,
}

/// Builds sessions.
pub trait ConnectBackend: Send {
    type Session: ConnectSession;

    /// Creates a session, sets the session id, logs in and starts Spirc.
    fn connect(
        &mut self,
        request: ConnectRequest,
    ) -> impl Future<Output = Result<Self::Session, ConnectFailure>> + Send;
}

/// A running session with its Spirc.
pub trait ConnectSession: Send {
    /// The current session id (Spirc keeps it up to date; still readable after invalidation).
    fn session_id(&self) -> String;

    /// The session's connection is gone (stream closed, keep-alive timeout, send error).
    fn is_invalid(&self) -> bool;

    /// Resolves when the Spirc task has ended. Cancel-safe: it is polled in a `select!` loop, and
    /// after it has resolved once it stays pending.
    fn ended(&mut self) -> impl Future<Output = ()> + Send + '_;

    /// Credentials to store for the next boot, once logged in.
    fn reusable_credentials(&self) -> Option<Credentials>;

    /// Sends a command to Spirc.
    fn command(&self, command: SessionCommand) -> Result<(), String>;

    /// What is known about why the connection died, if anything.
    fn loss_reason(&self) -> Option<String>;

    /// Asks Spirc to stop: it pauses the player, says goodbye to Spotify over HTTPS (disconnect
    /// and `delete_connect_state_request`), closes its dealer and ends; [`Self::ended`] resolves
    /// then. Returns at once: the goodbye may hang on a dead network, so the supervisor waits
    /// for it with a deadline and calls [`Self::abandon`] when it does not come.
    fn shutdown(&mut self);

    /// Gives up on a Spirc that did not end: aborts its task (which skips the goodbye *and*
    /// `dealer().close()`), then closes the dealer itself, whose reconnect loop would otherwise
    /// hold the session for ever. Resolves once the dealer is closed.
    fn abandon(&mut self) -> impl Future<Output = ()> + Send + '_;

    /// A token that lives as long as anything may still hold this session (its Spirc task, its
    /// dealer, this handle): the supervisor counts the live ones (`sessions_alive`).
    fn liveness(&self) -> std::sync::Weak<SessionToken>;
}

/// See [`ConnectSession::liveness`].
#[derive(Debug, Default)]
pub struct SessionToken;
