//! Small routes: the model list, health, and the fallbacks.

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::error::ApiError;
use super::extract::Path;
use super::AppState;
use crate::service::EngineStatus;

pub async fn models(State(svc): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": svc.config().model.name,
            "object": "model",
            "created": 0,
            "owned_by": "sprout",
        }],
    }))
}

/// `GET /v1/models/{id}`: the served model, or 404.
pub async fn model(State(svc): State<AppState>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    if id != svc.config().model.name {
        return Err(ApiError {
            param: Some("model".into()),
            ..ApiError::not_found("model_not_found", format!("the model {id:?} is not served here; this sproutd serves {:?}", svc.config().model.name))
        });
    }
    Ok(Json(json!({"id": svc.config().model.name, "object": "model", "created": 0, "owned_by": "sprout"})))
}

/// `GET /healthz` and `GET /health` (the name vLLM, llama.cpp's server and mistral.rs use).
pub async fn healthz(State(svc): State<AppState>) -> impl IntoResponse {
    let (status, model) = match svc.engine_status() {
        EngineStatus::Ready if !svc.is_shutting_down() => (StatusCode::OK, "ready".to_string()),
        EngineStatus::Ready => (StatusCode::SERVICE_UNAVAILABLE, "ready".to_string()),
        EngineStatus::Loading => (StatusCode::SERVICE_UNAVAILABLE, "loading".to_string()),
        EngineStatus::Failed(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("failed: {e}")),
    };
    // A store that cannot write cannot accept work: unhealthy, with the reason
    // (systemd's watchdog stops hearing from it too, see `daemon`).
    let failure = svc.store.failure();
    let label = match &failure {
        Some(_) => "unhealthy",
        None if status == StatusCode::OK => "ok",
        None if svc.is_shutting_down() => "stopping",
        None => "starting",
    };
    let status = if failure.is_some() { StatusCode::SERVICE_UNAVAILABLE } else { status };
    let body = json!({
        "status": label,
        "model": svc.config().model.name,
        "engine": model,
        "store": failure.map(|e| format!("writes fail: {e}")).unwrap_or_else(|| "ok".into()),
        "queued": svc.store.queued_len(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    (status, Json(body))
}

/// `GET /v1/carbon`: the grid's intensity now, the next 24 hours, and the source.
pub async fn carbon(State(svc): State<AppState>) -> Json<serde_json::Value> {
    let now = crate::job::now_ms() as i64 / 1000;
    let (min, max) = svc.carbon().range();
    Json(json!({
        "object": "carbon",
        "now": svc.carbon().now(now),
        "past": svc.carbon().past(now, crate::carbon::PAST_HOURS),
        "forecast": svc.carbon().forecast(now, 24),
        "source": svc.carbon().status(now),
        "range": {"min": min, "max": max},
        "unit": "gCO2e/kWh",
    }))
}

/// `GET /v1/backends`: every backend, its health, load, grid, energy
/// source and totals since start.
pub async fn backends(State(svc): State<AppState>) -> Json<crate::backends::BackendList> {
    let now = crate::job::now_ms() as i64 / 1000;
    Json(crate::backends::BackendList { object: "list".into(), data: svc.backends.views(&svc.carbon(), now) })
}

/// `GET /v1/plan`: the optimizer's current plan and its recent solves.
pub async fn plan(State(svc): State<AppState>) -> Json<serde_json::Value> {
    let directives = svc.directives();
    let levels: Vec<&str> = directives.names().collect();
    let Some(s) = svc.planner.current() else {
        let why = if svc.planner.enabled() { "not solved yet" } else { "the optimizer is off (optimizer.enabled)" };
        return Json(json!({
            "object": "plan",
            "enabled": svc.planner.enabled(),
            "status": why,
            "levels": levels,
            "x": svc.config().directives.mix,
        }));
    };
    let classes: Vec<serde_json::Value> = s
        .inputs
        .classes
        .iter()
        .zip(&s.plan.classes)
        .zip(&s.sources)
        .enumerate()
        .map(|(k, ((i, p), src))| {
            json!({
                "name": i.name, "weight": i.weight, "e_kwh": i.e, "p_s": i.p, "q": i.q,
                "allowed": (0..i.q.len()).map(|l| i.is_allowed(l)).collect::<Vec<_>>(),
                "kept": s.kept.get(k),
                "x": p.x, "expected_g": p.expected_g, "sources": src,
            })
        })
        .collect();
    let history = svc.planner.history();
    Json(json!({
        "object": "plan",
        "enabled": true,
        "policy": svc.config().optimizer.policy,
        "levels": levels,
        "ci": s.inputs.ci,
        "ci_min": s.inputs.ci_min,
        "ci_max": s.inputs.ci_max,
        "xi": s.inputs.xi,
        "margin": s.inputs.margin,
        "floor": s.plan.floor,
        "quality": s.plan.quality,
        "expected_g": s.plan.expected_g,
        "baseline_g": s.plan.baseline_g,
        "status": s.plan.status,
        "solve_us": s.plan.solve_us,
        "solved_at": s.at_ms / 1000,
        "reason": s.reason,
        "x": history.last().map(|h| h.x.clone()),
        "classes": classes,
        "history": history,
    }))
}

pub async fn no_route(uri: Uri) -> ApiError {
    ApiError::not_found("unknown_route", format!("no route {}", uri.path()))
}

pub async fn no_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("{method} is not allowed on {}", uri.path()))
}
