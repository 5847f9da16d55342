//! `sproutctl backends calibrate`: joules per prompt token and per
//! completion token of an upstream, measured against its energy counter, for
//! a backend whose receipts will be estimated from them.
//!
//! Requests of different shapes (long prompt and short answer, short prompt
//! and long answer) are sent one at a time; each one's energy is the
//! counter's increase over it, idle power included (as a metered backend
//! attributes it). The two figures are the non-negative least-squares fit
//! of `energy = a x prompt tokens + b x completion tokens` (pure, here).

/// One measured request: prompt tokens, completion tokens, joules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub prompt: f64,
    pub completion: f64,
    pub joules: f64,
}

/// `(a, b)`: joules per prompt and per completion token, both >= 0, and the
/// fit's R² (1 − residual / total sum of squares, about the origin).
pub fn fit(samples: &[Sample]) -> Option<(f64, f64, f64)> {
    if samples.len() < 2 {
        return None;
    }
    let (mut pp, mut pc, mut cc, mut pe, mut ce) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for s in samples {
        pp += s.prompt * s.prompt;
        pc += s.prompt * s.completion;
        cc += s.completion * s.completion;
        pe += s.prompt * s.joules;
        ce += s.completion * s.joules;
    }
    let det = pp * cc - pc * pc;
    let (mut a, mut b) = if det.abs() > 1e-9 * (pp * cc).max(1e-12) {
        ((pe * cc - ce * pc) / det, (ce * pp - pe * pc) / det)
    } else {
        (-1.0, -1.0)
    };
    // A negative coefficient: the best fit with it held at 0.
    if a < 0.0 || b < 0.0 {
        let only_b = if cc > 0.0 { (ce / cc).max(0.0) } else { 0.0 };
        let only_a = if pp > 0.0 { (pe / pp).max(0.0) } else { 0.0 };
        let sse = |a: f64, b: f64| samples.iter().map(|s| (s.joules - a * s.prompt - b * s.completion).powi(2)).sum::<f64>();
        (a, b) = if sse(0.0, only_b) <= sse(only_a, 0.0) { (0.0, only_b) } else { (only_a, 0.0) };
    }
    let total: f64 = samples.iter().map(|s| s.joules * s.joules).sum();
    let resid: f64 = samples.iter().map(|s| (s.joules - a * s.prompt - b * s.completion).powi(2)).sum();
    Some((a, b, if total > 0.0 { 1.0 - resid / total } else { 0.0 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fit_recovers_per_token_costs_and_stays_non_negative() {
        let s = |p: f64, c: f64| Sample { prompt: p, completion: c, joules: 0.05 * p + 1.5 * c };
        let (a, b, r2) = fit(&[s(500.0, 10.0), s(20.0, 200.0), s(100.0, 100.0)]).unwrap();
        assert!((a - 0.05).abs() < 1e-9 && (b - 1.5).abs() < 1e-9 && (r2 - 1.0).abs() < 1e-12, "{a} {b} {r2}");
        // Energy that falls as prompts grow would need a < 0: held at 0.
        let odd = [Sample { prompt: 100.0, completion: 10.0, joules: 5.0 }, Sample { prompt: 10.0, completion: 10.0, joules: 20.0 }];
        let (a, b, _) = fit(&odd).unwrap();
        assert!(a == 0.0 && b > 0.0, "{a} {b}");
        assert!(fit(&odd[..1]).is_none());
    }
}
