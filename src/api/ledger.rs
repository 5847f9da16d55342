//! `GET /v1/ledger`: the accounting records, one per job that reached the
//! engine, as JSON or CSV (`?format=csv`), optionally `?since=` a Unix time
//! in seconds.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::Query;
use super::AppState;
use crate::job::LedgerEntry;
use crate::wire::List;

#[derive(Deserialize)]
pub struct Params {
    since: Option<f64>,
    format: Option<String>,
}

pub const CSV_HEADER: &str = "job_id,origin,state,finished_at,directive,prompt_tokens,completion_tokens,duration_s,energy_j,intensity_gco2_per_kwh,operational_g,embodied_g,carbon_g,estimated,class,deferred,deferral_saving_g,backend,zone";

/// A CSV field, quoted when it holds a comma, quote or line break.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

pub fn csv_row(e: &LedgerEntry) -> String {
    format!(
        "{},{},{},{:.3},{},{},{},{:.6},{:.6},{:.3},{:.9},{:.9},{:.9},{},{},{},{:.9},{},{}",
        e.job_id,
        serde_json::to_value(e.origin).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
        e.state.as_str(),
        e.finished_ms as f64 / 1000.0,
        e.directive,
        e.prompt_tokens,
        e.completion_tokens,
        e.duration_s,
        e.energy_j,
        e.intensity_gco2_per_kwh,
        e.operational_g,
        e.embodied_g,
        e.carbon_g,
        e.estimated,
        e.class,
        e.deferred,
        e.deferral_saving_g,
        field(&e.backend),
        field(&e.zone)
    )
}

pub async fn export(State(svc): State<AppState>, Query(p): Query<Params>) -> Result<Response, ApiError> {
    let since_ms = match p.since {
        None => 0,
        Some(s) if s.is_finite() && s >= 0.0 => (s * 1000.0) as u64,
        Some(_) => return Err(ApiError::invalid("since", "since must be a Unix time in seconds")),
    };
    let entries = svc.store.ledger(since_ms)?;
    match p.format.as_deref() {
        None | Some("json") => Ok(Json(List::new(entries)).into_response()),
        Some("csv") => {
            let mut out = String::from(CSV_HEADER);
            out.push('\n');
            for e in &entries {
                out.push_str(&csv_row(e));
                out.push('\n');
            }
            Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response())
        }
        Some(f) => Err(ApiError::invalid("format", format!("unknown format {f:?}: expected json or csv"))),
    }
}
