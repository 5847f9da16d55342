//! Live carbon-intensity providers over HTTP: Electricity Maps (v3), WattTime
//! (v3), the GB Carbon Intensity API and the Green Software Foundation's
//! Carbon Aware SDK WebApi. Each is a request plan and pure parsers of the
//! documented response shapes (`../shared/data/carbon/API_NOTES.md`); one
//! [`Provider::fetch`] gives a [`Snapshot`]: the intensity now and an hourly
//! forecast, the provider's own where it publishes one, otherwise one computed
//! from the history it returns.
//!
//! Polling, retries, backoff and the fallback are in [`super::Carbon`].

use std::time::Duration;

use serde_json::Value;

use super::trace::{forecast, parse_utc};
use super::Reading;

/// 1 lb/MWh in g/kWh.
pub const LBS_PER_MWH_TO_G_PER_KWH: f64 = 0.453_592_37;

pub use crate::config::ProviderKind;

/// What one successful fetch gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub now: Reading,
    /// Hourly, starting one hour after `now.at`.
    pub forecast: Vec<Reading>,
    /// `"provider"` or `"history"`: where the forecast came from.
    pub forecast_from: &'static str,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum FetchError {
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
        /// The server's `Retry-After` (on a 429 or 503), when it sent one.
        retry_after: Option<Duration>,
    },
    #[error("{url}: no answer within {timeout_s} s")]
    Timeout { url: String, timeout_s: f64 },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url}: unexpected body: {message}")]
    Body { url: String, message: String },
}

impl FetchError {
    /// Worth retrying soon (a timeout, a dropped connection, a 5xx or 429),
    /// as opposed to a refusal that will not change (bad key, unknown zone).
    pub fn retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            Self::Timeout { .. } | Self::Transport { .. } => true,
            Self::Body { .. } => false,
        }
    }

    /// How long the server asked to be left alone, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A `Retry-After` value: seconds, or an HTTP date (RFC 9110), from `now`.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A response's error: its status, the start of its body, its Retry-After.
async fn status_error(url: String, resp: reqwest::Response) -> FetchError {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
    let body: String = resp.text().await.unwrap_or_default().chars().take(200).collect();
    FetchError::Status { url, status, body, retry_after }
}

/// A configured provider.
#[derive(Debug)]
pub struct Provider {
    pub kind: ProviderKind,
    /// Base URL without a trailing slash.
    pub url: String,
    /// Zone (Electricity Maps), region (WattTime), region id or empty for
    /// national (GB), location (Carbon Aware SDK).
    pub zone: String,
    /// Electricity Maps' API key, or WattTime's password.
    pub secret: Option<String>,
    /// WattTime's user name.
    pub username: Option<String>,
    pub timeout: Duration,
    client: reqwest::Client,
    /// WattTime's bearer token, valid for 30 minutes: (token, obtained at).
    watttime_token: tokio::sync::Mutex<Option<(String, std::time::Instant)>>,
}

impl Provider {
    pub fn new(
        kind: ProviderKind,
        url: &str,
        zone: &str,
        secret: Option<String>,
        username: Option<String>,
        timeout: Duration,
    ) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("sproutd/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a reqwest client with default TLS builds");
        Self {
            kind,
            url: url.trim_end_matches('/').to_string(),
            zone: zone.to_string(),
            secret,
            username,
            timeout,
            client,
            watttime_token: tokio::sync::Mutex::new(None),
        }
    }

    /// A name for status and logs: `electricitymaps DE`.
    pub fn describe(&self) -> String {
        match (&self.kind, self.zone.is_empty()) {
            (ProviderKind::Uk, true) => "uk national".into(),
            (ProviderKind::Uk, false) => format!("uk region {}", self.zone),
            (k, _) => format!("{} {}", k.as_str(), self.zone),
        }
    }

    async fn get(&self, path: &str, query: &[(&str, &str)], headers: &[(&str, String)]) -> Result<Value, FetchError> {
        let url = format!("{}{}", self.url, path);
        let mut rb = self.client.get(&url).query(query).header("accept", "application/json");
        for (k, v) in headers {
            rb = rb.header(*k, v);
        }
        let resp = rb.send().await.map_err(|e| self.transport(&url, e))?;
        if !resp.status().is_success() {
            return Err(status_error(url, resp).await);
        }
        let body = resp.text().await.map_err(|e| self.transport(&url, e))?;
        serde_json::from_str(&body).map_err(|e| FetchError::Body { url, message: format!("not JSON: {e}") })
    }

    fn transport(&self, url: &str, e: reqwest::Error) -> FetchError {
        if e.is_timeout() {
            FetchError::Timeout { url: url.to_string(), timeout_s: self.timeout.as_secs_f64() }
        } else {
            let mut message = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                message = format!("{message}: {s}");
                src = s.source();
            }
            FetchError::Transport { url: url.to_string(), message }
        }
    }

    /// One fetch: the intensity now and the forecast.
    pub async fn fetch(&self, now_unix: i64) -> Result<Snapshot, FetchError> {
        let body_err = |path: &str, message: String| FetchError::Body { url: format!("{}{path}", self.url), message };
        match self.kind {
            ProviderKind::ElectricityMaps => {
                let auth = [("auth-token", self.secret.clone().unwrap_or_default())];
                let zone = [("zone", self.zone.as_str())];
                let latest = self.get("/carbon-intensity/latest", &zone, &auth).await?;
                let now = em_reading(&latest).map_err(|m| body_err("/carbon-intensity/latest", m))?;
                // The forecast endpoint is on paid plans; without it, forecast
                // from the last 24 h. v4 forecasts up to 72 h ahead when asked
                // (`horizonHours`); an API that refuses the parameter is asked
                // again without it (its default horizon, 24 h).
                let long = [("zone", self.zone.as_str()), ("horizonHours", "72")];
                let forecast = match self.get("/carbon-intensity/forecast", &long, &auth).await {
                    Err(FetchError::Status { status: 400, .. }) => self.get("/carbon-intensity/forecast", &zone, &auth).await,
                    other => other,
                };
                match forecast {
                    Ok(f) => {
                        let points = em_series(&f, "forecast").map_err(|m| body_err("/carbon-intensity/forecast", m))?;
                        Ok(Snapshot { forecast: hourly(&points, now.at, 72), now, forecast_from: "provider" })
                    }
                    Err(e) if e.retryable() => Err(e),
                    Err(e) => {
                        tracing::debug!(error = %e, "no Electricity Maps forecast; forecasting from its history");
                        let h = self.get("/carbon-intensity/history", &zone, &auth).await?;
                        let points = em_series(&h, "history").map_err(|m| body_err("/carbon-intensity/history", m))?;
                        Ok(Snapshot { forecast: from_history(&points, &now, 24), now, forecast_from: "history" })
                    }
                }
            }
            ProviderKind::WattTime => {
                let token = self.watttime_login(false).await?;
                let q = [("region", self.zone.as_str()), ("signal_type", "co2_moer"), ("horizon_hours", "72")];
                let body = match self.get("/v3/forecast", &q, &[("authorization", format!("Bearer {token}"))]).await {
                    Err(FetchError::Status { status: 401, .. }) => {
                        let token = self.watttime_login(true).await?;
                        self.get("/v3/forecast", &q, &[("authorization", format!("Bearer {token}"))]).await?
                    }
                    other => other?,
                };
                let points = watttime_points(&body).map_err(|m| body_err("/v3/forecast", m))?;
                // The first point is the current five minutes (a nowcast).
                let now = points.first().cloned().ok_or_else(|| body_err("/v3/forecast", "no data points".into()))?;
                Ok(Snapshot { forecast: hourly(&points, now.at, 72), now, forecast_from: "provider" })
            }
            ProviderKind::Uk => {
                let from = format_utc_minutes(now_unix);
                let path = if self.zone.is_empty() {
                    format!("/intensity/{from}/fw48h")
                } else {
                    format!("/regional/intensity/{from}/fw48h/regionid/{}", self.zone)
                };
                let body = self.get(&path, &[], &[]).await?;
                let points = uk_points(&body).map_err(|m| body_err(&path, m))?;
                let now = points
                    .iter()
                    .rev()
                    .find(|r| r.at <= now_unix)
                    .or(points.first())
                    .cloned()
                    .ok_or_else(|| body_err(&path, "no periods".into()))?;
                Ok(Snapshot { forecast: hourly(&points, now.at, 48), now, forecast_from: "provider" })
            }
            ProviderKind::CarbonAwareSdk => {
                let loc = [("location", self.zone.as_str())];
                let latest = self.get("/emissions/bylocation", &loc, &[]).await?;
                let points = sdk_emissions(&latest).map_err(|m| body_err("/emissions/bylocation", m))?;
                let now = points.last().cloned().ok_or_else(|| body_err("/emissions/bylocation", "empty list".into()))?;
                let f = self.get("/emissions/forecasts/current", &loc, &[]).await?;
                let points = sdk_forecast(&f).map_err(|m| body_err("/emissions/forecasts/current", m))?;
                Ok(Snapshot { forecast: hourly(&points, now.at, 72), now, forecast_from: "provider" })
            }
        }
    }

    /// WattTime's `/login` (HTTP Basic) gives a bearer token valid 30 minutes;
    /// it is reused for 25.
    async fn watttime_login(&self, renew: bool) -> Result<String, FetchError> {
        let mut cached = self.watttime_token.lock().await;
        if let Some((token, at)) = cached.as_ref() {
            if !renew && at.elapsed() < Duration::from_secs(25 * 60) {
                return Ok(token.clone());
            }
        }
        let url = format!("{}/login", self.url);
        let resp = self
            .client
            .get(&url)
            .basic_auth(self.username.clone().unwrap_or_default(), self.secret.clone())
            .send()
            .await
            .map_err(|e| self.transport(&url, e))?;
        if !resp.status().is_success() {
            return Err(status_error(url, resp).await);
        }
        let body = resp.text().await.map_err(|e| self.transport(&url, e))?;
        let token = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("token").and_then(Value::as_str).map(str::to_string))
            .ok_or_else(|| FetchError::Body { url, message: "no \"token\" in the login answer".into() })?;
        *cached = Some((token.clone(), std::time::Instant::now()));
        Ok(token)
    }
}

// ---------------------------------------------------------------------------
// Pure parsers of the documented shapes.

fn time_of(v: &Value, key: &str) -> Result<i64, String> {
    let s = v.get(key).and_then(Value::as_str).ok_or_else(|| format!("missing \"{key}\""))?;
    parse_utc(s).ok_or_else(|| format!("\"{key}\": {s:?} is not a UTC time"))
}

fn number_of(v: &Value, key: &str) -> Result<f64, String> {
    v.get(key)
        .and_then(Value::as_f64)
        .filter(|x| x.is_finite() && *x >= 0.0)
        .ok_or_else(|| format!("missing or bad \"{key}\""))
}

/// Points of a list as readings (`time_key` a UTC time, `value_key` the
/// intensity in the provider's unit, times `factor` for g/kWh), oldest first.
fn series(list: &[Value], time_key: &str, value_key: &str, factor: f64) -> Result<Vec<Reading>, String> {
    let mut out = list
        .iter()
        .map(|p| Ok(Reading { at: time_of(p, time_key)?, gco2_per_kwh: number_of(p, value_key)? * factor }))
        .collect::<Result<Vec<_>, String>>()?;
    out.sort_by_key(|r| r.at);
    Ok(out)
}

/// Electricity Maps `latest`: `{"zone", "carbonIntensity", "datetime", ...}`.
pub fn em_reading(v: &Value) -> Result<Reading, String> {
    Ok(Reading { at: time_of(v, "datetime")?, gco2_per_kwh: number_of(v, "carbonIntensity")? })
}

/// Electricity Maps `history` / `forecast` / `past-range` (`data`): a list under `key`.
pub fn em_series(v: &Value, key: &str) -> Result<Vec<Reading>, String> {
    let list = v.get(key).or_else(|| v.get("data")).and_then(Value::as_array).ok_or_else(|| format!("missing \"{key}\" list"))?;
    series(list, "datetime", "carbonIntensity", 1.0)
}

/// WattTime v3 `forecast` / `historical`: `{"data": [{"point_time", "value"}], "meta": {"units"}}`,
/// MOER in lbs/MWh converted to g/kWh. A percentile (`signal-index`) is refused.
pub fn watttime_points(v: &Value) -> Result<Vec<Reading>, String> {
    let units = v.pointer("/meta/units").and_then(Value::as_str).unwrap_or("lbs_co2_per_mwh");
    let factor = match units {
        "lbs_co2_per_mwh" => LBS_PER_MWH_TO_G_PER_KWH,
        "g_co2_per_kwh" | "kg_co2_per_mwh" => 1.0,
        other => return Err(format!("units {other:?} are not an emission rate")),
    };
    let list = v.get("data").and_then(Value::as_array).ok_or("missing \"data\" list")?;
    series(list, "point_time", "value", factor)
}

/// GB Carbon Intensity: national `{"data": [{"from", "intensity": {"forecast", "actual"}}]}`,
/// regional by id `{"data": {"regionid", "data": [...]}}` or `{"data": [{"regions": [...]}]}`.
/// The actual value where there is one, else the forecast.
pub fn uk_points(v: &Value) -> Result<Vec<Reading>, String> {
    let data = v.get("data").ok_or("missing \"data\"")?;
    let periods: Vec<&Value> = if let Some(inner) = data.get("data").and_then(Value::as_array) {
        inner.iter().collect()
    } else if let Some(list) = data.as_array() {
        list.iter().collect()
    } else {
        return Err("\"data\" is neither a list nor a region".into());
    };
    let mut out = Vec::new();
    for p in periods {
        let at = time_of(p, "from")?;
        let intensity = match p.get("regions").and_then(Value::as_array) {
            Some(regions) => regions.first().and_then(|r| r.get("intensity")).ok_or("a period without regions")?,
            None => p.get("intensity").ok_or("a period without \"intensity\"")?,
        };
        let value = intensity
            .get("actual")
            .and_then(Value::as_f64)
            .or_else(|| intensity.get("forecast").and_then(Value::as_f64))
            .filter(|x| x.is_finite() && *x >= 0.0)
            .ok_or("a period without an actual or forecast value")?;
        out.push(Reading { at, gco2_per_kwh: value });
    }
    out.sort_by_key(|r| r.at);
    Ok(out)
}

/// Carbon Aware SDK `emissions/bylocation`: `[{"location", "time", "rating", "duration"}]`.
pub fn sdk_emissions(v: &Value) -> Result<Vec<Reading>, String> {
    let list = v.as_array().ok_or("expected a list")?;
    series(list, "time", "rating", 1.0)
}

/// Carbon Aware SDK `emissions/forecasts/current`: `[{"forecastData": [{"timestamp", "value"}], ...}]`.
pub fn sdk_forecast(v: &Value) -> Result<Vec<Reading>, String> {
    let first = v.as_array().and_then(|l| l.first()).ok_or("expected a non-empty list")?;
    let list = first.get("forecastData").and_then(Value::as_array).ok_or("missing \"forecastData\"")?;
    series(list, "timestamp", "value", 1.0)
}

/// Resamples points (any resolution) into hourly means for the hours after
/// `from`: hour `h` covers `[from + (h-1)·3600, from + h·3600)` and is
/// reported at its end, like the trace's forecast. Stops at the first hour
/// without data.
pub fn hourly(points: &[Reading], from: i64, hours: usize) -> Vec<Reading> {
    let mut out = Vec::new();
    for h in 1..=hours as i64 {
        let (lo, hi) = (from + (h - 1) * 3600, from + h * 3600);
        let inside: Vec<f64> = points.iter().filter(|r| r.at > lo && r.at <= hi).map(|r| r.gco2_per_kwh).collect();
        if inside.is_empty() {
            break;
        }
        out.push(Reading { at: hi, gco2_per_kwh: inside.iter().sum::<f64>() / inside.len() as f64 });
    }
    out
}

/// A forecast from a provider's past readings (hourly, oldest first) and now,
/// with the same rule as the trace source's ([`forecast`]).
pub fn from_history(past: &[Reading], now: &Reading, hours: usize) -> Vec<Reading> {
    let mut values: Vec<f64> = past.iter().filter(|r| r.at < now.at).map(|r| r.gco2_per_kwh).collect();
    values.push(now.gco2_per_kwh);
    let last = values.len() - 1;
    (1..=hours).map(|h| Reading { at: now.at + 3600 * h as i64, gco2_per_kwh: forecast(&values, last, h) }).collect()
}

/// Unix seconds → `2023-03-15T04:01Z` (the GB API's path format); times
/// beyond jiff's range (years -9999 to 9999) are clamped to it.
pub fn format_utc_minutes(t: i64) -> String {
    let ts = jiff::Timestamp::from_second(t).unwrap_or(if t < 0 { jiff::Timestamp::MIN } else { jiff::Timestamp::MAX });
    ts.strftime("%Y-%m-%dT%H:%MZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Found by `scripts/fuzz.sh` (carbon_api): a forecast time with a
    /// 13-digit year panicked in the timestamp parser.
    #[test]
    fn fuzz_regression_an_api_answer_with_a_huge_year() {
        let v: Value = serde_json::from_str(r#"{"zo2,2datet":",01T10:00=00.000Z","forecast":[{"carbonInTensity":280,"datetime":"2024111111114-05-01T10:30Z"}]}"#).unwrap();
        assert!(em_series(&v, "forecast").is_err());
        let _ = em_reading(&v);
    }

    fn shared(path: &str) -> Option<String> {
        Some(std::fs::read_to_string(crate::testing::shared_data(&format!("carbon/{path}"))?).unwrap())
    }

    #[test]
    fn times_format_and_parse_back() {
        for t in [0, 1_678_852_860, 1_709_208_000, 4_102_444_800] {
            let s = format_utc_minutes(t);
            assert_eq!(parse_utc(&s), Some(t - t % 60), "{s}");
        }
        assert_eq!(format_utc_minutes(1_678_852_860), "2023-03-15T04:01Z");
    }

    #[test]
    fn electricity_maps_shapes() {
        let latest = json!({"zone":"DE","carbonIntensity":302,"datetime":"2024-05-01T14:00:00.000Z","updatedAt":"2024-05-01T13:52:08.102Z","isEstimated":true});
        assert_eq!(em_reading(&latest).unwrap(), Reading { at: 1_714_572_000, gco2_per_kwh: 302.0 });
        let f = json!({"zone":"DE","forecast":[{"carbonIntensity":281,"datetime":"2024-05-01T16:00:00.000Z"},{"carbonIntensity":298,"datetime":"2024-05-01T15:00:00.000Z"}]});
        let s = em_series(&f, "forecast").unwrap();
        assert_eq!(s.iter().map(|r| r.gco2_per_kwh).collect::<Vec<_>>(), [298.0, 281.0]);
        assert!(em_reading(&json!({"zone":"DE","carbonIntensity":null,"datetime":"2024-05-01T14:00Z"})).is_err());
        assert!(em_series(&json!({"error":"x"}), "history").is_err());
    }

    #[test]
    fn watttime_converts_pounds_and_refuses_percentiles() {
        let body = json!({"data":[{"point_time":"2024-05-01T14:05:00+00:00","value":900.0},{"point_time":"2024-05-01T14:10:00+00:00","value":800.0}],
                          "meta":{"units":"lbs_co2_per_mwh","region":"CAISO_NORTH","signal_type":"co2_moer"}});
        let p = watttime_points(&body).unwrap();
        assert!((p[0].gco2_per_kwh - 408.233).abs() < 1e-3);
        let idx = json!({"data":[{"point_time":"2024-05-01T14:05:00+00:00","value":35.0}],"meta":{"units":"percentile"}});
        assert!(watttime_points(&idx).unwrap_err().contains("percentile"));
    }

    #[test]
    fn gb_api_real_captures_parse() {
        let Some(text) = shared("uk_carbonintensity_api/national_pt24h_2023-03-16T0401Z.json") else { return };
        let p = uk_points(&serde_json::from_str(&text).unwrap()).unwrap();
        assert!(p.len() >= 47, "{}", p.len());
        assert_eq!(p[0], Reading { at: parse_utc("2023-03-15T04:00Z").unwrap(), gco2_per_kwh: 200.0 });
        assert!(p.windows(2).all(|w| w[1].at - w[0].at == 1800));
        // Regional by id, forecast only.
        let regional = json!({"data":{"regionid":9,"shortname":"East Midlands","data":[
            {"from":"2023-09-02T16:00Z","to":"2023-09-02T16:30Z","intensity":{"forecast":312,"index":"very high"}}]}});
        assert_eq!(uk_points(&regional).unwrap()[0].gco2_per_kwh, 312.0);
        let all_regions = json!({"data":[{"from":"2023-09-02T16:00Z","to":"2023-09-02T16:30Z","regions":[{"regionid":9,"intensity":{"forecast":312,"index":"very high"}}]}]});
        assert_eq!(uk_points(&all_regions).unwrap()[0].gco2_per_kwh, 312.0);
        let future = json!({"data":[{"from":"2023-09-02T16:00Z","intensity":{"forecast":150,"actual":null}}]});
        assert_eq!(uk_points(&future).unwrap()[0].gco2_per_kwh, 150.0);
    }

    #[test]
    fn carbon_aware_sdk_shapes() {
        let e = json!([{"location":"eastus","time":"2022-05-17T20:45:11.5092741+00:00","rating":70.0,"duration":"00:05:00"}]);
        assert_eq!(sdk_emissions(&e).unwrap()[0].gco2_per_kwh, 70.0);
        let f = json!([{"location":"northeurope","windowSize":10,
            "optimalDataPoints":[{"location":"IE","timestamp":"2022-07-19T18:45:00+00:00","duration":10,"value":448.4}],
            "forecastData":[{"location":"IE","timestamp":"2022-07-19T14:00:00+00:00","duration":10,"value":532.0}]}]);
        assert_eq!(sdk_forecast(&f).unwrap()[0].gco2_per_kwh, 532.0);
        assert!(sdk_forecast(&json!([])).is_err());
    }

    #[test]
    fn hourly_means_and_history_forecast() {
        let p: Vec<Reading> = (1..=24).map(|i| Reading { at: i * 300, gco2_per_kwh: if i <= 12 { 100.0 } else { 200.0 } }).collect();
        let h = hourly(&p, 0, 5);
        assert_eq!(h, [Reading { at: 3600, gco2_per_kwh: 100.0 }, Reading { at: 7200, gco2_per_kwh: 200.0 }]);
        let past: Vec<Reading> = (0..48).map(|i| Reading { at: i * 3600, gco2_per_kwh: 100.0 + (i % 24) as f64 }).collect();
        let now = Reading { at: 48 * 3600, gco2_per_kwh: 100.0 };
        let f = from_history(&past, &now, 3);
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].at, 49 * 3600);
        // A clean daily cycle is followed.
        assert!((f[2].gco2_per_kwh - 103.0).abs() < 1e-9, "{:?}", f);
    }
}
