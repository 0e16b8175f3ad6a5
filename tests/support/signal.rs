//! Comparing audio signals, for the cast tests and the image boot test's capture check.

#![allow(dead_code)]

/// Normalized cross-correlation of `a` with `b` (over the shorter of the two): 1.0 for the same
/// shape at any gain, about 0 for unrelated signals, 0 if either is silent.
pub fn ncc(a: &[f64], b: &[f64]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa * bb).sqrt()
    }
}
