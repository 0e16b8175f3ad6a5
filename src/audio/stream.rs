//! An HTTP stream as a blocking, seekable byte source for the decoder, with a bounded read-ahead.
//!
//! A tokio task downloads into a window of bytes and stays at most `read_ahead` bytes ahead of
//! the reader, so memory is bounded while a LAN download runs many seconds ahead of playback
//! (4 MiB is ≥ 20 s of CD-quality FLAC, ≥ 4 s of 24-bit/192 kHz): that is what carries playback
//! through a network stall. The decoder reads on its own thread and blocks on a condition variable.
//! A seek inside the window is served from memory; elsewhere the download restarts with an HTTP
//! `Range` request (only when the server accepts ranges: a transcode does not, and the player then
//! restarts the stream at the position instead). A dropped connection resumes with a `Range`
//! request: a server may well drop a connection we stopped reading while the read-ahead was full.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use log::debug;
use tokio::sync::Notify;
use url::Url;

/// Sends the GET for `url` from byte `from` (a `Range: bytes=from-` header when `from > 0`): the
/// source's own HTTP client, authentication and error words. The stream knows only bytes.
pub trait StreamFetch: Clone + Send + Sync + 'static {
    fn fetch(
        &self,
        url: Url,
        from: u64,
    ) -> impl std::future::Future<Output = Result<reqwest::Response, String>> + Send;
}

/// Sizes and patience.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    /// How far the download may run ahead of the decoder.
    pub read_ahead: usize,
    /// How much already-read data is kept for short backward seeks (probing, Ogg bisection).
    pub keep_behind: usize,
    /// A reader waiting this long for bytes gets an error (the track fails, the queue moves on).
    pub stall_timeout: Duration,
    /// Reconnect attempts in a row (without a byte in between) after the connection drops.
    pub resumes: u32,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            read_ahead: 4 << 20,
            keep_behind: 256 << 10,
            stall_timeout: Duration::from_secs(20),
            resumes: 3,
        }
    }
}

#[derive(Debug, Default)]
struct Window {
    /// Stream offset of `bytes[0]`.
    start: u64,
    bytes: Vec<u8>,
    /// Where the reader is (the fetcher stays within `read_ahead` of it).
    read_pos: u64,
    /// Total length when the server said.
    total: Option<u64>,
    /// The download reached the end.
    done: bool,
    error: Option<String>,
    /// Bumped when the reader moves the window: the fetcher restarts at `start`.
    generation: u64,
    closed: bool,
}

impl Window {
    fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

struct Shared {
    window: Mutex<Window>,
    /// The reader waits here for bytes.
    data: Condvar,
    /// The fetcher waits here for room or a restart.
    room: Notify,
}

impl Shared {
    // Plain data, always consistent between statements: a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The reader side, handed to the decoder thread. Dropping it stops the download.
pub struct HttpSource {
    shared: Arc<Shared>,
    pos: u64,
    seekable: bool,
    settings: StreamSettings,
}

impl HttpSource {
    /// Sends the request and waits for the answer's headers, so a 404/500 fails here, before the
    /// player gives the track to the decoder. `Ok(None)` if the server has no body at all.
    pub async fn open<F: StreamFetch>(
        fetcher: &F,
        url: Url,
        settings: StreamSettings,
    ) -> Result<Self, String> {
        let response = fetcher.fetch(url.clone(), 0).await?;
        let seekable = accepts_ranges(&response);
        let total = response.content_length().filter(|n| *n > 0);
        let shared = Arc::new(Shared {
            window: Mutex::new(Window {
                total,
                ..Window::default()
            }),
            data: Condvar::new(),
            room: Notify::new(),
        });
        tokio::spawn(fetch(
            fetcher.clone(),
            url,
            response,
            shared.clone(),
            settings,
            seekable,
        ));
        Ok(Self {
            shared,
            pos: 0,
            seekable,
            settings,
        })
    }

    /// Whether the server accepts `Range` requests (the original file, not a transcode).
    pub fn seekable(&self) -> bool {
        self.seekable
    }

    pub fn total(&self) -> Option<u64> {
        self.shared.lock().total
    }
}

fn accepts_ranges(response: &reqwest::Response) -> bool {
    response.status() == reqwest::StatusCode::PARTIAL_CONTENT
        || response
            .headers()
            .get("accept-ranges")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("bytes"))
}

impl Drop for HttpSource {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.room.notify_one();
    }
}

impl Read for HttpSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut w = self.shared.lock();
        w.read_pos = self.pos;
        loop {
            if self.pos >= w.start && self.pos < w.end() {
                let from = (self.pos - w.start) as usize;
                let n = buf.len().min(w.bytes.len() - from);
                buf[..n].copy_from_slice(&w.bytes[from..from + n]);
                self.pos += n as u64;
                w.read_pos = self.pos;
                // Forget what is far behind the reader.
                let behind = (self.pos - w.start) as usize;
                if behind > self.settings.keep_behind * 2 {
                    let drop_n = behind - self.settings.keep_behind;
                    w.bytes.drain(..drop_n);
                    w.start += drop_n as u64;
                }
                drop(w);
                self.shared.room.notify_one();
                return Ok(n);
            }
            if w.total.is_some_and(|t| self.pos >= t) || (w.done && self.pos >= w.end()) {
                return Ok(0);
            }
            if let Some(e) = &w.error {
                return Err(io::Error::other(e.clone()));
            }
            // Outside the window and not just ahead of the download: move the window.
            let near = self.pos >= w.end() && self.pos - w.end() < self.settings.keep_behind as u64;
            if self.seekable && !(self.pos >= w.start && near) {
                w.start = self.pos;
                w.bytes.clear();
                w.done = false;
                w.generation += 1;
                self.shared.room.notify_one();
            }
            let (guard, timeout) = self
                .shared
                .data
                .wait_timeout(w, self.settings.stall_timeout)
                .unwrap_or_else(PoisonError::into_inner);
            w = guard;
            if timeout.timed_out() && !(self.pos >= w.start && self.pos < w.end()) && !w.done {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no data for {} s",
                        self.settings.stall_timeout.as_secs_f32()
                    ),
                ));
            }
        }
    }
}

impl Seek for HttpSource {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let total = self.total();
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => total.and_then(|t| t.checked_add_signed(d)),
        };
        let target = target.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek outside the stream")
        })?;
        self.pos = target;
        Ok(target)
    }
}

impl symphonia::core::io::MediaSource for HttpSource {
    fn is_seekable(&self) -> bool {
        self.seekable
    }

    fn byte_len(&self) -> Option<u64> {
        self.total()
    }
}

/// The download task: fills the window, waits for room, restarts on a reader's seek, resumes a
/// dropped connection.
async fn fetch<F: StreamFetch>(
    fetcher: F,
    url: Url,
    first: reqwest::Response,
    shared: Arc<Shared>,
    settings: StreamSettings,
    seekable: bool,
) {
    let mut response = Some(first);
    let mut resumes_left = settings.resumes;
    loop {
        let (generation, offset) = {
            let w = shared.lock();
            if w.closed {
                return;
            }
            (w.generation, w.end())
        };
        let mut body = match response.take() {
            Some(r) => r,
            None => match fetcher.fetch(url.clone(), offset).await {
                Ok(r) => r,
                Err(e) => {
                    fail(&shared, format!("stream request: {e}"));
                    return;
                }
            },
        };
        // Fill until the end, an error, or a restart.
        let restart = loop {
            let chunk = tokio::select! {
                c = body.chunk() => c,
                _ = closed(&shared) => return,
            };
            match chunk {
                Ok(Some(bytes)) => {
                    // Scoped, not dropped: the guard must visibly end before any await.
                    let appended = {
                        let mut w = shared.lock();
                        if w.closed {
                            return;
                        }
                        if w.generation == generation {
                            w.bytes.extend_from_slice(&bytes);
                        }
                        w.generation == generation
                    };
                    if !appended {
                        break true;
                    }
                    // Resumes are counted in a row: a server that drops a connection we let
                    // idle (the read-ahead was full) gets resumed as often as it makes progress.
                    resumes_left = settings.resumes;
                    shared.data.notify_all();
                    // Wait for room (or a restart) before reading more.
                    loop {
                        let notified = shared.room.notified();
                        {
                            let w = shared.lock();
                            if w.closed {
                                return;
                            }
                            if w.generation != generation
                                || w.end().saturating_sub(w.read_pos) < settings.read_ahead as u64
                            {
                                break;
                            }
                        }
                        notified.await;
                    }
                }
                Ok(None) => {
                    let finished = {
                        let mut w = shared.lock();
                        if w.generation == generation {
                            w.done = true;
                        }
                        w.generation == generation
                    };
                    shared.data.notify_all();
                    break !finished;
                }
                Err(e) => {
                    if seekable && resumes_left > 0 {
                        resumes_left -= 1;
                        debug!("stream dropped ({e}); resuming with a range request");
                        break true;
                    }
                    fail(&shared, format!("stream: {}", e.without_url()));
                    return;
                }
            }
        };
        if !restart {
            // Done: wait for a seek that needs the window moved, or the reader to go away.
            loop {
                let notified = shared.room.notified();
                {
                    let w = shared.lock();
                    if w.closed {
                        return;
                    }
                    if w.generation != generation {
                        break;
                    }
                }
                notified.await;
            }
        }
    }
}

async fn closed(shared: &Shared) {
    loop {
        let notified = shared.room.notified();
        if shared.lock().closed {
            return;
        }
        notified.await;
    }
}

fn fail(shared: &Shared, error: String) {
    shared.lock().error = Some(error);
    shared.data.notify_all();
}
