//! A model-free engine for tests and queue benchmarks: it answers with the
//! words of the last user message, one "token" per word, optionally pausing
//! between tokens. A message containing `[[engine-error]]` makes it fail, so
//! tests can drive the failure path through a real process.
//! Under a directive (any system message) it echoes only the first sentence:
//! a model-free stand-in for shorter answers, so the optimizer has something
//! to choose between in tests.
//! It has no model, so it cannot call tools, shape JSON or report
//! log-probabilities: such requests fail with a clear error.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{Engine, EngineError, GenOutput, GenRequest};
use crate::job::{FinishReason, ResponseFormat, Role};

pub struct EchoEngine {
    token_delay: Duration,
}

impl EchoEngine {
    pub fn new(token_delay_ms: u64) -> Self {
        Self { token_delay: Duration::from_millis(token_delay_ms) }
    }
}

#[async_trait]
impl Engine for EchoEngine {
    async fn generate(
        &self,
        req: GenRequest,
        deltas: mpsc::UnboundedSender<String>,
    ) -> Result<GenOutput, EngineError> {
        let prompt_tokens = req.messages.iter().map(|m| m.content.split_whitespace().count() + 1).sum();
        let last = req.messages.iter().rev().find(|m| m.role == Role::User).map(|m| m.content.as_str()).unwrap_or("");
        if !req.tools.is_empty() || req.response_format != ResponseFormat::Text || req.logprobs.is_some() {
            return Err(EngineError::Invalid(
                "the echo engine has no model: it cannot call tools, produce structured output or report logprobs".into(),
            ));
        }
        if last.contains("[[engine-error]]") {
            return Err(EngineError::Internal("echo engine: failure requested by the prompt".into()));
        }
        let mut words: Vec<&str> = last.split_whitespace().collect();
        // A stand-in for what directives do to a model: with a system
        // message (a directive), only the first sentence is echoed.
        if req.messages.iter().any(|m| m.role == Role::System) {
            if let Some(end) = words.iter().position(|w| w.ends_with(['.', '?', '!'])) {
                words.truncate(end + 1);
            }
        }
        let mut text = String::new();
        let mut n = 0;
        for (i, w) in words.iter().enumerate() {
            if n == req.max_tokens {
                break;
            }
            if !self.token_delay.is_zero() {
                tokio::time::sleep(self.token_delay).await;
            }
            let piece = if i == 0 { w.to_string() } else { format!(" {w}") };
            text.push_str(&piece);
            let _ = deltas.send(piece);
            n += 1;
        }
        let finish_reason = if n < words.len() { FinishReason::Length } else { FinishReason::Stop };
        Ok(GenOutput { text, finish_reason, prompt_tokens, completion_tokens: n, tool_calls: vec![], logprobs: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Sampling;
    use crate::job::Message;

    fn req(text: &str, max_tokens: usize) -> GenRequest {
        GenRequest {
            messages: vec![Message::new(Role::User, text)],
            max_tokens,
            sampling: Sampling { top_p: 1.0, repetition_penalty: 1.0, ..Default::default() },
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn echoes_and_truncates() {
        let e = EchoEngine::new(0);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let out = e.generate(req("a b c", 2), tx).await.unwrap();
        assert_eq!(out.text, "a b");
        assert_eq!(out.finish_reason, FinishReason::Length);
        assert_eq!(out.completion_tokens, 2);
        assert_eq!(rx.recv().await.unwrap(), "a");
        assert_eq!(rx.recv().await.unwrap(), " b");
        let (tx, _) = mpsc::unbounded_channel();
        assert!(e.generate(req("x [[engine-error]]", 2), tx).await.is_err());
    }
}
