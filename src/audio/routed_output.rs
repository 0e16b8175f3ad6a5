//! A [`PcmOutput`] on whatever PCM the [`OutputRoute`] names now (the Jellyfin cast's output).
//!
//! A new DAC chosen in the web app while a source plays: at the next write the old PCM is closed
//! and the new one opened in the same format, so it plays on, on the new device (the old
//! device's buffered tail is dropped with it). With no PCM (no sound card) the audio is paced
//! and discarded, as Spotify's null sink does.

use std::sync::Arc;

use super::decode::PcmFormat;
use super::output::{AlsaOutput, CaptureOutput, OutputFactory, PcmOutput};
use super::route::OutputRoute;

/// Builds the output for one PCM (or none).
pub type RouteOutputBuilder = Arc<dyn Fn(Option<String>) -> Box<dyn PcmOutput> + Send + Sync>;

pub struct RoutedOutput {
    route: OutputRoute,
    build: RouteOutputBuilder,
    generation: u64,
    inner: Box<dyn PcmOutput>,
    /// The format the source opened the device with, while open.
    format: Option<PcmFormat>,
    /// Underruns of the outputs replaced so far.
    earlier_underruns: u64,
}

impl RoutedOutput {
    pub fn new(route: OutputRoute, build: RouteOutputBuilder) -> Self {
        let (generation, pcm) = route.current();
        let inner = build(pcm);
        Self {
            route,
            build,
            generation,
            inner,
            format: None,
            earlier_underruns: 0,
        }
    }

    /// ALSA on the route's PCM, a paced null output without one.
    pub fn factory(route: OutputRoute) -> OutputFactory {
        let build: RouteOutputBuilder = Arc::new(|pcm| match pcm {
            Some(pcm) => Box::new(AlsaOutput::new(&pcm)) as Box<dyn PcmOutput>,
            None => Box::new(CaptureOutput::paced_null(1.0)),
        });
        Self::factory_with(route, build)
    }

    /// A factory over any builder (tests build captures).
    pub fn factory_with(route: OutputRoute, build: RouteOutputBuilder) -> OutputFactory {
        Arc::new(move || {
            Box::new(RoutedOutput::new(route.clone(), build.clone())) as Box<dyn PcmOutput>
        })
    }

    /// Swaps in the route's current device if it changed; reopens it if the old one was open.
    fn follow(&mut self) -> Result<(), String> {
        if self.route.generation() == self.generation {
            return Ok(());
        }
        self.inner.close();
        self.earlier_underruns += self.inner.underruns();
        let (generation, pcm) = self.route.current();
        log::info!(
            "decoded audio now plays into {}",
            pcm.as_deref().unwrap_or("nothing (no sound card)")
        );
        self.inner = (self.build)(pcm);
        self.generation = generation;
        match self.format {
            Some(format) => self.inner.open(format),
            None => Ok(()),
        }
    }
}

impl PcmOutput for RoutedOutput {
    fn open(&mut self, format: PcmFormat) -> Result<(), String> {
        self.follow()?;
        self.inner.open(format)?;
        self.format = Some(format);
        Ok(())
    }

    fn write(&mut self, samples: &[i16]) -> Result<(), String> {
        self.follow()?;
        self.inner.write(samples)
    }

    fn discard(&mut self) {
        self.inner.discard()
    }

    fn drain(&mut self) {
        self.inner.drain()
    }

    fn close(&mut self) {
        self.format = None;
        self.inner.close()
    }

    fn delay_frames(&mut self) -> u64 {
        self.inner.delay_frames()
    }

    fn underruns(&self) -> u64 {
        self.earlier_underruns + self.inner.underruns()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::Captured;
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[test]
    fn a_new_route_reopens_in_the_same_format_and_the_samples_follow() {
        let route = OutputRoute::new(Some("a".into()));
        let logs: Arc<Mutex<HashMap<String, Arc<Mutex<Captured>>>>> = Default::default();
        let build: RouteOutputBuilder = {
            let logs = logs.clone();
            Arc::new(move |pcm| {
                let log = logs
                    .lock()
                    .unwrap()
                    .entry(pcm.unwrap_or_default())
                    .or_default()
                    .clone();
                Box::new(CaptureOutput::new(log, None)) as Box<dyn PcmOutput>
            })
        };
        let mut out = (RoutedOutput::factory_with(route.clone(), build))();
        let format = PcmFormat {
            rate: 48_000,
            channels: 2,
        };
        out.open(format).unwrap();
        out.write(&[1; 4]).unwrap();
        route.set(Some("b".into()));
        out.write(&[2; 4]).unwrap();
        out.close();
        let logs = logs.lock().unwrap();
        let a = logs["a"].lock().unwrap();
        let b = logs["b"].lock().unwrap();
        assert!(!a.open && !b.open);
        assert_eq!(a.segments, [(format, vec![1; 4])]);
        assert_eq!(
            b.segments,
            [(format, vec![2; 4])],
            "opened in the cast's format"
        );
    }
}
