//! `/api/*` and the page: routing, the write checks (401 without a session or token, 403 without
//! the CSRF token, 400 naming the field), and JSON in and out.
//!
//! The status server calls [`WebApp::handle`] for every request that passed its LAN check; what
//! is not ours (`/status.json`, the old text page at `/status`) it answers itself.

// An early answer (401, 400 naming the field) is the `Err` of the helpers below: a response built
// once per request, not a hot path, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, SET_COOKIE};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::assets;
use super::auth::{Auth, AuthError, Caller, COOKIE};
use super::bridge::percent;
use super::events::{parse_last_id, EventHub};
use super::settings::SettingsFile;
use crate::audio::{LiveAudio, MAX_VOLUME};
use crate::config::Config;
use crate::jellyfin::JellyfinState;
use crate::source::{SourceCommand, Sources};

/// A response body: whole (JSON, the page) or streamed (events).
pub type Body = BoxBody<Bytes, Infallible>;

/// How long a Wi-Fi/SSH change waits for the image's root unit before answering "applying"
/// (it takes well under a second on a Pi; the answer then lists the fields still in flight).
const SYSTEM_WAIT: Duration = Duration::from_secs(15);

/// Largest request body accepted (settings are a few hundred bytes).
const MAX_BODY: usize = 16 * 1024;

/// Recomputes the effective configuration after the file changed (flags and environment still
/// win), as the daemon did at start.
pub type Reload = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// The web app's state. Clones share it.
#[derive(Clone)]
pub struct WebApp {
    pub auth: Auth,
    pub hub: EventHub,
    pub sources: Sources,
    pub settings: Arc<SettingsFile>,
    /// The effective configuration: the daemon's appliers watch it.
    pub config: Arc<watch::Sender<Config>>,
    /// The audio side: a new board, device or curve is switched to at once.
    pub audio: Arc<LiveAudio>,
    pub reload: Reload,
    pub jellyfin: watch::Receiver<JellyfinState>,
    /// Comment lines on an idle event stream, so the browser notices a dead connection.
    pub keep_alive: Duration,
    /// Event streams open now (at most [`MAX_STREAMS`]).
    pub streams: Arc<AtomicUsize>,
}

/// Open event streams at most: a phone, a tablet, Home Assistant and a few scripts need far
/// fewer, and each costs a task and a buffer on a small Pi.
pub const MAX_STREAMS: usize = 32;

/// Holds one of the [`MAX_STREAMS`] places while its stream is alive.
struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn json_response(code: StatusCode, value: Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error(code: StatusCode, message: &str) -> Response<Body> {
    json_response(code, json!({ "error": message }))
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == COOKIE).then(|| v.to_string())
        })
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    header(headers, "authorization").and_then(|v| v.strip_prefix("Bearer "))
}

/// A logged-in answer: the cookie (HttpOnly: no script reads it; SameSite=Strict: no other site
/// sends it) and the CSRF token for the page's writes.
fn with_session(session: &str, csrf: &str) -> Response<Body> {
    let mut r = json_response(StatusCode::OK, json!({ "csrf": csrf }));
    let cookie = format!("{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age=604800");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}

fn auth_error(e: &AuthError) -> Response<Body> {
    let code = match e {
        AuthError::WrongPassword => StatusCode::UNAUTHORIZED,
        AuthError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        AuthError::AlreadySet | AuthError::NotSet => StatusCode::CONFLICT,
        AuthError::TooShort => StatusCode::BAD_REQUEST,
        AuthError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut r = error(code, &e.to_string());
    if let AuthError::RateLimited(wait) = e {
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            r.headers_mut().insert(RETRY_AFTER, v);
        }
    }
    r
}

async fn read_json(body: Incoming) -> Result<Value, Response<Body>> {
    let bytes = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is too large",
            )
        })?
        .to_bytes();
    if bytes.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("the body is not JSON: {e}"),
        )
    })
}

fn field_error(field: &str, message: &str) -> Response<Body> {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({ "field": field, "error": format!("{field}: {message}") }),
    )
}

fn str_field<'a>(body: &'a Value, field: &str) -> Result<&'a str, Response<Body>> {
    body.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| field_error(field, "is required (a string)"))
}

impl WebApp {
    /// Answers the request if it is the web app's; `Err(request)` hands it back to the status
    /// server.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        peer: IpAddr,
    ) -> Result<Response<Body>, Request<Incoming>> {
        let path = request.uri().path().to_string();
        let method = request.method().clone();
        if !(path == "/" || path == "/app.js" || path.starts_with("/api/")) {
            return Err(request);
        }
        if method == Method::GET || method == Method::HEAD {
            return Ok(self.read(&path, &request));
        }
        if method != Method::POST {
            return Ok(error(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST"));
        }
        let (parts, body) = request.into_parts();
        let headers = parts.headers;
        // The password endpoints check the password themselves (with the rate limit).
        let open = matches!(
            path.as_str(),
            "/api/login" | "/api/password" | "/api/token" | "/api/logout"
        );
        if !open {
            match self.auth.authorize(
                session_cookie(&headers).as_deref(),
                header(&headers, "x-csrf-token"),
                bearer(&headers),
            ) {
                Caller::Authorized => {}
                Caller::MissingCsrf => {
                    return Ok(error(
                        StatusCode::FORBIDDEN,
                        "missing or wrong X-CSRF-Token header",
                    ))
                }
                Caller::Anonymous => {
                    return Ok(error(
                        StatusCode::UNAUTHORIZED,
                        "log in first, or send Authorization: Bearer <api token>",
                    ))
                }
            }
        }
        let body = match read_json(body).await {
            Ok(v) => v,
            Err(r) => return Ok(r),
        };
        Ok(match self.write(&path, &headers, peer, &body).await {
            Ok(r) | Err(r) => r,
        })
    }

    fn read(&self, path: &str, request: &Request<Incoming>) -> Response<Body> {
        match path {
            "/" => assets::page(),
            "/app.js" => assets::script(),
            "/api/session" => {
                let csrf =
                    session_cookie(request.headers()).and_then(|s| self.auth.session_csrf(&s));
                json_response(
                    StatusCode::OK,
                    json!({
                        "password_set": self.auth.has_password(),
                        "logged_in": csrf.is_some(),
                        "csrf": csrf,
                    }),
                )
            }
            "/api/settings" => {
                json_response(StatusCode::OK, self.settings.view(&self.config.borrow()))
            }
            "/api/now" => self.now(),
            "/api/events" => self.events(request),
            _ => error(StatusCode::NOT_FOUND, "no such API path"),
        }
    }

    fn now(&self) -> Response<Body> {
        // The id first: every event up to it was published after its state changed, so the
        // states read below are at least that new, and a page that has already shown a later
        // event knows this answer is older than what it shows (app.js asks again).
        let last_event_id = self.hub.last_id();
        let status = self.sources.spotify.control.status();
        // The mixer is the truth; the status follows it at the supervisor's next tick when no
        // session carries the volume.
        let volume = self
            .sources
            .mixer
            .as_ref()
            .map_or(status.volume, |m| m.volume());
        json_response(
            StatusCode::OK,
            json!({
                "name": self.config.borrow().name,
                "active": self.sources.active().now_playing(),
                "volume": volume,
                "percent": percent(volume),
                "spotify": status.spotify,
                "jellyfin": *self.jellyfin.borrow(),
                "audio": *self.audio.state().borrow(),
                "last_event_id": last_event_id,
            }),
        )
    }

    fn events(&self, request: &Request<Incoming>) -> Response<Body> {
        let query_id = request
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("last_id=")));
        let last = parse_last_id(header(request.headers(), "last-event-id").or(query_id));
        if self.streams.fetch_add(1, Ordering::SeqCst) >= MAX_STREAMS {
            self.streams.fetch_sub(1, Ordering::SeqCst);
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many open event streams; close one",
            );
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("5"));
            return r;
        }
        let slot = StreamSlot(self.streams.clone());
        let stream = self
            .hub
            .sse_stream(last, self.keep_alive)
            .map(move |frame| {
                let _held = &slot;
                frame
            });
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }

    async fn write(
        &self,
        path: &str,
        headers: &HeaderMap,
        peer: IpAddr,
        body: &Value,
    ) -> Result<Response<Body>, Response<Body>> {
        let command = match path {
            "/api/login" => {
                let password = str_field(body, "password")?;
                return Ok(match self.auth.login(peer, password) {
                    Ok((session, csrf)) => with_session(&session, &csrf),
                    Err(e) => auth_error(&e),
                });
            }
            "/api/password" => return Ok(self.password(headers, peer, body)),
            "/api/token" => {
                let password = str_field(body, "password")?;
                return Ok(match self.auth.new_api_token(peer, password) {
                    Ok(token) => json_response(StatusCode::OK, json!({ "token": token })),
                    Err(e) => auth_error(&e),
                });
            }
            "/api/logout" => {
                if let Some(s) = session_cookie(headers) {
                    self.auth.logout(&s);
                }
                return Ok(json_response(StatusCode::OK, json!({})));
            }
            "/api/settings" => return Ok(self.change_settings(body).await),
            "/api/volume" => {
                let volume = match (body.get("percent"), body.get("volume")) {
                    (Some(p), _) => match p.as_u64().filter(|p| *p <= 100) {
                        Some(p) => (p * u64::from(MAX_VOLUME) / 100) as u16,
                        None => {
                            return Err(field_error(
                                "percent",
                                "must be a whole number from 0 to 100",
                            ))
                        }
                    },
                    (None, Some(v)) => match v.as_u64().and_then(|v| u16::try_from(v).ok()) {
                        Some(v) => v,
                        None => {
                            return Err(field_error(
                                "volume",
                                "must be a whole number from 0 to 65535",
                            ))
                        }
                    },
                    (None, None) => return Err(field_error("percent", "is required (0 to 100)")),
                };
                SourceCommand::SetVolume(volume)
            }
            "/api/play" => SourceCommand::Play,
            "/api/pause" => SourceCommand::Pause,
            "/api/playpause" => SourceCommand::PlayPause,
            "/api/next" => SourceCommand::Next,
            "/api/previous" => SourceCommand::Previous,
            "/api/seek" => match body.get("position_ms").and_then(Value::as_u64) {
                Some(position_ms) => SourceCommand::Seek { position_ms },
                None => {
                    return Err(field_error(
                        "position_ms",
                        "is required (milliseconds, 0 or more)",
                    ))
                }
            },
            _ => return Err(error(StatusCode::NOT_FOUND, "no such API path")),
        };
        Ok(match self.sources.command(command).await {
            Ok(source) => json_response(StatusCode::OK, json!({ "source": source })),
            // The source is there but cannot do it now (reconnecting, nobody connected yet).
            Err(e) => error(StatusCode::CONFLICT, &e.to_string()),
        })
    }

    fn password(&self, headers: &HeaderMap, peer: IpAddr, body: &Value) -> Response<Body> {
        let new = match str_field(body, "password") {
            Ok(p) => p,
            Err(r) => return r,
        };
        let result = if self.auth.has_password() {
            // Changing it needs the session and CSRF token *and* the current password.
            match self.auth.authorize(
                session_cookie(headers).as_deref(),
                header(headers, "x-csrf-token"),
                None,
            ) {
                Caller::Authorized => {}
                Caller::MissingCsrf => {
                    return error(
                        StatusCode::FORBIDDEN,
                        "missing or wrong X-CSRF-Token header",
                    )
                }
                Caller::Anonymous => {
                    return error(
                        StatusCode::UNAUTHORIZED,
                        "a password is set already; log in to change it",
                    )
                }
            }
            let current = match str_field(body, "current") {
                Ok(p) => p,
                Err(r) => return r,
            };
            self.auth.change_password(peer, current, new)
        } else {
            self.auth.set_first_password(new)
        };
        match result {
            Ok((session, csrf)) => with_session(&session, &csrf),
            Err(e) => auth_error(&e),
        }
    }

    async fn change_settings(&self, body: &Value) -> Response<Body> {
        let (mut changed, submitted) = match self.settings.apply_with_system(body) {
            Ok(applied) => applied,
            Err(e) if e.field.is_empty() => {
                return error(StatusCode::INTERNAL_SERVER_ERROR, &e.message)
            }
            Err(e) => return field_error(&e.field, &e.message),
        };
        let config = match (self.reload)() {
            Ok(config) => config,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e),
        };
        let before = self.config.borrow().clone();
        // The audio side switches now (ALSA opens block: off the async threads). A device that
        // cannot be opened leaves the old one playing; the setting is kept for the next start
        // (on the SD image a new HAT's overlay loads only at boot), so it needs a restart.
        let audio_before = self.audio.state().borrow().clone();
        let live = self.audio.clone();
        let spec = crate::live_settings::audio_spec(&config);
        let switched = tokio::task::spawn_blocking(move || live.switch(spec).is_ok())
            .await
            .unwrap_or(false);
        let restart_needed: Vec<String> = changed
            .iter()
            .map(String::as_str)
            .filter(|f| !switched && matches!(*f, "board" | "volume_ctrl"))
            .filter(|f| match *f {
                "board" => before.board != config.board,
                _ => before.volume_ctrl != config.volume_ctrl,
            })
            .map(str::to_string)
            .collect();
        let audio = self.audio.state().borrow().clone();
        self.config.send_replace(config);
        if audio != audio_before {
            self.hub.publish("audio", json!(audio));
        }
        // Wi-Fi/SSH on the image: the root unit applies them; wait for its word.
        let mut applying = Vec::new();
        if let (Some(files), Some(submitted)) = (&self.settings.system, submitted) {
            match super::system::outcome(files, &submitted.id, SYSTEM_WAIT).await {
                Some(outcome) => match outcome.error {
                    Some(e) => return field_error(&e.field, &e.message),
                    None => changed.extend(outcome.changed),
                },
                None => applying = submitted.fields,
            }
        }
        let answer = json!({
            "changed": changed,
            "restart_needed": restart_needed,
            "applying": applying,
            "audio": audio,
        });
        self.hub.publish("settings", answer.clone());
        json_response(StatusCode::OK, answer)
    }
}
