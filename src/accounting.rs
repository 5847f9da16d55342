//! Energy and carbon of each request: pure arithmetic, no IO.
//!
//! Until real meters land, energy is *estimated*: the machine draws
//! `power_w` while the engine works, and each moment's energy is split
//! equally among the requests in flight at that moment ([`EnergyShare`]).
//! Carbon = energy x grid intensity (from `carbon`) + embodied carbon x the request's share
//! of machine time / the machine's lifetime (the Sprout paper's formula).
//! Every receipt built here says `estimated: true`.

use std::collections::HashMap;
use std::time::Instant;

use crate::config::RawAccounting;
use crate::job::Receipt;

const SECONDS_PER_YEAR: f64 = 365.25 * 24.0 * 3600.0;

/// Splits machine time among concurrent requests.
#[derive(Debug)]
pub struct EnergyShare {
    last: Instant,
    /// Request id → machine seconds attributed so far.
    active: HashMap<String, f64>,
}

impl EnergyShare {
    pub fn new(now: Instant) -> Self {
        Self { last: now, active: HashMap::new() }
    }

    fn advance(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        if !self.active.is_empty() {
            let each = dt / self.active.len() as f64;
            for s in self.active.values_mut() {
                *s += each;
            }
        }
    }

    pub fn start(&mut self, id: &str, now: Instant) {
        self.advance(now);
        self.active.insert(id.to_string(), 0.0);
    }

    /// Ends `id`'s interval; returns its share of machine seconds.
    pub fn finish(&mut self, id: &str, now: Instant) -> f64 {
        self.advance(now);
        self.active.remove(id).unwrap_or(0.0)
    }

    pub fn in_flight(&self) -> usize {
        self.active.len()
    }
}

/// The receipt for a request that was attributed `machine_s` seconds of the
/// machine and took `duration_s` of wall time, at grid intensity `intensity`
/// (gCO2e/kWh).
pub fn receipt(
    cfg: &RawAccounting,
    intensity: f64,
    directive: &str,
    job_id: &str,
    machine_s: f64,
    duration_s: f64,
) -> Receipt {
    let energy_j = cfg.power_w * machine_s;
    let operational_g = energy_j / 3.6e6 * intensity;
    let embodied_g = cfg.embodied_kgco2 * 1000.0 * machine_s / (cfg.lifetime_years * SECONDS_PER_YEAR);
    Receipt {
        directive: directive.to_string(),
        job_id: job_id.to_string(),
        energy_j,
        carbon_g: operational_g + embodied_g,
        operational_g,
        embodied_g,
        intensity_gco2_per_kwh: intensity,
        duration_s,
        estimated: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn overlapping_requests_share_the_machine() {
        let t0 = Instant::now();
        let s = |x: f64| t0 + Duration::from_secs_f64(x);
        let mut e = EnergyShare::new(t0);
        e.start("a", s(0.0));
        e.start("b", s(2.0)); // a alone for 2 s
        let b = e.finish("b", s(4.0)); // both for 2 s: 1 s each
        let a = e.finish("a", s(5.0)); // a alone for 1 s
        assert!((a - 4.0).abs() < 1e-9, "{a}");
        assert!((b - 1.0).abs() < 1e-9, "{b}");
        assert_eq!(e.in_flight(), 0);
    }

    #[test]
    fn receipt_arithmetic() {
        let cfg = RawAccounting { power_w: 100.0, embodied_kgco2: 1000.0, lifetime_years: 5.0 };
        let r = receipt(&cfg, 360.0, "L1", "job-1", 36.0, 40.0);
        assert!((r.energy_j - 3600.0).abs() < 1e-9); // 1 Wh
        assert!((r.operational_g - 0.36).abs() < 1e-12); // 1 Wh at 360 g/kWh
        let embodied = 1e6 * 36.0 / (5.0 * SECONDS_PER_YEAR);
        assert!((r.embodied_g - embodied).abs() < 1e-12);
        assert!((r.carbon_g - (0.36 + embodied)).abs() < 1e-12);
        assert!(r.estimated);
        assert_eq!(r.duration_s, 40.0);
    }
}
