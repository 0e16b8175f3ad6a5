//! The host side of the image boot test's Jellyfin cast check (`tests/image_boot.sh`): the same
//! strict fake Jellyfin server the integration tests use (`tests/support/fake_jellyfin.rs`), run
//! as a program so a speaker booted in qemu can reach it at 10.0.2.2, plus the comparison of what
//! qemu's emulated USB DAC recorded with the track that was sent.
//!
//!   fake-jellyfin-cast serve --bind 127.0.0.1:PORT --track T.flac --item-id ID --trigger FILE
//!   fake-jellyfin-cast compare --source S.raw --captured C.raw --rate 8000
//!
//! `serve` approves the speaker's Quick Connect code (as a user would), waits for the speaker's
//! session to advertise `Play`, and once `--trigger` exists (the guest probe has finished, so
//! nothing else touches the device) sends `Play` for the track, then waits for the speaker to
//! report it playing and, at the end of the track, stopped. It prints `FAKE-JELLYFIN: …` lines
//! and exits 0 only if all of that happened.
//!
//! `compare` takes both signals as raw mono s16le at the same rate (the test converts them with
//! sox) and finds each quarter-second of the source in the capture.

#[path = "../support/fake_jellyfin.rs"]
mod fake_jellyfin;
#[path = "../support/signal.rs"]
mod signal;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use fake_jellyfin::{FakeJellyfin, Media};
use serde_json::Value;
use signal::ncc;

#[derive(Parser)]
#[command(about = "Fake Jellyfin server and capture comparison for the image boot test")]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Serve one track and cast it to the first speaker that registers.
    Serve {
        #[arg(long)]
        bind: String,
        #[arg(long)]
        track: PathBuf,
        /// The item id, in the simple (dash-less) GUID form the server uses.
        #[arg(long)]
        item_id: String,
        /// Send Play once this file exists.
        #[arg(long)]
        trigger: PathBuf,
        /// Give up after this many seconds in all.
        #[arg(long, default_value_t = 1200)]
        timeout: u64,
        /// The track's length: the Stopped report at its end must say it played this far.
        #[arg(long)]
        seconds: f64,
    },
    /// Find the source in the capture, window by window.
    Compare {
        #[arg(long)]
        source: PathBuf,
        #[arg(long)]
        captured: PathBuf,
        #[arg(long)]
        rate: usize,
        /// Lowest normalized correlation that counts a window as found.
        #[arg(long, default_value_t = 0.9)]
        threshold: f64,
        /// Share of windows that must be found.
        #[arg(long, default_value_t = 0.9)]
        required: f64,
    },
}

fn say(line: impl AsRef<str>) {
    println!("FAKE-JELLYFIN: {}", line.as_ref());
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Mode::Serve {
            bind,
            track,
            item_id,
            trigger,
            timeout,
            seconds,
        } => tokio::runtime::Runtime::new()
            .map_err(|e| format!("no tokio runtime: {e}"))
            .and_then(|rt| {
                rt.block_on(serve(
                    &bind,
                    &track,
                    &item_id,
                    &trigger,
                    Duration::from_secs(timeout),
                    seconds,
                ))
            }),
        Mode::Compare {
            source,
            captured,
            rate,
            threshold,
            required,
        } => compare(&source, &captured, rate, threshold, required),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(format!("FAIL {e}"));
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    bind: &str,
    track: &Path,
    item_id: &str,
    trigger: &Path,
    timeout: Duration,
    seconds: f64,
) -> Result<(), String> {
    let bytes =
        std::fs::read(track).map_err(|e| format!("cannot read {}: {e}", track.display()))?;
    let deadline = Instant::now() + timeout;
    let server = FakeJellyfin::start(bind, 1.0).await;
    server.add_media(
        item_id,
        Media {
            bytes,
            content_type: "audio/flac".into(),
            ..Media::default()
        },
    );
    say(format!("listening on {}", server.url()));

    // Quick Connect: approve whatever code the speaker shows, then wait for its session to come
    // up with the cast commands (advertised only when the speaker found a sound card).
    let mut approved = Vec::new();
    let session = loop {
        if Instant::now() > deadline {
            return Err("no speaker session advertising Play before the timeout".into());
        }
        let codes: Vec<String> = {
            let seen = server
                .seen
                .lock()
                .map_err(|_| "fake server state poisoned")?;
            seen.quick_connect.keys().cloned().collect()
        };
        for code in codes {
            if !approved.contains(&code) && server.approve(&code) {
                say(format!("approved Quick Connect code {code}"));
                approved.push(code);
            }
        }
        let ready = {
            let seen = server
                .seen
                .lock()
                .map_err(|_| "fake server state poisoned")?;
            seen.sessions
                .values()
                .find(|s| {
                    s.socket_open
                        && s.capabilities
                            .as_ref()
                            .and_then(|c| c["SupportedCommands"].as_array())
                            .is_some_and(|cmds| cmds.iter().any(|c| c == "Play"))
                })
                .cloned()
        };
        if let Some(session) = ready {
            break session;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    say(format!(
        "session ready: client {:?}, device {:?} with Play advertised",
        session.client, session.device
    ));

    while !trigger.exists() {
        if Instant::now() > deadline {
            return Err("the test never triggered the Play command".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let play = format!(
        r#"{{"MessageType":"Play","Data":{{"ItemIds":["{item_id}"],"PlayCommand":"PlayNow","StartPositionTicks":0,"ControllingUserId":"0f0e0d0c0b0a09080706050403020100"}}}}"#
    );
    let sent = Instant::now();
    server.push(&play);
    say("sent Play");

    let mut playing_at = None;
    loop {
        if Instant::now() > deadline {
            return Err(format!(
                "the speaker did not report the end of the track; reports: {}",
                summarize(&server.reports())
            ));
        }
        let reports = server.reports();
        let for_item = |path: &str| {
            reports
                .iter()
                .find(|(p, body)| p == path && body["ItemId"].as_str() == Some(item_id))
                .map(|(_, body)| body.clone())
        };
        if playing_at.is_none() && for_item("/Sessions/Playing").is_some() {
            let elapsed = sent.elapsed();
            playing_at = Some(elapsed);
            say(format!(
                "Playing reported {} ms after Play",
                elapsed.as_millis()
            ));
        }
        if let Some(stopped) = for_item("/Sessions/Playing/Stopped") {
            let progress = reports
                .iter()
                .filter(|(p, b)| {
                    p == "/Sessions/Playing/Progress" && b["ItemId"].as_str() == Some(item_id)
                })
                .count();
            let position_s = stopped["PositionTicks"].as_u64().unwrap_or(0) as f64 / 1e7;
            say(format!(
                "Stopped reported {} ms after Play: position {position_s:.2} s, failed {}, {progress} progress reports",
                sent.elapsed().as_millis(),
                stopped["Failed"]
            ));
            if playing_at.is_none() {
                return Err("Stopped without Playing".into());
            }
            if stopped["Failed"] == Value::Bool(true) {
                return Err(format!("the speaker reported the item failed: {stopped}"));
            }
            if (position_s - seconds).abs() > 0.1 {
                return Err(format!(
                    "the track ({seconds} s) played to its end, but Stopped says {position_s:.2} s"
                ));
            }
            let requests = server.audio_requests();
            let leaked = requests
                .iter()
                .any(|r| r.query.to_ascii_lowercase().contains("api_key"));
            say(format!(
                "{} audio request(s), token in URL: {leaked}",
                requests.len()
            ));
            if leaked || requests.is_empty() {
                return Err("audio was not requested with the token in the header only".into());
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn summarize(reports: &[(String, Value)]) -> String {
    reports
        .iter()
        .map(|(p, b)| format!("{p} {}", b["ItemId"]))
        .collect::<Vec<_>>()
        .join(", ")
}

fn read_raw(path: &Path) -> Result<Vec<f64>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(bytes
        .chunks_exact(2)
        .map(|b| f64::from(i16::from_le_bytes([b[0], b[1]])))
        .collect())
}

/// The capture is silent until the cast starts (nothing else plays in the guest), so the first
/// loud sample anchors the search. Then every quarter-second window of the source is looked up
/// within ±150 ms of where it should be, following the drift, because qemu's emulated USB audio
/// under TCG can lose or repeat a few milliseconds when the guest is late.
fn compare(
    source: &Path,
    captured: &Path,
    rate: usize,
    threshold: f64,
    required: f64,
) -> Result<(), String> {
    let src = read_raw(source)?;
    let mut cap = read_raw(captured)?;
    say(format!(
        "source {:.2} s, capture {:.2} s",
        src.len() as f64 / rate as f64,
        cap.len() as f64 / rate as f64
    ));
    let loud = 0.01 * f64::from(i16::MAX);
    let Some(onset) = cap.iter().position(|x| x.abs() > loud) else {
        return Err("the capture is silent: nothing reached the emulated USB DAC".into());
    };
    let src_onset = src.iter().position(|x| x.abs() > loud).unwrap_or(0);
    let window = rate / 4;
    let slack = rate * 15 / 100;
    // qemu's USB audio drops what is still in its own buffer when the guest closes the stream:
    // the capture can end a few milliseconds short. Silence after it lets the last window still
    // be compared (a window missing 10 ms of 250 still correlates at about 0.98).
    cap.resize(cap.len() + slack, 0.0);
    let windows = (src.len() - src_onset) / window;
    if windows == 0 {
        return Err("the source is shorter than one window".into());
    }
    let mut drift: isize = 0;
    let mut found = 0;
    let mut beyond_end = 0;
    let mut corrs = Vec::new();
    for k in 0..windows {
        let s = &src[src_onset + k * window..src_onset + (k + 1) * window];
        let expected = onset as isize + (k * window) as isize + drift;
        let mut best: Option<(f64, isize)> = None;
        for lag in -(slack as isize)..=(slack as isize) {
            let at = expected + lag;
            if at < 0 || at as usize + window > cap.len() {
                continue;
            }
            let c = ncc(s, &cap[at as usize..at as usize + window]);
            if best.is_none_or(|(b, _)| c > b) {
                best = Some((c, lag));
            }
        }
        let Some((corr, lag)) = best else {
            beyond_end += 1;
            continue;
        };
        corrs.push(corr);
        if corr >= threshold {
            found += 1;
            drift += lag;
        }
    }
    if corrs.is_empty() {
        return Err("the capture ends before the track's first window".into());
    }
    let mut sorted = corrs.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = sorted[sorted.len() / 2];
    say(format!(
        "onset at {:.3} s of the capture; {found}/{windows} quarter-second windows found (correlation >= {threshold}), {beyond_end} past the capture's end; correlation min {:.3}, median {median:.3}; drift at the end {:+.1} ms",
        onset as f64 / rate as f64,
        sorted[0],
        drift as f64 * 1000.0 / rate as f64
    ));
    let listing = corrs
        .iter()
        .map(|c| format!("{c:.2}"))
        .collect::<Vec<_>>()
        .join(" ");
    say(format!("correlation per window: {listing}"));
    if (found as f64) < required * windows as f64 {
        return Err(format!(
            "only {found} of {windows} windows of the track were found in the capture"
        ));
    }
    Ok(())
}
