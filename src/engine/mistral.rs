//! mistral.rs, embedded in-process.
//!
//! - `gguf`: a local GGUF file; its tokenizer and chat template are read from
//!   the file, so nothing is fetched (the default CPU model).
//! - `hf`: a Hugging Face model id with optional in-situ quantization, for GPU
//!   users (`--features cuda`), e.g. Llama-2-13b-chat with `isq = "Q4K"`.
//!
//! mistral.rs batches the sequences it holds (up to `max_seqs`); the worker
//! keeps that many jobs in flight so the batch stays full.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use indexmap::IndexMap;
use mistralrs::{
    parse_isq_value, CalledFunction, Constraint, Function, GgufModelBuilder, MessageContent, Model, RequestBuilder,
    RequestLike, RequestMessage, Response, SamplingParams, StopTokens, Tensor, TextMessageRole, TextModelBuilder, Tool,
    ToolCallResponse, ToolCallType, ToolChoice, ToolType,
};
use tokio::sync::mpsc;

use super::{grammar, sampler, Engine, EngineError, GenOutput, GenRequest};
use crate::config::{ModelConfig, ModelSource};
use crate::job::{FinishReason, Role, TokenLogprob, ToolCall};

pub struct MistralEngine {
    model: Model,
    /// Token id → its text, for logprobs.
    token_text: Mutex<HashMap<u32, String>>,
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
            ModelSource::Echo { .. } | ModelSource::None => {
                return Err(EngineError::Load("not a mistral.rs model".into()))
            }
        };
        Ok(Self { model, token_text: Mutex::new(HashMap::new()) })
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

/// mistral.rs's parameters for taking the most likely token: its
/// `deterministic()` with temperature 0. mistral.rs reads no temperature as
/// 1.0, a softmax and a weighted draw over the whole vocabulary (151,936
/// tokens for the default model) every token; 0 makes it take the largest
/// logit.
pub fn greedy_params() -> SamplingParams {
    let mut params = SamplingParams::deterministic();
    params.temperature = Some(0.0);
    params
}

/// Builds the mistral.rs request: greedy engine sampling plus, when the
/// request needs it, Sprout's [`sampler::Picker`] as a logits processor (the
/// engine's repetition penalty runs before it); tools, their calls and
/// results in the conversation, and the grammar that holds a fixed shape
/// ([`grammar`]). Returns the picker, whose record holds the logprobs.
pub fn build_request(req: &GenRequest) -> (ToolCallMessages, Option<Arc<Mutex<sampler::Picker>>>) {
    let mut rb = RequestBuilder::new();
    for m in &req.messages {
        rb = match m.role {
            Role::System => rb.add_message(TextMessageRole::System, &m.content),
            Role::User => rb.add_message(TextMessageRole::User, &m.content),
            Role::Assistant if m.tool_calls.is_empty() => rb.add_message(TextMessageRole::Assistant, &m.content),
            Role::Assistant => {
                let calls = m
                    .tool_calls
                    .iter()
                    .enumerate()
                    .map(|(index, c)| ToolCallResponse {
                        index,
                        id: c.id.clone(),
                        tp: ToolCallType::Function,
                        function: CalledFunction { name: c.name.clone(), arguments: c.arguments.clone() },
                    })
                    .collect();
                rb.add_message_with_tool_call(TextMessageRole::Assistant, &m.content, calls)
            }
            Role::Tool => rb.add_tool_message(&m.content, m.tool_call_id.as_deref().unwrap_or_default()),
        };
    }
    // The engine takes the largest logit: the greedy answer, or, where the
    // request needs Sprout's logits processor (`sampler`, below), the one
    // token the processor chose and left finite.
    let mut params = greedy_params();
    params.max_len = Some(req.max_tokens);
    if req.sampling.repetition_penalty != 1.0 {
        params.repetition_penalty = Some(req.sampling.repetition_penalty);
    }
    if !req.stop.is_empty() {
        params.stop_toks = Some(StopTokens::Seqs(req.stop.clone()));
    }
    rb = rb.set_sampling(params);
    if !req.tools.is_empty() {
        let tools = req
            .tools
            .iter()
            .map(|t| Tool {
                tp: ToolType::Function,
                function: Function {
                    description: t.description.clone(),
                    name: t.name.clone(),
                    parameters: t.parameters.as_object().map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
                },
            })
            .collect();
        // The calls are parsed by mistral.rs in every case; `required` and a
        // named function are forced by the grammar below.
        let choice = if req.tool_choice == crate::job::ToolChoice::None { ToolChoice::None } else { ToolChoice::Auto };
        rb = rb.set_tools(tools).set_tool_choice(choice);
    }
    if let Some(schema) = grammar::for_request(&req.tools, &req.tool_choice, &req.response_format) {
        rb = rb.set_constraint(Constraint::JsonSchema(schema));
    }
    let picker = req.sampling.needs_processor(req.logprobs).then(|| {
        let picker = Arc::new(Mutex::new(sampler::Picker::new(req.sampling.clone(), req.logprobs)));
        let p = picker.clone();
        let processor = move |logits: &Tensor, context: &[u32]| -> mistralrs::Result<Tensor> {
            let mut values: Vec<f32> = logits.to_dtype(mistralrs::DType::F32)?.to_vec1()?;
            let chosen = p.lock().expect("picker poisoned").step(&mut values, context).map_err(candle_core::Error::msg)?;
            let mut out = vec![f32::NEG_INFINITY; values.len()];
            out[chosen] = 1.0;
            Tensor::from_vec(out, values.len(), logits.device())
        };
        rb = std::mem::take(&mut rb).add_logits_processor(Arc::new(processor));
        picker
    });
    (ToolCallMessages(rb), picker)
}

/// mistral.rs's request builder, with assistant messages' tool calls under
/// the key chat templates read (`tool_calls`; 0.8.1's builder writes them
/// under `function`) and their arguments as JSON values, as Qwen's and
/// Hermes' templates expect.
pub struct ToolCallMessages(RequestBuilder);

impl RequestLike for ToolCallMessages {
    fn messages_ref(&self) -> &[IndexMap<String, MessageContent>] {
        RequestLike::messages_ref(&self.0)
    }
    fn images_ref(&self) -> &[image::DynamicImage] {
        RequestLike::images_ref(&self.0)
    }
    fn take_messages(&mut self) -> RequestMessage {
        let mut taken = RequestLike::take_messages(&mut self.0);
        if let RequestMessage::Chat { messages, .. } = &mut taken {
            for m in messages.iter_mut() {
                if let Some(MessageContent::Right(mut calls)) = m.shift_remove("function") {
                    for c in &mut calls {
                        if let Some(args) = c.get_mut("function").and_then(|f| f.get_mut("arguments")) {
                            if let Some(parsed) = args.as_str().and_then(|a| serde_json::from_str::<serde_json::Value>(a).ok()) {
                                *args = parsed;
                            }
                        }
                    }
                    m.insert("tool_calls".to_string(), MessageContent::Right(calls));
                }
            }
        }
        taken
    }
    fn take_logits_processors(&mut self) -> Option<Vec<Arc<dyn mistralrs::CustomLogitsProcessor>>> {
        RequestLike::take_logits_processors(&mut self.0)
    }
    fn take_adapters(&mut self) -> Option<Vec<String>> {
        RequestLike::take_adapters(&mut self.0)
    }
    fn return_logprobs(&self) -> bool {
        RequestLike::return_logprobs(&self.0)
    }
    fn enable_search(&self) -> Option<bool> {
        RequestLike::enable_search(&self.0)
    }
    fn take_constraint(&mut self) -> Constraint {
        RequestLike::take_constraint(&mut self.0)
    }
    fn take_tools(&mut self) -> Option<(Vec<Tool>, ToolChoice)> {
        RequestLike::take_tools(&mut self.0)
    }
    fn take_sampling_params(&mut self) -> SamplingParams {
        RequestLike::take_sampling_params(&mut self.0)
    }
    fn take_web_search_options(&mut self) -> Option<mistralrs::WebSearchOptions> {
        RequestLike::take_web_search_options(&mut self.0)
    }
    fn truncate_sequence(&self) -> bool {
        RequestLike::truncate_sequence(&self.0)
    }
    fn resolve_pending_prefixes(&mut self, category: &mistralrs::ModelCategory) {
        RequestLike::resolve_pending_prefixes(&mut self.0, category)
    }
}

impl MistralEngine {
    /// Token ids as text, each decoded once and kept (the vocabulary is
    /// fixed for the model's life).
    async fn token_texts(&self, ids: Vec<u32>) -> Result<(), EngineError> {
        for id in ids {
            if self.token_text.lock().expect("poisoned").contains_key(&id) {
                continue;
            }
            let text = self.model.detokenize(vec![id], false).await.map_err(|e| EngineError::Internal(format!("decoding token {id}: {e}")))?;
            self.token_text.lock().expect("poisoned").insert(id, text);
        }
        Ok(())
    }

    /// The picker's record as OpenAI's logprobs: `completion_tokens` entries
    /// (the end-of-sequence token the engine counts but never shows is dropped).
    async fn logprobs(&self, picker: &Mutex<sampler::Picker>, completion_tokens: usize) -> Result<Vec<TokenLogprob>, EngineError> {
        let chosen: Vec<sampler::Choice> = picker.lock().expect("poisoned").chosen.values().take(completion_tokens).cloned().collect();
        let ids: Vec<u32> = chosen.iter().flat_map(|c| std::iter::once(c.token).chain(c.top.iter().map(|t| t.0))).collect();
        self.token_texts(ids).await?;
        let texts = self.token_text.lock().expect("poisoned");
        let text = |id: u32| texts.get(&id).cloned().unwrap_or_default();
        let mut out: Vec<TokenLogprob> = chosen
            .iter()
            .map(|c| TokenLogprob { token: text(c.token), logprob: c.logprob, top: c.top.iter().map(|&(i, lp)| (text(i), lp)).collect() })
            .collect();
        if out.last().is_some_and(|t| self.is_end_token(&t.token)) {
            out.pop();
        }
        Ok(out)
    }

    fn is_end_token(&self, text: &str) -> bool {
        text.starts_with("<|") && text.ends_with("|>") || text == "</s>"
    }
}

#[async_trait]
impl Engine for MistralEngine {
    async fn generate(
        &self,
        req: GenRequest,
        deltas: mpsc::UnboundedSender<String>,
    ) -> Result<GenOutput, EngineError> {
        let (request, picker) = build_request(&req);
        let mut stream = self
            .model
            .stream_chat_request(request)
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        let mut text = String::new();
        let mut finish: Option<String> = None;
        let mut usage = None;
        let mut tool_calls = vec![];
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
                        for c in choice.delta.tool_calls.iter().flatten() {
                            tool_calls.push(ToolCall {
                                id: c.id.clone(),
                                name: c.function.name.clone(),
                                arguments: c.function.arguments.clone(),
                            });
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
            _ if !tool_calls.is_empty() => FinishReason::ToolCalls,
            Some("length") => FinishReason::Length,
            Some("canceled") => return Err(EngineError::Internal("the engine cancelled the sequence".into())),
            _ => FinishReason::Stop,
        };
        let logprobs = match (&picker, req.logprobs) {
            (Some(p), Some(_)) => Some(self.logprobs(p, usage.completion_tokens).await?),
            _ => None,
        };
        Ok(GenOutput {
            text,
            finish_reason,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            tool_calls,
            logprobs,
        })
    }
}
