//! `POST /v1/chat/completions`: a synchronous job. The request is queued
//! durably like any job, then this handler follows it: for `stream: true`
//! it relays token deltas as SSE chunks ending with `data: [DONE]`, else it
//! answers with the whole `chat.completion` once the job ends.
//!
//! A client that goes away mid-answer cancels its job, so no energy is spent
//! on an answer nobody reads.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, Stream};
use serde_json::json;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::openai::{self, parse_request};
use super::{body_bytes, ensure_serving, idempotency_key, AppState};
use crate::job::{Job, JobState, Origin};
use crate::service::{JobEvent, Service};

/// Cancels the job if dropped before the job ended (the client disconnected).
struct CancelOnDrop {
    svc: Arc<Service>,
    id: String,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.svc.unlisten(&self.id);
            let (svc, id) = (self.svc.clone(), std::mem::take(&mut self.id));
            tokio::spawn(async move {
                match svc.cancel(&id).await {
                    Ok(_) => tracing::info!(job = %id, "client went away; job cancelled"),
                    Err(e) => tracing::debug!(job = %id, error = %e, "client went away after the job ended"),
                }
            });
        }
    }
}

pub async fn completions(
    State(svc): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body, svc.config().max_body_bytes)?;
    let parsed = parse_request(&body, &svc.config(), &svc.directives())?;
    let key = idempotency_key(&headers)?;
    ensure_serving(&svc)?;
    if parsed.deadline.is_some() {
        return Err(ApiError::invalid("deadline", "a chat completion answers now; send jobs with a deadline to /v1/jobs"));
    }
    let sub = svc.submit(Origin::Chat, parsed.priority, parsed.request, None, key, true).await?;
    let Some(rx) = sub.events else {
        // A repeated Idempotency-Key: answer with the earlier job's outcome.
        let job = svc.wait_finished(&sub.job.id).await?;
        return replay(job, parsed.stream, parsed.include_usage);
    };
    let guard = CancelOnDrop { svc: svc.clone(), id: sub.job.id.clone(), armed: true };
    if parsed.stream {
        Ok(Sse::new(sse_stream(sub.job, rx, guard, parsed.include_usage)).into_response())
    } else {
        wait_and_answer(rx, guard).await
    }
}

/// The answer of a job that already ended, as a completion or a short stream.
fn replay(job: Job, stream: bool, include_usage: bool) -> Result<Response, ApiError> {
    let Some(result) = &job.result else { return Err(job_error(&job)) };
    if !stream {
        return Ok(Json(openai::completion(&job)).into_response());
    }
    let mut events = vec![
        data(openai::chunk(&job, json!({"role": "assistant", "content": ""}), None, None)),
        data(openai::chunk(&job, json!({"content": result.text}), None, None)),
    ];
    events.extend(openai::closing_chunks(&job, result, openai::usage(&job)).into_iter().map(data));
    if include_usage {
        events.push(data(openai::usage_chunk(&job)));
    }
    events.push(Event::default().data("[DONE]"));
    Ok(Sse::new(stream::iter(events.into_iter().map(Ok::<_, Infallible>))).into_response())
}

async fn wait_and_answer(mut rx: mpsc::UnboundedReceiver<JobEvent>, mut guard: CancelOnDrop) -> Result<Response, ApiError> {
    loop {
        match rx.recv().await {
            Some(JobEvent::Delta(_) | JobEvent::Interrupted(_)) => continue,
            Some(JobEvent::Finished(job)) => {
                guard.armed = false;
                return match openai::completion(&job) {
                    Some(body) => Ok((StatusCode::OK, Json(body)).into_response()),
                    None => Err(job_error(&job)),
                };
            }
            None => {
                guard.armed = false;
                // The client is told to retry, so a job still queued must not
                // run after a restart for nobody. (One that was running is
                // requeued by the drain; that case is not covered yet.)
                match guard.svc.store.cancel_because(&guard.id, "sproutd stopped; its client was told to retry").await {
                    Ok(crate::store::CancelOutcome::Cancelled(_)) => {
                        tracing::info!(job = %guard.id, "stopping: a waiting client's queued job cancelled")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(job = %guard.id, error = %e, "stopping: cancelling a waiting client's job failed"),
                }
                return Err(ApiError::unavailable("sproutd stopped before the answer was ready; retry"));
            }
        }
    }
}

fn job_error(job: &Job) -> ApiError {
    let msg = job.error.clone().unwrap_or_else(|| format!("job {} ended {}", job.id, job.state.as_str()));
    match job.state {
        JobState::Cancelled => ApiError::new(StatusCode::CONFLICT, "job_cancelled", msg),
        _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "generation_failed", msg),
    }
}

enum Phase {
    Start,
    Tokens,
    /// Closing chunks still to send, then the usage chunk if asked.
    Closing(Vec<serde_json::Value>, Option<Box<Job>>),
    Done,
    End,
}

struct StreamState {
    job: Job,
    rx: mpsc::UnboundedReceiver<JobEvent>,
    guard: CancelOnDrop,
    include_usage: bool,
    phase: Phase,
}

fn data(v: impl serde::Serialize) -> Event {
    Event::default().data(serde_json::to_string(&v).expect("a JSON value serializes"))
}

fn sse_stream(
    job: Job,
    rx: mpsc::UnboundedReceiver<JobEvent>,
    guard: CancelOnDrop,
    include_usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let st = StreamState { job, rx, guard, include_usage, phase: Phase::Start };
    stream::unfold(st, |mut st| async move {
        let event = match std::mem::replace(&mut st.phase, Phase::Tokens) {
            Phase::Start => data(openai::chunk(&st.job, json!({"role": "assistant", "content": ""}), None, None)),
            Phase::Tokens => match st.rx.recv().await {
                Some(JobEvent::Delta(piece)) => data(openai::chunk(&st.job, json!({"content": piece}), None, None)),
                Some(JobEvent::Interrupted(why)) => {
                    // The job itself goes on (elsewhere): only this stream ends.
                    st.guard.armed = false;
                    st.phase = Phase::Done;
                    data(ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "backend_failed",
                        format!("{why}; job {} was requeued and will finish elsewhere: GET /v1/jobs/{}", st.job.id, st.job.id),
                    ).body())
                }
                Some(JobEvent::Finished(done)) => {
                    st.guard.armed = false;
                    match done.result.as_ref() {
                        Some(r) => {
                            // The receipt rides on the last chunk always; with
                            // include_usage it also comes as OpenAI's usage-only chunk.
                            let mut closing = openai::closing_chunks(&st.job, r, openai::usage(&done));
                            closing.reverse();
                            let first = closing.pop().expect("a finishing chunk");
                            st.phase = Phase::Closing(closing, st.include_usage.then(|| Box::new(done)));
                            data(first)
                        }
                        None => {
                            st.phase = Phase::Done;
                            data(job_error(&done).body())
                        }
                    }
                }
                None => {
                    st.guard.armed = false;
                    st.phase = Phase::Done;
                    data(ApiError::unavailable("sproutd stopped before the answer was complete").body())
                }
            },
            Phase::Closing(mut rest, usage) => {
                match rest.pop() {
                    Some(next) => {
                        st.phase = Phase::Closing(rest, usage);
                        data(next)
                    }
                    None => match usage {
                        Some(done) => {
                            st.phase = Phase::Done;
                            data(openai::usage_chunk(&done))
                        }
                        None => {
                            st.phase = Phase::End;
                            Event::default().data("[DONE]")
                        }
                    },
                }
            }
            Phase::Done => {
                st.phase = Phase::End;
                Event::default().data("[DONE]")
            }
            Phase::End => return None,
        };
        Some((Ok(event), st))
    })
}
