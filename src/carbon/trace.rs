//! Hourly carbon-intensity traces: parsing, replay by hour of year, and a
//! forecast from history. Pure: text in, numbers out.
//!
//! Schemas read (by header):
//! - Electricity Maps exports: `Datetime (UTC)`, …, `Carbon Intensity gCO₂eq/kWh (direct)`;
//! - the Sprout artifact: `datetime_utc,ci_direct_g_per_kwh,ci_lca_g_per_kwh`;
//! - a simple `datetime,gco2_per_kwh`.
//!
//! The direct (operational) intensity is used: the embodied side of the
//! hardware is accounted separately.

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TraceError {
    #[error("the trace is empty")]
    Empty,
    #[error("unknown trace header {0:?}: expected an Electricity Maps export, the Sprout artifact's or `datetime,gco2_per_kwh`")]
    Header(String),
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
}

/// Hourly values in time order, starting at the first hour of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// gCO2e/kWh per hour.
    pub values: Vec<f64>,
    /// Unix time (s) of the first hour.
    pub start_unix: i64,
}

/// `2023-01-01 00:00:00`, `2023-01-01T00:00Z`, `2023-01-01T00:00:00+00:00`,
/// `2023-01-01` → Unix seconds (UTC), fractions of a second dropped. A time
/// with a zone designator (`Z`, `+01:00`, `-0530`) is that instant; one
/// without is read as UTC. Dates are checked by jiff (no 2023-02-31); years
/// before 1 and instants past jiff's last (9999-12-30 22:00 UTC) are refused.
pub fn parse_utc(s: &str) -> Option<i64> {
    let s = s.trim();
    let ts = match s.parse::<jiff::Timestamp>() {
        Ok(ts) => ts,
        Err(_) => s.parse::<jiff::civil::DateTime>().ok()?.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp(),
    };
    let year = ts.to_zoned(jiff::tz::TimeZone::UTC).year();
    if !(1..=9999).contains(&year) {
        return None;
    }
    let secs = ts.as_second();
    Some(if ts.subsec_nanosecond() < 0 { secs - 1 } else { secs })
}

impl Trace {
    pub fn parse(text: &str) -> Result<Trace, TraceError> {
        let mut rows = csv::ReaderBuilder::new().trim(csv::Trim::All).flexible(true).from_reader(text.as_bytes());
        let line_err = |e: csv::Error| TraceError::Line { line: e.position().map_or(0, |p| p.line() as usize), message: e.to_string() };
        let header = rows.headers().map_err(line_err)?.clone();
        if header.iter().all(str::is_empty) {
            return Err(TraceError::Empty);
        }
        let cols: Vec<&str> = header.iter().map(|c| c.trim_start_matches('\u{feff}')).collect();
        let find = |pred: &dyn Fn(&str) -> bool| cols.iter().position(|c| pred(c));
        let value_col = find(&|c| c.starts_with("Carbon Intensity") && c.ends_with("(direct)"))
            .or_else(|| find(&|c| c == "ci_direct_g_per_kwh"))
            .or_else(|| find(&|c| c == "gco2_per_kwh"))
            .ok_or_else(|| TraceError::Header(cols.join(",")))?;
        let time_col = find(&|c| c.starts_with("Datetime") || c.starts_with("datetime")).unwrap_or(0);
        let mut values = Vec::new();
        let mut start_unix = None;
        for row in rows.records() {
            let row = row.map_err(line_err)?;
            let line = row.position().map_or(0, |p| p.line() as usize);
            let err = |message: String| TraceError::Line { line, message };
            let t = row.get(time_col).and_then(parse_utc).ok_or_else(|| err("bad or missing datetime".into()))?;
            let v: f64 = row
                .get(value_col)
                .and_then(|v| v.parse().ok())
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| err("bad or missing intensity".into()))?;
            let start = *start_unix.get_or_insert(t);
            let expected = start + 3600 * values.len() as i64;
            if t != expected {
                return Err(err(format!("expected the hour starting at Unix {expected}, found {t}: traces must be hourly without gaps")));
            }
            values.push(v);
        }
        if values.is_empty() {
            return Err(TraceError::Empty);
        }
        Ok(Trace { values, start_unix: start_unix.expect("set with the first value") })
    }

    /// The hour of the trace that plays at Unix time `t`: traces are replayed
    /// by hour of year, wrapping around, so a 2023 trace serves any year.
    pub fn index_at(&self, t: i64) -> usize {
        let hours_since_start = (t - self.start_unix).div_euclid(3600);
        hours_since_start.rem_euclid(self.values.len() as i64) as usize
    }

    pub fn at(&self, t: i64) -> f64 {
        self.values[self.index_at(t)]
    }

    /// Lowest and highest values: the method's `CI_min`, `CI_max`.
    pub fn range(&self) -> (f64, f64) {
        range(&self.values)
    }
}

/// Lowest and highest of `values`.
pub fn range(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(*v), hi.max(*v)))
}

/// Hours of the past that [`forecast`] reads: 8 days.
pub const HISTORY_H: usize = 24 * 8;

/// The [`HISTORY_H`] hours up to and including hour `now` of an hourly
/// trace (fewer if the trace is shorter), oldest first, wrapping around its
/// start: the input of [`forecast`], whose `now` is then `len() - 1`.
pub fn history(values: &[f64], now: usize) -> Vec<f64> {
    let n = values.len();
    let back = HISTORY_H.min(n - 1);
    (0..=back).map(|i| values[(now % n + n - back + i) % n]).collect()
}

/// Forecast `h` hours ahead from the values up to and including `now`
/// (`history[..=now]`), without looking further: the level now, moved by the
/// change the last week showed over the same `h` hours of the day (median of
/// the 7 days), blended toward yesterday's value at that hour as `h` grows;
/// a day ahead it is yesterday's value, which measured better than anything
/// this simple (README, "Forecast error").
pub fn forecast(history: &[f64], now: usize, h: usize) -> f64 {
    let cur = history[now];
    let mut deltas = Vec::new();
    for day in 1..=7 {
        let back = 24 * day;
        if now >= back && now + h >= back && now + h - back <= now {
            deltas.push(history[now + h - back] - history[now - back]);
        }
    }
    if deltas.is_empty() {
        return cur;
    }
    deltas.sort_by(f64::total_cmp);
    let median = deltas[deltas.len() / 2];
    let seasonal = cur + median;
    let w = (h as f64 / 24.0).min(1.0);
    let yesterday = if now + h >= 24 && now + h - 24 <= now { history[now + h - 24] } else { seasonal };
    ((1.0 - w) * seasonal + w * yesterday).max(0.0)
}

/// Mean absolute error of [`forecast`] at `h` hours ahead over a whole trace.
pub fn forecast_mae(values: &[f64], h: usize) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for now in 24 * 7..values.len().saturating_sub(h) {
        sum += (forecast(values, now, h) - values[now + h]).abs();
        n += 1;
    }
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `scripts/fuzz.sh` (trace, carbon_api): a year with 17 digits
    /// overflowed the day arithmetic (a panic with overflow checks, a wrapped
    /// timestamp without).
    #[test]
    fn fuzz_regression_huge_years_are_no_timestamps() {
        assert_eq!(parse_utc("29999999999999023-01-01 00:00:00"), None);
        assert_eq!(parse_utc("2024111111114-05-01T10:30Z"), None);
        assert_eq!(parse_utc("10000-01-01 00:00"), None);
        // jiff's instants end at 9999-12-30 22:00 UTC (it keeps room for offsets).
        assert_eq!(parse_utc("9999-12-30 00:00"), Some(253_402_128_000));
        assert_eq!(parse_utc("9999-12-31 23:00"), None);
        // Days past the month's end are no dates.
        assert_eq!(parse_utc("2023-02-31 00:00"), None);
        assert_eq!(parse_utc("2023-02-29 00:00"), None);
        assert_eq!(parse_utc("2024-02-29 00:00"), Some(1_709_164_800));
        assert_eq!(parse_utc("1900-02-29 00:00"), None);
        assert_eq!(parse_utc("2000-02-29 00:00"), Some(951_782_400));
        assert_eq!(parse_utc("2023-04-31 00:00"), None);
        assert_eq!(parse_utc("2023-12-31 00:00"), Some(1_703_980_800));
        let text = "datetime_utc,ci_direct_g_per_kwh,ci_lca_g_per_kwh\r\n29999999999999023-01-01 00:00:00,71.54,103.5\r\n2023-01-01 01:00:00,65.29,95.6\r\n";
        assert!(Trace::parse(text).is_err());
        assert_eq!(parse_utc("0000-01-01 00:00"), None);
    }

    #[test]
    fn quoted_fields_with_commas_and_a_bom_parse() {
        // Electricity Maps zone names can hold commas; the old split(',') read the wrong column.
        let em = "\u{feff}Datetime (UTC),Country,Zone Name,Zone Id,Carbon Intensity gCO₂eq/kWh (direct)\n\
                  2023-01-01 00:00:00,\"Korea, Republic of\",\"Korea, South\",KR,410.5\n\
                  2023-01-01 01:00:00,\"Korea, Republic of\",\"Korea, South\",KR,405\n";
        let t = Trace::parse(em).unwrap();
        assert_eq!((t.values.as_slice(), t.start_unix), (&[410.5, 405.0][..], 1_672_531_200));
        // Blank lines are skipped; the line numbers of errors stay the file's.
        let e = Trace::parse("datetime,gco2_per_kwh\n\n2023-01-01 00:00:00,1\n2023-01-01 00:00:00,x\n").unwrap_err();
        assert!(matches!(e, TraceError::Line { line: 4, .. }), "{e}");
    }

    fn shared(path: &str) -> Option<String> {
        Some(std::fs::read_to_string(crate::testing::shared_data(path)?).unwrap())
    }

    #[test]
    fn dates() {
        assert_eq!(parse_utc("1970-01-01 00:00:00"), Some(0));
        assert_eq!(parse_utc("2023-01-01 00:00:00"), Some(1_672_531_200));
        assert_eq!(parse_utc("2023-03-14T03:30Z"), Some(1_678_764_600));
        assert_eq!(parse_utc("2024-02-29T12:00:00+00:00"), Some(1_709_208_000));
        assert_eq!(parse_utc("yesterday"), None);
        // Zone offsets move the instant; seconds count.
        assert_eq!(parse_utc("2023-01-01T01:00:00+01:00"), Some(1_672_531_200));
        assert_eq!(parse_utc("2022-12-31T19:00:00-05:00"), Some(1_672_531_200));
        assert_eq!(parse_utc("2022-12-31T18:30-0530"), Some(1_672_531_200));
        assert_eq!(parse_utc("2023-01-01T00:00:30.5Z"), Some(1_672_531_230));
        assert_eq!(parse_utc("2023-01-01T00:00:00+5"), None);
        assert_eq!(parse_utc("2023-01-01T25:00:00Z"), None);
        assert_eq!(parse_utc("2023-01-01-02 00:00"), None);
    }

    #[test]
    fn the_three_schemas_parse() {
        let simple = Trace::parse("datetime,gco2_per_kwh\n2023-01-01 00:00:00,100\n2023-01-01 01:00:00,120.5\n").unwrap();
        assert_eq!(simple.values, [100.0, 120.5]);
        assert_eq!(simple.start_unix, 1_672_531_200);
        let artifact = Trace::parse("datetime_utc,ci_direct_g_per_kwh,ci_lca_g_per_kwh\n2023-01-01 00:00:00,71.54,103.5\n").unwrap();
        assert_eq!(artifact.values, [71.54]);
        let em = "Datetime (UTC),Country,Zone Name,Zone Id,Carbon Intensity gCO₂eq/kWh (direct),Carbon Intensity gCO₂eq/kWh (LCA),Low Carbon Percentage\n\
                  2023-01-01 00:00:00,Germany,Germany,DE,152.03,199.59,82.97\n";
        assert_eq!(Trace::parse(em).unwrap().values, [152.03]);
    }

    #[test]
    fn bad_traces_are_refused_with_the_line() {
        assert_eq!(Trace::parse(""), Err(TraceError::Empty));
        assert!(matches!(Trace::parse("a,b\n1,2\n"), Err(TraceError::Header(_))));
        let gap = "datetime,gco2_per_kwh\n2023-01-01 00:00:00,1\n2023-01-01 02:00:00,1\n";
        assert!(matches!(Trace::parse(gap), Err(TraceError::Line { line: 3, .. })));
        let neg = "datetime,gco2_per_kwh\n2023-01-01 00:00:00,-5\n";
        assert!(matches!(Trace::parse(neg), Err(TraceError::Line { line: 2, .. })));
    }

    #[test]
    fn replay_wraps_by_hour_of_year() {
        let t = Trace { values: (0..8760).map(|h| h as f64).collect(), start_unix: 1_672_531_200 };
        assert_eq!(t.at(1_672_531_200), 0.0);
        assert_eq!(t.at(1_672_531_200 + 3600 * 5 + 59), 5.0);
        // A year later (8760 h) plays the first hour again.
        assert_eq!(t.at(1_672_531_200 + 3600 * 8760), 0.0);
        assert_eq!(t.at(1_672_531_200 - 3600), 8759.0);
        assert_eq!(t.range(), (0.0, 8759.0));
    }

    #[test]
    fn forecast_uses_only_the_past_and_follows_a_daily_cycle() {
        // A clean daily cycle: the forecast recovers it exactly.
        let v: Vec<f64> = (0..24 * 10).map(|h| 300.0 + 100.0 * ((h % 24) as f64 / 24.0 * std::f64::consts::TAU).sin()).collect();
        for h in [1, 6, 24] {
            assert!(forecast_mae(&v, h) < 1e-9, "h={h}");
        }
        // Changing the future does not change the forecast.
        let now = 24 * 8;
        let mut w = v.clone();
        for x in &mut w[now + 1..] {
            *x = 0.0;
        }
        assert_eq!(forecast(&v, now, 6), forecast(&w, now, 6));
    }

    #[test]
    fn shared_traces_parse_and_forecast_beats_persistence() {
        let Some(text) = shared("sprout_artifact/carbon_intensity/GB_2023_hourly.csv") else { return };
        let t = Trace::parse(&text).unwrap();
        assert_eq!(t.values.len(), 8760);
        let persistence = |h: usize| {
            let n = t.values.len() - h - 24 * 7;
            (24 * 7..t.values.len() - h).map(|i| (t.values[i + h] - t.values[i]).abs()).sum::<f64>() / n as f64
        };
        for h in [1, 6] {
            let (ours, pers) = (forecast_mae(&t.values, h), persistence(h));
            assert!(ours < pers, "{h} h ahead: forecast MAE {ours} vs persistence {pers}");
        }
        assert!((forecast_mae(&t.values, 24) - persistence(24)).abs() < 1e-9);
        let em = shared("carbon/em_cozybench_2023/DE_2023_hourly.csv").unwrap();
        assert_eq!(Trace::parse(&em).unwrap().values.len(), 8760);
    }
}
