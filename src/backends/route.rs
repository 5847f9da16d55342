//! Which backend a job goes to: pure arithmetic, no IO.
//!
//! Each backend's expected carbon per completion token is its energy per
//! token (measured by its receipts once it has answered, a prior before)
//! times its grid's intensity now, plus its embodied carbon for the machine
//! time a token takes. A job goes to the cheapest healthy backend with a
//! free slot, never waiting for a cleaner one that is full: latency comes
//! first here (deferral is the lever that waits for cleaner hours), so no
//! job waits longer than the busiest backend's next free slot. Ties go to
//! the backend listed first.

use crate::accounting::SECONDS_PER_YEAR;

/// One backend as the router sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// It has a free slot and an engine.
    pub room: bool,
    /// Not marked down after a failure.
    pub healthy: bool,
    pub j_per_token: f64,
    pub s_per_token: f64,
    pub gco2_per_kwh: f64,
    pub embodied_kgco2: f64,
    pub lifetime_years: f64,
}

impl Candidate {
    /// Expected grams CO2e per completion token now.
    pub fn grams_per_token(&self) -> f64 {
        let operational = self.j_per_token / 3.6e6 * self.gco2_per_kwh;
        let embodied = self.embodied_kgco2 * 1000.0 * self.s_per_token / (self.lifetime_years * SECONDS_PER_YEAR);
        operational + embodied
    }
}

/// The cheapest healthy candidate with room, by index.
pub fn choose(candidates: &[Candidate]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, c) in candidates.iter().enumerate() {
        if !(c.room && c.healthy) {
            continue;
        }
        let g = c.grams_per_token();
        if best.is_none_or(|(_, b)| g < b) {
            best = Some((i, g));
        }
    }
    best.map(|(i, _)| i)
}

/// A measured per-token figure, smoothed: the first measurement replaces the
/// prior, later ones move it by `ALPHA`.
pub fn smooth(current: Option<f64>, measured: f64) -> f64 {
    const ALPHA: f64 = 0.2;
    match current {
        Some(c) => c + ALPHA * (measured - c),
        None => measured,
    }
}

/// The wait before probing a backend that failed `failures` times in a
/// row: 1 s doubling to at most 60 s.
pub fn backoff(failures: u32) -> std::time::Duration {
    std::time::Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(std::time::Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(j: f64, ci: f64) -> Candidate {
        Candidate { room: true, healthy: true, j_per_token: j, s_per_token: 0.05, gco2_per_kwh: ci, embodied_kgco2: 0.0, lifetime_years: 5.0 }
    }

    #[test]
    fn the_cheapest_healthy_backend_with_room_wins() {
        // 2 J/token at 100 g/kWh beats 1 J/token at 300.
        assert_eq!(choose(&[c(1.0, 300.0), c(2.0, 100.0)]), Some(1));
        // Full or down: the next cheapest.
        assert_eq!(choose(&[c(1.0, 300.0), Candidate { room: false, ..c(2.0, 100.0) }]), Some(0));
        assert_eq!(choose(&[Candidate { healthy: false, ..c(1.0, 300.0) }, Candidate { room: false, ..c(2.0, 100.0) }]), None);
        // Ties: the first listed.
        assert_eq!(choose(&[c(1.0, 100.0), c(1.0, 100.0)]), Some(0));
        // Embodied carbon counts: a clean grid on a machine with a heavy footprint and slow tokens.
        let heavy = Candidate { embodied_kgco2: 5000.0, s_per_token: 1.0, ..c(1.0, 10.0) };
        assert!(heavy.grams_per_token() > c(1.0, 300.0).grams_per_token());
        assert_eq!(choose(&[heavy, c(1.0, 300.0)]), Some(1));
    }

    #[test]
    fn measurements_replace_the_prior_then_move_it_smoothly_and_backoff_is_capped() {
        assert_eq!(smooth(None, 3.0), 3.0);
        assert!((smooth(Some(3.0), 4.0) - 3.2).abs() < 1e-12);
        assert_eq!(backoff(1).as_secs(), 1);
        assert_eq!(backoff(3).as_secs(), 4);
        assert_eq!(backoff(30).as_secs(), 60);
    }
}
