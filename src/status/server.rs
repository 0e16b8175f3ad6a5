//! The status page: a read-only HTTP server for the LAN at `/` (HTML) and `/status.json`.
//!
//! It only reads snapshots published by the supervisor and the Jellyfin sidecar, so a slow or
//! hostile client can never delay playback. Requests from outside the local network (a subnet of
//! one of the speaker's interfaces, `web::lan`) get 403; anything but GET/HEAD gets 405. With the
//! web app on, `/`, `/app.js` and `/api/*` are its (`web::api`); the text page is `/status`.

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use log::{debug, info};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::audio::{AudioState, MAX_VOLUME};
use crate::connect::control::{ControlHandle, SpeakerStatus};
use crate::jellyfin::cast::{CastStatus, CastStatusCell};
use crate::jellyfin::JellyfinState;
use crate::web::{lan, WebApp};

/// Binds the listen address from the config.
pub async fn bind(listen: &str) -> Result<TcpListener, String> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| format!("status listen address {listen:?} is not address:port"))?;
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        // `[::]` (the default: phones on the LAN often use IPv6) on a kernel without IPv6.
        Err(e) if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            debug!("cannot listen on {addr} ({e}); using {v4}");
            TcpListener::bind(v4)
                .await
                .map_err(|e| format!("cannot listen on {v4}: {e} (change [status] listen)"))
        }
        Err(e) => Err(format!(
            "cannot listen on {addr}: {e} (change [status] listen)"
        )),
    }
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    control: ControlHandle,
    jellyfin: watch::Receiver<JellyfinState>,
    shutdown: watch::Receiver<bool>,
) {
    serve_with_boot_config(listener, control, jellyfin, None, None, shutdown).await
}

/// [`serve`], also showing the Jellyfin cast (when the daemon runs one) and the SD image's
/// boot-config report (read once: it only changes with a reboot).
pub async fn serve_with_boot_config(
    listener: TcpListener,
    control: ControlHandle,
    jellyfin: watch::Receiver<JellyfinState>,
    cast: Option<CastStatusCell>,
    boot_config: Option<Value>,
    shutdown: watch::Receiver<bool>,
) {
    serve_with_web(
        listener,
        control,
        jellyfin,
        cast,
        boot_config,
        None,
        shutdown,
    )
    .await
}

/// [`serve_with_boot_config`] with the web app (settings, control, events) when `web` is given.
pub async fn serve_with_web(
    listener: TcpListener,
    control: ControlHandle,
    jellyfin: watch::Receiver<JellyfinState>,
    cast: Option<CastStatusCell>,
    boot_config: Option<Value>,
    web: Option<WebApp>,
    mut shutdown: watch::Receiver<bool>,
) {
    let boot_config = std::sync::Arc::new(boot_config);
    if let Ok(addr) = listener.local_addr() {
        info!("status page on http://{addr}/");
    }
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    debug!("status page accept: {e}");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let control = control.clone();
        let jellyfin = jellyfin.clone();
        let cast = cast.clone();
        let boot_config = boot_config.clone();
        let web = web.clone();
        tokio::spawn(async move {
            // Once per connection: the interfaces are read afresh, but not for every request.
            let local = lan::is_lan(peer.ip());
            let service = service_fn(move |request: Request<Incoming>| {
                let control = control.clone();
                let jellyfin = jellyfin.clone();
                let cast = cast.clone();
                let boot_config = boot_config.clone();
                let web = web.clone();
                async move {
                    let request = match (&web, local) {
                        (Some(web), true) => match web.handle(request, peer.ip()).await {
                            Ok(response) => return Ok::<_, Infallible>(response),
                            Err(request) => request,
                        },
                        _ => request,
                    };
                    let cast = cast.as_ref().and_then(CastStatusCell::snapshot);
                    let mut status = control.status();
                    if let Some(web) = &web {
                        // Renamed from the web app: the supervisor keeps the start-up name.
                        status.name = web.config.borrow().name.clone();
                    }
                    // The audio side as the web app switched it (and why a switch failed).
                    let audio = web.as_ref().map(|web| web.audio.state().borrow().clone());
                    let response = route_with_audio(
                        request.method(),
                        request.uri().path(),
                        local,
                        &status,
                        &jellyfin.borrow(),
                        cast.as_ref(),
                        boot_config.as_ref().as_ref(),
                        audio.as_ref(),
                    );
                    Ok(response.map(BodyExt::boxed))
                }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!("status page connection from {peer}: {e}");
            }
        });
    }
}

/// [`route_with_audio`] without the web app's audio state.
#[cfg(test)]
fn route(
    method: &Method,
    path: &str,
    local: bool,
    status: &SpeakerStatus,
    jellyfin: &JellyfinState,
    cast: Option<&CastStatus>,
    boot_config: Option<&Value>,
) -> Response<Full<Bytes>> {
    route_with_audio(
        method,
        path,
        local,
        status,
        jellyfin,
        cast,
        boot_config,
        None,
    )
}

/// The whole page logic, pure so it is tested without sockets.
#[allow(clippy::too_many_arguments)]
fn route_with_audio(
    method: &Method,
    path: &str,
    local: bool,
    status: &SpeakerStatus,
    jellyfin: &JellyfinState,
    cast: Option<&CastStatus>,
    boot_config: Option<&Value>,
    audio: Option<&AudioState>,
) -> Response<Full<Bytes>> {
    if !local {
        return plain(
            StatusCode::FORBIDDEN,
            "the status page is for the local network only\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "read-only\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut json = status_json(status, jellyfin, cast, boot_config);
    if let (Some(audio), Some(object)) = (audio, json.as_object_mut()) {
        object.insert("audio".into(), json!(audio));
    }
    let (body, content_type) = match path {
        "/status.json" => (json.to_string(), "application/json"),
        "/" | "/status" => (html(&json), "text/html; charset=utf-8"),
        _ => return plain(StatusCode::NOT_FOUND, "not found\n"),
    };
    let body = if method == Method::HEAD {
        String::new()
    } else {
        body
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn plain(code: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// The JSON document (also what `pispeaker status` and `drop-test` read). The cast, once one
/// has played, is `jellyfin.cast`.
pub fn status_json(
    status: &SpeakerStatus,
    jellyfin: &JellyfinState,
    cast: Option<&CastStatus>,
    boot_config: Option<&Value>,
) -> Value {
    let percent = (f64::from(status.volume) * 100.0 / f64::from(MAX_VOLUME)).round();
    let mut jellyfin = json!(jellyfin);
    if let (Some(cast), Some(object)) = (cast, jellyfin.as_object_mut()) {
        object.insert("cast".into(), json!(cast));
    }
    json!({
        "name": status.name,
        "version": env!("CARGO_PKG_VERSION"),
        "volume_percent": percent,
        "spotify": {
            "state": status.spotify,
            "reconnect_count": status.reconnect_count,
            "last_loss": status.last_loss,
            "playing": status.playing,
            "position_ms": status.position_ms,
            "track": status.track,
            "volume": status.volume,
            "sessions_alive": status.sessions_alive,
            "premium_required": status.premium_required,
        },
        "jellyfin": jellyfin,
        "boot_config": boot_config,
        // On the SD image: the running version, the other slot's and the last update's result.
        "update": crate::update_status::current(),
    })
}

fn html(json: &Value) -> String {
    let text = crate::status::client::render(json);
    let name = escape(json["name"].as_str().unwrap_or("pispeaker"));
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\"><title>{name}</title>\
<style>body{{font-family:sans-serif;margin:2em}}pre{{font-size:1.1em}}</style></head>\
<body><h1>{name}</h1><pre>{}</pre><p><a href=\"/status.json\">status.json</a></p></body></html>\n",
        escape(&text)
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::control::{LossRecord, SpotifyState};

    fn status() -> SpeakerStatus {
        let mut s = SpeakerStatus::new("Kitchen <b>", 32768);
        s.spotify = SpotifyState::Connected;
        s.reconnect_count = 3;
        s.last_loss = Some(LossRecord {
            reason: "keep-alive timeout".into(),
            at: std::time::SystemTime::UNIX_EPOCH,
        });
        s
    }

    fn body(r: Response<Full<Bytes>>) -> String {
        use http_body_util::BodyExt;
        let bytes = futures_util::FutureExt::now_or_never(r.into_body().collect())
            .unwrap()
            .unwrap()
            .to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// A peer the LAN check (`web::lan`, tested there) accepted.
    const LAN: bool = true;

    /// The default `[::]` listener takes IPv4 clients too, and their v4-mapped address passes
    /// the LAN check as the IPv4 address it is.
    #[tokio::test]
    async fn the_dual_stack_default_serves_ipv4_clients() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = bind("[::]:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (control, _endpoint) = crate::connect::control::channel(status());
        let (_jf, jellyfin) = watch::channel(JellyfinState::Disabled);
        let (_stop, shutdown) = watch::channel(false);
        tokio::spawn(serve(listener, control, jellyfin, shutdown));
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        stream
            .write_all(b"GET /status.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            stream.read_to_string(&mut response),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }

    #[test]
    fn json_has_what_the_page_promises() {
        let r = route(
            &Method::GET,
            "/status.json",
            LAN,
            &status(),
            &JellyfinState::Pairing {
                code: "123456".into(),
            },
            None,
            None,
        );
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = serde_json::from_str(&body(r)).unwrap();
        assert_eq!(v["name"], "Kitchen <b>");
        assert_eq!(v["spotify"]["state"], "connected");
        assert_eq!(v["spotify"]["reconnect_count"], 3);
        assert_eq!(v["spotify"]["sessions_alive"], 0);
        assert_eq!(v["spotify"]["premium_required"], false);
        assert_eq!(v["spotify"]["last_loss"]["reason"], "keep-alive timeout");
        assert_eq!(v["volume_percent"], 50.0);
        assert_eq!(v["jellyfin"]["state"], "pairing");
        assert_eq!(v["jellyfin"]["code"], "123456");
    }

    #[test]
    fn the_cast_is_under_jellyfin_once_one_played() {
        use crate::jellyfin::cast::{CastPlayState, FailedItem};
        let connected = JellyfinState::Connected {
            server: "http://jf:8096".into(),
        };
        let v = status_json(&status(), &connected, None, None);
        assert!(v["jellyfin"].get("cast").is_none(), "{v}");
        let cast = CastStatus {
            state: CastPlayState::Paused,
            item_id: Some("0123456789abcdef0123456789abcdef".into()),
            position_seconds: Some(61.5),
            duration_seconds: Some(200.0),
            queue_index: Some(2),
            queue_length: 5,
            repeat: "RepeatOne",
            shuffle: false,
            last_failed: Some(FailedItem {
                item_id: "fedcba9876543210fedcba9876543210".into(),
                reason: "decode error: bad header".into(),
            }),
        };
        let r = route(
            &Method::GET,
            "/status.json",
            LAN,
            &status(),
            &connected,
            Some(&cast),
            None,
        );
        let v: Value = serde_json::from_str(&body(r)).unwrap();
        assert_eq!(
            v["jellyfin"]["state"], "connected",
            "the state is still there"
        );
        assert_eq!(v["jellyfin"]["server"], "http://jf:8096");
        let c = &v["jellyfin"]["cast"];
        assert_eq!(c["state"], "paused");
        assert_eq!(c["item_id"], "0123456789abcdef0123456789abcdef");
        assert_eq!(c["position_seconds"], 61.5);
        assert_eq!(c["duration_seconds"], 200.0);
        assert_eq!(c["queue_index"], 2);
        assert_eq!(c["queue_length"], 5);
        assert_eq!(c["repeat"], "RepeatOne");
        assert_eq!(c["shuffle"], false);
        assert_eq!(c["last_failed"]["reason"], "decode error: bad header");
        // And the page (the same text as `pispeaker status`).
        let page = body(route(
            &Method::GET,
            "/",
            LAN,
            &status(),
            &connected,
            Some(&cast),
            None,
        ));
        assert!(page.contains("cast queue       3 of 5"), "{page}");
    }

    #[test]
    fn a_failed_audio_switch_is_on_the_page_and_in_the_json() {
        let audio = AudioState {
            device: Some("hw:CARD=Headphones,DEV=0".into()),
            volume_control: "software".into(),
            curve: crate::audio::VolumeCurveKind::Log,
            error: Some("ALSA PCM \"hw:CARD=sndrpihifiberry,DEV=0\" cannot be opened".into()),
        };
        let connected = JellyfinState::Disabled;
        let json = |path| {
            body(route_with_audio(
                &Method::GET,
                path,
                LAN,
                &status(),
                &connected,
                None,
                None,
                Some(&audio),
            ))
        };
        let v: Value = serde_json::from_str(&json("/status.json")).unwrap();
        assert_eq!(v["audio"]["device"], "hw:CARD=Headphones,DEV=0");
        assert!(v["audio"]["error"]
            .as_str()
            .unwrap()
            .contains("sndrpihifiberry"));
        let page = json("/");
        assert!(page.contains("audio error"), "{page}");
        assert!(
            page.contains("hw:CARD=Headphones,DEV=0, volume software (log curve)"),
            "{page}"
        );
    }

    #[test]
    fn boot_config_problems_are_shown() {
        let report = serde_json::json!({
            "source": "/boot/firmware/pispeaker.toml",
            "problems": [{"key": "wifi_country", "message": "\"XYZ\" is not a two-letter country code"}],
        });
        let r = route(
            &Method::GET,
            "/status.json",
            LAN,
            &status(),
            &JellyfinState::Disabled,
            None,
            Some(&report),
        );
        let v: Value = serde_json::from_str(&body(r)).unwrap();
        assert_eq!(v["boot_config"]["problems"][0]["key"], "wifi_country");
        let page = body(route(
            &Method::GET,
            "/",
            LAN,
            &status(),
            &JellyfinState::Disabled,
            None,
            Some(&report),
        ));
        assert!(page.contains("wifi_country"), "{page}");
        assert!(page.contains("two-letter"), "{page}");
    }

    #[test]
    fn html_is_escaped() {
        let page = body(route(
            &Method::GET,
            "/",
            LAN,
            &status(),
            &JellyfinState::Disabled,
            None,
            None,
        ));
        assert!(page.contains("Kitchen &lt;b&gt;"));
        assert!(!page.contains("Kitchen <b>"));
    }

    #[test]
    fn read_only_and_lan_only() {
        let r = route(
            &Method::POST,
            "/",
            LAN,
            &status(),
            &JellyfinState::Disabled,
            None,
            None,
        );
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        let r = route(
            &Method::GET,
            "/status.json",
            false,
            &status(),
            &JellyfinState::Disabled,
            None,
            None,
        );
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let r = route(
            &Method::GET,
            "/nope",
            LAN,
            &status(),
            &JellyfinState::Disabled,
            None,
            None,
        );
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}
