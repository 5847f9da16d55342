//! The shapes of sproutd's answers and request bodies beyond OpenAI's: one
//! serde type per body, used by the handlers (`api`) that write them and by
//! `client`, `cli` and `tui` that read them, so a renamed field is a compile
//! error on both sides of the wire.
//!
//! Records the store keeps and the API shows as they are ([`Receipt`],
//! [`LedgerEntry`], [`EvalRun`], ...) are defined beside the code that makes
//! them and re-exported here. OpenAI's own shapes are typed where sproutd
//! adds to them ([`ChatCompletion`]'s `usage.sprout` receipt); the parts
//! sproutd passes through unchanged (tool definitions, `logprobs`) stay JSON.
//!
//! `tests/snapshots/wire/` holds one example of each body; the unit test
//! below keeps the types and those files in step.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::backends::BackendView;
pub use crate::carbon::{CarbonStatus, Reading};
pub use crate::energy::MeterStatus;
pub use crate::eval::quality::{Kept, PromptVerdict};
pub use crate::eval::{Cell, EvalRun};
pub use crate::job::{FinishReason, JobState, LedgerEntry, Message, Origin, Receipt};
pub use crate::plan::planner::HistoryItem;
pub use crate::stats::{LevelStats, LevelTotals};

/// `{"object": "list", "data": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct List<T> {
    pub object: String,
    pub data: Vec<T>,
}

impl<T> List<T> {
    pub fn new(data: Vec<T>) -> Self {
        Self { object: "list".into(), data }
    }
}

/// OpenAI's error body: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    /// `invalid_request_error`, `not_found_error`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A stable, machine-readable name (`job_not_found`, ...).
    pub code: Option<String>,
}

// ---------------------------------------------------------------- jobs

/// `POST /v1/jobs`' body as `sproutctl` and the TUI send it (the server
/// reads OpenAI's whole chat request plus these fields, see `api::openai`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobSubmission {
    pub messages: Vec<Message>,
    /// Pin a level (`L0`, ...) instead of the plan's draw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directive: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Lower runs first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// `"6h"` from now, or a Unix time in seconds: may wait for a cleaner hour until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
}

/// A job as `/v1/jobs` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    /// `job`.
    pub object: String,
    pub origin: Origin,
    pub state: JobState,
    pub priority: i32,
    /// The level it runs at (pinned or drawn).
    pub directive: String,
    pub model: String,
    pub seed: u64,
    pub attempts: u32,
    /// Unix seconds.
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    pub request: JobRequestView,
    pub deadline_at: Option<f64>,
    /// Set while (and after) the job was held for a low-carbon hour.
    pub deferred: Option<DeferralView>,
    /// The answer, once the job succeeded.
    pub result: Option<ChatCompletion>,
    pub error: Option<ErrorMessage>,
    /// Jobs ahead of it (0: next) while queued; `null` otherwise, and in
    /// `POST /v1/jobs`' answer, which does not count them.
    #[serde(default)]
    pub position: Option<u64>,
    /// While running: the completion tokens produced so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_so_far: Option<u64>,
}

impl JobView {
    /// The last user message: what a listing previews.
    pub fn prompt(&self) -> &str {
        crate::job::last_user_text(&self.request.messages)
    }

    /// Completion tokens: the answer's, or so far while running.
    pub fn tokens(&self) -> Option<u64> {
        self.usage().map(|u| u.completion_tokens as u64).or(self.tokens_so_far)
    }

    pub fn usage(&self) -> Option<&Usage> {
        self.result.as_ref()?.usage.as_ref()
    }

    /// The carbon receipt, once succeeded.
    pub fn receipt(&self) -> Option<&Receipt> {
        self.usage().map(|u| &u.sprout)
    }

    /// The answer's text, once succeeded.
    pub fn answer(&self) -> Option<&str> {
        self.result.as_ref()?.text()
    }
}

/// The request a job carries, in OpenAI's terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequestView {
    pub messages: Vec<Message>,
    pub max_tokens: usize,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    /// The level the client pinned, if any.
    pub directive: Option<String>,
    /// OpenAI's `tools`, `tool_choice` and `response_format`, as sent.
    pub tools: Vec<Value>,
    pub tool_choice: Value,
    pub response_format: Value,
    pub logprobs: bool,
    pub top_logprobs: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeferralView {
    /// Unix seconds of the hour it waits for.
    pub until: f64,
    pub forecast_gco2_per_kwh: f64,
    pub submit_gco2_per_kwh: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorMessage {
    pub message: String,
}

/// OpenAI's `chat.completion`, with the carbon receipt in `usage.sprout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<Choice>,
    pub usage: Option<Usage>,
}

impl ChatCompletion {
    /// The first choice's text.
    pub fn text(&self) -> Option<&str> {
        self.choices.first()?.message.content.as_deref()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub index: u32,
    pub message: AssistantMessage,
    /// OpenAI's `logprobs` object, `null` unless asked for.
    pub logprobs: Value,
    pub finish_reason: FinishReason,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    /// `assistant`.
    pub role: String,
    /// `null` when the answer is only tool calls.
    pub content: Option<String>,
    /// OpenAI's tool calls (`{"id", "type": "function", "function": {...}}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    /// Sprout's carbon receipt.
    pub sprout: Receipt,
}

// ------------------------------------------------------- small routes

/// `GET /v1/models/{id}` and each of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub id: String,
    /// `model`.
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`, `starting`, `stopping` or `unhealthy`.
    pub status: String,
    pub model: String,
    /// `ready`, `loading` or `failed: <why>`.
    pub engine: String,
    /// `ok` or `writes fail: <why>`.
    pub store: String,
    pub queued: u64,
    pub version: String,
}

// -------------------------------------------------------------- stats

/// `GET /v1/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// `stats`.
    pub object: String,
    /// Unix seconds the figures start from (`?since=`); `null`: since the store began.
    pub since: Option<f64>,
    /// Everything the service emitted: users' requests and its own work.
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub energy_j: f64,
    pub operational_g: f64,
    pub embodied_g: f64,
    pub carbon_g: f64,
    pub user_requests: u64,
    pub own_work: OwnWork,
    pub savings: Savings,
    pub deferral: DeferralTotals,
    pub estimated_requests: u64,
    pub measured_requests: u64,
    pub meter: MeterStatus,
    /// Users' requests by level.
    pub levels: BTreeMap<String, LevelStats>,
    pub queue: QueueCounts,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnWork {
    pub requests: u64,
    pub completion_tokens: u64,
    pub energy_j: f64,
    pub carbon_g: f64,
    pub what: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Savings {
    pub baseline: String,
    /// `null` until a baseline request has succeeded.
    pub carbon_g: Option<f64>,
    pub method: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeferralTotals {
    pub jobs: u64,
    pub saving_g: f64,
    pub method: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueCounts {
    pub deferred: u64,
    pub queued: u64,
    pub running: u64,
}

// ------------------------------------------------------------- carbon

/// `GET /v1/carbon`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CarbonView {
    /// `carbon`.
    pub object: String,
    pub now: Reading,
    /// Hourly, oldest first.
    pub past: Vec<Reading>,
    /// The next hours.
    pub forecast: Vec<Reading>,
    pub source: CarbonStatus,
    pub range: Range,
    /// `gCO2e/kWh`.
    pub unit: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Range {
    pub min: f64,
    pub max: f64,
}

// --------------------------------------------------------------- plan

/// `GET /v1/plan`. Before the first solve (or with the optimizer off) only
/// `enabled`, `status`, `levels` and `x` (the configured mix) are present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanView {
    /// `plan`.
    pub object: String,
    pub enabled: bool,
    /// `optimal`, `fallback: <why>`, `not solved yet`, or why the optimizer is off.
    pub status: String,
    pub levels: Vec<String>,
    /// The overall mix of levels for requests that pin none.
    pub x: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Grid intensity the solve used, and its range, gCO2e/kWh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xi: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<f64>,
    /// The quality floor, relative to all-baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<f64>,
    /// Expected gCO2e per request under the plan, and at all-baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_g: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_g: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solve_us: Option<u64>,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solved_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<PlanClass>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<HistoryItem>>,
}

impl PlanView {
    /// Before the first solve, or with the optimizer off: the fixed mix `x`.
    pub fn unsolved(enabled: bool, status: impl Into<String>, levels: Vec<String>, x: Vec<f64>) -> Self {
        Self {
            object: "plan".into(),
            enabled,
            status: status.into(),
            levels,
            x: Some(x),
            policy: None,
            ci: None,
            ci_min: None,
            ci_max: None,
            xi: None,
            margin: None,
            floor: None,
            quality: None,
            expected_g: None,
            baseline_g: None,
            solve_us: None,
            solved_at: None,
            reason: None,
            classes: None,
            history: None,
        }
    }
}

/// One class of `GET /v1/plan`: what the solve knew and chose for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanClass {
    pub name: String,
    pub weight: f64,
    /// Per level: mean energy (kWh), time (s) and quality (lower bound).
    pub e_kwh: Vec<f64>,
    pub p_s: Vec<f64>,
    pub q: Vec<f64>,
    /// Levels the evaluations licensed (a held level stays at 0).
    pub allowed: Vec<bool>,
    /// Per level: n, share kept and its lower bound.
    pub kept: Option<Vec<Kept>>,
    pub x: Vec<f64>,
    pub expected_g: f64,
    /// Per level: where e and p came from (`ledger (n)`, `prior`, ...).
    pub sources: Vec<String>,
}

// ----------------------------------------------------------- evaluator

/// `POST /v1/eval/runs`' body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalRunRequest {
    /// Prompts per class (default: the configured sample).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<usize>,
    /// An OpenAI-compatible judge instead of the configured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_model: Option<String>,
    /// Answer with the finished run (200) instead of at once (202).
    #[serde(default)]
    pub wait: bool,
}

/// `POST /v1/eval/runs`' answer: the run (with `wait`), or that it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EvalRunReply {
    Finished(Box<EvalRun>),
    Started(EvalStarted),
}

/// `{"object": "eval.run", "state": "running"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalStarted {
    pub object: String,
    pub state: String,
}

/// A run in `GET /v1/eval/runs`: the stored run without its verdicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRunSummary {
    pub id: String,
    pub started_ms: u64,
    pub finished_ms: u64,
    pub reason: String,
    pub intensity_gco2_per_kwh: f64,
    pub judge: String,
    pub levels: Vec<String>,
    pub q: Option<Vec<f64>>,
    /// How many prompts were judged.
    pub prompts: usize,
    pub failures: usize,
    pub judge_calls: usize,
    pub jobs: Vec<String>,
    pub tokens: usize,
    pub energy_j: f64,
    pub carbon_g: f64,
    pub estimated: bool,
    pub error: Option<String>,
    #[serde(default)]
    pub wording: String,
    #[serde(default)]
    pub cells: Vec<Cell>,
    #[serde(default)]
    pub settled: Vec<String>,
}

impl From<&EvalRun> for EvalRunSummary {
    fn from(r: &EvalRun) -> Self {
        Self {
            id: r.id.clone(),
            started_ms: r.started_ms,
            finished_ms: r.finished_ms,
            reason: r.reason.clone(),
            intensity_gco2_per_kwh: r.intensity_gco2_per_kwh,
            judge: r.judge.clone(),
            levels: r.levels.clone(),
            q: r.q.clone(),
            prompts: r.verdicts.len(),
            failures: r.failures,
            judge_calls: r.judge_calls,
            jobs: r.jobs.clone(),
            tokens: r.tokens,
            energy_j: r.energy_j,
            carbon_g: r.carbon_g,
            estimated: r.estimated,
            error: r.error.clone(),
            wording: r.wording.clone(),
            cells: r.cells.clone(),
            settled: r.settled.clone(),
        }
    }
}

/// `GET /v1/eval/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalStatus {
    /// `eval.status`.
    pub object: String,
    pub enabled: bool,
    pub running: bool,
    /// Prompts sampled so far, and how many a scheduled run needs.
    pub samples: u64,
    pub samples_needed: usize,
    pub levels: Vec<String>,
    /// The newest run's pick-best shares.
    pub q: Option<Vec<f64>>,
    pub q_source: String,
    /// Per class, per level: how well it kept the baseline's quality.
    pub kept: BTreeMap<String, Vec<Kept>>,
    /// Classes settled at the baseline, which scheduled runs leave out
    /// (`eval::quality::settled`).
    #[serde(default)]
    pub settled: Vec<String>,
    pub last_run: Option<LastRun>,
    pub next: NextRun,
    pub rule: EvalRule,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastRun {
    pub id: String,
    /// Unix seconds it started.
    pub at: f64,
    pub q: Option<Vec<f64>>,
    pub failures: usize,
    pub judge: String,
    pub carbon_g: f64,
    pub energy_j: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NextRun {
    pub run_now: bool,
    /// Unix seconds, and the intensity forecast then.
    pub at: i64,
    pub forecast_gco2_per_kwh: f64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRule {
    pub min_interval_s: u64,
    pub max_staleness_s: u64,
    pub tolerance: f64,
}

#[cfg(test)]
mod tests;
