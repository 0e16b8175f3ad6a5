//! The cast player: a tokio task that owns the queue, the reports and the handover with Spotify,
//! and one audio thread (per cast) that owns the PCM and the device guard.
//!
//! Why a thread: decoding and ALSA writes block, and the audio must not stall behind the
//! sidecar's network I/O (or stall it). The task opens each HTTP stream (so a 404/500 is known
//! before anything is handed over), then gives the reader to the thread, which probes, decodes and
//! writes at the device's pace. Every message carries a generation so an event from a track the
//! user already skipped is ignored.
//!
//! Handover: the thread checks between packets whether Spotify's sink is waiting for the device
//! ([`DeviceGuard::preempted`]); if so it closes the PCM, drops the guard and says so; the task
//! then reports `Stopped`. Taking the device the other way is polite: pause Spotify through the
//! control handle and wait for its sink to let go.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use librespot_playback::mixer::{Mixer, VolumeGetter};
use log::{debug, info, warn};
use symphonia::core::io::MediaSource;
use tokio::sync::{mpsc, watch};

use super::queue::{PlayCommand, PlaybackOrder, Queue, QueueItem, RepeatMode};
use super::report::{self, CastState};
use super::snapshot::{CastPlayState, CastStatus, CastStatusCell, FailedItem};
use crate::audio::TrackDecoder;
use crate::audio::{AudioDeviceLock, DeviceBusy, DeviceGuard, Holder, MAX_VOLUME};
use crate::audio::{HttpSource, StreamSettings};
use crate::audio::{OutputFactory, PcmOutput};
use crate::connect::control::{Command, ControlHandle};
use crate::jellyfin::api::Api;
use crate::jellyfin::reporter::Report;

/// What the cast needs from the daemon.
#[derive(Clone)]
pub struct CastSettings {
    pub output: OutputFactory,
    /// The same mixer Spotify uses: the volume is the same across the switch.
    pub mixer: Arc<dyn Mixer>,
    pub lock: AudioDeviceLock,
    pub stream: StreamSettings,
    /// How long to wait for Spotify's sink to let go after asking it to pause.
    pub handover_wait: Duration,
    pub progress_every: Duration,
    /// While paused, a progress report this often: the server stops a playback that has not
    /// checked in for 5 minutes (see `jellyfin::PAUSED_CHECK_IN`).
    pub paused_check_in: Duration,
    /// Where the player publishes what the status page shows (the daemon hands a clone of the
    /// same cell to the status server).
    pub status: CastStatusCell,
}

impl std::fmt::Debug for CastSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CastSettings")
            .field("stream", &self.stream)
            .field("handover_wait", &self.handover_wait)
            .field("progress_every", &self.progress_every)
            .finish_non_exhaustive()
    }
}

/// A `Play` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayRequest {
    pub item_ids: Vec<String>,
    pub command: PlayCommand,
    pub start_index: usize,
    pub start_position_ms: u64,
    pub media_source_id: Option<String>,
    pub user_id: Option<String>,
}

/// Remote control of the cast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CastCommand {
    Play(PlayRequest),
    Pause,
    Unpause,
    PlayPause,
    Stop,
    Next,
    Previous,
    Seek {
        position_ms: u64,
    },
    /// `Rewind`/`FastForward`: relative to the heard position, kept inside the item.
    SeekBy(i64),
    SetVolume(u16),
    VolumeUp,
    VolumeDown,
    SetRepeat(RepeatMode),
    SetShuffle(PlaybackOrder),
}

/// Figures for the status page, tests and the closing notes.
#[derive(Debug, Clone, Default)]
pub struct CastStats {
    /// From the `Play` command to the first frame in the device buffer, per started item.
    pub start_latencies: Vec<Duration>,
    /// Underruns the output reported.
    pub underruns: u64,
    /// Items that failed to stream or decode.
    pub failed_items: Vec<String>,
    /// Times Spotify took the device from a cast.
    pub preempted: u64,
}

/// The sidecar's side of the player.
#[derive(Clone)]
pub struct CastHandle {
    tx: mpsc::Sender<CastCommand>,
    active: watch::Receiver<bool>,
    mixer: Arc<dyn Mixer>,
    stats: Arc<Mutex<CastStats>>,
}

impl CastHandle {
    /// True from a `Play` until the cast stops (the remote's commands are the cast's then).
    pub fn is_active(&self) -> bool {
        *self.active.borrow()
    }

    pub fn watch_active(&self) -> watch::Receiver<bool> {
        self.active.clone()
    }

    /// Never waits: a full queue means the player is far behind, and the socket must not stall.
    pub fn send(&self, command: CastCommand) {
        if let Err(e) = self.tx.try_send(command) {
            warn!("cast command dropped: {e}");
        }
    }

    /// The live volume (0..=65535), for Mute/Unmute while casting.
    pub fn volume(&self) -> u16 {
        self.mixer.volume()
    }

    pub fn stats(&self) -> CastStats {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Starts the player task.
pub fn spawn(
    settings: CastSettings,
    api: watch::Receiver<Option<Api>>,
    control: ControlHandle,
    reports: mpsc::Sender<Report>,
    shutdown: watch::Receiver<bool>,
) -> CastHandle {
    let (tx, rx) = mpsc::channel(64);
    let (active_tx, active) = watch::channel(false);
    let stats = Arc::new(Mutex::new(CastStats::default()));
    let handle = CastHandle {
        tx,
        active,
        mixer: settings.mixer.clone(),
        stats: stats.clone(),
    };
    let (audio_events_tx, audio_events) = mpsc::unbounded_channel();
    // The status page reads the same atomic, so it shows the position live.
    let position = settings.status.position();
    let player = Player {
        queue: Queue::new(rand::random()),
        settings,
        api,
        control,
        reports,
        audio: None,
        audio_thread: 0,
        audio_events_tx,
        now: None,
        generation: 0,
        position,
        underruns: Arc::new(AtomicU64::new(0)),
        active: active_tx,
        stats,
        media_source_id: None,
        user: None,
        last_failed: None,
        last_progress: Mutex::new(None),
        queue_on_server: false,
    };
    tokio::spawn(player.run(rx, audio_events, shutdown));
    handle
}

/// Commands to the audio thread.
enum ToAudio {
    Load {
        generation: u64,
        source: Box<dyn MediaSource>,
        /// Seek the decoder here first (a range-capable stream).
        seek_to: Option<Duration>,
        /// Where the stream starts (a transcode started at StartTimeTicks).
        base: Duration,
    },
    Pause,
    Resume,
    Seek {
        generation: u64,
        to: Duration,
    },
    /// Close the PCM and end the thread, playing out the buffer first if `drain`.
    Close {
        drain: bool,
    },
}

/// Events from the audio thread.
#[derive(Debug)]
enum FromAudio {
    Started {
        generation: u64,
        at: Instant,
        /// The item's length, when the stream says.
        duration: Option<Duration>,
    },
    Seeked {
        generation: u64,
    },
    Ended {
        generation: u64,
    },
    Failed {
        generation: u64,
        why: String,
    },
    /// The thread closed the PCM, dropped the guard and ended.
    Released {
        /// Which thread: one that was told to close may report after its successor started.
        thread: u64,
        preempted: bool,
        error: Option<String>,
    },
}

/// The item being played.
struct Now {
    item: QueueItem,
    generation: u64,
    play_session_id: String,
    media_source_id: String,
    seekable: bool,
    started: bool,
    paused: bool,
    requested_at: Instant,
    /// From the decoder, once the first frame played.
    duration: Option<Duration>,
}

struct Player {
    settings: CastSettings,
    api: watch::Receiver<Option<Api>>,
    control: ControlHandle,
    reports: mpsc::Sender<Report>,
    queue: Queue,
    audio: Option<std_mpsc::Sender<ToAudio>>,
    /// Number of the current audio thread (see `FromAudio::Released`).
    audio_thread: u64,
    audio_events_tx: mpsc::UnboundedSender<FromAudio>,
    now: Option<Now>,
    generation: u64,
    /// Heard position of the current item, in ms, kept by the audio thread.
    position: Arc<AtomicU64>,
    underruns: Arc<AtomicU64>,
    active: watch::Sender<bool>,
    stats: Arc<Mutex<CastStats>>,
    /// The MediaSourceId of the last `Play` (for its first item only).
    media_source_id: Option<(String, String)>,
    /// ControllingUserId of the last `Play`: the stream's `UserId` only when the token has no
    /// user of its own (an API key, which may act as anyone but finds nothing as no one).
    user: Option<String>,
    /// For the status page: the last item that failed and why.
    last_failed: Option<FailedItem>,
    /// When the last progress of the current item went out (the paused check-in).
    last_progress: Mutex<Option<Instant>>,
    /// A `Playing` with our queue went out and no final `Stopped` since: the server holds our
    /// queue on the session.
    queue_on_server: bool,
}

/// Volume step for VolumeUp/VolumeDown: 1/32 of the range, about what the Spotify app steps.
const VOLUME_STEP: u16 = MAX_VOLUME / 32;

impl Player {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<CastCommand>,
        mut audio_events: mpsc::UnboundedReceiver<FromAudio>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(self.settings.progress_every);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => {
                        self.on_command(command, Instant::now()).await;
                        self.publish();
                    }
                    None => break,
                },
                Some(event) = audio_events.recv() => {
                    self.on_audio(event).await;
                    self.publish();
                }
                _ = tick.tick() => {
                    let check_in = self.settings.paused_check_in;
                    let quiet = self
                        .last_progress
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .is_none_or(|at| at.elapsed() >= check_in);
                    if self.now.as_ref().is_some_and(|n| n.started && (!n.paused || quiet)) {
                        self.report_progress();
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        self.stop(false).await;
        self.publish();
    }

    /// Updates the status page's snapshot (after every command and audio event: cheap, and
    /// nothing that changes the state happens anywhere else). Nothing before the first `Play`.
    fn publish(&self) {
        // Every attempt to play an item takes a generation: 0 means no Play yet.
        if self.generation == 0 {
            return;
        }
        let active = *self.active.borrow();
        let state = match &self.now {
            _ if !active => CastPlayState::Stopped,
            Some(now) if now.paused => CastPlayState::Paused,
            // Also between items, while the next stream opens.
            _ => CastPlayState::Playing,
        };
        let playing = state != CastPlayState::Stopped;
        let item_id = self
            .now
            .as_ref()
            .map(|n| n.item.id.clone())
            .or_else(|| self.queue.current().map(|c| c.id.clone()))
            .filter(|_| playing);
        self.settings.status.publish(CastStatus {
            state,
            item_id,
            position_seconds: None,
            duration_seconds: self
                .now
                .as_ref()
                .and_then(|n| n.duration)
                .filter(|_| playing)
                .map(|d| d.as_secs_f64()),
            queue_index: self.queue.current_index().filter(|_| playing),
            queue_length: self.queue.items().len(),
            repeat: self.queue.repeat.as_str(),
            shuffle: self.queue.playback_order() == PlaybackOrder::Shuffle,
            last_failed: self.last_failed.clone(),
        });
    }

    fn stat(&self, f: impl FnOnce(&mut CastStats)) {
        f(&mut self.stats.lock().unwrap_or_else(PoisonError::into_inner));
    }

    async fn on_command(&mut self, command: CastCommand, at: Instant) {
        debug!("cast command {command:?}");
        match command {
            CastCommand::Play(request) => self.play(request, at).await,
            CastCommand::Stop => self.stop(false).await,
            CastCommand::Pause => self.set_paused(true),
            CastCommand::Unpause => self.set_paused(false),
            CastCommand::PlayPause => {
                let paused = self.now.as_ref().is_some_and(|n| n.paused);
                self.set_paused(!paused);
            }
            CastCommand::Next => {
                let next = self.queue.skip().is_some();
                self.end_current_as(false, !next).await;
                if next {
                    self.start_current(0, at).await;
                } else {
                    self.finish();
                }
            }
            CastCommand::Previous => {
                // Like every player: "previous" restarts the item unless it just started.
                if self.position.load(Ordering::SeqCst) > 3_000 {
                    self.seek(0, at).await;
                } else {
                    self.end_current(false).await;
                    if self.queue.previous().is_some() {
                        self.start_current(0, at).await;
                    }
                }
            }
            CastCommand::Seek { position_ms } => self.seek(position_ms, at).await,
            CastCommand::SeekBy(delta_ms) => {
                let Some(now) = &self.now else { return };
                let heard = self.position.load(Ordering::SeqCst) as i64;
                let mut to = (heard + delta_ms).max(0) as u64;
                if let Some(duration) = now.duration {
                    // Not past the end: a skip forward near the end lands a second before it.
                    to = to.min((duration.as_millis() as u64).saturating_sub(1_000));
                }
                self.seek(to, at).await;
            }
            CastCommand::SetVolume(v) => self.set_volume(v),
            CastCommand::VolumeUp => {
                let v = self.settings.mixer.volume().saturating_add(VOLUME_STEP);
                self.set_volume(v);
            }
            CastCommand::VolumeDown => {
                let v = self.settings.mixer.volume().saturating_sub(VOLUME_STEP);
                self.set_volume(v);
            }
            CastCommand::SetRepeat(mode) => {
                self.queue.repeat = mode;
                self.report_progress();
            }
            CastCommand::SetShuffle(order) => {
                self.queue.set_playback_order(order);
                self.report_progress();
            }
        }
    }

    async fn play(&mut self, request: PlayRequest, at: Instant) {
        // Item ids go into a URL path: only GUIDs, in the form the server uses.
        let ids: Vec<String> = request
            .item_ids
            .iter()
            .filter_map(|id| match uuid::Uuid::parse_str(id) {
                Ok(uuid) => Some(uuid.simple().to_string()),
                Err(_) => {
                    warn!("cast: ignoring item id {id:?} (not a GUID)");
                    None
                }
            })
            .collect();
        if ids.is_empty() {
            return;
        }
        if request.user_id.is_some() {
            self.user = request.user_id;
        }
        let first = ids.get(request.start_index.min(ids.len() - 1)).cloned();
        if request.command.replaces_queue() {
            self.end_current(false).await;
        }
        let restart = self.queue.play(request.command, &ids, request.start_index);
        if restart {
            self.end_current(false).await;
            // StartPositionTicks and MediaSourceId belong to the item at StartIndex: after a
            // PlayShuffle another item may come first, and it starts from its beginning.
            let start_ms = if self.queue.current().map(|c| &c.id) == first.as_ref() {
                request.start_position_ms
            } else {
                0
            };
            self.media_source_id = request.media_source_id.zip(first);
            self.start_current(start_ms, at).await;
        } else {
            self.report_progress();
        }
    }

    fn set_paused(&mut self, paused: bool) {
        let Some(now) = self.now.as_mut() else {
            return;
        };
        if now.paused == paused {
            return;
        }
        now.paused = paused;
        if let Some(audio) = &self.audio {
            let _ = audio.send(if paused {
                ToAudio::Pause
            } else {
                ToAudio::Resume
            });
        }
        self.report_progress();
    }

    async fn seek(&mut self, position_ms: u64, at: Instant) {
        let Some(now) = &self.now else {
            return;
        };
        if now.seekable {
            if let Some(audio) = &self.audio {
                let _ = audio.send(ToAudio::Seek {
                    generation: now.generation,
                    to: Duration::from_millis(position_ms),
                });
            }
        } else {
            // A transcode cannot seek in bytes: ask the server for the stream from there.
            self.now = None;
            self.start_current(position_ms, at).await;
        }
    }

    fn set_volume(&mut self, volume: u16) {
        self.settings.mixer.set_volume(volume);
        if self.now.is_some() {
            self.report_progress();
        }
    }

    fn state<'a>(&'a self, now: &'a Now) -> CastState<'a> {
        CastState {
            item: &now.item,
            play_session_id: &now.play_session_id,
            media_source_id: &now.media_source_id,
            position_ms: self.position.load(Ordering::SeqCst),
            paused: now.paused,
            volume: self.settings.mixer.volume(),
            repeat: self.queue.repeat,
            order: self.queue.playback_order(),
            queue: self.queue.items(),
            transcoding: !now.seekable,
            can_seek: true,
        }
    }

    fn report_progress(&self) {
        if let Some(now) = self.now.as_ref().filter(|n| n.started) {
            *self
                .last_progress
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            // Progress may be dropped when Jellyfin is far behind; state changes never are.
            let _ = self
                .reports
                .try_send(report::playing(report::PROGRESS, &self.state(now)));
        }
    }

    async fn send_report(&self, report: Report) {
        let _ = self.reports.send(report).await;
    }

    /// Reports the current item as stopped (if it was reported playing, or `failed`) and forgets it.
    async fn end_current(&mut self, failed: bool) {
        self.end_current_as(failed, false).await;
    }

    /// `last`: the cast ends here, so the Stopped carries an empty `NowPlayingQueue` (the server
    /// keeps the last non-null queue on the session otherwise, and the remote keeps showing it).
    async fn end_current_as(&mut self, failed: bool, last: bool) {
        if let Some(now) = self.now.take() {
            // A cast stopped before its next item's first frame still clears its queue.
            if now.started || failed || (last && self.queue_on_server) {
                let report = report::stopped(&self.state(&now), failed, last);
                self.send_report(report).await;
                if last {
                    self.queue_on_server = false;
                }
            }
        }
    }

    /// Plays the queue's current item, skipping (and reporting) items that fail to open.
    async fn start_current(&mut self, start_ms: u64, at: Instant) {
        let mut attempts = self.queue.items().len().max(1);
        let mut start_ms = start_ms;
        while let Some(item) = self.queue.current().cloned() {
            if attempts == 0 {
                warn!("cast: nothing in the queue could be played");
                self.finish();
                return;
            }
            attempts -= 1;
            if self.audio.is_none() {
                match self.take_device().await {
                    Ok(guard) => self.spawn_audio(guard),
                    Err(e) => {
                        warn!("cast: cannot take the audio device: {e}");
                        self.queue.clear();
                        self.active.send_replace(false);
                        return;
                    }
                }
            }
            self.active.send_replace(true);
            self.generation += 1;
            self.position.store(start_ms, Ordering::SeqCst);
            let media_source_id = match &self.media_source_id {
                Some((source, item_id)) if *item_id == item.id => source.clone(),
                _ => item.id.clone(),
            };
            let now = Now {
                item: item.clone(),
                generation: self.generation,
                play_session_id: uuid::Uuid::new_v4().simple().to_string(),
                media_source_id,
                seekable: true,
                started: false,
                paused: false,
                requested_at: at,
                duration: None,
            };
            match self.open_stream(&now, start_ms).await {
                Ok(source) => {
                    let seekable = source.seekable();
                    let (seek_to, base) = match (seekable, start_ms) {
                        (_, 0) => (None, Duration::ZERO),
                        (true, ms) => (Some(Duration::from_millis(ms)), Duration::ZERO),
                        (false, ms) => (None, Duration::from_millis(ms)),
                    };
                    self.now = Some(Now { seekable, ..now });
                    if let Some(audio) = &self.audio {
                        let _ = audio.send(ToAudio::Load {
                            generation: self.generation,
                            source: Box::new(source),
                            seek_to,
                            base,
                        });
                    }
                    return;
                }
                Err(why) => {
                    let next = self.queue.skip().is_some();
                    self.item_failed(&now, &why, !next).await;
                    start_ms = 0;
                    if !next {
                        self.finish();
                        return;
                    }
                }
            }
        }
    }

    async fn item_failed(&mut self, now: &Now, why: &str, last: bool) {
        warn!("cast: item {} failed: {why}; skipping it", now.item.id);
        self.stat(|s| s.failed_items.push(now.item.id.clone()));
        self.last_failed = Some(FailedItem {
            item_id: now.item.id.clone(),
            reason: why.to_string(),
        });
        let report = report::stopped(&self.state(now), true, last);
        self.send_report(report).await;
        if last {
            self.queue_on_server = false;
        }
    }

    async fn open_stream(&self, now: &Now, start_ms: u64) -> Result<HttpSource, String> {
        let api = self
            .api
            .borrow()
            .clone()
            .filter(Api::has_token)
            .ok_or("not signed in to Jellyfin")?;
        let url = api
            .universal_audio_url(
                &now.item.id,
                api.user_id().or(self.user.as_deref()),
                &now.media_source_id,
                start_ms * 10_000,
            )
            .map_err(|e| e.to_string())?;
        HttpSource::open(&api, url, self.settings.stream)
            .await
            .map_err(|e| format!("stream: {e}"))
    }

    /// The device for the cast: free, or after Spotify paused and its sink let go (or our own
    /// previous audio thread finished playing out the end of a queue).
    async fn take_device(&self) -> Result<DeviceGuard, String> {
        match self.settings.lock.try_acquire_cast() {
            Ok(guard) => return Ok(guard),
            Err(DeviceBusy::HeldBy(Holder::Cast)) => {}
            Err(DeviceBusy::HeldBy(Holder::Spotify)) => {
                info!("cast: pausing Spotify to take the audio device");
                if let Err(e) = self.control.send(Command::Pause).await {
                    debug!("pausing Spotify: {e}");
                }
            }
        }
        let deadline = Instant::now() + self.settings.handover_wait;
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            match self.settings.lock.try_acquire_cast() {
                Ok(guard) => return Ok(guard),
                Err(e) if Instant::now() >= deadline => return Err(e.to_string()),
                Err(_) => {}
            }
        }
    }

    fn spawn_audio(&mut self, guard: DeviceGuard) {
        let (tx, rx) = std_mpsc::channel();
        self.audio_thread += 1;
        let thread = AudioThread {
            id: self.audio_thread,
            output: (self.settings.output)(),
            guard: Some(guard),
            rx,
            events: self.audio_events_tx.clone(),
            gain: self.settings.mixer.get_soft_volume(),
            position: self.position.clone(),
            underruns: self.underruns.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("jellyfin-cast".into())
            .spawn(move || thread.run());
        match spawned {
            Ok(_) => self.audio = Some(tx),
            // The guard went with the closure and was dropped: the device is free again.
            Err(e) => warn!("cast: cannot start the audio thread: {e}"),
        }
    }

    /// The queue ran out (or everything failed): play out, close the device.
    fn finish(&mut self) {
        self.now = None;
        if let Some(audio) = self.audio.take() {
            let _ = audio.send(ToAudio::Close { drain: true });
        }
        self.active.send_replace(false);
    }

    /// Stop: report, forget the queue, close the device at once.
    async fn stop(&mut self, failed: bool) {
        self.end_current_as(failed, true).await;
        self.queue.clear();
        if let Some(audio) = self.audio.take() {
            let _ = audio.send(ToAudio::Close { drain: false });
        }
        self.active.send_replace(false);
    }

    async fn on_audio(&mut self, event: FromAudio) {
        let current = self.now.as_ref().map(|n| n.generation);
        match event {
            FromAudio::Started {
                generation,
                at,
                duration,
            } if current == Some(generation) => {
                let Some(now) = self.now.as_mut() else { return };
                now.started = true;
                now.duration = duration;
                let latency = at.saturating_duration_since(now.requested_at);
                info!(
                    "cast: playing item {} ({} ms from the command to the first frame)",
                    now.item.id,
                    latency.as_millis()
                );
                let underruns = self.underruns.load(Ordering::SeqCst);
                self.stat(|s| {
                    s.start_latencies.push(latency);
                    s.underruns = underruns;
                });
                if let Some(now) = &self.now {
                    let report = report::playing(report::PLAYING, &self.state(now));
                    self.queue_on_server = true;
                    *self
                        .last_progress
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                    self.send_report(report).await;
                }
            }
            FromAudio::Seeked { generation } if current == Some(generation) => {
                self.report_progress();
            }
            FromAudio::Ended { generation } if current == Some(generation) => {
                let underruns = self.underruns.load(Ordering::SeqCst);
                self.stat(|s| s.underruns = underruns);
                let next = self.queue.on_track_end().is_some();
                self.end_current_as(false, !next).await;
                if next {
                    self.start_current(0, Instant::now()).await;
                } else {
                    self.finish();
                }
            }
            FromAudio::Failed { generation, why } if current == Some(generation) => {
                let next = self.queue.skip().is_some();
                if let Some(now) = self.now.take() {
                    self.item_failed(&now, &why, !next).await;
                }
                if next {
                    self.start_current(0, Instant::now()).await;
                } else {
                    self.finish();
                }
            }
            FromAudio::Released { thread, .. } if thread != self.audio_thread => {
                debug!("cast: an earlier audio thread finished");
            }
            FromAudio::Released {
                preempted, error, ..
            } => {
                let underruns = self.underruns.load(Ordering::SeqCst);
                self.stat(|s| s.underruns = underruns);
                if preempted {
                    info!("cast: Spotify took the speaker; the cast stops");
                    self.stat(|s| s.preempted += 1);
                }
                if let Some(e) = &error {
                    warn!("cast: audio device failed: {e}");
                    if let Some(now) = &self.now {
                        self.last_failed = Some(FailedItem {
                            item_id: now.item.id.clone(),
                            reason: format!("audio device: {e}"),
                        });
                    }
                }
                // The thread is gone: only a new Play opens the device again. If we had not
                // told it to close (a preemption, a device failure), the cast ends here.
                let unasked = self.audio.take().is_some();
                if unasked || preempted || error.is_some() {
                    self.end_current_as(error.is_some(), true).await;
                    self.queue.clear();
                    self.active.send_replace(false);
                }
            }
            stale => debug!("cast: stale audio event {stale:?}"),
        }
    }
}

/// The thread that owns the PCM while a cast plays.
struct AudioThread {
    id: u64,
    output: Box<dyn PcmOutput>,
    guard: Option<DeviceGuard>,
    rx: std_mpsc::Receiver<ToAudio>,
    events: mpsc::UnboundedSender<FromAudio>,
    gain: Box<dyn VolumeGetter + Send>,
    position: Arc<AtomicU64>,
    underruns: Arc<AtomicU64>,
}

struct Track {
    generation: u64,
    decoder: TrackDecoder,
    /// Position of the first frame written since the last load/seek.
    base: Duration,
    frames: u64,
    started: bool,
    /// The item's length (the stream's, plus where it started for a transcode started late).
    duration: Option<Duration>,
}

impl Track {
    fn heard_ms(&self, delay_frames: u64) -> u64 {
        let frames = self.frames.saturating_sub(delay_frames);
        self.base.as_millis() as u64 + frames * 1000 / u64::from(self.decoder.format.rate.max(1))
    }
}

impl AudioThread {
    fn run(mut self) {
        let mut track: Option<Track> = None;
        let mut paused = false;
        loop {
            if self.guard.as_ref().is_some_and(DeviceGuard::preempted) {
                return self.release(true, None, false);
            }
            let playing = track.is_some() && !paused;
            let message = if playing {
                match self.rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(std_mpsc::TryRecvError::Empty) => None,
                    Err(std_mpsc::TryRecvError::Disconnected) => {
                        return self.release(false, None, false)
                    }
                }
            } else {
                // Idle or paused: wake now and then to notice a preemption.
                match self.rx.recv_timeout(Duration::from_millis(20)) {
                    Ok(m) => Some(m),
                    Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                        return self.release(false, None, false)
                    }
                }
            };
            match message {
                Some(ToAudio::Load {
                    generation,
                    source,
                    seek_to,
                    base,
                }) => {
                    track = None;
                    paused = false;
                    match self.load(generation, source, seek_to, base) {
                        Ok(t) => track = Some(t),
                        Err(Some(device_error)) => {
                            return self.release(false, Some(device_error), false)
                        }
                        Err(None) => {}
                    }
                }
                Some(ToAudio::Pause) => {
                    paused = true;
                    if let Some(t) = track.as_mut() {
                        // Drop what is buffered and go back to what was heard, so the pause
                        // is immediate and nothing is skipped on resume.
                        let heard = t.heard_ms(self.output.delay_frames());
                        self.output.discard();
                        if let Ok(at) = t.decoder.seek(Duration::from_millis(heard)) {
                            t.base = at;
                            t.frames = 0;
                        }
                        self.position.store(t.heard_ms(0), Ordering::SeqCst);
                    }
                }
                Some(ToAudio::Resume) => paused = false,
                Some(ToAudio::Seek { generation, to }) => {
                    if let Some(t) = track.as_mut().filter(|t| t.generation == generation) {
                        self.output.discard();
                        match t.decoder.seek(to) {
                            Ok(at) => {
                                t.base = at;
                                t.frames = 0;
                                self.position.store(t.heard_ms(0), Ordering::SeqCst);
                                let _ = self.events.send(FromAudio::Seeked { generation });
                            }
                            Err(e) => {
                                let _ = self.events.send(FromAudio::Failed {
                                    generation,
                                    why: e.to_string(),
                                });
                                track = None;
                            }
                        }
                    }
                }
                Some(ToAudio::Close { drain }) => return self.release(false, None, drain),
                None => {}
            }
            if paused {
                continue;
            }
            let Some(t) = track.as_mut() else { continue };
            let gain = self.gain.attenuation_factor() as f32;
            let channels = u64::from(t.decoder.format.channels.max(1));
            match t.decoder.next_chunk(gain) {
                Ok(Some(samples)) => {
                    let frames = samples.len() as u64 / channels;
                    if let Err(e) = self.output.write(samples) {
                        return self.release(false, Some(e), false);
                    }
                    t.frames += frames;
                    if !t.started {
                        t.started = true;
                        let _ = self.events.send(FromAudio::Started {
                            generation: t.generation,
                            at: Instant::now(),
                            duration: t.duration,
                        });
                    }
                    let delay = self.output.delay_frames();
                    self.position.store(t.heard_ms(delay), Ordering::SeqCst);
                    self.underruns
                        .store(self.output.underruns(), Ordering::SeqCst);
                }
                Ok(None) => {
                    // All of it is with the device, which plays the rest out on its own (or
                    // while the next item starts): report the item as played to its end, so
                    // Jellyfin marks it played even when it is only a few seconds long.
                    self.position.store(t.heard_ms(0), Ordering::SeqCst);
                    let generation = t.generation;
                    track = None;
                    let _ = self.events.send(FromAudio::Ended { generation });
                }
                Err(e) => {
                    let generation = t.generation;
                    track = None;
                    let _ = self.events.send(FromAudio::Failed {
                        generation,
                        why: e.to_string(),
                    });
                }
            }
        }
    }

    /// Opens a track: `Err(None)` if it cannot be decoded (reported), `Err(Some)` if the device
    /// failed.
    fn load(
        &mut self,
        generation: u64,
        source: Box<dyn MediaSource>,
        seek_to: Option<Duration>,
        base: Duration,
    ) -> Result<Track, Option<String>> {
        let mut decoder = match TrackDecoder::open(source, None) {
            Ok(d) => d,
            Err(e) => {
                let _ = self.events.send(FromAudio::Failed {
                    generation,
                    why: e.to_string(),
                });
                return Err(None);
            }
        };
        // A transcode started at StartTimeTicks is the rest of the item: add where it starts.
        let duration = decoder.duration().map(|d| d + base);
        let mut base = base;
        if let Some(to) = seek_to {
            match decoder.seek(to) {
                Ok(at) => base = at,
                Err(e) => warn!(
                    "cast: cannot start at {} ms ({e}); starting at 0",
                    to.as_millis()
                ),
            }
        }
        self.output.discard();
        self.output.open(decoder.format)?;
        Ok(Track {
            generation,
            decoder,
            base,
            frames: 0,
            started: false,
            duration,
        })
    }

    fn release(mut self, preempted: bool, error: Option<String>, drain: bool) {
        if drain && error.is_none() {
            self.output.drain();
        } else {
            self.output.discard();
        }
        self.output.close();
        self.underruns
            .store(self.output.underruns(), Ordering::SeqCst);
        // The PCM is closed: now the device may go to Spotify.
        drop(self.guard.take());
        let _ = self.events.send(FromAudio::Released {
            thread: self.id,
            preempted,
            error,
        });
    }
}
