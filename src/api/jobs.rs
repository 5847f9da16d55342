//! The asynchronous job API: `POST /v1/jobs` queues a chat request and
//! answers at once (after the job is on disk); the others read and cancel.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{Path, Query};
use super::openai::{job_view, parse_request};
use super::{body_bytes, idempotency_key, AppState};
use crate::job::{Job, JobState, Origin};
use crate::service::Service;
use crate::wire::{JobView, List};

/// The longest `?wait=` honoured, seconds.
const MAX_WAIT_S: f64 = 300.0;

pub async fn submit(
    State(svc): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let body = body_bytes(body, svc.config().max_body_bytes)?;
    let parsed = parse_request(&body, &svc.config(), &svc.directives())?;
    if parsed.stream {
        return Err(ApiError::invalid("stream", "jobs are not streamed; use /v1/chat/completions to stream"));
    }
    let key = idempotency_key(&headers)?;
    // Queued even while the model loads: the worker starts once it is ready.
    let sub = svc.submit(Origin::Job, parsed.priority, parsed.request, parsed.deadline, key, false).await?;
    // 202 for a new job; 200 with the earlier job for a repeated Idempotency-Key.
    let status = if sub.created { StatusCode::ACCEPTED } else { StatusCode::OK };
    // No position here: counting the jobs ahead costs O(queue) per submit,
    // which under load would dominate; GET /v1/jobs/{id} reports it.
    Ok((status, Json(job_view(&sub.job))))
}

/// Jobs as the API shows them, each with its queue position (one walk of
/// the queue for all of them; `null` unless queued) and, while running, the
/// completion tokens produced so far.
fn views(svc: &Service, jobs: &[Job]) -> Result<Vec<JobView>, ApiError> {
    let positions = svc.store.positions(jobs)?;
    Ok(jobs
        .iter()
        .map(|j| JobView {
            position: positions.get(&j.id).map(|&p| p as u64),
            tokens_so_far: if j.state == JobState::Running { svc.tokens_so_far(&j.id) } else { None },
            ..job_view(j)
        })
        .collect())
}

fn view(svc: &Service, job: Job) -> Result<Json<JobView>, ApiError> {
    Ok(Json(views(svc, std::slice::from_ref(&job))?.remove(0)))
}

#[derive(Deserialize)]
pub struct GetParams {
    wait: Option<f64>,
}

pub async fn get(
    State(svc): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<GetParams>,
) -> Result<Json<JobView>, ApiError> {
    let mut changes = svc.subscribe_changes();
    let mut job = svc.store.get(&id)?;
    if let Some(wait) = params.wait {
        if !(wait.is_finite() && wait >= 0.0) {
            return Err(ApiError::invalid("wait", "wait must be a non-negative number of seconds"));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(wait.min(MAX_WAIT_S));
        while !job.state.is_terminal() {
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => job = svc.store.get(&id)?,
                _ => break,
            }
        }
    }
    view(&svc, job)
}

#[derive(Deserialize)]
pub struct ListParams {
    state: Option<String>,
    limit: Option<usize>,
}

pub async fn list(State(svc): State<AppState>, Query(params): Query<ListParams>) -> Result<Json<List<JobView>>, ApiError> {
    let state = match params.state.as_deref() {
        None => None,
        Some(s) => Some(parse_state(s).ok_or_else(|| {
            ApiError::invalid("state", format!("unknown state {s:?}: expected deferred, queued, running, succeeded, failed or cancelled"))
        })?),
    };
    let limit = params.limit.unwrap_or(100).clamp(1, 10_000);
    let jobs = svc.store.list(state, limit)?;
    Ok(Json(List::new(views(&svc, &jobs)?)))
}

fn parse_state(s: &str) -> Option<JobState> {
    [JobState::Deferred, JobState::Queued, JobState::Running, JobState::Succeeded, JobState::Failed, JobState::Cancelled]
        .into_iter()
        .find(|st| st.as_str() == s)
}

pub async fn cancel(State(svc): State<AppState>, Path(id): Path<String>) -> Result<Json<JobView>, ApiError> {
    let job = svc.cancel(&id).await?;
    view(&svc, job)
}
