//! `sproutctl bench`: the proof anyone can rerun on their own model. It
//! drives a running sproutd with labelled prompts (GSM8K, MMLU, Natural
//! Questions, TriviaQA in the formats of `../shared/data/prompts`), pinned at
//! each level and unpinned (the daemon chooses), scores every answer against
//! its reference, and reports per dataset and overall: accuracy and its
//! paired difference to the baseline level with a 95% interval, tokens,
//! energy, carbon, latency, and the mix the daemon chose.
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
pub const DATASETS: [(&str, &str); 4] = [
    ("gsm8k", "gsm8k/test.jsonl"),
    ("mmlu", "mmlu/test_first35_per_subject.jsonl"),
    ("nq", "natural_questions/nq_open_dev_first2000.jsonl"),
    ("triviaqa", "triviaqa/sprout_triviaqa_2000.jsonl"),
];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Reference {
    Number(f64),
    Letter(char),
    Aliases(Vec<String>),
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
/// a reference alias appears in it (case and punctuation aside).
pub fn score(reference: &Reference, answer: &str) -> bool {
    match reference {
        Reference::Number(x) => answers::last_number(answer).is_some_and(|a| (a - x).abs() < 1e-6),
        Reference::Letter(c) => answers::choice_letter(answer) == Some(*c),
        Reference::Aliases(golds) => {
            let a = format!(" {} ", answers::normalize(answer));
            golds.iter().any(|g| !g.is_empty() && a.contains(&format!(" {g} ")))
        }
    }
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
    pub correct: bool,
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
}

/// The prompt class of a dataset's items (as the daemon classifies them).
pub fn class_of(dataset: &str) -> &'static str {
    match dataset {
        "gsm8k" => "math",
        "mmlu" => "choice",
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

/// The report's rows: per dataset and `overall`, per mode, against the
/// first mode (the baseline) on the same items.
pub fn summarize(answers: &[Answer], modes: &[String], levels: &[String]) -> Vec<Row> {
    let mut datasets: Vec<String> = Vec::new();
    for a in answers {
        if !datasets.contains(&a.dataset) {
            datasets.push(a.dataset.clone());
        }
    }
    datasets.push("overall".into());
    let base_mode = modes.first().cloned().unwrap_or_default();
    let mut rows = Vec::new();
    for d in &datasets {
        let of = |m: &str| -> Vec<&Answer> { answers.iter().filter(|a| a.mode == m && (d == "overall" || &a.dataset == d)).collect() };
        let base = of(&base_mode);
        let base_acc = base.iter().filter(|a| a.correct).count() as f64 / base.len().max(1) as f64;
        let base_g = base.iter().map(|a| a.carbon_g).sum::<f64>() / base.len().max(1) as f64;
        for m in modes {
            let these = of(m);
            if these.is_empty() {
                continue;
            }
            let n = these.len();
            let acc = these.iter().filter(|a| a.correct).count() as f64 / n as f64;
            // Paired: the same item's baseline answer.
            let diffs: Vec<f64> = these
                .iter()
                .filter_map(|a| base.iter().find(|b| b.dataset == a.dataset && b.index == a.index).map(|b| a.correct as u8 as f64 - b.correct as u8 as f64))
                .collect();
            let k = diffs.len().max(1) as f64;
            let mean = diffs.iter().sum::<f64>() / k;
            let var = if diffs.len() > 1 { diffs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (k - 1.0) } else { 0.0 };
            let g = these.iter().map(|a| a.carbon_g).sum::<f64>() / n as f64;
            let agreements: Vec<bool> = these
                .iter()
                .filter_map(|a| {
                    let b = base.iter().find(|b| b.dataset == a.dataset && b.index == a.index)?;
                    answers::agree(class_of(&a.dataset), &b.text, &a.text)
                })
                .collect();
            let agreed = agreements.iter().filter(|x| **x).count() as f64;
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
                diff: mean,
                diff_ci95: 1.96 * (var / k).sqrt(),
                tokens: these.iter().map(|a| a.completion_tokens as f64).sum::<f64>() / n as f64,
                energy_j: these.iter().map(|a| a.energy_j).sum::<f64>() / n as f64,
                carbon_g: g,
                carbon_vs_base: if base_g > 0.0 { g / base_g } else { f64::NAN },
                latency_p50: quantile(these.iter().map(|a| a.latency_s).collect(), 0.5),
                latency_p95: quantile(these.iter().map(|a| a.latency_s).collect(), 0.95),
                mix,
                agreement: agreed / agreements.len().max(1) as f64,
                agreement_lower: answers::wilson_lower(agreed, agreements.len() as f64, crate::eval::quality::BOUND_Z),
                agreement_n: agreements.len(),
            });
        }
    }
    rows
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

/// The table people read.
pub fn render(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<9} {:<5} {:>4} {:>7} {:>8} {:>16} {:>7} {:>8} {:>9} {:>8} {:>7} {:>7} {:>12}  {}\n",
        "dataset", "mode", "n", "acc", "acc/L0", "diff (95% CI)", "tokens", "J/req", "g/req", "g/L0", "p50 s", "p95 s", "agree (lb)", "mix"
    );
    for r in rows {
        let mix: Vec<String> = r.mix.iter().filter(|(_, s)| *s > 0.0).map(|(l, s)| format!("{l} {:.0}%", s * 100.0)).collect();
        out.push_str(&format!(
            "{:<9} {:<5} {:>4} {:>6.1}% {:>7.1}% {:>+7.1} ±{:>5.1}pp {:>7.1} {:>8.1} {:>9.5} {:>7.1}% {:>7.2} {:>7.2} {:>5.0}% ({:>3.0}%)  {}\n",
            r.dataset,
            r.mode,
            r.n,
            r.accuracy * 100.0,
            r.accuracy_vs_base * 100.0,
            r.diff * 100.0,
            r.diff_ci95 * 100.0,
            r.tokens,
            r.energy_j,
            r.carbon_g,
            r.carbon_vs_base * 100.0,
            r.latency_p50,
            r.latency_p95,
            r.agreement * 100.0,
            r.agreement_lower * 100.0,
            mix.join(" ")
        ));
    }
    out
}

/// An SVG: per dataset and mode, carbon per request against accuracy, both
/// relative to the baseline mode.
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
    s.push_str(&format!("<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">accuracy / baseline</text>\n", h / 2.0, h / 2.0));
    for t in [0.0, 0.4, 0.8, 1.2] {
        s.push_str(&format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{t:.1}</text>\n", x(t), h - m + 14.0));
    }
    for t in [0.0, 0.5, 1.0] {
        s.push_str(&format!("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{t:.1}</text>\n", m - 4.0, y(t) + 4.0));
    }
    for r in rows {
        if !(r.carbon_vs_base.is_finite() && r.accuracy_vs_base.is_finite()) {
            continue;
        }
        let c = colors[datasets.iter().position(|d| *d == r.dataset).unwrap_or(0) % colors.len()];
        let (cx, cy) = (x(r.carbon_vs_base), y(r.accuracy_vs_base));
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
            ok += a.correct as usize;
            out.push(a);
        }
        progress(&format!("{mode}: {} answers, {ok} correct, {:.0} s", items.len(), t0.elapsed().as_secs_f64()));
    }
    Ok(out)
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
    let opts = Options {
        modes: args.modes.clone(),
        max_tokens: args.max_tokens,
        concurrency: args.concurrency,
        eval_first: args.eval_first,
        eval_prompts: args.eval_prompts,
    };
    eprintln!("{} items ({} split, offset {}), modes {}", items.len(), args.split, args.offset, args.modes.join(","));
    let answers = run(client, &items, &opts, &|line| eprintln!("{line}")).await?;
    let rows = summarize(&answers, &args.modes, &levels);
    if let Some(path) = &args.plot {
        std::fs::write(path, plot_svg(&rows)).map_err(|e| CliError::Usage(format!("--plot {}: {e}", path.display())))?;
    }
    let report = json!({"split": args.split, "offset": args.offset, "n": args.n, "modes": args.modes, "rows": rows, "answers": answers});
    if let Some(path) = &args.save {
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap_or_default())
            .map_err(|e| CliError::Usage(format!("--save {}: {e}", path.display())))?;
    }
    if args.json {
        print_json(&report);
    } else {
        print!("{}", render(&rows));
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
        assert!(score(&Reference::Number(18.0), "16 - 3 - 4 = 9 eggs; 9 * 2 = $18."));
        assert!(!score(&Reference::Number(18.0), "The answer is 9."));
        assert!(score(&Reference::Letter('B'), "The answer is (B): 4"));
        assert!(!score(&Reference::Letter('B'), "C"));
        let nq = Reference::Aliases(vec!["december 1972".into(), "14 december 1972 utc".into()]);
        assert!(score(&nq, "It was in December 1972."));
        assert!(!score(&nq, "In 1969."));
        // An alias matches whole words only.
        assert!(!score(&Reference::Aliases(vec!["one".into()]), "Someone knows."));
    }

    #[test]
    fn the_shared_datasets_load() {
        let Some(dir) = crate::testing::shared_data("prompts") else { return };
        let sets: Vec<String> = DATASETS.iter().map(|d| d.0.to_string()).collect();
        let items = load(&dir, &sets, "test", 0, 5).unwrap();
        assert_eq!(items.len(), 20);
        assert!(matches!(items[0].reference, Reference::Number(_)));
        assert!(matches!(items[5].reference, Reference::Letter(_)) && items[5].prompt.contains("\n(B): "));
        assert!(load(&dir, &["bogus".into()], "test", 0, 5).unwrap_err().contains("unknown"));
    }

    fn ans(dataset: &str, index: usize, mode: &str, directive: &str, correct: bool, g: f64) -> Answer {
        Answer {
            dataset: dataset.into(), index, mode: mode.into(), directive: directive.into(), correct, completion_tokens: 10,
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
        let text = render(&rows);
        assert!(text.contains("gsm8k") && text.contains("overall") && text.contains("L0 50% L2 50%"), "{text}");
        assert!(plot_svg(&rows).contains("<circle"));
    }
}
