//! When evaluation runs (pure): which sampled prompts, the evaluator's
//! bounded share of the engine, and the low-carbon hour it waits for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use super::PromptSample;
use crate::carbon::Reading;

/// The evaluator's live state (in memory, no IO): one run at a time, and
/// the scheduler's last word for `eval status`.
#[derive(Default)]
pub struct EvalState {
    running: AtomicBool,
    last_schedule: Mutex<Option<Schedule>>,
}

impl EvalState {
    pub fn running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Marks a run as started; false when one already runs.
    pub fn try_start(&self) -> bool {
        !self.running.swap(true, Ordering::SeqCst)
    }

    /// Marks the run as over (however it ended).
    pub fn finished(&self) {
        self.running.store(false, Ordering::SeqCst);
    }

    pub fn last_schedule(&self) -> Option<Schedule> {
        self.last_schedule.lock().expect("poisoned").clone()
    }

    pub fn set_schedule(&self, plan: Schedule) {
        *self.last_schedule.lock().expect("poisoned") = Some(plan);
    }
}

/// Up to `per_class` distinct prompts of each class, in the order given (a
/// shuffle): a prompt asked twice is one sample, not two.
pub fn stratify(samples: Vec<PromptSample>, per_class: usize) -> Vec<PromptSample> {
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    let mut seen = std::collections::HashSet::new();
    samples
        .into_iter()
        .filter(|s| {
            if !seen.insert(s.text.clone()) {
                return false;
            }
            let c = counts.entry(s.class.clone()).or_default();
            *c += 1;
            *c <= per_class
        })
        .collect()
}

/// The engine time users' and the daemon's own jobs had, decayed so that
/// the last [`SHARE_WINDOW_S`] count most: how the evaluator gets a bounded
/// share of the engine while users keep it busy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineShare {
    pub user_s: f64,
    pub daemon_s: f64,
    /// The daemon's jobs in the engine now.
    pub daemon_running: usize,
}

/// The time constant of [`EngineShare`]'s decay.
pub const SHARE_WINDOW_S: f64 = 600.0;

impl EngineShare {
    /// Ages both sums by `dt_s` seconds.
    pub fn decay(&mut self, dt_s: f64) {
        let f = (-dt_s.max(0.0) / SHARE_WINDOW_S).exp();
        self.user_s *= f;
        self.daemon_s *= f;
    }

    /// A job ran `secs` of engine time.
    pub fn add(&mut self, daemon: bool, secs: f64) {
        if daemon {
            self.daemon_s += secs;
        } else {
            self.user_s += secs;
        }
    }

    /// Whether the daemon's next job goes before queued users' jobs: none
    /// of its jobs is in the engine and it has had at most `share` of the
    /// recent engine time.
    pub fn daemon_turn(&self, share: f64) -> bool {
        share > 0.0 && self.daemon_running == 0 && self.daemon_s <= share * (self.user_s + self.daemon_s)
    }
}

/// How far ahead the scheduler looks for a cleaner hour.
pub const LOOKAHEAD_S: i64 = 24 * 3600;

/// Whether to run an evaluation now, and if not, when.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Schedule {
    pub run: bool,
    /// Unix seconds of the next planned run, and the intensity forecast then.
    pub next_at: i64,
    pub next_gco2_per_kwh: f64,
    pub reason: String,
}

/// Sprout's rule: never within `min_interval_s` of the last run; always once
/// `max_staleness_s` has passed; otherwise when the intensity now is (a) low
/// for the grid, its place in `[ci_min, ci_max]` at most the share of
/// `max_staleness` already passed (the method's staleness-weighted bar), and
/// (b) within `tolerance` (e.g. 0.05) of the lowest the forecast shows over
/// the next `LOOKAHEAD_S` (a day: the daily cycle's low) before the limit,
/// where the method only asks for a local minimum between two hours.
/// `last_s` None: never ran, run now.
#[allow(clippy::too_many_arguments)]
pub fn schedule(
    now_s: i64,
    last_s: Option<i64>,
    ci_now: f64,
    forecast: &[Reading],
    (ci_min, ci_max): (f64, f64),
    min_interval_s: i64,
    max_staleness_s: i64,
    tolerance: f64,
) -> Schedule {
    let Some(last) = last_s else {
        return Schedule { run: true, next_at: now_s, next_gco2_per_kwh: ci_now, reason: "no evaluation yet".into() };
    };
    let earliest = last + min_interval_s;
    let latest = last + max_staleness_s;
    let horizon = latest.min(now_s.max(earliest) + LOOKAHEAD_S);
    if now_s >= latest {
        return Schedule { run: true, next_at: now_s, next_gco2_per_kwh: ci_now, reason: "q is older than max_staleness".into() };
    }
    // The lowest forecast hour in the allowed window (from the earliest start).
    let low = forecast
        .iter()
        .filter(|r| r.at >= earliest.max(now_s) && r.at <= horizon)
        .fold(None::<&Reading>, |b, r| match b {
            Some(b) if b.gco2_per_kwh <= r.gco2_per_kwh => Some(b),
            _ => Some(r),
        });
    if now_s < earliest {
        let (at, ci) = low.map(|r| (r.at, r.gco2_per_kwh)).unwrap_or((earliest, ci_now));
        return Schedule { run: false, next_at: at, next_gco2_per_kwh: ci, reason: "within min_interval of the last run".into() };
    }
    let place = (ci_now - ci_min) / (ci_max - ci_min).max(1e-9);
    let bar = (now_s - last) as f64 / max_staleness_s as f64;
    if place > bar {
        let (at, ci) = low.map(|r| (r.at, r.gco2_per_kwh)).unwrap_or((latest, ci_now));
        return Schedule {
            run: false,
            next_at: at,
            next_gco2_per_kwh: ci,
            reason: format!("{ci_now:.0} gCO2/kWh is not yet low enough for q this fresh ({:.0}% up the grid's range, bar {:.0}%)", place * 100.0, bar * 100.0),
        };
    }
    match low {
        Some(r) if ci_now > r.gco2_per_kwh * (1.0 + tolerance) => Schedule {
            run: false,
            next_at: r.at,
            next_gco2_per_kwh: r.gco2_per_kwh,
            reason: format!("waiting for a cleaner hour ({:.0} forecast vs {:.0} now)", r.gco2_per_kwh, ci_now),
        },
        _ => Schedule {
            run: true,
            next_at: now_s,
            next_gco2_per_kwh: ci_now,
            reason: "the intensity now is at (or near) the lowest forecast before q gets stale".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_gets_its_share_and_no_more() {
        let mut s = EngineShare::default();
        assert!(s.daemon_turn(0.1), "nothing ran yet");
        assert!(!s.daemon_turn(0.0), "share 0: never ahead of users");
        s.daemon_running = 1;
        assert!(!s.daemon_turn(0.1), "one of its jobs at a time");
        s.daemon_running = 0;
        s.add(true, 10.0);
        s.add(false, 50.0);
        assert!(!s.daemon_turn(0.1), "10 of 60 s is over 10%");
        s.add(false, 50.0);
        assert!(s.daemon_turn(0.1), "10 of 110 s is under 10%");
        // Decay keeps the ratio but forgets the amounts.
        s.decay(SHARE_WINDOW_S);
        assert!((s.user_s - 100.0 / std::f64::consts::E).abs() < 1e-9);
        // Simulated saturation: users' 10 s jobs always waiting, the daemon's
        // 10 s jobs run only on their turn: it gets about 10%, not 0.
        let mut s = EngineShare::default();
        let (mut user, mut daemon) = (0, 0);
        for _ in 0..1000 {
            let turn = s.daemon_turn(0.1);
            s.decay(10.0);
            s.add(turn, 10.0);
            if turn { daemon += 1 } else { user += 1 }
        }
        let share = daemon as f64 / (user + daemon) as f64;
        assert!((0.08..=0.12).contains(&share), "{share}");
    }

    #[test]
    fn stratified_samples_cap_each_class() {
        let s = |class: &str, k: u64| PromptSample { text: format!("{class}{k}"), class: class.into(), at_ms: k };
        let mut all = vec![s("math", 0), s("math", 1), s("choice", 2), s("math", 3), s("question", 4), s("choice", 5)];
        all.insert(1, s("math", 0));
        let picked: Vec<String> = stratify(all, 2).into_iter().map(|p| p.text).collect();
        assert_eq!(picked, ["math0", "math1", "choice2", "question4", "choice5"]);
    }

    #[test]
    fn scheduling_at_low_carbon_within_the_limits() {
        let h = 3600;
        let fc: Vec<Reading> = [300.0, 200.0, 100.0, 250.0, 390.0].iter().enumerate().map(|(k, v)| Reading { at: (k as i64 + 1) * h, gco2_per_kwh: *v }).collect();
        let range = (100.0, 400.0);
        let sch = |now, last, ci| schedule(now, last, ci, &fc, range, 6 * h, 72 * h, 0.05);
        // Never ran: now.
        assert!(sch(0, None, 300.0).run);
        // Within min_interval: no, and the next run is the low hour after it.
        let s = sch(0, Some(-5 * h), 300.0);
        assert!(!s.run);
        assert_eq!((s.next_at, s.next_gco2_per_kwh), (3 * h, 100.0));
        // Allowed, but a cleaner hour comes: wait for it.
        let s = sch(0, Some(-60 * h), 300.0);
        assert!(!s.run && s.next_at == 3 * h, "{s:?}");
        // At the low: run.
        assert!(sch(3 * h, Some(-10 * h), 100.0).run);
        // Close enough to the low (within 5%) and low for the grid: run.
        assert!(sch(0, Some(-10 * h), 104.0).run);
        // The day's low, but high for the grid while q is fresh: wait.
        let s = sch(0, Some(-10 * h), 380.0);
        assert!(!s.run && s.reason.contains("not yet low enough"), "{s:?}");
        // Stale: run whatever the grid.
        let s = schedule(0, Some(-72 * h), 900.0, &fc, range, 6 * h, 72 * h, 0.05);
        assert!(s.run && s.reason.contains("max_staleness"));
    }
}
