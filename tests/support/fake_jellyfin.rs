//! A fake Jellyfin server that behaves like the real one as `../shared/notes/jellyfin-session.md`
//! describes, strictly: only `Authorization: MediaBrowser …` is accepted (legacy X-Emby headers
//! and `api_key` are refused and counted), a wrapped `{"Capabilities":…}` body answers 204 but
//! records empty capabilities, PlaystateCommand (or unknown) names in SupportedCommands or a
//! non-GUID ItemId answer 400, sessions are keyed on Client + DeviceId, the socket gets `ForceKeepAlive` and is
//! declared lost (ending the session) after the keep-alive period without a `KeepAlive`.
//!
//! Audio: `/Audio/{id}/universal` serves media the test registered (files it generated), with
//! `Range` support like the real server's static streams, optional throttling and a one-time
//! stall mid-body, a 500 item, and every request's URL and headers recorded. An item registered
//! with its container and codec gets the real server's decision: the original file when the
//! request's `Container` list (`container` or `container|codec` entries) allows it, else the
//! transcode the test registered for it (which the fake cannot make itself), served like a
//! progressive transcode; each request records which was served.
//!
//! Timings scale with `scale` so a test can run ten server minutes in thirty seconds; 1.0 is the
//! real server's 60 s. What the server saw is exposed for assertions.

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

/// The server's `GeneralCommandType` names: anything else in SupportedCommands fails to bind (400).
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
];

#[derive(Debug, Clone, Default)]
pub struct SessionRecord {
    pub client: String,
    pub device: String,
    pub device_id: String,
    pub capabilities: Option<Value>,
    pub capability_posts: usize,
    pub socket_open: bool,
    pub open_sockets: usize,
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

/// What the server saw.
#[derive(Default)]
pub struct Seen {
    pub media: HashMap<String, Media>,
    pub audio_requests: Vec<AudioRequest>,
    stalled: Vec<String>,
    pub sessions: HashMap<(String, String), SessionRecord>,
    pub tokens: Vec<String>,
    pub legacy_auth_refused: usize,
    pub unauthorized: usize,
    pub bad_requests: Vec<String>,
    pub reports: Vec<(String, Value)>,
    pub socket_connects: usize,
    pub sockets_lost_by_timeout: usize,
    pub keepalives: usize,
    pub socket_bytes_in: usize,
    pub socket_bytes_out: usize,
    /// code → (secret, approved)
    pub quick_connect: HashMap<String, (String, bool)>,
    pub down: bool,
}

pub struct FakeJellyfin {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    scale: f64,
    /// Senders to the open sockets: text to push, or None to close.
    sockets: Arc<Mutex<Vec<mpsc::UnboundedSender<Option<String>>>>>,
}

impl FakeJellyfin {
    /// Starts on `bind` (e.g. "127.0.0.1:0").
    pub async fn start(bind: &str, scale: f64) -> FakeJellyfin {
        let listener = TcpListener::bind(bind).await.expect("bind fake jellyfin");
        let addr = listener.local_addr().unwrap();
        let server = FakeJellyfin {
            addr,
            seen: Arc::new(Mutex::new(Seen::default())),
            scale,
            sockets: Arc::new(Mutex::new(Vec::new())),
        };
        let seen = server.seen.clone();
        let sockets = server.sockets.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let seen = seen.clone();
                let sockets = sockets.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let seen = seen.clone();
                        let sockets = sockets.clone();
                        async move { Ok::<_, Infallible>(handle(req, seen, sockets, scale).await) }
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

    /// Approves a Quick Connect code, as a user does in Jellyfin.
    pub fn approve(&self, code: &str) -> bool {
        let mut seen = self.seen.lock().unwrap();
        match seen.quick_connect.get_mut(code) {
            Some(entry) => {
                entry.1 = true;
                true
            }
            None => false,
        }
    }

    /// Adds a token as if an admin created it.
    pub fn add_token(&self, token: &str) {
        self.seen.lock().unwrap().tokens.push(token.to_string());
    }

    pub fn revoke_all_tokens(&self) {
        self.seen.lock().unwrap().tokens.clear();
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
        for tx in self.sockets.lock().unwrap().drain(..) {
            let _ = tx.send(None);
        }
    }

    /// Sends a text frame to every open socket.
    pub fn push(&self, text: &str) {
        self.sockets
            .lock()
            .unwrap()
            .retain(|tx| tx.send(Some(text.to_string())).is_ok());
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
                        Some(t) => (
                            Some(Media {
                                no_ranges: true,
                                ..*t
                            }),
                            Served::Transcode,
                        ),
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
        // A transcode is chunked, with no length and no ranges.
        h.insert("transfer-encoding", "chunked".parse().unwrap());
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

async fn handle(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Seen>>,
    sockets: Arc<Mutex<Vec<mpsc::UnboundedSender<Option<String>>>>>,
    scale: f64,
) -> Response<Body> {
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
    let (client, device, device_id) = (
        auth.get("Client").cloned().unwrap_or_default(),
        auth.get("Device").cloned().unwrap_or_default(),
        auth.get("DeviceId").cloned().unwrap_or_default(),
    );
    let token_ok = auth
        .get("Token")
        .is_some_and(|t| seen.lock().unwrap().tokens.contains(t));
    let path = req.uri().path().to_string();
    let method = req.method().clone();

    // Unauthenticated endpoints.
    match (method.as_str(), path.as_str()) {
        ("GET", "/QuickConnect/Enabled") => return respond(StatusCode::OK, json!(true)),
        ("POST", "/QuickConnect/Initiate") => {
            let mut s = seen.lock().unwrap();
            let code = format!("{:06}", 100_000 + s.quick_connect.len() * 7919 % 900_000);
            let secret = uuid::Uuid::new_v4().simple().to_string();
            s.quick_connect
                .insert(code.clone(), (secret.clone(), false));
            return respond(
                StatusCode::OK,
                json!({"Secret": secret, "Code": code, "Authenticated": false}),
            );
        }
        ("GET", "/QuickConnect/Connect") => {
            let secret = query.strip_prefix("secret=").unwrap_or("");
            let s = seen.lock().unwrap();
            return match s.quick_connect.values().find(|(sec, _)| sec == secret) {
                Some((_, approved)) => respond(StatusCode::OK, json!({"Authenticated": approved})),
                None => respond(StatusCode::NOT_FOUND, Value::Null),
            };
        }
        ("POST", "/Users/AuthenticateWithQuickConnect") => {
            let body = read_json(req).await;
            let secret = body["Secret"].as_str().unwrap_or("").to_string();
            let mut s = seen.lock().unwrap();
            let approved = s
                .quick_connect
                .values()
                .any(|(sec, ok)| *sec == secret && *ok);
            if !approved {
                return respond(StatusCode::UNAUTHORIZED, Value::Null);
            }
            let token = uuid::Uuid::new_v4().simple().to_string();
            s.tokens.push(token.clone());
            return respond(
                StatusCode::OK,
                json!({"AccessToken": token, "ServerId": "fake", "User": {"Name": "test"}}),
            );
        }
        _ => {}
    }
    if !token_ok {
        seen.lock().unwrap().unauthorized += 1;
        return respond(StatusCode::UNAUTHORIZED, Value::Null);
    }
    let key = (client.clone(), device_id.clone());
    let touch = |s: &mut Seen| -> () {
        let rec = s.sessions.entry(key.clone()).or_default();
        rec.client = client.clone();
        rec.device = device.clone();
        rec.device_id = device_id.clone();
    };

    match (method.as_str(), path.as_str()) {
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
            touch(&mut s);
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
            touch(&mut s);
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
            {
                let mut s = seen.lock().unwrap();
                touch(&mut s);
                s.socket_connects += 1;
            }
            let upgrade = hyper::upgrade::on(&mut req);
            let (tx, rx) = mpsc::unbounded_channel();
            sockets.lock().unwrap().push(tx);
            let seen = seen.clone();
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        None,
                    )
                    .await;
                    socket_session(ws, rx, seen, key, scale).await;
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
            audio(&req, &id, &query, &seen)
        }
        _ => respond(StatusCode::NOT_FOUND, Value::Null),
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

/// One socket: ForceKeepAlive at once; lost after the keep-alive period without KeepAlive
/// (checked every 12 s, scaled), which ends the session, as Jellyfin 12.0 does.
async fn socket_session<S>(
    mut ws: WebSocketStream<S>,
    mut push: mpsc::UnboundedReceiver<Option<String>>,
    seen: Arc<Mutex<Seen>>,
    key: (String, String),
    scale: f64,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let period = Duration::from_secs_f64(60.0 * scale);
    let force = json!({"MessageType": "ForceKeepAlive", "MessageId": uuid::Uuid::new_v4().simple().to_string(), "Data": (60.0 * scale).round() as u64}).to_string();
    {
        let mut s = seen.lock().unwrap();
        s.socket_bytes_out += force.len();
        if let Some(rec) = s.sessions.get_mut(&key) {
            rec.open_sockets += 1;
            rec.socket_open = true;
        }
    }
    if ws.send(Message::Text(force.into())).await.is_err() {
        return;
    }
    let mut last_keepalive = Instant::now();
    let mut check = tokio::time::interval(Duration::from_secs_f64(12.0 * scale));
    let lost_by_timeout = loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let mut s = seen.lock().unwrap();
                    s.socket_bytes_in += text.len();
                    if serde_json::from_str::<Value>(text.as_str()).ok().and_then(|v| v["MessageType"].as_str().map(str::to_string)).as_deref() == Some("KeepAlive") {
                        s.keepalives += 1;
                        last_keepalive = Instant::now();
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
                    break false;
                }
            },
            _ = check.tick() => {
                if last_keepalive.elapsed() > period {
                    let _ = ws.close(None).await;
                    break true;
                }
            }
        }
    };
    let mut s = seen.lock().unwrap();
    if lost_by_timeout {
        s.sockets_lost_by_timeout += 1;
    }
    let remaining = match s.sessions.get_mut(&key) {
        Some(rec) => {
            rec.open_sockets = rec.open_sockets.saturating_sub(1);
            rec.socket_open = rec.open_sockets > 0;
            rec.open_sockets
        }
        None => return,
    };
    // 12.0 ends a session whose last socket is lost; a newer socket keeps it.
    if lost_by_timeout && remaining == 0 {
        s.sessions.remove(&key);
    }
}
