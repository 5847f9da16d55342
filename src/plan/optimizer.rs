//! The directive optimizer: a linear program solved with HiGHS. Pure: inputs
//! in, plan out, no IO; the daemon and `sproutctl simulate` share it.
//!
//! The method (Sprout, EMNLP 2024; `../shared/data/sprout_artifact/README.md`):
//! choose the mix `x` over levels (each in [0, 1], summing to 1) minimising
//! the expected carbon per request `Σ x_i (e_i·CI + p_i·EMB/LIFE)` subject to
//! `Σ x_i q_i ≥ (1 − ξ·(CI − CI_min)/(CI_max − CI_min))·q_0`.
//!
//! Generalised to request *classes* (Sprout's own policy, README "The
//! optimizer"): one mix per class `c` with share `w_c`, and the same quality
//! floor over all requests, `Σ_c w_c Σ_i x_ci q_ci ≥ factor·Σ_c w_c q_c0`. With
//! one class this is exactly the method; with several, the method's answer is
//! still feasible, so the optimum is never worse in expectation.

use std::time::Instant;

use highs::{HighsModelStatus, RowProblem, Sense};
use serde::Serialize;

/// Sprout's own policy (`best`, README "The optimizer"): the daemon's safety
/// margin on the quality floor (its `q` is already a lower bound), and how
/// many latest evaluations the simulator's per-class `q` pools (the daemon
/// pools `planner::EVAL_HISTORY` runs); pooling six runs' verdicts cuts the
/// noise in per-class `q`.
pub const BEST_MARGIN: f64 = 0.02;
pub const BEST_CLASS_HISTORY: usize = 6;

/// What the optimizer knows about one class of requests (or all of them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassInputs {
    pub name: String,
    /// Share of requests in this class (normalised by the solver).
    pub weight: f64,
    /// Mean energy per request at each level, kWh.
    pub e: Vec<f64>,
    /// Mean machine time per request at each level, s.
    pub p: Vec<f64>,
    /// Quality at each level: in the daemon, the lower bound of the share of
    /// answers that kept the baseline's quality (the baseline is 1); in the
    /// method's replay, the share of prompts whose best answer was the level.
    pub q: Vec<f64>,
    /// Which levels may be used for this class (empty: all). A level whose
    /// quality has not been measured well enough is held at 0.
    pub allowed: Vec<bool>,
}

impl ClassInputs {
    pub fn is_allowed(&self, level: usize) -> bool {
        level == 0 || self.allowed.get(level).copied().unwrap_or(self.allowed.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inputs {
    pub classes: Vec<ClassInputs>,
    /// Grid intensity now, gCO2e/kWh.
    pub ci: f64,
    pub ci_min: f64,
    pub ci_max: f64,
    /// Quality tolerance ξ (0.1 in the method).
    pub xi: f64,
    /// Embodied carbon of the machine, gCO2e, and its lifetime, s.
    pub embodied_g: f64,
    pub lifetime_s: f64,
    /// Added to the floor's factor (capped at 1): a safety margin against
    /// the error of estimated `q` (0 in the method).
    pub margin: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassPlan {
    pub name: String,
    pub x: Vec<f64>,
    /// Expected carbon per request of this class under `x`, gCO2e.
    pub expected_g: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub classes: Vec<ClassPlan>,
    /// The floor's factor `1 − ξ·(CI − CI_min)/(CI_max − CI_min)`, in [1 − ξ, 1].
    pub floor: f64,
    /// Expected quality relative to all-baseline, `Σ w q·x / Σ w q_0`.
    pub quality: f64,
    /// Expected carbon per request, and at all-baseline, gCO2e.
    pub expected_g: f64,
    pub baseline_g: f64,
    /// `optimal`, or `fallback: <why>` (then every class is all-baseline).
    pub status: String,
    pub solve_us: u64,
}

impl Plan {
    pub fn is_fallback(&self) -> bool {
        self.status != "optimal"
    }
}

/// The quality floor's factor at intensity `ci`.
pub fn floor_factor(ci: f64, ci_min: f64, ci_max: f64, xi: f64) -> f64 {
    let span = ci_max - ci_min;
    let dirt = if span > 0.0 { ((ci - ci_min) / span).clamp(0.0, 1.0) } else { 0.0 };
    1.0 - xi * dirt
}

/// Carbon of one request at level `i` of class `c`, gCO2e.
pub fn level_cost(c: &ClassInputs, i: usize, ci: f64, embodied_per_s: f64) -> f64 {
    c.e[i] * ci + c.p[i] * embodied_per_s
}

fn validate(inp: &Inputs) -> Result<usize, String> {
    let first = inp.classes.first().ok_or("no request classes")?;
    let n = first.e.len();
    if n == 0 {
        return Err("no levels".into());
    }
    for c in &inp.classes {
        if c.e.len() != n || c.p.len() != n || c.q.len() != n {
            return Err(format!("class {}: e, p and q must each have {n} levels", c.name));
        }
        let all = c.e.iter().chain(&c.p).chain(&c.q).chain(std::iter::once(&c.weight));
        if all.clone().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(format!("class {}: e, p, q and weight must be finite and non-negative", c.name));
        }
    }
    if inp.classes.iter().map(|c| c.weight).sum::<f64>() <= 0.0 {
        return Err("the class weights sum to 0".into());
    }
    for (k, v) in [("ci", inp.ci), ("ci_min", inp.ci_min), ("ci_max", inp.ci_max), ("embodied_g", inp.embodied_g)] {
        if !v.is_finite() || v < 0.0 {
            return Err(format!("{k} must be finite and non-negative (got {v})"));
        }
    }
    if !(inp.xi.is_finite() && (0.0..=1.0).contains(&inp.xi)) {
        return Err(format!("xi must be in [0, 1] (got {})", inp.xi));
    }
    if !(inp.lifetime_s.is_finite() && inp.lifetime_s > 0.0) {
        return Err("lifetime must be positive".into());
    }
    if inp.ci_max < inp.ci_min {
        return Err(format!("ci_max {} is below ci_min {}", inp.ci_max, inp.ci_min));
    }
    Ok(n)
}

/// Solves the program; an invalid input or a failed solve gives the
/// all-baseline plan, and `status` says why.
pub fn solve(inp: &Inputs) -> Plan {
    let t0 = Instant::now();
    let floor = (floor_factor(inp.ci, inp.ci_min, inp.ci_max, inp.xi) + inp.margin.max(0.0)).min(1.0);
    let n = match validate(inp) {
        Ok(n) => n,
        Err(why) => return baseline_plan(inp, floor, format!("fallback: {why}"), t0),
    };
    let total_w: f64 = inp.classes.iter().map(|c| c.weight).sum();
    let emb_per_s = inp.embodied_g / inp.lifetime_s;
    let mut pb = RowProblem::default();
    let mut cols = Vec::new();
    // Costs are scaled so the dearest is 1 (per-request grams are tiny next
    // to the solver's tolerances), and ties break toward quality: a nudge of
    // 1e-4 of the dearest cost per unit of q makes the better of two equally
    // dear levels the cheaper.
    let scale = inp
        .classes
        .iter()
        .flat_map(|c| (0..n).map(|i| level_cost(c, i, inp.ci, emb_per_s)))
        .fold(0.0, f64::max);
    let scale = if scale > 0.0 { scale } else { 1.0 };
    for c in &inp.classes {
        let w = c.weight / total_w;
        let row: Vec<_> = (0..n)
            .map(|i| {
                let upper = if c.is_allowed(i) { 1.0 } else { 0.0 };
                pb.add_column(w * (level_cost(c, i, inp.ci, emb_per_s) / scale - 1e-4 * c.q[i]), 0.0..=upper)
            })
            .collect();
        pb.add_row(1.0..=1.0, row.iter().map(|col| (*col, 1.0)));
        cols.push(row);
    }
    let q0: f64 = inp.classes.iter().map(|c| c.weight / total_w * c.q[0]).sum();
    let quality_row: Vec<_> = inp
        .classes
        .iter()
        .zip(&cols)
        .flat_map(|(c, row)| row.iter().enumerate().map(move |(i, col)| (*col, c.weight / total_w * c.q[i])))
        .collect();
    // A tiny slack absorbs floating-point error in the floor itself.
    pb.add_row(floor * q0 - 1e-12.., quality_row);
    let mut model = pb.optimise(Sense::Minimise);
    model.make_quiet();
    let solved = match model.try_solve() {
        Ok(s) => s,
        Err(e) => return baseline_plan(inp, floor, format!("fallback: HiGHS failed: {e:?}"), t0),
    };
    if solved.status() != HighsModelStatus::Optimal {
        return baseline_plan(inp, floor, format!("fallback: HiGHS status {:?}", solved.status()), t0);
    }
    let values = solved.get_solution().columns().to_vec();
    let xs: Vec<Vec<f64>> = (0..inp.classes.len())
        .map(|k| {
            // `+ 0.0` turns the solver's -0.0 into 0.0.
            let raw: Vec<f64> = values[k * n..(k + 1) * n].iter().map(|v| v.clamp(0.0, 1.0) + 0.0).collect();
            let s: f64 = raw.iter().sum();
            raw.iter().map(|v| v / s).collect()
        })
        .collect();
    make_plan(inp, xs, floor, "optimal".into(), t0)
}

fn baseline_plan(inp: &Inputs, floor: f64, status: String, t0: Instant) -> Plan {
    let n = inp.classes.first().map(|c| c.e.len()).unwrap_or(1).max(1);
    let xs = inp.classes.iter().map(|_| (0..n).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect()).collect();
    make_plan(inp, xs, floor, status, t0)
}

fn make_plan(inp: &Inputs, xs: Vec<Vec<f64>>, floor: f64, status: String, t0: Instant) -> Plan {
    let total_w: f64 = inp.classes.iter().map(|c| c.weight).sum::<f64>().max(f64::MIN_POSITIVE);
    let emb_per_s = if inp.lifetime_s > 0.0 { inp.embodied_g / inp.lifetime_s } else { 0.0 };
    let cost = |c: &ClassInputs, i: usize| if i < c.e.len() && i < c.p.len() { level_cost(c, i, inp.ci, emb_per_s) } else { 0.0 };
    let q = |c: &ClassInputs, i: usize| c.q.get(i).copied().unwrap_or(0.0);
    let (mut exp, mut base, mut qx, mut q0) = (0.0, 0.0, 0.0, 0.0);
    let mut classes = Vec::new();
    for (c, x) in inp.classes.iter().zip(xs) {
        let w = c.weight / total_w;
        let g: f64 = x.iter().enumerate().map(|(i, xi)| xi * cost(c, i)).sum();
        exp += w * g;
        base += w * cost(c, 0);
        qx += w * x.iter().enumerate().map(|(i, xi)| xi * q(c, i)).sum::<f64>();
        q0 += w * q(c, 0);
        classes.push(ClassPlan { name: c.name.clone(), x, expected_g: g });
    }
    Plan {
        classes,
        floor,
        quality: if q0 > 0.0 { qx / q0 } else { 1.0 },
        expected_g: exp,
        baseline_g: base,
        status,
        solve_us: t0.elapsed().as_micros() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(e: [f64; 3], p: [f64; 3], q: [f64; 3], ci: f64, xi: f64) -> Inputs {
        Inputs {
            classes: vec![ClassInputs { name: "all".into(), weight: 1.0, e: e.to_vec(), p: p.to_vec(), q: q.to_vec(), allowed: vec![] }],
            ci,
            ci_min: 100.0,
            ci_max: 500.0,
            xi,
            embodied_g: 0.0,
            lifetime_s: 1.0,
            margin: 0.0,
        }
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn binding_quality_constraint() {
        // At the dirtiest hour the floor is 0.9·q0 = 0.45. L2 is cheapest but
        // worst; L1 is cheaper than L0 and as good as L0: the optimum puts all
        // weight on L1 and L2 with 0.5·x1 + 0.2·x2 = 0.45 → x1 = 5/6, x2 = 1/6.
        let p = solve(&one([3.0, 2.0, 1.0], [0.0; 3], [0.5, 0.5, 0.2], 500.0, 0.1));
        assert_eq!(p.status, "optimal");
        assert!(close(&p.classes[0].x, &[0.0, 5.0 / 6.0, 1.0 / 6.0]), "{:?}", p.classes[0].x);
        assert!((p.floor - 0.9).abs() < 1e-12);
        assert!((p.quality - 0.9).abs() < 1e-6);
        assert!((p.expected_g - 500.0 * (2.0 * 5.0 / 6.0 + 1.0 / 6.0)).abs() < 1e-6);
        // At the cleanest hour the floor is q0 itself: x1 = 1 (L1 as good as L0, cheaper).
        let p = solve(&one([3.0, 2.0, 1.0], [0.0; 3], [0.5, 0.5, 0.2], 100.0, 0.1));
        assert!(close(&p.classes[0].x, &[0.0, 1.0, 0.0]), "{:?}", p.classes[0].x);
    }

    #[test]
    fn slack_quality_constraint() {
        // The cheapest level is also the best: the floor does not bind.
        let p = solve(&one([3.0, 2.0, 1.0], [0.0; 3], [0.2, 0.3, 0.5], 300.0, 0.1));
        assert!(close(&p.classes[0].x, &[0.0, 0.0, 1.0]));
        assert!(p.quality > p.floor + 0.5);
    }

    #[test]
    fn embodied_carbon_counts_through_time() {
        // Equal energy; L0 takes longer, so embodied carbon makes it dearer.
        let mut inp = one([1.0, 1.0, 1.0], [10.0, 5.0, 1.0], [0.4, 0.4, 0.2], 100.0, 0.0);
        inp.embodied_g = 100.0;
        inp.lifetime_s = 10.0;
        let p = solve(&inp);
        assert!(close(&p.classes[0].x, &[0.0, 1.0, 0.0]), "{:?}", p.classes[0].x);
        assert!((p.expected_g - (100.0 + 5.0 * 10.0)).abs() < 1e-6);
    }

    #[test]
    fn infeasible_or_bad_inputs_fall_back_to_the_baseline_and_say_so() {
        let p = solve(&one([3.0, 2.0, f64::NAN], [0.0; 3], [0.5, 0.5, 0.2], 300.0, 0.1));
        assert!(p.is_fallback() && p.status.contains("finite"), "{}", p.status);
        assert_eq!(p.classes[0].x, [1.0, 0.0, 0.0]);
        let mut bad = one([3.0, 2.0, 1.0], [0.0; 3], [0.5, 0.5, 0.2], 300.0, 0.1);
        bad.classes[0].q.pop();
        assert!(solve(&bad).status.contains("3 levels"));
        // ξ > 1 would ask for more than the baseline's quality: refused.
        let p = solve(&one([3.0, 2.0, 1.0], [0.0; 3], [0.5, 0.5, 0.2], 100.0, 1.5));
        assert!(p.is_fallback());
        let mut none = one([3.0, 2.0, 1.0], [0.0; 3], [0.5, 0.5, 0.2], 300.0, 0.1);
        none.classes.clear();
        assert!(solve(&none).status.contains("no request classes"));
    }

    #[test]
    fn ties_give_a_valid_optimum() {
        // L1 and L2 cost and score the same: any split between them is optimal.
        let p = solve(&one([3.0, 1.0, 1.0], [0.0; 3], [0.3, 0.35, 0.35], 300.0, 0.1));
        let x = &p.classes[0].x;
        assert!(x[0].abs() < 1e-9 && (x[1] + x[2] - 1.0).abs() < 1e-9, "{x:?}");
        assert!((p.expected_g - 300.0).abs() < 1e-6);
        // Both the same as L0 too, and free: anything is optimal and feasible.
        let p = solve(&one([0.0; 3], [0.0; 3], [1.0 / 3.0; 3], 300.0, 0.1));
        assert_eq!(p.status, "optimal");
        assert!((p.classes[0].x.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn levels_not_allowed_are_never_used_and_ties_go_to_quality() {
        // L2 is cheapest and, by q, good enough, but not allowed: L1 takes its place.
        let mut inp = one([3.0, 2.0, 1.0], [0.0; 3], [1.0, 0.95, 0.95], 500.0, 0.1);
        inp.classes[0].allowed = vec![true, true, false];
        let p = solve(&inp);
        assert!(close(&p.classes[0].x, &[0.0, 1.0, 0.0]), "{:?}", p.classes[0].x);
        // Nothing but the baseline allowed: the baseline.
        inp.classes[0].allowed = vec![true, false, false];
        assert!(close(&solve(&inp).classes[0].x, &[1.0, 0.0, 0.0]));
        // L1 and L2 cost the same; L1 keeps more quality: L1.
        let p = solve(&one([3.0, 1.0, 1.0], [0.0; 3], [1.0, 0.97, 0.93], 500.0, 0.1));
        assert!(close(&p.classes[0].x, &[0.0, 1.0, 0.0]), "{:?}", p.classes[0].x);
        // Everything costs the same: the baseline, the best.
        let p = solve(&one([1.0, 1.0, 1.0], [0.0; 3], [1.0, 0.97, 0.93], 500.0, 0.1));
        assert!(close(&p.classes[0].x, &[1.0, 0.0, 0.0]), "{:?}", p.classes[0].x);
    }

    #[test]
    fn classes_never_do_worse_than_one_mix() {
        // Two classes: shortening hurts the first but not the second. One mix
        // for both must keep L0 for everyone to some degree; per class, the
        // second class goes to L2 and the first keeps L0.
        let a = ClassInputs { name: "a".into(), weight: 0.5, e: vec![2.0, 1.5, 1.0], p: vec![0.0; 3], q: vec![0.8, 0.1, 0.1], allowed: vec![] };
        let b = ClassInputs { name: "b".into(), weight: 0.5, e: vec![2.0, 1.5, 1.0], p: vec![0.0; 3], q: vec![0.2, 0.3, 0.5], allowed: vec![] };
        let merged = ClassInputs { name: "all".into(), weight: 1.0, e: vec![2.0, 1.5, 1.0], p: vec![0.0; 3], q: vec![0.5, 0.2, 0.3], allowed: vec![] };
        let base = Inputs { classes: vec![merged], ci: 300.0, ci_min: 100.0, ci_max: 500.0, xi: 0.1, embodied_g: 0.0, lifetime_s: 1.0, margin: 0.0 };
        let split = Inputs { classes: vec![a, b], ..base.clone() };
        let (m, s) = (solve(&base), solve(&split));
        assert!(s.expected_g < m.expected_g - 1e-6, "{} vs {}", s.expected_g, m.expected_g);
        assert!(s.quality >= s.floor - 1e-9 && m.quality >= m.floor - 1e-9);
        assert!(close(&s.classes[1].x, &[0.0, 0.0, 1.0]), "{:?}", s.classes[1].x);
    }
}
