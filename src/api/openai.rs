//! OpenAI chat-completion shapes: parsing and validating a request body into a
//! [`ChatRequest`], and rendering a finished job as a `chat.completion` (or
//! its stream chunks). Pure: no IO, so every bad input is unit-tested here.
//!
//! Sprout's extensions: `"directive"` (pin a level), `"priority"` and, for
//! jobs, `"deadline"` in the request; `usage.sprout` (the carbon receipt) in
//! the response.

use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use crate::config::Config;
use crate::plan::directive::Directives;
use crate::engine::grammar;
use crate::job::{ChatRequest, Deadline, Job, JobResult, Message, ResponseFormat, Role, Tool, ToolCall, ToolChoice};
use crate::wire::{AssistantMessage, ChatCompletion, Choice, DeferralView, ErrorMessage, JobRequestView, JobView, Usage};

/// The latest deadline accepted as a Unix time (2200-01-01): later ones are
/// typos (milliseconds sent as seconds), and the bound keeps millisecond
/// arithmetic far from overflow.
pub const MAX_DEADLINE_UNIX_S: f64 = 7_258_118_400.0;

#[derive(Debug, Deserialize)]
struct RawRequest {
    model: Option<String>,
    messages: Option<Vec<RawMessage>>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    stop: Option<Stop>,
    n: Option<i64>,
    directive: Option<String>,
    priority: Option<i64>,
    deadline: Option<Value>,
    store: Option<bool>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    response_format: Option<Value>,
    logprobs: Option<bool>,
    top_logprobs: Option<i64>,
    logit_bias: Option<Value>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct RawMessage {
    role: Option<String>,
    content: Option<Value>,
    tool_calls: Option<Value>,
    tool_call_id: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// A validated request plus how to answer it.
#[derive(Debug)]
pub struct Parsed {
    pub request: ChatRequest,
    pub stream: bool,
    pub include_usage: bool,
    pub priority: i32,
    pub deadline: Option<Deadline>,
}

/// OpenAI parameters sproutd does not implement: set to anything but their
/// default, they get a 400 naming them instead of being ignored.
fn unsupported(body: &serde_json::Map<String, Value>) -> Option<(&'static str, &'static str)> {
    let set = |key: &str| body.get(key).filter(|v| !v.is_null());
    let non_empty = |v: &Value| v.as_array().is_none_or(|a| !a.is_empty());
    let not_auto = |v: &Value| !matches!(v.as_str(), Some("none" | "auto"));
    let checks: [(&'static str, bool, &'static str); 2] = [
        ("functions", set("functions").is_some_and(non_empty), "`functions` is OpenAI's deprecated form; send `tools` instead"),
        ("function_call", set("function_call").is_some_and(not_auto), "`function_call` is OpenAI's deprecated form; send `tool_choice` instead"),
    ];
    checks.into_iter().find(|(_, on, _)| *on).map(|(key, _, why)| (key, why))
}

/// Parses and validates a body. Unknown fields are ignored, as OpenAI's
/// clients send many we do not use, except those that would change the
/// answer and that sproutd does not implement (`unsupported`): a 400.
pub fn parse_request(body: &[u8], cfg: &Config, directives: &Directives) -> Result<Parsed, ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_json(format!("request body is not valid JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(ApiError::bad_json("request body must be a JSON object"));
    };
    if let Some((param, why)) = unsupported(object) {
        return Err(ApiError::invalid(param, why));
    }
    let raw: RawRequest = serde_json::from_value(value)
        .map_err(|e| ApiError::bad_json(format!("request body does not match the chat completion schema: {e}")))?;

    let model = match raw.model {
        Some(m) if m != cfg.model.name => {
            return Err(ApiError {
                param: Some("model".into()),
                ..ApiError::not_found(
                    "model_not_found",
                    format!("the model {m:?} does not exist; this server serves {:?}", cfg.model.name),
                )
            })
        }
        _ => cfg.model.name.clone(),
    };

    let raw_messages = match raw.messages {
        None => return Err(ApiError::invalid("messages", "'messages' is required")),
        Some(m) if m.is_empty() => return Err(ApiError::invalid("messages", "'messages' must not be empty")),
        Some(m) => m,
    };
    let mut messages = Vec::with_capacity(raw_messages.len());
    for (i, m) in raw_messages.into_iter().enumerate() {
        let role = match m.role.as_deref() {
            Some("system") | Some("developer") => Role::System,
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            Some("tool") => Role::Tool,
            Some(other) => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("unknown role {other:?}: expected system, developer, user, assistant or tool"),
                ))
            }
            None => return Err(ApiError::invalid(format!("messages[{i}].role"), "'role' is required")),
        };
        let content = content_text(m.content, i)?;
        let tool_calls = match m.tool_calls {
            None | Some(Value::Null) => vec![],
            Some(_) if role != Role::Assistant => {
                return Err(ApiError::invalid(format!("messages[{i}].tool_calls"), "only assistant messages carry tool_calls"))
            }
            Some(v) => message_tool_calls(v, i)?,
        };
        let tool_call_id = match (role, m.tool_call_id) {
            (Role::Tool, Some(Value::String(id))) if !id.is_empty() => Some(id),
            (Role::Tool, _) => {
                return Err(ApiError::invalid(format!("messages[{i}].tool_call_id"), "a tool message needs the non-empty tool_call_id of the call it answers"))
            }
            (_, None | Some(Value::Null)) => None,
            (_, Some(_)) => return Err(ApiError::invalid(format!("messages[{i}].tool_call_id"), "only tool messages carry a tool_call_id")),
        };
        messages.push(Message { role, content, tool_calls, tool_call_id });
    }
    if !messages.iter().any(|m| m.role == Role::User && !m.content.trim().is_empty()) {
        return Err(ApiError::invalid("messages", "at least one user message with non-empty content is required"));
    }

    let cap = cfg.generation.max_tokens_cap;
    let max_tokens = match raw.max_completion_tokens.or(raw.max_tokens) {
        None => cfg.generation.default_max_tokens,
        Some(n) if n >= 1 && n as u64 <= cap as u64 => n as usize,
        Some(n) => {
            let param = if raw.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
            return Err(ApiError::invalid(param, format!("{param} must be between 1 and {cap}, got {n}")));
        }
    };
    if let Some(t) = raw.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::invalid("temperature", format!("temperature must be between 0 and 2, got {t}")));
        }
    }
    if let Some(p) = raw.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::invalid("top_p", format!("top_p must be in (0, 1], got {p}")));
        }
    }
    if let Some(n) = raw.n {
        if n != 1 {
            return Err(ApiError::invalid("n", "only n = 1 is supported"));
        }
    }
    let seed = match raw.seed {
        Some(s) if s < 0 => return Err(ApiError::invalid("seed", "seed must be a non-negative integer")),
        s => s.map(|s| s as u64),
    };
    let stop = match raw.stop {
        None => vec![],
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > 4 || stop.iter().any(|s| s.is_empty()) {
        return Err(ApiError::invalid("stop", "stop takes up to 4 non-empty strings"));
    }
    if let Some(d) = &raw.directive {
        if !directives.contains(d) {
            let known: Vec<_> = directives.names().collect();
            return Err(ApiError::invalid(
                "directive",
                format!("unknown directive {d:?}: expected one of {}", known.join(", ")),
            ));
        }
    }
    let priority = match raw.priority {
        None => 0,
        Some(p) if p >= i32::MIN as i64 && p <= i32::MAX as i64 => p as i32,
        Some(_) => return Err(ApiError::invalid("priority", "priority must fit in a 32-bit integer")),
    };
    let deadline = match &raw.deadline {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => Some(Deadline::In(crate::config::parse_duration(d).filter(|d| !d.is_zero()).ok_or_else(
            || ApiError::invalid("deadline", format!("deadline {d:?} is not a duration like \"6h\" (at most 100 years) or a Unix time in seconds")),
        )?)),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(s) if s.is_finite() && s > 0.0 && s <= MAX_DEADLINE_UNIX_S => Some(Deadline::AtUnixS(s)),
            _ => return Err(ApiError::invalid("deadline", "deadline must be a positive Unix time in seconds, before the year 2200")),
        },
        Some(_) => return Err(ApiError::invalid("deadline", "deadline must be a duration string like \"6h\" or a Unix time in seconds")),
    };
    let tools = match raw.tools {
        None | Some(Value::Null) => vec![],
        Some(v) => parse_tools(v)?,
    };
    let tool_choice = parse_tool_choice(raw.tool_choice, &tools)?;
    let response_format = parse_response_format(raw.response_format)?;
    if let Some(g) = grammar::for_request(&tools, &tool_choice, &response_format) {
        grammar::check(&g).map_err(|e| {
            let param = if tools.is_empty() || tool_choice == ToolChoice::None { "response_format" } else { "tools" };
            ApiError::invalid(param, format!("the engine cannot hold answers to this schema: {e}"))
        })?;
    }
    let penalty = |name: &str, v: Option<f64>| match v {
        None => Ok(0.0),
        Some(p) if (-2.0..=2.0).contains(&p) => Ok(p as f32),
        Some(p) => Err(ApiError::invalid(name, format!("{name} must be between -2 and 2, got {p}"))),
    };
    let presence_penalty = penalty("presence_penalty", raw.presence_penalty)?;
    let frequency_penalty = penalty("frequency_penalty", raw.frequency_penalty)?;
    let logit_bias = match raw.logit_bias {
        None | Some(Value::Null) => Default::default(),
        Some(v) => parse_logit_bias(v)?,
    };
    let logprobs = match (raw.logprobs.unwrap_or(false), raw.top_logprobs) {
        (false, None | Some(0)) => None,
        (false, Some(_)) => return Err(ApiError::invalid("top_logprobs", "top_logprobs needs logprobs: true")),
        (true, None) => Some(0),
        (true, Some(n)) if (0..=MAX_TOP_LOGPROBS as i64).contains(&n) => Some(n as usize),
        (true, Some(n)) => return Err(ApiError::invalid("top_logprobs", format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {n}"))),
    };
    let include_usage = raw.stream_options.is_some_and(|o| o.include_usage);
    Ok(Parsed {
        request: ChatRequest {
            model,
            messages,
            max_tokens,
            temperature: raw.temperature,
            top_p: raw.top_p,
            seed,
            stop,
            directive: raw.directive,
            store: raw.store,
            tools,
            tool_choice,
            single_tool_call: raw.parallel_tool_calls == Some(false),
            response_format,
            presence_penalty,
            frequency_penalty,
            logit_bias,
            logprobs,
        },
        stream: raw.stream,
        include_usage,
        deadline,
        priority,
    })
}

/// OpenAI's limit on alternatives per token.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// `tools`: function tools only, each with a name OpenAI would accept and
/// an object schema of its arguments.
fn parse_tools(v: Value) -> Result<Vec<Tool>, ApiError> {
    let Value::Array(items) = v else { return Err(ApiError::invalid("tools", "tools must be an array")) };
    if items.len() > 128 {
        return Err(ApiError::invalid("tools", format!("at most 128 tools, got {}", items.len())));
    }
    let mut tools: Vec<Tool> = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let param = |f: &str| format!("tools[{i}]{f}");
        match item.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some(other) => return Err(ApiError::invalid(param(".type"), format!("tool type {other:?} is not supported; only \"function\""))),
            None => return Err(ApiError::invalid(param(".type"), "a tool needs \"type\": \"function\"")),
        }
        let Some(f) = item.get("function").and_then(Value::as_object) else {
            return Err(ApiError::invalid(param(".function"), "a function tool needs a \"function\" object"));
        };
        let name = match f.get("name").and_then(Value::as_str) {
            Some(n) if valid_function_name(n) => n.to_string(),
            _ => return Err(ApiError::invalid(param(".function.name"), "a function name is 1 to 64 letters, digits, underscores or dashes")),
        };
        if tools.iter().any(|t| t.name == name) {
            return Err(ApiError::invalid(param(".function.name"), format!("two tools are named {name:?}")));
        }
        let description = match f.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => Some(d.clone()),
            Some(_) => return Err(ApiError::invalid(param(".function.description"), "description must be a string")),
        };
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => return Err(ApiError::invalid(param(".function.parameters"), "parameters must be a JSON schema object")),
        };
        let tool = Tool { name, description, parameters };
        grammar::check(&grammar::call_schema(&tool))
            .map_err(|e| ApiError::invalid(param(".function.parameters"), format!("the engine cannot hold calls to this schema: {e}")))?;
        tools.push(tool);
    }
    Ok(tools)
}

fn valid_function_name(n: &str) -> bool {
    (1..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_tool_choice(v: Option<Value>, tools: &[Tool]) -> Result<ToolChoice, ApiError> {
    let choice = match v {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::invalid("tool_choice", format!("unknown tool_choice {other:?}: expected none, auto, required or a function")))
            }
        },
        Some(v) => match (v.get("type").and_then(Value::as_str), v.pointer("/function/name").and_then(Value::as_str)) {
            (Some("function"), Some(name)) => {
                if !tools.iter().any(|t| t.name == name) {
                    return Err(ApiError::invalid("tool_choice", format!("tool_choice names {name:?}, which is not among the tools")));
                }
                ToolChoice::Function(name.to_string())
            }
            _ => return Err(ApiError::invalid("tool_choice", "tool_choice must be a string or {\"type\": \"function\", \"function\": {\"name\": ...}}")),
        },
    };
    if tools.is_empty() && matches!(choice, ToolChoice::Required) {
        return Err(ApiError::invalid("tool_choice", "tool_choice \"required\" needs tools"));
    }
    Ok(choice)
}

fn parse_response_format(v: Option<Value>) -> Result<ResponseFormat, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(ResponseFormat::Text) };
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let spec = v.get("json_schema").and_then(Value::as_object).ok_or_else(|| {
                ApiError::invalid("response_format.json_schema", "a json_schema response format needs a \"json_schema\" object")
            })?;
            let name = match spec.get("name").and_then(Value::as_str) {
                Some(n) if valid_function_name(n) => n.to_string(),
                _ => return Err(ApiError::invalid("response_format.json_schema.name", "name is 1 to 64 letters, digits, underscores or dashes")),
            };
            let schema = match spec.get("schema") {
                Some(s @ Value::Object(_)) => s.clone(),
                None | Some(Value::Null) => serde_json::json!({}),
                Some(_) => return Err(ApiError::invalid("response_format.json_schema.schema", "schema must be a JSON schema object")),
            };
            Ok(ResponseFormat::JsonSchema { name, schema })
        }
        Some(other) => Err(ApiError::invalid("response_format", format!("unknown response_format type {other:?}: expected text, json_object or json_schema"))),
        None => Err(ApiError::invalid("response_format", "response_format needs a \"type\"")),
    }
}

/// `logit_bias`: token ids (as strings) to biases in [-100, 100].
fn parse_logit_bias(v: Value) -> Result<std::collections::BTreeMap<u32, f32>, ApiError> {
    let Value::Object(map) = v else { return Err(ApiError::invalid("logit_bias", "logit_bias must be an object of token id to bias")) };
    if map.len() > 300 {
        return Err(ApiError::invalid("logit_bias", format!("at most 300 tokens, got {}", map.len())));
    }
    let mut out = std::collections::BTreeMap::new();
    for (k, b) in map {
        let id: u32 = k.parse().map_err(|_| ApiError::invalid("logit_bias", format!("{k:?} is not a token id")))?;
        match b.as_f64() {
            Some(b) if (-100.0..=100.0).contains(&b) => out.insert(id, b as f32),
            _ => return Err(ApiError::invalid("logit_bias", format!("the bias of token {id} must be a number between -100 and 100"))),
        };
    }
    Ok(out)
}

/// An assistant message's `tool_calls`, as sent back with the tools' results.
fn message_tool_calls(v: Value, i: usize) -> Result<Vec<ToolCall>, ApiError> {
    let param = || format!("messages[{i}].tool_calls");
    let Value::Array(items) = v else { return Err(ApiError::invalid(param(), "tool_calls must be an array")) };
    items
        .into_iter()
        .map(|c| {
            let s = |p: &str| c.pointer(p).and_then(Value::as_str).map(str::to_string);
            match (s("/id"), s("/function/name"), c.pointer("/function/arguments")) {
                (Some(id), Some(name), Some(args)) => {
                    // OpenAI sends arguments as a JSON text; accept an object too.
                    let arguments = args.as_str().map(str::to_string).unwrap_or_else(|| args.to_string());
                    Ok(ToolCall { id, name, arguments })
                }
                _ => Err(ApiError::invalid(param(), "each tool call needs id, function.name and function.arguments")),
            }
        })
        .collect()
}

/// Message content: a string, or an array of `{"type": "text", "text"}` parts.
fn content_text(content: Option<Value>, i: usize) -> Result<String, ApiError> {
    let param = || format!("messages[{i}].content");
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    (Some(kind), _) => {
                        return Err(ApiError::invalid(param(), format!("content part type {kind:?} is not supported; only text")))
                    }
                    _ => return Err(ApiError::invalid(param(), "content parts must be {\"type\": \"text\", \"text\": ...}")),
                }
            }
            Ok(out)
        }
        Some(_) => Err(ApiError::invalid(param(), "content must be a string or an array of text parts")),
    }
}

pub fn completion_id(job: &Job) -> String {
    format!("chatcmpl-{}", job.id)
}

fn created(job: &Job) -> u64 {
    job.created_ms / 1000
}

/// `usage` with the carbon receipt; `None` until the job succeeded.
pub fn usage(job: &Job) -> Option<Usage> {
    let r = job.result.as_ref()?;
    Some(Usage {
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens,
        total_tokens: r.prompt_tokens + r.completion_tokens,
        sprout: r.receipt.clone(),
    })
}

fn fingerprint() -> String {
    format!("sprout-{}", env!("CARGO_PKG_VERSION"))
}

/// A succeeded job as a `chat.completion` object.
pub fn completion(job: &Job) -> Option<ChatCompletion> {
    let r = job.result.as_ref()?;
    Some(ChatCompletion {
        id: completion_id(job),
        object: "chat.completion".into(),
        created: created(job),
        model: job.request.model.clone(),
        system_fingerprint: fingerprint(),
        choices: vec![Choice { index: 0, message: message(r), logprobs: logprobs(r), finish_reason: r.finish_reason }],
        usage: usage(job),
    })
}

/// The answer as an assistant message: its text, and its tool calls if it
/// made any (with text before them, if the model wrote some, as streamed).
fn message(r: &JobResult) -> AssistantMessage {
    let content = if !r.tool_calls.is_empty() && r.text.trim().is_empty() { None } else { Some(r.text.clone()) };
    AssistantMessage { role: "assistant".into(), content, tool_calls: tool_calls(r, false) }
}

/// Tool calls in OpenAI's shape; `indexed` adds the `index` stream deltas carry.
fn tool_calls(r: &JobResult, indexed: bool) -> Vec<Value> {
    r.tool_calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut call = c.to_openai();
            if indexed {
                call["index"] = i.into();
            }
            call
        })
        .collect()
}

/// `logprobs` of a choice: `null` unless the client asked.
pub fn logprobs(r: &JobResult) -> Value {
    let entry = |token: &str, logprob: f32| json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()});
    match &r.logprobs {
        None => Value::Null,
        Some(tokens) => json!({
            "content": tokens.iter().map(|t| {
                let mut e = entry(&t.token, t.logprob);
                e["top_logprobs"] = t.top.iter().map(|(tok, lp)| entry(tok, *lp)).collect();
                e
            }).collect::<Vec<_>>(),
            "refusal": null,
        }),
    }
}

/// One `chat.completion.chunk`.
pub fn chunk(job: &Job, delta: Value, finish_reason: Option<&str>, usage: Option<Usage>) -> Value {
    let mut v = json!({
        "id": completion_id(job),
        "object": "chat.completion.chunk",
        "created": created(job),
        "model": job.request.model,
        "system_fingerprint": fingerprint(),
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
    });
    if let Some(u) = usage {
        v["usage"] = json!(u);
    }
    v
}

/// The last chunks of a streamed answer: its tool calls (one delta with each
/// call whole), then the finish reason with the receipt. Log-probabilities
/// ride on the finishing chunk, all of them (clients join the lists).
pub fn closing_chunks(job: &Job, r: &JobResult, usage: Option<Usage>) -> Vec<Value> {
    let mut out = vec![];
    if !r.tool_calls.is_empty() {
        out.push(chunk(job, json!({"tool_calls": tool_calls(r, true)}), None, None));
    }
    let mut last = chunk(job, json!({}), Some(r.finish_reason.as_str()), usage);
    last["choices"][0]["logprobs"] = logprobs(r);
    out.push(last);
    out
}

/// The usage-only final chunk (`stream_options.include_usage`).
pub fn usage_chunk(job: &Job) -> Value {
    json!({
        "id": completion_id(job),
        "object": "chat.completion.chunk",
        "created": created(job),
        "model": job.request.model,
        "choices": [],
        "usage": usage(job),
    })
}

/// A job as the job API shows it (its queue position and tokens so far
/// are the handler's to add).
pub fn job_view(job: &Job) -> JobView {
    let secs = |ms: u64| ms as f64 / 1000.0;
    let r = &job.request;
    JobView {
        id: job.id.clone(),
        object: "job".into(),
        origin: job.origin,
        state: job.state,
        priority: job.priority,
        directive: job.directive.clone(),
        model: r.model.clone(),
        seed: job.seed,
        attempts: job.attempts,
        created_at: secs(job.created_ms),
        started_at: job.started_ms.map(secs),
        finished_at: job.finished_ms.map(secs),
        request: JobRequestView {
            messages: r.messages.clone(),
            max_tokens: r.max_tokens,
            temperature: r.temperature,
            top_p: r.top_p,
            seed: r.seed,
            stop: r.stop.clone(),
            directive: r.directive.clone(),
            tools: r.tools.iter().map(Tool::to_openai).collect(),
            tool_choice: r.tool_choice.to_openai(),
            response_format: r.response_format.to_openai(),
            logprobs: r.logprobs.is_some(),
            top_logprobs: r.logprobs,
        },
        deadline_at: job.deadline_ms.map(secs),
        deferred: job.deferral.map(|d| DeferralView {
            until: secs(d.until_ms),
            forecast_gco2_per_kwh: d.forecast_gco2_per_kwh,
            submit_gco2_per_kwh: d.submit_gco2_per_kwh,
        }),
        result: completion(job),
        error: job.error.as_ref().map(|m| ErrorMessage { message: m.clone() }),
        position: None,
        tokens_so_far: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn setup() -> (Config, Directives) {
        let c = Config::default_config();
        let d = Directives::new(&c.directives);
        (c, d)
    }

    fn parse(body: &str) -> Result<Parsed, ApiError> {
        let (c, d) = setup();
        parse_request(body.as_bytes(), &c, &d)
    }

    fn err(body: &str) -> ApiError {
        parse(body).expect_err("should be rejected")
    }

    fn body(extra: &str) -> String {
        format!(r#"{{"messages":[{{"role":"user","content":"hi"}}],{extra}}}"#)
    }

    const WEATHER: &str = r#"{"type":"function","function":{"name":"get_weather","description":"Weather now",
        "parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}"#;

    #[test]
    fn tools_choices_formats_and_sampling_parameters_are_parsed() {
        let p = parse(&body(&format!(
            r#""tools":[{WEATHER}],"tool_choice":{{"type":"function","function":{{"name":"get_weather"}}}},"parallel_tool_calls":false,
               "logprobs":true,"top_logprobs":3,"logit_bias":{{"151643":-100,"7":2.5}},"presence_penalty":0.5,"frequency_penalty":-1"#
        )))
        .unwrap()
        .request;
        assert_eq!(p.tools.len(), 1);
        assert_eq!(p.tools[0].name, "get_weather");
        assert_eq!(p.tools[0].parameters["required"][0], "city");
        assert_eq!(p.tool_choice, ToolChoice::Function("get_weather".into()));
        assert!(p.single_tool_call && p.shape_is_fixed());
        assert_eq!(p.logprobs, Some(3));
        assert_eq!(p.logit_bias, [(7, 2.5), (151643, -100.0)].into());
        assert_eq!((p.presence_penalty, p.frequency_penalty), (0.5, -1.0));
        let p = parse(&body(r#""response_format":{"type":"json_schema","json_schema":{"name":"answer","strict":true,
            "schema":{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]}}}"#))
        .unwrap()
        .request;
        assert!(matches!(&p.response_format, ResponseFormat::JsonSchema { name, schema } if name == "answer" && schema["required"][0] == "n"));
        assert!(p.shape_is_fixed());
        // Tools the client turned off leave the answer free.
        let p = parse(&body(&format!(r#""tools":[{WEATHER}],"tool_choice":"none""#))).unwrap().request;
        assert!(!p.shape_is_fixed());
        assert_eq!(parse(&body(r#""logprobs":true"#)).unwrap().request.logprobs, Some(0));
    }

    #[test]
    fn a_conversation_with_tool_calls_and_results_is_kept_whole() {
        let p = parse(&format!(
            r#"{{"tools":[{WEATHER}],"messages":[{{"role":"user","content":"Weather in Oslo?"}},
                {{"role":"assistant","content":null,"tool_calls":[{{"id":"call_1","type":"function",
                  "function":{{"name":"get_weather","arguments":"{{\"city\":\"Oslo\"}}"}}}}]}},
                {{"role":"tool","tool_call_id":"call_1","content":"-3 C, snow"}}]}}"#
        ))
        .unwrap()
        .request;
        assert_eq!(p.messages[1].role, Role::Assistant);
        assert_eq!(p.messages[1].tool_calls, [ToolCall { id: "call_1".into(), name: "get_weather".into(), arguments: r#"{"city":"Oslo"}"#.into() }]);
        assert_eq!((p.messages[2].role, p.messages[2].tool_call_id.as_deref()), (Role::Tool, Some("call_1")));
    }

    #[test]
    fn bad_tools_formats_and_sampling_parameters_are_400_naming_them() {
        let t = WEATHER;
        for (extra, param) in [
            (r#""functions":[{"name":"f"}]"#.to_string(), "functions"),
            (r#""function_call":{"name":"f"}"#.into(), "function_call"),
            (r#""tools":{"a":1}"#.into(), "tools"),
            (r#""tools":[{"type":"retrieval"}]"#.into(), "tools[0].type"),
            (r#""tools":[{"type":"function","function":{"name":"has space"}}]"#.into(), "tools[0].function.name"),
            (format!(r#""tools":[{t},{t}]"#), "tools[1].function.name"),
            (r#""tools":[{"type":"function","function":{"name":"f","parameters":[1]}}]"#.into(), "tools[0].function.parameters"),
            (r#""tools":[{"type":"function","function":{"name":"f","parameters":{"type":"banana"}}}]"#.into(), "tools[0].function.parameters"),
            (r#""tool_choice":"required""#.into(), "tool_choice"),
            (r#""tool_choice":"sometimes""#.into(), "tool_choice"),
            (format!(r#""tools":[{t}],"tool_choice":{{"type":"function","function":{{"name":"other"}}}}"#), "tool_choice"),
            (r#""response_format":{"type":"xml"}"#.into(), "response_format"),
            (r#""response_format":{"type":"json_schema"}"#.into(), "response_format.json_schema"),
            (r#""response_format":{"type":"json_schema","json_schema":{"schema":{}}}"#.into(), "response_format.json_schema.name"),
            (r#""response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"banana"}}}"#.into(), "response_format"),
            (r#""top_logprobs":3"#.into(), "top_logprobs"),
            (r#""logprobs":true,"top_logprobs":21"#.into(), "top_logprobs"),
            (r#""logit_bias":{"x":1}"#.into(), "logit_bias"),
            (r#""logit_bias":{"5":101}"#.into(), "logit_bias"),
            (r#""presence_penalty":2.5"#.into(), "presence_penalty"),
            (r#""frequency_penalty":-3"#.into(), "frequency_penalty"),
        ] {
            let e = err(&body(&extra));
            assert_eq!((e.status, e.param.as_deref()), (StatusCode::BAD_REQUEST, Some(param)), "{extra}: {}", e.message);
        }
        for (msgs, param) in [
            (r#"[{"role":"user","content":"x"},{"role":"tool","content":"r"}]"#, "messages[1].tool_call_id"),
            (r#"[{"role":"user","content":"x","tool_calls":[]}]"#, "messages[0].tool_calls"),
            (r#"[{"role":"user","content":"x"},{"role":"assistant","tool_calls":[{"id":"c"}]}]"#, "messages[1].tool_calls"),
            (r#"[{"role":"user","content":"x","tool_call_id":"c"}]"#, "messages[0].tool_call_id"),
        ] {
            let e = err(&format!(r#"{{"messages":{msgs}}}"#));
            assert_eq!(e.param.as_deref(), Some(param), "{msgs}: {}", e.message);
        }
        // Their defaults, as clients often send them, are fine.
        for extra in [
            r#""tools":[]"#,
            r#""tools":null"#,
            r#""tool_choice":"none""#,
            r#""tool_choice":"auto""#,
            r#""function_call":"auto""#,
            r#""response_format":{"type":"text"}"#,
            r#""logprobs":false"#,
            r#""top_logprobs":0"#,
            r#""logit_bias":{}"#,
            r#""presence_penalty":0,"frequency_penalty":0.0"#,
            r#""parallel_tool_calls":true,"user":"u""#,
        ] {
            let mut p = parse(&body(extra)).unwrap_or_else(|e| panic!("{extra}: {}", e.message)).request;
            assert!(!p.shape_is_fixed(), "{extra}");
            p.tool_choice = ToolChoice::Auto;
            assert_eq!(p, parse(&body(r#""user":"u""#)).unwrap().request, "{extra}");
        }
    }

    #[test]
    fn deadlines_too_far_are_refused_not_wrapped() {
        let body = |d: &str| format!(r#"{{"messages":[{{"role":"user","content":"hi"}}],"deadline":{d}}}"#);
        for d in [r#""99999999999999999999h""#, r#""18446744073709551615s""#, r#""18446744073713152s""#, "1e300", "7258118401"] {
            let e = err(&body(d));
            assert_eq!((e.status, e.param.as_deref()), (StatusCode::BAD_REQUEST, Some("deadline")), "{d}");
        }
        let p = parse(&body(r#""36500d""#)).unwrap();
        let at = p.deadline.unwrap().to_unix_ms(1_000);
        assert_eq!(at, 1_000 + 36500 * 86_400_000);
        assert!(parse(&body("7258118400")).is_ok());
    }

    #[test]
    fn a_plain_request_gets_defaults() {
        let p = parse(r#"{"messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        assert_eq!(p.request.max_tokens, 512);
        assert_eq!(p.request.model, "qwen2.5-coder-0.5b-instruct");
        assert!(!p.stream);
        assert_eq!(p.priority, 0);
    }

    #[test]
    fn full_request_with_parts_and_extensions() {
        let p = parse(
            r#"{"model":"qwen2.5-coder-0.5b-instruct","stream":true,"stream_options":{"include_usage":true},
                "messages":[{"role":"developer","content":"be nice"},
                            {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
                "max_completion_tokens":16,"temperature":0,"seed":7,"stop":"END","directive":"L2","priority":-3,
                "frequency_penalty":0,"user":"x"}"#,
        )
        .unwrap();
        assert!(p.stream && p.include_usage);
        assert_eq!(p.request.messages[0].role, Role::System);
        assert_eq!(p.request.messages[1].content, "ab");
        assert_eq!(p.request.max_tokens, 16);
        assert_eq!(p.request.seed, Some(7));
        assert_eq!(p.request.stop, ["END"]);
        assert_eq!(p.request.directive.as_deref(), Some("L2"));
        assert_eq!(p.priority, -3);
    }

    #[test]
    fn bad_inputs_are_400_with_the_param() {
        let cases: &[(&str, Option<&str>)] = &[
            ("{not json", None),
            ("[1,2]", None),
            (r#"{"messages":"hi"}"#, None),
            (r#"{}"#, Some("messages")),
            (r#"{"messages":[]}"#, Some("messages")),
            (r#"{"messages":[{"role":"wizard","content":"x"}]}"#, Some("messages[0].role")),
            (r#"{"messages":[{"content":"x"}]}"#, Some("messages[0].role")),
            (r#"{"messages":[{"role":"system","content":"x"}]}"#, Some("messages")),
            (r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#, Some("messages[0].content")),
            (r#"{"messages":[{"role":"user","content":5}]}"#, Some("messages[0].content")),
            (r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#, Some("max_tokens")),
            (r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":999999}"#, Some("max_tokens")),
            (r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#, Some("max_tokens")),
            (r#"{"messages":[{"role":"user","content":"x"}],"directive":"L9"}"#, Some("directive")),
            (r#"{"messages":[{"role":"user","content":"x"}],"temperature":3}"#, Some("temperature")),
            (r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#, Some("n")),
            (r#"{"messages":[{"role":"user","content":"x"}],"seed":-4}"#, Some("seed")),
        ];
        for (body, param) in cases {
            let e = err(body);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.param.as_deref(), *param, "{body}: {}", e.message);
            let b = e.body();
            assert_eq!(b.error.kind, "invalid_request_error");
            assert!(b.error.message.len() > 10);
        }
    }

    #[test]
    fn unknown_model_is_404() {
        let e = err(r#"{"model":"gpt-4","messages":[{"role":"user","content":"x"}]}"#);
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.code, "model_not_found");
    }
}
