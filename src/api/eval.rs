//! The quality evaluator's routes: force a run, its status, its history.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{Path, Query};
use super::{body_bytes, AppState};
use crate::eval::run::{self, EvalError, RunOptions, RunSlot};
use crate::eval::EvalRun;
use crate::wire::{EvalRunReply, EvalRunRequest, EvalRunSummary, EvalStarted, EvalStatus, List};

impl From<EvalError> for ApiError {
    fn from(e: EvalError) -> Self {
        match e {
            EvalError::AlreadyRunning | EvalError::NoSamples => ApiError::new(StatusCode::CONFLICT, "evaluation_unavailable", e.to_string()),
            EvalError::Judge(_) => ApiError::new(StatusCode::BAD_GATEWAY, "judge_failed", e.to_string()),
            EvalError::Store(e) => e.into(),
            EvalError::Submit(e) => e.into(),
        }
    }
}

/// `POST /v1/eval/runs`: forces a run; `"wait": true` answers with the run.
pub async fn start(State(svc): State<AppState>, body: Result<Bytes, BytesRejection>) -> Result<impl IntoResponse, ApiError> {
    let body = body_bytes(body, svc.config().max_body_bytes)?;
    let b: EvalRunRequest = if body.iter().all(u8::is_ascii_whitespace) {
        EvalRunRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_json(format!("eval run body: {e}")))?
    };
    if b.prompts == Some(0) {
        return Err(ApiError::invalid("prompts", "prompts must be at least 1"));
    }
    if let Some(u) = &b.judge_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(ApiError::invalid("judge_url", format!("{u:?} is not an http:// or https:// URL")));
        }
    }
    if svc.store.samples_len() == 0 {
        return Err(EvalError::NoSamples.into());
    }
    let slot = RunSlot::take(&svc)?;
    let opts = RunOptions { prompts: b.prompts, judge_url: b.judge_url, judge_model: b.judge_model, reason: "forced".into() };
    // The run is its own task: a client that hangs up while waiting does not stop it.
    let task = run::spawn(slot, opts);
    if b.wait {
        let run = task.await.map_err(|e| {
            tracing::error!(error = %e, "the evaluation run panicked");
            ApiError::internal()
        })??;
        return Ok((StatusCode::OK, Json(EvalRunReply::Finished(Box::new(run)))));
    }
    Ok((StatusCode::ACCEPTED, Json(EvalRunReply::Started(EvalStarted { object: "eval.run".into(), state: "running".into() }))))
}

pub async fn status(State(svc): State<AppState>) -> Result<Json<EvalStatus>, ApiError> {
    Ok(Json(run::status(&svc)?))
}

#[derive(Deserialize)]
pub struct HistoryParams {
    limit: Option<usize>,
}

/// `GET /v1/eval/runs`: newest first, without the per-prompt verdicts.
pub async fn history(State(svc): State<AppState>, Query(p): Query<HistoryParams>) -> Result<Json<List<EvalRunSummary>>, ApiError> {
    let runs = svc.store.eval_runs(p.limit.unwrap_or(20).clamp(1, 1000))?;
    Ok(Json(List::new(runs.iter().map(EvalRunSummary::from).collect())))
}

pub async fn get(State(svc): State<AppState>, Path(id): Path<String>) -> Result<Json<EvalRun>, ApiError> {
    for run in svc.store.eval_runs_iter() {
        let run = run?;
        if run.id == id {
            return Ok(Json(run));
        }
    }
    Err(ApiError::not_found("eval_run_not_found", format!("no evaluation run {id}")))
}
