//! `pispeaker jellyfin cast-test FILE`: plays a local file through the cast's decoder and output
//! on the configured PCM, and prints the figures the cast is judged by (time to the first frame,
//! underruns, CPU, peak RSS). For a real sound card or an emulated board, where there is no
//! Jellyfin server: the HTTP side is proven by the tests against the fake server.
//!
//! The daemon holds the PCM while Spotify plays: stop it (or use a `dmix` PCM) first.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::audio::TrackDecoder;
use crate::audio::{AlsaOutput, CaptureOutput, PcmOutput};

/// What to play and where.
#[derive(Debug, Clone)]
pub struct CastTest<'a> {
    pub device: &'a str,
    pub file: &'a Path,
    /// Stop after this long (the whole file if `None`).
    pub seconds: Option<f64>,
    /// Into a capture paced like a sound card instead of ALSA (for machines without one).
    pub capture: bool,
}

/// Runs the test and prints one summary line; exit status 1 if anything failed.
pub fn run(test: &CastTest<'_>) -> ExitCode {
    match play(test) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cast-test: {e}");
            ExitCode::from(1)
        }
    }
}

fn play(test: &CastTest<'_>) -> Result<String, String> {
    let started = Instant::now();
    let file =
        std::fs::File::open(test.file).map_err(|e| format!("{}: {e}", test.file.display()))?;
    let extension = test.file.extension().and_then(|e| e.to_str());
    let mut decoder = TrackDecoder::open(Box::new(file), extension).map_err(|e| e.to_string())?;
    let mut output: Box<dyn PcmOutput> = if test.capture {
        Box::new(CaptureOutput::paced_null(1.0))
    } else {
        Box::new(AlsaOutput::new(test.device))
    };
    output.open(decoder.format)?;
    let format = decoder.format;
    let limit = test
        .seconds
        .map(|s| (s.max(0.0) * f64::from(format.rate)) as u64);
    let mut frames = 0u64;
    let mut first_frame = None;
    while let Some(samples) = decoder.next_chunk(1.0).map_err(|e| e.to_string())? {
        output.write(samples)?;
        first_frame.get_or_insert_with(|| started.elapsed());
        frames += samples.len() as u64 / u64::from(format.channels.max(1));
        if limit.is_some_and(|l| frames >= l) {
            break;
        }
    }
    output.drain();
    output.close();
    let wall = started.elapsed();
    let (cpu, max_rss_kib) = usage();
    Ok(format!(
        "cast-test: {} Hz, {} ch, {:.2} s played in {:.2} s; first frame after {} ms; {} underruns; CPU {:.2} s ({:.1} % of one core); peak RSS {} KiB",
        format.rate,
        format.channels,
        frames as f64 / f64::from(format.rate),
        wall.as_secs_f64(),
        first_frame.unwrap_or_default().as_millis(),
        output.underruns(),
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 100.0 / wall.as_secs_f64().max(0.001),
        max_rss_kib,
    ))
}

/// CPU time (user + system) and peak RSS of this process.
fn usage() -> (Duration, i64) {
    // SAFETY: getrusage only writes into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return (Duration::ZERO, 0);
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    (
        tv(usage.ru_utime) + tv(usage.ru_stime),
        usage.ru_maxrss as i64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_or_device_is_an_error_not_a_panic() {
        let missing = CastTest {
            device: "default",
            file: Path::new("/nonexistent.flac"),
            seconds: None,
            capture: true,
        };
        assert!(play(&missing).is_err());
    }
}
