//! Audio output: librespot's ALSA sink, kept from taking the daemon down, and a null sink for
//! machines without a sound card.

use std::time::{Duration, Instant};

use librespot_playback::audio_backend::{self, Sink, SinkBuilder, SinkError, SinkResult};
use librespot_playback::config::AudioFormat;
use librespot_playback::convert::Converter;
use librespot_playback::decoder::AudioPacket;
use librespot_playback::{NUM_CHANNELS, SAMPLE_RATE};
use log::warn;

use super::device_lock::{AudioDeviceLock, DeviceGuard};

/// The output the player is built with.
pub type SinkFactory = Box<dyn FnOnce() -> Box<dyn Sink> + Send + 'static>;

/// librespot's ALSA sink on `pcm`, wrapped in [`ResilientSink`]. `None` if librespot was built
/// without its ALSA backend (a build defect the daemon reports).
pub fn alsa_sink(pcm: String) -> Option<SinkFactory> {
    let builder = audio_backend::find(Some("alsa".to_string()))?;
    Some(Box::new(move || {
        Box::new(ResilientSink::new(
            builder,
            Some(pcm),
            AudioFormat::default(),
        )) as Box<dyn Sink>
    }))
}

/// The null sink, for a machine with no sound card.
pub fn null_sink() -> SinkFactory {
    Box::new(|| Box::new(NullSink::default()) as Box<dyn Sink>)
}

/// librespot's player ends the process when `stop()` fails, which an unplugged USB DAC makes it
/// do. This wrapper turns a failed stop into a fresh sink (the next `start` opens the device
/// again) and logs it, so the speaker survives and plays as soon as the device is back.
pub struct ResilientSink {
    builder: SinkBuilder,
    device: Option<String>,
    format: AudioFormat,
    inner: Box<dyn Sink>,
}

impl ResilientSink {
    pub fn new(builder: SinkBuilder, device: Option<String>, format: AudioFormat) -> Self {
        let inner = builder(device.clone(), format);
        Self {
            builder,
            device,
            format,
            inner,
        }
    }

    fn rebuild(&mut self, why: &SinkError) {
        warn!(
            "audio device {} failed ({why}); it will be reopened on the next play",
            self.device.as_deref().unwrap_or("default")
        );
        self.inner = (self.builder)(self.device.clone(), self.format);
    }
}

impl Sink for ResilientSink {
    fn start(&mut self) -> SinkResult<()> {
        self.inner.start()
    }

    fn stop(&mut self) -> SinkResult<()> {
        if let Err(e) = self.inner.stop() {
            self.rebuild(&e);
        }
        Ok(())
    }

    fn write(&mut self, packet: AudioPacket, converter: &mut Converter) -> SinkResult<()> {
        let result = self.inner.write(packet, converter);
        if let Err(e) = &result {
            // The player pauses on a write error; make sure the device is reopened afterwards.
            self.rebuild(e);
        }
        result
    }
}

/// Spotify's sink behind the [`AudioDeviceLock`]: `start` takes the device (making a Jellyfin cast
/// let go of it), `stop` gives it back after the inner sink closed the PCM. So the player and the
/// cast can never have the PCM open at the same time.
pub struct LockedSink {
    inner: Box<dyn Sink>,
    lock: AudioDeviceLock,
    guard: Option<DeviceGuard>,
    /// How long `start` waits for a cast to let go before the player is told to pause.
    wait: Duration,
}

impl LockedSink {
    pub fn new(inner: Box<dyn Sink>, lock: AudioDeviceLock) -> Self {
        Self {
            inner,
            lock,
            guard: None,
            wait: Duration::from_secs(3),
        }
    }

    /// Wraps a factory's sink.
    pub fn factory(inner: SinkFactory, lock: AudioDeviceLock) -> SinkFactory {
        Box::new(move || Box::new(LockedSink::new(inner(), lock)) as Box<dyn Sink>)
    }
}

impl Sink for LockedSink {
    fn start(&mut self) -> SinkResult<()> {
        if self.guard.is_none() {
            // An error here makes librespot pause, which is the right answer to a cast that
            // will not let go; it never ends the process.
            let guard = self
                .lock
                .acquire_spotify(self.wait)
                .map_err(|e| SinkError::ConnectionRefused(e.to_string()))?;
            self.guard = Some(guard);
        }
        let result = self.inner.start();
        if result.is_err() {
            self.guard = None;
        }
        result
    }

    fn stop(&mut self) -> SinkResult<()> {
        let result = self.inner.stop();
        self.guard = None;
        result
    }

    fn write(&mut self, packet: AudioPacket, converter: &mut Converter) -> SinkResult<()> {
        self.inner.write(packet, converter)
    }
}

/// Discards audio at the pace a sound card would consume it, so tracks take their real time and
/// Spotify's position stays right even with no sound card.
#[derive(Debug, Default)]
pub struct NullSink {
    /// Wall-clock time the samples written so far would take to play, from `start`.
    started: Option<Instant>,
    played: Duration,
}

impl Sink for NullSink {
    fn start(&mut self) -> SinkResult<()> {
        self.started = Some(Instant::now());
        self.played = Duration::ZERO;
        Ok(())
    }

    fn stop(&mut self) -> SinkResult<()> {
        self.started = None;
        Ok(())
    }

    fn write(&mut self, packet: AudioPacket, _: &mut Converter) -> SinkResult<()> {
        let samples = match &packet {
            AudioPacket::Samples(s) => s.len(),
            // Passthrough Ogg pages: no sample count to pace by; a packet is ~20 ms of audio.
            AudioPacket::Raw(_) => 882 * usize::from(NUM_CHANNELS),
        };
        let frames = samples / usize::from(NUM_CHANNELS).max(1);
        self.played += Duration::from_secs_f64(frames as f64 / f64::from(SAMPLE_RATE));
        let started = *self.started.get_or_insert_with(Instant::now);
        let due = started + self.played;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_sink_takes_real_time() {
        let mut sink = NullSink::default();
        let mut converter = Converter::new(None);
        sink.start().unwrap();
        let begin = Instant::now();
        // 0.2 s of stereo audio in 10 packets.
        for _ in 0..10 {
            sink.write(AudioPacket::Samples(vec![0.0; 882 * 2]), &mut converter)
                .unwrap();
        }
        let took = begin.elapsed();
        assert!(took >= Duration::from_millis(190), "took {took:?}");
        sink.stop().unwrap();
    }

    struct FailingSink;
    impl Sink for FailingSink {
        fn stop(&mut self) -> SinkResult<()> {
            Err(SinkError::StateChange("device unplugged".into()))
        }
        fn write(&mut self, _: AudioPacket, _: &mut Converter) -> SinkResult<()> {
            Err(SinkError::OnWrite("device unplugged".into()))
        }
    }

    fn failing(_: Option<String>, _: AudioFormat) -> Box<dyn Sink> {
        Box::new(FailingSink)
    }

    #[test]
    fn a_failing_stop_does_not_reach_the_player() {
        let mut sink = ResilientSink::new(failing, Some("hw:9".into()), AudioFormat::default());
        assert!(
            sink.stop().is_ok(),
            "the player would exit(1) on this error"
        );
        let mut converter = Converter::new(None);
        assert!(sink
            .write(AudioPacket::Samples(vec![0.0; 4]), &mut converter)
            .is_err());
    }

    /// Records whether it is "open", and fails the test if it is written while closed.
    struct ProbeSink(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Sink for ProbeSink {
        fn start(&mut self) -> SinkResult<()> {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
        fn stop(&mut self) -> SinkResult<()> {
            self.0.store(false, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
        fn write(&mut self, _: AudioPacket, _: &mut Converter) -> SinkResult<()> {
            assert!(self.0.load(std::sync::atomic::Ordering::SeqCst));
            Ok(())
        }
    }

    #[test]
    fn the_locked_sink_takes_the_device_from_a_cast_and_gives_it_back_on_stop() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let lock = AudioDeviceLock::new();
        let open = std::sync::Arc::new(AtomicBool::new(false));
        let mut sink = LockedSink::new(Box::new(ProbeSink(open.clone())), lock.clone());
        let cast = lock.try_acquire_cast().unwrap();
        let cast_open = std::sync::Arc::new(AtomicBool::new(true));
        let cast_thread = {
            let (cast_open, spotify_open) = (cast_open.clone(), open.clone());
            std::thread::spawn(move || {
                while !cast.preempted() {
                    assert!(!spotify_open.load(Ordering::SeqCst), "both open");
                    std::thread::sleep(Duration::from_millis(2));
                }
                cast_open.store(false, Ordering::SeqCst);
                drop(cast);
            })
        };
        sink.start().unwrap();
        assert!(!cast_open.load(Ordering::SeqCst), "the cast closed first");
        assert_eq!(
            lock.holder(),
            Some(super::super::device_lock::Holder::Spotify)
        );
        cast_thread.join().unwrap();
        sink.stop().unwrap();
        assert_eq!(lock.holder(), None);
        // A cast that never lets go: the sink refuses (the player pauses), nothing hangs forever.
        let _stubborn = lock.try_acquire_cast().unwrap();
        sink.wait = Duration::from_millis(30);
        assert!(sink.start().is_err());
        assert!(!open.load(Ordering::SeqCst));
    }

    #[test]
    fn the_alsa_backend_is_built_in() {
        assert!(alsa_sink("default".into()).is_some());
    }
}
