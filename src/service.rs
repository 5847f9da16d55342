//! The daemon's shared core, between the HTTP API and the worker: submitting
//! jobs (durably), following them while they run, cancelling them, and the
//! engine's loading status.
//!
//! What lives here in memory is only what a restart may lose without losing
//! a job: who is listening to a job's tokens, which running jobs can be
//! aborted, and a counter that wakes waiters whenever any job changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::carbon::Carbon;
use crate::clock::Clock;
use crate::energy::Metering;
use crate::config::Config;
use crate::plan::classify::classify;
use crate::plan::directive::{splitmix64, Directives};
use crate::plan::planner::Planner;
use crate::job::{ChatRequest, Deadline, Deferral, Job, Origin};
use crate::store::{job_id, CancelOutcome, NewJob, Store, StoreError};

/// Where the embedded model is in its life (`Ready` at once without one:
/// upstream backends need no loading).
#[derive(Clone)]
pub enum EngineStatus {
    Loading,
    Ready,
    Failed(String),
}

/// Returned by [`Service::submit`].
pub struct Submission {
    pub job: Job,
    /// False when an idempotency key matched an earlier job (returned instead).
    pub created: bool,
    /// The job's events, when listening was asked for and the job is new.
    pub events: Option<mpsc::UnboundedReceiver<JobEvent>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("sproutd is shutting down")]
    ShuttingDown,
    #[error("the prompt has {chars} characters; the limit is {max} (queue.max_prompt_chars)")]
    TooLong { chars: usize, max: usize },
    #[error("the queue is full ({queued} jobs queued; queue.max_queued)")]
    Full { queued: usize },
    #[error("{0}")]
    Deadline(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a listener of one job receives.
#[derive(Debug)]
pub enum JobEvent {
    Delta(String),
    /// The backend running it failed after sending part of the answer: the
    /// job runs again elsewhere, from the start, so a stream cannot go on
    /// (a client waiting for the whole answer keeps waiting).
    Interrupted(String),
    Finished(Job),
}

/// A job in the engine: how to abort it, and the tokens it has produced.
#[derive(Default)]
struct RunningJob {
    cancel: CancellationToken,
    tokens: u64,
}

/// The furthest deadline accepted: the forecast reaches 72 hours.
const MAX_DEADLINE_MS: u64 = 72 * 3_600_000;

pub struct Service {
    /// The running config: replaced whole by a reload ([`Service::reload`]),
    /// so a reader sees one version throughout (`config()` hands an `Arc`).
    config: RwLock<Arc<Config>>,
    pub store: Store,
    /// Grid carbon intensity now and ahead (replaced when a reload changes the source).
    carbon: RwLock<Arc<Carbon>>,
    /// Woken when a reload replaced the carbon source (its poller restarts).
    pub carbon_replaced: Notify,
    /// The API token, if any (a reload re-reads its file).
    token: RwLock<Option<Arc<String>>>,
    /// The local energy meter and the attribution of its readings to requests
    /// (the `local` backend's; upstreams have their own).
    pub metering: Arc<Mutex<Metering>>,
    /// Where answers are made: the embedded engine and the upstreams.
    pub backends: Arc<crate::backends::Backends>,
    directives: RwLock<Arc<Directives>>,
    /// The directive optimizer's current plan.
    pub planner: Planner,
    /// The quality evaluator's live state.
    pub evals: crate::eval::schedule::EvalState,
    engine: watch::Receiver<EngineStatus>,
    /// Wakes the worker when a job is queued.
    pub work: Notify,
    /// Wakes the deferral promoter when a job is held (it may be due
    /// before the one it sleeps for).
    pub deferred_added: Notify,
    /// Bumped on every job state change; `GET /v1/jobs/{id}?wait=` waits on it.
    changed: watch::Sender<u64>,
    listeners: Mutex<HashMap<String, mpsc::UnboundedSender<JobEvent>>>,
    running: Mutex<HashMap<String, RunningJob>>,
    shutting_down: AtomicBool,
    /// The worker has stopped: no job will change state any more.
    stopped: AtomicBool,
    /// Submissions past the queue-limit check and not yet done: counted
    /// against the limit with the queue, so concurrent submits cannot
    /// overshoot it.
    admitting: std::sync::atomic::AtomicUsize,
    /// Latency and size histograms of succeeded requests since start: users'
    /// and the daemon's own (`/metrics`).
    pub latencies: Mutex<[crate::stats::Latencies; 2]>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq)]
pub struct Reloaded {
    /// Sections that changed in the file but keep their running values until a restart.
    pub needs_restart: Vec<&'static str>,
    pub carbon_replaced: bool,
}

/// Holds one place among [`Service::admitting`] until dropped.
struct Admission<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Service {
    pub fn new(
        config: Config,
        store: Store,
        carbon: Arc<Carbon>,
        metering: Arc<Mutex<Metering>>,
        backends: Arc<crate::backends::Backends>,
        engine: watch::Receiver<EngineStatus>,
    ) -> Self {
        Self {
            carbon: RwLock::new(carbon),
            carbon_replaced: Notify::new(),
            token: RwLock::new(None),
            metering,
            backends,
            directives: RwLock::new(Arc::new(Directives::new(&config.directives))),
            planner: Planner::new(config.optimizer.clone()),
            evals: Default::default(),
            config: RwLock::new(Arc::new(config)),
            store,
            engine,
            work: Notify::new(),
            deferred_added: Notify::new(),
            changed: watch::channel(0).0,
            listeners: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            admitting: Default::default(),
            latencies: Default::default(),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.read().expect("poisoned").clone()
    }

    /// The daemon's time: every component reads "now" and sleeps on it.
    /// It is the store's ([`Store::with_clock`]), so job times agree with it.
    pub fn clock(&self) -> &Clock {
        self.store.clock()
    }

    pub fn directives(&self) -> Arc<Directives> {
        self.directives.read().expect("poisoned").clone()
    }

    pub fn carbon(&self) -> Arc<Carbon> {
        self.carbon.read().expect("poisoned").clone()
    }

    pub fn token(&self) -> Option<Arc<String>> {
        self.token.read().expect("poisoned").clone()
    }

    pub fn set_token(&self, token: Option<String>) {
        *self.token.write().expect("poisoned") = token.map(Arc::new);
    }

    /// Applies a new config's reloadable sections (directives, optimizer,
    /// evaluator, carbon source, API token) while running; everything else
    /// keeps its running value (it needs a restart), and the sections that
    /// changed there are returned by name so the caller can say so. The new
    /// config must be valid (`Config::load`); a token file or carbon source
    /// that cannot be read fails the reload and changes nothing.
    pub fn reload(&self, new: Config, now_s: i64) -> Result<Reloaded, String> {
        let old = self.config();
        let token = new.read_token().map_err(|e| e.to_string())?;
        let carbon_changed = format!("{:?}", old.carbon) != format!("{:?}", new.carbon);
        let carbon = if carbon_changed { Some(Arc::new(Carbon::from_config(&new.carbon, now_s).map_err(|e| e.to_string())?)) } else { None };
        if token.is_none() && !old.listen.ip().is_loopback() {
            return Err(crate::config::TokenError::Missing(old.listen).to_string());
        }
        let section = |name: &'static str, a: String, b: String| (a != b).then_some(name);
        let restart: Vec<&'static str> = [
            section("server", format!("{:?}{:?}{:?}", old.listen, old.max_body_bytes, old.access), format!("{:?}{:?}{:?}", new.listen, new.max_body_bytes, new.access)),
            section("storage", format!("{:?}{:?}", old.data_dir, old.store_open_timeout), format!("{:?}{:?}", new.data_dir, new.store_open_timeout)),
            section("model", format!("{:?}", old.model), format!("{:?}", new.model)),
            section("generation", format!("{:?}", old.generation), format!("{:?}", new.generation)),
            section("accounting", format!("{:?}", old.accounting), format!("{:?}", new.accounting)),
            section("queue", format!("{:?}", old.queue), format!("{:?}", new.queue)),
            section("backends", format!("{:?}", old.backends), format!("{:?}", new.backends)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let levels_changed = old.directives.levels.iter().map(|(n, _)| n).ne(new.directives.levels.iter().map(|(n, _)| n));
        if levels_changed {
            return Err("the directive levels' names changed: that needs a restart (jobs and measurements name them)".into());
        }
        let mut merged = (*old).clone();
        merged.directives = new.directives;
        merged.optimizer = new.optimizer;
        merged.evaluator = new.evaluator;
        merged.carbon = new.carbon;
        merged.token_file = new.token_file;
        *self.directives.write().expect("poisoned") = Arc::new(Directives::new(&merged.directives));
        self.planner.set_config(merged.optimizer.clone());
        *self.config.write().expect("poisoned") = Arc::new(merged);
        self.set_token(token);
        if let Some(c) = carbon {
            *self.carbon.write().expect("poisoned") = c;
            self.carbon_replaced.notify_waiters();
            // The planner follows the new source's readings from its next pass.
            self.planner.wake();
        }
        self.bump();
        Ok(Reloaded { needs_restart: restart, carbon_replaced: carbon_changed })
    }

    pub fn engine_status(&self) -> EngineStatus {
        self.engine.borrow().clone()
    }

    pub fn engine_watch(&self) -> watch::Receiver<EngineStatus> {
        self.engine.clone()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Persists a job (flushed before returning) and wakes the worker. With
    /// `listen`, token deltas and the end of the job are sent to the returned
    /// receiver; it is registered before the job can start, so nothing is
    /// missed. A repeated idempotency key returns the existing job instead.
    pub async fn submit(
        &self,
        origin: Origin,
        priority: i32,
        request: ChatRequest,
        deadline: Option<Deadline>,
        idempotency_key: Option<String>,
        listen: bool,
    ) -> Result<Submission, SubmitError> {
        if self.is_shutting_down() {
            return Err(SubmitError::ShuttingDown);
        }
        let chars: usize = request.messages.iter().map(|m| m.content.chars().count()).sum();
        let max = self.config().queue.max_prompt_chars;
        if chars > max {
            return Err(SubmitError::TooLong { chars, max });
        }
        // Reserve first, then look: a job another submit is inserting counts
        // once as reserved or queued (twice at worst: refused early, never over).
        let reserved = self.admitting.fetch_add(1, Ordering::SeqCst);
        let _admission = Admission(&self.admitting);
        let queued = self.store.queued_len() + self.store.deferred_len();
        if queued + reserved >= self.config().queue.max_queued {
            return Err(SubmitError::Full { queued: queued + reserved });
        }
        let seq = self.store.next_seq()?;
        let class = classify(request.last_user_text());
        // An answer whose shape the client fixed (tool calls, JSON) is not
        // shortened unless the client pins a level: its length is the
        // schema's, and the evaluator measures free-text answers only.
        let directive = match self.planner.mix_for(class) {
            _ if request.directive.is_none() && request.shape_is_fixed() => self.directives().baseline().to_string(),
            Some(mix) => self.directives().choose_from(request.directive.as_deref(), seq, &mix),
            None => self.directives().choose(request.directive.as_deref(), seq),
        };
        let seed = request.seed.unwrap_or_else(|| splitmix64(self.config().directives.seed.wrapping_add(seq)) >> 1);
        let now = self.clock().now_ms();
        let deadline_ms = deadline.map(|d| d.to_unix_ms(now));
        let deferral = match deadline_ms {
            None => None,
            Some(d) if d <= now => return Err(SubmitError::Deadline(format!("the deadline ({:.0} s ago) has passed", (now - d) as f64 / 1000.0))),
            Some(d) if d - now > MAX_DEADLINE_MS => {
                return Err(SubmitError::Deadline(format!(
                    "the deadline is {:.0} h away; at most {} h (the forecast's reach)",
                    (d - now) as f64 / 3.6e6,
                    MAX_DEADLINE_MS / 3_600_000
                )))
            }
            Some(d) => self.deferral(now, d),
        };
        // Register the listener before the job exists, so the worker cannot
        // start it and send tokens before anyone listens.
        let id = job_id(seq);
        let mut rx = listen.then(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            self.listeners.lock().expect("poisoned").insert(id.clone(), tx);
            rx
        });
        let new = NewJob { origin, priority, request, idempotency_key, deadline_ms, deferral };
        let submitted = match self.store.submit(seq, new, directive, seed).await {
            Ok(s) => s,
            Err(e) => {
                self.unlisten(&id);
                return Err(e.into());
            }
        };
        if !submitted.created {
            self.unlisten(&id);
            rx = None;
        } else {
            self.sample(&submitted.job, class);
            self.bump();
            self.work.notify_one();
            if submitted.job.state == crate::job::JobState::Deferred {
                self.deferred_added.notify_one();
            }
        }
        Ok(Submission { job: submitted.job, created: submitted.created, events: rx })
    }

    /// Offers a user's prompt to the evaluator's sample, unless it opted out
    /// or its answer has a fixed shape (the evaluator asks for free text).
    fn sample(&self, job: &Job, class: &str) {
        let ev = &self.config().evaluator;
        if !ev.enabled || job.origin == Origin::Daemon || job.request.store == Some(false) || job.request.shape_is_fixed() {
            return;
        }
        let sample = crate::eval::PromptSample { text: job.request.last_user_text().to_string(), class: class.to_string(), at_ms: job.created_ms };
        if let Err(e) = self.store.sample_prompt(&sample, ev.sample_size, splitmix64(job.seq ^ 0x5eed_5a3b_1e00)) {
            tracing::warn!(error = %e, "keeping a prompt sample failed");
        }
    }

    /// Whether to hold a job due by `deadline_ms`: until the lowest forecast
    /// hour that leaves `queue.deadline_margin` to run it (see `deferral`).
    fn deferral(&self, now_ms: u64, deadline_ms: u64) -> Option<Deferral> {
        let now_s = (now_ms / 1000) as i64;
        let now_ci = self.carbon().now(now_s).gco2_per_kwh;
        let forecast = self.carbon().forecast(now_s, 72);
        let margin = self.config().queue.deadline_margin.as_secs() as i64;
        let hold = crate::plan::deferral::decide(now_s, (deadline_ms / 1000) as i64, margin, now_ci, &forecast)?;
        Some(Deferral {
            until_ms: hold.until_s as u64 * 1000,
            forecast_gco2_per_kwh: hold.forecast_gco2_per_kwh,
            submit_gco2_per_kwh: now_ci,
        })
    }

    /// Queues the deferred jobs whose time has come and wakes the worker.
    pub async fn promote_deferred(&self) -> Result<usize, StoreError> {
        let n = self.store.promote_due(self.clock().now_ms()).await?;
        if n > 0 {
            tracing::info!(jobs = n, "deferred jobs queued: their low-carbon hour has come");
            self.bump();
            for _ in 0..n {
                self.work.notify_one();
            }
        }
        Ok(n)
    }

    /// Waits until job `id` has ended (or sproutd stops), and returns it.
    pub async fn wait_finished(&self, id: &str) -> Result<Job, StoreError> {
        let mut changes = self.subscribe_changes();
        loop {
            let job = self.store.get(id)?;
            if job.state.is_terminal() || self.stopped.load(Ordering::SeqCst) || changes.changed().await.is_err() {
                return Ok(job);
            }
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Called once the worker has stopped: drops every listener, so their
    /// HTTP requests end, and wakes everyone waiting for a job to end.
    pub fn close_listeners(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.listeners.lock().expect("poisoned").clear();
        self.bump();
    }

    /// Stops listening to a job (the client went away).
    pub fn unlisten(&self, id: &str) {
        self.listeners.lock().expect("poisoned").remove(id);
    }

    /// A piece of a running job's answer (about one token): counted, and
    /// sent to whoever listens.
    pub fn send_delta(&self, id: &str, piece: String) {
        if let Some(r) = self.running.lock().expect("poisoned").get_mut(id) {
            r.tokens += 1;
        }
        if let Some(tx) = self.listeners.lock().expect("poisoned").get(id) {
            let _ = tx.send(JobEvent::Delta(piece));
        }
    }

    /// Called by the worker once a job's final state is on disk.
    pub fn finished(&self, job: Job) {
        self.running.lock().expect("poisoned").remove(&job.id);
        if let Some(tx) = self.listeners.lock().expect("poisoned").remove(&job.id) {
            let _ = tx.send(JobEvent::Finished(job));
        }
        self.bump();
    }

    /// Called by the worker when a job went back to the queue (its backend
    /// failed): listeners that already received part of it are told.
    pub fn requeued(&self, id: &str, why: &str) {
        let sent = self.running.lock().expect("poisoned").remove(id).map_or(0, |r| r.tokens);
        if sent > 0 {
            if let Some(tx) = self.listeners.lock().expect("poisoned").get(id) {
                let _ = tx.send(JobEvent::Interrupted(why.to_string()));
            }
        }
        self.work.notify_one();
        self.bump();
    }

    /// Called by the worker when it starts a job; the token aborts it (it may
    /// already be cancelled, when the cancel came between claim and start).
    pub fn started(&self, id: &str) -> CancellationToken {
        let token = self.running.lock().expect("poisoned").entry(id.to_string()).or_default().cancel.clone();
        self.bump();
        token
    }

    /// Completion tokens a running job has produced so far.
    pub fn tokens_so_far(&self, id: &str) -> Option<u64> {
        self.running.lock().expect("poisoned").get(id).map(|r| r.tokens)
    }

    /// Cancels a job: queued ones at once; running ones are aborted by the
    /// worker, and this waits until their cancellation is on disk.
    pub async fn cancel(&self, id: &str) -> Result<Job, StoreError> {
        match self.store.cancel(id).await? {
            CancelOutcome::Cancelled(job) => {
                self.finished(job.clone());
                Ok(job)
            }
            CancelOutcome::Running(_) => {
                self.running.lock().expect("poisoned").entry(id.to_string()).or_default().cancel.cancel();
                let job = self.wait_finished(id).await;
                if job.as_ref().is_ok_and(|j| j.state.is_terminal()) {
                    self.running.lock().expect("poisoned").remove(id);
                }
                job
            }
        }
    }
}

/// What the planner reads of the daemon.
impl crate::plan::planner::Sources for Service {
    fn config(&self) -> Arc<Config> {
        Service::config(self)
    }

    fn planner(&self) -> &Planner {
        &self.planner
    }

    fn ledger_recent(&self, since_ms: u64, limit: usize) -> Result<Vec<crate::job::LedgerEntry>, StoreError> {
        self.store.ledger_recent(since_ms, limit)
    }

    fn eval_runs(&self, limit: usize) -> Result<Vec<crate::eval::EvalRun>, StoreError> {
        self.store.eval_runs(limit)
    }

    fn levels(&self) -> (Vec<String>, String) {
        let d = self.directives();
        (d.names().map(str::to_string).collect(), d.fingerprint())
    }

    fn intensity(&self, t: i64) -> f64 {
        self.carbon().now(t).gco2_per_kwh
    }

    fn intensity_range(&self) -> (f64, f64) {
        self.carbon().range()
    }

    fn readings(&self) -> tokio::sync::watch::Receiver<Option<crate::carbon::Reading>> {
        self.carbon().readings()
    }

    fn intensity_changes_at(&self, t: i64) -> i64 {
        self.carbon().next_change(t)
    }

    fn clock(&self) -> &Clock {
        Service::clock(self)
    }

    fn knowledge(&self) -> u64 {
        let t = self.store.totals();
        t.by_level.values().map(|l| l.requests).sum::<u64>() + self.store.eval_runs_len() as u64
    }
}
