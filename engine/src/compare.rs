//! How a result is compared with its reference everywhere in dsmoe (kernel tests, gradient checks):
//! the relative error by norm, ‖out − ref‖ / ‖ref‖. One number per tensor is robust to the few
//! elements near zero that make per-element relative errors meaningless, and a tolerance by dtype
//! (`DType::tolerance`) bounds it.

/// ‖out − ref‖ / ‖ref‖ (‖out − ref‖ when the reference is all zeros). Infinite when the lengths
/// differ or anything is NaN, so a broken or unwritten result can never pass a `<` check.
pub fn relative_error(out: &[f64], reference: &[f64]) -> f64 {
    if out.len() != reference.len() {
        return f64::INFINITY;
    }
    let diff: f64 = out.iter().zip(reference).map(|(o, r)| (o - r) * (o - r)).sum::<f64>().sqrt();
    let norm: f64 = reference.iter().map(|r| r * r).sum::<f64>().sqrt();
    let err = if norm > 0.0 { diff / norm } else { diff };
    if err.is_nan() {
        f64::INFINITY
    } else {
        err
    }
}

#[cfg(test)]
mod tests {
    use super::relative_error;

    #[test]
    fn relative_error_by_norm() {
        assert_eq!(relative_error(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((relative_error(&[3.0, 5.0], &[0.0, 5.0]) - 3.0 / 5.0).abs() < 1e-15);
        assert_eq!(relative_error(&[0.5], &[0.0]), 0.5);
        assert_eq!(relative_error(&[f64::NAN], &[1.0]), f64::INFINITY);
        assert_eq!(relative_error(&[1.0], &[1.0, 2.0]), f64::INFINITY);
    }
}
