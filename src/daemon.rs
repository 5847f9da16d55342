//! `run`: the daemon's life, from opening the store to the last flush.
//!
//! Start-up: open the store (recovering jobs a crash left running) → start
//! serving on the given listener at once (`/healthz` says 503 "loading") →
//! load the model in the background → the worker starts claiming jobs.
//!
//! Shutdown fans out from one [`CancellationToken`]: the caller's `shutdown`
//! future (SIGTERM/SIGINT in `sproutd`, a oneshot in tests) or a failed model
//! load cancels it; new requests then get 503, the worker stops taking jobs
//! and interrupts running ones, listeners are closed so open HTTP requests
//! end, and once the server has drained, interrupted jobs go back to the
//! queue and the store is flushed.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::config::Config;
use crate::engine;
use crate::queue::{Store, StoreError};
use crate::service::{EngineStatus, Service};
use crate::worker;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("creating the data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
    #[error("{0}")]
    Engine(String),
}

pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| DaemonError::DataDir { path: config.data_dir.display().to_string(), source })?;
    let store = Store::open(&config.data_dir)?;
    let (engine_tx, engine_rx) = watch::channel(EngineStatus::Loading);
    let svc = Arc::new(Service::new(config, store, engine_rx));
    let stop = CancellationToken::new();
    tracing::info!(
        addr = %listener.local_addr().map_err(DaemonError::Serve)?,
        data_dir = %svc.config.data_dir.display(),
        queued = svc.store.queued_len(),
        "sproutd listening"
    );

    let model_cfg = svc.config.model.clone();
    let load_stop = stop.clone();
    tokio::spawn(async move {
        let t0 = std::time::Instant::now();
        tracing::info!(model = %model_cfg.name, "loading the model");
        match engine::load(&model_cfg).await {
            Ok(e) => {
                tracing::info!(model = %model_cfg.name, secs = format!("{:.1}", t0.elapsed().as_secs_f64()), "model ready");
                let _ = engine_tx.send(EngineStatus::Ready(e));
            }
            Err(e) => {
                tracing::error!(error = %e, "model failed to load; shutting down");
                let _ = engine_tx.send(EngineStatus::Failed(e.to_string()));
                load_stop.cancel();
            }
        }
    });

    let worker = tokio::spawn(worker::run(svc.clone(), stop.clone()));
    // Once stopping: wait for the worker, then close the listeners so HTTP
    // requests still waiting on a job answer (503) and the server can drain.
    let closer = {
        let (svc, stop) = (svc.clone(), stop.clone());
        tokio::spawn(async move {
            stop.cancelled().await;
            let _ = worker.await;
            svc.close_listeners();
        })
    };
    let trigger = {
        let (svc, stop) = (svc.clone(), stop.clone());
        async move {
            tokio::select! {
                _ = shutdown => tracing::info!("shutdown requested"),
                _ = stop.cancelled() => {}
            }
            svc.begin_shutdown();
            stop.cancel();
        }
    };
    axum::serve(listener, api::router(svc.clone()))
        .with_graceful_shutdown(trigger)
        .await
        .map_err(DaemonError::Serve)?;
    let _ = closer.await;
    let requeued = svc.store.requeue_running()?;
    tracing::info!(requeued, "sproutd stopped");
    if let EngineStatus::Failed(e) = svc.engine_status() {
        return Err(DaemonError::Engine(e));
    }
    Ok(())
}
