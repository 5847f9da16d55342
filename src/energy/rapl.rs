//! RAPL energy counters through the Linux powercap sysfs tree
//! (`/sys/class/powercap/intel-rapl:N` for each CPU package, with its `dram`
//! subzone `intel-rapl:N:M` where the platform has one).
//!
//! Counted: every package zone and every dram subzone. Not counted: the
//! `core`/`uncore` subzones, which are already inside their package. Each
//! counter (`energy_uj`) wraps at `max_energy_range_uj`; a reading lower
//! than the last one means it wrapped once since (readings come far more
//! often than the minutes a wrap takes). The root is configurable so tests
//! use a fake tree.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The default powercap root.
pub const POWERCAP_ROOT: &str = "/sys/class/powercap";

#[derive(Debug, Clone)]
struct Zone {
    name: String,
    energy: PathBuf,
    max_range_uj: u64,
    last_uj: u64,
}

#[derive(Debug)]
pub struct Rapl {
    zones: Vec<Zone>,
}

fn read_u64(path: &Path) -> io::Result<u64> {
    fs::read_to_string(path)?
        .trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))
}

fn is_package(dir_name: &str) -> bool {
    // "intel-rapl:0" (one colon), not "intel-rapl:0:1".
    dir_name.starts_with("intel-rapl:") && dir_name.matches(':').count() == 1
}

impl Rapl {
    /// Finds the package and dram zones under `root`; `Ok(None)` when there
    /// are none (no RAPL on this machine). Errors when zones exist but their
    /// counters cannot be read (typically: only root may read `energy_uj`).
    pub fn discover(root: &Path) -> io::Result<Option<Rapl>> {
        let entries = match fs::read_dir(root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut packages: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| is_package(&e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .collect();
        packages.sort();
        let mut zones = Vec::new();
        for pkg in packages {
            zones.push(Self::zone(&pkg)?);
            let mut subs: Vec<PathBuf> = fs::read_dir(&pkg)?
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("intel-rapl:"))
                .map(|e| e.path())
                .collect();
            subs.sort();
            for sub in subs {
                if fs::read_to_string(sub.join("name")).map(|n| n.trim() == "dram").unwrap_or(false) {
                    zones.push(Self::zone(&sub)?);
                }
            }
        }
        Ok((!zones.is_empty()).then_some(Rapl { zones }))
    }

    fn zone(dir: &Path) -> io::Result<Zone> {
        let name = fs::read_to_string(dir.join("name")).map(|n| n.trim().to_string()).unwrap_or_default();
        let energy = dir.join("energy_uj");
        Ok(Zone { name, max_range_uj: read_u64(&dir.join("max_energy_range_uj"))?, last_uj: read_u64(&energy)?, energy })
    }

    /// Zone names, e.g. `["package-0", "dram"]`.
    pub fn zone_names(&self) -> Vec<String> {
        self.zones.iter().map(|z| z.name.clone()).collect()
    }

    /// Joules used by all counted zones since the previous call (or discovery).
    pub fn joules_since_last(&mut self) -> io::Result<f64> {
        let mut total_uj: u64 = 0;
        for z in &mut self.zones {
            let now = read_u64(&z.energy)?;
            let delta = if now >= z.last_uj { now - z.last_uj } else { z.max_range_uj - z.last_uj + now };
            z.last_uj = now;
            total_uj += delta;
        }
        Ok(total_uj as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(dir: &Path, name: &str, energy: u64, max: u64) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("name"), format!("{name}\n")).unwrap();
        fs::write(dir.join("energy_uj"), format!("{energy}\n")).unwrap();
        fs::write(dir.join("max_energy_range_uj"), format!("{max}\n")).unwrap();
    }

    fn set(dir: &Path, energy: u64) {
        fs::write(dir.join("energy_uj"), format!("{energy}\n")).unwrap();
    }

    #[test]
    fn counts_packages_and_dram_but_not_core_and_handles_wraparound() {
        let root = tempfile::tempdir().unwrap();
        let p0 = root.path().join("intel-rapl:0");
        let p1 = root.path().join("intel-rapl:1");
        let core = p0.join("intel-rapl:0:0");
        let dram = p0.join("intel-rapl:0:1");
        zone(&p0, "package-0", 1_000_000, 262_143_328_850);
        zone(&core, "core", 500_000, 262_143_328_850);
        zone(&dram, "dram", 2_000_000, 65_712_999_613);
        zone(&p1, "package-1", 262_143_000_000, 262_143_328_850);
        // Not RAPL: ignored.
        zone(&root.path().join("intel-rapl-mmio:0"), "package-0", 0, 1000);
        let mut r = Rapl::discover(root.path()).unwrap().unwrap();
        assert_eq!(r.zone_names(), ["package-0", "dram", "package-1"]);
        set(&p0, 11_000_000); // +10 J
        set(&core, 9_000_000); // inside the package: not added
        set(&dram, 3_500_000); // +1.5 J
        set(&p1, 671_150); // wrapped: 328_850 + 671_150 = +1 J
        let j = r.joules_since_last().unwrap();
        assert!((j - 12.5).abs() < 1e-9, "{j}");
        assert_eq!(r.joules_since_last().unwrap(), 0.0);
    }

    #[test]
    fn no_powercap_tree_means_no_rapl() {
        let root = tempfile::tempdir().unwrap();
        assert!(Rapl::discover(&root.path().join("absent")).unwrap().is_none());
        assert!(Rapl::discover(root.path()).unwrap().is_none());
    }
}
