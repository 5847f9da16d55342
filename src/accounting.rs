//! Energy and carbon of each request: pure arithmetic, no IO.
//!
//! The worker reads the energy meter at every request's start and end and
//! every `accounting.sample_interval` in between; each reading closes an
//! *interval*, whose energy (and machine time) [`Attribution`] divides among
//! the requests active in it in proportion to the tokens each processed in
//! it (a request's prompt counts in the interval where it starts: that is
//! when the engine reads it). Energy drawn while no request is active is
//! idle energy, counted apart.
//!
//! Carbon = energy x grid intensity (from `carbon`) + embodied carbon x the
//! request's share of machine time / the machine's lifetime (the Sprout
//! paper's formula). A receipt is `estimated` unless the meter measured.

use std::collections::HashMap;
use std::time::Instant;

use crate::config::AccountingConfig;
use crate::job::Receipt;

pub const SECONDS_PER_YEAR: f64 = 365.25 * 24.0 * 3600.0;

/// What one request was attributed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    pub energy_j: f64,
    /// Seconds of the machine (the embodied carbon's basis).
    pub machine_s: f64,
    /// Every interval of it was measured by a hardware counter.
    pub measured: bool,
}

impl Default for Share {
    fn default() -> Self {
        Self { energy_j: 0.0, machine_s: 0.0, measured: true }
    }
}

#[derive(Debug, Default)]
struct Active {
    /// Tokens processed since the last interval closed.
    tokens: f64,
    share: Share,
}

/// Divides each interval's energy among the active requests by tokens.
#[derive(Debug)]
pub struct Attribution {
    last: Instant,
    active: HashMap<String, Active>,
    /// Energy of intervals with no request active.
    pub idle_j: f64,
}

impl Attribution {
    pub fn new(now: Instant) -> Self {
        Self { last: now, active: HashMap::new(), idle_j: 0.0 }
    }

    /// Closes the interval that ends `now`, which used `energy_j` (`measured`
    /// or estimated). With no token processed in it (say, one long prefill
    /// still running before its first token), it is divided equally.
    pub fn close(&mut self, energy_j: f64, measured: bool, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        if self.active.is_empty() {
            self.idle_j += energy_j;
            return;
        }
        let total: f64 = self.active.values().map(|a| a.tokens).sum();
        let n = self.active.len() as f64;
        for a in self.active.values_mut() {
            let f = if total > 0.0 { a.tokens / total } else { 1.0 / n };
            a.share.energy_j += f * energy_j;
            a.share.machine_s += f * dt;
            a.share.measured &= measured;
            a.tokens = 0.0;
        }
    }

    /// A request becomes active (close the interval before it first); its
    /// prompt's tokens count in the interval now open.
    pub fn start(&mut self, id: &str, prompt_tokens: f64) {
        self.active.insert(id.to_string(), Active { tokens: prompt_tokens, share: Share::default() });
    }

    /// `id` processed `n` more tokens.
    pub fn tokens(&mut self, id: &str, n: f64) {
        if let Some(a) = self.active.get_mut(id) {
            a.tokens += n;
        }
    }

    /// `id` is no longer active (close the interval first); its share.
    pub fn finish(&mut self, id: &str) -> Share {
        self.active.remove(id).map(|a| a.share).unwrap_or_default()
    }

    pub fn in_flight(&self) -> usize {
        self.active.len()
    }
}

/// The hardware a request ran on, for its embodied carbon.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hardware {
    pub embodied_kgco2: f64,
    pub lifetime_years: f64,
}

impl From<&AccountingConfig> for Hardware {
    fn from(cfg: &AccountingConfig) -> Self {
        Self { embodied_kgco2: cfg.embodied_kgco2, lifetime_years: cfg.lifetime_years }
    }
}

/// The receipt for a request that was attributed `share` of the machine's
/// energy and time and took `duration_s` of wall time, at grid intensity
/// `intensity` (gCO2e/kWh). Its backend and zone are the caller's to fill.
pub fn receipt(
    cfg: Hardware,
    intensity: f64,
    directive: &str,
    job_id: &str,
    share: Share,
    duration_s: f64,
) -> Receipt {
    let energy_j = share.energy_j;
    let operational_g = energy_j / 3.6e6 * intensity;
    let embodied_g = cfg.embodied_kgco2 * 1000.0 * share.machine_s / (cfg.lifetime_years * SECONDS_PER_YEAR);
    Receipt {
        directive: directive.to_string(),
        job_id: job_id.to_string(),
        energy_j,
        carbon_g: operational_g + embodied_g,
        operational_g,
        embodied_g,
        intensity_gco2_per_kwh: intensity,
        duration_s,
        estimated: !share.measured,
        backend: String::new(),
        zone: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn intervals_are_divided_by_tokens() {
        let t0 = Instant::now();
        let s = |x: f64| t0 + Duration::from_secs_f64(x);
        let mut a = Attribution::new(t0);
        a.close(5.0, true, s(1.0)); // nobody active: idle
        a.start("a", 30.0); // a's prompt: 30 tokens
        a.tokens("a", 10.0);
        a.close(40.0, true, s(2.0)); // a alone: all 40 J
        a.start("b", 10.0);
        a.tokens("a", 5.0);
        a.tokens("b", 5.0); // a 5, b 15 tokens: 1/4 and 3/4
        a.close(100.0, true, s(4.0));
        a.close(12.0, true, s(5.0)); // no tokens in it: equal split
        let b = a.finish("b");
        a.tokens("a", 1.0);
        a.close(7.0, false, s(6.0)); // the meter failed: estimated
        assert!(b.measured);
        let aa = a.finish("a");
        assert!((aa.energy_j - (40.0 + 25.0 + 6.0 + 7.0)).abs() < 1e-9, "{aa:?}");
        assert!((b.energy_j - (75.0 + 6.0)).abs() < 1e-9, "{b:?}");
        assert!((aa.machine_s - (1.0 + 0.5 + 0.5 + 1.0)).abs() < 1e-9, "{aa:?}");
        assert!(!aa.measured);
        assert!((b.machine_s - (1.5 + 0.5)).abs() < 1e-9, "{b:?}");
        assert_eq!(a.idle_j, 5.0);
        assert_eq!(a.in_flight(), 0);
        // Nothing is lost or made up: the parts sum to the whole.
        assert!((aa.energy_j + b.energy_j + a.idle_j - (5.0 + 40.0 + 100.0 + 12.0 + 7.0)).abs() < 1e-9);
    }

    #[test]
    fn receipt_arithmetic() {
        let cfg = AccountingConfig {
            meter: crate::config::MeterKind::Estimate,
            rapl_root: "/nonexistent".into(),
            idle_w: 0.0,
            tdp_w: 100.0,
            sample_interval: Duration::from_secs(1),
            embodied_kgco2: 1000.0,
            lifetime_years: 5.0,
        };
        let share = Share { energy_j: 3600.0, machine_s: 36.0, measured: false };
        let r = receipt((&cfg).into(), 360.0, "L1", "job-1", share, 40.0);
        assert!((r.energy_j - 3600.0).abs() < 1e-9); // 1 Wh
        assert!((r.operational_g - 0.36).abs() < 1e-12); // 1 Wh at 360 g/kWh
        let embodied = 1e6 * 36.0 / (5.0 * SECONDS_PER_YEAR);
        assert!((r.embodied_g - embodied).abs() < 1e-12);
        assert!((r.carbon_g - (0.36 + embodied)).abs() < 1e-12);
        assert!(r.estimated);
        assert_eq!(r.duration_s, 40.0);
        assert!(!receipt((&cfg).into(), 360.0, "L1", "job-1", Share { measured: true, ..share }, 40.0).estimated);
    }
}
