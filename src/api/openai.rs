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
use crate::directive::Directives;
use crate::job::{ChatRequest, Deadline, Job, Message, Role};

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
}

#[derive(Debug, Deserialize)]
struct RawMessage {
    role: Option<String>,
    content: Option<Value>,
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

/// OpenAI parameters that change what the answer is and that sproutd does
/// not implement yet: set to anything but their default, they get a 400
/// naming them instead of being ignored. Returns the first one set.
fn unsupported(body: &serde_json::Map<String, Value>) -> Option<(&'static str, &'static str)> {
    let set = |key: &str| body.get(key).filter(|v| !v.is_null());
    let non_empty = |v: &Value| v.as_array().is_none_or(|a| !a.is_empty()) && v.as_object().is_none_or(|o| !o.is_empty());
    let not_auto = |v: &Value| !matches!(v.as_str(), Some("none" | "auto"));
    let checks: [(&'static str, bool, &'static str); 9] = [
        ("tools", set("tools").is_some_and(non_empty), "tool calling is not supported by sproutd yet"),
        ("tool_choice", set("tool_choice").is_some_and(not_auto), "tool calling is not supported by sproutd yet"),
        ("functions", set("functions").is_some_and(non_empty), "function calling is not supported by sproutd yet"),
        ("function_call", set("function_call").is_some_and(not_auto), "function calling is not supported by sproutd yet"),
        (
            "response_format",
            set("response_format").is_some_and(|v| v.get("type").and_then(Value::as_str) != Some("text")),
            "structured output (response_format json_object or json_schema) is not supported by sproutd yet; only {\"type\": \"text\"}",
        ),
        ("logprobs", set("logprobs").is_some_and(|v| v.as_bool() != Some(false)), "logprobs are not supported by sproutd yet"),
        ("top_logprobs", set("top_logprobs").is_some_and(|v| v.as_f64() != Some(0.0)), "logprobs are not supported by sproutd yet"),
        ("logit_bias", set("logit_bias").is_some_and(non_empty), "logit_bias is not supported by sproutd yet"),
        (
            "presence_penalty",
            set("presence_penalty").is_some_and(|v| v.as_f64() != Some(0.0)) || set("frequency_penalty").is_some_and(|v| v.as_f64() != Some(0.0)),
            "presence_penalty and frequency_penalty are not supported by sproutd yet (0 only); repetition is penalised by generation.repetition_penalty",
        ),
    ];
    checks.into_iter().find(|(_, on, _)| *on).map(|(key, _, why)| {
        // Name the penalty actually set.
        let key = if key == "presence_penalty" && set("presence_penalty").is_none_or(|v| v.as_f64() == Some(0.0)) { "frequency_penalty" } else { key };
        (key, why)
    })
}

/// Parses and validates a body. Unknown fields are ignored, as OpenAI's
/// clients send many we do not use, except those that would change the
/// answer and that sproutd does not implement ([`unsupported`]): a 400.
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
            Some(other) => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("unknown role {other:?}: expected system, developer, user or assistant"),
                ))
            }
            None => return Err(ApiError::invalid(format!("messages[{i}].role"), "'role' is required")),
        };
        let content = content_text(m.content, i)?;
        messages.push(Message { role, content });
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
        },
        stream: raw.stream,
        include_usage,
        deadline,
        priority,
    })
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
pub fn usage(job: &Job) -> Option<Value> {
    let r = job.result.as_ref()?;
    Some(json!({
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "total_tokens": r.prompt_tokens + r.completion_tokens,
        "sprout": {
            "directive": r.receipt.directive,
            "job_id": r.receipt.job_id,
            "energy_j": r.receipt.energy_j,
            "carbon_g": r.receipt.carbon_g,
            "operational_g": r.receipt.operational_g,
            "embodied_g": r.receipt.embodied_g,
            "intensity_gco2_per_kwh": r.receipt.intensity_gco2_per_kwh,
            "duration_s": r.receipt.duration_s,
            "estimated": r.receipt.estimated,
        },
    }))
}

/// A succeeded job as a `chat.completion` object.
pub fn completion(job: &Job) -> Option<Value> {
    let r = job.result.as_ref()?;
    Some(json!({
        "id": completion_id(job),
        "object": "chat.completion",
        "created": created(job),
        "model": job.request.model,
        "system_fingerprint": format!("sprout-{}", env!("CARGO_PKG_VERSION")),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": r.text},
            "logprobs": null,
            "finish_reason": r.finish_reason.as_str(),
        }],
        "usage": usage(job),
    }))
}

/// One `chat.completion.chunk`.
pub fn chunk(job: &Job, delta: Value, finish_reason: Option<&str>, usage: Option<Value>) -> Value {
    let mut v = json!({
        "id": completion_id(job),
        "object": "chat.completion.chunk",
        "created": created(job),
        "model": job.request.model,
        "system_fingerprint": format!("sprout-{}", env!("CARGO_PKG_VERSION")),
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
    });
    if let Some(u) = usage {
        v["usage"] = u;
    }
    v
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

/// A job as the job API shows it.
pub fn job_view(job: &Job) -> Value {
    let secs = |ms: Option<u64>| ms.map(|m| m as f64 / 1000.0);
    json!({
        "id": job.id,
        "object": "job",
        "origin": job.origin,
        "state": job.state.as_str(),
        "priority": job.priority,
        "directive": job.directive,
        "model": job.request.model,
        "seed": job.seed,
        "attempts": job.attempts,
        "created_at": secs(Some(job.created_ms)),
        "started_at": secs(job.started_ms),
        "finished_at": secs(job.finished_ms),
        "request": {
            "messages": job.request.messages,
            "max_tokens": job.request.max_tokens,
            "temperature": job.request.temperature,
            "top_p": job.request.top_p,
            "seed": job.request.seed,
            "stop": job.request.stop,
            "directive": job.request.directive,
        },
        "deadline_at": secs(job.deadline_ms),
        "deferred": job.deferral.map(|d| json!({
            "until": d.until_ms as f64 / 1000.0,
            "forecast_gco2_per_kwh": d.forecast_gco2_per_kwh,
            "submit_gco2_per_kwh": d.submit_gco2_per_kwh,
        })),
        "result": completion(job),
        "error": job.error.as_ref().map(|m| json!({"message": m})),
    })
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

    #[test]
    fn parameters_that_would_change_the_answer_are_refused_not_ignored() {
        let body = |extra: &str| format!(r#"{{"messages":[{{"role":"user","content":"hi"}}],{extra}}}"#);
        for (extra, param) in [
            (r#""tools":[{"type":"function","function":{"name":"f","parameters":{}}}]"#, "tools"),
            (r#""tool_choice":"required""#, "tool_choice"),
            (r#""tool_choice":{"type":"function","function":{"name":"f"}}"#, "tool_choice"),
            (r#""functions":[{"name":"f"}]"#, "functions"),
            (r#""response_format":{"type":"json_object"}"#, "response_format"),
            (r#""response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{}}}"#, "response_format"),
            (r#""logprobs":true"#, "logprobs"),
            (r#""top_logprobs":3"#, "top_logprobs"),
            (r#""logit_bias":{"50256":-100}"#, "logit_bias"),
            (r#""presence_penalty":0.5"#, "presence_penalty"),
            (r#""frequency_penalty":-1"#, "frequency_penalty"),
        ] {
            let e = err(&body(extra));
            assert_eq!((e.status, e.param.as_deref()), (StatusCode::BAD_REQUEST, Some(param)), "{extra}");
        }
        // Their defaults, as clients often send them, are fine.
        for extra in [
            r#""tools":[]"#,
            r#""tools":null"#,
            r#""tool_choice":"none""#,
            r#""response_format":{"type":"text"}"#,
            r#""logprobs":false"#,
            r#""top_logprobs":0"#,
            r#""logit_bias":{}"#,
            r#""presence_penalty":0,"frequency_penalty":0.0"#,
            r#""parallel_tool_calls":true,"user":"u""#,
        ] {
            assert!(parse(&body(extra)).is_ok(), "{extra}");
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
            assert_eq!(b["error"]["type"], "invalid_request_error");
            assert!(b["error"]["message"].as_str().unwrap().len() > 10);
        }
    }

    #[test]
    fn unknown_model_is_404() {
        let e = err(r#"{"model":"gpt-4","messages":[{"role":"user","content":"x"}]}"#);
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.code, "model_not_found");
    }
}
