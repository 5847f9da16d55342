//! `sproutctl bench`: the proof anyone can rerun on their own model. It
//! drives a running sproutd with labelled prompts (GSM8K, MMLU, Natural
//! Questions, TriviaQA in the formats of `../shared/data/prompts`), pinned at
//! each level and unpinned (the daemon chooses), scores every answer against
//! its reference, and reports per dataset and overall: accuracy and its
//! paired difference to the baseline level with a 95% interval, tokens,
//! energy, carbon, latency, and the mix the daemon chose.
//!
//! With `--judge`, a judge (the daemon's own model, or any OpenAI-compatible
//! endpoint) also compares every answer with the baseline's to the same
//! prompt, as the evaluator does for open prompts: that scores AlpacaEval's
//! instructions, which have no reference, and measures how well each of the
//! evaluator's quality signals (agreement of final answers, the judge)
//! tracks the references where there are some.
//!
//! Splits: each file's first [`TUNE_ITEMS`] items are the tuning split
//! (where wordings are chosen); the test split is spread evenly over the rest
//! (every subject of MMLU's subject-ordered file). The two never overlap.
//!
//! Loading and scoring are pure ([`load`], [`score`], [`summarize`]); [`run`]
//! does the HTTP.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};

use crate::eval::answers;
use super::{print_json, BenchArgs, CliError};
use crate::client::{Client, ClientError};
use crate::wire::{EvalRunReply, EvalRunRequest};

/// Items before this index of each file form the tuning split.
pub const TUNE_ITEMS: usize = 100;

/// The datasets `bench` knows: name, file under the data folder.
pub const DATASETS: [(&str, &str); 5] = [
    ("gsm8k", "gsm8k/test.jsonl"),
    ("mmlu", "mmlu/test_first35_per_subject.jsonl"),
    ("nq", "natural_questions/nq_open_dev_first2000.jsonl"),
    ("triviaqa", "triviaqa/sprout_triviaqa_2000.jsonl"),
    ("alpacaeval", "alpaca_eval/alpaca_eval_text_davinci_003.jsonl"),
];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Reference {
    Number(f64),
    Letter(char),
    Aliases(Vec<String>),
    /// An open instruction: no reference; only a judge scores it.
    Open,
}

#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub dataset: String,
    /// Line number in its file (0-based).
    pub index: usize,
    pub prompt: String,
    pub reference: Reference,
}

/// Whether `answer` is correct: GSM8K, its last number equals the
/// reference; MMLU, the option letter it picks is the key; NQ and TriviaQA,
/// a reference alias appears in it (case and punctuation aside). None for
/// an open instruction (no reference).
pub fn score(reference: &Reference, answer: &str) -> Option<bool> {
    Some(match reference {
        Reference::Number(x) => answers::last_number(answer).is_some_and(|a| (a - x).abs() < 1e-6),
        Reference::Letter(c) => answers::choice_letter(answer) == Some(*c),
        Reference::Aliases(golds) => {
            let a = format!(" {} ", answers::normalize(answer));
            golds.iter().any(|g| !g.is_empty() && a.contains(&format!(" {g} ")))
        }
        Reference::Open => return None,
    })
}

fn parse_item(dataset: &str, index: usize, v: &Value) -> Result<Item, String> {
    let s = |k: &str| v[k].as_str().map(str::to_string).ok_or_else(|| format!("no string \"{k}\""));
    let (prompt, reference) = match dataset {
        "gsm8k" => {
            let a = s("answer")?;
            let gold = a.rsplit("####").next().unwrap_or("").trim().replace(',', "");
            (s("question")?, Reference::Number(gold.parse().map_err(|_| format!("answer {gold:?} is not a number"))?))
        }
        "mmlu" => {
            let mut prompt = s("question")?;
            for (i, c) in v["choices"].as_array().ok_or("no \"choices\"")?.iter().enumerate() {
                prompt.push_str(&format!("\n({}): {}", (b'A' + i as u8) as char, c.as_str().unwrap_or("")));
            }
            (prompt, Reference::Letter(s("answer")?.chars().next().ok_or("empty answer")?))
        }
        "nq" => {
            let golds = v["answer"].as_array().ok_or("no \"answer\" list")?.iter().filter_map(Value::as_str).map(answers::normalize).collect();
            (s("question")?, Reference::Aliases(golds))
        }
        "triviaqa" => {
            let golds = s("output")?.split("; ").map(answers::normalize).collect();
            (s("instruction")?, Reference::Aliases(golds))
        }
        "alpacaeval" => (s("instruction")?, Reference::Open),
        other => return Err(format!("unknown dataset {other}")),
    };
    Ok(Item { dataset: dataset.to_string(), index, prompt, reference })
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Which items of a file of `len` lines: `tune` takes `offset..offset+n` of
/// the first [`TUNE_ITEMS`]; `test` takes items `offset..offset+n` of a
/// fixed order of the rest that steps through the file by the golden ratio
/// (so any run of it spreads over the whole file, and different offsets
/// never share an item).
pub fn pick(len: usize, split: &str, offset: usize, n: usize) -> Result<Vec<usize>, String> {
    match split {
        "tune" => Ok((offset..(offset + n).min(TUNE_ITEMS.min(len))).collect()),
        "test" => {
            let rest = len.saturating_sub(TUNE_ITEMS);
            if rest == 0 {
                return Ok(vec![]);
            }
            let mut step = ((rest as f64 * 0.618_033_988_75).round() as usize).max(1);
            while gcd(step, rest) != 1 {
                step += 1;
            }
            Ok((offset..(offset + n).min(rest)).map(|j| TUNE_ITEMS + (j * step) % rest).collect())
        }
        other => Err(format!("--split {other:?}: use tune or test")),
    }
}

/// Loads `n` items of each dataset in `sets` from `dir`.
pub fn load(dir: &Path, sets: &[String], split: &str, offset: usize, n: usize) -> Result<Vec<Item>, String> {
    let mut out = Vec::new();
    for name in sets {
        let (_, file) = DATASETS.iter().find(|(d, _)| d == name).ok_or_else(|| {
            format!("--datasets: unknown {name:?} (one of {})", DATASETS.map(|d| d.0).join(", "))
        })?;
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let lines: Vec<&str> = text.lines().collect();
        for i in pick(lines.len(), split, offset, n)? {
            let v: Value = serde_json::from_str(lines[i]).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
            out.push(parse_item(name, i, &v).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?);
        }
    }
    Ok(out)
}

/// One answer, as measured.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub dataset: String,
    pub index: usize,
    /// The level pinned, or `auto`.
    pub mode: String,
    /// The level that served it (the daemon's choice for `auto`).
    pub directive: String,
    /// Against the reference; None where there is none (open instructions).
    pub correct: Option<bool>,
    /// Whether the judge found it kept the baseline mode's quality on the
    /// same prompt (`--judge`; None: not judged, or the judge told the two
    /// answers apart in no readable way). An answer identical to the
    /// baseline's kept it without asking.
    pub judge_kept: Option<bool>,
    pub completion_tokens: u64,
    pub energy_j: f64,
    pub carbon_g: f64,
    pub estimated: bool,
    /// Client-side wall time, s.
    pub latency_s: f64,
    pub text: String,
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub dataset: String,
    pub mode: String,
    pub n: usize,
    pub accuracy: f64,
    /// Accuracy relative to the baseline mode's on the same items.
    pub accuracy_vs_base: f64,
    /// Paired difference to the baseline mode (same items) and its 95% interval.
    pub diff: f64,
    pub diff_ci95: f64,
    pub tokens: f64,
    pub energy_j: f64,
    pub carbon_g: f64,
    /// Carbon per request relative to the baseline mode's.
    pub carbon_vs_base: f64,
    pub latency_p50: f64,
    pub latency_p95: f64,
    /// Share of answers served at each level.
    pub mix: Vec<(String, f64)>,
    /// The evaluator's reference-free signal on these answers: the share
    /// that reach the same final answer as the baseline mode's (over items
    /// whose baseline answer has one), its 95% lower bound, and how many.
    pub agreement: f64,
    pub agreement_lower: f64,
    pub agreement_n: usize,
    /// The judge's verdicts (`--judge`): the share of answers that kept the
    /// baseline's quality, its 95% lower bound, and how many had a verdict.
    pub judge_kept: f64,
    pub judge_kept_lower: f64,
    pub judge_n: usize,
}

/// How one quality signal tracked the references on one dataset and mode:
/// per item, the signal's verdict against "kept by reference" (the answer
/// did not lose a correct baseline answer).
#[derive(Debug, Clone, Serialize)]
pub struct Tracking {
    pub dataset: String,
    pub mode: String,
    /// `agreement` or `judge`.
    pub signal: String,
    /// Items with both a verdict and a reference.
    pub n: usize,
    /// Share kept by reference, and by the signal, over those items.
    pub kept_by_reference: f64,
    pub kept_by_signal: f64,
    /// Share of items where the two verdicts agree.
    pub matched: f64,
    /// Items the signal called kept that lost a correct baseline answer
    /// (the unsafe error), and items it called lost that kept it.
    pub false_kept: usize,
    pub false_lost: usize,
}

/// The prompt class of a dataset's items (as the daemon classifies them).
pub fn class_of(dataset: &str) -> &'static str {
    match dataset {
        "gsm8k" => "math",
        "mmlu" => "choice",
        "alpacaeval" => "instruction",
        _ => "question",
    }
}

fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// The report's datasets: those of `answers` in order of appearance, then `overall`.
fn datasets_of(answers: &[Answer]) -> Vec<String> {
    let mut datasets: Vec<String> = Vec::new();
    for a in answers {
        if !datasets.contains(&a.dataset) {
            datasets.push(a.dataset.clone());
        }
    }
    datasets.push("overall".into());
    datasets
}

/// The answers of `mode` on `dataset` (every dataset for `overall`).
fn answers_of<'a>(answers: &'a [Answer], dataset: &str, mode: &str) -> Vec<&'a Answer> {
    answers.iter().filter(|a| a.mode == mode && (dataset == "overall" || a.dataset == dataset)).collect()
}

/// The baseline mode's answer to the same item as `a`.
fn base_of<'a>(base: &[&'a Answer], a: &Answer) -> Option<&'a Answer> {
    base.iter().copied().find(|b| b.dataset == a.dataset && b.index == a.index)
}

fn share(hits: usize, n: usize) -> f64 {
    if n == 0 { f64::NAN } else { hits as f64 / n as f64 }
}

/// The report's rows: per dataset and `overall`, per mode, against the
/// first mode (the baseline) on the same items. Accuracy counts only
/// answers with a reference (NaN where none has one).
pub fn summarize(answers: &[Answer], modes: &[String], levels: &[String]) -> Vec<Row> {
    let datasets = datasets_of(answers);
    let base_mode = modes.first().cloned().unwrap_or_default();
    let mut rows = Vec::new();
    for d in &datasets {
        let of = |m: &str| answers_of(answers, d, m);
        let base = of(&base_mode);
        let accuracy = |these: &[&Answer]| {
            let scored: Vec<bool> = these.iter().filter_map(|a| a.correct).collect();
            share(scored.iter().filter(|c| **c).count(), scored.len())
        };
        let base_acc = accuracy(&base);
        let base_g = base.iter().map(|a| a.carbon_g).sum::<f64>() / base.len().max(1) as f64;
        for m in modes {
            let these = of(m);
            if these.is_empty() {
                continue;
            }
            let n = these.len();
            let acc = accuracy(&these);
            // Paired: the same item's baseline answer.
            let diffs: Vec<f64> = these
                .iter()
                .filter_map(|a| {
                    let b = base_of(&base, a)?;
                    Some(a.correct? as u8 as f64 - b.correct? as u8 as f64)
                })
                .collect();
            let k = diffs.len().max(1) as f64;
            let mean = diffs.iter().sum::<f64>() / k;
            let var = if diffs.len() > 1 { diffs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (k - 1.0) } else { 0.0 };
            let g = these.iter().map(|a| a.carbon_g).sum::<f64>() / n as f64;
            let agreements: Vec<bool> = these
                .iter()
                .filter_map(|a| answers::agree(class_of(&a.dataset), &base_of(&base, a)?.text, &a.text))
                .collect();
            let agreed = agreements.iter().filter(|x| **x).count();
            let judged: Vec<bool> = these.iter().filter_map(|a| a.judge_kept).collect();
            let judged_kept = judged.iter().filter(|x| **x).count();
            let mix = levels
                .iter()
                .map(|l| (l.clone(), these.iter().filter(|a| &a.directive == l).count() as f64 / n as f64))
                .collect();
            rows.push(Row {
                dataset: d.clone(),
                mode: m.clone(),
                n,
                accuracy: acc,
                accuracy_vs_base: if base_acc > 0.0 { acc / base_acc } else { f64::NAN },
                diff: if diffs.is_empty() { f64::NAN } else { mean },
                diff_ci95: if diffs.is_empty() { f64::NAN } else { 1.96 * (var / k).sqrt() },
                tokens: these.iter().map(|a| a.completion_tokens as f64).sum::<f64>() / n as f64,
                energy_j: these.iter().map(|a| a.energy_j).sum::<f64>() / n as f64,
                carbon_g: g,
                carbon_vs_base: if base_g > 0.0 { g / base_g } else { f64::NAN },
                latency_p50: quantile(these.iter().map(|a| a.latency_s).collect(), 0.5),
                latency_p95: quantile(these.iter().map(|a| a.latency_s).collect(), 0.95),
                mix,
                agreement: share(agreed, agreements.len()),
                agreement_lower: answers::wilson_lower(agreed as f64, agreements.len() as f64, crate::eval::quality::BOUND_Z),
                agreement_n: agreements.len(),
                judge_kept: share(judged_kept, judged.len()),
                judge_kept_lower: answers::wilson_lower(judged_kept as f64, judged.len() as f64, crate::eval::quality::BOUND_Z),
                judge_n: judged.len(),
            });
        }
    }
    rows
}

/// How the evaluator's quality signals tracked the references: per dataset
/// with references (and `overall`), per mode after the baseline, per signal
/// that gave verdicts there.
pub fn tracking(answers: &[Answer], modes: &[String]) -> Vec<Tracking> {
    let datasets = datasets_of(answers);
    let base_mode = modes.first().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for d in &datasets {
        let of = |m: &str| answers_of(answers, d, m);
        let base = of(&base_mode);
        for m in modes.iter().skip(1) {
            let these = of(m);
            for signal in ["agreement", "judge"] {
                // (kept by reference, kept by the signal) per item.
                let pairs: Vec<(bool, bool)> = these
                    .iter()
                    .filter_map(|a| {
                        let b = base_of(&base, a)?;
                        let by_reference = !(b.correct? && !a.correct?);
                        let by_signal = match signal {
                            "agreement" => answers::agree(class_of(&a.dataset), &b.text, &a.text)?,
                            _ => a.judge_kept?,
                        };
                        Some((by_reference, by_signal))
                    })
                    .collect();
                if pairs.is_empty() {
                    continue;
                }
                let n = pairs.len();
                out.push(Tracking {
                    dataset: d.clone(),
                    mode: m.clone(),
                    signal: signal.into(),
                    n,
                    kept_by_reference: share(pairs.iter().filter(|p| p.0).count(), n),
                    kept_by_signal: share(pairs.iter().filter(|p| p.1).count(), n),
                    matched: share(pairs.iter().filter(|p| p.0 == p.1).count(), n),
                    false_kept: pairs.iter().filter(|p| !p.0 && p.1).count(),
                    false_lost: pairs.iter().filter(|p| p.0 && !p.1).count(),
                });
            }
        }
    }
    out
}

/// For answers of `mode` served at the baseline's level with as many tokens
/// as the baseline mode's answer to the same item: the median latency
/// difference, s, and how many such pairs (the serving path's own cost of
/// an unpinned request).
pub fn paired_latency(answers: &[Answer], base_mode: &str, mode: &str) -> Option<(f64, usize)> {
    let diffs: Vec<f64> = answers
        .iter()
        .filter(|a| a.mode == mode && a.directive == base_mode)
        .filter_map(|a| {
            let b = answers.iter().find(|b| b.mode == base_mode && b.dataset == a.dataset && b.index == a.index)?;
            (b.completion_tokens == a.completion_tokens).then(|| a.latency_s - b.latency_s)
        })
        .collect();
    let n = diffs.len();
    (n > 0).then(|| (quantile(diffs, 0.5), n))
}

/// A share as a percentage, `-` where there is none.
fn pct(v: f64, width: usize) -> String {
    if v.is_finite() { format!("{:>w$.1}%", v * 100.0, w = width - 1) } else { format!("{:>width$}", "-") }
}

/// A share and its lower bound, `-` where there is none.
fn pct_lb(v: f64, lb: f64, n: usize) -> String {
    if n == 0 { format!("{:>12}", "-") } else { format!("{:>5.0}% ({:>3.0}%)", v * 100.0, lb * 100.0) }
}

/// The table people read (with `judged`, the judge's column).
pub fn render(rows: &[Row], judged: bool) -> String {
    let mut out = format!(
        "{:<10} {:<5} {:>4} {:>7} {:>8} {:>16} {:>7} {:>8} {:>9} {:>8} {:>7} {:>7} {:>12}{}  {}\n",
        "dataset", "mode", "n", "acc", "acc/L0", "diff (95% CI)", "tokens", "J/req", "g/req", "g/L0", "p50 s", "p95 s", "agree (lb)",
        if judged { format!(" {:>12}", "judge (lb)") } else { String::new() },
        "mix"
    );
    for r in rows {
        let mix: Vec<String> = r.mix.iter().filter(|(_, s)| *s > 0.0).map(|(l, s)| format!("{l} {:.0}%", s * 100.0)).collect();
        let diff = if r.diff.is_finite() { format!("{:>+7.1} ±{:>5.1}pp", r.diff * 100.0, r.diff_ci95 * 100.0) } else { format!("{:>16}", "-") };
        out.push_str(&format!(
            "{:<10} {:<5} {:>4} {} {} {} {:>7.1} {:>8.1} {:>9.5} {} {:>7.2} {:>7.2} {}{}  {}\n",
            r.dataset,
            r.mode,
            r.n,
            pct(r.accuracy, 7),
            pct(r.accuracy_vs_base, 8),
            diff,
            r.tokens,
            r.energy_j,
            r.carbon_g,
            pct(r.carbon_vs_base, 8),
            r.latency_p50,
            r.latency_p95,
            pct_lb(r.agreement, r.agreement_lower, r.agreement_n),
            if judged { format!(" {}", pct_lb(r.judge_kept, r.judge_kept_lower, r.judge_n)) } else { String::new() },
            mix.join(" ")
        ));
    }
    out
}

/// How each signal tracked the references, as a table.
pub fn render_tracking(rows: &[Tracking]) -> String {
    let mut out = format!(
        "{:<10} {:<5} {:<10} {:>4} {:>11} {:>11} {:>8} {:>10} {:>10}\n",
        "dataset", "mode", "signal", "n", "kept (ref)", "kept (sig)", "matched", "false kept", "false lost"
    );
    for t in rows {
        out.push_str(&format!(
            "{:<10} {:<5} {:<10} {:>4} {} {} {} {:>10} {:>10}\n",
            t.dataset,
            t.mode,
            t.signal,
            t.n,
            pct(t.kept_by_reference, 11),
            pct(t.kept_by_signal, 11),
            pct(t.matched, 8),
            t.false_kept,
            t.false_lost
        ));
    }
    out
}

/// An SVG: per dataset and mode, carbon per request against accuracy, both
/// relative to the baseline mode (for open instructions, the share the
/// judge found kept the baseline's quality).
pub fn plot_svg(rows: &[Row]) -> String {
    let (w, h, m) = (640.0, 420.0, 50.0);
    let x = |v: f64| m + (v.clamp(0.0, 1.2) / 1.2) * (w - 2.0 * m);
    let y = |v: f64| h - m - (v.clamp(0.0, 1.4) / 1.4) * (h - 2.0 * m);
    let colors = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02"];
    let mut datasets: Vec<&str> = Vec::new();
    for r in rows {
        if !datasets.contains(&r.dataset.as_str()) {
            datasets.push(&r.dataset);
        }
    }
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n");
    s.push_str(&format!("<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n"));
    s.push_str(&format!("<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n", h - m, w - m, h - m));
    s.push_str(&format!("<line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n", h - m));
    s.push_str(&format!("<line x1=\"{m}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#999\" stroke-dasharray=\"4\"/>\n", y(0.97), w - m));
    s.push_str(&format!("<text x=\"{}\" y=\"{}\">97% of L0's accuracy</text>\n", w - m - 120.0, y(0.97) - 4.0));
    s.push_str(&format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">carbon per request / baseline</text>\n", w / 2.0, h - 12.0));
    s.push_str(&format!("<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">accuracy / baseline (open prompts: judged kept)</text>\n", h / 2.0, h / 2.0));
    for t in [0.0, 0.4, 0.8, 1.2] {
        s.push_str(&format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{t:.1}</text>\n", x(t), h - m + 14.0));
    }
    for t in [0.0, 0.5, 1.0] {
        s.push_str(&format!("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{t:.1}</text>\n", m - 4.0, y(t) + 4.0));
    }
    for r in rows {
        // Open instructions have no accuracy: the judge's kept share stands in.
        let quality = if r.accuracy_vs_base.is_finite() { r.accuracy_vs_base } else { r.judge_kept };
        if !(r.carbon_vs_base.is_finite() && quality.is_finite()) {
            continue;
        }
        let c = colors[datasets.iter().position(|d| *d == r.dataset).unwrap_or(0) % colors.len()];
        let (cx, cy) = (x(r.carbon_vs_base), y(quality));
        s.push_str(&format!("<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"4\" fill=\"{c}\"/>\n"));
        s.push_str(&format!("<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{c}\">{} {}</text>\n", cx + 6.0, cy - 4.0, r.dataset, r.mode));
    }
    s.push_str("</svg>\n");
    s
}

/// How `bench` runs.
pub struct Options {
    pub modes: Vec<String>,
    pub max_tokens: u32,
    pub concurrency: usize,
    /// Before the unpinned mode: force an evaluation run and wait for it.
    pub eval_first: bool,
    /// Per-class prompts of that run.
    pub eval_prompts: Option<usize>,
    /// After the modes: judge every answer against the baseline's.
    pub judge: Option<Judge>,
}

/// Who judges with `--judge`.
pub enum Judge {
    /// The daemon under test (its served model), pinned at the baseline
    /// level, greedy, its prompts not sampled (`store: false`): the
    /// evaluator's `local` judge, asked from outside.
    Local { baseline: String },
    /// Any OpenAI-compatible endpoint (`URL` ends in `/v1`), as the
    /// evaluator's `openai` judge.
    Remote { url: String, model: String, key: Option<String>, http: reqwest::Client },
}

/// Retries of a remote judge call (429 and 5xx).
const JUDGE_RETRIES: u32 = 2;

impl Judge {
    /// The judge's reply to `prompt`.
    async fn ask(&self, client: &Client, prompt: &str) -> Result<String, String> {
        match self {
            Judge::Local { baseline } => {
                let body = json!({
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": crate::eval::run::JUDGE_MAX_TOKENS,
                    "temperature": 0,
                    "directive": baseline,
                    "store": false,
                });
                let answer = client.chat(&body).await.map_err(|e| e.to_string())?;
                Ok(answer.text().unwrap_or("").to_string())
            }
            Judge::Remote { url, model, key, http } => {
                crate::eval::run::ask_openai(http, url, model, key.as_deref(), JUDGE_RETRIES, prompt).await
            }
        }
    }
}

/// Whether `answer` kept the quality of `base` (the baseline mode's answer
/// to the same prompt) in the judge's eyes: asked once per order of the
/// two, read by the evaluator's rule ([`crate::eval::quality::kept_by_judge`]).
/// Identical answers keep it without asking. Returns the verdict and the
/// number of calls made.
async fn judge_pair(client: &Client, judge: &Judge, question: &str, base: &str, answer: &str) -> (Option<bool>, usize) {
    if base.trim() == answer.trim() {
        return (Some(true), 0);
    }
    let texts = [base.to_string(), answer.to_string()];
    let rotations = crate::eval::judge::rotations(2);
    let mut picks = Vec::new();
    for order in &rotations {
        let prompt = crate::eval::judge::judge_prompt(crate::eval::judge::DEFAULT_JUDGE_PROMPT, question, &texts, order);
        picks.push(match judge.ask(client, &prompt).await {
            Ok(reply) => crate::eval::judge::pick(&reply, order),
            Err(e) => {
                tracing::warn!(error = %e, "a judge call failed");
                None
            }
        });
    }
    (crate::eval::quality::kept_by_judge(&picks, 2)[1].map(|k| k > 0.5), rotations.len())
}

async fn ask(client: &Client, item: &Item, mode: &str, max_tokens: u32) -> Result<Answer, ClientError> {
    let mut body = json!({
        "messages": [{"role": "user", "content": item.prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
    });
    if mode != "auto" {
        body["directive"] = json!(mode);
    }
    let t0 = Instant::now();
    let answer = client.chat(&body).await?;
    let latency_s = t0.elapsed().as_secs_f64();
    let text = answer.text().unwrap_or("").to_string();
    let u = answer.usage.ok_or_else(|| ClientError::Protocol("a chat completion without usage".into()))?;
    Ok(Answer {
        dataset: item.dataset.clone(),
        index: item.index,
        mode: mode.to_string(),
        directive: u.sprout.directive,
        correct: score(&item.reference, &text),
        judge_kept: None,
        completion_tokens: u.completion_tokens as u64,
        energy_j: u.sprout.energy_j,
        carbon_g: u.sprout.carbon_g,
        estimated: u.sprout.estimated,
        latency_s,
        text,
    })
}

/// Runs every mode over `items` against the daemon; `progress` hears each answer.
pub async fn run(client: &Client, items: &[Item], opts: &Options, progress: &dyn Fn(&str)) -> Result<Vec<Answer>, ClientError> {
    use futures::stream::{self, StreamExt};
    let mut out = Vec::new();
    for mode in &opts.modes {
        if mode == "auto" && opts.eval_first {
            let body = EvalRunRequest { prompts: opts.eval_prompts, wait: true, ..Default::default() };
            match client.eval_run(&body).await {
                Ok(EvalRunReply::Finished(run)) => {
                    progress(&format!("evaluation {} (forced) done: {} tokens, {:.4} g", run.id, run.tokens, run.carbon_g))
                }
                Ok(EvalRunReply::Started(_)) => return Err(ClientError::Protocol("an evaluation run asked to wait answered before it finished".into())),
                // The daemon's own run is under way (it started one once it
                // had sampled enough prompts): wait for that one.
                Err(ClientError::Api { status: 409, message, .. }) if message.contains("already running") => {
                    progress("waiting for the daemon's evaluation run to finish ...");
                    while client.eval_status().await?.running {
                        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    }
                    if let Some(last) = client.eval_status().await?.last_run {
                        progress(&format!("evaluation {} done: {:.4} g", last.id, last.carbon_g));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let t0 = Instant::now();
        let answers: Vec<Result<Answer, ClientError>> =
            stream::iter(items).map(|it| ask(client, it, mode, opts.max_tokens)).buffered(opts.concurrency.max(1)).collect().await;
        let mut ok = 0;
        for a in answers {
            let a = a?;
            ok += (a.correct == Some(true)) as usize;
            out.push(a);
        }
        progress(&format!("{mode}: {} answers, {ok} correct, {:.0} s", items.len(), t0.elapsed().as_secs_f64()));
    }
    if let Some(judge) = &opts.judge {
        let t0 = Instant::now();
        let base_mode = opts.modes.first().cloned().unwrap_or_default();
        // (answer index, prompt, baseline's text) for every answer after the baseline's.
        let pairs: Vec<(usize, &str, String)> = out
            .iter()
            .enumerate()
            .filter(|(_, a)| a.mode != base_mode)
            .filter_map(|(i, a)| {
                let item = items.iter().find(|it| it.dataset == a.dataset && it.index == a.index)?;
                let base = out.iter().find(|b| b.mode == base_mode && b.dataset == a.dataset && b.index == a.index)?;
                Some((i, item.prompt.as_str(), base.text.clone()))
            })
            .collect();
        let verdicts: Vec<(usize, (Option<bool>, usize))> = stream::iter(&pairs)
            .map(|(i, question, base)| {
                let answer = out[*i].text.clone();
                async move { (*i, judge_pair(client, judge, question, base, &answer).await) }
            })
            .buffered(opts.concurrency.max(1))
            .collect()
            .await;
        let calls: usize = verdicts.iter().map(|(_, (_, c))| c).sum();
        let read = verdicts.iter().filter(|(_, (v, _))| v.is_some()).count();
        for (i, (v, _)) in verdicts {
            out[i].judge_kept = v;
        }
        progress(&format!("judge: {} answers compared with {base_mode}'s, {calls} calls, {read} verdicts, {:.0} s", pairs.len(), t0.elapsed().as_secs_f64()));
    }
    Ok(out)
}

/// The judge `--judge` names: `local` (the daemon itself) or the URL of an
/// OpenAI-compatible API (`.../v1`; `--judge-model`, key from
/// `SPROUT_JUDGE_KEY`).
fn judge_from(args: &BenchArgs, baseline: &str) -> Result<Option<Judge>, CliError> {
    let Some(j) = args.judge.as_deref() else {
        if args.judge_model.is_some() {
            return Err(CliError::Usage("--judge-model: name a judge with --judge URL".into()));
        }
        return Ok(None);
    };
    if j == "local" {
        if args.judge_model.is_some() {
            return Err(CliError::Usage("--judge-model: the local judge is the daemon's own model; --judge-model goes with --judge URL".into()));
        }
        return Ok(Some(Judge::Local { baseline: baseline.to_string() }));
    }
    let url = reqwest::Url::parse(j)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| CliError::Usage(format!("--judge {j:?}: use local or an http(s) URL of an OpenAI-compatible API (ending in /v1)")))?;
    let model = args
        .judge_model
        .clone()
        .ok_or_else(|| CliError::Usage("--judge URL needs --judge-model (the model that endpoint serves)".into()))?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .map_err(|e| CliError::Usage(format!("--judge: {e}")))?;
    let key = std::env::var("SPROUT_JUDGE_KEY").ok().filter(|k| !k.is_empty());
    Ok(Some(Judge::Remote { url: url.as_str().trim_end_matches('/').to_string(), model, key, http }))
}

/// `sproutctl bench`: load, run, report.
pub async fn command(client: &Client, args: BenchArgs) -> Result<(), CliError> {
    let items = load(&args.data, &args.datasets, &args.split, args.offset, args.n).map_err(CliError::Usage)?;
    if items.is_empty() {
        return Err(CliError::Usage(format!("no items in split {} (offset {}, n {})", args.split, args.offset, args.n)));
    }
    if args.modes.is_empty() || args.modes.iter().any(|m| m.is_empty()) {
        return Err(CliError::Usage("--modes: name levels (L0, L1, ...) or auto".into()));
    }
    let levels = client.eval_status().await?.levels;
    if let Some(m) = args.modes.iter().find(|m| *m != "auto" && !levels.contains(m)) {
        return Err(CliError::Usage(format!("--modes: {m:?} is not a level of this daemon (its levels: {})", levels.join(", "))));
    }
    let judge = judge_from(&args, &args.modes[0])?;
    if judge.is_none() {
        if let Some(open) = items.iter().find(|it| it.reference == Reference::Open) {
            return Err(CliError::Usage(format!("--datasets: {} has no references: its answers are scored by a judge (--judge local or --judge URL)", open.dataset)));
        }
    }
    let opts = Options {
        modes: args.modes.clone(),
        max_tokens: args.max_tokens,
        concurrency: args.concurrency,
        eval_first: args.eval_first,
        eval_prompts: args.eval_prompts,
        judge,
    };
    eprintln!("{} items ({} split, offset {}), modes {}", items.len(), args.split, args.offset, args.modes.join(","));
    let answers = run(client, &items, &opts, &|line| eprintln!("{line}")).await?;
    let rows = summarize(&answers, &args.modes, &levels);
    if let Some(path) = &args.plot {
        std::fs::write(path, plot_svg(&rows)).map_err(|e| CliError::Usage(format!("--plot {}: {e}", path.display())))?;
    }
    let tracked = tracking(&answers, &args.modes);
    let report = json!({"split": args.split, "offset": args.offset, "n": args.n, "modes": args.modes, "rows": rows, "tracking": tracked, "answers": answers});
    if let Some(path) = &args.save {
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap_or_default())
            .map_err(|e| CliError::Usage(format!("--save {}: {e}", path.display())))?;
    }
    if args.json {
        print_json(&report);
    } else {
        print!("{}", render(&rows, args.judge.is_some()));
        if !tracked.is_empty() {
            println!("\nHow each quality signal tracked the references (kept: the answer did not lose a correct {} answer):", args.modes[0]);
            print!("{}", render_tracking(&tracked));
        }
        if let Some((d, n)) = paired_latency(&answers, &args.modes[0], "auto") {
            println!("auto answers served at {} with the same tokens as pinned: median latency {d:+.2} s over {n} pairs", args.modes[0]);
        }
        let estimated = answers.iter().filter(|a| a.estimated).count();
        println!("energy: {} of {} answers estimated, the rest measured", estimated, answers.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_never_overlap_and_spread() {
        let tune = pick(1995, "tune", 0, 50).unwrap();
        let test = pick(1995, "test", 0, 50).unwrap();
        assert_eq!(tune.len(), 50);
        assert_eq!(test.len(), 50);
        assert!(tune.iter().all(|i| *i < TUNE_ITEMS) && test.iter().all(|i| *i >= TUNE_ITEMS));
        assert!(test.iter().any(|i| *i > 1800) && test.iter().any(|i| *i < 300), "spread over the file: {test:?}");
        // An offset gives other items, and the whole order covers the rest once.
        let later = pick(1995, "test", 50, 50).unwrap();
        assert!(later.iter().all(|i| !test.contains(i)), "{later:?}");
        let mut all = pick(1995, "test", 0, 5000).unwrap();
        all.sort();
        assert_eq!(all, (TUNE_ITEMS..1995).collect::<Vec<_>>());
        assert!(pick(10, "bogus", 0, 1).is_err());
        assert_eq!(pick(100, "test", 0, 5).unwrap(), Vec::<usize>::new());
        assert_eq!(pick(103, "test", 0, 5).unwrap().len(), 3);
    }

    #[test]
    fn scoring_against_references() {
        let ok = |r: &Reference, a: &str| score(r, a) == Some(true);
        assert!(ok(&Reference::Number(18.0), "16 - 3 - 4 = 9 eggs; 9 * 2 = $18."));
        assert!(!ok(&Reference::Number(18.0), "The answer is 9."));
        assert!(ok(&Reference::Letter('B'), "The answer is (B): 4"));
        assert!(!ok(&Reference::Letter('B'), "C"));
        let nq = Reference::Aliases(vec!["december 1972".into(), "14 december 1972 utc".into()]);
        assert!(ok(&nq, "It was in December 1972."));
        assert!(!ok(&nq, "In 1969."));
        assert_eq!(score(&nq, "In 1969."), Some(false));
        // An alias matches whole words only.
        assert!(!ok(&Reference::Aliases(vec!["one".into()]), "Someone knows."));
        // An open instruction has no reference: not scored, not "wrong".
        assert_eq!(score(&Reference::Open, "Here is a poem."), None);
    }

    #[test]
    fn the_shared_datasets_load() {
        let Some(dir) = crate::testing::shared_data("prompts") else { return };
        let sets: Vec<String> = DATASETS.iter().map(|d| d.0.to_string()).collect();
        let items = load(&dir, &sets, "test", 0, 5).unwrap();
        assert_eq!(items.len(), 25);
        assert!(matches!(items[0].reference, Reference::Number(_)));
        assert!(matches!(items[5].reference, Reference::Letter(_)) && items[5].prompt.contains("\n(B): "));
        assert!(items[20].dataset == "alpacaeval" && items[20].reference == Reference::Open && !items[20].prompt.is_empty());
        assert!(load(&dir, &["bogus".into()], "test", 0, 5).unwrap_err().contains("unknown"));
    }

    fn ans(dataset: &str, index: usize, mode: &str, directive: &str, correct: bool, g: f64) -> Answer {
        Answer {
            dataset: dataset.into(), index, mode: mode.into(), directive: directive.into(), correct: Some(correct), judge_kept: None, completion_tokens: 10,
            energy_j: g * 10.0, carbon_g: g, estimated: true, latency_s: 1.0,
            text: if correct { format!("so {index}") } else { "so -1".into() },
        }
    }

    #[test]
    fn paired_summary_against_the_baseline() {
        let mut a = Vec::new();
        for i in 0..10 {
            a.push(ans("gsm8k", i, "L0", "L0", i < 5, 1.0));
            // L2 loses item 0, gains nothing, costs half.
            a.push(ans("gsm8k", i, "L2", "L2", (1..5).contains(&i), 0.5));
            a.push(ans("gsm8k", i, "auto", if i % 2 == 0 { "L0" } else { "L2" }, i < 5, 0.75));
        }
        let modes: Vec<String> = ["L0", "L2", "auto"].iter().map(|s| s.to_string()).collect();
        let levels: Vec<String> = ["L0", "L1", "L2"].iter().map(|s| s.to_string()).collect();
        let rows = summarize(&a, &modes, &levels);
        assert_eq!(rows.len(), 6, "gsm8k and overall, three modes each");
        let l2 = rows.iter().find(|r| r.dataset == "gsm8k" && r.mode == "L2").unwrap();
        assert!((l2.accuracy - 0.4).abs() < 1e-12 && (l2.accuracy_vs_base - 0.8).abs() < 1e-12);
        assert!((l2.diff + 0.1).abs() < 1e-12 && l2.diff_ci95 > 0.0);
        assert!((l2.carbon_vs_base - 0.5).abs() < 1e-12);
        let auto = rows.iter().find(|r| r.mode == "auto").unwrap();
        assert_eq!(auto.mix, [("L0".to_string(), 0.5), ("L1".to_string(), 0.0), ("L2".to_string(), 0.5)]);
        assert_eq!(auto.diff, 0.0);
        // Agreement with the baseline's final answers: L2 differs on item 0 only.
        assert_eq!((l2.agreement_n, l2.agreement), (10, 0.9));
        assert!(l2.agreement_lower < 0.9);
        let text = render(&rows, false);
        assert!(text.contains("gsm8k") && text.contains("overall") && text.contains("L0 50% L2 50%"), "{text}");
        assert!(!text.contains("judge (lb)"));
        assert!(plot_svg(&rows).contains("<circle"));
    }

    #[test]
    fn signals_tracked_against_references_and_open_prompts_judged() {
        let mut a = Vec::new();
        for i in 0..10 {
            // L0 right on 0..6; L2 loses item 0 and 1, keeps the rest.
            a.push(ans("gsm8k", i, "L0", "L0", i < 6, 1.0));
            let mut l2 = ans("gsm8k", i, "L2", "L2", (2..6).contains(&i), 0.5);
            // The judge calls item 0 kept (unsafe), item 9 lost (safe), has
            // no verdict on item 8.
            l2.judge_kept = match i {
                0 => Some(true),
                1 | 9 => Some(false),
                8 => None,
                _ => Some(true),
            };
            a.push(l2);
            // Open instructions: no reference; only the judge scores them.
            let mut base = ans("alpacaeval", i, "L0", "L0", false, 1.0);
            base.correct = None;
            let mut short = ans("alpacaeval", i, "L2", "L2", false, 0.4);
            short.correct = None;
            short.judge_kept = Some(i < 7);
            a.push(base);
            a.push(short);
        }
        let modes: Vec<String> = ["L0", "L2"].iter().map(|s| s.to_string()).collect();
        let t = tracking(&a, &modes);
        let judge = t.iter().find(|t| t.dataset == "gsm8k" && t.signal == "judge").unwrap();
        assert_eq!((judge.n, judge.false_kept, judge.false_lost), (9, 1, 1), "{judge:?}");
        assert!((judge.kept_by_reference - 7.0 / 9.0).abs() < 1e-12 && (judge.matched - 7.0 / 9.0).abs() < 1e-12);
        let agreement = t.iter().find(|t| t.dataset == "gsm8k" && t.signal == "agreement").unwrap();
        // ans() writes "so {index}" when right and "so -1" when wrong: L2
        // agrees with L0 where both are right, and where both are wrong.
        assert_eq!((agreement.n, agreement.false_kept, agreement.false_lost), (10, 0, 0), "{agreement:?}");
        assert!(t.iter().all(|t| t.dataset != "alpacaeval"), "no references, nothing to track: {t:?}");
        let rows = summarize(&a, &modes, &["L0".into(), "L1".into(), "L2".into()]);
        let open = rows.iter().find(|r| r.dataset == "alpacaeval" && r.mode == "L2").unwrap();
        assert!(open.accuracy.is_nan() && open.diff.is_nan());
        assert_eq!((open.judge_n, open.judge_kept), (10, 0.7));
        assert!(open.judge_kept_lower < 0.7);
        // Overall accuracy counts the scored answers only.
        let overall = rows.iter().find(|r| r.dataset == "overall" && r.mode == "L0").unwrap();
        assert_eq!(overall.accuracy, 0.6);
        let text = render(&rows, true);
        assert!(text.contains("judge (lb)") && text.contains("alpacaeval"), "{text}");
        assert!(render_tracking(&t).contains("false kept"));
        assert!(plot_svg(&rows).contains("alpacaeval L2"), "open prompts are plotted by the judge's share");
    }
}
