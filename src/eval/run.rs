//! Evaluation runs (the IO around the pure [`crate::eval`] modules): K sampled prompts
//! are answered at every level through the queue (lowest priority, origin
//! `daemon`, so the ledger meters them), a judge picks the best answer under
//! every rotation of their order, and the run is stored; the optimizer
//! re-solves with the new `q`. [`scheduler`] starts runs at low-carbon hours.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::judge::{self, DEFAULT_JUDGE_PROMPT};
use super::quality::{self, PromptVerdict};
use super::schedule::{self, Schedule};
use super::EvalRun;
use crate::config::JudgeKind;
use crate::job::{ChatRequest, Job, JobState, Message, Origin, Role};
use crate::store::StoreError;
use crate::service::{Service, SubmitError};
use crate::wire::{EvalRule, EvalStatus, LastRun, NextRun};

/// The longest judge reply read: the verdict is a number.
pub(crate) const JUDGE_MAX_TOKENS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("an evaluation is already running")]
    AlreadyRunning,
    #[error("no prompts sampled yet: the evaluator judges recent user prompts (requests with \"store\": false are not sampled)")]
    NoSamples,
    #[error("the judge: {0}")]
    Judge(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Submit(#[from] SubmitError),
}

/// What a forced run may override.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub prompts: Option<usize>,
    pub judge_url: Option<String>,
    pub judge_model: Option<String>,
    pub reason: String,
}

enum Judge {
    Local,
    OpenAi { url: String, model: String, key: Option<String>, client: reqwest::Client, retries: u32 },
}

impl Judge {
    fn describe(&self, svc: &Service) -> String {
        match self {
            Judge::Local => format!("local ({})", svc.config().model.name),
            Judge::OpenAi { url, model, .. } => format!("openai {model} at {url}"),
        }
    }
}

fn judge_for(svc: &Service, opts: &RunOptions) -> Result<Judge, EvalError> {
    let cfg = &svc.config().evaluator;
    let url = opts.judge_url.clone().or_else(|| cfg.judge_url.clone());
    let model = opts.judge_model.clone().or_else(|| cfg.judge_model.clone());
    if opts.judge_url.is_none() && cfg.judge == JudgeKind::Local {
        return Ok(Judge::Local);
    }
    let url = url.ok_or_else(|| EvalError::Judge("no judge URL (evaluator.judge_url or --judge-url)".into()))?;
    let model = model.unwrap_or_else(|| svc.config().model.name.clone());
    let key = match &cfg.judge_key_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| EvalError::Judge(format!("evaluator.judge_key_file {}: {e}", p.display())))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("SPROUT_JUDGE_KEY").ok().filter(|k| !k.is_empty()),
    };
    let client = reqwest::Client::builder()
        .timeout(cfg.judge_timeout)
        .build()
        .map_err(|e| EvalError::Judge(e.to_string()))?;
    Ok(Judge::OpenAi { url: url.trim_end_matches('/').to_string(), model, key, client, retries: cfg.judge_retries })
}

fn request(svc: &Service, text: &str, directive: &str, max_tokens: usize) -> ChatRequest {
    ChatRequest {
        model: svc.config().model.name.clone(),
        messages: vec![Message::new(Role::User, text.to_string())],
        max_tokens,
        temperature: Some(0.0),
        top_p: None,
        seed: Some(0),
        stop: vec![],
        directive: Some(directive.to_string()),
        store: Some(false),
        ..Default::default()
    }
}

/// Queues the daemon's own job at the lowest priority; returns its id.
async fn queue(svc: &Service, req: ChatRequest) -> Result<String, EvalError> {
    Ok(svc.submit(Origin::Daemon, i32::MAX, req, None, None, false).await?.job.id)
}

async fn finished(svc: &Service, id: &str) -> Result<Job, EvalError> {
    Ok(svc.wait_finished(id).await?)
}

pub(crate) async fn ask_openai(
    client: &reqwest::Client,
    url: &str,
    model: &str,
    key: Option<&str>,
    retries: u32,
    prompt: &str,
) -> Result<String, String> {
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": JUDGE_MAX_TOKENS,
        "temperature": 0,
    });
    let mut last = String::new();
    for attempt in 0..=retries {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1 << (attempt - 1).min(5))).await;
        }
        let mut rb = client.post(format!("{url}/chat/completions")).json(&body);
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        match rb.send().await {
            Ok(resp) if resp.status().is_success() => match resp.json::<Value>().await {
                Ok(v) => match v.pointer("/choices/0/message/content").and_then(Value::as_str) {
                    Some(text) => return Ok(text.to_string()),
                    None => return Err(format!("{url}: an answer without choices[0].message.content")),
                },
                Err(e) => last = format!("{url}: a body that is not JSON: {e}"),
            },
            Ok(resp) => {
                let status = resp.status();
                last = format!("{url}: HTTP {status}: {}", resp.text().await.unwrap_or_default().chars().take(200).collect::<String>());
                if status.is_client_error() && status.as_u16() != 429 {
                    return Err(last);
                }
            }
            Err(e) => last = format!("{url}: {e}"),
        }
    }
    Err(last)
}

/// The one run in progress: taken before a run starts, released when it
/// ends however it ends (error, panic, or the task dropped).
pub struct RunSlot(Arc<Service>);

impl RunSlot {
    pub fn take(svc: &Arc<Service>) -> Result<RunSlot, EvalError> {
        if !svc.evals.try_start() {
            return Err(EvalError::AlreadyRunning);
        }
        Ok(RunSlot(svc.clone()))
    }
}

impl Drop for RunSlot {
    fn drop(&mut self) {
        self.0.evals.finished();
    }
}

/// Starts one evaluation run (minutes on a CPU) in its own task, so that
/// nobody waiting for it (an HTTP client that hangs up) can cut it short;
/// the handle gives its result.
pub fn spawn(slot: RunSlot, opts: RunOptions) -> tokio::task::JoinHandle<Result<EvalRun, EvalError>> {
    tokio::spawn(async move {
        let out = run_inner(&slot.0, opts).await;
        if let Err(e) = &out {
            tracing::warn!(error = %e, "evaluation run failed");
        }
        drop(slot);
        out
    })
}

/// The classes that `runs` (the pooled runs) settle at the baseline by
/// their verdicts of the last week ([`quality::settled`], at the
/// optimizer's lowest floor).
fn settled_classes(svc: &Service, runs: &[EvalRun]) -> Vec<String> {
    let cfg = &svc.config().optimizer;
    let since = svc.clock().now_ms().saturating_sub(quality::SETTLED_FOR_MS);
    let recent: Vec<EvalRun> = runs.iter().filter(|r| r.finished_ms >= since).cloned().collect();
    let levels = svc.directives().names().count();
    quality::settled(&recent, &crate::plan::planner::mixed_classes(cfg), levels, crate::plan::planner::lowest_floor(cfg))
}

async fn run_inner(svc: &Arc<Service>, opts: RunOptions) -> Result<EvalRun, EvalError> {
    let cfg = &svc.config().evaluator;
    let started_ms = svc.clock().now_ms();
    let judge = judge_for(svc, &opts)?;
    let mut samples = svc.store.samples()?;
    if samples.is_empty() {
        return Err(EvalError::NoSamples);
    }
    // A scheduled run leaves out the classes settled at the baseline: their
    // answers at every level would cost carbon and could not change the
    // plan (a forced run asks everything).
    let settled = if opts.reason == "forced" {
        vec![]
    } else {
        match crate::plan::planner::pooled_runs(svc.as_ref()) {
            Ok(runs) => settled_classes(svc, &runs),
            Err(e) => {
                tracing::warn!(error = %e, "reading evaluation runs failed; no class is settled");
                vec![]
            }
        }
    };
    samples.retain(|s| !settled.iter().any(|c| c == "all" || *c == s.class));
    if samples.is_empty() {
        let run = EvalRun {
            id: format!("eval-{started_ms}"),
            started_ms,
            finished_ms: started_ms,
            reason: opts.reason,
            intensity_gco2_per_kwh: svc.carbon().now(started_ms as i64 / 1000).gco2_per_kwh,
            judge: judge.describe(svc),
            levels: svc.directives().names().map(str::to_string).collect(),
            error: Some(format!(
                "nothing asked: every sampled class is settled at the baseline ({}): no shorter level could clear the lowest floor",
                settled.join(", ")
            )),
            wording: svc.directives().fingerprint(),
            settled,
            ..Default::default()
        };
        svc.store.save_eval(&run).await?;
        tracing::info!(id = %run.id, settled = ?run.settled, "evaluation run skipped: every sampled class is settled");
        return Ok(run);
    }
    // Up to K of each class, chosen by a seeded shuffle on the start time.
    let k = opts.prompts.unwrap_or(cfg.prompts).max(1);
    let mut state = started_ms;
    for i in (1..samples.len()).rev() {
        state = crate::plan::directive::splitmix64(state);
        samples.swap(i, (state % (i as u64 + 1)) as usize);
    }
    let samples = schedule::stratify(samples, k);
    let levels: Vec<String> = svc.directives().names().map(str::to_string).collect();
    let intensity = svc.carbon().now(started_ms as i64 / 1000).gco2_per_kwh;
    tracing::info!(prompts = samples.len(), per_class = k, judge = %judge.describe(svc), reason = %opts.reason, "evaluation run starting");

    // 1. Every level's answer, through the queue.
    let mut jobs = Vec::new();
    let mut ids = Vec::new();
    for s in &samples {
        let mut row = Vec::new();
        for level in &levels {
            let id = queue(svc, request(svc, &s.text, level, cfg.max_tokens)).await?;
            row.push(id.clone());
            jobs.push(id);
        }
        ids.push(row);
    }
    let mut answers: Vec<Vec<String>> = Vec::new();
    let mut measured: Vec<super::Cell> = Vec::new();
    for (s, row) in samples.iter().zip(&ids) {
        let mut texts = Vec::new();
        for (level, id) in levels.iter().zip(row) {
            let job = finished(svc, id).await?;
            if let Some(r) = &job.result {
                measured.push(super::Cell {
                    class: s.class.clone(),
                    level: level.clone(),
                    n: 1,
                    energy_j: r.receipt.energy_j,
                    duration_s: r.receipt.duration_s,
                });
            }
            texts.push(job.result.map(|r| r.text).unwrap_or_default());
        }
        answers.push(texts);
    }
    let cells = super::pool_cells(&measured);

    // 2. Whether each level kept the baseline's quality: where answers have
    // a final form, whether they reach the baseline's (no judge needed);
    // elsewhere the judge, once per rotation of the answers' order.
    let rotations = judge::rotations(levels.len());
    let mut verdicts = Vec::new();
    let mut failures = 0;
    let mut calls = 0;
    let baseline = levels.first().cloned().unwrap_or_else(|| "L0".into());
    for (s, texts) in samples.iter().zip(&answers) {
        let prompt: String = s.text.chars().take(300).collect();
        if let Some(kept) = quality::kept_by_agreement(&s.class, texts) {
            verdicts.push(PromptVerdict { prompt, class: s.class.clone(), picks: vec![], credit: vec![], kept, signal: "agreement".into() });
            continue;
        }
        let prompts: Vec<String> =
            rotations
                .iter()
                .map(|order| judge::judge_prompt(cfg.judge_prompt.as_deref().unwrap_or(DEFAULT_JUDGE_PROMPT), &s.text, texts, order))
                .collect();
        let replies: Vec<Result<String, String>> = match &judge {
            Judge::Local => {
                let mut local = Vec::new();
                for p in &prompts {
                    local.push(queue(svc, request(svc, p, &baseline, JUDGE_MAX_TOKENS)).await?);
                }
                jobs.extend(local.iter().cloned());
                let mut out = Vec::new();
                for id in &local {
                    let job = finished(svc, id).await?;
                    out.push(match (job.state, job.result) {
                        (JobState::Succeeded, Some(r)) => Ok(r.text),
                        _ => Err(job.error.unwrap_or_else(|| "the judge's job did not succeed".into())),
                    });
                }
                out
            }
            Judge::OpenAi { url, model, key, client, retries } => {
                let mut out = Vec::new();
                for p in &prompts {
                    out.push(ask_openai(client, url, model, key.as_deref(), *retries, p).await);
                }
                out
            }
        };
        calls += replies.len();
        let picks: Vec<Option<usize>> = replies
            .iter()
            .zip(&rotations)
            .map(|(reply, order)| {
                let pick = match reply {
                    Ok(text) => judge::pick(text, order),
                    Err(e) => {
                        tracing::warn!(error = %e, "a judge call failed");
                        None
                    }
                };
                if pick.is_none() {
                    failures += 1;
                }
                pick
            })
            .collect();
        let credit = quality::credit(&picks, levels.len());
        let kept = quality::kept_by_judge(&picks, levels.len());
        verdicts.push(PromptVerdict { prompt, class: s.class.clone(), picks, credit, kept, signal: "judge".into() });
    }
    let q = quality::quality(&verdicts, levels.len());
    let any_signal = verdicts.iter().any(|v| v.kept.iter().skip(1).any(Option::is_some));

    // 3. The run's own cost, from its jobs' receipts.
    let (mut tokens, mut energy_j, mut carbon_g, mut estimated) = (0, 0.0, 0.0, false);
    for id in &jobs {
        if let Some(r) = svc.store.get(id).ok().and_then(|j| j.result) {
            tokens += r.prompt_tokens + r.completion_tokens;
            energy_j += r.receipt.energy_j;
            carbon_g += r.receipt.carbon_g;
            estimated |= r.receipt.estimated;
        }
    }
    let run = EvalRun {
        id: format!("eval-{started_ms}"),
        started_ms,
        finished_ms: svc.clock().now_ms(),
        reason: opts.reason,
        intensity_gco2_per_kwh: intensity,
        judge: judge.describe(svc),
        levels,
        q: q.clone(),
        verdicts,
        failures,
        judge_calls: calls,
        jobs,
        tokens,
        energy_j,
        carbon_g,
        estimated,
        error: (!any_signal).then(|| "no answer could be compared with the baseline's (no final answer, no readable verdict); nothing changes".into()),
        wording: svc.directives().fingerprint(),
        cells,
        settled,
    };
    svc.store.save_eval(&run).await?;
    tracing::info!(id = %run.id, q = ?run.q, failures, carbon_g = format!("{carbon_g:.4}"), "evaluation run finished");
    if any_signal && svc.planner.enabled() {
        let ci = svc.carbon().now(svc.clock().now_s()).gco2_per_kwh;
        crate::plan::planner::resolve(svc.as_ref(), ci, format!("evaluation {}", run.id));
    }
    Ok(run)
}

/// Per class, how well each level kept the baseline's quality over the
/// runs the planner pools (n, share, lower bound).
fn kept_by_class(svc: &Service, runs: &[EvalRun]) -> BTreeMap<String, Vec<quality::Kept>> {
    let levels = svc.directives().names().count();
    crate::plan::classify::CLASSES.iter().map(|class| (class.to_string(), quality::kept_stats(runs, class, levels))).collect()
}

/// What `eval status` shows: the last q, the next planned run and why.
pub fn status(svc: &Service) -> Result<EvalStatus, StoreError> {
    let last = svc.store.eval_runs(1)?.into_iter().next();
    let now_s = svc.clock().now_s();
    let plan = svc.evals.last_schedule().unwrap_or_else(|| decide(svc, now_s, last.as_ref()));
    let cfg = &svc.config().evaluator;
    let pooled = crate::plan::planner::pooled_runs(svc)?;
    Ok(EvalStatus {
        object: "eval.status".into(),
        enabled: cfg.enabled,
        running: svc.evals.running(),
        samples: svc.store.samples_len() as u64,
        samples_needed: cfg.prompts,
        levels: svc.directives().names().map(str::to_string).collect(),
        q: last.as_ref().and_then(|r| r.q.clone()),
        q_source: if last.as_ref().is_some_and(|r| r.q.is_some()) { "the last run's judged prompts (pick-best shares)" } else { "no judged prompts yet" }.into(),
        kept: kept_by_class(svc, &pooled),
        settled: settled_classes(svc, &pooled),
        last_run: last.as_ref().map(|r| LastRun {
            id: r.id.clone(),
            at: r.started_ms as f64 / 1000.0,
            q: r.q.clone(),
            failures: r.failures,
            judge: r.judge.clone(),
            carbon_g: r.carbon_g,
            energy_j: r.energy_j,
        }),
        next: NextRun { run_now: plan.run, at: plan.next_at, forecast_gco2_per_kwh: plan.next_gco2_per_kwh, reason: plan.reason },
        rule: EvalRule {
            min_interval_s: cfg.min_interval.as_secs(),
            max_staleness_s: cfg.max_staleness.as_secs(),
            tolerance: cfg.tolerance,
        },
    })
}

fn decide(svc: &Service, now_s: i64, last: Option<&EvalRun>) -> Schedule {
    let cfg = &svc.config().evaluator;
    let ci = svc.carbon().now(now_s).gco2_per_kwh;
    let hours = (cfg.max_staleness.as_secs() / 3600 + 1).min(72) as usize;
    let forecast = svc.carbon().forecast(now_s, hours);
    schedule::schedule(
        now_s,
        last.map(|r| r.started_ms as i64 / 1000),
        ci,
        &forecast,
        svc.config().optimizer.ci_range.unwrap_or_else(|| svc.carbon().range()),
        cfg.min_interval.as_secs() as i64,
        cfg.max_staleness.as_secs() as i64,
        cfg.tolerance,
    )
}

/// Starts runs when the rule says so (and there are prompts to judge).
pub async fn scheduler(svc: Arc<Service>, stop: CancellationToken) {
    if !svc.config().evaluator.enabled {
        return;
    }
    loop {
        tokio::select! {
            _ = svc.clock().sleep(svc.config().evaluator.check_interval) => {}
            _ = stop.cancelled() => return,
        }
        let last = match svc.store.eval_runs(1) {
            Ok(r) => r.into_iter().next(),
            Err(e) => {
                tracing::warn!(error = %e, "reading evaluation runs failed");
                continue;
            }
        };
        let plan = decide(&svc, svc.clock().now_s(), last.as_ref());
        svc.evals.set_schedule(plan.clone());
        // A scheduled run waits for a full sample (a forced one may use fewer).
        let has_samples = svc.store.samples_len() >= svc.config().evaluator.prompts;
        if plan.run && has_samples && !svc.is_shutting_down() {
            if let Ok(slot) = RunSlot::take(&svc) {
                spawn(slot, RunOptions { reason: plan.reason.clone(), ..RunOptions::default() });
            }
        }
    }
}
