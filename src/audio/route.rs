//! Where the speaker's audio goes now, and Spotify's sink that follows it.
//!
//! librespot's player builds its sink once, in its own thread, for the life of the process
//! (librespot-playback 0.8.0 player.rs:494 `sink: sink_builder()`), and the cast builds its output
//! per cast. A new DAC chosen in the web app must reach both without a restart, so they are built
//! from an [`OutputRoute`]: a PCM name (or none: the null sink of a machine without a sound card)
//! with a generation number. [`RoutedSink`] compares generations on `start` and on every `write`:
//! after a change it closes the old device and opens the new one between two packets, so a song
//! that was playing plays on, on the new device, without Spotify (or the phone) noticing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use librespot_playback::audio_backend::{self, Sink, SinkResult};
use librespot_playback::config::AudioFormat;
use librespot_playback::convert::Converter;
use librespot_playback::decoder::AudioPacket;
use log::info;

use super::sink::{NullSink, ResilientSink, SinkFactory};

/// The PCM the speaker plays into now. Clones share it.
#[derive(Clone, Default)]
pub struct OutputRoute(Arc<RouteInner>);

#[derive(Default)]
struct RouteInner {
    generation: AtomicU64,
    pcm: Mutex<Option<String>>,
}

impl OutputRoute {
    /// `None`: no sound card, audio is discarded at the pace a card would play it.
    pub fn new(pcm: Option<String>) -> Self {
        let route = Self::default();
        *route.0.pcm.lock().unwrap_or_else(PoisonError::into_inner) = pcm;
        route
    }

    /// Bumped by every [`Self::set`]: builders compare it to know they are out of date.
    pub fn generation(&self) -> u64 {
        self.0.generation.load(Ordering::SeqCst)
    }

    /// The PCM and the generation it belongs to.
    pub fn current(&self) -> (u64, Option<String>) {
        let pcm = self.0.pcm.lock().unwrap_or_else(PoisonError::into_inner);
        (self.generation(), pcm.clone())
    }

    /// Sends the audio to `pcm` from the next packet on.
    pub fn set(&self, pcm: Option<String>) {
        let mut current = self.0.pcm.lock().unwrap_or_else(PoisonError::into_inner);
        *current = pcm;
        // Under the lock, so `current()` never pairs a new generation with an old name.
        self.0.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// Builds the sink for one PCM (or the null sink).
pub type RouteSinkBuilder = Box<dyn Fn(Option<String>) -> Box<dyn Sink> + Send>;

/// Spotify's sink, on whatever PCM the route names now. See the module doc.
pub struct RoutedSink {
    route: OutputRoute,
    build: RouteSinkBuilder,
    generation: u64,
    inner: Box<dyn Sink>,
    running: bool,
}

impl RoutedSink {
    pub fn new(route: OutputRoute, build: RouteSinkBuilder) -> Self {
        let (generation, pcm) = route.current();
        let inner = build(pcm);
        Self {
            route,
            build,
            generation,
            inner,
            running: false,
        }
    }

    /// A factory for the player: librespot's ALSA sink (made resilient) on the route's PCM, the
    /// null sink when it names none. `None` if librespot was built without its ALSA backend.
    pub fn factory(route: OutputRoute) -> Option<SinkFactory> {
        let alsa = audio_backend::find(Some("alsa".to_string()))?;
        let build: RouteSinkBuilder = Box::new(move |pcm| match pcm {
            Some(pcm) => Box::new(ResilientSink::new(alsa, Some(pcm), AudioFormat::default()))
                as Box<dyn Sink>,
            None => Box::new(NullSink::default()),
        });
        Some(Box::new(move || {
            Box::new(RoutedSink::new(route, build)) as Box<dyn Sink>
        }))
    }

    fn out_of_date(&self) -> bool {
        self.route.generation() != self.generation
    }

    fn rebuild(&mut self) {
        let (generation, pcm) = self.route.current();
        info!(
            "Spotify's audio now goes to {}",
            pcm.as_deref().unwrap_or("the null sink (no sound card)")
        );
        self.inner = (self.build)(pcm);
        self.generation = generation;
    }
}

impl Sink for RoutedSink {
    fn start(&mut self) -> SinkResult<()> {
        if self.out_of_date() {
            self.rebuild();
        }
        self.inner.start()?;
        self.running = true;
        Ok(())
    }

    fn stop(&mut self) -> SinkResult<()> {
        self.running = false;
        // librespot's player calls `exit(1)` when `stop` fails (player.rs:1608-1625), which a
        // device left half-open by a failed switch must not cause; the next start reopens.
        if let Err(e) = self.inner.stop() {
            log::warn!("closing the audio device failed ({e}); it is reopened on the next play");
        }
        Ok(())
    }

    fn write(&mut self, packet: AudioPacket, converter: &mut Converter) -> SinkResult<()> {
        // The player writes only between its `start` and `stop` (player.rs:1592-1606 starts the
        // sink before packets flow, player.rs:1839 writes each packet); a write error makes it
        // pause, which stops the sink (player.rs:1839-1842).
        if self.running && self.out_of_date() {
            // The old device's buffered tail is dropped with it (a few hundred ms at most).
            let _ = self.inner.stop();
            self.running = false;
            self.rebuild();
            // An error pauses the player; the next play opens the device again.
            self.inner.start()?;
            self.running = true;
        }
        self.inner.write(packet, converter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the probe sinks saw: (device, event). The tests call the sink in the order
    /// librespot's player does: `start` (player.rs:1592-1606), one `write` per packet
    /// (player.rs:1839), `stop` on pause (player.rs:1608-1625).
    type Log = Arc<Mutex<Vec<(String, &'static str)>>>;

    struct Probe(String, Log);
    impl Sink for Probe {
        fn start(&mut self) -> SinkResult<()> {
            self.1.lock().unwrap().push((self.0.clone(), "start"));
            Ok(())
        }
        fn stop(&mut self) -> SinkResult<()> {
            self.1.lock().unwrap().push((self.0.clone(), "stop"));
            Ok(())
        }
        fn write(&mut self, _: AudioPacket, _: &mut Converter) -> SinkResult<()> {
            self.1.lock().unwrap().push((self.0.clone(), "write"));
            Ok(())
        }
    }

    fn routed(route: &OutputRoute, log: &Log) -> RoutedSink {
        let log = log.clone();
        RoutedSink::new(
            route.clone(),
            Box::new(move |pcm| {
                Box::new(Probe(pcm.unwrap_or_else(|| "null".into()), log.clone())) as Box<dyn Sink>
            }),
        )
    }

    fn packet() -> AudioPacket {
        AudioPacket::Samples(vec![0.0; 4])
    }

    #[test]
    fn a_new_route_takes_over_between_two_packets_while_playing() {
        let route = OutputRoute::new(Some("hw:CARD=Headphones".into()));
        let log = Log::default();
        let mut sink = routed(&route, &log);
        let mut converter = Converter::new(None);
        sink.start().unwrap();
        sink.write(packet(), &mut converter).unwrap();
        route.set(Some("hw:CARD=sndrpihifiberry".into()));
        sink.write(packet(), &mut converter).unwrap();
        sink.write(packet(), &mut converter).unwrap();
        let seen: Vec<(String, &str)> = log.lock().unwrap().clone();
        let ev = |d: &str, e: &'static str| (d.to_string(), e);
        assert_eq!(
            seen,
            vec![
                ev("hw:CARD=Headphones", "start"),
                ev("hw:CARD=Headphones", "write"),
                ev("hw:CARD=Headphones", "stop"),
                ev("hw:CARD=sndrpihifiberry", "start"),
                ev("hw:CARD=sndrpihifiberry", "write"),
                ev("hw:CARD=sndrpihifiberry", "write"),
            ]
        );
    }

    #[test]
    fn while_stopped_the_next_start_opens_the_new_route() {
        let route = OutputRoute::new(None);
        let log = Log::default();
        let mut sink = routed(&route, &log);
        let mut converter = Converter::new(None);
        route.set(Some("hw:1".into()));
        sink.start().unwrap();
        sink.write(packet(), &mut converter).unwrap();
        sink.stop().unwrap();
        assert_eq!(
            log.lock().unwrap().clone(),
            vec![
                ("hw:1".to_string(), "start"),
                ("hw:1".to_string(), "write"),
                ("hw:1".to_string(), "stop"),
            ],
            "the null sink was never started"
        );
    }

    struct FailingStop;
    impl Sink for FailingStop {
        fn stop(&mut self) -> SinkResult<()> {
            Err(librespot_playback::audio_backend::SinkError::StateChange(
                "device gone".into(),
            ))
        }
        fn write(&mut self, _: AudioPacket, _: &mut Converter) -> SinkResult<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_stop_never_reaches_the_player() {
        let route = OutputRoute::new(Some("hw:9".into()));
        let mut sink = RoutedSink::new(route, Box::new(|_| Box::new(FailingStop) as Box<dyn Sink>));
        sink.start().unwrap();
        assert!(
            sink.stop().is_ok(),
            "the player would exit(1) on this error"
        );
    }
}
