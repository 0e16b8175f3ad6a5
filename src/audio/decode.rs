//! symphonia → interleaved 16-bit samples at the track's own rate and channel count.
//!
//! No resampling here: the output opens the PCM at the track's rate and ALSA's `plug` layer (in
//! `default` and `plughw:`) converts when the card cannot take it. Gapless trimming is on, so an
//! MP3's encoder delay and padding (LAME tag) do not become silence or length.

use std::time::Duration;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{Decoder as CodecDecoder, DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::{FormatOptions, FormatReader, SeekMode, SeekTo};
use symphonia::core::io::{MediaSource, MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;
use symphonia::core::units::{Time, TimeBase};

/// Sample rate and channels of what the decoder produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcmFormat {
    pub rate: u32,
    pub channels: u16,
}

/// Why a track cannot be (further) decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported or unrecognised audio: {0}")]
    Unsupported(String),
    #[error("decode error: {0}")]
    Corrupt(String),
    #[error("read error: {0}")]
    Io(String),
}

/// How far before a seek target decoding restarts (see [`TrackDecoder::seek`]); longer than the
/// longest Vorbis block at 44.1 kHz (8192 samples, 186 ms).
const SEEK_PREROLL: Duration = Duration::from_millis(200);

/// Packets that fail to decode in a row before the track is given up.
const MAX_BAD_PACKETS: u32 = 20;

/// One open track.
pub struct TrackDecoder {
    reader: Box<dyn FormatReader>,
    decoder: Box<dyn CodecDecoder>,
    track_id: u32,
    time_base: Option<TimeBase>,
    pub format: PcmFormat,
    /// Length in frames when the container says.
    pub n_frames: Option<u64>,
    samples: Option<SampleBuffer<f32>>,
    out: Vec<i16>,
    /// After an accurate seek: frames before this timestamp are decoded but not output.
    discard_until: Option<u64>,
}

impl TrackDecoder {
    /// Probes the container and opens the first decodable audio track.
    pub fn open(
        source: Box<dyn MediaSource>,
        extension: Option<&str>,
    ) -> Result<Self, DecodeError> {
        let stream = MediaSourceStream::new(source, MediaSourceStreamOptions::default());
        let mut hint = Hint::new();
        if let Some(ext) = extension {
            hint.with_extension(ext);
        }
        let format_options = FormatOptions {
            enable_gapless: true,
            ..FormatOptions::default()
        };
        let probed = symphonia::default::get_probe()
            .format(&hint, stream, &format_options, &MetadataOptions::default())
            .map_err(|e| DecodeError::Unsupported(e.to_string()))?;
        let reader = probed.format;
        let track = reader
            .tracks()
            .iter()
            .find(|t| {
                t.codec_params.codec != CODEC_TYPE_NULL && t.codec_params.sample_rate.is_some()
            })
            .ok_or_else(|| DecodeError::Unsupported("no audio track".into()))?;
        let params = &track.codec_params;
        let decoder = symphonia::default::get_codecs()
            .make(params, &DecoderOptions::default())
            .map_err(|e| DecodeError::Unsupported(e.to_string()))?;
        let rate = params.sample_rate.unwrap_or(44_100);
        let channels = params
            .channels
            .map(|c| c.count() as u16)
            .unwrap_or(2)
            .max(1);
        Ok(Self {
            track_id: track.id,
            time_base: params.time_base,
            n_frames: params.n_frames,
            reader,
            decoder,
            format: PcmFormat { rate, channels },
            samples: None,
            out: Vec::new(),
            discard_until: None,
        })
    }

    pub fn duration(&self) -> Option<Duration> {
        self.n_frames
            .map(|n| Duration::from_secs_f64(n as f64 / f64::from(self.format.rate)))
    }

    /// The next block of interleaved samples scaled by `gain`; `None` at the end of the track.
    pub fn next_chunk(&mut self, gain: f32) -> Result<Option<&[i16]>, DecodeError> {
        let mut bad = 0;
        loop {
            let packet = match self.reader.next_packet() {
                Ok(p) => p,
                Err(SymphoniaError::IoError(e))
                    if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    return Ok(None)
                }
                // A chained stream (new Ogg logical stream): treat as the end of this track.
                Err(SymphoniaError::ResetRequired) => return Ok(None),
                Err(SymphoniaError::IoError(e)) => return Err(DecodeError::Io(e.to_string())),
                Err(e) => return Err(DecodeError::Corrupt(e.to_string())),
            };
            if packet.track_id() != self.track_id {
                continue;
            }
            let (ts, dur) = (packet.ts(), packet.dur());
            let decoded = match self.decoder.decode(&packet) {
                Ok(d) => d,
                Err(SymphoniaError::DecodeError(e)) => {
                    // One damaged packet is a click, not a failed track.
                    bad += 1;
                    log::debug!("decoder: skipping a damaged packet: {e}");
                    if bad >= MAX_BAD_PACKETS {
                        return Err(DecodeError::Corrupt(e.to_string()));
                    }
                    continue;
                }
                Err(SymphoniaError::IoError(e)) => return Err(DecodeError::Io(e.to_string())),
                Err(e) => return Err(DecodeError::Corrupt(e.to_string())),
            };
            let spec = *decoded.spec();
            let frames = decoded.frames();
            if frames == 0 {
                continue;
            }
            let mut skip_frames = 0usize;
            if let Some(until) = self.discard_until {
                if ts.saturating_add(dur) <= until {
                    continue;
                }
                skip_frames =
                    ts_to_frames(self.time_base, self.format.rate, until.saturating_sub(ts))
                        as usize;
                self.discard_until = None;
            }
            let needed = decoded.capacity() as u64;
            let samples = match &mut self.samples {
                Some(buf) if buf.capacity() >= frames * spec.channels.count() => buf,
                slot => slot.insert(SampleBuffer::new(needed.max(frames as u64), spec)),
            };
            samples.copy_interleaved_ref(decoded);
            let channels = usize::from(self.format.channels);
            let all = samples.samples();
            let from = (skip_frames * channels).min(all.len());
            self.out.clear();
            self.out.extend(
                all[from..]
                    .iter()
                    .map(|s| (s * gain * 32768.0).round().clamp(-32768.0, 32767.0) as i16),
            );
            if self.out.is_empty() {
                continue;
            }
            return Ok(Some(&self.out));
        }
    }

    /// Seeks to `position` (accurate: output starts at the requested frame). Returns where it
    /// landed.
    ///
    /// The reader seeks [`SEEK_PREROLL`] earlier and the frames up to `position` are decoded and
    /// dropped: a codec with overlapping blocks (Vorbis, MP3's bit reservoir, AAC) produces no
    /// usable output for the first packet after a reset, which would otherwise start playback
    /// a block late.
    pub fn seek(&mut self, position: Duration) -> Result<Duration, DecodeError> {
        let seeked = self
            .reader
            .seek(
                SeekMode::Accurate,
                SeekTo::Time {
                    time: Time::from(position.saturating_sub(SEEK_PREROLL).as_secs_f64()),
                    track_id: Some(self.track_id),
                },
            )
            .map_err(|e| DecodeError::Corrupt(format!("seek: {e}")))?;
        self.decoder.reset();
        let target = match self.time_base {
            Some(tb) => tb.calc_timestamp(Time::from(position.as_secs_f64())),
            None => (position.as_secs_f64() * f64::from(self.format.rate)) as u64,
        };
        let target = target.max(seeked.required_ts);
        self.discard_until = (target > seeked.actual_ts).then_some(target);
        let frames = ts_to_frames(self.time_base, self.format.rate, target);
        Ok(Duration::from_secs_f64(
            frames as f64 / f64::from(self.format.rate),
        ))
    }
}

/// Timestamp units (of the track's time base) to frames.
fn ts_to_frames(time_base: Option<TimeBase>, rate: u32, ts: u64) -> u64 {
    match time_base {
        Some(tb) if tb.denom > 0 => {
            (u128::from(ts) * u128::from(tb.numer) * u128::from(rate) / u128::from(tb.denom)) as u64
        }
        _ => ts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A 16-bit PCM WAV in memory.
    fn wav(rate: u32, channels: u16, samples: &[i16]) -> Vec<u8> {
        let data_len = (samples.len() * 2) as u32;
        let mut v = Vec::new();
        v.extend_from_slice(b"RIFF");
        v.extend_from_slice(&(36 + data_len).to_le_bytes());
        v.extend_from_slice(b"WAVEfmt ");
        v.extend_from_slice(&16u32.to_le_bytes());
        v.extend_from_slice(&1u16.to_le_bytes());
        v.extend_from_slice(&channels.to_le_bytes());
        v.extend_from_slice(&rate.to_le_bytes());
        v.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
        v.extend_from_slice(&(channels * 2).to_le_bytes());
        v.extend_from_slice(&16u16.to_le_bytes());
        v.extend_from_slice(b"data");
        v.extend_from_slice(&data_len.to_le_bytes());
        for s in samples {
            v.extend_from_slice(&s.to_le_bytes());
        }
        v
    }

    fn ramp(frames: usize) -> Vec<i16> {
        (0..frames)
            .map(|i| ((i % 20_000) as i16) - 10_000)
            .collect()
    }

    fn decode_all(d: &mut TrackDecoder) -> Vec<i16> {
        let mut out = Vec::new();
        while let Some(chunk) = d.next_chunk(1.0).unwrap() {
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn a_wav_decodes_bit_exact_at_its_own_rate() {
        let source = ramp(48_000);
        let mut d = TrackDecoder::open(Box::new(Cursor::new(wav(48_000, 1, &source))), Some("wav"))
            .unwrap();
        assert_eq!(
            d.format,
            PcmFormat {
                rate: 48_000,
                channels: 1
            }
        );
        assert_eq!(d.duration(), Some(Duration::from_secs(1)));
        assert_eq!(decode_all(&mut d), source);
    }

    #[test]
    fn an_accurate_seek_starts_at_the_requested_frame() {
        let source = ramp(44_100 * 2);
        let mut d =
            TrackDecoder::open(Box::new(Cursor::new(wav(44_100, 1, &source))), None).unwrap();
        let landed = d.seek(Duration::from_millis(1500)).unwrap();
        assert!((landed.as_secs_f64() - 1.5).abs() < 0.001, "{landed:?}");
        let rest = decode_all(&mut d);
        assert_eq!(rest, source[66_150..]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut junk = vec![0u8; 64 * 1024];
        for (i, b) in junk.iter_mut().enumerate() {
            *b = (i * 7919 % 251) as u8;
        }
        assert!(TrackDecoder::open(Box::new(Cursor::new(junk)), Some("flac")).is_err());
        assert!(TrackDecoder::open(Box::new(Cursor::new(Vec::new())), None).is_err());
    }

    #[test]
    fn gain_scales_and_clamps() {
        let mut d = TrackDecoder::open(
            Box::new(Cursor::new(wav(8_000, 1, &[16_000, -16_000, 32_767]))),
            None,
        )
        .unwrap();
        assert_eq!(d.next_chunk(0.5).unwrap().unwrap(), [8_000, -8_000, 16_384]);
    }
}
