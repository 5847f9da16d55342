//! The engine boundary: a request in, text deltas out, then the final counts.
//!
//! [`Engine`] is the only thing the worker knows about models. The real one is
//! [`mistral::MistralEngine`] (mistral.rs embedded in-process); [`echo::EchoEngine`]
//! is a model-free test engine for queue tests and benchmarks.
//!
//! Cancellation is by drop: the worker drops the `generate` future, which drops
//! the engine's response channel, and mistral.rs ends the sequence at its next
//! token (it notices that nobody listens).

pub mod echo;
pub mod grammar;
#[cfg(feature = "engine")]
pub mod mistral;
pub mod sampler;
pub mod upstream;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::config::{ModelConfig, ModelSource};
use crate::job::{FinishReason, Message, ResponseFormat, TokenLogprob, Tool, ToolCall, ToolChoice};

/// Sampling settings resolved for one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f64,
    pub top_p: f64,
    /// 0 means no top-k cut.
    pub top_k: usize,
    pub repetition_penalty: f32,
    pub seed: u64,
    /// OpenAI's penalties, over the generated tokens only.
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Token id → added to its logit.
    pub logit_bias: std::collections::BTreeMap<u32, f32>,
}

impl Sampling {
    /// Whether Sprout's own sampler must run (see [`sampler`]); greedy
    /// decoding with none of its adjustments is left to the engine.
    pub fn needs_processor(&self, logprobs: Option<usize>) -> bool {
        self.temperature > 0.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
            || !self.logit_bias.is_empty()
            || logprobs.is_some()
    }
}

#[derive(Debug, Clone, Default)]
pub struct GenRequest {
    /// The conversation as the model sees it (directive already applied).
    pub messages: Vec<Message>,
    pub max_tokens: usize,
    pub sampling: Sampling,
    pub stop: Vec<String>,
    pub tools: Vec<Tool>,
    pub tool_choice: ToolChoice,
    pub response_format: ResponseFormat,
    /// `Some(n)`: record each token's log-probability and `n` alternatives.
    pub logprobs: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenOutput {
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub tool_calls: Vec<ToolCall>,
    pub logprobs: Option<Vec<TokenLogprob>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("loading the model: {0}")]
    Load(String),
    #[error("the engine rejected the request: {0}")]
    Invalid(String),
    #[error("the engine failed: {0}")]
    Internal(String),
    /// An upstream backend could not be reached before the request was sent
    /// (refused, DNS, connect timeout): the job is not at fault and goes back
    /// to the queue without the attempt counted.
    #[error("the backend could not be reached: {0}")]
    Unreachable(String),
    /// An upstream backend failed after it took the request (an error
    /// status, a timeout, the answer cut off): the job goes back to the
    /// queue with the attempt counted, to run elsewhere.
    #[error("the backend failed: {0}")]
    Backend(String),
}

impl EngineError {
    /// The backend failed, not the request: the job runs again elsewhere.
    pub fn is_backend_fault(&self) -> bool {
        matches!(self, EngineError::Unreachable(_) | EngineError::Backend(_))
    }
}

#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Generates an answer, sending each piece of text to `deltas` as it is
    /// produced (a closed receiver is fine: the caller is not streaming).
    async fn generate(
        &self,
        req: GenRequest,
        deltas: mpsc::UnboundedSender<String>,
    ) -> Result<GenOutput, EngineError>;
}

/// Builds the engine the config names (this loads the model: seconds to minutes).
pub async fn load(cfg: &ModelConfig) -> Result<Arc<dyn Engine>, EngineError> {
    match &cfg.source {
        ModelSource::Echo { token_delay_ms, load_delay_ms } => {
            tokio::time::sleep(std::time::Duration::from_millis(*load_delay_ms)).await;
            Ok(Arc::new(echo::EchoEngine::new(*token_delay_ms)))
        }
        ModelSource::None => Err(EngineError::Load("model.kind = \"none\": there is no embedded engine to load".into())),
        #[cfg(feature = "engine")]
        _ => Ok(Arc::new(mistral::MistralEngine::load(cfg).await?)),
        #[cfg(not(feature = "engine"))]
        _ => Err(EngineError::Load("this build has no engine (cargo feature `engine` off); only model.kind = \"echo\" runs".into())),
    }
}
