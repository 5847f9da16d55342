//! The optimizer in the daemon: gathers its inputs (e, p from the ledger's
//! recent records, q from the evaluator or the prior, CI from the carbon
//! source), re-solves every `optimizer.resolve_interval` and whenever the
//! intensity moves more than `resolve_threshold`, and hands the submit path
//! the mix for each request's class.
//!
//! [`build_inputs`] is pure; [`Planner`] holds the current plan and its
//! history; [`run`] is the re-solve loop, woken early ([`Planner::wake`])
//! when what it knows changes (an answer finished, an evaluation stored).
//! A solve reads the daemon through [`Sources`], so the planner needs no
//! `Service` and its tests hand it a fake.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::carbon::Reading;
use crate::config::{AccountingConfig, Config, OptimizerConfig, OptimizerPolicy};
use crate::eval::quality::Kept;
use crate::eval::{Cell, EvalRun};
use crate::clock::Clock;
use crate::job::{JobState, LedgerEntry, Origin};
use crate::plan::classify::CLASSES;
use crate::plan::optimizer::{self, ClassInputs, Inputs, Plan};
use crate::store::StoreError;

/// Ledger records looked at: those of the last week, newest first, at most
/// `RECENT` in all and `RECENT_PER_CELL` per level and class.
const RECENT_PER_CELL: usize = 200;
const RECENT: usize = 20_000;
pub const LOOKBACK_MS: u64 = 7 * 24 * 3600 * 1000;

/// One solve, as `GET /v1/plan` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Solved {
    pub at_ms: u64,
    /// Why it was solved: `start`, `interval`, `intensity moved N`.
    pub reason: String,
    pub inputs: Inputs,
    pub plan: Plan,
    /// Where each class's e and p came from: `ledger (n)` or `prior` per level.
    pub sources: Vec<Vec<String>>,
    /// Per class and level, how well the level kept the baseline's quality
    /// in the evaluations (n, share, lower bound), and whether the bound
    /// cleared the floor (`allowed` in the inputs).
    pub kept: Vec<Vec<Kept>>,
    /// What the daemon knew when it solved: users' finished requests plus
    /// evaluation runs. A solve is due again once it has grown (see [`Planner::due`]).
    pub knowledge: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct HistoryItem {
    pub at_ms: u64,
    pub ci: f64,
    pub floor: f64,
    pub quality: f64,
    pub expected_g: f64,
    pub baseline_g: f64,
    pub status: String,
    /// The overall mix (class mixes weighted by class share).
    pub x: Vec<f64>,
}

pub struct Planner {
    /// Replaced by a reload (`set_config`), which also makes a solve due.
    cfg: RwLock<OptimizerConfig>,
    reloaded: std::sync::atomic::AtomicBool,
    current: RwLock<Option<Solved>>,
    history: RwLock<VecDeque<HistoryItem>>,
    /// Wakes [`run`] before its next check.
    wake: Notify,
}

/// What the planner knows of quality and of the evaluations' own answers.
pub struct Measured<'a> {
    /// Per class (or `all`), how well each level kept the baseline's quality.
    pub kept: &'a dyn Fn(&str) -> Vec<Kept>,
    /// The evaluations' answers' energy and time, pooled per class and level.
    pub cells: &'a [Cell],
}

/// The policy's quality margin on top of the floor.
fn margin(cfg: &OptimizerConfig) -> f64 {
    if cfg.policy == OptimizerPolicy::Best { optimizer::BEST_MARGIN } else { 0.0 }
}

/// The least the optimizer ever asks of a level's quality bound: its floor
/// at the dirtiest hour, with the policy's margin.
pub fn lowest_floor(cfg: &OptimizerConfig) -> f64 {
    (1.0 - cfg.xi + margin(cfg)).min(1.0)
}

/// The classes the optimizer mixes levels for: each class under `best`,
/// one pool (`all`) under the method's single mix.
pub fn mixed_classes(cfg: &OptimizerConfig) -> Vec<&'static str> {
    if cfg.policy == OptimizerPolicy::Best { CLASSES.to_vec() } else { vec!["all"] }
}

/// Builds the optimizer's inputs from recent ledger records (user requests
/// that succeeded; newest first), the evaluations and the priors.
///
/// Safe by construction: a level may serve a class only once the lower
/// bound of the share of its answers that kept the baseline's quality clears
/// the floor at `ci` (with the policy's margin); until then the class gets
/// the baseline. Priors never license a shorter level; the LP's `q` is that
/// lower bound (the baseline's is 1).
pub fn build_inputs(
    cfg: &OptimizerConfig,
    acct: &AccountingConfig,
    entries: &[LedgerEntry],
    level_names: &[String],
    measured_q: &Measured,
    ci: f64,
    range: (f64, f64),
) -> (Inputs, Vec<Vec<String>>, Vec<Vec<Kept>>) {
    let (ci_min, ci_max) = cfg.ci_range.unwrap_or(range);
    let margin = margin(cfg);
    let floor = (optimizer::floor_factor(ci, ci_min, ci_max, cfg.xi) + margin).min(1.0);
    let mut kept_all = Vec::new();
    let levels = level_names.len();
    let classes = mixed_classes(cfg);
    let usable: Vec<&LedgerEntry> =
        entries.iter().filter(|e| e.state == JobState::Succeeded && e.origin != Origin::Daemon).collect();
    let level_of = |e: &LedgerEntry| level_names.iter().position(|n| *n == e.directive);
    let mean = |sel: &dyn Fn(&LedgerEntry) -> bool| -> Option<(f64, f64, usize)> {
        let picked: Vec<&&LedgerEntry> = usable.iter().filter(|e| sel(e)).take(RECENT_PER_CELL).collect();
        (picked.len() >= cfg.min_samples).then(|| {
            let n = picked.len() as f64;
            (picked.iter().map(|e| e.energy_j).sum::<f64>() / n, picked.iter().map(|e| e.duration_s).sum::<f64>() / n, picked.len())
        })
    };
    let mut sources = Vec::new();
    let mut out = Vec::new();
    let total = usable.len().max(1) as f64;
    for class in &classes {
        let in_class = |e: &LedgerEntry| *class == "all" || e.class == *class;
        let weight = if *class == "all" {
            1.0
        } else if usable.is_empty() {
            1.0 / classes.len() as f64
        } else {
            // Seen classes by their share; unseen ones keep a little weight so they have a mix.
            (usable.iter().filter(|e| in_class(e)).count() as f64 / total).max(0.01)
        };
        // Users' requests of this class at the level; else the evaluations'
        // answers of this class; else users' requests at the level, any class.
        let eval_cell = |i: usize| -> Option<(f64, f64, usize)> {
            let (mut n, mut e, mut t) = (0usize, 0.0, 0.0);
            for c in measured_q.cells.iter().filter(|c| c.level == level_names[i] && (*class == "all" || c.class == *class)) {
                n += c.n;
                e += c.energy_j * c.n as f64;
                t += c.duration_s * c.n as f64;
            }
            (n >= cfg.min_samples && n > 0).then(|| (e / n as f64, t / n as f64, n))
        };
        let measured: Vec<Option<((f64, f64, usize), &str)>> = (0..levels)
            .map(|i| {
                mean(&|x: &LedgerEntry| level_of(x) == Some(i) && in_class(x))
                    .map(|m| (m, "class"))
                    .or_else(|| eval_cell(i).map(|m| (m, "evaluations, class")))
                    .or_else(|| mean(&|x: &LedgerEntry| level_of(x) == Some(i)).map(|m| (m, "level")))
            })
            .collect();
        // Levels without enough samples take the prior's shape at the scale
        // the measured levels show (priors from another machine must not be
        // compared with this one's measurements as they are).
        let scale = |pick: fn(&(f64, f64, usize)) -> f64, prior: &[f64]| -> f64 {
            let (m, p): (f64, f64) = measured
                .iter()
                .enumerate()
                .filter_map(|(i, m)| m.as_ref().map(|(v, _)| (pick(v), prior[i])))
                .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
            if p > 0.0 && m > 0.0 { m / p } else { 1.0 }
        };
        let (e_scale, p_scale) = (scale(|v| v.0, &cfg.prior_energy_j), scale(|v| v.1, &cfg.prior_time_s));
        let (mut e, mut p, mut src) = (Vec::new(), Vec::new(), Vec::new());
        for (i, m) in measured.iter().enumerate() {
            match m {
                Some(((ej, ps, n), scope)) => {
                    e.push(ej / 3.6e6);
                    p.push(*ps);
                    src.push(format!("ledger ({n} {scope})"));
                }
                None => {
                    e.push(cfg.prior_energy_j[i] * e_scale / 3.6e6);
                    p.push(cfg.prior_time_s[i] * p_scale);
                    src.push(if e_scale == 1.0 { "prior".into() } else { format!("prior x {e_scale:.3} (scaled to the measured levels)") });
                }
            }
        }
        sources.push(src);
        let kept = (measured_q.kept)(class);
        let allowed: Vec<bool> = (0..levels).map(|i| i == 0 || kept.get(i).is_some_and(|k| k.lower >= floor)).collect();
        let q: Vec<f64> = (0..levels).map(|i| if i == 0 { 1.0 } else { kept.get(i).map_or(0.0, |k| k.lower) }).collect();
        kept_all.push(kept);
        out.push(ClassInputs { name: class.to_string(), weight, e, p, q, allowed });
    }
    let inputs = Inputs {
        classes: out,
        ci,
        ci_min,
        ci_max,
        xi: cfg.xi,
        embodied_g: acct.embodied_kgco2 * 1000.0,
        lifetime_s: acct.lifetime_years * 365.25 * 24.0 * 3600.0,
        margin,
    };
    (inputs, sources, kept_all)
}

impl Planner {
    pub fn new(cfg: OptimizerConfig) -> Self {
        Self { cfg: RwLock::new(cfg), reloaded: Default::default(), current: RwLock::new(None), history: RwLock::new(VecDeque::new()), wake: Notify::new() }
    }

    /// What the planner knows has changed (a request finished, an
    /// evaluation was stored): [`run`] checks now whether a solve is due
    /// instead of at its next tick.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn enabled(&self) -> bool {
        self.cfg.read().expect("poisoned").enabled
    }

    /// New settings from a reload: the planner wakes and re-solves with them.
    pub fn set_config(&self, cfg: OptimizerConfig) {
        *self.cfg.write().expect("poisoned") = cfg;
        self.reloaded.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake();
    }

    /// When the resolve interval makes a solve due (Unix ms); `None` before the first.
    pub fn interval_due_ms(&self) -> Option<u64> {
        let every = self.cfg.read().expect("poisoned").resolve_interval.as_millis() as u64;
        self.current.read().expect("poisoned").as_ref().map(|s| s.at_ms.saturating_add(every))
    }

    /// The mix for a request of `class`; None when the optimizer is off or
    /// has not solved yet (the configured mix applies).
    pub fn mix_for(&self, class: &str) -> Option<Vec<f64>> {
        if !self.enabled() {
            return None;
        }
        let cur = self.current.read().expect("poisoned");
        let plan = &cur.as_ref()?.plan;
        plan.classes.iter().find(|c| c.name == class || c.name == "all").map(|c| c.x.clone())
    }

    pub fn current(&self) -> Option<Solved> {
        self.current.read().expect("poisoned").clone()
    }

    pub fn history(&self) -> Vec<HistoryItem> {
        self.history.read().expect("poisoned").iter().cloned().collect()
    }

    /// Solves and installs the plan, as solved at `at_ms`.
    pub fn install(&self, at_ms: u64, inputs: Inputs, sources: Vec<Vec<String>>, kept: Vec<Vec<Kept>>, reason: String, knowledge: u64) -> Solved {
        let plan = optimizer::solve(&inputs);
        if plan.is_fallback() {
            tracing::warn!(status = %plan.status, "the optimizer fell back to the baseline level");
        }
        let total_w: f64 = inputs.classes.iter().map(|c| c.weight).sum::<f64>().max(f64::MIN_POSITIVE);
        let n = plan.classes.first().map(|c| c.x.len()).unwrap_or(0);
        let x: Vec<f64> = (0..n)
            .map(|i| plan.classes.iter().zip(&inputs.classes).map(|(p, c)| c.weight / total_w * p.x[i]).sum())
            .collect();
        let solved = Solved { at_ms, reason, inputs, plan, sources, kept, knowledge };
        let mut h = self.history.write().expect("poisoned");
        h.push_back(HistoryItem {
            at_ms: solved.at_ms,
            ci: solved.inputs.ci,
            floor: solved.plan.floor,
            quality: solved.plan.quality,
            expected_g: solved.plan.expected_g,
            baseline_g: solved.plan.baseline_g,
            status: solved.plan.status.clone(),
            x,
        });
        while h.len() > 48 {
            h.pop_front();
        }
        tracing::info!(
            reason = %solved.reason,
            ci = format!("{:.0}", solved.inputs.ci),
            floor = format!("{:.3}", solved.plan.floor),
            mix = ?h.back().map(|i| i.x.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>()),
            solve_us = solved.plan.solve_us,
            "directive plan"
        );
        *self.current.write().expect("poisoned") = Some(solved.clone());
        solved
    }

    /// Whether to re-solve now: never solved, the interval passed, the
    /// intensity moved more than the threshold, or what the daemon knows
    /// grew (`knowledge`: users' finished requests and evaluation runs) by
    /// `min_samples` or 5%, whichever is more.
    pub fn due(&self, now_ms: u64, ci: f64, knowledge: u64) -> Option<String> {
        let cfg = self.cfg.read().expect("poisoned").clone();
        if self.reloaded.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Some("reload".into());
        }
        let cur = self.current.read().expect("poisoned");
        let Some(s) = cur.as_ref() else { return Some("start".into()) };
        if now_ms.saturating_sub(s.at_ms) >= cfg.resolve_interval.as_millis() as u64 {
            return Some("interval".into());
        }
        let grown = knowledge.saturating_sub(s.knowledge);
        if grown >= (cfg.min_samples as u64).max(s.knowledge / 20).max(1) {
            return Some(format!("{grown} new measurements"));
        }
        let moved = ci - s.inputs.ci;
        (moved.abs() > cfg.resolve_threshold).then(|| format!("intensity moved {moved:+.0} gCO2e/kWh"))
    }
}

/// What a solve reads of the daemon (implemented by `Service`).
pub trait Sources {
    fn config(&self) -> Arc<Config>;
    fn planner(&self) -> &Planner;
    /// Ledger records finished since `since_ms`, newest first, at most `limit`.
    fn ledger_recent(&self, since_ms: u64, limit: usize) -> Result<Vec<LedgerEntry>, StoreError>;
    /// Stored evaluation runs, newest first, at most `limit`.
    fn eval_runs(&self, limit: usize) -> Result<Vec<EvalRun>, StoreError>;
    /// The levels' names, and their wordings' fingerprint.
    fn levels(&self) -> (Vec<String>, String);
    /// The grid's intensity at `t` (Unix seconds), gCO2e/kWh.
    fn intensity(&self, t: i64) -> f64;
    /// The grid's range of intensity (`CI_min`, `CI_max`).
    fn intensity_range(&self) -> (f64, f64);
    /// The carbon source's readings as its poller publishes them.
    fn readings(&self) -> watch::Receiver<Option<Reading>>;
    /// When (Unix s, after `t`) the intensity may next change without a
    /// new reading (the trace's next hour, a reading going stale).
    fn intensity_changes_at(&self, t: i64) -> i64;
    /// Users' finished requests and evaluation runs so far: a solve is due
    /// again once this has grown (new measured e, p or kept quality).
    fn knowledge(&self) -> u64;
    /// The daemon's clock: "now" for a solve, and what the loop sleeps on.
    fn clock(&self) -> &Clock;
}

/// Re-solves when due, sleeping until something it solves with may have
/// changed: woken ([`Planner::wake`]: a finished answer, an evaluation, a
/// reload), a new reading from the carbon source, the hour the intensity
/// next changes without one, or the resolve interval's end; and at most
/// `max_sleep` (the wall clock may jump). Time is [`Sources::clock`]'s.
/// While the optimizer is off it only waits (a reload may turn it on).
pub async fn run<S: Sources + Send + Sync + 'static>(src: Arc<S>, stop: CancellationToken, max_sleep: Duration) {
    loop {
        let woken = src.planner().wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        // Subscribed before reading the intensity: a reading published from
        // here on wakes the wait below.
        let mut readings = src.readings();
        readings.borrow_and_update();
        let t = src.clock().now_ms();
        let ci = src.intensity(t as i64 / 1000);
        if src.planner().enabled() {
            if let Some(reason) = src.planner().due(t, ci, src.knowledge()) {
                resolve(src.as_ref(), ci, reason);
            }
        }
        let change_ms = (src.intensity_changes_at(t as i64 / 1000).max(0) as u64).saturating_mul(1000);
        let interval_ms = if src.planner().enabled() { src.planner().interval_due_ms() } else { None };
        let next = interval_ms.map_or(change_ms, |i| i.min(change_ms));
        let wait = Duration::from_millis(next.saturating_sub(src.clock().now_ms())).min(max_sleep);
        tokio::select! {
            _ = src.clock().sleep(wait) => {}
            _ = &mut woken => {}
            // A source replaced by a reload drops its sender: the next pass
            // subscribes to the new one.
            _ = readings.changed() => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Evaluation runs the planner pools (newest first): enough for the
/// quality bound to tighten over several runs, few enough to follow a change.
pub const EVAL_HISTORY: usize = 20;

/// The evaluations the planner pools, newest first: the latest of these
/// levels with these wordings (a changed wording starts afresh) that
/// compared any answers.
pub fn pooled_runs(src: &impl Sources) -> Result<Vec<EvalRun>, StoreError> {
    let (names, wording) = src.levels();
    Ok(src
        .eval_runs(EVAL_HISTORY * 2)?
        .into_iter()
        .filter(|r| r.levels == names && r.wording == wording && !r.verdicts.is_empty())
        .take(EVAL_HISTORY)
        .collect())
}

/// One solve with the daemon's current knowledge.
pub fn resolve(src: &impl Sources, ci: f64, reason: String) -> Solved {
    let cfg = src.config();
    let at_ms = src.clock().now_ms();
    let since = at_ms.saturating_sub(LOOKBACK_MS);
    let entries = src.ledger_recent(since, RECENT).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "reading the ledger for the optimizer failed; using priors");
        Vec::new()
    });
    let (names, _) = src.levels();
    let runs = pooled_runs(src).unwrap_or_default();
    let cells: Vec<Cell> = runs.iter().flat_map(|r| r.cells.iter().cloned()).collect();
    let kept = |class: &str| crate::eval::quality::kept_stats(&runs, class, names.len());
    let measured = Measured { kept: &kept, cells: &cells };
    let (inputs, sources, kept) = build_inputs(&cfg.optimizer, &cfg.accounting, &entries, &names, &measured, ci, src.intensity_range());
    src.planner().install(at_ms, inputs, sources, kept, reason, src.knowledge())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn entry(level: &str, class: &str, energy_j: f64) -> LedgerEntry {
        LedgerEntry {
            origin: Origin::Chat,
            duration_s: 2.0,
            intensity_gco2_per_kwh: 100.0,
            operational_g: 0.0,
            carbon_g: 0.0,
            ..crate::testing::ledger_entry(level, class, energy_j)
        }
    }

    /// A daemon for [`resolve`] and [`run`]: the ledger and the evaluations it holds.
    struct Fake {
        cfg: Arc<Config>,
        planner: Planner,
        ledger: std::sync::Mutex<Vec<LedgerEntry>>,
        runs: std::sync::Mutex<Vec<EvalRun>>,
        /// The intensity served, what the carbon poller published, and
        /// when the intensity next changes without a reading (Unix s).
        ci: std::sync::Mutex<f64>,
        readings: watch::Sender<Option<Reading>>,
        changes_at: std::sync::Mutex<Option<i64>>,
        /// A manual clock, and how many passes `run` has made (each reads the intensity once).
        clock: Clock,
        passes: std::sync::atomic::AtomicUsize,
    }

    impl Sources for Fake {
        fn config(&self) -> Arc<Config> {
            self.cfg.clone()
        }
        fn planner(&self) -> &Planner {
            &self.planner
        }
        fn ledger_recent(&self, _: u64, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
            Ok(self.ledger.lock().unwrap().iter().take(limit).cloned().collect())
        }
        fn eval_runs(&self, limit: usize) -> Result<Vec<EvalRun>, StoreError> {
            Ok(self.runs.lock().unwrap().iter().take(limit).cloned().collect())
        }
        fn levels(&self) -> (Vec<String>, String) {
            (["L0", "L1", "L2"].iter().map(|s| s.to_string()).collect(), "w".into())
        }
        fn intensity(&self, _: i64) -> f64 {
            self.passes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            *self.ci.lock().unwrap()
        }
        fn intensity_range(&self) -> (f64, f64) {
            (50.0, 500.0)
        }
        fn readings(&self) -> watch::Receiver<Option<Reading>> {
            self.readings.subscribe()
        }
        fn intensity_changes_at(&self, t: i64) -> i64 {
            // A day away unless a test says otherwise (and always after `t`, as the real source's).
            self.changes_at.lock().unwrap().filter(|c| *c > t).unwrap_or(t + 86_400)
        }
        fn knowledge(&self) -> u64 {
            (self.ledger.lock().unwrap().len() + self.runs.lock().unwrap().len()) as u64
        }
        fn clock(&self) -> &Clock {
            &self.clock
        }
    }

    /// 2026-11-28 10:00:00 UTC: the fake's clock starts on the hour.
    const START_MS: u64 = 1_795_860_000_000;

    fn fake(ledger: Vec<LedgerEntry>) -> Fake {
        let cfg = Arc::new(Config::default_config());
        Fake {
            planner: Planner::new(cfg.optimizer.clone()),
            cfg,
            ledger: std::sync::Mutex::new(ledger),
            runs: Default::default(),
            ci: std::sync::Mutex::new(300.0),
            readings: watch::channel(None).0,
            changes_at: Default::default(),
            clock: Clock::manual(START_MS),
            passes: Default::default(),
        }
    }

    /// An evaluation of `n` prompts of `class` where each level kept the
    /// baseline's answer or not (`kept`), under the wordings `wording`.
    fn evaluation(class: &str, n: usize, kept: [f64; 3], wording: &str) -> EvalRun {
        let verdict = |i: usize| crate::eval::quality::PromptVerdict {
            prompt: format!("prompt {i}"),
            class: class.into(),
            picks: vec![],
            credit: vec![0.0; 3],
            kept: kept.iter().map(|k| Some(*k)).collect(),
            signal: "agreement".into(),
        };
        EvalRun {
            id: "eval-1".into(),
            started_ms: 0,
            finished_ms: 0,
            reason: "test".into(),
            intensity_gco2_per_kwh: 100.0,
            judge: "agreement".into(),
            levels: ["L0", "L1", "L2"].iter().map(|s| s.to_string()).collect(),
            q: None,
            verdicts: (0..n).map(verdict).collect(),
            failures: 0,
            judge_calls: 0,
            jobs: vec![],
            tokens: 0,
            energy_j: 0.0,
            carbon_g: 0.0,
            estimated: true,
            error: None,
            wording: wording.into(),
            cells: vec![],
            settled: vec![],
        }
    }

    fn math_mix(s: &Solved) -> Vec<f64> {
        s.plan.classes.iter().find(|c| c.name == "math").expect("a math class").x.clone()
    }

    #[test]
    fn resolve_shortens_a_class_only_once_its_evaluations_clear_the_floor() {
        // The ledger says L1 costs a third of L0 on math.
        let mut ledger: Vec<LedgerEntry> = (0..20).map(|_| entry("L0", "math", 720.0)).collect();
        ledger.extend((0..20).map(|_| entry("L1", "math", 240.0)));
        let f = fake(ledger);
        // No evaluation: cost alone never licenses a shorter level.
        let s = resolve(&f, 300.0, "start".into());
        assert_eq!(math_mix(&s), vec![1.0, 0.0, 0.0], "{:?}", s.kept);
        // 100 prompts where L1 reached L0's answer every time and L2 never.
        *f.runs.lock().unwrap() = vec![evaluation("math", 100, [1.0, 1.0, 0.0], "w")];
        let s = resolve(&f, 300.0, "evaluation".into());
        let x = math_mix(&s);
        assert!(x[1] > 0.5 && x[2] == 0.0, "{x:?}");
        assert_eq!(s.kept[1][1].n, 100);
        // Too few prompts for the bound to clear the floor: L0 again.
        *f.runs.lock().unwrap() = vec![evaluation("math", 10, [1.0, 1.0, 0.0], "w")];
        assert_eq!(math_mix(&resolve(&f, 300.0, "few".into())), vec![1.0, 0.0, 0.0]);
        // The same evaluation under other wordings does not count.
        *f.runs.lock().unwrap() = vec![evaluation("math", 100, [1.0, 1.0, 0.0], "older wordings")];
        assert_eq!(math_mix(&resolve(&f, 300.0, "reworded".into())), vec![1.0, 0.0, 0.0]);
        assert_eq!(f.planner.history().len(), 4);
        assert_eq!(f.planner.current().unwrap().reason, "reworded");
    }

    /// Waits (up to 10 s) until `cond` holds.
    async fn until(cond: impl Fn() -> bool) {
        let t0 = std::time::Instant::now();
        while !cond() {
            assert!(t0.elapsed() < Duration::from_secs(10), "timed out");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn run_resolves_when_woken_not_only_on_its_tick() {
        let f = Arc::new(fake(vec![]));
        let stop = CancellationToken::new();
        // A tick far longer than the test: only the start and wakes solve.
        let task = tokio::spawn(run(f.clone(), stop.clone(), Duration::from_secs(3600)));
        until(|| f.planner.current().is_some()).await;
        assert_eq!(f.planner.current().unwrap().reason, "start");
        // Enough new measurements to make a solve due: nothing happens
        // before the wake (or the tick, an hour away).
        f.ledger.lock().unwrap().extend((0..10).map(|_| entry("L0", "math", 700.0)));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(f.planner.history().len(), 1);
        f.planner.wake();
        until(|| f.planner.history().len() == 2).await;
        assert!(f.planner.current().unwrap().reason.contains("new measurements"), "{}", f.planner.current().unwrap().reason);
        // A wake with nothing new solves nothing.
        f.planner.wake();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(f.planner.history().len(), 2);
        stop.cancel();
        task.await.unwrap();
    }

    /// Lets the planner's task run (real time: it reacts to the fake's clock).
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    #[tokio::test]
    async fn run_resolves_on_a_new_reading_and_when_the_hour_turns_without_polling() {
        let f = Arc::new(fake(vec![]));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(f.clone(), stop.clone(), Duration::from_secs(3600)));
        until(|| f.planner.current().is_some()).await;
        assert_eq!(f.planner.current().unwrap().at_ms, START_MS);
        // The grid got dirtier, but nobody said so: no solve.
        *f.ci.lock().unwrap() = 400.0;
        settle().await;
        assert_eq!(f.planner.history().len(), 1);
        // The poller publishes the reading: a solve at the new intensity.
        // (From now on the intensity next changes ten minutes from now.)
        let turn_s = START_MS as i64 / 1000 + 600;
        *f.changes_at.lock().unwrap() = Some(turn_s);
        f.readings.send_replace(Some(Reading { at: 0, gco2_per_kwh: 400.0 }));
        until(|| f.planner.history().len() == 2).await;
        assert!(f.planner.current().unwrap().reason.starts_with("intensity moved +100"), "{}", f.planner.current().unwrap().reason);
        assert_eq!(f.planner.current().unwrap().inputs.ci, 400.0);
        // The hour turns with no reading and no wake: the planner sleeps
        // until then, and solves at the new intensity, not a second early.
        *f.ci.lock().unwrap() = 150.0;
        f.clock.advance(Duration::from_secs(599));
        settle().await;
        assert_eq!(f.planner.history().len(), 2, "solved before the intensity changed");
        f.clock.advance(Duration::from_secs(1));
        until(|| f.planner.history().len() == 3).await;
        let s = f.planner.current().unwrap();
        assert_eq!((s.inputs.ci, s.at_ms), (150.0, turn_s as u64 * 1000));
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn run_resolves_when_its_interval_ends_and_sleeps_at_most_max_sleep() {
        let f = Arc::new(fake(vec![]));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(f.clone(), stop.clone(), Duration::from_secs(60)));
        until(|| f.planner.current().is_some()).await;
        let passes = || f.passes.load(std::sync::atomic::Ordering::SeqCst);
        // Nothing changes for an hour (the default resolve_interval): the
        // planner looks once a minute and solves nothing until the hour ends.
        for minute in 1..=59 {
            let before = passes();
            f.clock.advance(Duration::from_secs(60));
            until(|| passes() > before).await;
            assert_eq!(f.planner.history().len(), 1, "solved at minute {minute}");
        }
        f.clock.advance(Duration::from_secs(60));
        until(|| f.planner.history().len() == 2).await;
        let s = f.planner.current().unwrap();
        assert_eq!((s.reason.as_str(), s.at_ms - START_MS), ("interval", 3_600_000));
        stop.cancel();
        task.await.unwrap();
    }

    fn kept(lower: [f64; 3]) -> Vec<Kept> {
        lower.iter().map(|l| Kept { n: 30, mean: *l, lower: *l }).collect()
    }

    #[test]
    fn ledger_means_replace_priors_once_there_are_enough() {
        let c = Config::default_config();
        let names: Vec<String> = ["L0", "L1", "L2"].iter().map(|s| s.to_string()).collect();
        let mut entries: Vec<LedgerEntry> = (0..5).map(|_| entry("L0", "math", 720.0)).collect();
        entries.extend((0..3).map(|_| entry("L1", "math", 360.0)));
        let none = |_: &str| kept([1.0, 0.0, 0.0]);
        let m = Measured { kept: &none, cells: &[] };
        let (inp, src, _) = build_inputs(&c.optimizer, &c.accounting, &entries, &names, &m, 300.0, (50.0, 500.0));
        assert_eq!(inp.classes.len(), 4);
        let math = &inp.classes[1];
        assert_eq!(math.name, "math");
        assert!((math.e[0] - 720.0 / 3.6e6).abs() < 1e-15 && math.p[0] == 2.0);
        assert_eq!(src[1][0], "ledger (5 class)");
        // L1 has 3 < 5 samples: the prior, scaled as L0's measurement is to
        // its prior (720 J measured vs 400 J prior).
        assert!((math.e[1] - 280.0 * 1.8 / 3.6e6).abs() < 1e-15, "{}", math.e[1]);
        assert!(src[1][1].starts_with("prior x 1.800"), "{}", src[1][1]);
        // Another class borrows the level-wide mean.
        assert_eq!(src[0][0], "ledger (5 level)");
        assert!(inp.classes[1].weight > inp.classes[0].weight);
        assert_eq!((inp.ci_min, inp.ci_max), (50.0, 500.0));
        // The evaluations' own answers measure a level users never got.
        let cells = [Cell { class: "math".into(), level: "L2".into(), n: 8, energy_j: 90.0, duration_s: 1.0 }];
        let m = Measured { kept: &none, cells: &cells };
        let (inp, src, _) = build_inputs(&c.optimizer, &c.accounting, &entries, &names, &m, 300.0, (50.0, 500.0));
        assert_eq!(src[1][2], "ledger (8 evaluations, class)");
        assert!((inp.classes[1].e[2] - 90.0 / 3.6e6).abs() < 1e-15);
    }

    #[test]
    fn no_level_serves_a_class_before_its_quality_bound_clears_the_floor() {
        let c = Config::default_config();
        let names: Vec<String> = ["L0", "L1", "L2"].iter().map(|s| s.to_string()).collect();
        // Unmeasured (the cold start): every class all-baseline, whatever the priors say.
        let cold = |_: &str| vec![Kept { n: 0, mean: 1.0, lower: 1.0 }, Kept { n: 0, mean: 0.0, lower: 0.0 }, Kept { n: 0, mean: 0.0, lower: 0.0 }];
        for ci in [50.0, 275.0, 500.0] {
            let (inp, _, _) = build_inputs(&c.optimizer, &c.accounting, &[], &names, &Measured { kept: &cold, cells: &[] }, ci, (50.0, 500.0));
            let p = Planner::new(c.optimizer.clone());
            p.install(0, inp, vec![], vec![], "t".into(), 0);
            for class in CLASSES {
                assert_eq!(p.mix_for(class).unwrap(), [1.0, 0.0, 0.0], "{class} at {ci}");
            }
        }
        // Measured: math keeps quality at L1 (bound 0.95) but not at L2 (0.6);
        // questions at both. At the dirtiest hour the floor is 0.9 + margin.
        let measured = |class: &str| if class == "math" { kept([1.0, 0.95, 0.6]) } else { kept([1.0, 0.95, 0.95]) };
        let (inp, _, k) = build_inputs(&c.optimizer, &c.accounting, &[], &names, &Measured { kept: &measured, cells: &[] }, 500.0, (50.0, 500.0));
        assert_eq!(inp.classes[1].allowed, [true, true, false]);
        assert_eq!(inp.classes[2].allowed, [true, true, true]);
        assert_eq!(k[1][2].lower, 0.6);
        let p = Planner::new(c.optimizer.clone());
        p.install(0, inp, vec![], k, "t".into(), 0);
        assert_eq!(p.mix_for("math").unwrap()[2], 0.0);
        assert!(p.mix_for("question").unwrap()[2] > 0.99, "{:?}", p.mix_for("question"));
        // At the cleanest hour the floor is 1: no bound clears it.
        let (inp, _, _) = build_inputs(&c.optimizer, &c.accounting, &[], &names, &Measured { kept: &measured, cells: &[] }, 50.0, (50.0, 500.0));
        assert!(inp.classes.iter().all(|c| c.allowed == [true, false, false]));
    }

    #[test]
    fn planner_resolves_on_interval_on_a_moved_intensity_and_on_new_measurements() {
        let c = Config::default_config();
        let p = Planner::new(c.optimizer.clone());
        assert_eq!(p.due(0, 100.0, 0).as_deref(), Some("start"));
        assert!(p.mix_for("math").is_none());
        let names: Vec<String> = ["L0", "L1", "L2"].iter().map(|s| s.to_string()).collect();
        let none = |_: &str| kept([1.0, 0.0, 0.0]);
        let (inp, src, k) = build_inputs(&c.optimizer, &c.accounting, &[], &names, &Measured { kept: &none, cells: &[] }, 100.0, (50.0, 500.0));
        let s = p.install(1_000, inp, src, k, "start".into(), 100);
        assert_eq!(s.plan.status, "optimal");
        let x = p.mix_for("math").unwrap();
        assert!((x.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        let t = s.at_ms;
        assert_eq!(p.due(t + 1000, 110.0, 100), None);
        assert!(p.due(t + 1000, 200.0, 100).unwrap().starts_with("intensity moved +100"));
        assert_eq!(p.due(t + 3_600_000, 100.0, 100).as_deref(), Some("interval"));
        // Four new records: fewer than min_samples (5); five: due.
        assert_eq!(p.due(t + 1000, 110.0, 104), None);
        assert_eq!(p.due(t + 1000, 110.0, 105).as_deref(), Some("5 new measurements"));
        assert_eq!(p.history().len(), 1);
    }
}
