//! Small routes: the model list, health, and the fallbacks.

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Json;

use super::error::ApiError;
use super::extract::Path;
use super::AppState;
use crate::config::Word;
use crate::service::EngineStatus;
use crate::wire::{BackendView, CarbonView, Health, List, Model, PlanClass, PlanView, Range};

fn served_model(svc: &crate::service::Service) -> Model {
    Model { id: svc.config().model.name.clone(), object: "model".into(), created: 0, owned_by: "sprout".into() }
}

pub async fn models(State(svc): State<AppState>) -> Json<List<Model>> {
    Json(List::new(vec![served_model(&svc)]))
}

/// `GET /v1/models/{id}`: the served model, or 404.
pub async fn model(State(svc): State<AppState>, Path(id): Path<String>) -> Result<Json<Model>, ApiError> {
    if id != svc.config().model.name {
        return Err(ApiError {
            param: Some("model".into()),
            ..ApiError::not_found("model_not_found", format!("the model {id:?} is not served here; this sproutd serves {:?}", svc.config().model.name))
        });
    }
    Ok(Json(served_model(&svc)))
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
    let body = Health {
        status: label.into(),
        model: svc.config().model.name.clone(),
        engine: model,
        store: failure.map(|e| format!("writes fail: {e}")).unwrap_or_else(|| "ok".into()),
        queued: svc.store.queued_len() as u64,
        version: env!("CARGO_PKG_VERSION").into(),
    };
    (status, Json(body))
}

/// `GET /v1/carbon`: the grid's intensity now, the next 24 hours, and the source.
pub async fn carbon(State(svc): State<AppState>) -> Json<CarbonView> {
    let now = svc.clock().now_s();
    let carbon = svc.carbon();
    let (min, max) = carbon.range();
    Json(CarbonView {
        object: "carbon".into(),
        now: carbon.now(now),
        past: carbon.past(now, crate::carbon::PAST_HOURS),
        forecast: carbon.forecast(now, 24),
        source: carbon.status(now),
        range: Range { min, max },
        unit: "gCO2e/kWh".into(),
    })
}

/// `GET /v1/backends`: every backend, its health, load, grid, energy
/// source and totals since start.
pub async fn backends(State(svc): State<AppState>) -> Json<List<BackendView>> {
    let now = svc.clock().now_s();
    Json(List::new(svc.backends.views(&svc.carbon(), now)))
}

/// `GET /v1/plan`: the optimizer's current plan and its recent solves.
pub async fn plan(State(svc): State<AppState>) -> Json<PlanView> {
    let levels: Vec<String> = svc.directives().names().map(str::to_string).collect();
    let enabled = svc.planner.enabled();
    let status = if enabled { "not solved yet" } else { "the optimizer is off (optimizer.enabled)" };
    let unsolved = PlanView::unsolved(enabled, status, levels, svc.config().directives.mix.clone());
    let Some(s) = svc.planner.current() else {
        return Json(unsolved);
    };
    let classes = s
        .inputs
        .classes
        .iter()
        .zip(&s.plan.classes)
        .zip(&s.sources)
        .enumerate()
        .map(|(k, ((i, p), src))| PlanClass {
            name: i.name.clone(),
            weight: i.weight,
            e_kwh: i.e.clone(),
            p_s: i.p.clone(),
            q: i.q.clone(),
            allowed: (0..i.q.len()).map(|l| i.is_allowed(l)).collect(),
            kept: s.kept.get(k).cloned(),
            x: p.x.clone(),
            expected_g: p.expected_g,
            sources: src.clone(),
        })
        .collect();
    let history = svc.planner.history();
    Json(PlanView {
        enabled: true,
        status: s.plan.status.clone(),
        x: history.last().map(|h| h.x.clone()),
        policy: Some(svc.config().optimizer.policy.as_str().into()),
        ci: Some(s.inputs.ci),
        ci_min: Some(s.inputs.ci_min),
        ci_max: Some(s.inputs.ci_max),
        xi: Some(s.inputs.xi),
        margin: Some(s.inputs.margin),
        floor: Some(s.plan.floor),
        quality: Some(s.plan.quality),
        expected_g: Some(s.plan.expected_g),
        baseline_g: Some(s.plan.baseline_g),
        solve_us: Some(s.plan.solve_us),
        solved_at: Some(s.at_ms / 1000),
        reason: Some(s.reason.clone()),
        classes: Some(classes),
        history: Some(history),
        ..unsolved
    })
}

pub async fn no_route(uri: Uri) -> ApiError {
    ApiError::not_found("unknown_route", format!("no route {}", uri.path()))
}

pub async fn no_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("{method} is not allowed on {}", uri.path()))
}
