//! The HTTP API. [`router`] is the one place that lists every route.
//!
//! | route | handler |
//! |---|---|
//! | `POST /v1/chat/completions` | [`chat::completions`]: OpenAI chat completion, `stream` for SSE |
//! | `GET /v1/models` | [`misc::models`] |
//! | `POST /v1/jobs` | [`jobs::submit`]: queue a job, answer at once |
//! | `GET /v1/jobs` | [`jobs::list`] |
//! | `GET /v1/jobs/{id}` | [`jobs::get`] (`?wait=SECONDS` waits for the end) |
//! | `DELETE /v1/jobs/{id}` | [`jobs::cancel`] |
//! | `GET /healthz` | [`misc::healthz`]: 200 once the model is loaded, 503 before |
//!
//! Unknown routes and methods answer in the OpenAI error shape too.

pub mod chat;
pub mod error;
pub mod jobs;
pub mod misc;
pub mod openai;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;

use crate::service::{EngineStatus, Service};
use error::ApiError;

pub type AppState = Arc<Service>;

pub fn router(svc: AppState) -> Router {
    let limit = svc.config.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/models", get(misc::models))
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::get).delete(jobs::cancel))
        .route("/healthz", get(misc::healthz))
        .fallback(misc::no_route)
        .method_not_allowed_fallback(misc::no_method)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(svc)
}

/// The body, or 413 / 400 in the OpenAI shape.
pub fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    match body {
        Ok(b) => Ok(b),
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("request body is larger than the configured limit of {limit} bytes"),
        )),
        Err(r) => Err(ApiError::bad_json(format!("cannot read the request body: {r}"))),
    }
}

/// Generation needs the model; new work is refused while shutting down.
pub fn ensure_serving(svc: &Service) -> Result<(), ApiError> {
    if svc.is_shutting_down() {
        return Err(ApiError::unavailable("sproutd is shutting down"));
    }
    match svc.engine_status() {
        EngineStatus::Ready(_) => Ok(()),
        EngineStatus::Loading => Err(ApiError::unavailable("the model is still loading; retry shortly")),
        EngineStatus::Failed(e) => Err(ApiError::unavailable(format!("the model failed to load: {e}"))),
    }
}
