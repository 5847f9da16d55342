//! Totals over ledger records, and the savings of the directives against
//! serving every request at the baseline level. Pure: records in, numbers out.
//!
//! Savings use the counterfactual of the method: what a request served at a
//! shorter level would have cost at the baseline level, from the running mean
//! energy and embodied carbon of baseline requests, at the grid intensity the
//! request actually met. Only succeeded requests feed the means.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::job::{JobState, LedgerEntry};

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
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

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub by_level: BTreeMap<String, LevelTotals>,
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
        let l = self.by_level.entry(e.directive.clone()).or_default();
        l.requests += 1;
        l.prompt_tokens += e.prompt_tokens as u64;
        l.completion_tokens += e.completion_tokens as u64;
        l.energy_j += e.energy_j;
        l.operational_g += e.operational_g;
        l.embodied_g += e.embodied_g;
        l.carbon_g += e.carbon_g;
        l.duration_s += e.duration_s;
        if e.state == JobState::Succeeded {
            l.succeeded += 1;
            l.ok_energy_j += e.energy_j;
            l.ok_embodied_g += e.embodied_g;
            l.ok_carbon_g += e.carbon_g;
            l.ok_intensity_sum += e.intensity_gco2_per_kwh;
            l.ok_completion_tokens += e.completion_tokens as u64;
            l.ok_duration_s += e.duration_s;
        }
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

    pub fn requests(&self) -> u64 {
        self.by_level.values().map(|l| l.requests).sum()
    }

    pub fn carbon_g(&self) -> f64 {
        self.by_level.values().map(|l| l.carbon_g).sum()
    }

    /// Grams saved against serving every succeeded request at `baseline`;
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

    /// Per level: share of requests, and means over succeeded requests.
    pub fn per_level_json(&self) -> serde_json::Value {
        let total = self.requests().max(1) as f64;
        let mut out = serde_json::Map::new();
        for (name, l) in &self.by_level {
            let n = l.succeeded.max(1) as f64;
            out.insert(
                name.clone(),
                serde_json::json!({
                    "totals": l,
                    "share": l.requests as f64 / total,
                    "mean_completion_tokens": l.ok_completion_tokens as f64 / n,
                    "mean_energy_j": l.ok_energy_j / n,
                    "mean_duration_s": l.ok_duration_s / n,
                    "mean_carbon_g": l.ok_carbon_g / n,
                }),
            );
        }
        serde_json::Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Origin;

    fn entry(level: &str, state: JobState, energy_j: f64, intensity: f64, embodied_g: f64, tokens: usize) -> LedgerEntry {
        let operational_g = energy_j / 3.6e6 * intensity;
        LedgerEntry {
            job_id: "j".into(),
            origin: Origin::Job,
            state,
            finished_ms: 0,
            directive: level.into(),
            prompt_tokens: 10,
            completion_tokens: tokens,
            duration_s: 1.0,
            energy_j,
            intensity_gco2_per_kwh: intensity,
            operational_g,
            embodied_g,
            carbon_g: operational_g + embodied_g,
            estimated: true,
            class: "question".into(),
            deferral_saving_g: 0.0,
            deferred: false,
        }
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
        let per = t.per_level_json();
        assert_eq!(per["L0"]["mean_completion_tokens"], 250.0);
        assert_eq!(per["L2"]["share"], 0.5);
    }

    #[test]
    fn no_baseline_no_savings() {
        let t = Totals::from_entries(&[entry("L1", JobState::Succeeded, 1.0, 1.0, 0.0, 1)]);
        assert_eq!(t.savings_g("L0"), None);
    }
}
