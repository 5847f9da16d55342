//! `run`: the daemon's life, from opening the store to the last flush.
//!
//! Start-up: [`Store::open_bounded`] (bounded in time; a damaged store is one clear
//! error, never a hang) → bind the port (the caller, so the port is bound
//! only once the store is open) → recover jobs a crash left running → serve
//! on the listener at once (`/healthz` answers 503 "loading") → load the
//! model in the background → the worker starts claiming jobs, and systemd
//! hears `READY=1` (store open, port bound, model loaded).
//!
//! Shutdown, from the caller's `shutdown` future (SIGTERM/SIGINT in
//! `sproutd`, a oneshot in tests) or a failed model load:
//! 1. `STOPPING=1`; new work gets 503 (the server keeps answering);
//! 2. the worker stops claiming; running jobs get `queue.shutdown_grace` to
//!    finish, then are interrupted;
//! 3. listeners are closed so open HTTP requests end; the server drains;
//! 4. interrupted jobs go back to the queue, the store is flushed, exit 0.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::backends::Backends;
use crate::carbon::{Carbon, CarbonError};
use crate::clock::Clock;
use crate::config::Config;
use crate::energy::{self, MeterError};
use crate::engine;
use crate::plan::planner;
use crate::store::{Store, StoreError};
use crate::service::{EngineStatus, Service};
use crate::worker;

/// The longest the deferral promoter sleeps before looking at the held jobs
/// again, whatever the next one's time.
const PROMOTER_MAX_SLEEP: Duration = Duration::from_secs(60);

/// The longest the planner sleeps between looks: it is woken by what makes
/// a solve due (answers, evaluations, reloads, carbon readings, the trace's
/// hour), this only bounds a wall-clock jump.
const PLANNER_MAX_SLEEP: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Carbon(#[from] CarbonError),
    #[error(transparent)]
    Meter(#[from] MeterError),
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
    #[error("{0}")]
    Engine(String),
    #[error(transparent)]
    Token(#[from] crate::config::TokenError),
    #[error("{0}")]
    Backends(String),
    #[error("model.path {0} is not a file: put the model there (scripts/fetch-model.sh fetches the default one), or set model.path")]
    NoModel(String),
}

/// What start-up needs beyond the config file, checked before anything
/// starts (and by `sproutd check-config`): the token file it names and a
/// GGUF model's file. Failing here is a config error (exit status 2, which
/// the unit does not retry: a package installed and started before its
/// model is in place fails once, with the reason).
pub fn preflight(config: &Config) -> Result<(), DaemonError> {
    config.read_token()?;
    for b in &config.backends {
        crate::engine::upstream::Upstream::new(b).map_err(DaemonError::Backends)?;
    }
    if let crate::config::ModelSource::Gguf { path, .. } = &config.model.source {
        if !path.is_file() {
            return Err(DaemonError::NoModel(path.display().to_string()));
        }
    }
    Ok(())
}

fn notify(state: sd_notify::NotifyState) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}


/// Re-reads the config file: its reloadable sections replace the running
/// ones ([`Service::reload`]); a file that is not valid changes nothing.
pub fn reload(svc: &Service, path: &Path) -> Result<crate::service::Reloaded, String> {
    let config = Config::load(path).map_err(|e| match e {
        crate::config::ConfigError::Invalid(errs) => errs.0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "),
        e => e.to_string(),
    })?;
    svc.reload(config, svc.clock().now_s())
}

/// SIGHUP (`systemctl reload`): [`reload`], told to systemd as RELOADING=1
/// then READY=1 with the outcome in STATUS=; a refused reload is logged as
/// an error and the running config stays.
async fn reload_on_sighup(svc: Arc<Service>, path: PathBuf, stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: reloads are off");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {}
            _ = stop.cancelled() => return,
        }
        // systemd hears of reloads only once the service is up (READY=1 means both).
        let up = matches!(svc.engine_status(), EngineStatus::Ready);
        if up {
            notify(sd_notify::NotifyState::Reloading);
            if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
                notify(now);
            }
        }
        let status = match reload(&svc, &path) {
            Ok(r) => {
                tracing::info!(config = %path.display(), carbon_replaced = r.carbon_replaced, "config reloaded: directives, optimizer, evaluator, carbon source and API token");
                if !r.needs_restart.is_empty() {
                    tracing::warn!(sections = ?r.needs_restart, "these sections changed in the file but keep their running values until a restart");
                }
                "config reloaded".to_string()
            }
            Err(e) => {
                tracing::error!(config = %path.display(), error = %e, "reload refused; the running config stays");
                format!("reload refused: {e}")
            }
        };
        if up {
            notify(sd_notify::NotifyState::Status(&status));
            notify(sd_notify::NotifyState::Ready);
        }
    }
}

/// Serves until `shutdown`, on a store [`Store::open_bounded`] opened and a bound
/// listener. With `config_path`, SIGHUP re-reads that file ([`reload`]).
/// Every component keeps time by `clock` ([`Clock::system`] in `sproutd`; a
/// manual one in tests, which move it).
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    store: Store,
    listener: TcpListener,
    clock: Clock,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let store = store.with_clock(clock.clone());
    let addr = listener.local_addr().map_err(DaemonError::Serve)?;
    let token = config.read_token()?;
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(crate::config::TokenError::Missing(addr).into());
    }
    let t0 = std::time::Instant::now();
    let carbon = Arc::new(Carbon::from_config(&config.carbon, clock.now_s())?);
    let meter = energy::detect(&config.accounting)?;
    let metering = Arc::new(std::sync::Mutex::new(energy::Metering::new(meter, &config.accounting)));
    let backends = Arc::new(Backends::from_config(&config, metering.clone(), clock.now_s()).map_err(DaemonError::Backends)?);
    store.recover(config.queue.max_attempts)?;
    let orphans = store.cancel_orphaned_daemon_work().await?;
    if orphans > 0 {
        tracing::info!(jobs = orphans, "cancelled the queued answers of an evaluation run a restart interrupted");
    }
    let (engine_tx, engine_rx) = watch::channel(EngineStatus::Loading);
    let svc = Arc::new(Service::new(config, store, carbon, metering, backends, engine_rx));
    svc.set_token(token.clone());
    tracing::info!(
        %addr,
        data_dir = %svc.config().data_dir.display(),
        queued = svc.store.queued_len(),
        startup_ms = t0.elapsed().as_millis() as u64,
        auth = token.is_some(),
        carbon = %svc.carbon().name(),
        meter = %svc.metering.lock().expect("poisoned").status().meter,
        backends = %svc.backends.describe(),
        "sproutd listening"
    );

    // The components, each until `stop`.
    let stop = CancellationToken::new();
    let interrupt = CancellationToken::new();
    tokio::spawn(carbon_poller(svc.clone(), stop.clone()));
    if let Some(path) = config_path {
        tokio::spawn(reload_on_sighup(svc.clone(), path, stop.clone()));
    }
    tokio::spawn(planner::run(svc.clone(), stop.clone(), PLANNER_MAX_SLEEP));
    tokio::spawn(promoter(svc.clone(), stop.clone()));
    tokio::spawn(svc.backends.clone().run(svc.clock().clone(), stop.clone()));
    // The model loads while the API already answers (503 for generation).
    tokio::spawn(load_model(svc.backends.clone(), svc.config().model.clone(), engine_tx, stop.clone()));
    if let Some(period) = sd_notify::watchdog_enabled() {
        tokio::spawn(watchdog(svc.clone(), stop.clone(), period));
    }
    tokio::spawn(collector(svc.clone(), stop.clone()));
    tokio::spawn(crate::eval::run::scheduler(svc.clone(), stop.clone()));

    let worker = tokio::spawn(worker::run(svc.clone(), stop.clone(), interrupt.clone()));
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    // The shutdown sequence, while the server keeps answering (503).
    {
        let (svc, stop, interrupt) = (svc.clone(), stop.clone(), interrupt.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown => tracing::info!("shutdown requested"),
                _ = stop.cancelled() => {}
            }
            notify(sd_notify::NotifyState::Stopping);
            svc.begin_shutdown();
            stop.cancel();
            let grace = svc.config().queue.shutdown_grace;
            let mut worker = worker;
            if tokio::time::timeout(grace, &mut worker).await.is_err() {
                tracing::warn!(grace_s = grace.as_secs_f64(), "shutdown grace over; interrupting running jobs");
                interrupt.cancel();
                let _ = worker.await;
            }
            svc.close_listeners();
            let _ = drained_tx.send(());
        });
    }
    let header_timeout = svc.config().access.header_read_timeout;
    api::serve::serve(listener, api::router(svc.clone()), header_timeout, async move {
        let _ = drained_rx.await;
    })
    .await
    .map_err(DaemonError::Serve)?;
    let requeued = svc.store.requeue_running()?; // flushes
    tracing::info!(requeued, "sproutd stopped");
    if let EngineStatus::Failed(e) = svc.engine_status() {
        return Err(DaemonError::Engine(e));
    }
    Ok(())
}

/// The carbon source's poller, restarted on the new source when a reload
/// replaces it.
async fn carbon_poller(svc: Arc<Service>, stop: CancellationToken) {
    loop {
        let replaced = svc.carbon_replaced.notified();
        tokio::pin!(replaced);
        replaced.as_mut().enable();
        let this = stop.child_token();
        let poller = tokio::spawn(svc.carbon().run_poller(svc.clock().clone(), this.clone()));
        tokio::select! {
            _ = &mut replaced => {
                this.cancel();
                let _ = poller.await;
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// Deferred jobs enter the queue when their hour comes: sleeps until the
/// earliest held job is due (or one is added), looking again at least every
/// minute (the wall clock may jump).
async fn promoter(svc: Arc<Service>, stop: CancellationToken) {
    loop {
        let added = svc.deferred_added.notified();
        tokio::pin!(added);
        added.as_mut().enable();
        let wait = match svc.promote_deferred().await.and_then(|_| svc.store.next_deferred_ms()) {
            Ok(next) => next.map_or(PROMOTER_MAX_SLEEP, |at| Duration::from_millis(at.saturating_sub(svc.clock().now_ms())).min(PROMOTER_MAX_SLEEP)),
            Err(e) => {
                tracing::error!(error = %e, "queueing deferred jobs failed; retrying");
                Duration::from_millis(500)
            }
        };
        tokio::select! {
            _ = svc.clock().sleep(wait) => {}
            _ = &mut added => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// systemd's watchdog: pings come from the runtime that serves requests, so
/// a wedged runtime stops them and systemd restarts the service; so does a
/// store that cannot write (sled stays failed after an I/O error, a fresh
/// process reopens it once the disk has room again).
async fn watchdog(svc: Arc<Service>, stop: CancellationToken, period: Duration) {
    let mut tick = tokio::time::interval(period / 2);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if svc.store.failure().is_none() {
                    notify(sd_notify::NotifyState::Watchdog);
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// Collects finished jobs' results after `queue.result_retention`, and
/// prompt samples after `evaluator.sample_retention`: at start, then every
/// tenth of the retention (1 s to 10 min) of the daemon's clock.
async fn collector(svc: Arc<Service>, stop: CancellationToken) {
    let retention = svc.config().queue.result_retention;
    let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        let cutoff = svc.clock().now_ms().saturating_sub(retention.as_millis() as u64);
        let svc2 = svc.clone();
        match tokio::task::spawn_blocking(move || svc2.store.collect_finished(cutoff)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(jobs = n, "collected finished jobs past their retention"),
            Ok(Err(e)) => tracing::error!(error = %e, "collecting finished jobs failed"),
            Err(e) => tracing::error!(error = %e, "the collector panicked"),
        }
        let cutoff = svc.clock().now_ms().saturating_sub(svc.config().evaluator.sample_retention.as_millis() as u64);
        let svc2 = svc.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || svc2.store.collect_samples(cutoff)).await {
            tracing::error!(error = %e, "collecting old prompt samples failed");
        }
        tokio::select! {
            _ = svc.clock().sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Loads the embedded model and says so (`engine_tx`, systemd's `READY=1`);
/// a model that fails to load stops the daemon.
async fn load_model(backends: Arc<Backends>, model: crate::config::ModelConfig, engine_tx: watch::Sender<EngineStatus>, stop: CancellationToken) {
    if matches!(model.source, crate::config::ModelSource::None) {
        tracing::info!("no embedded model: answers come from the backends");
        let _ = engine_tx.send(EngineStatus::Ready);
        notify(sd_notify::NotifyState::Ready);
        return;
    }
    let t0 = std::time::Instant::now();
    tracing::info!(model = %model.name, "loading the model");
    match engine::load(&model).await {
        Ok(e) => {
            tracing::info!(model = %model.name, secs = format!("{:.1}", t0.elapsed().as_secs_f64()), "model ready");
            backends.set_embedded(e);
            let _ = engine_tx.send(EngineStatus::Ready);
            notify(sd_notify::NotifyState::Ready);
        }
        Err(e) => {
            tracing::error!(error = %e, "model failed to load; shutting down");
            let _ = engine_tx.send(EngineStatus::Failed(e.to_string()));
            stop.cancel();
        }
    }
}
