//! Carbon-aware deferral of jobs with a deadline (pure): hold a job until
//! the lowest forecast intensity before its deadline, never after it.

use serde::Serialize;

use crate::carbon::Reading;

/// A hold must promise at least this much lower intensity than now to be
/// worth the wait (forecasts err by ~10% an hour or more ahead; README).
pub const MIN_GAIN: f64 = 0.05;

/// When to start a job submitted at `now_s` that must be done by
/// `deadline_s`: the forecast hour with the lowest intensity that starts no
/// later than `deadline_s - margin_s` (the margin is the time the job needs),
/// earliest on ties. `None`: run now (nothing lower enough before the deadline).
pub fn decide(now_s: i64, deadline_s: i64, margin_s: i64, now_ci: f64, forecast: &[Reading]) -> Option<Hold> {
    let latest = deadline_s - margin_s;
    let best = forecast
        .iter()
        .filter(|r| r.at > now_s && r.at <= latest && r.gco2_per_kwh.is_finite())
        .fold(None::<&Reading>, |best, r| match best {
            Some(b) if b.gco2_per_kwh <= r.gco2_per_kwh => Some(b),
            _ => Some(r),
        })?;
    (best.gco2_per_kwh < now_ci * (1.0 - MIN_GAIN)).then(|| Hold { until_s: best.at, forecast_gco2_per_kwh: best.gco2_per_kwh })
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Hold {
    pub until_s: i64,
    pub forecast_gco2_per_kwh: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(values: &[f64]) -> Vec<Reading> {
        values.iter().enumerate().map(|(h, v)| Reading { at: 3600 * (h as i64 + 1), gco2_per_kwh: *v }).collect()
    }

    #[test]
    fn holds_until_the_lowest_hour_before_the_deadline() {
        let fc = f(&[300.0, 200.0, 100.0, 50.0, 20.0]);
        // Deadline at 4 h, the job needs 10 min: hour 4 (50) starts too late... no: it starts at 4 h − is after 3 h 50.
        assert_eq!(decide(0, 4 * 3600, 600, 350.0, &fc), Some(Hold { until_s: 3 * 3600, forecast_gco2_per_kwh: 100.0 }));
        // With room, the lowest hour (20 at 5 h).
        assert_eq!(decide(0, 6 * 3600, 600, 350.0, &fc).unwrap().until_s, 5 * 3600);
        // Never after the deadline, whatever comes later.
        assert!(decide(0, 6 * 3600, 600, 350.0, &fc).unwrap().until_s <= 6 * 3600 - 600);
    }

    #[test]
    fn runs_now_when_waiting_does_not_pay() {
        let fc = f(&[300.0, 290.0]);
        assert_eq!(decide(0, 3 * 3600, 0, 295.0, &fc), None, "2% lower is within forecast error");
        assert_eq!(decide(0, 3 * 3600, 0, 100.0, &fc), None, "now is already the lowest");
        assert_eq!(decide(0, 1800, 0, 500.0, &fc), None, "no forecast hour before the deadline");
        assert_eq!(decide(0, -5, 0, 500.0, &fc), None, "deadline passed");
    }

    #[test]
    fn ties_take_the_earliest() {
        let fc = f(&[100.0, 100.0]);
        assert_eq!(decide(0, 10 * 3600, 0, 300.0, &fc).unwrap().until_s, 3600);
    }
}
