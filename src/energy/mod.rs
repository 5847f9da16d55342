//! Energy meters: what the machine drew while the engine worked.
//!
//! Detected in the order NVML → RAPL → estimate (`accounting.meter = "auto"`),
//! or chosen in config. Each meter answers one question, "joules since you
//! were last asked", and says whether that is a measurement or an estimate;
//! [`crate::accounting::Attribution`] divides each answer among the requests.

pub mod estimate;
pub mod nvml;
pub mod rapl;

use std::io;
use std::time::Instant;

use crate::accounting::{Attribution, Share};
use crate::config::{AccountingConfig, MeterKind};

pub trait Meter: Send {
    /// What is read, e.g. `rapl (package-0, dram)`.
    fn describe(&self) -> String;
    /// True for hardware counters; false for the estimate.
    fn measured(&self) -> bool;
    /// Joules used since the previous call (or since the meter was made).
    fn joules_since_last(&mut self) -> io::Result<f64>;
}

#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error("accounting.meter = \"nvml\": {0}")]
    Nvml(String),
    #[error("accounting.meter = \"rapl\": {0}")]
    Rapl(String),
}

/// The meter the config asks for. `auto` takes the first that works and logs
/// why the others were passed over; an explicit choice that does not work
/// is an error (the daemon refuses to start rather than report estimates as
/// measurements or the reverse).
pub fn detect(cfg: &AccountingConfig) -> Result<Box<dyn Meter>, MeterError> {
    let estimate = || Box::new(estimate::Estimate::new(cfg.idle_w, cfg.tdp_w)) as Box<dyn Meter>;
    let rapl = || -> Result<Box<dyn Meter>, String> {
        match rapl::Rapl::discover(&cfg.rapl_root) {
            Ok(Some(r)) => Ok(Box::new(r)),
            Ok(None) => Err(format!("no RAPL zones under {}", cfg.rapl_root.display())),
            Err(e) => Err(format!(
                "{}: {e} (the counters are root-only since CVE-2020-8694; grant read access, e.g. a udev rule or `chmod a+r .../energy_uj`)",
                cfg.rapl_root.display()
            )),
        }
    };
    match cfg.meter {
        MeterKind::Estimate => Ok(estimate()),
        MeterKind::Nvml => nvml::Nvml::open().map(|m| Box::new(m) as Box<dyn Meter>).map_err(MeterError::Nvml),
        MeterKind::Rapl => rapl().map_err(MeterError::Rapl),
        MeterKind::Auto => {
            let nvml_err = match nvml::Nvml::open() {
                Ok(m) => return Ok(Box::new(m)),
                Err(e) => e,
            };
            let rapl_err = match rapl() {
                Ok(m) => return Ok(m),
                Err(e) => e,
            };
            tracing::info!(nvml = %nvml_err, rapl = %rapl_err, "no energy counter; energy is estimated");
            Ok(estimate())
        }
    }
}

/// The meter and the attribution together: what the worker calls as
/// requests start, make tokens and finish. When the meter fails to read,
/// that interval is estimated (and the requests in it say so).
pub struct Metering {
    meter: Box<dyn Meter>,
    backup: estimate::Estimate,
    attribution: Attribution,
    failures: u64,
}

/// For stats and metrics.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MeterStatus {
    pub meter: String,
    pub measured: bool,
    pub idle_energy_j: f64,
    pub read_failures: u64,
}

impl Metering {
    pub fn new(meter: Box<dyn Meter>, cfg: &AccountingConfig) -> Self {
        Self {
            meter,
            backup: estimate::Estimate::new(cfg.idle_w, cfg.tdp_w),
            attribution: Attribution::new(Instant::now()),
            failures: 0,
        }
    }

    fn close(&mut self) {
        let backup = self.backup.joules_since_last().unwrap_or(0.0);
        let (joules, measured) = match self.meter.joules_since_last() {
            Ok(j) => (j, self.meter.measured()),
            Err(e) => {
                self.failures += 1;
                if self.failures == 1 || self.failures.is_power_of_two() {
                    tracing::warn!(meter = %self.meter.describe(), error = %e, failures = self.failures, "reading the energy meter failed; this interval is estimated");
                }
                (backup, false)
            }
        };
        self.attribution.close(joules, measured, Instant::now());
    }

    /// Request `id` starts; its prompt is about `prompt_tokens` long.
    pub fn start(&mut self, id: &str, prompt_tokens: f64) {
        self.close();
        self.attribution.start(id, prompt_tokens);
    }

    pub fn tokens(&mut self, id: &str, n: f64) {
        self.attribution.tokens(id, n);
    }

    /// Closes an interval if any request is active (the periodic sample).
    pub fn sample(&mut self) {
        if self.attribution.in_flight() > 0 {
            self.close();
        }
    }

    pub fn finish(&mut self, id: &str) -> Share {
        self.close();
        self.attribution.finish(id)
    }

    pub fn status(&self) -> MeterStatus {
        MeterStatus {
            meter: self.meter.describe(),
            measured: self.meter.measured(),
            idle_energy_j: self.attribution.idle_j,
            read_failures: self.failures,
        }
    }
}

impl Meter for rapl::Rapl {
    fn describe(&self) -> String {
        format!("rapl ({})", self.zone_names().join(", "))
    }
    fn measured(&self) -> bool {
        true
    }
    fn joules_since_last(&mut self) -> io::Result<f64> {
        rapl::Rapl::joules_since_last(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn cfg(meter: &str, root: PathBuf) -> AccountingConfig {
        AccountingConfig {
            meter: crate::config::Word::parse(meter).expect("a meter"),
            rapl_root: root,
            idle_w: 10.0,
            tdp_w: 50.0,
            sample_interval: std::time::Duration::from_secs(1),
            embodied_kgco2: 1000.0,
            lifetime_years: 5.0,
        }
    }

    #[test]
    fn auto_prefers_rapl_over_the_estimate_and_explicit_choices_must_work() {
        let root = tempfile::tempdir().unwrap();
        // No NVML library and no RAPL tree here: the estimate.
        let m = detect(&cfg("auto", root.path().join("absent"))).unwrap();
        assert!(!m.measured(), "{}", m.describe());
        assert!(detect(&cfg("rapl", root.path().join("absent"))).err().unwrap().to_string().contains("no RAPL zones"));
        // A fake RAPL tree: auto picks it (NVML is absent on this machine).
        let pkg = root.path().join("intel-rapl:0");
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(pkg.join("name"), "package-0\n").unwrap();
        std::fs::write(pkg.join("energy_uj"), "1000000\n").unwrap();
        std::fs::write(pkg.join("max_energy_range_uj"), "262143328850\n").unwrap();
        let mut m = detect(&cfg("auto", root.path().to_path_buf())).unwrap();
        if nvml::Nvml::open().is_err() {
            assert!(m.measured());
            assert_eq!(m.describe(), "rapl (package-0)");
            std::fs::write(pkg.join("energy_uj"), "3500000\n").unwrap();
            assert!((m.joules_since_last().unwrap() - 2.5).abs() < 1e-9);
        }
        assert!(!detect(&cfg("estimate", root.path().to_path_buf())).unwrap().measured());
    }
}
