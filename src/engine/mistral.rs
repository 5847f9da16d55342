//! mistral.rs, embedded in-process.
//!
//! - `gguf`: a local GGUF file; its tokenizer and chat template are read from
//!   the file, so nothing is fetched (the default CPU model).
//! - `hf`: a Hugging Face model id with optional in-situ quantization, for GPU
//!   users (`--features cuda`), e.g. Llama-2-13b-chat with `isq = "Q4K"`.
//!
//! mistral.rs batches the sequences it holds (up to `max_seqs`); the worker
//! keeps that many jobs in flight so the batch stays full.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use mistralrs::{
    parse_isq_value, GgufModelBuilder, Model, RequestBuilder, Response, SamplingParams, StopTokens, Tensor,
    TextMessageRole, TextModelBuilder,
};
use tokio::sync::mpsc;

use super::{sampler, Engine, EngineError, GenOutput, GenRequest, Sampling};
use crate::config::{ModelConfig, ModelSource};
use crate::job::{FinishReason, Role};

pub struct MistralEngine {
    model: Model,
}

impl MistralEngine {
    pub async fn load(cfg: &ModelConfig) -> Result<Self, EngineError> {
        let model = match &cfg.source {
            ModelSource::Gguf { path, cpu } => load_gguf(path, *cpu, cfg.max_seqs).await?,
            ModelSource::HuggingFace { id, isq, cpu } => {
                let mut b = TextModelBuilder::new(id).with_max_num_seqs(cfg.max_seqs);
                if let Some(isq) = isq {
                    let t = parse_isq_value(isq, None).map_err(|e| EngineError::Load(format!("isq {isq:?}: {e}")))?;
                    b = b.with_isq(t);
                }
                if *cpu {
                    b = b.with_force_cpu();
                }
                b.build().await.map_err(|e| EngineError::Load(format!("{id}: {e:#}")))?
            }
            ModelSource::Echo { .. } => {
                return Err(EngineError::Load("the echo engine is not a mistral.rs model".into()))
            }
        };
        Ok(Self { model })
    }

    /// The underlying mistral.rs model (benchmarks call it directly to compare).
    pub fn model(&self) -> &Model {
        &self.model
    }
}

async fn load_gguf(path: &Path, cpu: bool, max_seqs: usize) -> Result<Model, EngineError> {
    if !path.is_file() {
        return Err(EngineError::Load(format!(
            "model file {} not found (run scripts/fetch-model.sh, or set model.path)",
            path.display()
        )));
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let mut b = GgufModelBuilder::new(dir.to_string_lossy(), vec![file]).with_max_num_seqs(max_seqs);
    if cpu {
        b = b.with_force_cpu();
    }
    b.build().await.map_err(|e| EngineError::Load(format!("{}: {e:#}", path.display())))
}

/// Builds the mistral.rs request: greedy engine sampling plus Sprout's seeded
/// sampler as a logits processor (see [`sampler`]), the repetition penalty
/// applied by the engine before it.
pub fn build_request(req: &GenRequest) -> RequestBuilder {
    let mut rb = RequestBuilder::new();
    for m in &req.messages {
        let role = match m.role {
            Role::System => TextMessageRole::System,
            Role::User => TextMessageRole::User,
            Role::Assistant => TextMessageRole::Assistant,
        };
        rb = rb.add_message(role, &m.content);
    }
    let mut params = SamplingParams::deterministic();
    params.max_len = Some(req.max_tokens);
    if req.sampling.repetition_penalty != 1.0 {
        params.repetition_penalty = Some(req.sampling.repetition_penalty);
    }
    if !req.stop.is_empty() {
        params.stop_toks = Some(StopTokens::Seqs(req.stop.clone()));
    }
    rb = rb.set_sampling(params);
    if req.sampling.temperature > 0.0 {
        let s: Sampling = req.sampling.clone();
        let processor = move |logits: &Tensor, context: &[u32]| -> mistralrs::Result<Tensor> {
            let values: Vec<f32> = logits.to_dtype(mistralrs::DType::F32)?.to_vec1()?;
            let chosen = sampler::pick(&values, s.temperature, s.top_k, s.top_p, s.seed, context.len());
            let mut out = vec![f32::NEG_INFINITY; values.len()];
            out[chosen] = 1.0;
            Tensor::from_vec(out, values.len(), logits.device())
        };
        rb = rb.add_logits_processor(Arc::new(processor));
    }
    rb
}

#[async_trait]
impl Engine for MistralEngine {
    async fn generate(
        &self,
        req: GenRequest,
        deltas: mpsc::UnboundedSender<String>,
    ) -> Result<GenOutput, EngineError> {
        let mut stream = self
            .model
            .stream_chat_request(build_request(&req))
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        let mut text = String::new();
        let mut finish: Option<String> = None;
        let mut usage = None;
        while let Some(resp) = stream.next().await {
            match resp {
                Response::Chunk(chunk) => {
                    for choice in &chunk.choices {
                        if let Some(piece) = &choice.delta.content {
                            if !piece.is_empty() {
                                text.push_str(piece);
                                let _ = deltas.send(piece.clone());
                            }
                        }
                        if let Some(r) = &choice.finish_reason {
                            finish = Some(r.clone());
                        }
                    }
                    if let Some(u) = chunk.usage {
                        usage = Some(u);
                    }
                    if finish.is_some() && usage.is_some() {
                        break;
                    }
                }
                Response::Done(done) => {
                    usage = Some(done.usage);
                    break;
                }
                Response::ModelError(msg, _) => return Err(EngineError::Internal(msg)),
                Response::InternalError(e) => return Err(EngineError::Internal(e.to_string())),
                Response::ValidationError(e) => return Err(EngineError::Invalid(e.to_string())),
                _ => return Err(EngineError::Internal("unexpected response kind from mistral.rs".into())),
            }
        }
        let usage = usage.ok_or_else(|| EngineError::Internal("mistral.rs ended the stream without usage".into()))?;
        let finish_reason = match finish.as_deref() {
            Some("length") => FinishReason::Length,
            Some("canceled") => return Err(EngineError::Internal("the engine cancelled the sequence".into())),
            _ => FinishReason::Stop,
        };
        Ok(GenOutput {
            text,
            finish_reason,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        })
    }
}
