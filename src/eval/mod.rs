//! Quality evaluation: how much of L0's quality each level keeps, per
//! class, for the model being served.
//!
//! - [`judge`]: the judge's prompt under rotated orders, reading its verdict;
//! - [`quality`]: verdicts and agreement into "kept" per level and class,
//!   with the lower bound the planner relies on, and `q`;
//! - [`schedule`]: which prompts, the evaluator's share of the engine, and
//!   the low-carbon hour a run waits for;
//! - [`answers`]: final answers read from answer text (agreement, and the
//!   bench's scoring);
//! - [`run`]: the IO around these: sampling prompts, answering them at every
//!   level through the queue, judging, storing runs.
//!
//! The first four are pure; records ([`PromptSample`], [`EvalRun`]) are here.

use serde::{Deserialize, Serialize};

pub mod answers;
pub mod judge;
pub mod quality;
pub mod run;
pub mod schedule;

/// A prompt kept for evaluation (its text, never the answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptSample {
    pub text: String,
    pub class: String,
    pub at_ms: u64,
}

/// One evaluation run, as stored and shown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalRun {
    pub id: String,
    pub started_ms: u64,
    pub finished_ms: u64,
    /// Why it ran: `forced`, or the scheduler's reason.
    pub reason: String,
    pub intensity_gco2_per_kwh: f64,
    /// `local (model)` or `openai <model> at <url>`.
    pub judge: String,
    pub levels: Vec<String>,
    /// Share of judged prompts won by each level; None if no verdict could be read.
    pub q: Option<Vec<f64>>,
    pub verdicts: Vec<quality::PromptVerdict>,
    /// Judge replies that named no single answer.
    pub failures: usize,
    pub judge_calls: usize,
    /// The run's own jobs (answers, and the local judge's verdicts) and their cost.
    pub jobs: Vec<String>,
    pub tokens: usize,
    pub energy_j: f64,
    pub carbon_g: f64,
    pub estimated: bool,
    pub error: Option<String>,
    /// The levels' wordings when it ran ([`crate::plan::directive::Directives::fingerprint`]).
    #[serde(default)]
    pub wording: String,
    /// The energy and time of its answers, per class and level.
    #[serde(default)]
    pub cells: Vec<Cell>,
    /// Classes this scheduled run did not ask: settled at the baseline
    /// ([`quality::settled`]).
    #[serde(default)]
    pub settled: Vec<String>,
}

/// What the evaluations measured of one level on one class: answers'
/// mean energy and time (the daemon's own answers, when users' requests at
/// that level are too few).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub class: String,
    pub level: String,
    pub n: usize,
    pub energy_j: f64,
    pub duration_s: f64,
}

/// Pools cells of the same class and level (weighted by n).
pub fn pool_cells<'a>(cells: impl IntoIterator<Item = &'a Cell>) -> Vec<Cell> {
    let mut out: Vec<Cell> = Vec::new();
    for c in cells {
        match out.iter_mut().find(|o| o.class == c.class && o.level == c.level) {
            Some(o) => {
                let n = (o.n + c.n) as f64;
                if n > 0.0 {
                    o.energy_j = (o.energy_j * o.n as f64 + c.energy_j * c.n as f64) / n;
                    o.duration_s = (o.duration_s * o.n as f64 + c.duration_s * c.n as f64) / n;
                }
                o.n += c.n;
            }
            None => out.push(c.clone()),
        }
    }
    out
}
