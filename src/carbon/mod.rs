//! Grid carbon intensity: where the receipts' gCO2/kWh comes from.
//!
//! So far one source, `trace`: an hourly CSV replayed against the clock by
//! hour of year (with an optional offset and speed-up for demos), the
//! built-in GB 2023 trace by default, and a forecast computed from the
//! trace's past. The accounting issue adds the live sources (Electricity
//! Maps, WattTime, the GB API, the Carbon Aware SDK) behind this type.

pub mod trace;

use std::path::Path;

use trace::{forecast, Trace};

/// The trace compiled into sproutd (see traces/README.md for its origin).
pub const BUILTIN_TRACE: &str = include_str!("../../traces/GB_2023_hourly.csv");
pub const BUILTIN_TRACE_NAME: &str = "GB 2023 (built-in, Electricity Maps via the Sprout artifact)";

#[derive(Debug, thiserror::Error)]
pub enum CarbonError {
    #[error("reading the trace {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the trace {path}: {source}")]
    Parse { path: String, source: trace::TraceError },
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
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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

    /// Hourly forecast for the next `hours` (of trace time), computed from
    /// the trace's past only.
    pub fn forecast(&self, t: i64, hours: usize) -> Vec<Reading> {
        let n = self.trace.values.len();
        let now_idx = self.trace.index_at(self.trace_time(t));
        // The past 8 days, oldest first, ending at now (wrapping around the year).
        let back = (24 * 8).min(n - 1);
        let history: Vec<f64> = (0..=back).map(|i| self.trace.values[(now_idx + n - back + i) % n]).collect();
        let wall_per_hour = 3600.0 / self.speedup;
        (1..=hours)
            .map(|h| Reading { at: t + (h as f64 * wall_per_hour) as i64, gco2_per_kwh: forecast(&history, back, h) })
            .collect()
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
    fn offset_and_speedup() {
        let jan1 = 1_672_531_200;
        let s = TraceSource::load(None, 1.0, 60.0, jan1).unwrap();
        // One hour ahead at start; a wall minute is a trace hour.
        assert_eq!(s.now(jan1).gco2_per_kwh, 65.29);
        assert_eq!(s.now(jan1 + 60).gco2_per_kwh, s.trace.values[2]);
        assert_eq!(s.forecast(jan1, 2)[1].at, jan1 + 120);
    }
}
