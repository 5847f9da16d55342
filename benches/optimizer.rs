//! The optimizer's solve time (p50/p99 over many solves, one class as in the
//! method and four as in `best`), and the simulator's time for a 720-hour
//! window over the Sprout artifact.
//!
//!   cargo bench --bench optimizer

use std::path::PathBuf;
use std::time::Instant;

use sprout::plan::optimizer::{solve, ClassInputs, Inputs};
use sprout::simulate::{run, Artifact, Policy, SimConfig};

fn inputs(classes: usize, k: usize) -> Inputs {
    let j = k as f64 * 0.001;
    Inputs {
        classes: (0..classes)
            .map(|c| ClassInputs {
                name: format!("c{c}"),
                weight: 1.0 + c as f64,
                e: vec![1.1e-4 + j * 1e-6, 4.0e-5, 2.0e-5],
                p: vec![3.0, 1.0, 0.5],
                q: vec![0.38 + 0.01 * c as f64, 0.34, 0.28 - 0.01 * c as f64],
                allowed: vec![],
            })
            .collect(),
        ci: 50.0 + (k % 400) as f64,
        ci_min: 50.0,
        ci_max: 450.0,
        xi: 0.1,
        embodied_g: 26_356.568,
        lifetime_s: 5.0 * 365.0 * 86_400.0,
        margin: 0.0,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    for classes in [1, 4] {
        let mut t: Vec<f64> = (0..2000)
            .map(|k| {
                let inp = inputs(classes, k);
                let t0 = Instant::now();
                let plan = solve(&inp);
                let dt = t0.elapsed().as_secs_f64() * 1e6;
                assert_eq!(plan.status, "optimal");
                dt
            })
            .collect();
        t.sort_by(f64::total_cmp);
        println!(
            "solve, {classes} class(es), 3 levels: p50 {:.0} us, p99 {:.0} us, max {:.0} us (2000 solves; aim: under 1 ms)",
            percentile(&t, 0.5),
            percentile(&t, 0.99),
            t[t.len() - 1]
        );
    }
    let dir = std::env::var("SPROUT_ARTIFACT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/sprout_artifact"));
    let t0 = Instant::now();
    let a = match Artifact::load(&dir) {
        Ok(a) => a,
        Err(e) => {
            println!("simulator: skipped ({e})");
            return;
        }
    };
    println!("artifact load: {:.2} s ({} judged prompts)", t0.elapsed().as_secs_f64(), a.prompts.len());
    for policy in Policy::ALL {
        let t0 = Instant::now();
        let r = run(&a, &SimConfig { region: "GB".into(), start_hour: 3900, hours: 720, policy, ..SimConfig::default() }).unwrap();
        println!(
            "simulate 720 h, {:<11}: {:.3} s ({} requests)",
            policy.as_str(),
            t0.elapsed().as_secs_f64(),
            r.requests
        );
    }
}
