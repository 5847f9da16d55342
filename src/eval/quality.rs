//! Quality from verdicts (pure): whether each level kept the baseline's
//! quality on a prompt (by the judge's picks or by agreement of final
//! answers), pooled per class with a lower confidence bound, and `q`.

use serde::{Deserialize, Serialize};

use super::EvalRun;

/// One prompt's verdicts: per rotation, the level the judge picked (None:
/// the reply could not be read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptVerdict {
    pub prompt: String,
    pub class: String,
    pub picks: Vec<Option<usize>>,
    /// Credit per level: the levels with the most votes share 1 (ties split);
    /// all zero when no rotation could be read.
    pub credit: Vec<f64>,
    /// Per level, whether its answer kept the baseline's quality (1 or 0;
    /// the baseline is 1; None: no signal for this prompt). From the
    /// `signal` below.
    #[serde(default)]
    pub kept: Vec<Option<f64>>,
    /// `agreement` (the level's answer reaches the same final answer as the
    /// baseline's: [`crate::eval::answers::agree`]) or `judge` (the judge did not
    /// prefer the baseline's answer to it more often than not).
    #[serde(default)]
    pub signal: String,
}

/// The one-sided confidence of the quality bound (95%).
pub const BOUND_Z: f64 = 1.645;

/// Per level, whether it kept the baseline's quality by the judge's picks,
/// `picks[r]` being the pick under rotation `r` of [`crate::eval::judge::rotations`]:
/// a level keeps it when the judge picked it at least as often as the
/// baseline (level 0). None (no signal) unless the judge told the answers
/// apart: at least two rotations could be read and the picks were not all
/// in the same place. A judge that always names, say, the first answer
/// gives every level one vote under the rotations, and would otherwise
/// license every level while judging nothing.
pub fn kept_by_judge(picks: &[Option<usize>], levels: usize) -> Vec<Option<f64>> {
    let mut votes = vec![0usize; levels];
    let mut places = Vec::new();
    for (r, p) in picks.iter().enumerate() {
        if let Some(p) = *p {
            if p < levels {
                votes[p] += 1;
                places.push((p + levels - r % levels) % levels);
            }
        }
    }
    if places.len() < 2 || places.iter().all(|x| *x == places[0]) {
        return vec![None; levels];
    }
    votes.iter().map(|v| Some(if *v >= votes[0] { 1.0 } else { 0.0 })).collect()
}

/// Per level, whether its answer agrees with the baseline's (level 0);
/// None when the class has no extractable final answer or the baseline's
/// answer has none.
pub fn kept_by_agreement(class: &str, answers: &[String]) -> Option<Vec<Option<f64>>> {
    let base = answers.first()?;
    crate::eval::answers::agree(class, base, base)?;
    Some(answers.iter().map(|a| crate::eval::answers::agree(class, base, a).map(|k| if k { 1.0 } else { 0.0 })).collect())
}

/// How well a level kept the baseline's quality on one class, over the
/// evaluated prompts that had a signal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    pub n: usize,
    /// The share of prompts whose answer kept the baseline's quality.
    pub mean: f64,
    /// Its one-sided 95% lower bound (Wilson): what the optimizer may rely on.
    pub lower: f64,
}

/// Per level, how well it kept quality on `class` (`"all"`: every class),
/// pooled over `runs`' verdicts.
pub fn kept_stats(runs: &[EvalRun], class: &str, levels: usize) -> Vec<Kept> {
    (0..levels)
        .map(|i| {
            let vals: Vec<f64> = runs
                .iter()
                .flat_map(|r| &r.verdicts)
                .filter(|v| class == "all" || v.class == class)
                .filter_map(|v| v.kept.get(i).copied().flatten())
                .collect();
            let n = vals.len();
            let sum: f64 = vals.iter().sum();
            if i == 0 {
                return Kept { n, mean: 1.0, lower: 1.0 };
            }
            let mean = if n > 0 { sum / n as f64 } else { 0.0 };
            Kept { n, mean, lower: crate::eval::answers::wilson_lower(sum, n as f64, BOUND_Z) }
        })
        .collect()
}

/// Samples a level needs on a class before it can be settled out.
pub const SETTLE_MIN_SAMPLES: usize = 20;

/// How long verdicts settle a class: a week on, its prompts are asked
/// again (the traffic, and so the class's prompts, may have changed).
pub const SETTLED_FOR_MS: u64 = 7 * 24 * 3600 * 1000;

/// The classes no further evaluation is likely to open to a shorter level:
/// every level after the baseline has at least [`SETTLE_MIN_SAMPLES`]
/// verdicts over `runs` and the upper end of its 95% (one-sided, Wilson)
/// interval of the kept share is below `lowest_floor`, the least the
/// optimizer ever asks (its floor at the dirtiest hour). Such a class is
/// served at the baseline whatever the grid does, so answering its prompts
/// at every level again would spend carbon to learn nothing that changes
/// the plan. `classes` may be `["all"]` (one mix over all classes).
pub fn settled(runs: &[EvalRun], classes: &[&str], levels: usize, lowest_floor: f64) -> Vec<String> {
    classes
        .iter()
        .filter(|class| {
            levels > 1
                && kept_stats(runs, class, levels).iter().skip(1).all(|k| {
                    k.n >= SETTLE_MIN_SAMPLES
                        && crate::eval::answers::wilson_upper(k.mean * k.n as f64, k.n as f64, BOUND_Z) < lowest_floor
                })
        })
        .map(|c| c.to_string())
        .collect()
}

/// Credit per level from the rotations' picks.
pub fn credit(picks: &[Option<usize>], levels: usize) -> Vec<f64> {
    let mut votes = vec![0usize; levels];
    for p in picks.iter().flatten() {
        if *p < levels {
            votes[*p] += 1;
        }
    }
    let top = votes.iter().copied().max().unwrap_or(0);
    if top == 0 {
        return vec![0.0; levels];
    }
    let winners = votes.iter().filter(|v| **v == top).count() as f64;
    votes.iter().map(|v| if *v == top { 1.0 / winners } else { 0.0 }).collect()
}

/// `q`: the share of judged prompts won by each level (prompts with no
/// readable verdict are left out). None if none could be judged.
pub fn quality(verdicts: &[PromptVerdict], levels: usize) -> Option<Vec<f64>> {
    let judged: Vec<&PromptVerdict> = verdicts.iter().filter(|v| v.credit.iter().sum::<f64>() > 0.0).collect();
    if judged.is_empty() {
        return None;
    }
    let n = judged.len() as f64;
    Some((0..levels).map(|i| judged.iter().map(|v| v.credit[i]).sum::<f64>() / n).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_and_q_with_ties_and_failures() {
        assert_eq!(credit(&[Some(0), Some(0), Some(1)], 3), [1.0, 0.0, 0.0]);
        assert_eq!(credit(&[Some(0), Some(1), None], 3), [0.5, 0.5, 0.0]);
        assert_eq!(credit(&[None, None, None], 3), [0.0, 0.0, 0.0]);
        let v = |credit: Vec<f64>| PromptVerdict { prompt: "p".into(), class: "question".into(), picks: vec![], credit, kept: vec![], signal: "judge".into() };
        let q = quality(&[v(vec![1.0, 0.0, 0.0]), v(vec![0.5, 0.5, 0.0]), v(vec![0.0, 0.0, 0.0]), v(vec![0.0, 0.0, 1.0])], 3).unwrap();
        assert!((q[0] - 0.5).abs() < 1e-12 && (q[1] - 0.5 / 3.0).abs() < 1e-12 && (q[2] - 1.0 / 3.0).abs() < 1e-12, "{q:?}");
        assert!(quality(&[v(vec![0.0; 3])], 3).is_none());
    }

    #[test]
    fn kept_from_judge_picks_and_from_agreement() {
        // Rotations of 3: [0,1,2], [1,2,0], [2,0,1]. The judge picked L0
        // twice (first, then third place), L1 once: L1 did not keep
        // quality, L2 neither.
        assert_eq!(kept_by_judge(&[Some(0), Some(0), Some(1)], 3), [Some(1.0), Some(0.0), Some(0.0)]);
        // L1 as often as L0, in different places: kept.
        assert_eq!(kept_by_judge(&[Some(0), Some(0), Some(0)], 3), [Some(1.0), Some(0.0), Some(0.0)]);
        assert_eq!(kept_by_judge(&[Some(1), Some(0), None], 3), [Some(1.0), Some(1.0), Some(0.0)]);
        assert_eq!(kept_by_judge(&[None, None, None], 3), [None, None, None]);
        // A judge that always names the first answer (L0, L1, L2 in turn
        // under the rotations) or the second told nothing apart: no signal,
        // not "every level kept".
        assert_eq!(kept_by_judge(&[Some(0), Some(1), Some(2)], 3), [None, None, None]);
        assert_eq!(kept_by_judge(&[Some(1), Some(2), None], 3), [None, None, None]);
        assert_eq!(kept_by_judge(&[Some(0), Some(1)], 2), [None, None]);
        // One readable rotation is not enough to tell.
        assert_eq!(kept_by_judge(&[Some(2), None, None], 3), [None, None, None]);
        // Two answers, the judge picked the shorter one in both places.
        assert_eq!(kept_by_judge(&[Some(1), Some(1)], 2), [Some(1.0), Some(1.0)]);
        assert_eq!(kept_by_judge(&[Some(0), Some(0)], 2), [Some(1.0), Some(0.0)]);
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(kept_by_agreement("math", &a(&["2 + 3 = 5. So 5.", "5", "6"])), Some(vec![Some(1.0), Some(1.0), Some(0.0)]));
        assert_eq!(kept_by_agreement("math", &a(&["I do not know", "5", "6"])), None);
        assert_eq!(kept_by_agreement("instruction", &a(&["x", "y", "z"])), None);
    }

    #[test]
    fn a_class_is_settled_only_when_no_level_could_clear_the_lowest_floor() {
        let verdict = |class: &str, l1: bool, l2: bool| PromptVerdict {
            prompt: "p".into(), class: class.into(), picks: vec![], credit: vec![],
            kept: vec![Some(1.0), Some(l1 as u8 as f64), Some(l2 as u8 as f64)], signal: "agreement".into(),
        };
        let run = |verdicts: Vec<PromptVerdict>| EvalRun { verdicts, ..Default::default() };
        // math: both shorter levels keep 5 of 20 (upper bound ~0.43);
        // choice: L1 keeps all 20 (upper bound 1) though L2 keeps none;
        // question: too few samples to tell.
        let mut v: Vec<PromptVerdict> = (0..20).map(|k| verdict("math", k < 5, k < 5)).collect();
        v.extend((0..20).map(|_| verdict("choice", true, false)));
        v.extend((0..19).map(|_| verdict("question", false, false)));
        let runs = [run(v)];
        let classes = ["choice", "math", "question", "instruction"];
        assert_eq!(settled(&runs, &classes, 3, 0.92), ["math"]);
        // One sample more: question settles too.
        let more = [runs[0].clone(), run(vec![verdict("question", false, false)])];
        assert_eq!(settled(&more, &classes, 3, 0.92), ["math", "question"]);
        // A level that keeps 19 of 20 is not settled out: it may still clear.
        let good = [run((0..20).map(|k| verdict("math", k > 0, k > 0)).collect())];
        assert!(settled(&good, &classes, 3, 0.92).is_empty());
        // Pooled over every class ("all"), and nothing settles without levels to shorten to.
        assert_eq!(settled(&runs, &["all"], 3, 0.92), ["all"], "pooled, choice's L1 is outweighed");
        assert!(settled(&good, &["all"], 3, 0.92).is_empty());
        assert!(settled(&runs, &classes, 1, 0.92).is_empty());
    }

    #[test]
    fn kept_stats_pool_runs_and_bound_below() {
        let verdict = |class: &str, kept: Vec<Option<f64>>| PromptVerdict {
            prompt: "p".into(), class: class.into(), picks: vec![], credit: vec![], kept, signal: "agreement".into(),
        };
        let run = |verdicts: Vec<PromptVerdict>| EvalRun {
            id: "r".into(), started_ms: 0, finished_ms: 0, reason: String::new(), intensity_gco2_per_kwh: 0.0, judge: String::new(),
            levels: vec![], q: None, verdicts, failures: 0, judge_calls: 0, jobs: vec![], tokens: 0, energy_j: 0.0, carbon_g: 0.0,
            estimated: true, error: None, wording: String::new(), cells: vec![], settled: vec![],
        };
        let r1 = run((0..10).map(|k| verdict("math", vec![Some(1.0), Some(1.0), Some(if k < 5 { 1.0 } else { 0.0 })])).collect());
        let r2 = run((0..10).map(|_| verdict("math", vec![Some(1.0), Some(1.0), None])).chain([verdict("choice", vec![Some(1.0), Some(0.0), Some(0.0)])]).collect());
        let one = kept_stats(std::slice::from_ref(&r1), "math", 3);
        let two = kept_stats(&[r1.clone(), r2.clone()], "math", 3);
        assert_eq!((one[1].n, two[1].n), (10, 20));
        assert_eq!(two[2].n, 10, "no signal is not a sample");
        assert!(one[1].mean == 1.0 && one[1].lower < two[1].lower && two[1].lower < 1.0);
        assert!((two[2].mean - 0.5).abs() < 1e-12 && two[2].lower < 0.5);
        assert_eq!(two[0].lower, 1.0);
        let all = kept_stats(&[r1, r2], "all", 3);
        assert_eq!(all[1].n, 21);
        assert_eq!(kept_stats(&[], "math", 3)[1], Kept { n: 0, mean: 0.0, lower: 0.0 });
    }
}
