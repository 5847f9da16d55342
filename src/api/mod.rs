//! The HTTP API. [`router`] is the one place that lists every route.
//!
//! | route | handler |
//! |---|---|
//! | `POST /v1/chat/completions` | [`chat::completions`]: OpenAI chat completion, `stream` for SSE |
//! | `GET /v1/models` | [`misc::models`] |
//! | `GET /v1/models/{id}` | [`misc::model`]: the served model, or 404 |
//! | `POST /v1/jobs` | [`jobs::submit`]: queue a job, answer at once |
//! | `GET /v1/jobs` | [`jobs::list`] |
//! | `GET /v1/jobs/{id}` | [`jobs::get`] (`?wait=SECONDS` waits for the end) |
//! | `DELETE /v1/jobs/{id}` | [`jobs::cancel`] |
//! | `GET /v1/ledger` | [`ledger::export`]: accounting records, JSON or CSV |
//! | `GET /v1/carbon` | [`misc::carbon`]: grid intensity now, the next 24 h, the source |
//! | `GET /v1/plan` | [`misc::plan`]: the optimizer's current plan (CI, floor, e, p, q, x) and recent solves |
//! | `POST /v1/eval/runs` | [`eval::start`]: force an evaluation run (`"wait": true` answers with it) |
//! | `GET /v1/eval/runs` | [`eval::history`]: evaluation runs, newest first |
//! | `GET /v1/eval/runs/{id}` | [`eval::get`]: one run with its per-prompt verdicts |
//! | `GET /v1/eval/status` | [`eval::status`]: the last q, the next planned run and why |
//! | `GET /v1/stats` | [`stats::stats`]: totals, savings against L0, the mix, per-level means |
//! | `GET /metrics` | [`stats::metrics`]: Prometheus text format |
//! | `GET /healthz`, `GET /health` | [`misc::healthz`]: 200 once the model is loaded, 503 before |
//!
//! Unknown routes and methods, bad query strings and paths answer in the
//! OpenAI error shape too ([`extract`]). With an API token configured, every
//! route but `/healthz` and `/health` requires it ([`auth`]). In front of every route,
//! [`guard`] checks `Host`, `Origin`, that bodies are JSON, and how long they
//! take; [`serve`] times out slow headers.

pub mod auth;
pub mod eval;
pub mod chat;
pub mod error;
pub mod extract;
pub mod guard;
pub mod jobs;
pub mod ledger;
pub mod misc;
pub mod openai;
pub mod serve;
pub mod stats;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;

use crate::service::{EngineStatus, Service};
use error::ApiError;

pub type AppState = Arc<Service>;

/// Every route. With an API token (`Service::token`), all but `/healthz` and `/health` need `Authorization: Bearer <token>`.
pub fn router(svc: AppState) -> Router {
    let limit = svc.config().max_body_bytes;
    let protected = Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/models", get(misc::models))
        .route("/v1/models/{*id}", get(misc::model))
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::get).delete(jobs::cancel))
        .route("/v1/ledger", get(ledger::export))
        .route("/v1/carbon", get(misc::carbon))
        .route("/v1/backends", get(misc::backends))
        .route("/v1/plan", get(misc::plan))
        .route("/v1/eval/runs", post(eval::start).get(eval::history))
        .route("/v1/eval/runs/{id}", get(eval::get))
        .route("/v1/eval/status", get(eval::status))
        .route("/v1/stats", get(stats::stats))
        .route("/metrics", get(stats::metrics))
        .fallback(misc::no_route)
        .method_not_allowed_fallback(misc::no_method)
        .layer(middleware::from_fn_with_state(svc.clone(), auth::require_token));
    let guard = Arc::new(guard::Guard {
        access: svc.config().access.clone(),
        listen: svc.config().listen,
        max_body_bytes: limit,
    });
    Router::new()
        .route("/healthz", get(misc::healthz))
        .route("/health", get(misc::healthz))
        .method_not_allowed_fallback(misc::no_method)
        .merge(protected)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(guard, guard::guard))
        .with_state(svc)
}

/// The body, or 413 / 400 in the OpenAI shape.
pub fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    match body {
        Ok(b) => Ok(b),
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::too_large(limit)),
        Err(r) => Err(ApiError::bad_json(format!("cannot read the request body: {r}"))),
    }
}

/// The `Idempotency-Key` header, if sent (at most 255 visible ASCII characters).
pub fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    match v.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(k.to_string())),
        _ => Err(ApiError::invalid("Idempotency-Key", "the Idempotency-Key header must be 1 to 255 visible ASCII characters")),
    }
}

/// Generation needs the model (or an upstream backend, which answers while
/// the embedded model still loads); new work is refused while shutting down.
pub fn ensure_serving(svc: &Service) -> Result<(), ApiError> {
    if svc.is_shutting_down() {
        return Err(ApiError::unavailable("sproutd is shutting down"));
    }
    match svc.engine_status() {
        EngineStatus::Ready => Ok(()),
        EngineStatus::Loading if svc.backends.all().iter().any(|b| b.kind != "embedded") => Ok(()),
        EngineStatus::Loading => Err(ApiError::unavailable("the model is still loading; retry shortly")),
        EngineStatus::Failed(e) => Err(ApiError::unavailable(format!("the model failed to load: {e}"))),
    }
}
