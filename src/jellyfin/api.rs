//! The Jellyfin HTTP API the speaker uses: Quick Connect, capabilities, playback reports.
//!
//! Every request has a timeout: a slow or dead server must never hold up anything, least of all
//! the Spotify side, which this module never touches.

use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use url::Url;

use super::identity::Identity;

/// Commands the speaker really handles (GeneralCommandType names only: PlaystateCommand names
/// such as Stop or Seek make the server answer 400).
pub const SUPPORTED_COMMANDS: &[&str] = &[
    "SetVolume",
    "VolumeUp",
    "VolumeDown",
    "Mute",
    "Unmute",
    "ToggleMute",
];

/// Added to [`SUPPORTED_COMMANDS`] when the speaker is a cast target (playing the library).
pub const CAST_COMMANDS: &[&str] = &[
    "Play",
    "PlayNext",
    "PlayMediaSource",
    "SetRepeatMode",
    "SetShuffleQueue",
];

/// Containers the cast decodes itself, in the universal endpoint's `container|codec` form: the
/// server sends these files as they are. Opus (no symphonia decoder) and anything else are
/// transcoded to `TRANSCODE_CODEC`.
const DIRECT_CONTAINERS: &str = "flac,mp3,m4a|aac,m4b|aac,mp4|aac,aac,ogg|vorbis,oga|vorbis,wav";
const TRANSCODE_CODEC: &str = "flac";

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("the server rejected the token (401)")]
    Unauthorized,
    #[error("HTTP {0}")]
    Status(u16),
    #[error("{0}")]
    Network(String),
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

/// A Quick Connect request waiting for approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuickConnect {
    pub secret: String,
    pub code: String,
}

/// One server, seen by one identity.
#[derive(Debug, Clone)]
pub struct Api {
    http: Client,
    /// For audio streams: no total timeout (a song lasts minutes), but connect and read ones.
    stream_http: Client,
    base: Url,
    pub identity: Identity,
    token: Option<String>,
    /// The token's own user (`GET /Users/Me`); `None` for an API key or before it is known.
    user_id: Option<String>,
    cast: bool,
}

impl Api {
    pub fn new(server: &str, identity: Identity, timeout: Duration) -> Result<Self, ApiError> {
        let mut base = Url::parse(server)
            .map_err(|e| ApiError::Protocol(format!("server URL {server:?}: {e}")))?;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| ApiError::Network(e.to_string()))?;
        let stream_http = Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .build()
            .map_err(|e| ApiError::Network(e.to_string()))?;
        Ok(Self {
            http,
            stream_http,
            base,
            identity,
            token: None,
            user_id: None,
            cast: false,
        })
    }

    /// Advertise the cast commands (only when the cast player runs).
    pub fn set_cast(&mut self, cast: bool) {
        self.cast = cast;
    }

    /// The commands the capabilities advertise.
    pub fn supported_commands(&self) -> Vec<&'static str> {
        let mut commands = SUPPORTED_COMMANDS.to_vec();
        if self.cast {
            commands.extend_from_slice(CAST_COMMANDS);
        }
        commands
    }

    /// `/Audio/{id}/universal?…`: the original file when the cast can decode its container, a
    /// FLAC transcode otherwise. No token: that goes in the Authorization header only, so the
    /// URL is safe to log.
    pub fn universal_audio_url(
        &self,
        item_id: &str,
        user_id: Option<&str>,
        media_source_id: &str,
        start_ticks: u64,
    ) -> Result<Url, ApiError> {
        let mut url = self.url(&format!("Audio/{item_id}/universal"))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(user) = user_id {
                q.append_pair("UserId", user);
            }
            q.append_pair("DeviceId", &self.identity.device_id)
                .append_pair("MediaSourceId", media_source_id)
                .append_pair("Container", DIRECT_CONTAINERS)
                .append_pair("TranscodingContainer", TRANSCODE_CODEC)
                .append_pair("TranscodingProtocol", "http")
                .append_pair("AudioCodec", TRANSCODE_CODEC)
                .append_pair("MaxStreamingBitrate", "140000000")
                .append_pair("EnableRedirection", "false")
                .append_pair("EnableRemoteMedia", "false");
            if start_ticks > 0 {
                q.append_pair("StartTimeTicks", &start_ticks.to_string());
            }
        }
        Ok(url)
    }

    /// Starts an audio stream at byte `from` (a `Range` request when not 0).
    pub async fn stream(&self, url: Url, from: u64) -> Result<reqwest::Response, ApiError> {
        let mut request = self.stream_http.get(url);
        if from > 0 {
            request = request.header("Range", format!("bytes={from}-"));
        }
        self.send(request).await
    }

    pub fn set_token(&mut self, token: Option<String>) {
        if token != self.token {
            self.user_id = None;
        }
        self.token = token;
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The token in use (to tell a rejected token from a fresh one in the token file).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The user the token belongs to: the `UserId` for streams. The server answers 403 when a
    /// stream names another user and the token's user is not an administrator, which is every
    /// cast by someone else in a home where a child's or a guest's account paired the speaker.
    pub fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }

    pub fn set_user_id(&mut self, user_id: Option<String>) {
        self.user_id = user_id;
    }

    /// `GET /Users/Me`: the token's own user, `None` for a token without one (an API key, which
    /// the server answers with 400).
    pub async fn current_user(&self) -> Result<Option<String>, ApiError> {
        match self.json(self.http.get(self.url("Users/Me")?)).await {
            Ok(v) => Ok(v["Id"].as_str().map(str::to_string)),
            Err(ApiError::Status(400)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether one of the server's sessions for our DeviceId can be remote-controlled
    /// (`GET /Sessions?DeviceId=…`, `SupportsRemoteControl`): false when the server bound our
    /// socket to no session of ours, or to another app's session (a token minted elsewhere).
    pub async fn session_controllable(&self) -> Result<bool, ApiError> {
        let mut url = self.url("Sessions")?;
        url.query_pairs_mut()
            .append_pair("DeviceId", &self.identity.device_id);
        let v = self.json(self.http.get(url)).await?;
        Ok(v.as_array().is_some_and(|sessions| {
            sessions.iter().any(|s| {
                s["SupportsRemoteControl"] == true
                    && s["DeviceId"]
                        .as_str()
                        .is_some_and(|d| d.eq_ignore_ascii_case(&self.identity.device_id))
            })
        }))
    }

    /// `ws(s)://host[/base]/socket`.
    pub fn socket_url(&self) -> Result<Url, ApiError> {
        let mut url = self.url("socket")?;
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme)
            .map_err(|_| ApiError::Protocol("cannot build the socket URL".into()))?;
        Ok(url)
    }

    pub fn authorization(&self) -> String {
        self.identity.authorization(self.token.as_deref())
    }

    fn url(&self, path: &str) -> Result<Url, ApiError> {
        self.base
            .join(path)
            .map_err(|e| ApiError::Protocol(format!("{path}: {e}")))
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiError> {
        let response = request
            .header("Authorization", self.authorization())
            .send()
            .await
            .map_err(|e| ApiError::Network(describe(e)))?;
        match response.status() {
            StatusCode::UNAUTHORIZED => Err(ApiError::Unauthorized),
            s if s.is_success() => Ok(response),
            s => Err(ApiError::Status(s.as_u16())),
        }
    }

    async fn json(&self, request: reqwest::RequestBuilder) -> Result<Value, ApiError> {
        self.send(request)
            .await?
            .json()
            .await
            .map_err(|e| ApiError::Protocol(e.to_string()))
    }

    pub async fn quick_connect_enabled(&self) -> Result<bool, ApiError> {
        let v = self
            .json(self.http.get(self.url("QuickConnect/Enabled")?))
            .await?;
        Ok(v.as_bool().unwrap_or(false))
    }

    pub async fn quick_connect_initiate(&self) -> Result<QuickConnect, ApiError> {
        let v = self
            .json(self.http.post(self.url("QuickConnect/Initiate")?))
            .await?;
        match (v["Secret"].as_str(), v["Code"].as_str()) {
            (Some(secret), Some(code)) => Ok(QuickConnect {
                secret: secret.to_string(),
                code: code.to_string(),
            }),
            _ => Err(ApiError::Protocol(
                "Quick Connect answer without Secret/Code".into(),
            )),
        }
    }

    /// Whether the user approved the code; `Err(Status(404))` once it expired.
    pub async fn quick_connect_approved(&self, secret: &str) -> Result<bool, ApiError> {
        let mut url = self.url("QuickConnect/Connect")?;
        url.query_pairs_mut().append_pair("secret", secret);
        let v = self.json(self.http.get(url)).await?;
        Ok(v["Authenticated"].as_bool().unwrap_or(false))
    }

    /// Exchanges an approved secret for an access token.
    pub async fn authenticate_with_quick_connect(&self, secret: &str) -> Result<String, ApiError> {
        let request = self
            .http
            .post(self.url("Users/AuthenticateWithQuickConnect")?)
            .json(&json!({ "Secret": secret }));
        let v = self.json(request).await?;
        v["AccessToken"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ApiError::Protocol("authentication answer without AccessToken".into()))
    }

    /// Registers (or refreshes) the session: the bare ClientCapabilitiesDto.
    pub async fn post_capabilities(&self) -> Result<(), ApiError> {
        let body = json!({
            "PlayableMediaTypes": ["Audio"],
            "SupportedCommands": self.supported_commands(),
            "SupportsMediaControl": true,
            "SupportsPersistentIdentifier": true,
        });
        let request = self
            .http
            .post(self.url("Sessions/Capabilities/Full")?)
            .json(&body);
        self.send(request).await.map(|_| ())
    }

    /// `/Sessions/Playing`, `/Sessions/Playing/Progress` or `/Sessions/Playing/Stopped`.
    pub async fn report(&self, path: &str, body: &Value) -> Result<(), ApiError> {
        let request = self.http.post(self.url(path)?).json(body);
        self.send(request).await.map(|_| ())
    }
}

fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        // Without the URL: it carries no secret today, but keep logs free of query strings.
        e.without_url().to_string()
    }
}

/// The cast's streams go out with the token in the Authorization header, never in the URL.
impl crate::audio::StreamFetch for Api {
    async fn fetch(&self, url: Url, from: u64) -> Result<reqwest::Response, String> {
        self.stream(url, from).await.map_err(|e| e.to_string())
    }
}
