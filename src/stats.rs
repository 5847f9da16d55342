//! Totals over ledger records, and the savings of the directives against
//! serving every request at the baseline level. Pure: records in, numbers out.
//!
//! Savings use the counterfactual of the method: what a request served at a
//! shorter level would have cost at the baseline level, from the running mean
//! energy and embodied carbon of baseline requests, at the grid intensity the
//! request actually met. Only succeeded requests feed the means.
//!
//! The daemon's own work (evaluation runs, which answer every prompt at every
//! level on purpose) is emitted carbon like any other and counts in the
//! totals, but it is kept apart from users' requests: it neither moves the
//! directive mix and per-level means nor counts as a saving.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::{JobState, LedgerEntry, Origin};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LevelTotals {
    pub requests: u64,
    pub succeeded: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub energy_j: f64,
    pub operational_g: f64,
    pub embodied_g: f64,
    pub carbon_g: f64,
    pub duration_s: f64,
    /// Over succeeded requests only (the means' inputs).
    #[serde(skip)]
    ok_energy_j: f64,
    #[serde(skip)]
    ok_embodied_g: f64,
    #[serde(skip)]
    ok_carbon_g: f64,
    #[serde(skip)]
    ok_intensity_sum: f64,
    #[serde(skip)]
    ok_completion_tokens: u64,
    #[serde(skip)]
    ok_duration_s: f64,
}

impl LevelTotals {
    fn sum<'a>(parts: impl IntoIterator<Item = &'a LevelTotals>) -> LevelTotals {
        let mut t = LevelTotals::default();
        for l in parts {
            t.requests += l.requests;
            t.succeeded += l.succeeded;
            t.prompt_tokens += l.prompt_tokens;
            t.completion_tokens += l.completion_tokens;
            t.energy_j += l.energy_j;
            t.operational_g += l.operational_g;
            t.embodied_g += l.embodied_g;
            t.carbon_g += l.carbon_g;
            t.duration_s += l.duration_s;
            t.ok_energy_j += l.ok_energy_j;
            t.ok_embodied_g += l.ok_embodied_g;
            t.ok_carbon_g += l.ok_carbon_g;
            t.ok_intensity_sum += l.ok_intensity_sum;
            t.ok_completion_tokens += l.ok_completion_tokens;
            t.ok_duration_s += l.ok_duration_s;
        }
        t
    }

    fn add(&mut self, e: &LedgerEntry) {
        self.requests += 1;
        self.prompt_tokens += e.prompt_tokens as u64;
        self.completion_tokens += e.completion_tokens as u64;
        self.energy_j += e.energy_j;
        self.operational_g += e.operational_g;
        self.embodied_g += e.embodied_g;
        self.carbon_g += e.carbon_g;
        self.duration_s += e.duration_s;
        if e.state == JobState::Succeeded {
            self.succeeded += 1;
            self.ok_energy_j += e.energy_j;
            self.ok_embodied_g += e.embodied_g;
            self.ok_carbon_g += e.carbon_g;
            self.ok_intensity_sum += e.intensity_gco2_per_kwh;
            self.ok_completion_tokens += e.completion_tokens as u64;
            self.ok_duration_s += e.duration_s;
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Users' requests (chat and jobs) by directive level.
    pub by_level: BTreeMap<String, LevelTotals>,
    /// The daemon's own work by directive level.
    pub own_by_level: BTreeMap<String, LevelTotals>,
    pub estimated: u64,
    pub measured: u64,
    /// Jobs that were held for a low-carbon hour, and what that saved, gCO2e.
    pub deferred_jobs: u64,
    pub deferral_saving_g: f64,
}

impl Totals {
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a LedgerEntry>) -> Totals {
        let mut t = Totals::default();
        for e in entries {
            t.add(e);
        }
        t
    }

    pub fn add(&mut self, e: &LedgerEntry) {
        let by_level = if e.origin == Origin::Daemon { &mut self.own_by_level } else { &mut self.by_level };
        by_level.entry(e.directive.clone()).or_default().add(e);
        if e.deferred {
            self.deferred_jobs += 1;
            self.deferral_saving_g += e.deferral_saving_g;
        }
        if e.estimated {
            self.estimated += 1;
        } else {
            self.measured += 1;
        }
    }

    /// Every record, users' and the daemon's own.
    pub fn all(&self) -> impl Iterator<Item = &LevelTotals> {
        self.by_level.values().chain(self.own_by_level.values())
    }

    /// Records of users' requests.
    pub fn user_requests(&self) -> u64 {
        self.by_level.values().map(|l| l.requests).sum()
    }

    /// All records, users' and the daemon's own.
    pub fn requests(&self) -> u64 {
        self.all().map(|l| l.requests).sum()
    }

    /// All emitted carbon, users' requests and the daemon's own work.
    pub fn carbon_g(&self) -> f64 {
        self.all().map(|l| l.carbon_g).sum()
    }

    /// The daemon's own work summed over levels.
    pub fn own(&self) -> LevelTotals {
        LevelTotals::sum(self.own_by_level.values())
    }

    /// Everything summed over levels and origins.
    pub fn overall(&self) -> LevelTotals {
        LevelTotals::sum(self.all())
    }

    /// Grams saved against serving every succeeded user request at `baseline`;
    /// `None` until a baseline request has succeeded (no counterfactual yet).
    pub fn savings_g(&self, baseline: &str) -> Option<f64> {
        let b = self.by_level.get(baseline).filter(|b| b.succeeded > 0)?;
        let (e0, emb0) = (b.ok_energy_j / b.succeeded as f64, b.ok_embodied_g / b.succeeded as f64);
        Some(
            self.by_level
                .iter()
                .filter(|(name, _)| name.as_str() != baseline)
                .map(|(_, l)| e0 / 3.6e6 * l.ok_intensity_sum + emb0 * l.succeeded as f64 - l.ok_carbon_g)
                .sum(),
        )
    }

    /// Per level, over users' requests: share of requests, and means over
    /// succeeded requests.
    pub fn per_level(&self) -> BTreeMap<String, LevelStats> {
        let total = self.user_requests().max(1) as f64;
        self.by_level
            .iter()
            .map(|(name, l)| {
                let n = l.succeeded.max(1) as f64;
                let stats = LevelStats {
                    totals: l.clone(),
                    share: l.requests as f64 / total,
                    mean_completion_tokens: l.ok_completion_tokens as f64 / n,
                    mean_energy_j: l.ok_energy_j / n,
                    mean_duration_s: l.ok_duration_s / n,
                    mean_carbon_g: l.ok_carbon_g / n,
                };
                (name.clone(), stats)
            })
            .collect()
    }
}

/// One level of users' requests, as `GET /v1/stats` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelStats {
    pub totals: LevelTotals,
    /// Share of users' requests at this level.
    pub share: f64,
    /// Means over succeeded requests.
    pub mean_completion_tokens: f64,
    pub mean_energy_j: f64,
    pub mean_duration_s: f64,
    pub mean_carbon_g: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(level: &str, state: JobState, energy_j: f64, intensity: f64, embodied_g: f64, tokens: usize) -> LedgerEntry {
        let operational_g = energy_j / 3.6e6 * intensity;
        LedgerEntry {
            state,
            prompt_tokens: 10,
            completion_tokens: tokens,
            intensity_gco2_per_kwh: intensity,
            operational_g,
            embodied_g,
            carbon_g: operational_g + embodied_g,
            ..crate::testing::ledger_entry(level, "question", energy_j)
        }
    }

    #[test]
    fn histograms_are_cumulative_and_end_at_the_count() {
        let mut h = Histogram::new(&[1.0, 2.0, 5.0]);
        for v in [0.5, 1.0, 1.5, 7.0, f64::NAN] {
            h.observe(v);
        }
        let b = h.buckets();
        assert_eq!(b, [("1".to_string(), 2), ("2".into(), 3), ("5".into(), 3), ("+Inf".into(), 4)]);
        assert_eq!((h.sum, h.count), (10.0, 4));
        let mut l = Latencies::default();
        l.observe(&RequestTimes { started_s: 0.2, first_token_s: Some(0.5), finished_s: 2.5, prompt_tokens: 10, completion_tokens: 5 });
        l.observe(&RequestTimes { started_s: 1.0, first_token_s: None, finished_s: 1.0, prompt_tokens: 10, completion_tokens: 0 });
        assert_eq!((l.request_s.count, l.time_to_first_token_s.count, l.time_per_output_token_s.count), (2, 1, 1));
        assert_eq!(l.time_per_output_token_s.sum, 0.5);
        assert_eq!(l.completion_tokens.sum, 5.0);
    }

    #[test]
    fn totals_and_savings_against_the_baseline() {
        let entries = [
            // Baseline: 3600 J (1 Wh) and 0.1 g embodied per request on average.
            entry("L0", JobState::Succeeded, 3000.0, 100.0, 0.08, 200),
            entry("L0", JobState::Succeeded, 4200.0, 300.0, 0.12, 300),
            // A shorter answer at 400 g/kWh: counterfactual 1 Wh x 400 + 0.1 = 0.5 g.
            entry("L2", JobState::Succeeded, 720.0, 400.0, 0.02, 20),
            // Cancelled: counted in totals, not in means or savings.
            entry("L2", JobState::Cancelled, 100.0, 400.0, 0.01, 0),
        ];
        let t = Totals::from_entries(&entries);
        assert_eq!(t.requests(), 4);
        assert_eq!(t.estimated, 4);
        let l2 = &t.by_level["L2"];
        assert_eq!((l2.requests, l2.succeeded, l2.completion_tokens), (2, 1, 20));
        let actual_l2 = 720.0 / 3.6e6 * 400.0 + 0.02;
        let saved = t.savings_g("L0").unwrap();
        assert!((saved - (0.5 - actual_l2)).abs() < 1e-12, "{saved}");
        let total: f64 = entries.iter().map(|e| e.carbon_g).sum();
        assert!((t.carbon_g() - total).abs() < 1e-12);
        let per = t.per_level();
        assert_eq!(per["L0"].mean_completion_tokens, 250.0);
        assert_eq!(per["L2"].share, 0.5);
    }

    #[test]
    fn the_daemons_own_work_counts_as_emitted_but_not_in_the_mix_or_savings() {
        let user = [entry("L0", JobState::Succeeded, 3600.0, 100.0, 0.1, 200), entry("L2", JobState::Succeeded, 360.0, 100.0, 0.01, 20)];
        let mut own = [entry("L0", JobState::Succeeded, 3600.0, 100.0, 0.1, 200), entry("L1", JobState::Succeeded, 1800.0, 100.0, 0.05, 90)];
        for e in &mut own {
            e.origin = Origin::Daemon;
        }
        let users_only = Totals::from_entries(&user);
        let t = Totals::from_entries(user.iter().chain(&own));
        assert_eq!((t.requests(), t.user_requests()), (4, 2));
        let all: f64 = user.iter().chain(&own).map(|e| e.carbon_g).sum();
        assert!((t.carbon_g() - all).abs() < 1e-12);
        assert_eq!(t.own().requests, 2);
        assert!((t.own().carbon_g - own.iter().map(|e| e.carbon_g).sum::<f64>()).abs() < 1e-12);
        // The evaluator's L1 answer is no saving, and the mix and means are the users'.
        assert_eq!(t.savings_g("L0"), users_only.savings_g("L0"));
        assert_eq!(t.per_level(), users_only.per_level());
        assert!(!t.per_level().contains_key("L1"));
    }

    #[test]
    fn no_baseline_no_savings() {
        let t = Totals::from_entries(&[entry("L1", JobState::Succeeded, 1.0, 1.0, 0.0, 1)]);
        assert_eq!(t.savings_g("L0"), None);
    }
}

/// A Prometheus histogram: cumulative counts per upper bound, the sum and
/// the count. Pure; `/metrics` renders it.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub bounds: &'static [f64],
    /// Observations at or below each bound (not yet cumulative).
    counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    pub fn observe(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// `(le, cumulative count)` per bound, then `+Inf` with the count.
    pub fn buckets(&self) -> Vec<(String, u64)> {
        let mut acc = 0;
        let mut out: Vec<(String, u64)> = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(b, c)| {
                acc += c;
                (format!("{b}"), acc)
            })
            .collect();
        out.push(("+Inf".into(), self.count));
        out
    }
}

/// Seconds, from a tenth of a second to an hour (answers on CPU take seconds
/// to minutes; a queue can hold a job for long).
pub const SECONDS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 600.0, 1200.0, 3600.0];
/// Seconds per generated token.
pub const TOKEN_SECONDS: &[f64] = &[0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0];
/// Tokens per request.
pub const TOKENS: &[f64] = &[1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0];

/// The latency and size of succeeded requests since start, as vLLM and
/// llama.cpp's server report them, for one origin (users' or the daemon's own).
#[derive(Debug, Clone, PartialEq)]
pub struct Latencies {
    /// From when the job could run (submitted, or its deferral's end) to the engine.
    pub queue_wait_s: Histogram,
    /// From when the job could run to its first token.
    pub time_to_first_token_s: Histogram,
    /// From when the job could run to its last token.
    pub request_s: Histogram,
    /// Between tokens after the first.
    pub time_per_output_token_s: Histogram,
    pub prompt_tokens: Histogram,
    pub completion_tokens: Histogram,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            queue_wait_s: Histogram::new(SECONDS),
            time_to_first_token_s: Histogram::new(SECONDS),
            request_s: Histogram::new(SECONDS),
            time_per_output_token_s: Histogram::new(TOKEN_SECONDS),
            prompt_tokens: Histogram::new(TOKENS),
            completion_tokens: Histogram::new(TOKENS),
        }
    }
}

/// One succeeded request's times (seconds from when it could run) and sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestTimes {
    pub started_s: f64,
    /// `None` when it produced no token.
    pub first_token_s: Option<f64>,
    pub finished_s: f64,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl Latencies {
    pub fn observe(&mut self, t: &RequestTimes) {
        self.queue_wait_s.observe(t.started_s.max(0.0));
        if let Some(first) = t.first_token_s {
            self.time_to_first_token_s.observe(first.max(0.0));
            if t.completion_tokens > 1 {
                self.time_per_output_token_s.observe((t.finished_s - first).max(0.0) / (t.completion_tokens - 1) as f64);
            }
        }
        self.request_s.observe(t.finished_s.max(0.0));
        self.prompt_tokens.observe(t.prompt_tokens as f64);
        self.completion_tokens.observe(t.completion_tokens as f64);
    }
}
