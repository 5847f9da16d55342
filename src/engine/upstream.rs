//! An OpenAI-compatible server as an engine: vLLM, llama.cpp's server, TGI,
//! SGLang or another sproutd. The request goes out as a streamed
//! `POST {url}/chat/completions` with the directive already applied to its
//! messages, so any upstream carries Sprout's levels; the answer comes back
//! as text deltas, tool calls, log-probabilities and usage.
//!
//! Failures say whose they are ([`EngineError`]): `Unreachable` when the
//! request never reached it (refused, DNS, connect timeout, or it answered
//! 429/503 "busy"), `Backend` when it failed after taking the request (an
//! error status, silence past `timeout`, the stream cut off), `Invalid`
//! when it refused the request itself (other 4xx): only the first two send
//! the job elsewhere.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{Engine, EngineError, GenOutput, GenRequest};
use crate::config::BackendConfig;
use crate::job::{FinishReason, ResponseFormat, TokenLogprob, ToolCall, ToolChoice};

pub struct Upstream {
    client: reqwest::Client,
    /// Base URL, e.g. `http://10.0.0.5:8000/v1`.
    url: String,
    model: String,
    key: Option<String>,
    timeout: Duration,
}

impl Upstream {
    /// Reads the API key file (or none); connects to nothing yet.
    pub fn new(cfg: &BackendConfig) -> Result<Self, String> {
        let key = match &cfg.api_key_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| format!("backend {}: api_key_file {}: {e}", cfg.name, p.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.timeout)
            .read_timeout(cfg.timeout)
            .build()
            .map_err(|e| format!("backend {}: {e}", cfg.name))?;
        Ok(Self { client, url: cfg.url.clone(), model: cfg.model.clone(), key, timeout: cfg.timeout })
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let r = self.client.post(format!("{}{path}", self.url));
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    /// Whether it answers `GET {url}/models` with 200 (the health probe).
    pub async fn probe(&self) -> Result<(), String> {
        let mut r = self.client.get(format!("{}/models", self.url)).timeout(self.timeout);
        if let Some(k) = &self.key {
            r = r.bearer_auth(k);
        }
        match r.send().await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => Err(format!("GET /models answered {}", resp.status())),
            Err(e) => Err(describe(&e)),
        }
    }
}

/// The request body sent upstream: only what the request sets beyond the
/// basics, so an engine that lacks an optional parameter is not asked for it.
pub fn body(model: &str, req: &GenRequest) -> Value {
    let s = &req.sampling;
    let mut b = json!({
        "model": model,
        "messages": req.messages.iter().map(|m| m.to_openai()).collect::<Vec<_>>(),
        "max_tokens": req.max_tokens,
        "temperature": s.temperature,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if s.temperature > 0.0 {
        b["top_p"] = s.top_p.into();
        b["seed"] = s.seed.into();
    }
    if !req.stop.is_empty() {
        b["stop"] = req.stop.clone().into();
    }
    if s.presence_penalty != 0.0 {
        b["presence_penalty"] = s.presence_penalty.into();
    }
    if s.frequency_penalty != 0.0 {
        b["frequency_penalty"] = s.frequency_penalty.into();
    }
    if !s.logit_bias.is_empty() {
        b["logit_bias"] = s.logit_bias.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>().into();
    }
    if !req.tools.is_empty() {
        b["tools"] = req.tools.iter().map(|t| t.to_openai()).collect();
        b["tool_choice"] = req.tool_choice.to_openai();
    }
    if req.response_format != ResponseFormat::Text {
        b["response_format"] = req.response_format.to_openai();
    }
    if let Some(n) = req.logprobs {
        b["logprobs"] = true.into();
        b["top_logprobs"] = n.into();
    }
    b
}

/// What a stream of `chat.completion.chunk`s adds up to.
#[derive(Debug, Default)]
pub struct Answer {
    pub text: String,
    pub finish_reason: Option<String>,
    /// Tool calls by index: id, name, arguments so far.
    calls: Vec<(String, String, String)>,
    pub logprobs: Option<Vec<TokenLogprob>>,
    pub usage: Option<(usize, usize)>,
    /// Content deltas seen (a token count when the upstream sends no usage).
    pub pieces: usize,
    pub done: bool,
}

impl Answer {
    /// Folds in one SSE `data:` payload; returns the text it adds. An
    /// `error` object in the stream is the upstream failing mid-answer.
    pub fn add(&mut self, data: &str) -> Result<Option<String>, String> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        let v: Value = serde_json::from_str(data).map_err(|e| format!("a chunk that is not JSON ({e}): {}", clip(data)))?;
        if let Some(err) = v.get("error") {
            return Err(format!("error in the stream: {}", err.get("message").and_then(Value::as_str).unwrap_or(&err.to_string())));
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
            self.usage = Some((n("prompt_tokens"), n("completion_tokens")));
        }
        let Some(choice) = v.get("choices").and_then(|c| c.get(0)) else { return Ok(None) };
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(f.to_string());
        }
        if let Some(lp) = choice.get("logprobs").and_then(|l| l.get("content")).and_then(Value::as_array) {
            let out = self.logprobs.get_or_insert_with(Vec::new);
            for t in lp {
                let token = t.get("token").and_then(Value::as_str).unwrap_or("").to_string();
                let logprob = t.get("logprob").and_then(Value::as_f64).unwrap_or(f64::NAN) as f32;
                let top = t
                    .get("top_logprobs")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|x| {
                                (
                                    x.get("token").and_then(Value::as_str).unwrap_or("").to_string(),
                                    x.get("logprob").and_then(Value::as_f64).unwrap_or(f64::NAN) as f32,
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(TokenLogprob { token, logprob, top });
            }
        }
        let Some(delta) = choice.get("delta") else { return Ok(None) };
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for (k, c) in calls.iter().enumerate() {
                let i = c.get("index").and_then(Value::as_u64).map_or(k, |i| i as usize);
                if i >= 128 {
                    return Err(format!("a tool call index of {i}"));
                }
                while self.calls.len() <= i {
                    self.calls.push(Default::default());
                }
                let slot = &mut self.calls[i];
                if let Some(id) = c.get("id").and_then(Value::as_str) {
                    slot.0 = id.to_string();
                }
                if let Some(f) = c.get("function") {
                    if let Some(n) = f.get("name").and_then(Value::as_str) {
                        slot.1.push_str(n);
                    }
                    if let Some(a) = f.get("arguments").and_then(Value::as_str) {
                        slot.2.push_str(a);
                    }
                }
            }
        }
        match delta.get("content").and_then(Value::as_str) {
            Some(t) if !t.is_empty() => {
                self.text.push_str(t);
                self.pieces += 1;
                Ok(Some(t.to_string()))
            }
            _ => Ok(None),
        }
    }

    /// The engine's output, once the stream ended; an answer without a
    /// finish reason was cut off.
    pub fn finish(self, prompt_estimate: usize) -> Result<GenOutput, String> {
        let Some(reason) = self.finish_reason else {
            return Err(format!("the answer was cut off after {} pieces (no finish_reason)", self.pieces));
        };
        let finish_reason = match reason.as_str() {
            "length" => FinishReason::Length,
            "tool_calls" | "function_call" => FinishReason::ToolCalls,
            _ => FinishReason::Stop,
        };
        let tool_calls: Vec<ToolCall> = self
            .calls
            .into_iter()
            .enumerate()
            .filter(|(_, (_, name, _))| !name.is_empty())
            .map(|(i, (id, name, arguments))| ToolCall {
                id: if id.is_empty() { format!("call_{i}") } else { id },
                name,
                arguments,
            })
            .collect();
        let (prompt_tokens, completion_tokens) = self.usage.unwrap_or((prompt_estimate, self.pieces));
        Ok(GenOutput {
            text: self.text,
            finish_reason: if tool_calls.is_empty() && finish_reason == FinishReason::ToolCalls { FinishReason::Stop } else { finish_reason },
            prompt_tokens,
            completion_tokens,
            tool_calls,
            logprobs: self.logprobs,
        })
    }
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

fn describe(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[async_trait]
impl Engine for Upstream {
    async fn generate(&self, req: GenRequest, deltas: mpsc::UnboundedSender<String>) -> Result<GenOutput, EngineError> {
        let prompt_estimate = (req.messages.iter().map(|m| m.content.chars().count()).sum::<usize>() / 4).max(1);
        let wants_calls = !req.tools.is_empty() && req.tool_choice != ToolChoice::None;
        let resp = match self.post("/chat/completions").json(&body(&self.model, &req)).send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() => return Err(EngineError::Unreachable(describe(&e))),
            Err(e) => return Err(EngineError::Backend(describe(&e))),
        };
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| clip(&text));
            let msg = format!("{status}: {msg}");
            return Err(match status.as_u16() {
                429 | 503 => EngineError::Unreachable(msg),
                400..=499 => EngineError::Invalid(format!("the upstream refused the request: {msg}")),
                _ => EngineError::Backend(msg),
            });
        }
        let mut answer = Answer::default();
        let mut stream = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        'read: loop {
            let chunk = match tokio::time::timeout(self.timeout, stream.next()).await {
                Err(_) => return Err(EngineError::Backend(format!("no data for {:?} mid-answer", self.timeout))),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(EngineError::Backend(format!("the answer was cut off: {}", describe(&e)))),
                Ok(Some(Ok(c))) => c,
            };
            buf.extend_from_slice(&chunk);
            // Events are lines; `data:` lines carry the chunks.
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line);
                let Some(data) = line.trim_end_matches(['\r', '\n']).strip_prefix("data:") else { continue };
                match answer.add(data.trim_start()) {
                    Ok(Some(piece)) => {
                        let _ = deltas.send(piece);
                    }
                    Ok(None) if answer.done => break 'read,
                    Ok(None) => {}
                    Err(e) => return Err(EngineError::Backend(e)),
                }
            }
        }
        let mut out = answer.finish(prompt_estimate).map_err(EngineError::Backend)?;
        if !wants_calls {
            out.tool_calls.clear();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Sampling;
    use crate::job::{Message, Role, Tool};

    #[test]
    fn the_body_carries_the_directive_and_only_the_parameters_set() {
        let req = GenRequest {
            messages: vec![Message::new(Role::System, "Answer briefly."), Message::new(Role::User, "hi")],
            max_tokens: 64,
            sampling: Sampling { temperature: 0.0, top_p: 0.9, ..Default::default() },
            ..Default::default()
        };
        let b = body("m", &req);
        assert_eq!(b["messages"][0], json!({"role": "system", "content": "Answer briefly."}));
        assert_eq!(b["model"], "m");
        assert_eq!(b["stream"], true);
        for absent in ["top_p", "seed", "stop", "tools", "tool_choice", "response_format", "logprobs", "logit_bias", "presence_penalty"] {
            assert!(b.get(absent).is_none(), "{absent} in {b}");
        }
        let req = GenRequest {
            tools: vec![Tool { name: "f".into(), description: None, parameters: json!({"type": "object"}) }],
            tool_choice: ToolChoice::Function("f".into()),
            response_format: ResponseFormat::JsonObject,
            logprobs: Some(2),
            stop: vec!["\n".into()],
            sampling: Sampling { temperature: 0.7, top_p: 0.9, seed: 5, frequency_penalty: 0.5, logit_bias: [(7, -100.0)].into(), ..Default::default() },
            ..req
        };
        let b = body("m", &req);
        assert_eq!(b["tools"][0]["function"]["name"], "f");
        assert_eq!(b["tool_choice"]["function"]["name"], "f");
        assert_eq!(b["response_format"]["type"], "json_object");
        assert_eq!((b["logprobs"].clone(), b["top_logprobs"].clone()), (json!(true), json!(2)));
        assert_eq!((b["seed"].clone(), b["logit_bias"]["7"].clone()), (json!(5), json!(-100.0)));
        assert_eq!(b["stop"], json!(["\n"]));
    }

    #[test]
    fn a_stream_adds_up_to_the_answer_and_a_cut_one_is_a_failure() {
        let mut a = Answer::default();
        let chunks = [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"lo"},"logprobs":{"content":[{"token":"lo","logprob":-0.5,"top_logprobs":[{"token":"lo","logprob":-0.5}]}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"get","arguments":"{\"a\""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":7}}"#,
            "[DONE]",
        ];
        let mut pieces = vec![];
        for c in chunks {
            if let Some(p) = a.add(c).unwrap() {
                pieces.push(p);
            }
        }
        assert!(a.done);
        assert_eq!(pieces, ["Hel", "lo"]);
        let out = a.finish(3).unwrap();
        assert_eq!(out.text, "Hello");
        assert_eq!(out.finish_reason, FinishReason::ToolCalls);
        assert_eq!(out.tool_calls, vec![ToolCall { id: "c1".into(), name: "get".into(), arguments: "{\"a\":1}".into() }]);
        assert_eq!((out.prompt_tokens, out.completion_tokens), (12, 7));
        assert_eq!(out.logprobs.unwrap()[0].token, "lo");

        // No usage: the pieces are counted; no finish reason: cut off.
        let mut a = Answer::default();
        a.add(r#"{"choices":[{"delta":{"content":"a"}}]}"#).unwrap();
        a.add(r#"{"choices":[{"delta":{"content":"b"},"finish_reason":"length"}]}"#).unwrap();
        let out = a.finish(9).unwrap();
        assert_eq!((out.prompt_tokens, out.completion_tokens, out.finish_reason), (9, 2, FinishReason::Length));
        let mut a = Answer::default();
        a.add(r#"{"choices":[{"delta":{"content":"a"}}]}"#).unwrap();
        assert!(a.finish(1).unwrap_err().contains("cut off after 1"));
        let mut a = Answer::default();
        assert!(a.add(r#"{"error":{"message":"out of memory"}}"#).unwrap_err().contains("out of memory"));
        assert!(a.add("not json").is_err());
    }
}
