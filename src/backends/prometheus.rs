//! A backend's energy from a Prometheus endpoint: NVIDIA's DCGM exporter
//! (`DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`, mJ per GPU), Kepler
//! (`kepler_container_joules_total` with a label filter), or any counter of
//! energy. A scraper task reads the page every `energy_interval` and keeps
//! the sum of the matching series; the meter answers "joules since last
//! asked" from it, so [`crate::energy::Metering`] divides a remote machine's
//! energy among the requests running there just as it does the local one's.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::energy::Meter;

/// The sum of the samples of `metric` whose labels include every pair of
/// `labels`, in a Prometheus text exposition; None when none matches.
pub fn read_counter(text: &str, metric: &str, labels: &BTreeMap<String, String>) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name_and_labels, rest) = match line.find('{') {
            Some(open) => {
                let Some(close) = line[open..].rfind('}').map(|c| open + c) else { continue };
                (&line[..=close], &line[close + 1..])
            }
            None => match line.split_once(char::is_whitespace) {
                Some((n, r)) => (n, r),
                None => continue,
            },
        };
        let (name, series) = match name_and_labels.split_once('{') {
            Some((n, l)) => (n, parse_labels(l.trim_end_matches('}'))),
            None => (name_and_labels, BTreeMap::new()),
        };
        if name != metric || !labels.iter().all(|(k, v)| series.get(k) == Some(v)) {
            continue;
        }
        let Some(value) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) else { continue };
        if value.is_finite() {
            *sum.get_or_insert(0.0) += value;
        }
    }
    sum
}

/// `a="x",b="y \"q\""` → map (escapes `\\`, `\"`, `\n`).
fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        let Some((key, after)) = rest.split_once('=') else { return out };
        let Some(after) = after.trim_start().strip_prefix('"') else { return out };
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => break,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim().to_string(), value);
        match end {
            Some(i) => rest = &after[i + 1..],
            None => return out,
        }
    }
}

/// The latest scrape, shared by the scraper and the meter.
#[derive(Debug, Default)]
struct Latest {
    joules: Option<f64>,
    at: Option<Instant>,
    error: Option<String>,
}

/// The meter side: joules since last asked, from the scraper's latest value.
pub struct PromMeter {
    describe: String,
    latest: Arc<Mutex<Latest>>,
    last: Option<f64>,
    /// Older than this, the scrape is stale and the interval is not measured.
    stale_after: Duration,
}

/// The scraper side: run it until stop.
pub struct Scraper {
    client: reqwest::Client,
    url: String,
    metric: String,
    labels: BTreeMap<String, String>,
    joules_per_unit: f64,
    interval: Duration,
    latest: Arc<Mutex<Latest>>,
}

/// A meter and the scraper that feeds it.
pub fn meter(url: &str, metric: &str, labels: &BTreeMap<String, String>, joules_per_unit: f64, interval: Duration) -> (PromMeter, Scraper) {
    let latest = Arc::new(Mutex::new(Latest::default()));
    let shown: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    let describe = format!("prometheus {metric}{{{}}} at {url}", shown.join(","));
    let client = reqwest::Client::builder().timeout(interval.max(Duration::from_secs(2))).build().expect("a plain client builds");
    (
        PromMeter { describe, latest: latest.clone(), last: None, stale_after: interval * 5 + Duration::from_secs(2) },
        Scraper { client, url: url.to_string(), metric: metric.to_string(), labels: labels.clone(), joules_per_unit, interval, latest },
    )
}

impl Scraper {
    pub async fn scrape_once(&self) -> Result<f64, String> {
        let resp = self.client.get(&self.url).send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{} answered {}", self.url, resp.status()));
        }
        let text = resp.text().await.map_err(|e| e.to_string())?;
        read_counter(&text, &self.metric, &self.labels)
            .map(|v| v * self.joules_per_unit)
            .ok_or_else(|| format!("no sample of {} matching {:?} at {}", self.metric, self.labels, self.url))
    }

    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let got = self.scrape_once().await;
            let mut l = self.latest.lock().expect("poisoned");
            match got {
                Ok(j) => {
                    l.joules = Some(j);
                    l.at = Some(Instant::now());
                    l.error = None;
                    failures = 0;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(url = %self.url, error = %e, failures, "scraping a backend's energy counter failed");
                    }
                    l.error = Some(e);
                }
            }
        }
    }
}

impl Meter for PromMeter {
    fn describe(&self) -> String {
        self.describe.clone()
    }
    fn measured(&self) -> bool {
        true
    }
    fn joules_since_last(&mut self) -> io::Result<f64> {
        let l = self.latest.lock().expect("poisoned");
        let (Some(now), Some(at)) = (l.joules, l.at) else {
            return Err(io::Error::other(l.error.clone().unwrap_or_else(|| "not scraped yet".into())));
        };
        if at.elapsed() > self.stale_after {
            return Err(io::Error::other(format!("the last good scrape is {:.0} s old: {}", at.elapsed().as_secs_f64(), l.error.clone().unwrap_or_default())));
        }
        // A counter that went down was reset (an exporter restart): it counts from 0.
        let delta = match self.last {
            Some(prev) if now >= prev => now - prev,
            Some(_) => now,
            None => 0.0,
        };
        self.last = Some(now);
        Ok(delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).
# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0",UUID="GPU-a",Hostname="n1",modelName="NVIDIA H100 80GB HBM3"} 1500000
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="1",UUID="GPU-b",Hostname="n1",modelName="NVIDIA H100 80GB HBM3"} 2500000 1700000000000
DCGM_FI_DEV_POWER_USAGE{gpu="0"} 300.5
kepler_container_joules_total{container_name="vllm",mode="dynamic",pod_name="a \"b\", c"} 42.5
plain_counter 7
"#;

    #[test]
    fn matching_series_are_summed_and_labels_filter_them() {
        let none = BTreeMap::new();
        assert_eq!(read_counter(PAGE, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", &none), Some(4_000_000.0));
        let gpu1: BTreeMap<_, _> = [("gpu".to_string(), "1".to_string())].into();
        assert_eq!(read_counter(PAGE, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", &gpu1), Some(2_500_000.0));
        let pod: BTreeMap<_, _> = [("pod_name".to_string(), "a \"b\", c".to_string()), ("mode".to_string(), "dynamic".to_string())].into();
        assert_eq!(read_counter(PAGE, "kepler_container_joules_total", &pod), Some(42.5));
        assert_eq!(read_counter(PAGE, "plain_counter", &none), Some(7.0));
        assert_eq!(read_counter(PAGE, "DCGM_FI_DEV_TOTAL_ENERGY", &none), None);
        let other: BTreeMap<_, _> = [("gpu".to_string(), "7".to_string())].into();
        assert_eq!(read_counter(PAGE, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", &other), None);
    }

    #[test]
    fn the_meter_reports_increases_and_counts_a_reset_from_zero() {
        let (mut m, s) = meter("http://x/metrics", "e", &BTreeMap::new(), 1e-3, Duration::from_secs(1));
        assert!(m.joules_since_last().is_err(), "nothing scraped yet");
        let set = |j: f64| {
            let mut l = s.latest.lock().unwrap();
            l.joules = Some(j);
            l.at = Some(Instant::now());
        };
        set(100.0);
        assert_eq!(m.joules_since_last().unwrap(), 0.0);
        set(130.0);
        assert_eq!(m.joules_since_last().unwrap(), 30.0);
        set(5.0); // the exporter restarted
        assert_eq!(m.joules_since_last().unwrap(), 5.0);
        assert!(m.measured());
        assert!(m.describe().contains("prometheus e"));
    }
}
