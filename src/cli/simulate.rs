//! `sproutctl simulate`: the artifact replay (no daemon needed).

use serde_json::json;

use super::{print_json, CliError, SimulateArgs};

pub fn command(args: &SimulateArgs) -> Result<(), CliError> {
    use crate::simulate::{self, Artifact, Policy, SimConfig};
    let data = args.data.clone().ok_or_else(|| {
        CliError::Usage("simulate needs the artifact folder: --data DIR (or SPROUT_ARTIFACT), e.g. ../shared/data/sprout_artifact".into())
    })?;
    let policy = Policy::parse(&args.policy).ok_or_else(|| {
        CliError::Usage(format!("--policy {:?}: not one of sprout, static, co2, small-model, oracle, best", args.policy))
    })?;
    if !(args.xi.is_finite() && (0.0..=1.0).contains(&args.xi)) {
        return Err(CliError::Usage(format!("--xi {}: must be between 0 and 1", args.xi)));
    }
    if args.seeds == 0 || args.hours == 0 {
        return Err(CliError::Usage("--seeds and --hours must be at least 1".into()));
    }
    let artifact = Artifact::load(&data).map_err(|e| CliError::Usage(format!("reading the artifact: {e}")))?;
    let base = SimConfig {
        region: args.region.clone(),
        start_hour: args.start_hour,
        hours: args.hours,
        xi: args.xi,
        seed: args.seed,
        policy,
        small_model_quality: args.small_model_quality,
        ..SimConfig::default()
    };
    if args.eval_rules {
        println!("| grid | method: runs | mean gCO2/kWh at runs | eval carbon, kg | mean / max age of q, h | Sprout: runs | mean gCO2/kWh at runs | eval carbon, kg | mean / max age of q, h |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for region in artifact.traces.keys() {
            let (m, o) = simulate::eval_rules(&artifact, region, base.eval_prompts).map_err(CliError::Usage)?;
            println!(
                "| {region} | {} | {:.0} | {:.2} | {:.1} / {} | {} | {:.0} | {:.2} | {:.1} / {} |",
                m.runs, m.mean_ci, m.carbon_g / 1000.0, m.mean_staleness_h, m.max_staleness_h,
                o.runs, o.mean_ci, o.carbon_g / 1000.0, o.mean_staleness_h, o.max_staleness_h
            );
        }
        return Ok(());
    }
    if args.spatial {
        if args.capacity.is_empty() || args.capacity.iter().any(|c| !(c.is_finite() && *c >= 0.0)) {
            return Err(CliError::Usage("--capacity: non-negative numbers, comma-separated".into()));
        }
        if args.table {
            print!("{}", simulate::spatial::table(&artifact, &base, &args.capacity).map_err(CliError::Usage)?);
            return Ok(());
        }
        let r = simulate::spatial::spatial(&artifact, &base, &args.capacity).map_err(CliError::Usage)?;
        if args.json {
            print_json(&json!(r));
            return Ok(());
        }
        println!(
            "home {} from hour {} for {} h: mean {:.0} gCO2/kWh at home, {:.0} in the cleanest region each hour",
            r.home, r.start_hour, r.hours, r.home_mean_ci, r.cleanest_mean_ci
        );
        println!("directives alone: {:.1}% less carbon than L0 at home (quality {:.1}%)", r.directives_pct, r.quality_pct);
        for (k, c) in r.capacities.iter().enumerate() {
            println!(
                "capacity {c}: routing alone {:.1}%, directives + routing {:.1}% (+{:.1} points over directives alone)",
                r.spatial_pct[k], r.both_pct[k], r.both_pct[k] - r.directives_pct
            );
        }
        return Ok(());
    }
    if args.table {
        let t0 = std::time::Instant::now();
        let table = simulate::table(&artifact, &base, args.seeds).map_err(CliError::Usage)?;
        print!("{table}");
        eprintln!("({} runs of {} h in {:.1} s)", table.lines().count().saturating_sub(2) * 6 * args.seeds as usize, args.hours, t0.elapsed().as_secs_f64());
        return Ok(());
    }
    let runs: Vec<simulate::SimResult> = (0..args.seeds)
        .map(|k| simulate::run(&artifact, &SimConfig { seed: args.seed + k, ..base.clone() }))
        .collect::<Result<_, _>>()
        .map_err(CliError::Usage)?;
    let n = runs.len() as f64;
    let saving = runs.iter().map(|r| r.carbon_saving_pct).sum::<f64>() / n;
    let quality = runs.iter().map(|r| r.quality_pct).sum::<f64>() / n;
    let hourly_quality = runs.iter().map(|r| r.hourly_quality_pct).sum::<f64>() / n;
    let own_quality = runs.iter().map(|r| r.own_quality_pct).sum::<f64>() / n;
    if let Some(path) = &args.plot {
        std::fs::write(path, simulate::plot_svg(&runs[0]))
            .map_err(|e| CliError::Usage(format!("writing the plot {}: {e}", path.display())))?;
    }
    if args.json {
        let mut v = json!({
            "policy": policy.as_str(),
            "region": args.region,
            "start_hour": args.start_hour,
            "hours": args.hours,
            "xi": args.xi,
            "seeds": (args.seed..args.seed + args.seeds).collect::<Vec<_>>(),
            "carbon_saving_pct": saving,
            "quality_pct": quality,
            "hourly_quality_pct": hourly_quality,
            "own_quality_pct": own_quality,
            "evaluations": runs.iter().map(|r| r.evaluations).sum::<usize>() as f64 / n,
            "mean_mix": runs[0].mean_mix,
        });
        if runs.len() == 1 {
            v["hourly"] = json!(runs[0].hourly);
        }
        print_json(&v);
        return Ok(());
    }
    println!(
        "{} on {} from hour {} for {} h (xi {}, {} seed{}):",
        policy.as_str(),
        args.region,
        args.start_hour,
        args.hours,
        args.xi,
        runs.len(),
        if runs.len() == 1 { "" } else { "s" }
    );
    println!("  carbon saving vs always-L0: {saving:.1}%");
    println!("  quality, pooled:            {quality:.1}%  (served at their best / best at L0)");
    println!("  quality, mean of hours:     {hourly_quality:.1}%");
    println!("  quality, as the LP saw it:  {own_quality:.1}%  ((q.x)/q0 with the q it solved with)");
    println!("  evaluations:                {:.1}", runs.iter().map(|r| r.evaluations).sum::<usize>() as f64 / n);
    println!("  mean mix (first seed):      {}", runs[0].mean_mix.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" / "));
    Ok(())
}
