//! The one WebSocket to the server: keep-alives, liveness, inbound commands.
//!
//! Jellyfin's own keep-alive (`ForceKeepAlive` → `KeepAlive` every Data/2 s) tells the *server*
//! we are alive. To notice a dead link on *our* side (a blackholed connection looks open
//! forever), the socket also sends WebSocket pings and treats silence longer than `dead_after` as
//! a lost connection.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use log::{debug, info, warn};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use super::api::{Api, ApiError};
use super::cast::CastHandle;
use super::messages::{parse, to_source, Inbound, MuteMemory, RecentIds};
use super::play_clock::PlayClock;
use crate::source::{SourceCommand, SourceKind, Sources};

/// How the socket checks that the link is alive.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    pub ping_every: Duration,
    pub dead_after: Duration,
    /// Re-post capabilities this often (keeps the session in the dashboard's 95 s window).
    pub capabilities_every: Duration,
    /// A server that placed the socket in a session sends `ForceKeepAlive` at once; without one
    /// this long after connecting, the socket is bound to no session (10.9/10.10 and an API key).
    pub bound_within: Duration,
}

/// Whether the server placed our socket in our session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// Remote control and casting work.
    Bound,
    /// The socket is open but reaches no session of ours: nothing can control the speaker.
    NotBound { problem: String },
}

/// Why a socket ended.
#[derive(Debug)]
pub enum SocketEnd {
    Shutdown,
    Lost(String),
}

/// Connects, then serves the socket until it is lost or shutdown. `on_connected` runs once the
/// socket is open (the caller re-posts capabilities there).
///
/// Remote control (Playstate, volume, Rewind/FastForward) goes to whatever plays, through
/// [`Sources`], exactly as the web page's buttons do; only what starts or shapes a cast (`Play`,
/// repeat, shuffle) goes to the cast player itself.
pub async fn serve(
    api: &Api,
    sources: &Sources,
    cast: Option<&CastHandle>,
    liveness: Liveness,
    shutdown: &mut watch::Receiver<bool>,
    on_connected: impl std::future::Future<Output = Result<(), String>>,
    on_binding: impl Fn(Binding),
) -> SocketEnd {
    // Before connecting: Spotify's events from the moment the server can see us on, for the
    // play clock (a Rewind right after connecting skips from the right place).
    let mut spotify_events = sources.spotify.control.subscribe_events();
    let url = match api.socket_url() {
        Ok(url) => url,
        Err(e) => return SocketEnd::Lost(e.to_string()),
    };
    let mut request = match url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => return SocketEnd::Lost(format!("socket request: {e}")),
    };
    match HeaderValue::from_str(&api.authorization()) {
        Ok(v) => {
            request.headers_mut().insert("Authorization", v);
        }
        Err(_) => return SocketEnd::Lost("the speaker name cannot be sent in a header".into()),
    }
    let connect = tokio_tungstenite::connect_async(request);
    let (stream, _) = match tokio::time::timeout(liveness.dead_after, connect).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return SocketEnd::Lost(format!("socket: {e}")),
        Err(_) => return SocketEnd::Lost("socket: connect timed out".into()),
    };
    let (mut write, mut read) = stream.split();
    if let Err(e) = on_connected.await {
        return SocketEnd::Lost(e);
    }
    info!(
        "Jellyfin socket connected to {}",
        api.socket_url()
            .map(|u| u.host_str().unwrap_or("").to_string())
            .unwrap_or_default()
    );

    let mut seen = RecentIds::default();
    let mut mute = MuteMemory::default();
    let mut keepalive: Option<tokio::time::Interval> = None;
    let mut ping = tokio::time::interval(liveness.ping_every);
    let mut capabilities = tokio::time::interval_at(
        Instant::now() + liveness.capabilities_every,
        liveness.capabilities_every,
    );
    let mut last_inbound = Instant::now();
    let mut clock = PlayClock::default();
    let mut events_open = true;
    // Unbound until the server's first ForceKeepAlive; then `GET /Sessions` confirms that a
    // session of our DeviceId is remote-controllable (a token minted by another app binds the
    // socket to that app's session on 10.9/10.10, and still gets ForceKeepAlive).
    let unbound_deadline = tokio::time::sleep(liveness.bound_within);
    tokio::pin!(unbound_deadline);
    let mut forced = false;
    let mut verify: Option<Instant> = None;
    let mut binding_known = false;
    loop {
        let verify_at = async {
            match verify {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let keepalive_tick = async {
            match keepalive.as_mut() {
                Some(interval) => interval.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.changed() => {
                let _ = write.send(Message::Close(None)).await;
                return SocketEnd::Shutdown;
            }
            frame = read.next() => {
                last_inbound = Instant::now();
                match frame {
                    Some(Ok(Message::Text(text))) => {
                        let volume = sources.volume();
                        match parse(text.as_str(), &mut seen, &mut mute, volume) {
                            Inbound::ForceKeepAlive { seconds } => {
                                debug!("Jellyfin asks for a keep-alive every {} s", seconds / 2);
                                if write.send(keepalive_message()).await.is_err() {
                                    return SocketEnd::Lost("socket write failed".into());
                                }
                                let period = Duration::from_secs((seconds / 2).max(1));
                                keepalive = Some(tokio::time::interval_at(Instant::now() + period, period));
                                if !forced {
                                    forced = true;
                                    // A moment for the server to register the socket's controller.
                                    verify = Some(Instant::now() + Duration::from_millis(200));
                                }
                            }
                            Inbound::SeekBy(delta) => {
                                let command = match sources.active().kind() {
                                    SourceKind::Spotify => {
                                        // Spotify's position is known from its events only:
                                        // the clock makes it live. Events sent before this
                                        // command may still wait in the channel (select! picks
                                        // ready branches at random): the clock takes them
                                        // first, or the skip starts from a stale position.
                                        catch_up(&mut clock, &mut spotify_events);
                                        let position_ms = clock.target(delta, std::time::Instant::now());
                                        SourceCommand::Seek { position_ms: u64::from(position_ms) }
                                    }
                                    _ => SourceCommand::SeekBy(delta),
                                };
                                remote_control(sources, command).await;
                            }
                            Inbound::Cast(command) => match cast {
                                Some(cast) => cast.send(command),
                                None => debug!("no cast player: ignoring {command:?}"),
                            },
                            Inbound::Control(commands) => {
                                for command in &commands {
                                    remote_control(sources, to_source(command)).await;
                                }
                            }
                            Inbound::Ignore => {}
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => return SocketEnd::Lost("server closed the socket".into()),
                    Some(Ok(_)) => {} // pings are answered by tungstenite; pongs only prove life
                    Some(Err(e)) => return SocketEnd::Lost(format!("socket: {e}")),
                }
            }
            _ = keepalive_tick => {
                if write.send(keepalive_message()).await.is_err() {
                    return SocketEnd::Lost("socket write failed".into());
                }
            }
            _ = ping.tick() => {
                if last_inbound.elapsed() > liveness.dead_after {
                    return SocketEnd::Lost(format!("no traffic for {} s", liveness.dead_after.as_secs()));
                }
                if write.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return SocketEnd::Lost("socket write failed".into());
                }
            }
            event = spotify_events.recv(), if events_open => match event {
                Ok(event) => clock.on_event(&event, std::time::Instant::now()),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                // The supervisor is gone (shutdown): nothing more to follow.
                Err(tokio::sync::broadcast::error::RecvError::Closed) => events_open = false,
            },
            _ = capabilities.tick() => {
                match api.post_capabilities().await {
                    // Revoked (a new pairing, a user signed the device out): start over.
                    Err(ApiError::Unauthorized) => return SocketEnd::Lost(ApiError::Unauthorized.to_string()),
                    Err(e) => warn!("Jellyfin capabilities refresh failed: {e}"),
                    Ok(()) => {}
                }
            }
            _ = &mut unbound_deadline, if !forced && !binding_known => {
                binding_known = true;
                on_binding(Binding::NotBound {
                    problem: format!(
                        "the server sent no ForceKeepAlive within {} s: it placed the socket in no session (an API key on Jellyfin 10.9/10.10 has no device record)",
                        liveness.bound_within.as_secs()
                    ),
                });
            }
            _ = verify_at => {
                verify = None;
                binding_known = true;
                match api.session_controllable().await {
                    Ok(false) => on_binding(Binding::NotBound {
                        problem: "the server lists no remote-controllable session for this speaker: the token belongs to another app's device record, so the socket joined that app's session".into(),
                    }),
                    Ok(true) => on_binding(Binding::Bound),
                    // Cannot tell (a slow server, a 403 for a restricted user): ForceKeepAlive
                    // came, which is what a bound socket gets.
                    Err(e) => {
                        debug!("cannot list the server's sessions: {e}");
                        on_binding(Binding::Bound);
                    }
                }
            }
        }
    }
}

/// A remote-control command for the active source; one that cannot be carried out (Spotify
/// reconnecting or idle) is logged and the socket carries on.
async fn remote_control(sources: &Sources, command: SourceCommand) {
    if let Err(e) = sources.command(command).await {
        info!("Jellyfin command {command:?} not carried out: {e}");
    }
}

fn keepalive_message() -> Message {
    Message::Text(r#"{"MessageType":"KeepAlive"}"#.into())
}

/// Feeds the play clock every Spotify event already sent.
fn catch_up(
    clock: &mut PlayClock,
    events: &mut tokio::sync::broadcast::Receiver<crate::connect::control::PlaybackEvent>,
) {
    use tokio::sync::broadcast::error::TryRecvError;
    loop {
        match events.try_recv() {
            Ok(event) => clock.on_event(&event, std::time::Instant::now()),
            Err(TryRecvError::Lagged(_)) => continue,
            Err(TryRecvError::Empty) | Err(TryRecvError::Closed) => return,
        }
    }
}
