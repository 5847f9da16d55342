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
#[cfg(feature = "engine")]
pub mod mistral;
pub mod sampler;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::config::{ModelConfig, ModelSource};
use crate::job::{FinishReason, Message};

/// Sampling settings resolved for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f64,
    pub top_p: f64,
    /// 0 means no top-k cut.
    pub top_k: usize,
    pub repetition_penalty: f32,
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct GenRequest {
    /// The conversation as the model sees it (directive already applied).
    pub messages: Vec<Message>,
    pub max_tokens: usize,
    pub sampling: Sampling,
    pub stop: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenOutput {
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("loading the model: {0}")]
    Load(String),
    #[error("the engine rejected the request: {0}")]
    Invalid(String),
    #[error("the engine failed: {0}")]
    Internal(String),
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
        #[cfg(feature = "engine")]
        _ => Ok(Arc::new(mistral::MistralEngine::load(cfg).await?)),
        #[cfg(not(feature = "engine"))]
        _ => Err(EngineError::Load("this build has no engine (cargo feature `engine` off); only model.kind = \"echo\" runs".into())),
    }
}
