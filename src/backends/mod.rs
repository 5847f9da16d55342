//! Where answers are made: the embedded engine (`local`) and the
//! OpenAI-compatible upstreams of `[[backends]]`, each with its own slots,
//! grid, energy source and health.
//!
//! The worker asks [`Backends::choose`] for the backend a job should run on
//! (the rule is [`route`]'s), runs it there, and reports back: a success
//! updates the backend's measured energy and time per token, a failure marks
//! it down (probed back with backoff by [`Backends::run`]).

pub mod calibrate;
pub mod prometheus;
pub mod route;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::accounting::{Hardware, Share};
use crate::carbon::Carbon;
use crate::config::{BackendEnergy, Config, EMBEDDED_BACKEND};
use crate::energy::Metering;
use crate::engine::upstream::Upstream;
use crate::engine::Engine;
use crate::job::LedgerEntry;

/// How a backend's energy is known.
pub enum Energy {
    /// A meter divided among its running requests by tokens (the local
    /// machine's, or a scraped Prometheus counter).
    Metered(Arc<Mutex<Metering>>),
    /// Calibrated joules per token: an estimate.
    PerToken { prompt_j: f64, completion_j: f64 },
}

pub struct Backend {
    pub name: String,
    /// `embedded` or `openai`.
    pub kind: &'static str,
    pub url: Option<String>,
    pub model: String,
    pub capacity: usize,
    pub hardware: Hardware,
    pub energy: Energy,
    engine: RwLock<Option<Arc<dyn Engine>>>,
    upstream: Option<Arc<Upstream>>,
    /// Its own grid; None: the daemon's.
    carbon: Option<Arc<Carbon>>,
    running: AtomicUsize,
    state: Mutex<State>,
    /// Joules per completion token assumed until it has answered.
    prior_j_per_token: f64,
}

#[derive(Debug, Default)]
struct State {
    /// Failures in a row; 0: healthy.
    failures: u32,
    /// When a down backend is probed next.
    retry_at: Option<Instant>,
    last_error: Option<String>,
    requests: u64,
    faults: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    energy_j: f64,
    carbon_g: f64,
    j_per_token: Option<f64>,
    s_per_token: Option<f64>,
}

/// A backend as `GET /v1/backends` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct BackendView {
    pub name: String,
    pub kind: String,
    pub url: Option<String>,
    pub model: String,
    pub healthy: bool,
    /// Engine loaded (the embedded one loads at start).
    pub ready: bool,
    pub last_error: Option<String>,
    /// Seconds until a down backend is probed again.
    pub retry_in_s: Option<f64>,
    pub running: usize,
    pub capacity: usize,
    pub zone: String,
    pub gco2_per_kwh: f64,
    pub energy_source: String,
    pub measured: bool,
    /// Joules per completion token: measured by its receipts, else the prior.
    pub j_per_token: f64,
    pub j_per_token_measured: bool,
    /// Expected grams CO2e per completion token now (what routing compares).
    pub expected_g_per_token: f64,
    pub requests: u64,
    /// Answers it failed (each went back to the queue).
    pub faults: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub energy_j: f64,
    pub carbon_g: f64,
    /// Metered backends: energy read while none of its requests ran.
    pub idle_energy_j: Option<f64>,
}

impl Backend {
    pub fn engine(&self) -> Option<Arc<dyn Engine>> {
        self.engine.read().expect("poisoned").clone()
    }

    /// Its grid (the daemon's unless it has its own).
    pub fn carbon(&self, daemon: &Arc<Carbon>) -> Arc<Carbon> {
        self.carbon.clone().unwrap_or_else(|| daemon.clone())
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    fn candidate(&self, intensity: f64) -> route::Candidate {
        let st = self.state.lock().expect("poisoned");
        route::Candidate {
            room: self.running() < self.capacity && self.engine.read().expect("poisoned").is_some(),
            healthy: st.failures == 0,
            j_per_token: st.j_per_token.unwrap_or(self.prior_j_per_token),
            s_per_token: st.s_per_token.unwrap_or(0.05),
            gco2_per_kwh: intensity,
            embodied_kgco2: self.hardware.embodied_kgco2,
            lifetime_years: self.hardware.lifetime_years,
        }
    }

    /// The energy share of a request that ran here: the meter's, or the
    /// per-token estimate for its tokens.
    pub fn per_token_share(&self, prompt_tokens: usize, completion_tokens: usize, duration_s: f64) -> Option<Share> {
        match self.energy {
            Energy::PerToken { prompt_j, completion_j } => Some(Share {
                energy_j: prompt_j * prompt_tokens as f64 + completion_j * completion_tokens as f64,
                machine_s: duration_s,
                measured: false,
            }),
            Energy::Metered(_) => None,
        }
    }

    /// A request succeeded here: its figures count, and the backend works.
    pub fn record(&self, entry: &LedgerEntry) {
        let mut st = self.state.lock().expect("poisoned");
        st.requests += 1;
        st.prompt_tokens += entry.prompt_tokens as u64;
        st.completion_tokens += entry.completion_tokens as u64;
        st.energy_j += entry.energy_j;
        st.carbon_g += entry.carbon_g;
        if entry.completion_tokens > 0 {
            let n = entry.completion_tokens as f64;
            st.j_per_token = Some(route::smooth(st.j_per_token, entry.energy_j / n));
            st.s_per_token = Some(route::smooth(st.s_per_token, entry.duration_s / n));
        }
        st.failures = 0;
        st.retry_at = None;
    }

    /// It failed a request: down until a probe succeeds.
    pub fn fault(&self, error: &str) {
        let mut st = self.state.lock().expect("poisoned");
        st.faults += 1;
        st.failures += 1;
        st.retry_at = Some(Instant::now() + route::backoff(st.failures));
        st.last_error = Some(error.to_string());
        tracing::warn!(backend = %self.name, failures = st.failures, error, "backend marked down");
    }

    fn view(&self, daemon: &Arc<Carbon>, now_s: i64) -> BackendView {
        let carbon = self.carbon(daemon);
        let intensity = carbon.now(now_s).gco2_per_kwh;
        let c = self.candidate(intensity);
        let st = self.state.lock().expect("poisoned");
        let (energy_source, measured, idle) = match &self.energy {
            Energy::Metered(m) => {
                let s = m.lock().expect("poisoned").status();
                (s.meter, s.measured, Some(s.idle_energy_j))
            }
            Energy::PerToken { prompt_j, completion_j } => {
                (format!("estimate: {prompt_j} J per prompt token, {completion_j} J per completion token"), false, None)
            }
        };
        BackendView {
            name: self.name.clone(),
            kind: self.kind.to_string(),
            url: self.url.clone(),
            model: self.model.clone(),
            healthy: st.failures == 0,
            ready: self.engine.read().expect("poisoned").is_some(),
            last_error: st.last_error.clone(),
            retry_in_s: st.retry_at.filter(|_| st.failures > 0).map(|t| t.saturating_duration_since(Instant::now()).as_secs_f64()),
            running: self.running(),
            capacity: self.capacity,
            zone: carbon.name(),
            gco2_per_kwh: intensity,
            energy_source,
            measured,
            j_per_token: c.j_per_token,
            j_per_token_measured: st.j_per_token.is_some(),
            expected_g_per_token: c.grams_per_token(),
            requests: st.requests,
            faults: st.faults,
            prompt_tokens: st.prompt_tokens,
            completion_tokens: st.completion_tokens,
            energy_j: st.energy_j,
            carbon_g: st.carbon_g,
            idle_energy_j: idle,
        }
    }
}

/// A slot on a backend, held while a job runs there; dropping it frees the
/// slot and wakes the worker.
pub struct Slot {
    pub backend: Arc<Backend>,
    changed: watch::Sender<u64>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.backend.running.fetch_sub(1, Ordering::SeqCst);
        self.changed.send_modify(|n| *n += 1);
    }
}

/// Every backend, in config order (`local` first when there is one).
pub struct Backends {
    list: Vec<Arc<Backend>>,
    changed: watch::Sender<u64>,
    scrapers: Mutex<Vec<prometheus::Scraper>>,
}

impl Backends {
    /// From config: `local` shares the daemon's meter; each upstream reads
    /// its key file and builds its own grid and meter (nothing is fetched).
    pub fn from_config(cfg: &Config, local_metering: Arc<Mutex<Metering>>, now_s: i64) -> Result<Self, String> {
        let mut list = Vec::new();
        let mut scrapers = Vec::new();
        if !matches!(cfg.model.source, crate::config::ModelSource::None) {
            list.push(Arc::new(Backend {
                name: EMBEDDED_BACKEND.to_string(),
                kind: "embedded",
                url: None,
                model: cfg.model.name.clone(),
                capacity: cfg.model.max_seqs,
                hardware: (&cfg.accounting).into(),
                energy: Energy::Metered(local_metering),
                engine: RwLock::new(None),
                upstream: None,
                carbon: None,
                running: AtomicUsize::new(0),
                state: Mutex::new(State::default()),
                // The estimate meter's full power at about 20 tokens a second.
                prior_j_per_token: cfg.accounting.tdp_w / 20.0,
            }));
        }
        for b in &cfg.backends {
            let upstream = Arc::new(Upstream::new(b)?);
            let carbon = match &b.carbon {
                Some(c) => Some(Arc::new(Carbon::from_config(c, now_s).map_err(|e| format!("backend {}: carbon: {e}", b.name))?)),
                None => None,
            };
            let (energy, prior) = match &b.energy {
                BackendEnergy::PerToken { prompt_j, completion_j } => {
                    (Energy::PerToken { prompt_j: *prompt_j, completion_j: *completion_j }, *completion_j)
                }
                BackendEnergy::Prometheus { url, metric, labels, joules_per_unit, interval, prior_j_per_token } => {
                    let (meter, scraper) = prometheus::meter(url, metric, labels, *joules_per_unit, *interval);
                    scrapers.push(scraper);
                    // A failed scrape is not guessed at: that interval counts 0 J, estimated.
                    let mut none = cfg.accounting.clone();
                    none.idle_w = 0.0;
                    none.tdp_w = 0.0;
                    (Energy::Metered(Arc::new(Mutex::new(Metering::new(Box::new(meter), &none)))), prior_j_per_token.unwrap_or(1.0))
                }
            };
            list.push(Arc::new(Backend {
                name: b.name.clone(),
                kind: "openai",
                url: Some(b.url.clone()),
                model: b.model.clone(),
                capacity: b.max_concurrent,
                hardware: Hardware { embodied_kgco2: b.embodied_kgco2, lifetime_years: b.lifetime_years },
                energy,
                engine: RwLock::new(Some(upstream.clone() as Arc<dyn Engine>)),
                upstream: Some(upstream),
                carbon,
                running: AtomicUsize::new(0),
                state: Mutex::new(State::default()),
                prior_j_per_token: prior,
            }));
        }
        Ok(Self { list, changed: watch::channel(0).0, scrapers: Mutex::new(scrapers) })
    }

    pub fn all(&self) -> &[Arc<Backend>] {
        &self.list
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Backend>> {
        self.list.iter().find(|b| b.name == name)
    }

    /// The embedded engine is loaded.
    pub fn set_embedded(&self, engine: Arc<dyn Engine>) {
        if let Some(b) = self.get(EMBEDDED_BACKEND) {
            *b.engine.write().expect("poisoned") = Some(engine);
            self.bump();
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Changes when a slot frees, an engine loads or a backend's health changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn candidates(&self, daemon: &Arc<Carbon>, now_s: i64) -> Vec<route::Candidate> {
        self.list.iter().map(|b| b.candidate(b.carbon(daemon).now(now_s).gco2_per_kwh)).collect()
    }

    /// Whether a job could start now.
    pub fn has_room(&self, daemon: &Arc<Carbon>, now_s: i64) -> bool {
        route::choose(&self.candidates(daemon, now_s)).is_some()
    }

    /// Takes a slot on the backend where a job costs the least carbon now.
    pub fn choose(&self, daemon: &Arc<Carbon>, now_s: i64) -> Option<Slot> {
        let i = route::choose(&self.candidates(daemon, now_s))?;
        let backend = self.list[i].clone();
        backend.running.fetch_add(1, Ordering::SeqCst);
        Some(Slot { backend, changed: self.changed.clone() })
    }

    /// A backend failed a request: down until its probe answers.
    pub fn fault(&self, backend: &Backend, error: &str) {
        backend.fault(error);
        self.bump();
    }

    pub fn views(&self, daemon: &Arc<Carbon>, now_s: i64) -> Vec<BackendView> {
        self.list.iter().map(|b| b.view(daemon, now_s)).collect()
    }

    /// Every metered backend closes an interval (the periodic sample).
    pub fn sample(&self) {
        for b in &self.list {
            if let Energy::Metered(m) = &b.energy {
                m.lock().expect("poisoned").sample();
            }
        }
    }

    /// Scrapes energy counters, polls backends' own grids (on `clock`) and
    /// probes down backends (1 s doubling to 60 s between probes) until `stop`.
    pub async fn run(self: Arc<Self>, clock: crate::clock::Clock, stop: CancellationToken) {
        for s in std::mem::take(&mut *self.scrapers.lock().expect("poisoned")) {
            tokio::spawn(s.run(stop.clone()));
        }
        for b in &self.list {
            if let Some(c) = &b.carbon {
                tokio::spawn(c.clone().run_poller(clock.clone(), stop.clone()));
            }
        }
        loop {
            let now = Instant::now();
            let mut next = now + Duration::from_secs(1);
            for b in &self.list {
                let due = {
                    let st = b.state.lock().expect("poisoned");
                    match st.retry_at {
                        Some(t) if st.failures > 0 && t <= now => true,
                        Some(t) if st.failures > 0 => {
                            next = next.min(t);
                            false
                        }
                        _ => false,
                    }
                };
                let Some(up) = b.upstream.as_ref().filter(|_| due) else { continue };
                let ok = up.probe().await;
                let mut st = b.state.lock().expect("poisoned");
                match ok {
                    Ok(()) => {
                        tracing::info!(backend = %b.name, "backend answers again");
                        st.failures = 0;
                        st.retry_at = None;
                        drop(st);
                        self.bump();
                    }
                    Err(e) => {
                        st.failures += 1;
                        st.retry_at = Some(Instant::now() + route::backoff(st.failures));
                        st.last_error = Some(format!("probe: {e}"));
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Names every backend in the log line at start.
    pub fn describe(&self) -> String {
        self.list.iter().map(|b| format!("{} ({}, {} slots)", b.name, b.kind, b.capacity)).collect::<Vec<_>>().join(", ")
    }
}
