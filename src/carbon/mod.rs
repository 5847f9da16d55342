//! Grid carbon intensity: where the receipts' gCO2/kWh comes from.
//!
//! [`Carbon`] is the one handle the rest of sproutd asks: the intensity now,
//! an hourly forecast, and the source's status. Sources:
//! - `trace` (the default): an hourly CSV replayed against the clock by hour
//!   of year, the built-in GB 2023 trace unless `carbon.trace_file` is set,
//!   with a forecast computed from the trace's past ([`TraceSource`]);
//! - `electricitymaps`, `watttime`, `uk`, `carbon_aware_sdk`: polled over HTTP
//!   ([`live`]), with timeout, retries and exponential backoff; on failure
//!   the last good value is used until it is `max_age` old, then the
//!   fallback (the trace, or a fixed value); the status says which.

pub mod live;
pub mod trace;

use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{CarbonConfig, LiveCarbonConfig};
use live::{Provider, Snapshot};
use trace::{forecast, history, Trace};

/// The trace compiled into sproutd (see traces/README.md for its origin).
pub const BUILTIN_TRACE: &str = include_str!("../../traces/GB_2023_hourly.csv");
pub const BUILTIN_TRACE_NAME: &str = "GB 2023 (built-in, Electricity Maps via the Sprout artifact)";

#[derive(Debug, thiserror::Error)]
pub enum CarbonError {
    #[error("reading the trace {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the trace {path}: {source}")]
    Parse { path: String, source: trace::TraceError },
    #[error("carbon.token_file {path}: {source}")]
    Token { path: String, source: std::io::Error },
}

/// The source's state, as `GET /v1/carbon` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CarbonStatus {
    /// `trace`, `electricitymaps`, `watttime`, `uk`, `carbon_aware_sdk`.
    pub kind: String,
    /// What is read: the trace's name, or provider and zone.
    pub name: String,
    /// Where the forecast comes from: `provider`, `history` or `trace`.
    pub forecast: String,
    /// Unix time of the last good fetch (live sources).
    pub fetched_at: Option<i64>,
    /// Seconds since then.
    pub age_s: Option<i64>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    /// True when the values served come from the fallback.
    pub fallback: bool,
    /// What the fallback is.
    pub fallback_name: Option<String>,
}

/// Hours of the recent past `GET /v1/carbon` shows.
pub const PAST_HOURS: usize = 24;

struct LiveState {
    last: Option<(Snapshot, i64)>,
    /// The intensity served at each poll, one per wall-clock hour (the
    /// newest of that hour), oldest first, at most [`PAST_HOURS`].
    past: std::collections::VecDeque<Reading>,
    last_error: Option<String>,
    failures: u32,
}

struct Live {
    provider: Provider,
    cfg: LiveCarbonConfig,
    state: Mutex<LiveState>,
}

/// The carbon-intensity handle (cheap to share: `Arc<Carbon>`).
pub struct Carbon {
    trace: TraceSource,
    live: Option<Live>,
    /// The intensity served, published by the poller each time a poll
    /// changes it ([`Carbon::readings`]); `None` before the first poll.
    readings: watch::Sender<Option<Reading>>,
}

impl Carbon {
    /// From config; reads the trace (and the live source's secret), fetches nothing.
    pub fn from_config(cfg: &CarbonConfig, now_unix: i64) -> Result<Carbon, CarbonError> {
        let trace = TraceSource::load(cfg.trace_file.as_deref(), cfg.offset_hours, cfg.speedup, now_unix)?;
        let live = match &cfg.live {
            None => None,
            Some(l) => {
                let secret = match &l.token_file {
                    Some(p) => Some(
                        std::fs::read_to_string(p)
                            .map_err(|source| CarbonError::Token { path: p.display().to_string(), source })?
                            .trim()
                            .to_string(),
                    ),
                    None => std::env::var("SPROUT_CARBON_TOKEN").ok().filter(|s| !s.is_empty()),
                };
                let provider = Provider::new(l.kind.clone(), &l.url, &l.zone, secret, l.username.clone(), l.timeout);
                if l.kind == live::ProviderKind::ElectricityMaps && l.url.trim_end_matches('/').ends_with("/v3") {
                    tracing::warn!(url = %l.url, "Electricity Maps API v3 is legacy: set carbon.url to https://api.electricitymaps.com/v4 (or leave it unset)");
                }
                Some(Live {
                    provider,
                    cfg: l.clone(),
                    state: Mutex::new(LiveState { last: None, past: Default::default(), last_error: None, failures: 0 }),
                })
            }
        };
        Ok(Carbon::new(trace, live))
    }

    fn new(trace: TraceSource, live: Option<Live>) -> Carbon {
        Carbon { trace, live, readings: watch::channel(None).0 }
    }

    /// Serves `trace` alone.
    pub fn from_trace(trace: TraceSource) -> Carbon {
        Carbon::new(trace, None)
    }

    /// The poller's readings: a receiver sees a change each time a poll
    /// changes the intensity served. Between polls the intensity changes
    /// only at [`Carbon::next_change`]; together they tell a waiting
    /// component when to look again, so none has to poll.
    pub fn readings(&self) -> watch::Receiver<Option<Reading>> {
        self.readings.subscribe()
    }

    /// The next time after `t` (Unix s) the intensity served may change
    /// without a poll: the trace's next hour (at its speed-up), or the
    /// moment the last live reading becomes too old and the fallback serves.
    pub fn next_change(&self, t: i64) -> i64 {
        let stale = self.live.as_ref().and_then(|live| {
            let st = live.state.lock().expect("poisoned");
            let (_, fetched) = st.last.as_ref()?;
            Some(fetched + live.cfg.max_age.as_secs() as i64 + 1).filter(|&at| at > t)
        });
        let next_hour = self.trace.next_change(t);
        stale.map_or(next_hour, |s| s.min(next_hour))
    }

    /// The live snapshot if it is fresh enough at `t`.
    fn fresh(&self, t: i64) -> Option<Snapshot> {
        let live = self.live.as_ref()?;
        let st = live.state.lock().expect("poisoned");
        let (snap, fetched) = st.last.as_ref()?;
        (t - fetched <= live.cfg.max_age.as_secs() as i64).then(|| snap.clone())
    }

    fn fallback_constant(&self) -> Option<f64> {
        self.live.as_ref().and_then(|l| l.cfg.fallback_gco2_per_kwh)
    }

    /// The intensity at `t` (gCO2e/kWh).
    pub fn now(&self, t: i64) -> Reading {
        if let Some(s) = self.fresh(t) {
            return Reading { at: t, gco2_per_kwh: s.now.gco2_per_kwh };
        }
        match self.fallback_constant() {
            Some(v) => Reading { at: t, gco2_per_kwh: v },
            None => self.trace.now(t),
        }
    }

    /// Hourly forecast for the next `hours` after `t`.
    pub fn forecast(&self, t: i64, hours: usize) -> Vec<Reading> {
        if let Some(s) = self.fresh(t) {
            let ahead: Vec<Reading> = s.forecast.into_iter().filter(|r| r.at > t).take(hours).collect();
            if !ahead.is_empty() {
                return ahead;
            }
        }
        match self.fallback_constant() {
            Some(v) => (1..=hours as i64).map(|h| Reading { at: t + 3600 * h, gco2_per_kwh: v }).collect(),
            None => self.trace.forecast(t, hours),
        }
    }

    /// The intensity over the last `hours` before `t`, oldest first: the
    /// trace's own values for the trace (one per trace hour); for a live
    /// source, what was served at its polls, one per hour (fewer after a
    /// start: it keeps no history across restarts).
    pub fn past(&self, t: i64, hours: usize) -> Vec<Reading> {
        match &self.live {
            None => self.trace.past(t, hours),
            Some(live) => {
                let st = live.state.lock().expect("poisoned");
                let from = t - 3600 * hours as i64;
                st.past.iter().filter(|r| r.at > from && r.at <= t).cloned().collect()
            }
        }
    }

    /// Notes the intensity served at `t` in the live source's recent past.
    fn remember(&self, live: &Live, t: i64) {
        let reading = self.now(t);
        let mut st = live.state.lock().expect("poisoned");
        if st.past.back().is_some_and(|r| r.at.div_euclid(3600) == t.div_euclid(3600)) {
            st.past.pop_back();
        }
        st.past.push_back(reading);
        while st.past.len() > PAST_HOURS {
            st.past.pop_front();
        }
    }

    /// Lowest and highest intensity the source is known to reach (the
    /// optimizer's `CI_min`, `CI_max` unless configured): the trace's.
    pub fn range(&self) -> (f64, f64) {
        self.trace.range()
    }

    pub fn status(&self, t: i64) -> CarbonStatus {
        let Some(live) = &self.live else {
            return CarbonStatus {
                kind: "trace".into(),
                name: self.trace.name().to_string(),
                forecast: "trace".into(),
                fetched_at: None,
                age_s: None,
                last_error: None,
                consecutive_failures: 0,
                fallback: false,
                fallback_name: None,
            };
        };
        let fresh = self.fresh(t);
        let st = live.state.lock().expect("poisoned");
        let fallback_name = match live.cfg.fallback_gco2_per_kwh {
            Some(v) => format!("fixed {v} gCO2e/kWh"),
            None => format!("trace {}", self.trace.name()),
        };
        CarbonStatus {
            kind: live.provider.kind.as_str().to_string(),
            name: live.provider.describe(),
            forecast: match &fresh {
                Some(s) => s.forecast_from.to_string(),
                None if live.cfg.fallback_gco2_per_kwh.is_some() => "fixed".into(),
                None => "trace".into(),
            },
            fetched_at: st.last.as_ref().map(|(_, at)| *at),
            age_s: st.last.as_ref().map(|(_, at)| t - at),
            last_error: st.last_error.clone(),
            consecutive_failures: st.failures,
            fallback: fresh.is_none(),
            fallback_name: Some(fallback_name),
        }
    }

    pub fn name(&self) -> String {
        match &self.live {
            Some(l) => l.provider.describe(),
            None => self.trace.name().to_string(),
        }
    }

    /// One poll of the live source: up to `1 + retries` attempts, waiting
    /// between them as [`retry_delay`] says (backoff with jitter, or the
    /// server's `Retry-After`); a refusal that will not change (4xx, a bad
    /// body) is not retried, nor one whose `Retry-After` reaches past the
    /// next poll (the poller waits that long instead). Without a live
    /// source, nothing.
    pub async fn poll_once(&self, now_unix: impl Fn() -> i64) -> Result<(), live::FetchError> {
        let Some(live) = &self.live else { return Ok(()) };
        let out = self.poll_live(live, &now_unix).await;
        // Whatever the poll gave, the value now served joins the recent past,
        // and is published if it changed.
        let t = now_unix();
        self.remember(live, t);
        let served = self.now(t);
        self.readings.send_if_modified(|last| {
            let changed = last.as_ref().is_none_or(|r| r.gco2_per_kwh != served.gco2_per_kwh);
            *last = Some(served);
            changed
        });
        out
    }

    async fn poll_live(&self, live: &Live, now_unix: &impl Fn() -> i64) -> Result<(), live::FetchError> {
        let mut attempt = 0;
        let mut delay;
        loop {
            let result = live.provider.fetch(now_unix()).await;
            {
                let mut st = live.state.lock().expect("poisoned");
                match result {
                    Ok(snap) => {
                        st.last = Some((snap, now_unix()));
                        st.last_error = None;
                        st.failures = 0;
                        return Ok(());
                    }
                    Err(e) => {
                        st.last_error = Some(e.to_string());
                        let too_long = e.retry_after().is_some_and(|r| r >= live.cfg.poll_interval);
                        if attempt >= live.cfg.retries || !e.retryable() || too_long {
                            st.failures += 1;
                            return Err(e);
                        }
                        delay = retry_delay(live.cfg.backoff, attempt, e.retry_after(), rand::random::<f64>());
                    }
                }
            }
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Polls every `poll_interval` of `clock` until `stop`; a no-op for the trace.
    pub async fn run_poller(self: Arc<Self>, clock: crate::clock::Clock, stop: CancellationToken) {
        let Some(live) = &self.live else { return };
        let interval = live.cfg.poll_interval;
        loop {
            // A server that asked for a longer pause than the interval gets it.
            let wait = match self.poll_once(|| clock.now_s()).await {
                Ok(()) => {
                    tracing::debug!(source = %self.name(), "carbon intensity updated");
                    interval
                }
                Err(e) => {
                    tracing::warn!(source = %self.name(), error = %e, "carbon intensity poll failed");
                    e.retry_after().map_or(interval, |r| r.max(interval))
                }
            };
            tokio::select! {
                _ = clock.sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// The wait before retry `attempt` (0 first): the server's `Retry-After`
/// when it sent one (plus up to a tenth more), else `backoff` x 2^attempt
/// with equal jitter (half of it fixed, half drawn by `unit` in [0, 1)), so
/// daemons that failed together do not retry in step when an API comes back.
pub fn retry_delay(backoff: std::time::Duration, attempt: u32, retry_after: Option<std::time::Duration>, unit: f64) -> std::time::Duration {
    let unit = unit.clamp(0.0, 1.0);
    match retry_after {
        Some(r) => r + r.mul_f64(0.1 * unit),
        None => {
            let d = backoff.saturating_mul(2u32.saturating_pow(attempt));
            d / 2 + (d / 2).mul_f64(unit)
        }
    }
}

/// A trace being replayed.
#[derive(Debug, Clone)]
pub struct TraceSource {
    trace: Trace,
    name: String,
    /// Unix time at which replay started, and how fast the trace plays.
    anchor_unix: i64,
    offset_s: i64,
    speedup: f64,
}

/// One intensity reading.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reading {
    /// Unix seconds (wall clock) this reading is for.
    pub at: i64,
    pub gco2_per_kwh: f64,
}

impl TraceSource {
    /// `path` None: the built-in trace.
    pub fn load(path: Option<&Path>, offset_hours: f64, speedup: f64, now_unix: i64) -> Result<Self, CarbonError> {
        let (text, name) = match path {
            None => (BUILTIN_TRACE.to_string(), BUILTIN_TRACE_NAME.to_string()),
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| CarbonError::Read { path: p.display().to_string(), source })?,
                p.display().to_string(),
            ),
        };
        let trace = Trace::parse(&text).map_err(|source| CarbonError::Parse { path: name.clone(), source })?;
        Ok(Self { trace, name, anchor_unix: now_unix, offset_s: (offset_hours * 3600.0) as i64, speedup })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The trace time that plays at wall time `t`.
    fn trace_time(&self, t: i64) -> i64 {
        self.anchor_unix + ((t - self.anchor_unix) as f64 * self.speedup) as i64 + self.offset_s
    }

    pub fn now(&self, t: i64) -> Reading {
        Reading { at: t, gco2_per_kwh: self.trace.at(self.trace_time(t)) }
    }

    /// The wall time (Unix s) after `t` when the next trace hour plays.
    pub fn next_change(&self, t: i64) -> i64 {
        let tt = self.trace_time(t);
        let hour_start = self.trace.start_unix + (tt - self.trace.start_unix).div_euclid(3600) * 3600;
        let trace_left = (hour_start + 3600 - tt) as f64;
        t + (trace_left / self.speedup).ceil().max(1.0) as i64
    }

    /// Hourly forecast for the next `hours` (of trace time), computed from
    /// the trace's past only.
    pub fn forecast(&self, t: i64, hours: usize) -> Vec<Reading> {
        let past = history(&self.trace.values, self.trace.index_at(self.trace_time(t)));
        let wall_per_hour = 3600.0 / self.speedup;
        (1..=hours)
            .map(|h| Reading { at: t + (h as f64 * wall_per_hour) as i64, gco2_per_kwh: forecast(&past, past.len() - 1, h) })
            .collect()
    }

    /// The trace's values over the last `hours` (of trace time) before `t`,
    /// oldest first, at the wall times they played.
    pub fn past(&self, t: i64, hours: usize) -> Vec<Reading> {
        let wall_per_hour = 3600.0 / self.speedup;
        (1..=hours).rev().map(|h| self.now(t - (h as f64 * wall_per_hour) as i64)).collect()
    }

    /// Lowest and highest intensity of the trace.
    pub fn range(&self) -> (f64, f64) {
        self.trace.range()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_trace_replays_and_forecasts() {
        let jan1 = 1_672_531_200; // 2023-01-01 00:00 UTC
        let s = TraceSource::load(None, 0.0, 1.0, jan1).unwrap();
        assert_eq!(s.now(jan1).gco2_per_kwh, 71.54);
        assert_eq!(s.now(jan1 + 3600).gco2_per_kwh, 65.29);
        // Any year plays by hour of year.
        assert_eq!(s.now(jan1 + 365 * 86_400).gco2_per_kwh, 71.54);
        let f = s.forecast(jan1, 24);
        assert_eq!(f.len(), 24);
        assert_eq!(f[0].at, jan1 + 3600);
        assert!(f.iter().all(|r| r.gco2_per_kwh >= 0.0));
        let (lo, hi) = s.range();
        assert!(lo < 50.0 && hi > 250.0, "{lo} {hi}");
    }

    #[test]
    fn the_trace_past_is_the_hours_before_now() {
        let jan1 = 1_672_531_200;
        let s = TraceSource::load(None, 0.0, 1.0, jan1).unwrap();
        let past = s.past(jan1 + 3 * 3600, 3);
        assert_eq!(past.iter().map(|r| r.at).collect::<Vec<_>>(), vec![jan1, jan1 + 3600, jan1 + 7200]);
        assert_eq!(past[0].gco2_per_kwh, 71.54);
        assert_eq!(past[1].gco2_per_kwh, 65.29);
        // The next hour plays at the hour's end, sooner when sped up.
        assert_eq!(s.next_change(jan1), jan1 + 3600);
        assert_eq!(s.next_change(jan1 + 3599), jan1 + 3600);
        assert_eq!(s.next_change(jan1 + 3600), jan1 + 7200);
        let sixty = TraceSource::load(None, 0.0, 60.0, jan1).unwrap();
        assert_eq!(sixty.next_change(jan1 + 10), jan1 + 60);
        // Played 3600x faster, a trace hour is a wall second.
        let fast = TraceSource::load(None, 0.0, 3600.0, jan1).unwrap();
        assert_eq!(fast.next_change(jan1), jan1 + 1);
        assert_eq!(fast.past(jan1 + 2, 2).iter().map(|r| r.gco2_per_kwh).collect::<Vec<_>>(), vec![71.54, 65.29]);
        assert_eq!(Carbon::from_trace(s.clone()).past(jan1 + 3 * 3600, 3), past);
    }

    #[test]
    fn offset_and_speedup() {
        let jan1 = 1_672_531_200;
        let s = TraceSource::load(None, 1.0, 60.0, jan1).unwrap();
        // One hour ahead at start; a wall minute is a trace hour.
        assert_eq!(s.now(jan1).gco2_per_kwh, 65.29);
        assert_eq!(s.now(jan1 + 60).gco2_per_kwh, s.trace.values[2]);
        assert_eq!(s.forecast(jan1, 2)[1].at, jan1 + 120);
    }
}

/// The live sources against local HTTP servers on loopback that answer with
/// the documented shapes, and fail in the ways real ones do.
#[cfg(test)]
mod live_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use axum::extract::{Path as UrlPath, Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use axum::Router;
    use serde_json::json;

    use super::*;
    use crate::carbon::live::ProviderKind;

    /// 2024-05-01 14:00 UTC.
    const T: i64 = 1_714_572_000;

    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        Ok,
        Fail500,
        /// 429 with `Retry-After: 1` once, then Ok.
        RateLimited,
        /// 429 asking for an hour.
        RateLimitedLong,
        /// The forecast refuses `horizonHours` (400).
        NoHorizon,
        Slow,
        Garbage,
        NoForecast,
    }

    struct Fake {
        mode: std::sync::Mutex<Mode>,
        hits: AtomicUsize,
        logins: AtomicUsize,
    }

    type S = State<Arc<Fake>>;

    fn misbehave(f: &Fake) -> Option<Response> {
        f.hits.fetch_add(1, Ordering::SeqCst);
        let mut mode = f.mode.lock().unwrap();
        match *mode {
            Mode::Fail500 => Some((StatusCode::INTERNAL_SERVER_ERROR, "upstream down").into_response()),
            Mode::RateLimited => {
                *mode = Mode::Ok;
                Some((StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "slow down").into_response())
            }
            Mode::RateLimitedLong => Some((StatusCode::TOO_MANY_REQUESTS, [("retry-after", "3600")], "slow down").into_response()),
            Mode::Garbage => Some((StatusCode::OK, "<html>maintenance</html>").into_response()),
            _ => None,
        }
    }

    async fn slow(f: &Fake) {
        if *f.mode.lock().unwrap() == Mode::Slow {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }

    async fn em_latest(State(f): S, h: HeaderMap, Query(q): Query<std::collections::HashMap<String, String>>) -> Response {
        slow(&f).await;
        if let Some(r) = misbehave(&f) {
            return r;
        }
        if h.get("auth-token").map(|v| v.as_bytes()) != Some(b"em-key") {
            return (StatusCode::UNAUTHORIZED, "bad key").into_response();
        }
        assert_eq!(q["zone"], "DE");
        axum::Json(json!({"zone":"DE","carbonIntensity":302,"datetime":"2024-05-01T14:00:00.000Z","isEstimated":true})).into_response()
    }

    async fn em_forecast(State(f): S, Query(q): Query<std::collections::HashMap<String, String>>) -> Response {
        let mode = *f.mode.lock().unwrap();
        if mode == Mode::NoForecast {
            return (StatusCode::FORBIDDEN, "{\"error\":\"not in your plan\"}").into_response();
        }
        let horizon: i64 = match q.get("horizonHours") {
            Some(_) if mode == Mode::NoHorizon => return (StatusCode::BAD_REQUEST, "{\"error\":\"unknown parameter\"}").into_response(),
            Some(h) => h.parse().unwrap(),
            None => 24,
        };
        let pts: Vec<_> = (1..=horizon)
            .map(|h| json!({"carbonIntensity": 300 - h, "datetime": live::format_utc_minutes(T + 3600 * h)}))
            .collect();
        axum::Json(json!({"zone":"DE","forecast": pts})).into_response()
    }

    async fn em_history() -> Response {
        let pts: Vec<_> = (1..=24)
            .rev()
            .map(|h| json!({"carbonIntensity": 250, "datetime": live::format_utc_minutes(T - 3600 * h)}))
            .collect();
        axum::Json(json!({"zone":"DE","history": pts})).into_response()
    }

    async fn wt_login(State(f): S, h: HeaderMap) -> Response {
        f.logins.fetch_add(1, Ordering::SeqCst);
        // "user:pw" in base64.
        if h.get("authorization").map(|v| v.as_bytes()) != Some(b"Basic dXNlcjpwdw==") {
            return (StatusCode::UNAUTHORIZED, "bad credentials").into_response();
        }
        axum::Json(json!({"token": format!("jwt-{}", f.logins.load(Ordering::SeqCst))})).into_response()
    }

    async fn wt_forecast(State(f): S, h: HeaderMap) -> Response {
        if let Some(r) = misbehave(&f) {
            return r;
        }
        // The first token "expires" at once: the client must log in again.
        if h.get("authorization").map(|v| v.as_bytes()) != Some(b"Bearer jwt-2") {
            return (StatusCode::UNAUTHORIZED, "expired").into_response();
        }
        let pts: Vec<_> = (0..24 * 12)
            .map(|i| json!({"point_time": format!("{}", live::format_utc_minutes(T + 300 * i)), "value": 900.0}))
            .collect();
        axum::Json(json!({"data": pts, "meta": {"units":"lbs_co2_per_mwh","region":"CAISO_NORTH","signal_type":"co2_moer"}}))
            .into_response()
    }

    async fn uk(State(f): S, UrlPath(from): UrlPath<String>) -> Response {
        if let Some(r) = misbehave(&f) {
            return r;
        }
        let start = trace::parse_utc(&from).unwrap() / 1800 * 1800;
        let pts: Vec<_> = (0..96)
            .map(|i| {
                let actual = if i == 0 { json!(180) } else { json!(null) };
                json!({"from": live::format_utc_minutes(start + 1800 * i), "to": live::format_utc_minutes(start + 1800 * (i + 1)),
                       "intensity": {"forecast": 200 + i, "actual": actual, "index": "moderate"}})
            })
            .collect();
        axum::Json(json!({"data": pts})).into_response()
    }

    async fn uk_region(State(f): S, UrlPath((from, id)): UrlPath<(String, u32)>) -> Response {
        if let Some(r) = misbehave(&f) {
            return r;
        }
        let start = trace::parse_utc(&from).unwrap() / 1800 * 1800;
        let pts: Vec<_> = (0..4)
            .map(|i| json!({"from": live::format_utc_minutes(start + 1800 * i), "intensity": {"forecast": 100 + id, "index": "low"}}))
            .collect();
        axum::Json(json!({"data": {"regionid": id, "shortname": "X", "data": pts}})).into_response()
    }

    async fn sdk_latest(State(f): S) -> Response {
        if let Some(r) = misbehave(&f) {
            return r;
        }
        axum::Json(json!([{"location":"eastus","time":"2024-05-01T13:55:00+00:00","rating":70.0,"duration":"00:05:00"},
                          {"location":"eastus","time":"2024-05-01T14:00:00+00:00","rating":75.0,"duration":"00:05:00"}]))
        .into_response()
    }

    async fn sdk_forecast() -> Response {
        let pts: Vec<_> = (1..=24)
            .map(|h| json!({"location":"eastus","timestamp": live::format_utc_minutes(T + 3600 * h),"duration":60,"value": 60.0 + h as f64}))
            .collect();
        axum::Json(json!([{"location":"eastus","windowSize":10,"optimalDataPoints":[],"forecastData": pts}])).into_response()
    }

    async fn serve() -> (String, Arc<Fake>) {
        let fake = Arc::new(Fake { mode: std::sync::Mutex::new(Mode::Ok), hits: AtomicUsize::new(0), logins: AtomicUsize::new(0) });
        let app = Router::new()
            .route("/v3/carbon-intensity/latest", get(em_latest))
            .route("/v3/carbon-intensity/forecast", get(em_forecast))
            .route("/v3/carbon-intensity/history", get(em_history))
            .route("/v4/carbon-intensity/latest", get(em_latest))
            .route("/v4/carbon-intensity/forecast", get(em_forecast))
            .route("/v4/carbon-intensity/history", get(em_history))
            .route("/login", get(wt_login))
            .route("/v3/forecast", get(wt_forecast))
            .route("/intensity/{from}/fw48h", get(uk))
            .route("/regional/intensity/{from}/fw48h/regionid/{id}", get(uk_region))
            .route("/emissions/bylocation", get(sdk_latest))
            .route("/emissions/forecasts/current", get(sdk_forecast))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), fake)
    }

    fn carbon(kind: ProviderKind, url: &str, zone: &str, secret: Option<&str>, fallback: Option<f64>) -> Carbon {
        let trace = TraceSource::load(None, 0.0, 1.0, T).unwrap();
        let cfg = LiveCarbonConfig {
            kind: kind.clone(),
            url: url.into(),
            zone: zone.into(),
            token_file: None,
            username: Some("user".into()),
            poll_interval: Duration::from_secs(300),
            timeout: Duration::from_millis(300),
            retries: 2,
            backoff: Duration::from_millis(10),
            max_age: Duration::from_secs(7200),
            fallback_gco2_per_kwh: fallback,
        };
        let provider = Provider::new(kind, url, zone, secret.map(str::to_string), cfg.username.clone(), cfg.timeout);
        Carbon::new(trace, Some(Live { provider, cfg, state: Mutex::new(LiveState { last: None, past: Default::default(), last_error: None, failures: 0 }) }))
    }

    #[tokio::test]
    async fn electricity_maps_with_and_without_its_forecast() {
        let (url, fake) = serve().await;
        let c = carbon(ProviderKind::ElectricityMaps, &format!("{url}/v3"), "DE", Some("em-key"), None);
        let mut readings = c.readings();
        c.poll_once(|| T).await.unwrap();
        assert_eq!(c.now(T + 60).gco2_per_kwh, 302.0);
        // The new value is published; the same value again is not.
        assert!(readings.has_changed().unwrap());
        assert_eq!(readings.borrow_and_update().as_ref().map(|r| r.gco2_per_kwh), Some(302.0));
        c.poll_once(|| T).await.unwrap();
        assert!(!readings.has_changed().unwrap());
        // Unpolled, the reading serves until it is too old (max_age 2 h),
        // then the trace, whose hour turns first.
        assert_eq!(c.next_change(T), (T + 7201).min(c.trace.next_change(T)));
        assert_eq!(c.next_change(T + 7200), c.trace.next_change(T + 7200).min(T + 7201));
        let f = c.forecast(T, 24);
        assert_eq!((f.len(), f[0].gco2_per_kwh, f[0].at), (24, 299.0, T + 3600));
        let st = c.status(T + 60);
        assert_eq!((st.kind.as_str(), st.forecast.as_str(), st.fallback, st.age_s), ("electricitymaps", "provider", false, Some(60)));
        // A plan without the forecast endpoint: forecast from its history.
        *fake.mode.lock().unwrap() = Mode::NoForecast;
        c.poll_once(|| T).await.unwrap();
        assert_eq!(c.status(T).forecast, "history");
        assert_eq!(c.forecast(T, 3).len(), 3);
        // A wrong key is a refusal: not retried, reported.
        let hits = fake.hits.load(Ordering::SeqCst);
        let bad = carbon(ProviderKind::ElectricityMaps, &format!("{url}/v3"), "DE", Some("wrong"), None);
        let e = bad.poll_once(|| T).await.unwrap_err();
        assert!(matches!(e, live::FetchError::Status { status: 401, .. }), "{e}");
        assert_eq!(fake.hits.load(Ordering::SeqCst), hits + 1);
        assert!(bad.status(T).fallback);
    }

    #[test]
    fn retries_back_off_with_jitter_and_honour_retry_after() {
        let b = Duration::from_millis(100);
        assert_eq!(retry_delay(b, 0, None, 0.0), Duration::from_millis(50));
        assert_eq!(retry_delay(b, 2, None, 0.0), Duration::from_millis(200));
        let top = retry_delay(b, 2, None, 0.999_999);
        assert!(top > Duration::from_millis(399) && top < Duration::from_millis(400), "{top:?}");
        let r = Some(Duration::from_secs(30));
        assert_eq!(retry_delay(b, 0, r, 0.0), Duration::from_secs(30));
        assert_eq!(retry_delay(b, 5, r, 1.0), Duration::from_secs(33));
        // Retry-After as seconds or as an HTTP date.
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(live::parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(live::parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now), Some(Duration::from_secs(120)));
        assert_eq!(live::parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(live::parse_retry_after("soon", now), None);
    }

    #[tokio::test]
    async fn a_rate_limit_is_waited_out_as_the_server_asks() {
        let (url, fake) = serve().await;
        let c = carbon(ProviderKind::Uk, &url, "", None, None);
        *fake.mode.lock().unwrap() = Mode::RateLimited;
        let t0 = std::time::Instant::now();
        c.poll_once(|| T).await.unwrap();
        assert!(t0.elapsed() >= Duration::from_secs(1), "retried after {:?}, before the server's Retry-After", t0.elapsed());
        assert_eq!(fake.hits.load(Ordering::SeqCst), 2);
        // A pause past the next poll is not slept through in the poll: it
        // fails now, and the error carries the pause for the poller.
        *fake.mode.lock().unwrap() = Mode::RateLimitedLong;
        let t0 = std::time::Instant::now();
        let e = c.poll_once(|| T).await.unwrap_err();
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3600)));
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert_eq!(fake.hits.load(Ordering::SeqCst), 3, "not retried");
    }

    #[tokio::test]
    async fn electricity_maps_v4_forecasts_72_hours_and_falls_back_to_its_default_horizon() {
        assert_eq!(ProviderKind::ElectricityMaps.default_url(), "https://api.electricitymaps.com/v4");
        let (url, fake) = serve().await;
        let c = carbon(ProviderKind::ElectricityMaps, &format!("{url}/v4"), "DE", Some("em-key"), None);
        c.poll_once(|| T).await.unwrap();
        assert_eq!(c.now(T).gco2_per_kwh, 302.0);
        let f = c.forecast(T, 96);
        assert_eq!((f.len(), f[71].at, c.status(T).forecast.as_str()), (72, T + 72 * 3600, "provider"));
        // An API that refuses the horizon is asked again without it: 24 h from the provider.
        *fake.mode.lock().unwrap() = Mode::NoHorizon;
        c.poll_once(|| T).await.unwrap();
        assert_eq!((c.status(T).forecast.as_str(), c.forecast(T, 96)[23].at), ("provider", T + 24 * 3600));
    }

    #[tokio::test]
    async fn failures_retry_then_keep_the_last_value_then_fall_back() {
        let (url, fake) = serve().await;
        let c = carbon(ProviderKind::Uk, &url, "", None, None);
        c.poll_once(|| T).await.unwrap();
        assert_eq!(c.now(T).gco2_per_kwh, 180.0, "the actual value of the current half hour");
        // 5xx: 1 + 2 retries, then the last good value serves, with its age.
        *fake.mode.lock().unwrap() = Mode::Fail500;
        let before = fake.hits.load(Ordering::SeqCst);
        let e = c.poll_once(|| T + 600).await.unwrap_err();
        assert!(e.to_string().contains("HTTP 500"), "{e}");
        assert_eq!(fake.hits.load(Ordering::SeqCst) - before, 3);
        let st = c.status(T + 600);
        assert_eq!((st.fallback, st.age_s, st.consecutive_failures), (false, Some(600), 1));
        assert!(st.last_error.unwrap().contains("HTTP 500"));
        assert_eq!(c.now(T + 600).gco2_per_kwh, 180.0);
        // Older than max_age (2 h): the fallback, the built-in trace.
        let later = T + 3 * 3600;
        assert!(c.status(later).fallback);
        assert_eq!(c.now(later).gco2_per_kwh, c.trace.now(later).gco2_per_kwh);
        assert_eq!(c.forecast(later, 5), c.trace.forecast(later, 5));
        assert_eq!(c.status(later).forecast, "trace");
        // Recovery.
        *fake.mode.lock().unwrap() = Mode::Ok;
        c.poll_once(|| later).await.unwrap();
        assert!(!c.status(later).fallback);
        // The recent past is what each poll served, one per hour (the
        // newest of an hour: the polls at T and T + 600 are one hour).
        let past: Vec<(i64, f64)> = c.past(later, 24).iter().map(|r| (r.at, r.gco2_per_kwh)).collect();
        assert_eq!(past, vec![(T + 600, 180.0), (later, c.now(later).gco2_per_kwh)], "{past:?}");
        assert_eq!(c.past(later, 1).len(), 1, "only the last hour");
    }

    #[tokio::test]
    async fn timeouts_and_bad_bodies_engage_a_fixed_fallback() {
        let (url, fake) = serve().await;
        let c = carbon(ProviderKind::ElectricityMaps, &format!("{url}/v3"), "DE", Some("em-key"), Some(450.0));
        *fake.mode.lock().unwrap() = Mode::Slow;
        let t0 = std::time::Instant::now();
        let e = c.poll_once(|| T).await.unwrap_err();
        assert!(matches!(e, live::FetchError::Timeout { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(3), "three 300 ms attempts, not the server's 5 s");
        let st = c.status(T);
        assert!(st.fallback);
        assert_eq!(st.fallback_name.as_deref(), Some("fixed 450 gCO2e/kWh"));
        assert_eq!(c.now(T).gco2_per_kwh, 450.0);
        assert_eq!(c.forecast(T, 2)[1].gco2_per_kwh, 450.0);
        *fake.mode.lock().unwrap() = Mode::Garbage;
        let before = fake.hits.load(Ordering::SeqCst);
        let e = c.poll_once(|| T).await.unwrap_err();
        assert!(matches!(e, live::FetchError::Body { .. }), "{e}");
        assert_eq!(fake.hits.load(Ordering::SeqCst) - before, 1, "a bad body is not retried");
        assert!(c.status(T).last_error.unwrap().contains("not JSON"));
        // Nothing listening: a transport error, retried, fallback.
        let dead = carbon(ProviderKind::Uk, "http://127.0.0.1:9", "", None, Some(300.0));
        assert!(matches!(dead.poll_once(|| T).await.unwrap_err(), live::FetchError::Transport { .. }));
        assert_eq!(dead.now(T).gco2_per_kwh, 300.0);
    }

    #[tokio::test]
    async fn watttime_logs_in_again_and_converts_units() {
        let (url, fake) = serve().await;
        let c = carbon(ProviderKind::WattTime, &url, "CAISO_NORTH", Some("pw"), None);
        c.poll_once(|| T).await.unwrap();
        assert_eq!(fake.logins.load(Ordering::SeqCst), 2, "the first token was refused, so it logged in again");
        assert!((c.now(T).gco2_per_kwh - 900.0 * live::LBS_PER_MWH_TO_G_PER_KWH).abs() < 1e-9);
        let f = c.forecast(T, 24);
        assert_eq!(f.len(), 24, "5-minute points averaged into the hours they cover");
        assert!((f[3].gco2_per_kwh - 900.0 * live::LBS_PER_MWH_TO_G_PER_KWH).abs() < 1e-9);
        let bad = carbon(ProviderKind::WattTime, &url, "CAISO_NORTH", Some("nope"), None);
        assert!(matches!(bad.poll_once(|| T).await.unwrap_err(), live::FetchError::Status { status: 401, .. }));
    }

    #[tokio::test]
    async fn gb_regional_and_carbon_aware_sdk() {
        let (url, _fake) = serve().await;
        let c = carbon(ProviderKind::Uk, &url, "9", None, None);
        c.poll_once(|| T).await.unwrap();
        assert_eq!(c.now(T).gco2_per_kwh, 109.0);
        assert_eq!(c.status(T).name, "uk region 9");
        let c = carbon(ProviderKind::CarbonAwareSdk, &url, "eastus", None, None);
        c.poll_once(|| T).await.unwrap();
        assert_eq!(c.now(T).gco2_per_kwh, 75.0, "the latest of the emissions list");
        assert_eq!(c.forecast(T, 2).iter().map(|r| r.gco2_per_kwh).collect::<Vec<_>>(), [61.0, 62.0]);
    }
}
