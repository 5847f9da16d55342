//! NVIDIA GPUs through NVML (`nvml-wrapper`, which loads `libnvidia-ml.so.1`
//! at run time, so sproutd builds and runs on machines without a GPU).
//!
//! Per GPU: the total-energy counter (mJ since the driver loaded; Volta and
//! newer) where it exists, else the power draw (mW) integrated over time.

use std::io;
use std::time::Instant;

use nvml_wrapper::Nvml as Lib;

use super::Meter;

enum Source {
    /// Last counter value, mJ.
    Counter(u64),
    /// Last power sample (W) and when.
    Power(f64, Instant),
}

pub struct Nvml {
    lib: Lib,
    gpus: Vec<(u32, String, Source)>,
}

fn err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl Nvml {
    /// Opens NVML and every GPU it sees; an error says why not (no driver
    /// library, no GPU).
    pub fn open() -> Result<Nvml, String> {
        let lib = Lib::init().map_err(|e| format!("NVML unavailable: {e}"))?;
        let n = lib.device_count().map_err(|e| format!("NVML device count: {e}"))?;
        if n == 0 {
            return Err("NVML sees no GPU".into());
        }
        let mut gpus = Vec::new();
        for i in 0..n {
            let d = lib.device_by_index(i).map_err(|e| format!("GPU {i}: {e}"))?;
            let name = d.name().unwrap_or_else(|_| format!("GPU {i}"));
            let source = match d.total_energy_consumption() {
                Ok(mj) => Source::Counter(mj),
                Err(_) => {
                    let w = d.power_usage().map_err(|e| format!("GPU {i} ({name}): neither energy nor power readable: {e}"))?;
                    Source::Power(w as f64 / 1000.0, Instant::now())
                }
            };
            gpus.push((i, name, source));
        }
        Ok(Nvml { lib, gpus })
    }
}

impl Meter for Nvml {
    fn describe(&self) -> String {
        let names: Vec<String> = self
            .gpus
            .iter()
            .map(|(i, n, s)| format!("{i}: {n} ({})", if matches!(s, Source::Counter(_)) { "energy counter" } else { "power x time" }))
            .collect();
        format!("nvml ({})", names.join(", "))
    }
    fn measured(&self) -> bool {
        true
    }
    fn joules_since_last(&mut self) -> io::Result<f64> {
        let mut joules = 0.0;
        for (i, _, source) in &mut self.gpus {
            let d = self.lib.device_by_index(*i).map_err(err)?;
            match source {
                Source::Counter(last) => {
                    let now = d.total_energy_consumption().map_err(err)?;
                    joules += now.saturating_sub(*last) as f64 / 1000.0;
                    *last = now;
                }
                Source::Power(last_w, at) => {
                    // Trapezoid between the last sample and this one.
                    let w = d.power_usage().map_err(err)? as f64 / 1000.0;
                    let now = Instant::now();
                    joules += (*last_w + w) / 2.0 * now.duration_since(*at).as_secs_f64();
                    (*last_w, *at) = (w, now);
                }
            }
        }
        Ok(joules)
    }
}
