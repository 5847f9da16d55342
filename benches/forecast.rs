//! Forecast error of Sprout's history-based carbon-intensity forecast
//! (`carbon::trace::forecast`) on every hourly trace under ../shared/data:
//! mean absolute error at 1, 6 and 24 hours ahead, next to plain persistence.
//!
//!   cargo bench --bench forecast

use std::path::{Path, PathBuf};

use sprout::carbon::trace::{forecast_mae, Trace};

fn csvs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            csvs(&p, out);
        } else if p.file_name().is_some_and(|n| n.to_string_lossy().ends_with("_hourly.csv")) {
            out.push(p);
        }
    }
}

fn persistence_mae(v: &[f64], h: usize) -> f64 {
    let n = v.len() - h - 24 * 7;
    (24 * 7..v.len() - h).map(|i| (v[i + h] - v[i]).abs()).sum::<f64>() / n as f64
}

fn main() {
    let root = std::env::var("SPROUT_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let mut files = Vec::new();
    csvs(&root, &mut files);
    files.sort();
    println!("{:<48} {:>7} {:>13} {:>13} {:>13}", "trace", "mean", "MAE 1h", "MAE 6h", "MAE 24h");
    println!("{:<48} {:>7} {:>13} {:>13} {:>13}", "", "g/kWh", "ours (pers.)", "ours (pers.)", "ours (pers.)");
    let mut sums = [0.0f64; 3];
    let mut pers = [0.0f64; 3];
    let mut n = 0;
    for f in &files {
        let Ok(t) = std::fs::read_to_string(f).map_err(|e| e.to_string()).and_then(|s| Trace::parse(&s).map_err(|e| e.to_string())) else {
            continue;
        };
        let v = &t.values;
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let cells: Vec<String> = [1, 6, 24]
            .iter()
            .enumerate()
            .map(|(i, &h)| {
                let (ours, p) = (forecast_mae(v, h), persistence_mae(v, h));
                sums[i] += ours;
                pers[i] += p;
                format!("{ours:.1} ({p:.1})")
            })
            .collect();
        n += 1;
        let name = f.strip_prefix(&root).unwrap_or(f).display().to_string();
        println!("{:<48} {:>7.0} {:>13} {:>13} {:>13}", name, mean, cells[0], cells[1], cells[2]);
    }
    let k = n as f64;
    println!(
        "mean over {n} traces: {:.1} / {:.1} / {:.1} gCO2/kWh at 1 / 6 / 24 h (persistence {:.1} / {:.1} / {:.1})",
        sums[0] / k,
        sums[1] / k,
        sums[2] / k,
        pers[0] / k,
        pers[1] / k,
        pers[2] / k
    );
}
