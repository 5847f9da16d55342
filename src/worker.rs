//! The worker: claims queued jobs and feeds them to the backends (the
//! embedded engine, up to `model.max_seqs` at once so it can batch them,
//! and the upstreams, up to their `max_concurrent`), each job to the one
//! where it costs the least carbon now (`backends::route`) (the daemon's own
//! evaluation jobs go ahead of queued users' jobs while they have had less
//! than `evaluator.share` of the recent engine time); streams their
//! tokens to listeners; writes each result with its receipt; and aborts a
//! running job when it is cancelled.
//!
//! Path of one job: `Store::claim` → backend chosen → directive applied → `Engine::generate`
//! (deltas → `Service::send_delta`, tokens → the metering) → energy share → receipt →
//! `Store::finish` (flushed) → `Service::finished` (wakes waiters).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::accounting;
use crate::backends::{Backend, Energy};
use crate::engine::{EngineError, GenRequest, Sampling};
use crate::eval::schedule::EngineShare;
use crate::job::{Job, JobResult, JobState, LedgerEntry, Origin, ToolChoice};
use crate::stats::RequestTimes;
use crate::service::Service;

/// Claims jobs until `stop` fires, then waits for the running ones. Those
/// still running when `interrupt` fires are abandoned as `running` on disk;
/// the daemon requeues them before it exits.
pub async fn run(svc: Arc<Service>, stop: CancellationToken, interrupt: CancellationToken) {
    // The meters are read at every start and end, and this often in between.
    let sampler = {
        let (svc, stop) = (svc.clone(), interrupt.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(svc.config().accounting.sample_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => svc.backends.sample(),
                    _ = stop.cancelled() => return,
                }
            }
        })
    };
    let share = Arc::new(std::sync::Mutex::new((EngineShare::default(), Instant::now())));
    let mut backends_changed = svc.backends.subscribe();
    let mut tasks = JoinSet::new();
    loop {
        // A backend with a free slot (and its engine loaded) first.
        loop {
            backends_changed.borrow_and_update();
            if svc.backends.has_room(&svc.carbon(), svc.clock().now_s()) {
                break;
            }
            tokio::select! {
                r = backends_changed.changed() => if r.is_err() { break },
                _ = stop.cancelled() => break,
            }
        }
        if stop.is_cancelled() {
            break;
        }
        let job = loop {
            // Register for a wake-up before looking, so a submit in between is not missed.
            let notified = svc.work.notified();
            let daemon_turn = share.lock().expect("poisoned").0.daemon_turn(svc.config().evaluator.share);
            let claimed = match daemon_turn {
                true => svc.store.claim_daemon().and_then(|j| if j.is_some() { Ok(j) } else { svc.store.claim() }),
                false => svc.store.claim(),
            };
            match claimed {
                Ok(Some(job)) => break Some(job),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "claiming a job failed; retrying in 1 s");
                    // A store that keeps failing must not keep SIGTERM waiting.
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.cancelled() => break None,
                    }
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = stop.cancelled() => break None,
            }
        };
        let Some(job) = job else { break };
        // The backend where it costs the least carbon now; none when one
        // went down while the worker waited for work: back to the queue.
        let Some(slot) = svc.backends.choose(&svc.carbon(), svc.clock().now_s()) else {
            if let Err(e) = svc.store.requeue_job(&job.id, false).await {
                tracing::error!(error = %e, job = %job.id, "returning a job to the queue failed");
            }
            svc.requeued(&job.id, "no backend");
            continue;
        };
        let daemon = job.origin == Origin::Daemon;
        if daemon {
            share.lock().expect("poisoned").0.daemon_running += 1;
        }
        let (svc, interrupt, share) = (svc.clone(), interrupt.clone(), share.clone());
        tasks.spawn(async move {
            // On the embedded engine, the claim (its attempt counted) is on
            // disk before the job runs, so a prompt that crashes sproutd stops
            // at queue.max_attempts. An upstream cannot crash this process
            // (its faults are counted as they happen), so its jobs start at
            // once; one a crash interrupts before the claim's next flush is
            // simply still queued after the restart. The flush is the job's
            // own, so the worker goes on claiming meanwhile (group commit).
            if slot.backend.kind == "embedded" {
                if let Err(e) = svc.store.sync().await {
                    tracing::error!(error = %e, job = %job.id, "flushing a claim failed; running the job anyway");
                }
            }
            let t0 = Instant::now();
            run_job(&svc, &slot.backend, job, &interrupt).await;
            let mut s = share.lock().expect("poisoned");
            let (sh, last) = &mut *s;
            sh.decay(last.elapsed().as_secs_f64());
            *last = Instant::now();
            sh.add(daemon, t0.elapsed().as_secs_f64());
            if daemon {
                sh.daemon_running -= 1;
            }
            drop(s);
            drop(slot);
        });
        // Reap finished tasks so the set does not grow.
        while tasks.try_join_next().is_some() {}
    }
    // Drain: running jobs finish, or are interrupted when the grace runs out.
    if !tasks.is_empty() {
        tracing::info!(running = tasks.len(), "waiting for running jobs to finish");
    }
    while tasks.join_next().await.is_some() {}
    sampler.abort();
}

/// The engine request for a job: its directive applied, sampling resolved.
pub fn gen_request(svc: &Service, job: &Job) -> GenRequest {
    let g = &svc.config().generation;
    GenRequest {
        messages: svc.directives().apply(&job.directive, crate::plan::classify::classify(job.request.last_user_text()), &job.request.messages),
        max_tokens: job.request.max_tokens,
        sampling: Sampling {
            temperature: job.request.temperature.unwrap_or(g.temperature),
            top_p: job.request.top_p.unwrap_or(g.top_p),
            top_k: g.top_k,
            repetition_penalty: g.repetition_penalty,
            seed: job.seed,
            presence_penalty: job.request.presence_penalty,
            frequency_penalty: job.request.frequency_penalty,
            logit_bias: job.request.logit_bias.clone(),
        },
        stop: job.request.stop.clone(),
        tools: if job.request.tool_choice == ToolChoice::None { vec![] } else { job.request.tools.clone() },
        tool_choice: job.request.tool_choice.clone(),
        response_format: job.request.response_format.clone(),
        logprobs: job.request.logprobs,
    }
}

/// The prompt's length in tokens, for dividing energy before the engine
/// reports the exact count: about four characters a token.
fn prompt_tokens_estimate(req: &GenRequest) -> f64 {
    (req.messages.iter().map(|m| m.content.chars().count()).sum::<usize>() as f64 / 4.0).ceil().max(1.0)
}

async fn run_job(svc: &Service, backend: &Backend, job: Job, interrupt: &CancellationToken) {
    // Routing only offers backends with an engine; should one lose it, the
    // job goes back to the queue rather than hang as running.
    let Some(engine) = backend.engine() else {
        if let Err(e) = svc.store.requeue_job(&job.id, false).await {
            tracing::error!(error = %e, job = %job.id, "returning a job to the queue failed");
        }
        svc.requeued(&job.id, "no engine");
        return;
    };
    let metering = match &backend.energy {
        Energy::Metered(m) => Some(m.clone()),
        Energy::PerToken { .. } => None,
    };
    let cancel = svc.started(&job.id);
    let req = gen_request(svc, &job);
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let t0 = Instant::now();
    // When the job could run: submitted, or the end of its deferral.
    let ready_ms = job.deferral.map_or(job.created_ms, |d| d.until_ms.max(job.created_ms));
    let waited_s = svc.clock().now_ms().saturating_sub(ready_ms) as f64 / 1000.0;
    let first_token = std::sync::OnceLock::<Instant>::new();
    if let Some(m) = &metering {
        m.lock().expect("poisoned").start(&job.id, prompt_tokens_estimate(&req));
    }
    let token = |piece: String| {
        first_token.get_or_init(Instant::now);
        if let Some(m) = &metering {
            m.lock().expect("poisoned").tokens(&job.id, 1.0);
        }
        svc.send_delta(&job.id, piece);
    };
    tracing::debug!(job = %job.id, directive = %job.directive, attempt = job.attempts, "running");

    let generate = engine.generate(req, tx);
    tokio::pin!(generate);
    let outcome = loop {
        tokio::select! {
            out = &mut generate => {
                // Forward what the engine sent before it returned.
                while let Ok(piece) = rx.try_recv() {
                    token(piece);
                }
                break Some(out);
            }
            Some(piece) = rx.recv() => token(piece),
            _ = cancel.cancelled() => break None,
            _ = interrupt.cancelled() => {
                if let Some(m) = &metering {
                    m.lock().expect("poisoned").finish(&job.id);
                }
                tracing::info!(job = %job.id, "shutdown grace over: interrupted; it will be requeued");
                return;
            }
        }
    };
    let end = Instant::now();
    let metered = metering.as_ref().map(|m| m.lock().expect("poisoned").finish(&job.id));
    let duration_s = end.duration_since(t0).as_secs_f64();

    // The backend failed, not the request: the job goes back to the queue
    // to run elsewhere, with nothing in the ledger for this attempt.
    if let Some(Err(e)) = &outcome {
        if e.is_backend_fault() && !interrupt.is_cancelled() {
            let counted = matches!(e, EngineError::Backend(_));
            svc.backends.fault(backend, &e.to_string());
            if !(counted && job.attempts >= svc.config().queue.max_attempts) {
                let why = format!("backend {} failed: {e}", backend.name);
                match svc.store.requeue_job(&job.id, counted).await {
                    Ok(_) => tracing::warn!(job = %job.id, backend = %backend.name, error = %e, "backend failed; the job goes back to the queue"),
                    Err(err) => tracing::error!(job = %job.id, error = %err, "returning a job to the queue failed"),
                }
                svc.requeued(&job.id, &why);
                return;
            }
        }
    }

    let (prompt_n, completion_n) = match &outcome {
        Some(Ok(out)) => (out.prompt_tokens, out.completion_tokens),
        _ => (0, 0),
    };
    let share = metered.or_else(|| backend.per_token_share(prompt_n, completion_n, duration_s)).unwrap_or_default();
    let carbon = backend.carbon(&svc.carbon());
    let intensity = carbon.now(svc.clock().now_s()).gco2_per_kwh;
    let mut receipt = accounting::receipt(backend.hardware, intensity, &job.directive, &job.id, share, duration_s);
    receipt.backend = backend.name.clone();
    receipt.zone = carbon.name();
    let mut ledger = LedgerEntry {
        job_id: job.id.clone(),
        origin: job.origin,
        state: JobState::Running, // set by the store
        finished_ms: 0,           // set by the store
        directive: job.directive.clone(),
        prompt_tokens: 0,
        completion_tokens: 0,
        duration_s,
        energy_j: receipt.energy_j,
        intensity_gco2_per_kwh: receipt.intensity_gco2_per_kwh,
        operational_g: receipt.operational_g,
        embodied_g: receipt.embodied_g,
        carbon_g: receipt.carbon_g,
        estimated: receipt.estimated,
        class: crate::plan::classify::classify(job.request.last_user_text()).to_string(),
        // What holding it saved: its energy at the intensity it avoided.
        deferral_saving_g: job.deferral.map_or(0.0, |d| receipt.energy_j / 3.6e6 * (d.submit_gco2_per_kwh - intensity)),
        deferred: job.deferral.is_some(),
        backend: receipt.backend.clone(),
        zone: receipt.zone.clone(),
    };
    let (state, result, error) = match outcome {
        Some(Ok(out)) => {
            ledger.prompt_tokens = out.prompt_tokens;
            ledger.completion_tokens = out.completion_tokens;
            let since = |t: Instant| waited_s + t.duration_since(t0).as_secs_f64();
            let times = RequestTimes {
                started_s: waited_s,
                first_token_s: first_token.get().copied().map(since),
                finished_s: since(end),
                prompt_tokens: out.prompt_tokens,
                completion_tokens: out.completion_tokens,
            };
            svc.latencies.lock().expect("poisoned")[(job.origin == Origin::Daemon) as usize].observe(&times);
            let mut tool_calls = out.tool_calls;
            if job.request.single_tool_call {
                tool_calls.truncate(1);
            }
            let result = JobResult {
                text: out.text,
                finish_reason: out.finish_reason,
                prompt_tokens: out.prompt_tokens,
                completion_tokens: out.completion_tokens,
                receipt,
                tool_calls,
                logprobs: out.logprobs,
            };
            (JobState::Succeeded, Some(result), None)
        }
        Some(Err(e)) => {
            tracing::warn!(job = %job.id, error = %e, "job failed");
            (JobState::Failed, None, Some(e.to_string()))
        }
        None => (JobState::Cancelled, None, Some("cancelled by request while running".to_string())),
    };
    if state == JobState::Succeeded {
        backend.record(&ledger);
    }
    match svc.store.finish(&job.id, state, result, error, Some(ledger)).await {
        Ok(done) => {
            tracing::info!(
                job = %done.id,
                state = done.state.as_str(),
                directive = %done.directive,
                tokens = done.result.as_ref().map(|r| r.completion_tokens).unwrap_or(0),
                secs = format!("{duration_s:.2}"),
                "finished"
            );
            svc.finished(done);
            // New measured e and p: the planner checks whether to re-solve.
            svc.planner.wake();
        }
        Err(e) => {
            tracing::error!(job = %job.id, error = %e, "recording the job's end failed");
            svc.unlisten(&job.id);
        }
    }
}
