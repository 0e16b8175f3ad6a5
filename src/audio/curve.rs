//! Volume curves: how Spotify's 0..=65535 slider maps onto a mixer control's raw steps.
//!
//! The mapping is a table with one Spotify volume per raw step, strictly increasing from 0 (the
//! lowest step) to 65535 (the highest). Going from volume to raw picks the step whose volume is
//! nearest. Because the table is strictly increasing, `to_raw(from_raw(r)) == r` for every step:
//! reading the live volume and handing it back (what a reconnect does with `initial_volume`)
//! selects the very step that was read, so there is no drift, ever. Curves only decide where each
//! step sits on the slider.

use serde::{Deserialize, Serialize};

/// The shape of the volume curve (`--volume-ctrl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeCurveKind {
    /// Equal slider steps are equal dB steps over `volume-range` dB.
    Log,
    /// Cubic amplitude curve (librespot's `cubic`), scaled to `volume-range` dB.
    Cubic,
    /// Slider position is the control's raw position.
    Linear,
    /// The volume never changes; the slider is ignored.
    Fixed,
}

impl std::str::FromStr for VolumeCurveKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "log" => Ok(Self::Log),
            "cubic" => Ok(Self::Cubic),
            "linear" => Ok(Self::Linear),
            "fixed" => Ok(Self::Fixed),
            _ => Err(format!("{s:?} is not one of log, cubic, linear, fixed")),
        }
    }
}

/// What a control offers: its raw range and, if it has one, its dB value at each raw step.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlRange {
    pub min: i64,
    pub max: i64,
    /// dB at `min + i` for each step (ALSA's TLV). `None` for controls without dB information,
    /// whose raw value is then taken as linear amplitude.
    pub db: Option<Vec<f64>>,
}

impl ControlRange {
    pub fn steps(&self) -> usize {
        usize::try_from(self.max.saturating_sub(self.min)).map_or(0, |d| d + 1)
    }
}

/// The volume table of one control under one curve.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeMapping {
    kind: VolumeCurveKind,
    min: i64,
    /// Spotify volume of each table entry, strictly increasing.
    table: Vec<u16>,
    /// Raw steps of the control. More than the table's entries (at most 65536) when the control
    /// is finer than Spotify's scale: the table then samples the range evenly, ends included.
    steps: usize,
}

/// Spotify's full scale.
pub const MAX_VOLUME: u16 = u16::MAX;

impl VolumeMapping {
    /// Builds the table. Controls with more than 65536 steps (a PipeWire or PulseAudio
    /// "Master" is 0..=65536) cannot be strictly increasing on Spotify's scale: the table samples
    /// 65536 of their steps evenly, the lowest and the highest included, so the top stays
    /// reachable and reading a sampled step back selects that very step.
    pub fn new(kind: VolumeCurveKind, range_db: f64, control: &ControlRange) -> Self {
        let control_steps = control.steps().max(1);
        let steps = control_steps.min(usize::from(MAX_VOLUME) + 1);
        let range_db = if range_db.is_finite() && range_db > 0.0 {
            range_db
        } else {
            60.0
        };
        let position = |i: usize| -> f64 {
            if steps == 1 {
                return 1.0;
            }
            let i = sample_offset(i, steps, control_steps);
            let top = control_steps - 1;
            let linear = i as f64 / top as f64;
            match kind {
                VolumeCurveKind::Linear | VolumeCurveKind::Fixed => linear,
                VolumeCurveKind::Log | VolumeCurveKind::Cubic => {
                    let relative_db = match &control.db {
                        Some(db) => match (db.get(i), db.get(top)) {
                            (Some(at), Some(top)) if at.is_finite() => at - top,
                            _ => f64::NEG_INFINITY,
                        },
                        None => 20.0 * linear.log10(),
                    };
                    slider_for_db(kind, relative_db, range_db)
                }
            }
        };
        let mut table: Vec<u16> = (0..steps)
            .map(|i| (position(i).clamp(0.0, 1.0) * f64::from(MAX_VOLUME)).round() as u16)
            .collect();
        make_strictly_increasing(&mut table);
        Self {
            kind,
            min: control.min,
            table,
            steps: control_steps,
        }
    }

    pub fn kind(&self) -> VolumeCurveKind {
        self.kind
    }

    /// Spotify volume of a raw step (values outside the range are clamped).
    pub fn from_raw(&self, raw: i64) -> u16 {
        let offset = raw.saturating_sub(self.min).max(0);
        let offset = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.steps.saturating_sub(1));
        let index = table_index(offset, self.table.len(), self.steps);
        let last = self.table.len().saturating_sub(1);
        self.table.get(index.min(last)).copied().unwrap_or(0)
    }

    /// The raw step whose volume is nearest to `volume`.
    pub fn to_raw(&self, volume: u16) -> i64 {
        let index = match self.table.binary_search(&volume) {
            Ok(i) => i,
            Err(0) => 0,
            Err(i) if i >= self.table.len() => self.table.len().saturating_sub(1),
            Err(i) => {
                // Between two steps: the nearer one (ties go down, never louder than asked).
                let (below, above) = (self.table[i - 1], self.table[i]);
                if volume - below <= above - volume {
                    i - 1
                } else {
                    i
                }
            }
        };
        self.min + sample_offset(index, self.table.len(), self.steps) as i64
    }
}

/// Raw offset of table entry `index` when `entries` entries sample `steps` raw steps.
fn sample_offset(index: usize, entries: usize, steps: usize) -> usize {
    if entries >= steps || entries < 2 {
        return index;
    }
    let (index, entries, steps) = (index as u128, entries as u128, steps as u128);
    ((index * (steps - 1) + (entries - 1) / 2) / (entries - 1)) as usize
}

/// The table entry nearest to raw offset `offset` (the inverse of [`sample_offset`] on
/// sampled steps).
fn table_index(offset: usize, entries: usize, steps: usize) -> usize {
    if entries >= steps || entries < 2 {
        return offset;
    }
    let (offset, entries, steps) = (offset as u128, entries as u128, steps as u128);
    ((offset * (entries - 1) + (steps - 1) / 2) / (steps - 1)) as usize
}

/// Slider position (0..=1) at which a curve puts `relative_db` (≤ 0, relative to the top).
fn slider_for_db(kind: VolumeCurveKind, relative_db: f64, range_db: f64) -> f64 {
    if !relative_db.is_finite() {
        return 0.0;
    }
    match kind {
        VolumeCurveKind::Log => 1.0 + relative_db / range_db,
        VolumeCurveKind::Cubic => {
            // librespot's cubic curve: amplitude = (n·(1−m) + m)³ with m = cbrt(10^(−range/20)).
            let floor = 10f64.powf(-range_db / 20.0).cbrt();
            let amplitude = 10f64.powf(relative_db / 20.0);
            (amplitude.cbrt() - floor) / (1.0 - floor)
        }
        VolumeCurveKind::Linear | VolumeCurveKind::Fixed => 10f64.powf(relative_db / 20.0),
    }
}

/// Makes the table strictly increasing with its ends at 0 and 65535, moving values as little as
/// possible: steps the curve puts on the same slider value (e.g. everything below the dB range)
/// are spread one apart. Needs at most 65536 entries.
fn make_strictly_increasing(table: &mut [u16]) {
    let Some(last) = table.len().checked_sub(1) else {
        return;
    };
    if last == 0 {
        table[0] = MAX_VOLUME;
        return;
    }
    table[0] = 0;
    table[last] = MAX_VOLUME;
    for i in 1..=last {
        let floor = table[i - 1].saturating_add(1);
        if table[i] < floor {
            table[i] = floor;
        }
    }
    for i in (0..last).rev() {
        let ceiling = table[i + 1].saturating_sub(1);
        if table[i] > ceiling {
            table[i] = ceiling;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [VolumeCurveKind; 4] = [
        VolumeCurveKind::Log,
        VolumeCurveKind::Cubic,
        VolumeCurveKind::Linear,
        VolumeCurveKind::Fixed,
    ];

    /// Control shapes seen on real hardware.
    fn controls() -> Vec<(&'static str, ControlRange)> {
        vec![
            (
                "0..=255 without dB",
                ControlRange {
                    min: 0,
                    max: 255,
                    db: None,
                },
            ),
            (
                // PCM512x "Digital": 0.5 dB steps, -103.5 dB .. 0 dB.
                "pcm512x 0..=207",
                ControlRange {
                    min: 0,
                    max: 207,
                    db: Some((0..=207).map(|r| -103.5 + 0.5 * f64::from(r)).collect()),
                },
            ),
            (
                // USB audio: 1 dB steps -37..0 with a mute bottom step.
                "usb 0..=37 mute bottom",
                ControlRange {
                    min: 0,
                    max: 37,
                    db: Some(
                        (0..=37)
                            .map(|r| {
                                if r == 0 {
                                    f64::NEG_INFINITY
                                } else {
                                    f64::from(r) - 37.0
                                }
                            })
                            .collect(),
                    ),
                },
            ),
            (
                "bcm2835 -10239..=400",
                ControlRange {
                    min: -10239,
                    max: 400,
                    db: Some((-10239..=400).map(|r| f64::from(r) / 100.0).collect()),
                },
            ),
            (
                "single step",
                ControlRange {
                    min: 5,
                    max: 5,
                    db: None,
                },
            ),
            (
                "two steps",
                ControlRange {
                    min: 0,
                    max: 1,
                    db: Some(vec![-6.0, 0.0]),
                },
            ),
        ]
    }

    #[test]
    fn every_curve_is_strictly_monotonic_with_exact_ends_and_exact_round_trips() {
        for kind in KINDS {
            for (name, control) in controls() {
                let m = VolumeMapping::new(kind, 60.0, &control);
                assert_eq!(m.to_raw(MAX_VOLUME), control.max, "{kind:?} {name}: max");
                assert_eq!(m.from_raw(control.max), MAX_VOLUME, "{kind:?} {name}: max");
                if control.max > control.min {
                    assert_eq!(m.to_raw(0), control.min, "{kind:?} {name}: 0");
                    assert_eq!(m.from_raw(control.min), 0, "{kind:?} {name}: 0");
                }
                let mut previous = None;
                for raw in control.min..=control.max {
                    let v = m.from_raw(raw);
                    if let Some(p) = previous {
                        assert!(v > p, "{kind:?} {name}: not increasing at {raw}");
                    }
                    previous = Some(v);
                    assert_eq!(m.to_raw(v), raw, "{kind:?} {name}: round trip at {raw}");
                }
                // to_raw is monotonic over the whole slider.
                let mut last = i64::MIN;
                for v in (0..=MAX_VOLUME).step_by(97) {
                    let r = m.to_raw(v);
                    assert!(r >= last, "{kind:?} {name}: to_raw not monotonic at {v}");
                    last = r;
                }
            }
        }
    }

    /// Defect 4: a PipeWire/Pulse "Master" (0..=65536, 65537 steps) has its top reachable, and
    /// every sampled step reads back to itself, so a reconnect moves nothing.
    #[test]
    fn controls_finer_than_spotifys_scale_are_sampled_top_included() {
        for (min, max) in [(0i64, 65_536i64), (-200_000, 199_999)] {
            let control = ControlRange { min, max, db: None };
            for kind in [VolumeCurveKind::Log, VolumeCurveKind::Linear] {
                let m = VolumeMapping::new(kind, 60.0, &control);
                assert_eq!(m.to_raw(MAX_VOLUME), max, "{kind:?} {max}: top reachable");
                assert_eq!(
                    m.from_raw(max),
                    MAX_VOLUME,
                    "{kind:?} {max}: top reads as 100 %"
                );
                assert_eq!(m.to_raw(0), min);
                let mut last = None;
                for v in (0..=MAX_VOLUME)
                    .step_by(13)
                    .chain([MAX_VOLUME - 1, MAX_VOLUME])
                {
                    let raw = m.to_raw(v);
                    assert_eq!(
                        m.to_raw(m.from_raw(raw)),
                        raw,
                        "{kind:?}: round trip at {raw}"
                    );
                    if let Some(l) = last {
                        assert!(raw >= l, "{kind:?}: monotonic at {v}");
                    }
                    last = Some(raw);
                }
            }
        }
    }

    #[test]
    fn log_curve_puts_equal_db_at_equal_slider_steps() {
        let (_, pcm512x) = controls().swap_remove(1);
        let m = VolumeMapping::new(VolumeCurveKind::Log, 60.0, &pcm512x);
        // Half the slider = -30 dB = raw 147 (-103.5 + 0.5*147 = -30).
        assert_eq!(m.to_raw(MAX_VOLUME / 2), 147);
        // A quarter = -45 dB = raw 117.
        assert_eq!(m.to_raw(MAX_VOLUME / 4), 117);
    }

    #[test]
    fn linear_curve_is_raw_linear() {
        let m = VolumeMapping::new(
            VolumeCurveKind::Linear,
            60.0,
            &ControlRange {
                min: 0,
                max: 100,
                db: None,
            },
        );
        assert_eq!(m.to_raw(MAX_VOLUME / 2), 50);
        assert_eq!(m.from_raw(25), 16384);
    }

    #[test]
    fn cubic_curve_matches_librespots_shape() {
        // Half the slider on librespot's cubic curve with a 60 dB range is about -15.4 dB.
        let db: Vec<f64> = (0..=600).map(|r| -60.0 + 0.1 * f64::from(r)).collect();
        let m = VolumeMapping::new(
            VolumeCurveKind::Cubic,
            60.0,
            &ControlRange {
                min: 0,
                max: 600,
                db: Some(db),
            },
        );
        let raw_half = m.to_raw(MAX_VOLUME / 2);
        let db_half = -60.0 + 0.1 * raw_half as f64;
        assert!((db_half + 15.4).abs() < 0.3, "half slider at {db_half} dB");
    }
}
