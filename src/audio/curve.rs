//! Volume curves: how Spotify's 0..=65535 slider maps onto a mixer control.

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
