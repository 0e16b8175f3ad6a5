//! The Jellyfin cast target end to end: the strict fake server streams audio files this test
//! generates with sox (a stereo sine sweep, encoded to FLAC, MP3 and Ogg Vorbis) and ffmpeg (the
//! same sweep as AAC in .m4a and as Opus, which sox cannot encode), the sidecar plays them
//! through the real stream/decode/player code into a capture output, and the test checks what
//! came out against the source samples.
//!
//! sox (with libsox-fmt-mp3 for MP3) and ffmpeg are required: `scripts/test.sh` installs them,
//! and the tests fail with a clear message without them rather than skip, so CI cannot silently
//! lose them.
//!
//! Time is real (real sockets, real threads). Most tests run the capture unpaced (as fast as the
//! decoder goes); the stall, latency and handover tests pace it at real time, as a sound card.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;

use librespot_playback::audio_backend::{Sink, SinkResult};
use librespot_playback::convert::Converter;
use librespot_playback::decoder::AudioPacket;
use librespot_playback::mixer::{Mixer, MixerConfig};
use pispeaker::audio::{
    AudioDeviceLock, CaptureOutput, Captured, LockedSink, OutputFactory, PcmFormat, PcmOutput,
    StreamSettings,
};
use pispeaker::connect::control::{self, Command, PlaybackEvent, SpeakerStatus, TrackInfo};
use pispeaker::jellyfin::cast::{CastSettings, CastStatusCell};
use pispeaker::jellyfin::{self, JellyfinSettings, JellyfinState, Liveness};
use serde_json::Value;
use support::fake_jellyfin::{FakeJellyfin, Media, Served, ServerVersion};
use support::signal::ncc;
use support::wait::until;
use tokio::sync::watch;

const RATE: usize = 44_100;
const SECONDS: usize = 3;

// ---------------------------------------------------------------------------------------------
// Audio fixtures

fn sox(args: &[&str]) {
    let status = std::process::Command::new("sox").args(args).status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("sox {args:?} failed ({s}); MP3 needs libsox-fmt-mp3 (scripts/test.sh installs it)"),
        Err(e) => panic!("sox is needed for the cast tests ({e}): apt-get install sox libsox-fmt-mp3, or run scripts/test.sh"),
    }
}

/// The source: 16-bit stereo, a different log sweep per channel (so swapped channels, a wrong
/// rate or a lost block show up), and its encodings.
struct Fixture {
    dir: tempfile::TempDir,
    reference: Vec<i16>,
    files: HashMap<&'static str, Vec<u8>>,
}

fn fixture(seconds: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_string_lossy().to_string();
    let secs = seconds.to_string();
    sox(&[
        "-n",
        "-r",
        "44100",
        "-c",
        "2",
        "-b",
        "16",
        &p("src.wav"),
        "synth",
        &secs,
        "sine",
        "200:4000",
        "sine",
        "300:6000",
        "gain",
        "-6",
    ]);
    sox(&[
        &p("src.wav"),
        "-t",
        "raw",
        "-e",
        "signed-integer",
        "-b",
        "16",
        "-L",
        &p("src.raw"),
    ]);
    sox(&[&p("src.wav"), &p("src.flac")]);
    sox(&[&p("src.wav"), "-C", "192", &p("src.mp3")]);
    sox(&[&p("src.wav"), "-C", "6", &p("src.ogg")]);
    let raw = std::fs::read(p("src.raw")).unwrap();
    let reference = raw
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let mut files = HashMap::new();
    for ext in ["wav", "flac", "mp3", "ogg"] {
        files.insert(ext, std::fs::read(p(&format!("src.{ext}"))).unwrap());
    }
    Fixture {
        dir,
        reference,
        files,
    }
}

fn ffmpeg(args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-v", "error", "-y"])
        .args(args)
        .output();
    match out {
        Ok(o) if o.status.success() => o.stdout,
        Ok(o) => panic!(
            "ffmpeg {args:?} failed ({}): {}; Debian's ffmpeg has the aac and libopus encoders (scripts/test.sh installs it)",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("ffmpeg is needed for the AAC/M4A and Opus cast tests ({e}): apt-get install --no-install-recommends ffmpeg, or run scripts/test.sh"),
    }
}

/// What sox cannot make, from the fixture's source: AAC-LC in MP4 (.m4a, 192 kbit/s, ffmpeg's
/// native encoder), Opus (128 kbit/s, libopus), and the FLAC a server's transcoder makes of that
/// Opus, written to a pipe as Jellyfin's progressive transcode is (so its header has no length).
/// Opus is always 48 kHz: `reference_48k` is the source resampled by sox, to compare it with.
/// `*_by_ffmpeg` are ffmpeg's own decodings, the reference decoder to hold symphonia's against.
struct Encoded {
    m4a: Vec<u8>,
    opus: Vec<u8>,
    opus_as_flac: Vec<u8>,
    reference_48k: Vec<i16>,
    m4a_by_ffmpeg: Vec<i16>,
    opus_as_flac_by_ffmpeg: Vec<i16>,
}

fn s16le(raw: &[u8]) -> Vec<i16> {
    raw.chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn encode_with_ffmpeg(fx: &Fixture) -> Encoded {
    let p = |name: &str| fx.dir.path().join(name).to_string_lossy().to_string();
    ffmpeg(&[
        "-i",
        &p("src.wav"),
        "-c:a",
        "aac",
        "-b:a",
        "192k",
        &p("src.m4a"),
    ]);
    ffmpeg(&[
        "-i",
        &p("src.wav"),
        "-c:a",
        "libopus",
        "-b:a",
        "128k",
        &p("src.opus"),
    ]);
    let opus_as_flac = ffmpeg(&["-i", &p("src.opus"), "-c:a", "flac", "-f", "flac", "pipe:1"]);
    std::fs::write(p("opus_as.flac"), &opus_as_flac).unwrap();
    let decode = |file: &str| {
        s16le(&ffmpeg(&[
            "-i",
            &p(file),
            "-f",
            "s16le",
            "-c:a",
            "pcm_s16le",
            "pipe:1",
        ]))
    };
    sox(&[
        &p("src.wav"),
        "-r",
        "48000",
        "-t",
        "raw",
        "-e",
        "signed-integer",
        "-b",
        "16",
        "-L",
        &p("src48.raw"),
    ]);
    Encoded {
        m4a: std::fs::read(p("src.m4a")).unwrap(),
        opus: std::fs::read(p("src.opus")).unwrap(),
        opus_as_flac,
        reference_48k: s16le(&std::fs::read(p("src48.raw")).unwrap()),
        m4a_by_ffmpeg: decode("src.m4a"),
        opus_as_flac_by_ffmpeg: decode("opus_as.flac"),
    }
}

/// A short tone, for queue-order tests: each item is recognisable by its frequency.
fn tone(dir: &Path, name: &str, hz: u32, seconds: f32) -> Vec<u8> {
    let path = dir.join(format!("{name}.flac"));
    let path = path.to_string_lossy();
    sox(&[
        "-n",
        "-r",
        "44100",
        "-c",
        "2",
        "-b",
        "16",
        &path,
        "synth",
        &seconds.to_string(),
        "sine",
        &hz.to_string(),
        "gain",
        "-6",
    ]);
    std::fs::read(path.as_ref()).unwrap()
}

fn media(bytes: &[u8], content_type: &str) -> Media {
    Media {
        bytes: bytes.to_vec(),
        content_type: content_type.into(),
        ..Media::default()
    }
}

fn guid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

// ---------------------------------------------------------------------------------------------
// Signal checks

/// Channel 0 as f64.
fn left(samples: &[i16]) -> Vec<f64> {
    samples.iter().step_by(2).map(|s| f64::from(*s)).collect()
}

/// Where in `reference` (frame offset within `search`) the window best matches, and how well.
fn locate(window: &[f64], reference: &[f64], search: std::ops::Range<usize>) -> (usize, f64) {
    let mut best = (search.start, f64::MIN);
    for at in search {
        if at + window.len() > reference.len() {
            break;
        }
        let c = ncc(window, &reference[at..at + window.len()]);
        if c > best.1 {
            best = (at, c);
        }
    }
    best
}

/// Plays `id` from the start, sends Seek to 2.0 s once it has played for `after`, lets it play
/// out, and finds the first 50 ms after the seek in `reference` (the source's left channel):
/// how far from 2.0 s it landed, in ms, and how well it matched.
async fn seek_to_2_s_mid_play(
    s: &Speaker,
    id: &str,
    after: Duration,
    reference: &[f64],
) -> (f64, f64) {
    s.play(&[id], "PlayNow", 0, 0);
    until(Duration::from_secs(3), "playing", || {
        !s.reports("/Sessions/Playing").is_empty()
    })
    .await;
    tokio::time::sleep(after).await;
    s.playstate("Seek", r#","SeekPositionTicks":20000000"#);
    s.wait_stopped(1, Duration::from_secs(5)).await;
    let segments = s.segments();
    assert!(segments.len() >= 2, "a split at the seek");
    let (_, played) = segments.last().unwrap();
    let window = &left(played)[..RATE / 20];
    let (at, corr) = locate(window, reference, RATE * 17 / 10..RATE * 23 / 10);
    ((at as f64 / RATE as f64 - 2.0) * 1000.0, corr)
}

/// Aligns `got` with `reference` (within ±2048 frames: decoder delay) and returns the
/// normalized cross-correlation over the whole overlap, both channels, and the lag in frames.
fn correlation(got: &[i16], reference: &[i16]) -> (f64, i64) {
    let (g, r) = (left(got), left(reference));
    let probe = RATE / 2;
    assert!(g.len() > probe + 4096, "only {} frames decoded", g.len());
    let (at, _) = locate(&g[probe..probe + 4096], &r, probe - 2048..probe + 2048);
    let lag = at as i64 - probe as i64;
    // Overlap, interleaved: got[i] ~ reference[i + lag].
    let (gs, rs) = if lag >= 0 {
        (0usize, lag as usize * 2)
    } else {
        ((-lag) as usize * 2, 0usize)
    };
    let n = (got.len() - gs).min(reference.len() - rs);
    let a: Vec<f64> = got[gs..gs + n].iter().map(|s| f64::from(*s)).collect();
    let b: Vec<f64> = reference[rs..rs + n]
        .iter()
        .map(|s| f64::from(*s))
        .collect();
    (ncc(&a, &b), lag)
}

/// The dominant frequency of a stretch, by zero crossings (for the tone items).
fn frequency(samples: &[i16]) -> f64 {
    let l = left(samples);
    let crossings = l.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
    crossings as f64 * RATE as f64 / l.len() as f64
}

// ---------------------------------------------------------------------------------------------
// The speaker under test

/// A hardware-like mixer: a number (the cast must use the same one as Spotify).
struct TestMixer(AtomicU16);
impl Mixer for TestMixer {
    fn open(_: MixerConfig) -> Result<Self, librespot_core::Error> {
        Ok(TestMixer(AtomicU16::new(30_000)))
    }
    fn volume(&self) -> u16 {
        self.0.load(Ordering::SeqCst)
    }
    fn set_volume(&self, volume: u16) {
        self.0.store(volume, Ordering::SeqCst)
    }
}

/// Counts how many of the speaker's sources have the device open at once.
#[derive(Default)]
struct OpenCounter {
    now: AtomicUsize,
    max: AtomicUsize,
}
impl OpenCounter {
    fn open(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
    }
    fn close(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The capture, counting its open/close in the shared counter.
struct CountedOutput {
    inner: CaptureOutput,
    counter: Arc<OpenCounter>,
    open: bool,
}
impl PcmOutput for CountedOutput {
    fn open(&mut self, format: PcmFormat) -> Result<(), String> {
        if !self.open {
            self.counter.open();
            self.open = true;
        }
        self.inner.open(format)
    }
    fn write(&mut self, samples: &[i16]) -> Result<(), String> {
        self.inner.write(samples)
    }
    fn discard(&mut self) {
        self.inner.discard()
    }
    fn drain(&mut self) {
        self.inner.drain()
    }
    fn close(&mut self) {
        if self.open {
            self.counter.close();
            self.open = false;
        }
        self.inner.close()
    }
    fn delay_frames(&mut self) -> u64 {
        self.inner.delay_frames()
    }
    fn underruns(&self) -> u64 {
        self.inner.underruns()
    }
}

/// Spotify's sink as librespot drives it: on its own thread, behind the same device lock.
struct ProbeSink(Arc<OpenCounter>);
impl Sink for ProbeSink {
    fn start(&mut self) -> SinkResult<()> {
        self.0.open();
        Ok(())
    }
    fn stop(&mut self) -> SinkResult<()> {
        self.0.close();
        Ok(())
    }
    fn write(&mut self, _: AudioPacket, _: &mut Converter) -> SinkResult<()> {
        Ok(())
    }
}

enum SpotifyOp {
    Start(std_mpsc::Sender<bool>),
    Stop,
}

/// A stand-in for librespot's player thread: start/stop its sink on request.
fn spotify_player(lock: AudioDeviceLock, counter: Arc<OpenCounter>) -> std_mpsc::Sender<SpotifyOp> {
    let (tx, rx) = std_mpsc::channel::<SpotifyOp>();
    std::thread::spawn(move || {
        let mut sink = LockedSink::new(Box::new(ProbeSink(counter)), lock);
        let mut running = false;
        while let Ok(op) = rx.recv() {
            match op {
                SpotifyOp::Start(done) => {
                    running = sink.start().is_ok();
                    let _ = done.send(running);
                }
                SpotifyOp::Stop => {
                    if running {
                        // librespot drains the ALSA buffer on stop.
                        std::thread::sleep(Duration::from_millis(100));
                        let _ = sink.stop();
                        running = false;
                    }
                }
            }
        }
    });
    tx
}

struct Speaker {
    fake: FakeJellyfin,
    captured: Arc<Mutex<Captured>>,
    counter: Arc<OpenCounter>,
    lock: AudioDeviceLock,
    mixer: Arc<TestMixer>,
    commands: Arc<Mutex<Vec<Command>>>,
    spotify: std_mpsc::Sender<SpotifyOp>,
    /// Spotify's playback events, as the supervisor publishes them.
    events: tokio::sync::broadcast::Sender<PlaybackEvent>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// The daemon's status page, serving this speaker's cast.
    status_url: String,
    _dir: tempfile::TempDir,
}

#[derive(Default)]
struct Options {
    version: ServerVersion,
    /// The token's user (a plain user, added to the server); None: the administrator.
    user: Option<&'static str>,
    paused_check_in: Option<Duration>,
    pace: Option<f64>,
    stream: StreamSettings,
}

async fn speaker(options: Options) -> Speaker {
    // RUST_LOG=debug shows the player's side when a test fails.
    let _ = env_logger::builder().is_test(true).try_init();
    let fake = FakeJellyfin::start_version("127.0.0.1:0", 1.0, options.version).await;
    match options.user {
        Some(user) => {
            fake.add_user(user, "child", false);
            fake.add_user_token("tok", user, "pispeaker", None);
        }
        None => fake.add_token("tok"),
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jellyfin_token"), "tok").unwrap();
    let captured = Arc::new(Mutex::new(Captured::default()));
    let counter = Arc::new(OpenCounter::default());
    let lock = AudioDeviceLock::new();
    let mixer = Arc::new(TestMixer::open(MixerConfig::default()).unwrap());
    let spotify = spotify_player(lock.clone(), counter.clone());
    let output: OutputFactory = {
        let (captured, counter, pace) = (captured.clone(), counter.clone(), options.pace);
        Arc::new(move || {
            Box::new(CountedOutput {
                inner: CaptureOutput::new(captured.clone(), pace),
                counter: counter.clone(),
                open: false,
            }) as Box<dyn PcmOutput>
        })
    };
    // The stand-in supervisor: records commands; a Pause stops the Spotify sink, as librespot does.
    let (handle, mut endpoint) = control::channel(SpeakerStatus::new("Living Room", 30000));
    let commands = Arc::new(Mutex::new(Vec::new()));
    let events = endpoint.events.clone();
    {
        let (commands, spotify) = (commands.clone(), spotify.clone());
        tokio::spawn(async move {
            while let Some((command, reply)) = endpoint.commands.recv().await {
                if command == Command::Pause {
                    let _ = spotify.send(SpotifyOp::Stop);
                }
                commands.lock().unwrap().push(command);
                let _ = reply.send(Ok(()));
            }
        });
    }
    let cast_status = CastStatusCell::new();
    let settings = JellyfinSettings {
        server: fake.url(),
        device_name: "Living Room".into(),
        state_dir: dir.path().to_path_buf(),
        token_file: None,
        request_timeout: Duration::from_secs(2),
        liveness: Liveness {
            ping_every: Duration::from_millis(500),
            dead_after: Duration::from_secs(5),
            capabilities_every: Duration::from_secs(60),
            bound_within: Duration::from_secs(10),
        },
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(1),
        quick_connect_poll: Duration::from_millis(100),
        progress_every: Duration::from_secs(10),
        paused_check_in: jellyfin::PAUSED_CHECK_IN,
        mixer_changed: Default::default(),
        cast: Some(CastSettings {
            output,
            mixer: mixer.clone(),
            lock: lock.clone(),
            stream: options.stream,
            handover_wait: Duration::from_secs(3),
            progress_every: Duration::from_millis(500),
            paused_check_in: options.paused_check_in.unwrap_or(jellyfin::PAUSED_CHECK_IN),
            status: cast_status.clone(),
        }),
    };
    let (state_tx, state_rx) = watch::channel(JellyfinState::Disabled);
    let (shutdown, shutdown_rx) = watch::channel(false);
    // The status page as the daemon wires it: the same cell the player publishes into.
    let listener = pispeaker::status::bind("127.0.0.1:0").await.unwrap();
    let status_url = format!("http://{}/status.json", listener.local_addr().unwrap());
    tokio::spawn(pispeaker::status::serve_with_boot_config(
        listener,
        handle.clone(),
        state_rx,
        Some(cast_status),
        None,
        shutdown_rx.clone(),
    ));
    let task = tokio::spawn(jellyfin::run_with(settings, handle, state_tx, shutdown_rx));
    let s = Speaker {
        fake,
        captured,
        counter,
        lock,
        mixer,
        commands,
        spotify,
        events,
        shutdown,
        task,
        status_url,
        _dir: dir,
    };
    until(
        Duration::from_secs(3),
        "connected with cast capabilities",
        || {
            let seen = s.fake.seen.lock().unwrap();
            seen.sessions.values().any(|r| {
                r.socket_open
                    && r.capabilities.as_ref().is_some_and(|c| {
                        c["SupportedCommands"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|v| v == "PlayMediaSource"))
                    })
            })
        },
    )
    .await;
    s
}

impl Speaker {
    fn play(&self, ids: &[&str], command: &str, start_index: usize, start_ticks: u64) {
        let ids: Vec<String> = ids.iter().map(|s| format!("\"{s}\"")).collect();
        self.fake.push(&format!(
            r#"{{"MessageType":"Play","Data":{{"ItemIds":[{}],"PlayCommand":"{command}","StartIndex":{start_index},"StartPositionTicks":{start_ticks},"ControllingUserId":"0f0e0d0c0b0a09080706050403020100"}}}}"#,
            ids.join(",")
        ));
    }

    fn playstate(&self, command: &str, extra: &str) {
        self.fake.push(&format!(
            r#"{{"MessageType":"Playstate","Data":{{"Command":"{command}"{extra}}}}}"#
        ));
    }

    fn general(&self, name: &str, args: &str) {
        self.fake.push(&format!(
            r#"{{"MessageType":"GeneralCommand","Data":{{"Name":"{name}","Arguments":{{{args}}}}}}}"#
        ));
    }

    fn reports(&self, path: &str) -> Vec<Value> {
        self.fake
            .reports()
            .into_iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b)
            .collect()
    }

    fn segments(&self) -> Vec<(PcmFormat, Vec<i16>)> {
        self.captured.lock().unwrap().segments.clone()
    }

    async fn wait_stopped(&self, count: usize, limit: Duration) {
        until(limit, &format!("{count} Stopped reports"), || {
            self.reports("/Sessions/Playing/Stopped").len() >= count
        })
        .await;
    }

    /// `/status.json`'s `jellyfin.cast`, polled until `cond` holds (the player publishes after
    /// each command it handled, so a just-sent command may not show yet).
    async fn cast_status(&self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let start = std::time::Instant::now();
        loop {
            let status: Value = reqwest::get(&self.status_url)
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let cast = &status["jellyfin"]["cast"];
            if cond(cast) {
                return cast.clone();
            }
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "status page never showed {what}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.send_replace(true);
        tokio::time::timeout(Duration::from_secs(8), self.task)
            .await
            .expect("sidecar stops on shutdown")
            .unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

async fn flac_mp3_ogg_and_wav_decode_to_the_source_with_the_right_length(version: ServerVersion) {
    let fx = fixture(SECONDS);
    let s = speaker(Options {
        version,
        ..Options::default()
    })
    .await;
    let ids: Vec<String> = (0..4).map(|_| guid()).collect();
    for (id, (ext, mime)) in ids.iter().zip([
        ("flac", "audio/flac"),
        ("mp3", "audio/mpeg"),
        ("ogg", "audio/ogg"),
        ("wav", "audio/wav"),
    ]) {
        s.fake.add_media(id, media(&fx.files[ext], mime));
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    s.play(&refs, "PlayNow", 0, 0);
    s.wait_stopped(4, Duration::from_secs(15)).await;
    let segments = s.segments();
    assert_eq!(segments.len(), 4, "one segment per item");
    let expected_frames = SECONDS * RATE;
    // Thresholds. FLAC is lossless: the samples must be identical, which is stronger than any
    // correlation; the same for WAV (PCM). MP3 (192 kbit/s) and Vorbis (q6) are lossy: on a clean sweep their coding
    // noise is ~30 dB down, i.e. a correlation around 0.999; 0.98 leaves room for other encoder
    // versions yet fails for swapped channels (the channels sweep differently: ~0), a wrong
    // sample rate, a dropped or repeated packet (the sweep decorrelates within a few samples
    // of misalignment) or a wrong gain; the correlation is taken after aligning the lag.
    // Lag and length: sox's libmp3lame output has no Xing/LAME gapless tag, so nothing can know
    // the encoder delay: the decoded MP3 starts with 576 (encoder) + 529 (decoder) = 1105 frames
    // of lead-in and is padded to whole 1152-sample frames; allow that lead-in (±64) and one
    // MP3 frame (26 ms) of length. (With a tagged file symphonia's gapless trimming removes
    // both.) Ogg's granule positions trim exactly: no lag, 10 ms of length.
    for ((format, samples), (ext, min_corr, tolerance_ms)) in segments.iter().zip([
        ("flac", 1.0, 0.0),
        ("mp3", 0.98, 26.2),
        ("ogg", 0.98, 10.0),
        ("wav", 1.0, 0.0),
    ]) {
        assert_eq!(
            *format,
            PcmFormat {
                rate: 44_100,
                channels: 2
            },
            "{ext}"
        );
        let frames = samples.len() / 2;
        let off_ms = (frames as f64 - expected_frames as f64).abs() * 1000.0 / RATE as f64;
        let (corr, lag) = correlation(samples, &fx.reference);
        println!("{ext}: {frames} frames ({off_ms:.1} ms off), correlation {corr:.5} at lag {lag}");
        assert!(
            off_ms <= tolerance_ms,
            "{ext}: {frames} frames, {off_ms:.1} ms off"
        );
        if ext == "flac" || ext == "wav" {
            assert!(samples == &fx.reference, "{ext} must be bit-exact");
        } else {
            assert!(corr >= min_corr, "{ext}: correlation {corr}");
            let lead_in = if ext == "mp3" { -1105 } else { 0 };
            assert!(
                (lag - lead_in).abs() <= 64,
                "{ext}: lag {lag}, expected {lead_in}"
            );
        }
    }
    // Reports: Playing then Stopped per item, with the real item ids; the token only ever in
    // the Authorization header.
    let playing = s.reports("/Sessions/Playing");
    let stopped = s.reports("/Sessions/Playing/Stopped");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(playing[i]["ItemId"], id.as_str());
        assert_eq!(stopped[i]["ItemId"], id.as_str());
        assert_eq!(stopped[i]["Failed"], false);
        assert_eq!(stopped[i]["PlaySessionId"], playing[i]["PlaySessionId"]);
        assert_eq!(playing[i]["PlayMethod"], "DirectPlay");
    }
    let requests = s.fake.audio_requests();
    assert!(requests.len() >= 3);
    for r in &requests {
        assert!(!r.query.to_lowercase().contains("api_key"), "{}", r.query);
        assert!(!r.query.contains("tok"), "token in the URL: {}", r.query);
        assert!(r
            .authorization
            .as_deref()
            .unwrap()
            .contains("Token=\"tok\""));
        assert!(r.query.contains("Container=flac%2Cmp3"), "{}", r.query);
        assert!(r.query.contains("UserId=0f0e0d0c0b0a09080706050403020100"));
    }
    {
        let seen = s.fake.seen.lock().unwrap();
        assert!(seen.bad_requests.is_empty(), "{:?}", seen.bad_requests);
        assert_eq!(seen.legacy_auth_refused, 0);
    }
    until(
        Duration::from_secs(2),
        "the device closed after the queue",
        || !s.captured.lock().unwrap().open && s.lock.holder().is_none(),
    )
    .await;
    s.stop().await;
}

/// Level difference in dB between two signals (RMS over both channels). The correlation is
/// blind to gain, so this is what catches a decoder scaling its output.
fn level_db(got: &[i16], reference: &[i16]) -> f64 {
    let rms = |v: &[i16]| {
        (v.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt()
    };
    20.0 * (rms(got) / rms(reference)).log10()
}

/// The largest sample difference between two decodings of the same file.
fn max_lsb_apart(a: &[i16], b: &[i16]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (i32::from(*x) - i32::from(*y)).abs())
        .max()
        .unwrap_or(0)
}

#[test]
fn the_fake_server_chooses_original_or_transcode_from_the_speakers_own_request() {
    // The speaker's real request, so the fake's decision is tested against what it sends.
    let identity = jellyfin::Identity {
        device: "Living Room".into(),
        device_id: "d".into(),
        version: "0".into(),
    };
    let api = jellyfin::Api::new("http://jf:8096", identity, Duration::from_secs(1)).unwrap();
    let url = api.universal_audio_url(&guid(), None, "m", 0).unwrap();
    let query = url.query().unwrap();
    use support::fake_jellyfin::direct_play_allowed as direct;
    for (container, codec) in [
        ("flac", "flac"),
        ("mp3", "mp3"),
        ("mov,mp4,m4a,3gp,3g2,mj2", "aac"),
        ("m4a", "aac"),
        ("ogg", "vorbis"),
        ("wav", "pcm_s16le"),
    ] {
        assert!(direct(query, container, Some(codec)), "{container}|{codec}");
    }
    // symphonia has no Opus decoder; ALAC in .m4a is not AAC; WMA is not decoded either.
    for (container, codec) in [
        ("ogg", "opus"),
        ("opus", "opus"),
        ("mov,mp4,m4a,3gp,3g2,mj2", "alac"),
        ("asf", "wmav2"),
    ] {
        assert!(
            !direct(query, container, Some(codec)),
            "{container}|{codec}"
        );
    }
    assert!(
        !direct("UserId=u", "flac", Some("flac")),
        "no Container: transcode"
    );
}

async fn m4a_plays_as_the_original_and_opus_as_the_servers_flac_transcode(version: ServerVersion) {
    let fx = fixture(SECONDS);
    let enc = encode_with_ffmpeg(&fx);
    let s = speaker(Options {
        version,
        ..Options::default()
    })
    .await;
    let (m4a, opus) = (guid(), guid());
    // Each original comes with a transcode, so only the speaker's request decides which one
    // is sent. The containers are what ffprobe names them (the server stores that).
    let m4a_media = Media {
        container: Some("mov,mp4,m4a,3gp,3g2,mj2".into()),
        codec: Some("aac".into()),
        transcode: Some(Box::new(media(&fx.files["flac"], "audio/flac"))),
        ..media(&enc.m4a, "audio/mp4")
    };
    s.fake.add_media(&m4a, m4a_media.clone());
    s.fake.add_media(
        &opus,
        Media {
            container: Some("ogg".into()),
            codec: Some("opus".into()),
            transcode: Some(Box::new(media(&enc.opus_as_flac, "audio/flac"))),
            ..media(&enc.opus, "audio/ogg")
        },
    );
    s.play(&[&m4a, &opus], "PlayNow", 0, 0);
    s.wait_stopped(2, Duration::from_secs(15)).await;
    let served = |id: &str| -> Vec<Served> {
        s.fake
            .audio_requests()
            .iter()
            .filter(|r| r.item_id == id)
            .map(|r| r.served)
            .collect()
    };
    assert_eq!(served(&m4a), [Served::Original], "AAC is decoded here");
    assert_eq!(served(&opus), [Served::Transcode], "Opus is not: FLAC");
    let playing = s.reports("/Sessions/Playing");
    assert_eq!(playing[0]["PlayMethod"], "DirectPlay");
    // A server transcode, reported as the server will keep it (see report.rs).
    assert_eq!(playing[1]["PlayMethod"], "DirectStream");
    assert!(s
        .reports("/Sessions/Playing/Stopped")
        .iter()
        .all(|r| r["Failed"] == false));
    let segments = s.segments();
    assert_eq!(segments.len(), 2, "one segment per item");

    // M4A. Length: ffmpeg's AAC encoder starts with 1024 frames of priming and pads the end to
    // a whole 1024-frame AAC frame; it records both in the MP4 edit list, which symphonia 0.5
    // does not apply. So the output is lead-in (1024 frames, or 0 should a later symphonia apply
    // the list) + the source + padding shorter than one AAC frame (23.2 ms): that is exactly
    // what is asserted, with the lead-in measured as the lag (±64 frames, as for MP3).
    // Correlation: the same 0.98 as MP3. AAC-LC at 192 kbit/s codes a clean sweep with its noise
    // ~30-35 dB down: measured 0.9990-0.9997 (the encoder's choices change with sox's random
    // dither in the source, mostly in the last quarter second), so 0.98 leaves room for other
    // encoder versions yet fails for swapped channels (the channels sweep differently: ~0), a
    // wrong sample rate, or a dropped or repeated AAC frame (the sweep decorrelates within a few
    // samples of misalignment). The correlation is blind to gain: the level is checked apart.
    // And against ffmpeg's own AAC decoder (which applies the edit list, so without the
    // lead-in): within 2 LSB (measured 1: float-to-16-bit rounding), which no encoder noise
    // excuses.
    let (format, samples) = &segments[0];
    assert_eq!(
        *format,
        PcmFormat {
            rate: 44_100,
            channels: 2
        }
    );
    let frames = samples.len() / 2;
    let (corr, lag) = correlation(samples, &fx.reference);
    let level = level_db(samples, &fx.reference);
    let lead_in = -lag;
    let padding = frames as i64 - lead_in - (SECONDS * RATE) as i64;
    println!(
        "m4a: {frames} frames = {lead_in} lead-in + source + {padding} padding, correlation {corr:.5}, level {level:+.2} dB"
    );
    assert!(
        (lead_in - 1024).abs() <= 64 || lead_in.abs() <= 64,
        "m4a: lag {lag}"
    );
    assert!(
        (0..1024).contains(&padding),
        "m4a: {frames} frames: {padding} frames of padding"
    );
    assert!(corr >= 0.98, "m4a: correlation {corr}");
    assert!(level.abs() < 0.5, "m4a: level {level} dB");
    let ours = &samples[(lead_in.max(0) as usize * 2).min(samples.len())..];
    let n = ours.len().min(enc.m4a_by_ffmpeg.len());
    assert!(n >= fx.reference.len(), "m4a: {n} samples to compare");
    let max_diff = max_lsb_apart(&ours[..n], &enc.m4a_by_ffmpeg[..n]);
    println!("m4a: symphonia vs ffmpeg's decoder: at most {max_diff} LSB apart");
    assert!(max_diff <= 2, "m4a: {max_diff} LSB from ffmpeg's decoding");

    // The Opus transcode: 48 kHz (Opus always is, and the server's FLAC keeps it), compared with
    // the source resampled by sox. The original's pre-skip and end trimming were applied by the
    // transcoder, so the length is exact but for the resamplers (±10 ms) and there is no lead-in
    // (±64 frames). Correlation: 0.98 as above; Opus at 128 kbit/s measured ~0.9997. The FLAC
    // itself is lossless, so what played must be ffmpeg's decoding of it, to the LSB: it is
    // 24-bit (ffmpeg keeps the Opus decoder's float precision, as a server's transcode would),
    // which the speaker rounds to 16 bits and ffmpeg truncates, hence 1 LSB.
    let (format, samples) = &segments[1];
    assert_eq!(
        *format,
        PcmFormat {
            rate: 48_000,
            channels: 2
        }
    );
    let frames = samples.len() / 2;
    let (corr, lag) = correlation(samples, &enc.reference_48k);
    let level = level_db(samples, &enc.reference_48k);
    let off_ms = (frames as f64 - (SECONDS * 48_000) as f64).abs() / 48.0;
    println!(
        "opus as FLAC transcode: {frames} frames ({off_ms:.1} ms off), correlation {corr:.5} at lag {lag}, level {level:+.2} dB"
    );
    assert!(off_ms <= 10.0, "opus: {frames} frames");
    assert!(lag.abs() <= 64, "opus: lag {lag}");
    assert!(corr >= 0.98, "opus: correlation {corr}");
    assert!(level.abs() < 0.5, "opus: level {level} dB");
    assert_eq!(samples.len(), enc.opus_as_flac_by_ffmpeg.len());
    let max_diff = max_lsb_apart(samples, &enc.opus_as_flac_by_ffmpeg);
    println!("opus as FLAC transcode vs ffmpeg's decoding: at most {max_diff} LSB apart");
    assert!(max_diff <= 1, "opus: {max_diff} LSB from ffmpeg's decoding");

    // A seek in the M4A: StartPositionTicks = 1.5 s (the decoder seeks through Range requests
    // into the file; the player then asks nothing of the server's transcoder).
    s.play(&[&m4a], "PlayNow", 0, 15_000_000);
    s.wait_stopped(3, Duration::from_secs(10)).await;
    assert!(served(&m4a).iter().all(|x| *x == Served::Original));
    let segments = s.segments();
    let (_, after) = segments.last().unwrap();
    let reference = left(&fx.reference);
    let window = &left(after)[..RATE / 20];
    let (at, corr) = locate(window, &reference, RATE * 12 / 10..RATE * 18 / 10);
    let off_ms = (at as f64 / RATE as f64 - 1.5) * 1000.0;
    println!("m4a: start at 1.5 s landed {off_ms:+.1} ms off (correlation {corr:.4})");
    assert!(corr > 0.95, "m4a: the start is not in the source ({corr})");
    assert!(off_ms.abs() < 100.0, "m4a: {off_ms} ms off");
    // Tighter, to catch a seek landing a block late: exact but for the lead-in measured above
    // (the file's timestamps count the priming, so the seek lands that much early).
    let lead_in_ms = lead_in as f64 * 1000.0 / RATE as f64;
    assert!(
        (off_ms + lead_in_ms).abs() < 5.0,
        "m4a: {off_ms} ms off, lead-in {lead_in_ms} ms"
    );
    s.stop().await;

    // And a Seek command while it plays (paced at twice real time, so there is time to seek).
    let s = speaker(Options {
        version,
        pace: Some(2.0),
        ..Options::default()
    })
    .await;
    let id = guid();
    s.fake.add_media(&id, m4a_media);
    let (off_ms, corr) =
        seek_to_2_s_mid_play(&s, &id, Duration::from_millis(150), &reference).await;
    println!("m4a: Seek to 2.0 s landed {off_ms:+.1} ms off (correlation {corr:.4})");
    assert!(corr > 0.95 && off_ms.abs() < 100.0, "{off_ms} ms, {corr}");
    assert!((off_ms + lead_in_ms).abs() < 5.0, "m4a: {off_ms} ms off");
    assert!(s.fake.seen.lock().unwrap().bad_requests.is_empty());
    s.stop().await;
}

async fn start_position_and_seek_land_within_100_ms(version: ServerVersion) {
    let fx = fixture(SECONDS);
    let reference = left(&fx.reference);
    let s = speaker(Options {
        version,
        ..Options::default()
    })
    .await;
    // StartPositionTicks = 1.5 s, for each format (decoder-side accurate seek over HTTP ranges).
    let ids: Vec<String> = (0..3).map(|_| guid()).collect();
    for (id, ext) in ids.iter().zip(["flac", "mp3", "ogg"]) {
        s.fake.add_media(id, media(&fx.files[ext], "audio/x"));
    }
    for (n, (id, ext)) in ids.iter().zip(["flac", "mp3", "ogg"]).enumerate() {
        s.play(&[id], "PlayNow", 0, 15_000_000);
        s.wait_stopped(n + 1, Duration::from_secs(10)).await;
        let segments = s.segments();
        let (_, samples) = segments.last().unwrap();
        // Where do the first 50 ms come from? Search the source from 1.2 s to 1.8 s.
        let window = &left(samples)[..RATE / 20];
        let (at, corr) = locate(window, &reference, RATE * 12 / 10..RATE * 18 / 10);
        let off_ms = (at as f64 / RATE as f64 - 1.5) * 1000.0;
        println!("{ext}: start at 1.5 s landed {off_ms:+.1} ms off (correlation {corr:.4})");
        assert!(
            corr > 0.95,
            "{ext}: the start is not in the source ({corr})"
        );
        assert!(off_ms.abs() < 100.0, "{ext}: {off_ms} ms off");
        // Tighter than the requirement, to catch a decoder starting a block late after a seek:
        // exact but for the untagged MP3's 1105-frame lead-in (see the first test).
        let expected_ms = if ext == "mp3" {
            -1105.0 * 1000.0 / RATE as f64
        } else {
            0.0
        };
        assert!((off_ms - expected_ms).abs() < 5.0, "{ext}: {off_ms} ms off");
        let stopped = s.reports("/Sessions/Playing/Stopped");
        let ticks = stopped.last().unwrap()["PositionTicks"].as_u64().unwrap();
        assert!(
            (ticks as i64 - 30_000_000).abs() < 500_000,
            "ends at 3 s: {ticks}"
        );
    }
    s.stop().await;

    // A Seek command mid-play, paced at real time.
    let s = speaker(Options {
        version,
        pace: Some(1.0),
        ..Options::default()
    })
    .await;
    let id = guid();
    s.fake
        .add_media(&id, media(&fx.files["flac"], "audio/flac"));
    let (off_ms, corr) =
        seek_to_2_s_mid_play(&s, &id, Duration::from_millis(300), &reference).await;
    println!("Seek to 2.0 s landed {off_ms:+.1} ms off (correlation {corr:.4})");
    assert!(corr > 0.99 && off_ms.abs() < 100.0, "{off_ms} ms, {corr}");
    let progress = s.reports("/Sessions/Playing/Progress");
    assert!(
        progress.iter().any(|p| {
            let t = p["PositionTicks"].as_u64().unwrap_or(0);
            (20_000_000..21_000_000).contains(&t)
        }),
        "a progress report right after the seek: {progress:?}"
    );
    s.stop().await;
}

async fn play_next_and_play_last_order_the_queue_and_the_modes_are_reported(
    version: ServerVersion,
) {
    let dir = tempfile::tempdir().unwrap();
    let s = speaker(Options {
        version,
        pace: Some(2.0),
        ..Options::default()
    })
    .await;
    let tones = [("a", 300), ("b", 600), ("c", 900), ("d", 1200)];
    let mut ids = HashMap::new();
    for (name, hz) in tones {
        let id = guid();
        s.fake
            .add_media(&id, media(&tone(dir.path(), name, hz, 1.5), "audio/flac"));
        ids.insert(name, id);
    }
    s.play(&[&ids["a"], &ids["b"]], "PlayNow", 0, 0);
    until(Duration::from_secs(3), "a playing", || {
        !s.reports("/Sessions/Playing").is_empty()
    })
    .await;
    s.play(&[&ids["c"]], "PlayLast", 0, 0);
    s.play(&[&ids["d"]], "PlayNext", 0, 0);
    s.general("SetRepeatMode", r#""RepeatMode":"RepeatNone""#);
    s.general("SetShuffleQueue", r#""ShuffleMode":"Sorted""#);
    s.general("SetVolume", r#""Volume":"40""#);
    until(
        Duration::from_secs(3),
        "a progress report with 4 queued",
        || {
            s.reports("/Sessions/Playing/Progress").iter().any(|p| {
                p["NowPlayingQueue"]
                    .as_array()
                    .is_some_and(|q| q.len() == 4)
                    && p["VolumeLevel"] == 40
            })
        },
    )
    .await;
    let progress = s.reports("/Sessions/Playing/Progress");
    let last = progress.last().unwrap();
    let queue: Vec<&str> = last["NowPlayingQueue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Id"].as_str().unwrap())
        .collect();
    assert_eq!(queue, [&ids["a"], &ids["d"], &ids["b"], &ids["c"]]);
    assert_eq!(last["RepeatMode"], "RepeatNone");
    assert_eq!(last["PlaybackOrder"], "Default");
    assert_eq!(last["IsPaused"], false);
    assert!(last["PlaySessionId"]
        .as_str()
        .is_some_and(|p| !p.is_empty()));
    assert_eq!(s.mixer.volume(), 26214, "volume through the shared mixer");
    // The status page shows the same cast, read while it plays.
    let cast = s
        .cast_status("a playing, 4 queued", |c| {
            c["state"] == "playing" && c["queue_length"] == 4
        })
        .await;
    println!("status page while casting: {cast}");
    assert_eq!(cast["item_id"], ids["a"].as_str());
    assert_eq!(cast["queue_index"], 0);
    assert_eq!(cast["repeat"], "RepeatNone");
    assert_eq!(cast["shuffle"], false);
    assert!(cast["last_failed"].is_null());
    let duration = cast["duration_seconds"].as_f64().unwrap();
    assert!(
        (duration - 1.5).abs() < 0.01,
        "the tone is 1.5 s: {duration}"
    );
    let position = cast["position_seconds"].as_f64().unwrap();
    assert!((0.0..=1.5).contains(&position), "{position}");
    s.general("Mute", "");
    until(Duration::from_secs(2), "muted", || s.mixer.volume() == 0).await;
    s.general("Unmute", "");
    until(Duration::from_secs(2), "unmuted", || {
        s.mixer.volume() == 26214
    })
    .await;
    s.general("VolumeUp", "");
    until(Duration::from_secs(2), "a step up", || {
        s.mixer.volume() > 26214
    })
    .await;
    s.wait_stopped(4, Duration::from_secs(10)).await;
    // Played in that order: each captured segment's tone.
    let heard: Vec<f64> = s
        .segments()
        .iter()
        .map(|(_, samples)| frequency(samples))
        .collect();
    println!("tones heard: {heard:?}");
    assert_eq!(heard.len(), 4);
    for (got, want) in heard.iter().zip([300.0, 1200.0, 600.0, 900.0]) {
        assert!((got - want).abs() < 10.0, "{heard:?}");
    }
    let playing: Vec<String> = s
        .reports("/Sessions/Playing")
        .iter()
        .map(|p| p["ItemId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        playing,
        [&ids["a"], &ids["d"], &ids["b"], &ids["c"]].map(|s| s.clone())
    );

    // Pause is reported and silences at once; Unpause resumes; Stop ends with Stopped.
    s.play(&[&ids["a"], &ids["b"]], "PlayNow", 0, 0);
    until(Duration::from_secs(3), "playing again", || {
        s.reports("/Sessions/Playing").len() == 5
    })
    .await;
    s.playstate("Pause", "");
    until(Duration::from_secs(2), "paused report", || {
        s.reports("/Sessions/Playing/Progress")
            .last()
            .is_some_and(|p| p["IsPaused"] == true)
    })
    .await;
    let paused = s.cast_status("paused", |c| c["state"] == "paused").await;
    assert_eq!(paused["item_id"], ids["a"].as_str());
    assert_eq!(paused["queue_length"], 2);
    tokio::time::sleep(Duration::from_millis(150)).await; // a write in progress finishes
    let written = s.segments().iter().map(|(_, v)| v.len()).sum::<usize>();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        s.segments().iter().map(|(_, v)| v.len()).sum::<usize>(),
        written,
        "nothing written while paused"
    );
    s.playstate("Unpause", "");
    s.general("SetRepeatMode", r#""RepeatMode":"RepeatOne""#);
    until(Duration::from_secs(2), "RepeatOne reported", || {
        s.reports("/Sessions/Playing/Progress")
            .last()
            .is_some_and(|p| p["RepeatMode"] == "RepeatOne" && p["IsPaused"] == false)
    })
    .await;
    s.playstate("Stop", "");
    s.wait_stopped(5, Duration::from_secs(3)).await;
    until(Duration::from_secs(2), "device closed", || {
        s.lock.holder().is_none()
    })
    .await;
    let stopped = s.cast_status("stopped", |c| c["state"] == "stopped").await;
    assert!(stopped["item_id"].is_null() && stopped["position_seconds"].is_null());
    assert_eq!(stopped["repeat"], "RepeatOne");
    s.stop().await;
}

async fn play_shuffle_plays_every_item_once_in_the_reported_order(version: ServerVersion) {
    // The real server shuffles itself and sends PlayNow; a server that passes PlayShuffle on
    // must still get every item once, in the order the speaker reports.
    let dir = tempfile::tempdir().unwrap();
    let s = speaker(Options {
        version,
        ..Options::default()
    })
    .await;
    let mut tone_of = HashMap::new();
    let mut ids = Vec::new();
    for (name, hz) in [("x", 400), ("y", 800), ("z", 1600)] {
        let id = guid();
        s.fake
            .add_media(&id, media(&tone(dir.path(), name, hz, 0.5), "audio/flac"));
        tone_of.insert(id.clone(), f64::from(hz));
        ids.push(id);
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    s.play(&refs, "PlayShuffle", 0, 0);
    s.wait_stopped(3, Duration::from_secs(10)).await;
    let playing = s.reports("/Sessions/Playing");
    assert_eq!(playing.len(), 3, "each item played once: {playing:?}");
    let queue: Vec<String> = playing[0]["NowPlayingQueue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Id"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = queue.clone();
    sorted.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(sorted, want, "the queue is the three items");
    let order: Vec<String> = playing
        .iter()
        .map(|p| p["ItemId"].as_str().unwrap().to_string())
        .collect();
    println!("PlayShuffle: sent {ids:?}, reported queue {queue:?}");
    assert_eq!(order, queue, "played in the reported order");
    for p in &playing {
        assert_eq!(p["PlaybackOrder"], "Shuffle");
        assert_eq!(p["NowPlayingQueue"], playing[0]["NowPlayingQueue"]);
    }
    // And what came out of the speaker is those tones, in that order.
    let heard: Vec<f64> = s
        .segments()
        .iter()
        .map(|(_, samples)| frequency(samples))
        .collect();
    assert_eq!(heard.len(), 3, "{heard:?}");
    for (got, id) in heard.iter().zip(&queue) {
        assert!((got - tone_of[id]).abs() < 10.0, "{heard:?} for {queue:?}");
    }
    assert!(s
        .reports("/Sessions/Playing/Stopped")
        .iter()
        .all(|r| r["Failed"] == false));
    s.stop().await;
}

async fn an_item_that_fails_to_stream_or_decode_is_reported_failed_and_skipped(
    version: ServerVersion,
) {
    let fx = fixture(1);
    let s = speaker(Options {
        version,
        ..Options::default()
    })
    .await;
    let (broken, garbage, good) = (guid(), guid(), guid());
    s.fake.add_media(
        &broken,
        Media {
            fail: true,
            ..Media::default()
        },
    );
    let junk: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    s.fake.add_media(&garbage, media(&junk, "audio/flac"));
    s.fake
        .add_media(&good, media(&fx.files["flac"], "audio/flac"));
    let missing = guid(); // the server answers 404
    s.play(&[&broken, &garbage, &missing, &good], "PlayNow", 0, 0);
    s.wait_stopped(4, Duration::from_secs(10)).await;
    let stopped = s.reports("/Sessions/Playing/Stopped");
    let outcome: Vec<(String, bool)> = stopped
        .iter()
        .map(|r| {
            (
                r["ItemId"].as_str().unwrap().to_string(),
                r["Failed"] == true,
            )
        })
        .collect();
    assert_eq!(
        outcome,
        [
            (broken.clone(), true),
            (garbage.clone(), true),
            (missing.clone(), true),
            (good.clone(), false)
        ]
    );
    let playing = s.reports("/Sessions/Playing");
    assert_eq!(playing.len(), 1);
    assert_eq!(playing[0]["ItemId"], good.as_str());
    assert_eq!(s.segments().len(), 1, "only the good item made sound");
    // The status page keeps the last failure after the queue ended.
    let cast = s.cast_status("stopped", |c| c["state"] == "stopped").await;
    println!("status page after the queue: {cast}");
    assert_eq!(cast["last_failed"]["item_id"], missing.as_str());
    assert_eq!(cast["last_failed"]["reason"], "stream: HTTP 404");
    s.stop().await;
}

async fn a_2_s_network_stall_does_not_underrun_and_play_starts_fast(version: ServerVersion) {
    let fx = fixture(6);
    // The server sends at 3× the audio's byte rate and stalls 2 s at 60 % of the file (3.6 s of
    // audio, reached after ~1.2 s, so ~2.4 s is buffered then). A real sound card pace.
    let run = |tenths_of_real_time: u64| {
        let fx = &fx;
        async move {
            let s = speaker(Options {
                version,
                pace: Some(1.0),
                stream: StreamSettings::default(),
                ..Options::default()
            })
            .await;
            let flac = &fx.files["flac"];
            let id = guid();
            s.fake.add_media(
                &id,
                Media {
                    throttle: Some(flac.len() as u64 * tenths_of_real_time / 60),
                    stall: Some((flac.len() as u64 * 6 / 10, Duration::from_secs(2))),
                    ..media(flac, "audio/flac")
                },
            );
            let sent = std::time::Instant::now();
            s.play(&[&id], "PlayNow", 0, 0);
            s.wait_stopped(1, Duration::from_secs(15)).await;
            let captured = s.captured.lock().unwrap().clone();
            let first = captured.first_write[0].duration_since(sent);
            let total: usize = captured.segments.iter().map(|(_, v)| v.len()).sum();
            assert_eq!(total, fx.reference.len(), "every sample played");
            s.stop().await;
            (captured.underruns, first)
        }
    };
    let (underruns, first_frame) = run(30).await;
    println!(
        "2 s stall: {underruns} underruns; Play to first frame {} ms",
        first_frame.as_millis()
    );
    assert_eq!(underruns, 0);
    assert!(first_frame < Duration::from_millis(1500), "{first_frame:?}");
    // The control, so the measurement above can fail: a server only 10 % faster than playback
    // never lets a buffer build up (~0.4 s ahead at the stall), and the same stall underruns.
    // (A smaller read-ahead alone is no control on loopback: the kernel's socket buffers hold
    // this whole file, so the server gets ahead anyway.)
    let (underruns, _) = run(11).await;
    println!("2 s stall from a server only 10 % faster than playback: {underruns} underruns");
    assert!(underruns > 0);
}

async fn spotify_and_the_cast_hand_the_device_over_and_are_never_open_together(
    version: ServerVersion,
) {
    let fx = fixture(SECONDS);
    let s = speaker(Options {
        version,
        pace: Some(1.0),
        ..Options::default()
    })
    .await;
    let id = guid();
    s.fake
        .add_media(&id, media(&fx.files["flac"], "audio/flac"));
    // Spotify is playing.
    let (done, ok) = std_mpsc::channel();
    s.spotify.send(SpotifyOp::Start(done)).unwrap();
    assert!(ok.recv().unwrap());
    // A Jellyfin user casts: Spotify is paused, its sink lets go, then the cast opens.
    let sent = std::time::Instant::now();
    s.play(&[&id], "PlayNow", 0, 0);
    until(Duration::from_secs(4), "cast playing", || {
        !s.reports("/Sessions/Playing").is_empty()
    })
    .await;
    let first = s.captured.lock().unwrap().first_write[0].duration_since(sent);
    println!(
        "Play to first frame, taking the device from Spotify: {} ms",
        first.as_millis()
    );
    assert!(first < Duration::from_millis(1500));
    assert!(s.commands.lock().unwrap().contains(&Command::Pause));
    s.general("SetVolume", r#""Volume":"40""#);
    until(Duration::from_secs(2), "volume", || {
        s.mixer.volume() == 26214
    })
    .await;
    // Spotify's side keeps talking while paused (a volume echo from the shared mixer): none of it
    // may overwrite the cast's now-playing.
    s.events
        .send(PlaybackEvent::TrackChanged(TrackInfo {
            uri: "spotify:track:1".into(),
            name: "Spotify song".into(),
            artists: vec![],
            album: String::new(),
            duration_ms: 1000,
        }))
        .unwrap();
    s.events
        .send(PlaybackEvent::Playing { position_ms: 0 })
        .unwrap();
    s.events.send(PlaybackEvent::VolumeChanged(26214)).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        s.fake
            .reports()
            .iter()
            .all(|(_, r)| r["ItemId"] == id.as_str()),
        "only cast reports while casting: {:?}",
        s.fake.reports()
    );
    // A Spotify user takes the speaker back: the cast stops and says so.
    let (done, ok) = std_mpsc::channel();
    s.spotify.send(SpotifyOp::Start(done)).unwrap();
    let started = tokio::task::spawn_blocking(move || ok.recv().unwrap())
        .await
        .unwrap();
    assert!(started, "Spotify got the device");
    s.wait_stopped(1, Duration::from_secs(3)).await;
    let stopped = s.reports("/Sessions/Playing/Stopped");
    assert_eq!(stopped[0]["ItemId"], id.as_str());
    assert_eq!(stopped[0]["Failed"], false);
    assert!(!s.captured.lock().unwrap().open);
    assert_eq!(
        s.mixer.volume(),
        26214,
        "the volume stays across the switch"
    );
    // And again, so the handover is not a one-off.
    s.spotify.send(SpotifyOp::Stop).unwrap();
    s.play(&[&id], "PlayNow", 0, 0);
    until(Duration::from_secs(4), "cast again", || {
        s.reports("/Sessions/Playing").len() == 2
    })
    .await;
    let (done, ok) = std_mpsc::channel();
    s.spotify.send(SpotifyOp::Start(done)).unwrap();
    assert!(tokio::task::spawn_blocking(move || ok.recv().unwrap())
        .await
        .unwrap());
    s.wait_stopped(2, Duration::from_secs(3)).await;
    assert_eq!(
        s.counter.max.load(Ordering::SeqCst),
        1,
        "never two sources open at once"
    );
    s.stop().await;
}

async fn a_play_while_the_last_item_plays_out_starts_cleanly(version: ServerVersion) {
    let fx = fixture(1);
    let s = speaker(Options {
        version,
        pace: Some(1.0),
        ..Options::default()
    })
    .await;
    let id = guid();
    s.fake
        .add_media(&id, media(&fx.files["flac"], "audio/flac"));
    s.play(&[&id], "PlayNow", 0, 0);
    // The decoder reaches the end ~0.5 s before the sound card does (its buffer): the item is
    // reported stopped and the audio thread drains. A Play now must wait for that thread and
    // then play, not be torn down by the old thread's goodbye.
    s.wait_stopped(1, Duration::from_secs(5)).await;
    s.play(&[&id], "PlayNow", 0, 0);
    s.wait_stopped(2, Duration::from_secs(5)).await;
    let stopped = s.reports("/Sessions/Playing/Stopped");
    assert_eq!(stopped[1]["Failed"], false);
    // Played to its end: the position is the whole item, not what the sound card had played
    // when the decoder finished (Jellyfin marks an item played from this position).
    for report in &stopped {
        let ticks = report["PositionTicks"].as_u64().unwrap_or(0);
        assert!(
            (ticks as i64 - 10_000_000).abs() < 100_000,
            "a 1 s item played to its end reports 1 s, not {ticks} ticks"
        );
    }
    assert_eq!(s.reports("/Sessions/Playing").len(), 2);
    let total: usize = s.segments().iter().map(|(_, v)| v.len()).sum();
    assert_eq!(total, fx.reference.len() * 2, "both plays complete");
    s.stop().await;
}

async fn a_transcoded_stream_plays_and_seeks_by_asking_the_server_again(version: ServerVersion) {
    let fx = fixture(SECONDS);
    let s = speaker(Options {
        version,
        pace: Some(2.0),
        ..Options::default()
    })
    .await;
    let id = guid();
    s.fake.add_media(
        &id,
        Media {
            no_ranges: true,
            ..media(&fx.files["flac"], "audio/flac")
        },
    );
    s.play(&[&id], "PlayNow", 0, 0);
    until(Duration::from_secs(3), "playing", || {
        !s.reports("/Sessions/Playing").is_empty()
    })
    .await;
    // The server keeps Transcode only for a PlaySessionId of its own transcoding jobs
    // (ValidatePlayMethod), which the universal endpoint never tells the speaker: what the
    // speaker reports is what the server keeps.
    let reported = s.reports("/Sessions/Playing")[0]["PlayMethod"].clone();
    assert_eq!(reported, "DirectStream");
    assert_eq!(
        s.fake.only_session().play_method.as_deref(),
        reported.as_str(),
        "the server kept the reported method"
    );
    s.playstate("Seek", r#","SeekPositionTicks":20000000"#);
    until(Duration::from_secs(3), "a second request from 2 s", || {
        s.fake
            .audio_requests()
            .iter()
            .any(|r| r.query.contains("StartTimeTicks=20000000"))
    })
    .await;
    s.wait_stopped(1, Duration::from_secs(5)).await;
    // The stand-in server ignores StartTimeTicks (it cannot transcode), so what matters here is
    // the request and the position the speaker counts from.
    let stopped = s.reports("/Sessions/Playing/Stopped");
    let ticks = stopped[0]["PositionTicks"].as_u64().unwrap();
    assert!(ticks >= 20_000_000, "counted from the seek target: {ticks}");
    assert!(
        s.fake.audio_requests().iter().all(|r| r.range.is_none()),
        "no Range requests to a transcode"
    );
    s.stop().await;
}

async fn a_connection_dropped_again_and_again_is_resumed_with_ranges_bit_exact(
    version: ServerVersion,
) {
    let fx = fixture(SECONDS);
    let s = speaker(Options {
        version,
        ..Options::default()
    })
    .await;
    let id = guid();
    let flac = &fx.files["flac"];
    // Every response stops after 1/8 of the file: eight drops, more than the 3 resumes allowed
    // in a row, so this passes only because each resume made progress.
    s.fake.add_media(
        &id,
        Media {
            cut_every: Some(flac.len() as u64 / 8),
            ..media(flac, "audio/flac")
        },
    );
    s.play(&[&id], "PlayNow", 0, 0);
    s.wait_stopped(1, Duration::from_secs(10)).await;
    let stopped = s.reports("/Sessions/Playing/Stopped");
    assert_eq!(stopped[0]["Failed"], false);
    let segments = s.segments();
    assert!(segments[0].1 == fx.reference, "bit-exact across the drops");
    let ranges = s
        .fake
        .audio_requests()
        .iter()
        .filter(|r| r.range.is_some())
        .count();
    assert!(ranges >= 7, "resumed with Range requests: {ranges}");
    s.stop().await;
}

#[test]
fn the_cast_test_hook_plays_a_file_and_prints_its_figures() {
    let fx = fixture(1);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sweep.flac");
    std::fs::write(&file, &fx.files["flac"]).unwrap();
    let run = |device: &str, capture: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pispeaker"));
        cmd.args([
            "--config",
            "/dev/null",
            "--device",
            device,
            "jellyfin",
            "cast-test",
        ])
        .arg(&file)
        .args(["--seconds", "0.3"]);
        if capture {
            cmd.arg("--capture");
        }
        cmd.output().unwrap()
    };
    let out = run("default", true);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("44100 Hz, 2 ch") && text.contains("0 underruns"),
        "{text}"
    );
    // A PCM that does not exist: a clear error and status 1, not a panic.
    let out = run("hw:97,0", false);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open ALSA PCM"));
}

/// A multi-user home: a plain (non-admin) user paired the speaker, the administrator casts. The
/// stream goes out as the token's own user; with the caster's id the server would answer 403.
async fn a_cast_by_another_user_streams_as_the_tokens_own_user(version: ServerVersion) {
    const CHILD: &str = "1a2b3c4d5e6f40718293a4b5c6d7e8f9";
    let dir = tempfile::tempdir().unwrap();
    let s = speaker(Options {
        version,
        user: Some(CHILD),
        ..Options::default()
    })
    .await;
    let id = guid();
    s.fake
        .add_media(&id, media(&tone(dir.path(), "t", 440, 0.5), "audio/flac"));
    s.play(&[&id], "PlayNow", 0, 0); // ControllingUserId: the administrator
    s.wait_stopped(1, Duration::from_secs(10)).await;
    let stopped = s.reports("/Sessions/Playing/Stopped");
    assert_eq!(stopped[0]["Failed"], false, "played: {stopped:?}");
    assert_eq!(s.reports("/Sessions/Playing").len(), 1);
    let requests = s.fake.audio_requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert!(
            r.query.contains(&format!("UserId={CHILD}")),
            "as the token's user: {}",
            r.query
        );
    }
    assert_eq!(s.fake.seen.lock().unwrap().forbidden, 0, "no 403");
    s.stop().await;
}

/// `Rewind` and `FastForward` skip by Jellyfin's default lengths: 10 s back, 30 s forward.
async fn rewind_and_fast_forward_skip_10_s_back_and_30_s_forward(version: ServerVersion) {
    let dir = tempfile::tempdir().unwrap();
    let s = speaker(Options {
        version,
        pace: Some(1.0),
        ..Options::default()
    })
    .await;
    let id = guid();
    s.fake.add_media(
        &id,
        media(&tone(dir.path(), "long", 440, 50.0), "audio/flac"),
    );
    s.play(&[&id], "PlayNow", 0, 0);
    until(Duration::from_secs(5), "playing", || {
        !s.reports("/Sessions/Playing").is_empty()
    })
    .await;
    let progress_since = |n: usize| -> Vec<u64> {
        s.reports("/Sessions/Playing/Progress")[n..]
            .iter()
            .filter_map(|r| r["PositionTicks"].as_u64())
            .map(|t| t / 10_000)
            .collect()
    };
    let before = s.reports("/Sessions/Playing/Progress").len();
    s.playstate("FastForward", "");
    until(Duration::from_secs(10), "30 s further", || {
        progress_since(before)
            .iter()
            .any(|ms| (30_000..32_000).contains(ms))
    })
    .await;
    let before = s.reports("/Sessions/Playing/Progress").len();
    s.playstate("Rewind", "");
    until(Duration::from_secs(10), "10 s back", || {
        progress_since(before)
            .iter()
            .any(|ms| (20_000..23_000).contains(ms))
    })
    .await;
    println!(
        "{}: positions after the skips {:?}",
        version.name(),
        progress_since(0)
    );
    s.playstate("Stop", "");
    s.wait_stopped(1, Duration::from_secs(5)).await;
    s.stop().await;
}

/// The server replaces a session's queue only with a non-null one: the cast's last `Stopped`
/// carries an empty queue, so the finished cast's queue does not stick to the session; the
/// `Stopped` between items carries none.
async fn the_last_stopped_clears_the_queue_on_the_server(version: ServerVersion) {
    let dir = tempfile::tempdir().unwrap();
    let s = speaker(Options {
        version,
        // Real time, so the second cast is still playing when the test looks and stops it.
        pace: Some(1.0),
        ..Options::default()
    })
    .await;
    let (a, b) = (guid(), guid());
    s.fake
        .add_media(&a, media(&tone(dir.path(), "a", 440, 0.5), "audio/flac"));
    s.fake
        .add_media(&b, media(&tone(dir.path(), "b", 880, 0.5), "audio/flac"));
    s.play(&[&a, &b], "PlayNow", 0, 0);
    s.wait_stopped(2, Duration::from_secs(10)).await;
    let stopped = s.reports("/Sessions/Playing/Stopped");
    assert!(stopped[0].get("NowPlayingQueue").is_none(), "{stopped:?}");
    assert_eq!(stopped[1]["NowPlayingQueue"], serde_json::json!([]));
    until(Duration::from_secs(5), "the server's queue cleared", || {
        let session = s.fake.only_session();
        session.now_playing.is_none() && session.now_playing_queue == Some(serde_json::json!([]))
    })
    .await;
    // A Stop command ends a cast too.
    s.play(&[&a, &b], "PlayNow", 0, 0);
    until(Duration::from_secs(5), "playing again", || {
        s.fake
            .only_session()
            .now_playing_queue
            .as_ref()
            .and_then(Value::as_array)
            .is_some_and(|q| q.len() == 2)
    })
    .await;
    s.playstate("Stop", "");
    until(Duration::from_secs(5), "cleared after Stop", || {
        s.fake.only_session().now_playing_queue == Some(serde_json::json!([]))
    })
    .await;
    s.stop().await;
}

/// A paused cast checks in (here every 0.5 s, in the daemon every 60 s): the server stops a
/// playback that has not reported for 5 minutes, and the remote would lose it mid-pause.
async fn a_paused_cast_keeps_checking_in(version: ServerVersion) {
    let dir = tempfile::tempdir().unwrap();
    let s = speaker(Options {
        version,
        pace: Some(1.0),
        paused_check_in: Some(Duration::from_millis(500)),
        ..Options::default()
    })
    .await;
    let id = guid();
    s.fake
        .add_media(&id, media(&tone(dir.path(), "p", 440, 20.0), "audio/flac"));
    s.play(&[&id], "PlayNow", 0, 0);
    until(Duration::from_secs(5), "playing", || {
        !s.reports("/Sessions/Playing").is_empty()
    })
    .await;
    s.playstate("Pause", "");
    let paused = || {
        s.reports("/Sessions/Playing/Progress")
            .into_iter()
            .filter(|r| r["IsPaused"] == true)
            .count()
    };
    until(Duration::from_secs(15), "three paused check-ins", || {
        paused() >= 3
    })
    .await;
    assert!(s.fake.only_session().now_playing.is_some());
    s.playstate("Stop", "");
    s.wait_stopped(1, Duration::from_secs(5)).await;
    s.stop().await;
}

/// "Shuffle" in a Jellyfin client as the real server delivers it: the server shuffles the items
/// and sends PlayNow (SessionManager.SendPlayCommand), so the speaker plays them in the order
/// they came, every one once, with the default playback order.
async fn a_shuffle_from_the_server_arrives_as_play_now_in_the_servers_order(
    version: ServerVersion,
) {
    let dir = tempfile::tempdir().unwrap();
    let s = speaker(Options {
        version,
        ..Options::default()
    })
    .await;
    let mut ids = Vec::new();
    for (name, hz) in [("x", 400), ("y", 800), ("z", 1600)] {
        let id = guid();
        s.fake
            .add_media(&id, media(&tone(dir.path(), name, hz, 0.3), "audio/flac"));
        ids.push(id);
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    s.fake
        .play(&refs, "PlayShuffle", 0, 0, support::fake_jellyfin::ADMIN_ID);
    s.wait_stopped(3, Duration::from_secs(10)).await;
    let playing = s.reports("/Sessions/Playing");
    let order: Vec<String> = playing
        .iter()
        .map(|p| p["ItemId"].as_str().unwrap().to_string())
        .collect();
    let queue: Vec<String> = playing[0]["NowPlayingQueue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(order, queue, "played in the order the server sent");
    let mut sorted = order.clone();
    sorted.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(sorted, want, "every item once");
    assert!(playing.iter().all(|p| p["PlaybackOrder"] == "Default"));
    s.stop().await;
}

every_version!(
    flac_mp3_ogg_and_wav_decode_to_the_source_with_the_right_length,
    m4a_plays_as_the_original_and_opus_as_the_servers_flac_transcode,
    start_position_and_seek_land_within_100_ms,
    play_next_and_play_last_order_the_queue_and_the_modes_are_reported,
    play_shuffle_plays_every_item_once_in_the_reported_order,
    an_item_that_fails_to_stream_or_decode_is_reported_failed_and_skipped,
    a_2_s_network_stall_does_not_underrun_and_play_starts_fast,
    spotify_and_the_cast_hand_the_device_over_and_are_never_open_together,
    a_play_while_the_last_item_plays_out_starts_cleanly,
    a_transcoded_stream_plays_and_seeks_by_asking_the_server_again,
    a_connection_dropped_again_and_again_is_resumed_with_ranges_bit_exact,
    a_cast_by_another_user_streams_as_the_tokens_own_user,
    rewind_and_fast_forward_skip_10_s_back_and_30_s_forward,
    the_last_stopped_clears_the_queue_on_the_server,
    a_paused_cast_keeps_checking_in,
    a_shuffle_from_the_server_arrives_as_play_now_in_the_servers_order,
);
