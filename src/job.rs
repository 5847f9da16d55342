//! The data that flows along a request's path: a validated chat request, the
//! job that carries it through the queue, and the result with its receipt.
//!
//! These types are what the store persists (as JSON inside sled) and what the
//! job API returns, so a change here is a change to the store format: see
//! `store::SCHEMA_VERSION`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    /// A tool's result, answering the assistant's call `tool_call_id`.
    Tool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// The calls an assistant message made (a conversation sent back with
    /// the tools' results).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a tool message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into(), tool_calls: vec![], tool_call_id: None }
    }

    /// The message in OpenAI's request shape.
    pub fn to_openai(&self) -> Value {
        let mut m = serde_json::json!({"role": self.role, "content": self.content});
        if !self.tool_calls.is_empty() {
            m["tool_calls"] = self.tool_calls.iter().map(ToolCall::to_openai).collect();
            if self.content.is_empty() {
                m["content"] = Value::Null;
            }
        }
        if let Some(id) = &self.tool_call_id {
            m["tool_call_id"] = id.clone().into();
        }
        m
    }
}

impl Tool {
    /// `{"type": "function", "function": {...}}`.
    pub fn to_openai(&self) -> Value {
        serde_json::json!({"type": "function", "function": self})
    }
}

impl ToolCall {
    /// `{"id", "type": "function", "function": {"name", "arguments"}}`.
    pub fn to_openai(&self) -> Value {
        serde_json::json!({"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}})
    }
}

impl ToolChoice {
    pub fn to_openai(&self) -> Value {
        match self {
            ToolChoice::Auto => "auto".into(),
            ToolChoice::None => "none".into(),
            ToolChoice::Required => "required".into(),
            ToolChoice::Function(name) => serde_json::json!({"type": "function", "function": {"name": name}}),
        }
    }
}

impl ResponseFormat {
    pub fn to_openai(&self) -> Value {
        match self {
            ResponseFormat::Text => serde_json::json!({"type": "text"}),
            ResponseFormat::JsonObject => serde_json::json!({"type": "json_object"}),
            ResponseFormat::JsonSchema { name, schema } => {
                serde_json::json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema}})
            }
        }
    }
}

/// A function the model may call (OpenAI's `tools[].function`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON schema of the arguments.
    pub parameters: Value,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides (OpenAI's default when tools are given).
    #[default]
    Auto,
    /// No call: a plain answer even though tools are listed.
    None,
    /// At least one call, of any listed tool (forced by a grammar).
    Required,
    /// A call of this tool (forced by a grammar).
    Function(String),
}

/// A call the model made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as a JSON text (OpenAI's shape).
    pub arguments: String,
}

/// The shape the answer must have (OpenAI's `response_format`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid against `schema`.
    JsonSchema { name: String, schema: Value },
}

/// One generated token's log-probability and its most likely alternatives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    #[serde(default)]
    pub top: Vec<(String, f32)>,
}

/// A chat request after validation: everything the worker needs, no HTTP.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub max_tokens: usize,
    /// `None`: the configured default.
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// `None`: a seed is drawn per job (and recorded), so every answer can be replayed.
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Vec<String>,
    /// The level the client pinned, if any.
    pub directive: Option<String>,
    /// `Some(false)`: the client opted out of the evaluator's prompt sample
    /// (OpenAI's `store` field).
    #[serde(default)]
    pub store: Option<bool>,
    /// Functions the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub tool_choice: ToolChoice,
    /// `parallel_tool_calls: false`: only the first call of an answer is kept.
    #[serde(default, skip_serializing_if = "is_default")]
    pub single_tool_call: bool,
    #[serde(default, skip_serializing_if = "is_default")]
    pub response_format: ResponseFormat,
    /// OpenAI's penalties, over the tokens generated so far.
    #[serde(default, skip_serializing_if = "is_default")]
    pub presence_penalty: f32,
    #[serde(default, skip_serializing_if = "is_default")]
    pub frequency_penalty: f32,
    /// Token id → added to its logit.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub logit_bias: BTreeMap<u32, f32>,
    /// `Some(n)`: report each token's log-probability and its `n` most likely alternatives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<usize>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl ChatRequest {
    /// Whether the client fixed the answer's shape (tools or structured
    /// output): such answers are not shortened by a drawn directive.
    pub fn shape_is_fixed(&self) -> bool {
        !self.tools.is_empty() && self.tool_choice != ToolChoice::None || self.response_format != ResponseFormat::Text
    }

    /// The last user message: what the prompt classifier reads.
    pub fn last_user_text(&self) -> &str {
        last_user_text(&self.messages)
    }
}

/// The last user message of `messages` ("" when there is none).
pub fn last_user_text(messages: &[Message]) -> &str {
    messages.iter().rev().find(|m| m.role == Role::User).map(|m| m.content.as_str()).unwrap_or("")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Held until a low-carbon hour before its deadline.
    Deferred,
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Deferred => "deferred",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// How the job came in: a synchronous chat completion (the client waits on the
/// connection), an asynchronous job (`POST /v1/jobs`), or the daemon's own work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A user's chat completion.
    Chat,
    /// A user's queued job.
    Job,
    /// The daemon's own work (quality evaluations).
    Daemon,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    /// Monotonic sequence number: FIFO order and the directive draw's input.
    pub seq: u64,
    pub origin: Origin,
    pub state: JobState,
    /// Lower runs first (vLLM's meaning); FIFO within a priority.
    pub priority: i32,
    pub request: ChatRequest,
    /// The directive level chosen at submission (pinned or drawn).
    pub directive: String,
    /// The sampling seed used (the request's, or one drawn for this job).
    pub seed: u64,
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub attempts: u32,
    pub result: Option<JobResult>,
    pub error: Option<String>,
    /// The client's `Idempotency-Key`, if it sent one.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Must have finished by then (Unix ms), if the client said so.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Set when the job was held for a low-carbon hour.
    #[serde(default)]
    pub deferral: Option<Deferral>,
}

/// When a job must be done: `"6h"` (from now) or a Unix time in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Deadline {
    In(std::time::Duration),
    AtUnixS(f64),
}

impl Deadline {
    pub fn to_unix_ms(self, now_ms: u64) -> u64 {
        match self {
            Deadline::In(d) => now_ms.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Deadline::AtUnixS(s) => (s * 1000.0) as u64,
        }
    }
}

/// Why and until when a job was held.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Deferral {
    pub until_ms: u64,
    /// The forecast intensity of the hour it waits for, and the intensity
    /// when it was submitted (the saving's baseline), gCO2e/kWh.
    pub forecast_gco2_per_kwh: f64,
    pub submit_gco2_per_kwh: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    /// The answer is one or more tool calls.
    ToolCalls,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub receipt: Receipt,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
}

/// The carbon receipt of one answer (`usage.sprout` in the API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub directive: String,
    pub job_id: String,
    /// Energy attributed to this request, joules.
    pub energy_j: f64,
    /// Operational plus embodied carbon, grams CO2e.
    pub carbon_g: f64,
    pub operational_g: f64,
    pub embodied_g: f64,
    /// Grid carbon intensity used, gCO2e/kWh.
    pub intensity_gco2_per_kwh: f64,
    /// Wall time from the engine's start to its last token, seconds.
    pub duration_s: f64,
    /// True when energy or intensity is an estimate rather than a measurement.
    pub estimated: bool,
    /// The backend that answered (`local`: the embedded engine) and its
    /// grid (the carbon source's name); empty in records from before routing.
    #[serde(default)]
    pub backend: String,
    #[serde(default)]
    pub zone: String,
}

/// One accounting record per job that reached the engine, kept after the
/// job's result is collected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub job_id: String,
    pub origin: Origin,
    pub state: JobState,
    pub finished_ms: u64,
    pub directive: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub duration_s: f64,
    pub energy_j: f64,
    pub intensity_gco2_per_kwh: f64,
    pub operational_g: f64,
    pub embodied_g: f64,
    pub carbon_g: f64,
    pub estimated: bool,
    /// The prompt's class (`classify`), for the optimizer's per-class means.
    #[serde(default)]
    pub class: String,
    /// For a deferred job: energy x (intensity at submission − intensity
    /// when it ran), gCO2e; the deferral's own saving, apart from the directives'.
    #[serde(default)]
    pub deferral_saving_g: f64,
    /// The job was held for a low-carbon hour (`deferral_saving_g` is its saving).
    #[serde(default)]
    pub deferred: bool,
    /// The backend that answered and its grid (see [`Receipt::backend`]).
    #[serde(default)]
    pub backend: String,
    #[serde(default)]
    pub zone: String,
}
