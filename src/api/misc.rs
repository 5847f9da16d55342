//! Small routes: the model list, health, and the fallbacks.

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::service::EngineStatus;

pub async fn models(State(svc): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": svc.config.model.name,
            "object": "model",
            "created": 0,
            "owned_by": "sprout",
        }],
    }))
}

pub async fn healthz(State(svc): State<AppState>) -> impl IntoResponse {
    let (status, model) = match svc.engine_status() {
        EngineStatus::Ready(_) if !svc.is_shutting_down() => (StatusCode::OK, "ready".to_string()),
        EngineStatus::Ready(_) => (StatusCode::SERVICE_UNAVAILABLE, "ready".to_string()),
        EngineStatus::Loading => (StatusCode::SERVICE_UNAVAILABLE, "loading".to_string()),
        EngineStatus::Failed(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("failed: {e}")),
    };
    let body = json!({
        "status": if status == StatusCode::OK { "ok" } else if svc.is_shutting_down() { "stopping" } else { "starting" },
        "model": svc.config.model.name,
        "engine": model,
        "queued": svc.store.queued_len(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    (status, Json(body))
}

/// `GET /v1/carbon`: the grid's intensity now, the next 24 hours, and the source.
pub async fn carbon(State(svc): State<AppState>) -> Json<serde_json::Value> {
    let now = crate::job::now_ms() as i64 / 1000;
    let (min, max) = svc.carbon.range();
    Json(json!({
        "object": "carbon",
        "now": svc.carbon.now(now),
        "forecast": svc.carbon.forecast(now, 24),
        "source": svc.carbon.status(now),
        "range": {"min": min, "max": max},
        "unit": "gCO2e/kWh",
    }))
}

pub async fn no_route(uri: Uri) -> ApiError {
    ApiError::not_found("unknown_route", format!("no route {}", uri.path()))
}

pub async fn no_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("{method} is not allowed on {}", uri.path()))
}
