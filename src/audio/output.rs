//! Where decoded samples go (a source that decodes itself, such as the Jellyfin cast): the
//! configured ALSA PCM, or a capture for tests.
//!
//! The PCM is opened only while that source plays and closed on stop or when Spotify takes the device
//! (the caller holds the [`super::DeviceGuard`] for exactly as long as it is open). It is
//! opened at the track's own rate and channel count; `default`/`plughw:` convert if the card
//! cannot take it. Writes block at the device's pace, which is what paces the decoder.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use alsa::pcm::{Access, Format, HwParams, PCM};
use alsa::{Direction, ValueOr};

use super::decode::PcmFormat;

/// What a decoding source plays into.
pub trait PcmOutput: Send {
    /// (Re)opens the device for `format`; a no-op if it is open with that format already.
    fn open(&mut self, format: PcmFormat) -> Result<(), String>;
    /// Writes interleaved samples, blocking while the device buffer is full.
    fn write(&mut self, samples: &[i16]) -> Result<(), String>;
    /// Drops what is buffered (pause, seek): silence at once.
    fn discard(&mut self);
    /// Plays out what is buffered (end of the queue).
    fn drain(&mut self);
    /// Closes the device.
    fn close(&mut self);
    /// Frames written but not heard yet.
    fn delay_frames(&mut self) -> u64;
    /// Buffer underruns so far (the device ran dry while playing).
    fn underruns(&self) -> u64;
}

/// Builds an output each time such a source starts playing.
pub type OutputFactory = Arc<dyn Fn() -> Box<dyn PcmOutput> + Send + Sync>;

/// The configured ALSA PCM.
pub struct AlsaOutput {
    device: String,
    pcm: Option<(PCM, PcmFormat)>,
    underruns: u64,
}

impl AlsaOutput {
    pub fn new(device: &str) -> Self {
        Self {
            device: device.to_string(),
            pcm: None,
            underruns: 0,
        }
    }

    pub fn factory(device: String) -> OutputFactory {
        Arc::new(move || Box::new(AlsaOutput::new(&device)) as Box<dyn PcmOutput>)
    }

    fn open_pcm(&self, format: PcmFormat) -> Result<PCM, String> {
        let pcm = PCM::new(&self.device, Direction::Playback, false)
            .map_err(|e| format!("cannot open ALSA PCM {:?}: {e}", self.device))?;
        {
            let hwp = HwParams::any(&pcm).map_err(|e| format!("hw params: {e}"))?;
            hwp.set_access(Access::RWInterleaved)
                .map_err(|e| format!("interleaved access: {e}"))?;
            hwp.set_format(Format::s16())
                .map_err(|e| format!("16-bit samples: {e}"))?;
            hwp.set_channels(u32::from(format.channels))
                .map_err(|e| format!("{} channels: {e}", format.channels))?;
            hwp.set_rate(format.rate, ValueOr::Nearest)
                .map_err(|e| format!("{} Hz: {e}", format.rate))?;
            // 500 ms of buffer in 100 ms periods: enough to ride out scheduling hiccups on a Pi
            // Zero; the network stall protection is the stream's read-ahead, not this.
            let _ = hwp.set_buffer_time_near(500_000, ValueOr::Nearest);
            let _ = hwp.set_period_time_near(100_000, ValueOr::Nearest);
            pcm.hw_params(&hwp)
                .map_err(|e| format!("applying hw params: {e}"))?;
        }
        Ok(pcm)
    }
}

impl PcmOutput for AlsaOutput {
    fn open(&mut self, format: PcmFormat) -> Result<(), String> {
        if self.pcm.as_ref().is_some_and(|(_, f)| *f == format) {
            return Ok(());
        }
        self.close();
        let pcm = self.open_pcm(format)?;
        self.pcm = Some((pcm, format));
        Ok(())
    }

    fn write(&mut self, samples: &[i16]) -> Result<(), String> {
        let Some((pcm, format)) = &self.pcm else {
            return Err("the PCM is not open".into());
        };
        let channels = usize::from(format.channels.max(1));
        let io = pcm.io_i16().map_err(|e| e.to_string())?;
        let mut done = 0;
        while done < samples.len() {
            match io.writei(&samples[done..]) {
                Ok(frames) => done += frames * channels,
                Err(e) => {
                    if e.errno() == libc::EPIPE {
                        self.underruns += 1;
                    }
                    // Recovers an underrun or a suspend; anything else is a device failure.
                    pcm.try_recover(e, true)
                        .map_err(|e| format!("ALSA write: {e}"))?;
                }
            }
        }
        Ok(())
    }

    fn discard(&mut self) {
        if let Some((pcm, _)) = &self.pcm {
            let _ = pcm.drop();
            let _ = pcm.prepare();
        }
    }

    fn drain(&mut self) {
        if let Some((pcm, _)) = &self.pcm {
            let _ = pcm.drain();
            let _ = pcm.prepare();
        }
    }

    fn close(&mut self) {
        if let Some((pcm, _)) = self.pcm.take() {
            let _ = pcm.drop();
        }
    }

    fn delay_frames(&mut self) -> u64 {
        self.pcm
            .as_ref()
            .and_then(|(pcm, _)| pcm.delay().ok())
            .map_or(0, |d| d.max(0) as u64)
    }

    fn underruns(&self) -> u64 {
        self.underruns
    }
}

/// What a capture saw, for tests and the cast test hook.
#[derive(Debug, Default, Clone)]
pub struct Captured {
    /// One entry per `open` and per `discard` (track change, seek, pause): the format and the
    /// samples written until the next split.
    pub segments: Vec<(PcmFormat, Vec<i16>)>,
    pub open: bool,
    pub opens: usize,
    /// When the first sample of each segment was written.
    pub first_write: Vec<Instant>,
    pub underruns: u64,
    pub discards: usize,
}

/// A device simulated in memory: keeps every sample, and (when paced) consumes them in real
/// time with a fixed buffer, counting underruns exactly as a sound card would see them.
pub struct CaptureOutput {
    log: Arc<Mutex<Captured>>,
    /// Playback speed relative to real time; `None` consumes instantly (no pacing, no underruns).
    pace: Option<f64>,
    buffer: Duration,
    format: Option<PcmFormat>,
    /// When the audio written so far will have been played.
    played_until: Option<Instant>,
    /// Keep the samples (tests) or only count them (the cast-test hook's RSS figure).
    keep: bool,
}

impl CaptureOutput {
    pub fn new(log: Arc<Mutex<Captured>>, pace: Option<f64>) -> Self {
        Self {
            log,
            pace,
            buffer: Duration::from_millis(500),
            format: None,
            played_until: None,
            keep: true,
        }
    }

    /// A sound card stand-in that paces and counts underruns but keeps no samples.
    pub fn paced_null(pace: f64) -> Self {
        Self {
            keep: false,
            ..Self::new(Arc::new(Mutex::new(Captured::default())), Some(pace))
        }
    }

    pub fn factory(log: Arc<Mutex<Captured>>, pace: Option<f64>) -> OutputFactory {
        Arc::new(move || Box::new(CaptureOutput::new(log.clone(), pace)) as Box<dyn PcmOutput>)
    }

    fn with<R>(&self, f: impl FnOnce(&mut Captured) -> R) -> R {
        f(&mut self.log.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl PcmOutput for CaptureOutput {
    fn open(&mut self, format: PcmFormat) -> Result<(), String> {
        if self.format == Some(format) {
            return Ok(());
        }
        self.format = Some(format);
        self.played_until = None;
        self.with(|c| {
            c.open = true;
            c.opens += 1;
            // A track change discards (an empty segment in the old format) and then opens in
            // the new format: that empty segment becomes the new one, so segments stay one per
            // track whatever the rates.
            match c.segments.last_mut() {
                Some(last) if last.1.is_empty() => last.0 = format,
                _ => c.segments.push((format, Vec::new())),
            }
        });
        Ok(())
    }

    fn write(&mut self, samples: &[i16]) -> Result<(), String> {
        let Some(format) = self.format else {
            return Err("the capture is not open".into());
        };
        let now = Instant::now();
        let mut underrun = false;
        if let Some(pace) = self.pace {
            let frames = samples.len() / usize::from(format.channels.max(1));
            let length = Duration::from_secs_f64(frames as f64 / f64::from(format.rate) / pace);
            let until = match self.played_until {
                Some(t) if t >= now => t,
                Some(_) => {
                    underrun = true;
                    now
                }
                None => now,
            };
            let until = until + length;
            self.played_until = Some(until);
            // Block while more than the buffer is queued, like a full ALSA ring.
            let limit = now + self.buffer.div_f64(pace);
            if until > limit {
                std::thread::sleep(until - limit);
            }
        }
        self.with(|c| {
            if underrun {
                c.underruns += 1;
            }
            if let Some((_, seg)) = c.segments.last_mut() {
                if seg.is_empty() && (self.keep || c.first_write.is_empty()) {
                    c.first_write.push(now);
                }
                if self.keep {
                    seg.extend_from_slice(samples);
                }
            }
        });
        Ok(())
    }

    fn discard(&mut self) {
        self.played_until = None;
        // A new segment after each discard (new track, seek, pause), so a test can tell them
        // apart; nothing written since the last split means nothing to split.
        let format = self.format;
        self.with(|c| {
            c.discards += 1;
            if let (Some(format), Some((_, last))) = (format, c.segments.last()) {
                if !last.is_empty() {
                    c.segments.push((format, Vec::new()));
                }
            }
        });
    }

    fn drain(&mut self) {
        if let Some(until) = self.played_until.take() {
            let now = Instant::now();
            if until > now {
                std::thread::sleep(until - now);
            }
        }
    }

    fn close(&mut self) {
        self.format = None;
        self.played_until = None;
        self.with(|c| c.open = false);
    }

    fn delay_frames(&mut self) -> u64 {
        match (self.format, self.played_until, self.pace) {
            (Some(f), Some(until), Some(pace)) => {
                let left = until.saturating_duration_since(Instant::now());
                (left.as_secs_f64() * pace * f64::from(f.rate)) as u64
            }
            _ => 0,
        }
    }

    fn underruns(&self) -> u64 {
        self.with(|c| c.underruns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paced_capture_counts_an_underrun_when_writes_stop_mid_play() {
        let log = Arc::new(Mutex::new(Captured::default()));
        let mut out = CaptureOutput::new(log.clone(), Some(10.0));
        out.open(PcmFormat {
            rate: 1000,
            channels: 1,
        })
        .unwrap();
        // 1 s of audio at 10× = 100 ms of wall time; the buffer (500 ms / 10) makes it block.
        let started = Instant::now();
        out.write(&[0; 1000]).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(40));
        assert_eq!(out.underruns(), 0);
        std::thread::sleep(Duration::from_millis(120)); // the "device" runs dry
        out.write(&[0; 10]).unwrap();
        assert_eq!(out.underruns(), 1);
        // A discard (pause) is not an underrun.
        out.discard();
        std::thread::sleep(Duration::from_millis(20));
        out.write(&[0; 10]).unwrap();
        assert_eq!(out.underruns(), 1);
        out.close();
        let c = log.lock().unwrap();
        assert!(!c.open);
        assert_eq!(c.segments[0].1.len(), 1010);
        assert_eq!(c.segments[1].1.len(), 10, "split at the discard");
    }

    #[test]
    fn a_track_at_another_rate_is_one_segment_in_its_own_format() {
        let log = Arc::new(Mutex::new(Captured::default()));
        let mut out = CaptureOutput::new(log.clone(), None);
        let cd = PcmFormat {
            rate: 44_100,
            channels: 2,
        };
        let opus = PcmFormat {
            rate: 48_000,
            channels: 2,
        };
        out.open(cd).unwrap();
        out.write(&[1; 8]).unwrap();
        // The player's track change: discard, then open at the next track's rate.
        out.discard();
        out.open(opus).unwrap();
        out.write(&[2; 4]).unwrap();
        let c = log.lock().unwrap();
        assert_eq!(c.segments, [(cd, vec![1; 8]), (opus, vec![2; 4])]);
        assert_eq!(c.opens, 2);
    }

    #[test]
    fn a_missing_alsa_device_is_an_error() {
        let mut out = AlsaOutput::new("hw:97,0");
        assert!(out
            .open(PcmFormat {
                rate: 44_100,
                channels: 2
            })
            .is_err());
        assert!(out.write(&[0; 4]).is_err());
    }
}
