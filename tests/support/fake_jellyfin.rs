//! A fake Jellyfin server that behaves like the real one, per server version (10.9.11, 10.10.7,
//! 10.11.11), strictly. Every behaviour cites the server source it models (`jellyfin/jellyfin`
//! at the tag named; "all three" when the lines read the same at each tag).
//!
//! - Authorization: only `Authorization: MediaBrowser …` is accepted (legacy X-Emby headers and
//!   `api_key` are refused and counted: off by default in 12.0, which we also want to work with).
//! - Users with roles, user tokens bound to a device record (user, app name, DeviceId) and admin
//!   API keys (`AuthorizationContext`), `GET /Users/Me`.
//! - Sessions keyed on Client + DeviceId case-insensitively; capabilities (a wrapped
//!   `{"Capabilities":…}` body answers 204 but records empty capabilities; PlaystateCommand or
//!   unknown names answer 400); a non-GUID ItemId in a report answers 400.
//! - Quick Connect: 400 without Client/Device/DeviceId/Version, 401 when disabled, the token minted
//!   at approval, the user's older tokens for that DeviceId revoked (and their sessions ended).
//! - The socket: bound to a session from the token's device record on 10.9/10.10 (an API key has
//!   none: no `ForceKeepAlive`, no commands), from the request on 10.11; `ForceKeepAlive` at once
//!   and again after 45–60 s of silence, every `KeepAlive` echoed, the socket no longer watched
//!   after 60 s; a close ends the session when it was its last socket.
//! - Playback: the 5-minute idle stop, the sticky `NowPlayingQueue`, `ValidatePlayMethod`,
//!   `Play` commands as `SessionManager.SendPlayCommand` sends them (PlayShuffle and
//!   PlayInstantMix become PlayNow).
//!
//! Audio: `/Audio/{id}/universal` checks `UserId` against the token's user (403/404 like
//! `RequestHelpers.GetUserId`), serves media the test registered (files it generated), with
//! `Range` support like the real server's static streams, optional throttling and a one-time
//! stall mid-body, a 500 item, and every request's URL and headers recorded. An item registered
//! with its container and codec gets the real server's decision: the original file when the
//! request's `Container` list (`container` or `container|codec` entries) allows it, else the
//! transcode the test registered for it (which the fake cannot make itself), served like a
//! progressive transcode (chunked, no `Accept-Ranges`); each request records which was served.
//!
//! Timings scale with `scale` so a test can run ten server minutes in thirty seconds; 1.0 is the
//! real server's pace. What the server saw is exposed for assertions.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The server versions the fake models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerVersion {
    V10_9,
    #[default]
    V10_10,
    V10_11,
}

/// Every modelled version, oldest first.
pub const VERSIONS: [ServerVersion; 3] = [
    ServerVersion::V10_9,
    ServerVersion::V10_10,
    ServerVersion::V10_11,
];

impl ServerVersion {
    pub fn name(self) -> &'static str {
        match self {
            ServerVersion::V10_9 => "10.9.11",
            ServerVersion::V10_10 => "10.10.7",
            ServerVersion::V10_11 => "10.11.11",
        }
    }

    /// How the socket finds its session. v10.9.11 and v10.10.7
    /// `Emby.Server.Implementations/Session/SessionWebSocketListener.cs` L108-136 (`GetSession`):
    /// `SessionManager.GetSessionByAuthenticationToken(token, deviceId, …)` (SessionManager.cs
    /// v10.10.7 L1840-1853) looks the token up among the *device records*: an API key has none, so
    /// the socket gets no session ("Unable to determine session", no `KeepAliveWebSocket`); a user
    /// token gets the session of the record's AppName + DeviceId (L1810-1837). v10.11.11 L114-119:
    /// `RequestHelpers.GetSession` from the request's own Authorization, for every token kind.
    pub fn socket_from_device_record(self) -> bool {
        !matches!(self, ServerVersion::V10_11)
    }
}

/// The versions a test runs against: all three, or the one `FAKE_JELLYFIN_VERSION` names
/// (`10.9`, `10.10`, `10.11`) to reproduce a failure quickly.
pub fn versions() -> Vec<ServerVersion> {
    match std::env::var("FAKE_JELLYFIN_VERSION") {
        Ok(v) => VERSIONS
            .iter()
            .copied()
            .filter(|s| s.name().starts_with(&format!("{v}.")))
            .collect(),
        Err(_) => VERSIONS.to_vec(),
    }
}

/// The administrator every fake server has: who paired the speaker in a one-user home (and the
/// `ControllingUserId` the older tests send).
pub const ADMIN_ID: &str = "0f0e0d0c0b0a09080706050403020100";

/// A Jellyfin user (`Jellyfin.Data/Entities/User.cs`: the Administrator role comes from
/// `IsAdministrator`, remote control of others from `EnableRemoteControlOfOtherUsers`).
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub name: String,
    pub admin: bool,
    pub remote_control_others: bool,
}

/// What a token is. `Jellyfin.Server.Implementations/Security/AuthorizationContext.cs` v10.10.7
/// L130-190 (a device record: the token of one user on one app + device) and L196-218 (an API key:
/// `Client` becomes the key's name, no user, the Administrator role; same in all three).
#[derive(Debug, Clone)]
pub enum TokenKind {
    User {
        user_id: String,
        app: String,
        /// `None`: bound to the first DeviceId that uses it (a test's stand-in for "the speaker
        /// paired earlier", so the test need not know the DeviceId the speaker generates).
        device_id: Option<String>,
    },
    ApiKey {
        name: String,
    },
}

const PLAYSTATE_NAMES: &[&str] = &[
    "Stop",
    "Pause",
    "Unpause",
    "NextTrack",
    "PreviousTrack",
    "Seek",
    "Rewind",
    "FastForward",
    "PlayPause",
];

/// The server's `GeneralCommandType` names (`MediaBrowser.Model/Session/GeneralCommandType.cs`,
/// L9-52 in all three, ending with `SetPlaybackOrder = 42`): anything else in SupportedCommands
/// fails to bind (400).
const GENERAL_COMMAND_NAMES: &[&str] = &[
    "MoveUp",
    "MoveDown",
    "MoveLeft",
    "MoveRight",
    "PageUp",
    "PageDown",
    "PreviousLetter",
    "NextLetter",
    "ToggleOsd",
    "ToggleContextMenu",
    "Select",
    "Back",
    "TakeScreenshot",
    "SendKey",
    "SendString",
    "GoHome",
    "GoToSettings",
    "VolumeUp",
    "VolumeDown",
    "Mute",
    "Unmute",
    "ToggleMute",
    "SetVolume",
    "SetAudioStreamIndex",
    "SetSubtitleStreamIndex",
    "ToggleFullscreen",
    "DisplayContent",
    "GoToSearch",
    "DisplayMessage",
    "SetRepeatMode",
    "ChannelUp",
    "ChannelDown",
    "Guide",
    "ToggleStats",
    "PlayMediaSource",
    "PlayTrailers",
    "SetShuffleQueue",
    "PlayState",
    "PlayNext",
    "ToggleOsdMenu",
    "Play",
    "SetMaxStreamingBitrate",
    "SetPlaybackOrder",
];

#[derive(Debug, Clone, Default)]
pub struct SessionRecord {
    pub client: String,
    pub device: String,
    pub device_id: String,
    /// The user of the token that made it (none for an API key).
    pub user_id: Option<String>,
    pub capabilities: Option<Value>,
    pub capability_posts: usize,
    /// A socket is bound to the session (its `WebSocketController` has an open socket).
    pub socket_open: bool,
    pub open_sockets: usize,
    /// What the dashboard shows as playing (`NowPlayingItem`: the `Item` of the report or the
    /// library item of its ItemId).
    pub now_playing: Option<Value>,
    pub now_playing_queue: Option<Value>,
    /// `PlayState.PlayMethod` as the server stored it (after `ValidatePlayMethod`).
    pub play_method: Option<String>,
    last_check_in: Option<Instant>,
    /// Playbacks the server stopped itself because nothing checked in for 5 minutes.
    pub idle_stops: usize,
}

impl SessionRecord {
    /// `SupportsRemoteControl` in `GET /Sessions`: the capabilities' SupportsMediaControl and a
    /// controller that supports media control (MediaBrowser.Controller/Session/SessionInfo.cs
    /// v10.10.7 L246-266), which a `WebSocketController` does while it has an open socket
    /// (WebSocketController.cs v10.10.7 L56-60); same in all three.
    pub fn cast_target(&self) -> bool {
        self.socket_open
            && self
                .capabilities
                .as_ref()
                .is_some_and(|c| c["SupportsMediaControl"] == true)
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// How `/Audio/{id}/universal` serves one item.
#[derive(Debug, Clone, Default)]
pub struct Media {
    pub bytes: Vec<u8>,
    pub content_type: String,
    /// Answer 500 instead.
    pub fail: bool,
    /// Bytes per second (None: as fast as the socket goes).
    pub throttle: Option<u64>,
    /// Pause this long once the body reaches this byte offset (first request only).
    pub stall: Option<(u64, Duration)>,
    /// Like a progressive transcode: no `Accept-Ranges`, a `Range` header is ignored.
    pub no_ranges: bool,
    /// Every response breaks off after this many bytes (a server dropping idle connections).
    pub cut_every: Option<u64>,
    /// The original's container as the server's library reports it (ffprobe's format name, which
    /// may be a list such as `mov,mp4,m4a,3gp,3g2,mj2`) and its audio codec. `None`: the item is
    /// always served as it is, whatever the request asks (the older tests' items).
    pub container: Option<String>,
    pub codec: Option<String>,
    /// What the server's transcoder would send when the request's `Container` list does not
    /// allow the original: always served as a progressive transcode (no length, no ranges).
    pub transcode: Option<Box<Media>>,
}

/// Which body `/Audio/{id}/universal` sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    Original,
    Transcode,
    /// 404, 500, or a transcode was needed and none was registered.
    Nothing,
}

/// One audio request as the server saw it.
#[derive(Debug, Clone)]
pub struct AudioRequest {
    pub item_id: String,
    pub query: String,
    pub authorization: Option<String>,
    pub range: Option<String>,
    pub at: Instant,
    pub served: Served,
}

/// The real server's choice between the original and a transcode (`UniversalAudioController`
/// turns each `Container` entry into a direct-play profile: `container` or `container|codec`):
/// direct when an entry names one of the item's containers and, if it names a codec, the item's
/// codec. No `Container` parameter at all means no direct-play profile: a transcode.
pub fn direct_play_allowed(query: &str, container: &str, codec: Option<&str>) -> bool {
    let Some(list) = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == "Container")
        .and_then(|(_, value)| {
            percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .ok()
        })
    else {
        return false;
    };
    let item_containers: Vec<String> = container
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    list.split(',').any(|entry| {
        let mut parts = entry.split('|').map(|p| p.trim().to_ascii_lowercase());
        let Some(wanted) = parts.next() else {
            return false;
        };
        let codecs: Vec<String> = parts.collect();
        item_containers.contains(&wanted)
            && (codecs.is_empty()
                || codec.is_some_and(|c| codecs.iter().any(|w| w.eq_ignore_ascii_case(c))))
    })
}

/// A Quick Connect request (`QuickConnectResult`: the app that asked, and once approved, the
/// token minted for it).
#[derive(Debug, Clone)]
pub struct QuickConnectRequest {
    pub secret: String,
    pub client: String,
    pub device: String,
    pub device_id: String,
    pub token: Option<String>,
    pub user_id: Option<String>,
}

/// What the server saw.
#[derive(Default)]
pub struct Seen {
    pub media: HashMap<String, Media>,
    pub audio_requests: Vec<AudioRequest>,
    stalled: Vec<String>,
    /// Keyed on (client, device id), lower-cased.
    pub sessions: HashMap<(String, String), SessionRecord>,
    /// Tokens that are valid now (user tokens and API keys).
    pub tokens: Vec<String>,
    pub token_kinds: HashMap<String, TokenKind>,
    pub users: HashMap<String, User>,
    pub legacy_auth_refused: usize,
    pub unauthorized: usize,
    pub bad_requests: Vec<String>,
    /// `/Audio/{id}/universal` answers 403 (UserId of another user, token user not an admin).
    pub forbidden: usize,
    pub reports: Vec<(String, Value)>,
    pub socket_connects: usize,
    /// Sockets the server could bind to no session (10.9/10.10 with an API key).
    pub unbound_sockets: usize,
    pub sockets_lost_by_timeout: usize,
    pub force_keepalives: usize,
    pub keepalives: usize,
    pub socket_bytes_in: usize,
    pub socket_bytes_out: usize,
    /// code → (secret, approved)
    pub quick_connect: HashMap<String, (String, bool)>,
    pub quick_connect_requests: HashMap<String, QuickConnectRequest>,
    pub quick_connect_disabled: bool,
    /// PlaySessionIds of the transcodes the server runs (`ITranscodeManager`): the universal
    /// endpoint makes its own (UniversalAudioController.cs v10.10.7 L134-157), never the client's.
    pub transcode_jobs: Vec<String>,
    idle_timer: bool,
    pub down: bool,
}

type SocketTx = mpsc::UnboundedSender<Option<String>>;

/// An open socket and the session it is bound to (none: a socket the server could not place).
struct OpenSocket {
    session: Option<(String, String)>,
    tx: SocketTx,
}

pub struct FakeJellyfin {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    pub version: ServerVersion,
    scale: f64,
    sockets: Arc<Mutex<Vec<OpenSocket>>>,
}

#[derive(Clone)]
struct Shared {
    seen: Arc<Mutex<Seen>>,
    sockets: Arc<Mutex<Vec<OpenSocket>>>,
    scale: f64,
    version: ServerVersion,
}

fn session_key(client: &str, device_id: &str) -> (String, String) {
    // SessionManager.cs v10.10.7 L1801-1803 (`GetSession…`: OrdinalIgnoreCase on both) and
    // `GetSessionKey` (Client + DeviceId); same in all three.
    (client.to_lowercase(), device_id.to_lowercase())
}

/// SessionManager.cs v10.10.7 L320-333 `ReportSessionEnded` / `OnSessionEnded`: the session is
/// removed (capabilities with it) and disposed, which disposes its `WebSocketController`, which
/// disposes its sockets (WebSocketController.cs v10.10.7 L132-150).
fn end_session(seen: &mut Seen, sockets: &Mutex<Vec<OpenSocket>>, key: &(String, String)) {
    seen.sessions.remove(key);
    sockets.lock().unwrap().retain(|s| {
        if s.session.as_ref() == Some(key) {
            let _ = s.tx.send(None);
            false
        } else {
            true
        }
    });
}

impl FakeJellyfin {
    /// Starts on `bind` (e.g. "127.0.0.1:0") as 10.10.
    pub async fn start(bind: &str, scale: f64) -> FakeJellyfin {
        Self::start_version(bind, scale, ServerVersion::V10_10).await
    }

    pub async fn start_version(bind: &str, scale: f64, version: ServerVersion) -> FakeJellyfin {
        let listener = TcpListener::bind(bind).await.expect("bind fake jellyfin");
        let addr = listener.local_addr().unwrap();
        let mut seen = Seen::default();
        seen.users.insert(
            ADMIN_ID.to_string(),
            User {
                id: ADMIN_ID.to_string(),
                name: "admin".into(),
                admin: true,
                remote_control_others: true,
            },
        );
        let server = FakeJellyfin {
            addr,
            seen: Arc::new(Mutex::new(seen)),
            version,
            scale,
            sockets: Arc::new(Mutex::new(Vec::new())),
        };
        let shared = Shared {
            seen: server.seen.clone(),
            sockets: server.sockets.clone(),
            scale,
            version,
        };
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(req, shared).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a user (`EnableRemoteControlOfOtherUsers` follows `admin`).
    pub fn add_user(&self, id: &str, name: &str, admin: bool) {
        self.seen.lock().unwrap().users.insert(
            id.to_string(),
            User {
                id: id.to_string(),
                name: name.to_string(),
                admin,
                remote_control_others: admin,
            },
        );
    }

    /// Approves a Quick Connect code as the administrator, as a user does in Jellyfin.
    pub fn approve(&self, code: &str) -> bool {
        self.approve_as(code, ADMIN_ID)
    }

    /// Approves a code as `user_id`. QuickConnectManager.cs v10.10.7 L136-170 `AuthorizeRequest`
    /// (same in all three): false ("already authorized" / not found) unless pending; the token is
    /// minted now by `SessionManager.AuthenticateDirect` → `GetAuthorizationToken` (SessionManager.cs
    /// v10.10.7 L1570-1598), which first logs out every older token of this user on this DeviceId
    /// (`Logout(Device)` L1622-1645: the device record deleted, the sessions of that DeviceId ended).
    pub fn approve_as(&self, code: &str, user_id: &str) -> bool {
        let mut seen = self.seen.lock().unwrap();
        if seen.quick_connect_disabled {
            return false;
        }
        let Some(request) = seen.quick_connect_requests.get(code).cloned() else {
            return false;
        };
        if request.token.is_some() {
            return false;
        }
        let older: Vec<String> = seen
            .token_kinds
            .iter()
            .filter(|(_, kind)| match kind {
                TokenKind::User {
                    user_id: u,
                    device_id: Some(d),
                    ..
                } => u == user_id && d.eq_ignore_ascii_case(&request.device_id),
                _ => false,
            })
            .map(|(t, _)| t.clone())
            .collect();
        for token in older {
            seen.tokens.retain(|t| *t != token);
            seen.token_kinds.remove(&token);
            let ended: Vec<(String, String)> = seen
                .sessions
                .keys()
                .filter(|(_, d)| d.eq_ignore_ascii_case(&request.device_id))
                .cloned()
                .collect();
            for key in ended {
                end_session(&mut seen, &self.sockets, &key);
            }
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        seen.tokens.push(token.clone());
        seen.token_kinds.insert(
            token.clone(),
            TokenKind::User {
                user_id: user_id.to_string(),
                app: request.client.clone(),
                device_id: Some(request.device_id.clone()),
            },
        );
        if let Some(r) = seen.quick_connect_requests.get_mut(code) {
            r.token = Some(token);
            r.user_id = Some(user_id.to_string());
        }
        if let Some(entry) = seen.quick_connect.get_mut(code) {
            entry.1 = true;
        }
        true
    }

    /// Adds the administrator's token as if the speaker had paired earlier (bound to the first
    /// DeviceId that uses it, app `pispeaker`).
    pub fn add_token(&self, token: &str) {
        self.add_user_token(token, ADMIN_ID, "pispeaker", None);
    }

    /// A user token with its device record.
    pub fn add_user_token(&self, token: &str, user_id: &str, app: &str, device_id: Option<&str>) {
        let mut seen = self.seen.lock().unwrap();
        seen.tokens.push(token.to_string());
        seen.token_kinds.insert(
            token.to_string(),
            TokenKind::User {
                user_id: user_id.to_string(),
                app: app.to_string(),
                device_id: device_id.map(str::to_string),
            },
        );
    }

    /// An API key an administrator created (Dashboard → API Keys) with this app name.
    pub fn add_api_key(&self, token: &str, name: &str) {
        let mut seen = self.seen.lock().unwrap();
        seen.tokens.push(token.to_string());
        seen.token_kinds.insert(
            token.to_string(),
            TokenKind::ApiKey {
                name: name.to_string(),
            },
        );
    }

    /// Signs one token out as `SessionManager.Logout(Device)` does (SessionManager.cs v10.10.7
    /// L1622-1645, same in all three): the device record deleted, every session of its DeviceId
    /// ended (and with it their sockets).
    pub fn logout(&self, token: &str) {
        let mut seen = self.seen.lock().unwrap();
        seen.tokens.retain(|t| t != token);
        let device = match seen.token_kinds.remove(token) {
            Some(TokenKind::User {
                device_id: Some(d), ..
            }) => d,
            _ => return,
        };
        let ended: Vec<(String, String)> = seen
            .sessions
            .keys()
            .filter(|(_, d)| d.eq_ignore_ascii_case(&device))
            .cloned()
            .collect();
        for key in ended {
            end_session(&mut seen, &self.sockets, &key);
        }
    }

    pub fn revoke_all_tokens(&self) {
        let mut seen = self.seen.lock().unwrap();
        seen.tokens.clear();
        seen.token_kinds.clear();
    }

    /// A restart: sockets drop, in-memory sessions and capabilities are forgotten (tokens stay,
    /// they are in the database). While `down`, HTTP answers 503.
    pub fn restart(&self, down_for: Duration) {
        self.close_sockets();
        {
            let mut seen = self.seen.lock().unwrap();
            seen.sessions.clear();
            seen.down = true;
        }
        let seen = self.seen.clone();
        tokio::spawn(async move {
            tokio::time::sleep(down_for).await;
            seen.lock().unwrap().down = false;
        });
    }

    pub fn close_sockets(&self) {
        for s in self.sockets.lock().unwrap().drain(..) {
            let _ = s.tx.send(None);
        }
    }

    /// Sends a text frame to every socket bound to a session: the server sends through the
    /// session's `WebSocketController`, so an unbound socket never gets a command.
    pub fn push(&self, text: &str) {
        self.sockets
            .lock()
            .unwrap()
            .retain(|s| s.session.is_none() || s.tx.send(Some(text.to_string())).is_ok());
    }

    /// A `Play` command as the server sends it after "Play on" (SessionController.Play →
    /// SessionManager.SendPlayCommand, SessionManager.cs v10.10.7 L1200-1235, same in all three):
    /// PlayInstantMix and PlayShuffle arrive as PlayNow, the items shuffled for PlayShuffle.
    pub fn play(
        &self,
        ids: &[&str],
        command: &str,
        start_index: usize,
        start_ticks: u64,
        user: &str,
    ) {
        let mut ids: Vec<String> = ids.iter().map(|s| format!("\"{s}\"")).collect();
        let command = match command {
            "PlayShuffle" => {
                use rand::seq::SliceRandom;
                ids.shuffle(&mut rand::rng());
                "PlayNow"
            }
            "PlayInstantMix" => "PlayNow",
            other => other,
        };
        self.push(&format!(
            r#"{{"MessageType":"Play","MessageId":"{}","Data":{{"ItemIds":[{}],"PlayCommand":"{command}","StartIndex":{start_index},"StartPositionTicks":{start_ticks},"ControllingUserId":"{user}"}}}}"#,
            uuid::Uuid::new_v4().simple(),
            ids.join(",")
        ));
    }

    pub fn session_count(&self) -> usize {
        self.seen.lock().unwrap().sessions.len()
    }

    /// The one session (panics if there is not exactly one).
    pub fn only_session(&self) -> SessionRecord {
        let seen = self.seen.lock().unwrap();
        assert_eq!(
            seen.sessions.len(),
            1,
            "sessions: {:?}",
            seen.sessions.keys().collect::<Vec<_>>()
        );
        seen.sessions.values().next().unwrap().clone()
    }

    pub fn reports(&self) -> Vec<(String, Value)> {
        self.seen.lock().unwrap().reports.clone()
    }

    /// Registers an item for `/Audio/{id}/universal` (id in the simple GUID form the speaker uses).
    pub fn add_media(&self, id: &str, media: Media) {
        self.seen
            .lock()
            .unwrap()
            .media
            .insert(id.to_string(), media);
    }

    pub fn audio_requests(&self) -> Vec<AudioRequest> {
        self.seen.lock().unwrap().audio_requests.clone()
    }
}

fn boxed(body: Full<Bytes>) -> Body {
    body.map_err(|never| match never {}).boxed()
}

/// `/Audio/{id}/universal`: the file (200, or 206 for `Range: bytes=N-`), throttled and stalled
/// as configured.
fn audio(
    req: &Request<Incoming>,
    id: &str,
    query: &str,
    seen: &Arc<Mutex<Seen>>,
) -> Response<Body> {
    let range = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (media, stall) = {
        let mut s = seen.lock().unwrap();
        let registered = s.media.get(id).cloned();
        let (media, served) = match registered {
            None => (None, Served::Nothing),
            Some(m) if m.fail => (Some(m), Served::Nothing),
            Some(m) => match m.container.as_deref() {
                Some(container) if !direct_play_allowed(query, container, m.codec.as_deref()) => {
                    match m.transcode {
                        // A progressive transcode: chunked, no length, no ranges.
                        Some(t) => {
                            // The universal endpoint starts a transcoding job with a
                            // PlaySessionId of its own (UniversalAudioController.cs v10.10.7
                            // L134-157, MediaInfoHelper.GetPlaybackInfo), never the client's.
                            s.transcode_jobs
                                .push(uuid::Uuid::new_v4().simple().to_string());
                            (
                                Some(Media {
                                    no_ranges: true,
                                    ..*t
                                }),
                                Served::Transcode,
                            )
                        }
                        // The test forgot one: a 500, and the tests' bad_requests check fails.
                        None => {
                            s.bad_requests
                                .push(format!("{id} needs a transcode and none is registered"));
                            (
                                Some(Media {
                                    fail: true,
                                    transcode: None,
                                    ..m
                                }),
                                Served::Nothing,
                            )
                        }
                    }
                }
                _ => (Some(m), Served::Original),
            },
        };
        s.audio_requests.push(AudioRequest {
            item_id: id.to_string(),
            query: query.to_string(),
            authorization: req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            range: range.clone(),
            at: Instant::now(),
            served,
        });
        let Some(media) = media else {
            return respond(StatusCode::NOT_FOUND, Value::Null);
        };
        let first = !s.stalled.iter().any(|x| x == id);
        if media.stall.is_some() && first {
            s.stalled.push(id.to_string());
        }
        let stall = media.stall.filter(|_| first);
        (media, stall)
    };
    if media.fail {
        return respond(StatusCode::INTERNAL_SERVER_ERROR, Value::Null);
    }
    let total = media.bytes.len() as u64;
    let range = range.filter(|_| !media.no_ranges);
    let from = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0)
        .min(total);
    let bytes = Bytes::from(media.bytes).slice(from as usize..);
    let len = bytes.len() as u64;
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let throttle = media.throttle;
    let cut = media.cut_every.map(|n| n as usize);
    tokio::spawn(async move {
        let chunk = 8192usize;
        let started = Instant::now();
        let mut sent = 0usize;
        let mut stall = stall;
        while sent < bytes.len() {
            if cut.is_some_and(|c| sent >= c) {
                // Ends short of Content-Length: hyper aborts the connection mid-body (after a
                // moment, so what was sent is flushed first).
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
            let offset = from + sent as u64;
            if let Some((at, pause)) = stall {
                if offset >= at {
                    tokio::time::sleep(pause).await;
                    stall = None;
                }
            }
            let end = (sent + chunk)
                .min(bytes.len())
                .min(cut.unwrap_or(usize::MAX).max(sent + 1));
            if tx.send(bytes.slice(sent..end)).await.is_err() {
                return;
            }
            sent = end;
            if let Some(rate) = throttle {
                let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
                tokio::time::sleep_until(due).await;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    if range.is_some() {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        r.headers_mut().insert(
            "content-range",
            format!("bytes {from}-{}/{total}", total.saturating_sub(1))
                .parse()
                .unwrap(),
        );
    }
    let h = r.headers_mut();
    if media.no_ranges {
        // A transcode is chunked, with no length and no ranges: FileStreamResponseHelpers.cs
        // v10.10.7 L85 (`GetTranscodedFile`: `Accept-Ranges: none`; same in all three).
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("accept-ranges", "none".parse().unwrap());
    } else {
        h.insert("content-length", len.to_string().parse().unwrap());
        h.insert("accept-ranges", "bytes".parse().unwrap());
    }
    h.insert("content-type", media.content_type.parse().unwrap());
    r
}

/// Parses `MediaBrowser Key="value", …` with percent-decoded values.
pub fn parse_mediabrowser(header: &str) -> Option<HashMap<String, String>> {
    let rest = header.strip_prefix("MediaBrowser ")?;
    let mut out = HashMap::new();
    for part in rest.split(',') {
        let (key, value) = part.trim().split_once('=')?;
        let value = value.trim().trim_matches('"');
        let decoded = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .ok()?
            .to_string();
        out.insert(key.trim().to_string(), decoded);
    }
    Some(out)
}

fn respond(code: StatusCode, body: Value) -> Response<Body> {
    let bytes = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    let mut r = Response::new(boxed(Full::new(bytes)));
    *r.status_mut() = code;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// Who made a request, as `AuthorizationContext` (v10.10.7 L100-218, same in all three) resolves it.
struct Caller {
    client: String,
    device: String,
    device_id: String,
    user: Option<User>,
    /// API keys have the Administrator role (v10.10.7 L217 `IsApiKey`; CustomAuthenticationHandler
    /// gives them the role).
    admin: bool,
    kind: TokenKind,
}

fn caller(seen: &mut Seen, auth: &HashMap<String, String>) -> Option<Caller> {
    let token = auth.get("Token")?;
    if !seen.tokens.contains(token) {
        return None;
    }
    let header = |k: &str| auth.get(k).cloned().unwrap_or_default();
    let kind = seen.token_kinds.get(token).cloned()?;
    match &kind {
        TokenKind::User {
            user_id, device_id, ..
        } => {
            let user = seen.users.get(user_id).cloned();
            if device_id.is_none() {
                if let Some(TokenKind::User { device_id, .. }) = seen.token_kinds.get_mut(token) {
                    *device_id = Some(header("DeviceId"));
                }
            }
            Some(Caller {
                client: header("Client"),
                device: header("Device"),
                device_id: header("DeviceId"),
                admin: user.as_ref().is_some_and(|u| u.admin),
                user,
                kind: seen.token_kinds.get(token).cloned()?,
            })
        }
        // v10.10.7 L196-218: Client becomes the key's name.
        TokenKind::ApiKey { name } => Some(Caller {
            client: name.clone(),
            device: header("Device"),
            device_id: header("DeviceId"),
            user: None,
            admin: true,
            kind: kind.clone(),
        }),
    }
}

fn touch(seen: &mut Seen, c: &Caller) -> (String, String) {
    // SessionManager.LogSessionActivity (v10.10.7 L255-300): find or create by Client+DeviceId.
    let key = session_key(&c.client, &c.device_id);
    let rec = seen.sessions.entry(key.clone()).or_default();
    rec.client = c.client.clone();
    rec.device = c.device.clone();
    rec.device_id = c.device_id.clone();
    rec.user_id = c.user.as_ref().map(|u| u.id.clone());
    key
}

fn query_value(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| percent_encoding::percent_decode_str(v).decode_utf8().ok())
        .map(|v| v.to_string())
}

async fn handle(mut req: Request<Incoming>, shared: Shared) -> Response<Body> {
    let seen = shared.seen.clone();
    if seen.lock().unwrap().down {
        return respond(StatusCode::SERVICE_UNAVAILABLE, Value::Null);
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let legacy = req.headers().contains_key("x-emby-authorization")
        || req.headers().contains_key("x-emby-token")
        || query.contains("api_key=");
    if legacy {
        // Off by default in 12.0.
        seen.lock().unwrap().legacy_auth_refused += 1;
        return respond(StatusCode::UNAUTHORIZED, Value::Null);
    }
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_mediabrowser);
    let Some(auth) = auth else {
        seen.lock().unwrap().unauthorized += 1;
        return respond(StatusCode::UNAUTHORIZED, Value::Null);
    };
    let path = req.uri().path().to_string();
    let method = req.method().clone();

    // Unauthenticated endpoints: Jellyfin.Api/Controllers/QuickConnectController.cs (v10.10.7
    // L40-100; same in all three) and UserController.AuthenticateWithQuickConnect.
    match (method.as_str(), path.as_str()) {
        ("GET", "/QuickConnect/Enabled") => {
            let enabled = !seen.lock().unwrap().quick_connect_disabled;
            return respond(StatusCode::OK, json!(enabled));
        }
        ("POST", "/QuickConnect/Initiate") => {
            let mut s = seen.lock().unwrap();
            // QuickConnectManager.TryConnect (v10.10.7 L71-77): ArgumentException (→ 400) when
            // DeviceId, Device, Client or Version is empty, then AssertActive (→ 401, controller
            // L62-65).
            if ["DeviceId", "Device", "Client", "Version"]
                .iter()
                .any(|k| auth.get(*k).is_none_or(|v| v.trim().is_empty()))
            {
                s.bad_requests
                    .push("Quick Connect Initiate without Client/Device/DeviceId/Version".into());
                return respond(StatusCode::BAD_REQUEST, Value::Null);
            }
            if s.quick_connect_disabled {
                return respond(StatusCode::UNAUTHORIZED, json!("Quick connect is disabled"));
            }
            let code = format!("{:06}", 100_000 + s.quick_connect.len() * 7919 % 900_000);
            let secret = uuid::Uuid::new_v4().simple().to_string();
            s.quick_connect
                .insert(code.clone(), (secret.clone(), false));
            let header = |k: &str| auth.get(k).cloned().unwrap_or_default();
            s.quick_connect_requests.insert(
                code.clone(),
                QuickConnectRequest {
                    secret: secret.clone(),
                    client: header("Client"),
                    device: header("Device"),
                    device_id: header("DeviceId"),
                    token: None,
                    user_id: None,
                },
            );
            return respond(
                StatusCode::OK,
                json!({"Secret": secret, "Code": code, "Authenticated": false}),
            );
        }
        ("GET", "/QuickConnect/Connect") => {
            let secret = query_value(&query, "secret").unwrap_or_default();
            let s = seen.lock().unwrap();
            if s.quick_connect_disabled {
                return respond(StatusCode::UNAUTHORIZED, json!("Quick connect is disabled"));
            }
            return match s.quick_connect.values().find(|(sec, _)| *sec == secret) {
                Some((_, approved)) => respond(StatusCode::OK, json!({"Authenticated": approved})),
                None => respond(StatusCode::NOT_FOUND, Value::Null),
            };
        }
        ("POST", "/Users/AuthenticateWithQuickConnect") => {
            let body = read_json(req).await;
            let secret = body["Secret"].as_str().unwrap_or("").to_string();
            let s = seen.lock().unwrap();
            // QuickConnectManager.GetAuthorizedRequest (v10.10.7 L173-190): the result minted at
            // approval.
            let minted = s
                .quick_connect_requests
                .values()
                .find(|r| r.secret == secret)
                .and_then(|r| r.token.clone().zip(r.user_id.clone()));
            let Some((token, user_id)) = minted else {
                return respond(StatusCode::UNAUTHORIZED, Value::Null);
            };
            if !s.tokens.contains(&token) {
                return respond(StatusCode::UNAUTHORIZED, Value::Null);
            }
            let user = s.users.get(&user_id).cloned();
            return respond(
                StatusCode::OK,
                json!({
                    "AccessToken": token,
                    "ServerId": "fake",
                    "User": user.map(|u| json!({
                        "Id": u.id, "Name": u.name,
                        "Policy": {"IsAdministrator": u.admin, "EnableRemoteControlOfOtherUsers": u.remote_control_others},
                    })),
                }),
            );
        }
        _ => {}
    }
    let caller = {
        let mut s = seen.lock().unwrap();
        let c = caller(&mut s, &auth);
        if c.is_none() {
            s.unauthorized += 1;
        }
        c
    };
    let Some(caller) = caller else {
        return respond(StatusCode::UNAUTHORIZED, Value::Null);
    };

    match (method.as_str(), path.as_str()) {
        // UserController.GetCurrentUser (v10.10.7 L600-616): 400 without a user (an API key).
        ("GET", "/Users/Me") => match &caller.user {
            Some(u) => respond(
                StatusCode::OK,
                json!({"Id": u.id, "Name": u.name, "Policy": {"IsAdministrator": u.admin}}),
            ),
            None => respond(StatusCode::BAD_REQUEST, Value::Null),
        },
        ("GET", "/Sessions") => {
            // SessionManager.GetSessions (v10.10.7 L1857-1933, same in all three): DeviceId
            // compared ignoring case; a non-administrator sees sessions without a user or its own.
            let device = query_value(&query, "DeviceId");
            let own = caller.user.as_ref().map(|u| u.id.clone());
            let s = seen.lock().unwrap();
            let list: Vec<Value> = s
                .sessions
                .values()
                .filter(|r| {
                    device
                        .as_deref()
                        .is_none_or(|d| r.device_id.eq_ignore_ascii_case(d))
                })
                .filter(|r| caller.admin || r.user_id.is_none() || r.user_id == own)
                .map(|r| {
                    json!({
                        "Client": r.client, "DeviceId": r.device_id, "DeviceName": r.device,
                        "UserId": r.user_id, "SupportsRemoteControl": r.cast_target(),
                        "NowPlayingItem": r.now_playing, "NowPlayingQueue": r.now_playing_queue,
                        "PlayState": {"PlayMethod": r.play_method},
                    })
                })
                .collect();
            respond(StatusCode::OK, Value::Array(list))
        }
        ("POST", "/Sessions/Capabilities/Full") => {
            let body = read_json(req).await;
            let commands: Vec<String> = body["SupportedCommands"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(bad) = commands.iter().find(|c| {
                PLAYSTATE_NAMES.contains(&c.as_str())
                    || !GENERAL_COMMAND_NAMES.contains(&c.as_str())
            }) {
                seen.lock()
                    .unwrap()
                    .bad_requests
                    .push(format!("SupportedCommands has {bad}"));
                return respond(StatusCode::BAD_REQUEST, Value::Null);
            }
            let mut s = seen.lock().unwrap();
            let key = touch(&mut s, &caller);
            let rec = s.sessions.get_mut(&key).unwrap();
            rec.capability_posts += 1;
            // The wrapped form is accepted and erases everything (a real-server pitfall).
            rec.capabilities = Some(if body.get("Capabilities").is_some() {
                json!({})
            } else {
                body
            });
            respond(StatusCode::NO_CONTENT, Value::Null)
        }
        ("POST", p) if p.starts_with("/Sessions/Playing") => {
            let body = read_json(req).await;
            if let Some(id) = body.get("ItemId").and_then(Value::as_str) {
                if uuid::Uuid::parse_str(id).is_err() {
                    seen.lock()
                        .unwrap()
                        .bad_requests
                        .push(format!("ItemId {id}"));
                    return respond(StatusCode::BAD_REQUEST, Value::Null);
                }
            }
            let mut s = seen.lock().unwrap();
            let key = touch(&mut s, &caller);
            let stopped = p.ends_with("/Stopped");
            // PlaystateController.cs v10.10.7 L519-530 `ValidatePlayMethod` (L203, L219 for
            // start and progress; same in all three): Transcode without a transcoding job of that
            // PlaySessionId is stored as DirectPlay.
            let method = body.get("PlayMethod").and_then(Value::as_str).map(|m| {
                let job = body
                    .get("PlaySessionId")
                    .and_then(Value::as_str)
                    .is_some_and(|id| s.transcode_jobs.iter().any(|j| j == id));
                if m == "Transcode" && !job {
                    "DirectPlay".to_string()
                } else {
                    m.to_string()
                }
            });
            let start_idle_timer = !stopped && !s.idle_timer;
            let rec = s.sessions.get_mut(&key).unwrap();
            let queue = body
                .get("NowPlayingQueue")
                .filter(|q| !q.is_null())
                .cloned();
            if stopped {
                // SessionManager.OnPlaybackStopped (v10.10.7 L981-988): a non-null queue
                // replaces the old one; the item is removed.
                if queue.is_some() {
                    rec.now_playing_queue = queue;
                }
                rec.now_playing = None;
            } else {
                // UpdateNowPlayingItem (v10.10.7 L380-425): the check-in time (L385), the play
                // state, and the queue only when the new one is non-empty (L411-415).
                rec.last_check_in = Some(Instant::now());
                rec.play_method = method;
                rec.now_playing = body
                    .get("Item")
                    .filter(|i| !i.is_null())
                    .cloned()
                    .or_else(|| body.get("ItemId").map(|id| json!({"Id": id})));
                if queue
                    .as_ref()
                    .and_then(Value::as_array)
                    .is_some_and(|q| !q.is_empty())
                {
                    rec.now_playing_queue = queue;
                }
            }
            if start_idle_timer {
                s.idle_timer = true;
                tokio::spawn(idle_playback_check(shared.seen.clone(), shared.scale));
            }
            s.reports.push((p.to_string(), body));
            respond(StatusCode::NO_CONTENT, Value::Null)
        }
        ("GET", "/socket") => {
            let Some(accept) = req
                .headers()
                .get("sec-websocket-key")
                .map(|k| derive_accept_key(k.as_bytes()))
            else {
                return respond(StatusCode::BAD_REQUEST, Value::Null);
            };
            let session = {
                let mut s = seen.lock().unwrap();
                s.socket_connects += 1;
                match (&caller.kind, shared.version.socket_from_device_record()) {
                    // 10.9/10.10: no device record for an API key: no session.
                    (TokenKind::ApiKey { .. }, true) => {
                        s.unbound_sockets += 1;
                        None
                    }
                    // 10.9/10.10: the device record's AppName + the DeviceId of the request.
                    (TokenKind::User { app, .. }, true) => {
                        let c = Caller {
                            client: app.clone(),
                            device: caller.device.clone(),
                            device_id: caller.device_id.clone(),
                            user: caller.user.clone(),
                            admin: caller.admin,
                            kind: caller.kind.clone(),
                        };
                        Some(touch(&mut s, &c))
                    }
                    (_, false) => Some(touch(&mut s, &caller)),
                }
            };
            let upgrade = hyper::upgrade::on(&mut req);
            let (tx, rx) = mpsc::unbounded_channel();
            shared.sockets.lock().unwrap().push(OpenSocket {
                session: session.clone(),
                tx,
            });
            let shared = shared.clone();
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        None,
                    )
                    .await;
                    socket_session(ws, rx, shared, session).await;
                }
            });
            let mut r = Response::new(boxed(Full::new(Bytes::new())));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = r.headers_mut();
            h.insert("connection", "upgrade".parse().unwrap());
            h.insert("upgrade", "websocket".parse().unwrap());
            h.insert("sec-websocket-accept", accept.parse().unwrap());
            r
        }
        ("GET", p) if p.starts_with("/Audio/") && p.ends_with("/universal") => {
            let id = p
                .trim_start_matches("/Audio/")
                .trim_end_matches("/universal")
                .to_string();
            // UniversalAudioController.cs v10.10.7 L120-128 (v10.9.11 L117-125, v10.11.11
            // L120-128) → RequestHelpers.GetUserId (v10.10.7 L66-84): no UserId means the token's
            // user; another user's id is a SecurityException (403) unless the token's user is an
            // administrator; no user at all (an API key without UserId) finds no item: 404.
            let asked = query_value(&query, "UserId").filter(|u| !u.is_empty());
            let own = caller.user.as_ref().map(|u| u.id.clone());
            let user = match asked {
                None => own,
                Some(u) if Some(&u) == own.as_ref() => Some(u),
                Some(_) if !caller.admin => {
                    let mut s = seen.lock().unwrap();
                    s.forbidden += 1;
                    s.audio_requests.push(AudioRequest {
                        item_id: id,
                        query,
                        authorization: None,
                        range: None,
                        at: Instant::now(),
                        served: Served::Nothing,
                    });
                    return respond(StatusCode::FORBIDDEN, Value::Null);
                }
                Some(u) => seen.lock().unwrap().users.contains_key(&u).then_some(u),
            };
            if user.is_none() {
                return respond(StatusCode::NOT_FOUND, Value::Null);
            }
            audio(&req, &id, &query, &seen)
        }
        _ => respond(StatusCode::NOT_FOUND, Value::Null),
    }
}

/// SessionManager.cs v10.10.7 L570 (a 5-minute timer, started with the first playback) and
/// L600-630 `CheckForIdlePlayback` (same in all three): a session whose playback has not checked
/// in for more than 5 minutes is stopped by the server itself.
async fn idle_playback_check(seen: Arc<Mutex<Seen>>, scale: f64) {
    let five_minutes = Duration::from_secs_f64(300.0 * scale);
    let mut timer = tokio::time::interval_at(Instant::now() + five_minutes, five_minutes);
    loop {
        timer.tick().await;
        let mut s = seen.lock().unwrap();
        for rec in s.sessions.values_mut() {
            let idle = rec
                .last_check_in
                .is_some_and(|at| at.elapsed() > five_minutes);
            if rec.now_playing.is_some() && idle {
                rec.now_playing = None;
                rec.idle_stops += 1;
            }
        }
    }
}

async fn read_json(req: Request<Incoming>) -> Value {
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// One socket. Bound to a session: `ForceKeepAlive` at once (SessionWebSocketListener.cs v10.10.7
/// L171-195 `KeepAliveWebSocket`, Data = `WebSocketLostTimeout` = 60, L279-284), checked every
/// 60 × 0.2 = 12 s (L22-35: `IntervalFactor`), `ForceKeepAlive` again to a socket silent for more
/// than 45 s (`ForceKeepAliveFactor` 0.75) and under 60 s, and after 60 s only no longer watched
/// ("TODO: handle session relative to the lost webSocket", L258-270): the socket and the session
/// stay. Every `KeepAlive` is answered with one (WebSocketConnection.cs v10.10.7 L196-198,
/// L227-232), bound or not. When the socket closes, the session ends if no other socket is open
/// (WebSocketController.cs v10.10.7 L78-94 → SessionManager.CloseIfNeededAsync L303-317; the same
/// in v10.9.11 and v10.11.11, WebSocketController.cs L62/L94). An unbound socket (10.9/10.10 and
/// an API key) gets nothing.
async fn socket_session<S>(
    mut ws: WebSocketStream<S>,
    mut push: mpsc::UnboundedReceiver<Option<String>>,
    shared: Shared,
    session: Option<(String, String)>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let seen = shared.seen.clone();
    let scale = shared.scale;
    let lost_after = Duration::from_secs_f64(60.0 * scale);
    let force_after = Duration::from_secs_f64(45.0 * scale);
    let force = || {
        json!({"MessageType": "ForceKeepAlive", "MessageId": uuid::Uuid::new_v4().simple().to_string(), "Data": (60.0 * scale).round().max(1.0) as u64}).to_string()
    };
    let bound = session.is_some();
    if let Some(key) = &session {
        let text = force();
        {
            let mut s = seen.lock().unwrap();
            s.socket_bytes_out += text.len();
            s.force_keepalives += 1;
            if let Some(rec) = s.sessions.get_mut(key) {
                rec.open_sockets += 1;
                rec.socket_open = true;
            }
        }
        if ws.send(Message::Text(text.into())).await.is_err() {
            return;
        }
    }
    let mut watched = bound;
    let mut last_keepalive = Instant::now();
    let mut check = tokio::time::interval(Duration::from_secs_f64(12.0 * scale));
    let closed_by_server = loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let keepalive = {
                        let mut s = seen.lock().unwrap();
                        s.socket_bytes_in += text.len();
                        let is = serde_json::from_str::<Value>(text.as_str()).ok().and_then(|v| v["MessageType"].as_str().map(str::to_string)).as_deref() == Some("KeepAlive");
                        if is {
                            s.keepalives += 1;
                        }
                        is
                    };
                    if keepalive {
                        last_keepalive = Instant::now();
                        let echo = r#"{"MessageType":"KeepAlive"}"#;
                        seen.lock().unwrap().socket_bytes_out += echo.len();
                        if ws.send(Message::Text(echo.into())).await.is_err() { break false; }
                    }
                }
                Some(Ok(Message::Ping(p))) => {
                    seen.lock().unwrap().socket_bytes_in += p.len() + 2;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break false,
            },
            out = push.recv() => match out {
                Some(Some(text)) => {
                    seen.lock().unwrap().socket_bytes_out += text.len();
                    if ws.send(Message::Text(text.into())).await.is_err() { break false; }
                }
                Some(None) | None => {
                    let _ = ws.close(None).await;
                    break true;
                }
            },
            _ = check.tick(), if watched => {
                let silent = last_keepalive.elapsed();
                if silent >= lost_after {
                    seen.lock().unwrap().sockets_lost_by_timeout += 1;
                    watched = false;
                } else if silent > force_after {
                    let text = force();
                    {
                        let mut s = seen.lock().unwrap();
                        s.socket_bytes_out += text.len();
                        s.force_keepalives += 1;
                    }
                    if ws.send(Message::Text(text.into())).await.is_err() { break false; }
                }
            }
        }
    };
    let Some(key) = session else {
        return;
    };
    let mut s = seen.lock().unwrap();
    let remaining = match s.sessions.get_mut(&key) {
        Some(rec) => {
            rec.open_sockets = rec.open_sockets.saturating_sub(1);
            rec.socket_open = rec.open_sockets > 0;
            rec.open_sockets
        }
        None => return,
    };
    // A socket the server disposed itself (a session ended, a restart) ends nothing more.
    if !closed_by_server && remaining == 0 {
        end_session(&mut s, &shared.sockets, &key);
    }
}
