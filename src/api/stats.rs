//! `GET /v1/stats` (totals, savings against the baseline level, the directive
//! mix, per-level means) and `GET /metrics` (Prometheus text format).

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::Query;
use super::AppState;
use crate::service::EngineStatus;
use crate::energy::MeterStatus;
use crate::stats::Totals;
use crate::wire::{DeferralTotals, OwnWork, QueueCounts, Savings, Stats};

#[derive(Deserialize)]
pub struct Params {
    since: Option<f64>,
}

pub async fn stats(State(svc): State<AppState>, Query(p): Query<Params>) -> Result<Json<Stats>, ApiError> {
    let totals = match p.since {
        None => svc.store.totals(),
        Some(s) if s.is_finite() && s >= 0.0 => Totals::from_entries(&svc.store.ledger((s * 1000.0) as u64)?),
        Some(_) => return Err(ApiError::invalid("since", "since must be a Unix time in seconds")),
    };
    let baseline = svc.directives().names().next().unwrap_or("L0").to_string();
    let queue = QueueCounts {
        deferred: svc.store.deferred_len() as u64,
        queued: svc.store.queued_len() as u64,
        running: svc.store.running_len() as u64,
    };
    let meter = svc.metering.lock().expect("poisoned").status();
    Ok(Json(body(&totals, p.since, &baseline, meter, queue)))
}

/// `GET /v1/stats`' body: `totals` (from `since`, Unix s) with the savings
/// against `baseline`, the meter and the queue now.
pub fn body(totals: &Totals, since: Option<f64>, baseline: &str, meter: MeterStatus, queue: QueueCounts) -> Stats {
    let (all, own) = (totals.overall(), totals.own());
    Stats {
        object: "stats".into(),
        since,
        requests: all.requests,
        prompt_tokens: all.prompt_tokens,
        completion_tokens: all.completion_tokens,
        energy_j: all.energy_j,
        operational_g: all.operational_g,
        embodied_g: all.embodied_g,
        carbon_g: all.carbon_g,
        user_requests: totals.user_requests(),
        own_work: OwnWork {
            requests: own.requests,
            completion_tokens: own.completion_tokens,
            energy_j: own.energy_j,
            carbon_g: own.carbon_g,
            what: "the daemon's own work (quality evaluation runs): in the totals above, not in the savings, the directive mix or the per-level means".into(),
        },
        savings: Savings {
            carbon_g: totals.savings_g(baseline),
            baseline: baseline.into(),
            method: "each user request at another level against the running mean energy and embodied carbon of succeeded baseline user requests, at the intensity it met".into(),
        },
        deferral: DeferralTotals {
            jobs: totals.deferred_jobs,
            saving_g: totals.deferral_saving_g,
            method: "each deferred job's energy x (intensity when submitted - intensity when it ran); apart from the directives' savings".into(),
        },
        estimated_requests: totals.estimated,
        measured_requests: totals.measured,
        meter,
        levels: totals.per_level(),
        queue,
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

fn histogram(out: &mut String, name: &str, help: &str, series: &[(&str, &crate::stats::Histogram)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (labels, h) in series {
        for (le, n) in h.buckets() {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
    }
}

/// The latency and size histograms, by origin.
fn latencies(out: &mut String, svc: &crate::service::Service) {
    let l = svc.latencies.lock().expect("poisoned").clone();
    let by_origin = |f: fn(&crate::stats::Latencies) -> &crate::stats::Histogram| [("origin=\"user\"", f(&l[0])), ("origin=\"daemon\"", f(&l[1]))];
    histogram(out, "sproutd_queue_wait_seconds", "Succeeded requests: from when they could run (submitted, or their deferral's end) to the engine.", &by_origin(|l| &l.queue_wait_s));
    histogram(out, "sproutd_time_to_first_token_seconds", "Succeeded requests: from when they could run to their first token.", &by_origin(|l| &l.time_to_first_token_s));
    histogram(out, "sproutd_request_duration_seconds", "Succeeded requests: from when they could run to their last token.", &by_origin(|l| &l.request_s));
    histogram(out, "sproutd_time_per_output_token_seconds", "Succeeded requests: time between tokens after the first.", &by_origin(|l| &l.time_per_output_token_s));
    histogram(out, "sproutd_request_prompt_tokens", "Succeeded requests: prompt tokens.", &by_origin(|l| &l.prompt_tokens));
    histogram(out, "sproutd_request_completion_tokens", "Succeeded requests: completion tokens.", &by_origin(|l| &l.completion_tokens));
}

/// Per backend (`backend` label: `local` or an upstream's name).
fn backend_metrics(out: &mut String, views: &[crate::backends::BackendView]) {
    let by = |f: &dyn Fn(&crate::backends::BackendView) -> f64| -> Vec<(String, f64)> {
        views.iter().map(|v| (format!("backend=\"{}\"", v.name), f(v))).collect()
    };
    metric(out, "sproutd_backend_up", "gauge", "1 while a backend is healthy and ready; 0 while down (probed back with backoff) or loading.", &by(&|v| (v.healthy && v.ready) as u8 as f64));
    metric(out, "sproutd_backend_running", "gauge", "Requests running on a backend.", &by(&|v| v.running as f64));
    metric(out, "sproutd_backend_capacity", "gauge", "Requests a backend runs at once.", &by(&|v| v.capacity as f64));
    metric(out, "sproutd_backend_requests_total", "counter", "Requests a backend answered since start.", &by(&|v| v.requests as f64));
    metric(out, "sproutd_backend_faults_total", "counter", "Answers a backend failed since start (each job went back to the queue).", &by(&|v| v.faults as f64));
    metric(out, "sproutd_backend_energy_joules_total", "counter", "Energy of the requests a backend answered since start.", &by(&|v| v.energy_j));
    metric(out, "sproutd_backend_carbon_grams_total", "counter", "Carbon of the requests a backend answered since start, gCO2e.", &by(&|v| v.carbon_g));
    metric(out, "sproutd_backend_grid_intensity_gco2_per_kwh", "gauge", "A backend's grid intensity now.", &by(&|v| v.gco2_per_kwh));
    metric(out, "sproutd_backend_expected_grams_per_token", "gauge", "What routing compares: a backend's expected gCO2e per completion token now.", &by(&|v| v.expected_g_per_token));
}

pub async fn metrics(State(svc): State<AppState>) -> impl IntoResponse {
    let t = svc.store.totals();
    let directives = svc.directives();
    let levels: Vec<&str> = directives.names().collect();
    // Counters by directive level and origin (users' requests, or the
    // daemon's own evaluation work).
    let by_origin = |f: &dyn Fn(&crate::stats::LevelTotals) -> Vec<(&'static str, f64)>| -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for (origin, map) in [("user", &t.by_level), ("daemon", &t.own_by_level)] {
            for l in &levels {
                for (kind, v) in f(&map.get(*l).cloned().unwrap_or_default()) {
                    let kind = if kind.is_empty() { String::new() } else { format!(",kind=\"{kind}\"") };
                    out.push((format!("directive=\"{l}\",origin=\"{origin}\"{kind}"), v));
                }
            }
        }
        out
    };
    let mut out = String::new();
    metric(&mut out, "sproutd_up", "gauge", "1 while sproutd serves with its model loaded.", &[(
        String::new(),
        matches!(svc.engine_status(), EngineStatus::Ready) as u8 as f64,
    )]);
    metric(&mut out, "sproutd_store_errors_total", "counter", "Job store writes and flushes that failed (I/O) since start; /healthz is 503 while the latest stands.", &[(
        String::new(),
        svc.store.io_errors() as f64,
    )]);
    metric(&mut out, "sproutd_jobs", "gauge", "Jobs in the queue by state.", &[
        ("state=\"deferred\"".into(), svc.store.deferred_len() as f64),
        ("state=\"queued\"".into(), svc.store.queued_len() as f64),
        ("state=\"running\"".into(), svc.store.running_len() as f64),
    ]);
    metric(&mut out, "sproutd_requests_total", "counter", "Requests that reached the engine, by directive level and origin.", &by_origin(&|l| vec![("", l.requests as f64)]));
    metric(&mut out, "sproutd_tokens_total", "counter", "Tokens processed, by directive level, origin and kind.", &by_origin(&|l| {
        vec![("prompt", l.prompt_tokens as f64), ("completion", l.completion_tokens as f64)]
    }));
    metric(&mut out, "sproutd_energy_joules_total", "counter", "Energy attributed to requests (see sproutd_requests_estimated_total).", &by_origin(&|l| vec![("", l.energy_j)]));
    metric(&mut out, "sproutd_carbon_grams_total", "counter", "Carbon attributed to requests, gCO2e.", &by_origin(&|l| vec![("operational", l.operational_g), ("embodied", l.embodied_g)]));
    metric(&mut out, "sproutd_requests_estimated_total", "counter", "Requests whose energy was estimated rather than measured.", &[(String::new(), t.estimated as f64)]);
    metric(&mut out, "sproutd_requests_measured_total", "counter", "Requests whose energy was measured.", &[(String::new(), t.measured as f64)]);
    if let Some(s) = t.savings_g(levels.first().copied().unwrap_or("L0")) {
        // A gauge: the net saving so far, from running means, which a new
        // request can lower (a counter must never decrease).
        metric(&mut out, "sproutd_carbon_saved_grams", "gauge", "Net carbon saved so far against serving every user request at the baseline level, gCO2e (can fall as the means move).", &[(String::new(), s)]);
    }
    metric(&mut out, "sproutd_deferral_saved_grams", "gauge", "Net carbon saved so far by holding jobs with a deadline for low-carbon hours, gCO2e (a job that ran dirtier than forecast lowers it).", &[(String::new(), t.deferral_saving_g)]);
    let total = t.user_requests().max(1) as f64;
    let share: Vec<(String, f64)> =
        levels.iter().map(|l| (format!("directive=\"{l}\""), t.by_level.get(*l).map(|x| x.requests as f64 / total).unwrap_or(0.0))).collect();
    metric(&mut out, "sproutd_directive_share_ratio", "gauge", "Share of users' requests served at each level so far.", &share);
    let plan = svc.planner.current();
    let planned = svc.planner.history().last().map(|h| h.x.clone()).unwrap_or_else(|| svc.config().directives.mix.clone());
    let mix: Vec<(String, f64)> = levels.iter().zip(&planned).map(|(l, w)| (format!("directive=\"{l}\""), *w)).collect();
    metric(&mut out, "sproutd_directive_mix_ratio", "gauge", "The mix for requests that pin no level (the optimizer's plan, over all classes).", &mix);
    if let Some(s) = &plan {
        metric(&mut out, "sproutd_plan_quality_floor", "gauge", "The optimizer's quality floor, relative to all-baseline.", &[(String::new(), s.plan.floor)]);
        metric(&mut out, "sproutd_plan_solve_seconds", "gauge", "Time of the last solve.", &[(String::new(), s.plan.solve_us as f64 / 1e6)]);
        metric(&mut out, "sproutd_plan_fallback", "gauge", "1 when the last solve fell back to all-baseline.", &[(String::new(), s.plan.is_fallback() as u8 as f64)]);
    }
    metric(&mut out, "sproutd_evaluation_runs_total", "counter", "Quality evaluation runs stored.", &[(String::new(), svc.store.eval_runs_len() as f64)]);
    if let Some(q) = svc.store.eval_runs_iter().find_map(|r| r.ok().and_then(|r| r.q)) {
        let qs: Vec<(String, f64)> = levels.iter().zip(q).map(|(l, v)| (format!("directive=\"{l}\""), v)).collect();
        metric(&mut out, "sproutd_evaluation_quality", "gauge", "The newest evaluation's q: share of prompts each level won.", &qs);
    }
    let t_now = svc.clock().now_s();
    let now = svc.carbon().now(t_now).gco2_per_kwh;
    metric(&mut out, "sproutd_grid_intensity_gco2_per_kwh", "gauge", "Grid carbon intensity now.", &[(String::new(), now)]);
    let source = svc.carbon().status(t_now);
    metric(&mut out, "sproutd_carbon_source_fallback", "gauge", "1 while the carbon source's fallback is in use.", &[(
        format!("source=\"{}\"", source.kind),
        source.fallback as u8 as f64,
    )]);
    if let Some(age) = source.age_s {
        metric(&mut out, "sproutd_carbon_source_age_seconds", "gauge", "Age of the last good carbon-intensity reading.", &[(String::new(), age as f64)]);
    }
    let meter = svc.metering.lock().expect("poisoned").status();
    metric(&mut out, "sproutd_energy_meter_measured", "gauge", "1 when energy comes from a hardware counter, 0 when estimated.", &[(
        format!("meter=\"{}\"", meter.meter.split(' ').next().unwrap_or("")),
        meter.measured as u8 as f64,
    )]);
    latencies(&mut out, &svc);
    metric(&mut out, "sproutd_idle_energy_joules_total", "counter", "Energy metered while no request ran (not in any receipt).", &[(String::new(), meter.idle_energy_j)]);
    backend_metrics(&mut out, &svc.backends.views(&svc.carbon(), t_now));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out)
}
