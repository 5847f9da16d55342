//! The spatial lever, simulated: the same workload, with the same
//! directives, served from several regions, each hour's requests routed to
//! the cleanest grids first, up to each region's capacity (as the daemon's
//! router does: least carbon among backends with room, spill-over next).
//!
//! The single-region run ([`crate::simulate::run`]) gives each hour's requests, their
//! energy under the directive policy (its carbon minus its embodied part,
//! over the home grid's intensity) and at L0. Routing then moves requests
//! among regions; energy per request does not change with the region (the
//! same model and hardware everywhere), only the intensity it is multiplied
//! by. Each region can take `capacity` x (the window's mean requests per
//! hour) / regions per hour; requests move only to grids cleaner than home
//! that hour, and what they have no room for stays at home.
//! `capacity = regions` lets any single region take the mean load; below
//! 1, the regions together cannot, and the home grid serves the excess.

use serde::Serialize;

use super::{run, Artifact, SimConfig};

#[derive(Debug, Clone, Serialize)]
pub struct SpatialResult {
    pub home: String,
    pub start_hour: usize,
    pub hours: usize,
    /// Carbon saving against L0 at home, %: directives alone.
    pub directives_pct: f64,
    /// Routing alone (L0 everywhere), per capacity.
    pub spatial_pct: Vec<f64>,
    /// Directives and routing together, per capacity.
    pub both_pct: Vec<f64>,
    pub capacities: Vec<f64>,
    /// The mean intensity at home and of the cleanest region, over the window.
    pub home_mean_ci: f64,
    pub cleanest_mean_ci: f64,
    /// Judged quality of the directive policy (routing does not change it).
    pub quality_pct: f64,
}

/// Requests of one hour routed to the regions cleaner than `home`, cleanest
/// first, each up to `cap`; the rest at `home` (which serves them all
/// without routing, so it needs no spare capacity). Returns requests per region.
pub fn route_hour(n: f64, cis: &[f64], cap: f64, home: usize) -> Vec<f64> {
    let mut order: Vec<usize> = (0..cis.len()).collect();
    order.sort_by(|a, b| cis[*a].total_cmp(&cis[*b]).then(a.cmp(b)));
    let mut left = n;
    let mut out = vec![0.0; cis.len()];
    for r in order {
        if r == home || cis[r] >= cis[home] {
            break;
        }
        let take = left.min(cap);
        out[r] += take;
        left -= take;
        if left <= 0.0 {
            break;
        }
    }
    out[home] += left.max(0.0);
    out
}

/// One home region's window, served from every region of the artifact.
pub fn spatial(a: &Artifact, cfg: &SimConfig, capacities: &[f64]) -> Result<SpatialResult, String> {
    let r = run(a, cfg)?;
    let regions: Vec<&String> = a.traces.keys().collect();
    let home = regions.iter().position(|z| **z == cfg.region).ok_or("no such region")?;
    let traces: Vec<&Vec<f64>> = regions.iter().map(|z| &a.traces[*z]).collect();
    let mean_n = r.hourly.iter().map(|h| h.requests as f64).sum::<f64>() / r.hourly.len() as f64;
    let (mut base, mut dirs) = (0.0, 0.0);
    let mut spatial = vec![0.0; capacities.len()];
    let mut both = vec![0.0; capacities.len()];
    let mut cleanest = 0.0;
    for h in &r.hourly {
        if h.embodied_g.is_nan() {
            return Err(format!("the spatial lever is simulated for the directive policies (sprout, static, co2, best), not {}", cfg.policy.as_str()));
        }
        let cis: Vec<f64> = traces.iter().map(|t| t[h.hour % t.len()]).collect();
        cleanest += cis.iter().cloned().fold(f64::INFINITY, f64::min) / r.hourly.len() as f64;
        let n = h.requests as f64;
        // kWh per request under the policy and at L0.
        let e_dir = (h.carbon_g - h.embodied_g) / h.ci / n;
        let e_l0 = (h.baseline_g - h.baseline_embodied_g) / h.ci / n;
        base += h.baseline_g;
        dirs += h.carbon_g;
        for (k, &c) in capacities.iter().enumerate() {
            let split = route_hour(n, &cis, c * mean_n / regions.len() as f64, home);
            let grid: f64 = split.iter().zip(&cis).map(|(m, ci)| m * ci).sum();
            spatial[k] += e_l0 * grid + h.baseline_embodied_g;
            both[k] += e_dir * grid + h.embodied_g;
        }
    }
    let pct = |c: f64| 100.0 * (1.0 - c / base);
    Ok(SpatialResult {
        home: cfg.region.clone(),
        start_hour: cfg.start_hour,
        hours: cfg.hours,
        directives_pct: pct(dirs),
        spatial_pct: spatial.into_iter().map(pct).collect(),
        both_pct: both.into_iter().map(pct).collect(),
        capacities: capacities.to_vec(),
        home_mean_ci: r.hourly.iter().map(|h| h.ci).sum::<f64>() / r.hourly.len() as f64,
        cleanest_mean_ci: cleanest,
        quality_pct: r.quality_pct,
    })
}

/// Every grid as home, from hours 800, 3900 and 7000: markdown.
pub fn table(a: &Artifact, base: &SimConfig, capacities: &[f64]) -> Result<String, String> {
    let mut out = String::from("| home grid | start hour | home / cleanest mean gCO2/kWh | directives alone |");
    for c in capacities {
        out += &format!(" + routing, capacity {c} |");
    }
    out += " routing alone (capacity ";
    out += &format!("{}) | quality |\n|---|---|---|---|", capacities[0]);
    out += &"---|".repeat(capacities.len() + 2);
    out += "\n";
    for region in a.traces.keys() {
        for start in [800usize, 3900, 7000] {
            let r = spatial(a, &SimConfig { region: region.clone(), start_hour: start, ..base.clone() }, capacities)?;
            out += &format!("| {region} | {start} | {:.0} / {:.0} | {:.1}% |", r.home_mean_ci, r.cleanest_mean_ci, r.directives_pct);
            for b in &r.both_pct {
                out += &format!(" {b:.1}% (+{:.1}) |", b - r.directives_pct);
            }
            out += &format!(" {:.1}% | {:.1}% |\n", r.spatial_pct[0], r.quality_pct);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_fill_the_cleanest_regions_first_and_the_rest_stay_home() {
        // Intensities 300 (home), 100, 200; 10 requests, 4 per region.
        assert_eq!(route_hour(10.0, &[300.0, 100.0, 200.0], 4.0, 0), vec![2.0, 4.0, 4.0]);
        // Room for all in the cleanest.
        assert_eq!(route_hour(3.0, &[300.0, 100.0, 200.0], 4.0, 0), vec![0.0, 3.0, 0.0]);
        // No room elsewhere, or home the cleanest: everything at home; never
        // to a dirtier grid.
        assert_eq!(route_hour(10.0, &[300.0, 100.0], 0.0, 0), vec![10.0, 0.0]);
        assert_eq!(route_hour(10.0, &[50.0, 100.0], 6.0, 0), vec![10.0, 0.0]);
        assert_eq!(route_hour(10.0, &[150.0, 100.0, 200.0], 4.0, 0), vec![6.0, 4.0, 0.0]);
    }

    #[test]
    fn routing_adds_to_the_directives_saving_and_less_as_capacity_tightens() {
        let Some(dir) = crate::testing::shared_data("sprout_artifact") else { return };
        let a = Artifact::load(&dir).unwrap();
        let cfg = SimConfig { region: "NL".into(), start_hour: 3900, hours: 168, ..SimConfig::default() };
        let r = spatial(&a, &cfg, &[5.0, 2.0, 1.0, 0.0]).unwrap();
        // Capacity 0: nothing moves, directives alone exactly.
        assert!((r.both_pct[3] - r.directives_pct).abs() < 1e-9, "{r:?}");
        assert!(r.spatial_pct[3].abs() < 1e-9, "{r:?}");
        for k in 0..3 {
            assert!(r.both_pct[k] >= r.both_pct[k + 1] - 1e-9, "{r:?}");
            assert!(r.spatial_pct[k] >= r.spatial_pct[k + 1] - 1e-9, "{r:?}");
        }
        assert!(r.both_pct[0] > r.directives_pct + 1.0, "{r:?}");
        assert!(r.cleanest_mean_ci < r.home_mean_ci);
    }
}
