//! What the daemon reports: `plan`, `stats`, `carbon`, `ledger export`.

use super::{joined, parse_since, per_level, print_json, CliError};
use crate::client::Client;
use crate::wire::Reading;

pub async fn plan(client: &Client, json: bool) -> Result<(), CliError> {
    let p = client.plan().await?;
    if json {
        print_json(&p);
        return Ok(());
    }
    let levels = p.levels.join(" / ");
    let baseline = p.levels.first().map(String::as_str).unwrap_or("L0");
    let (Some(classes), true) = (&p.classes, p.enabled) else {
        println!("optimizer: {} ; fixed mix {levels} = {}", p.status, per_level(p.x.as_deref()));
        return Ok(());
    };
    let n = |v: Option<f64>| v.unwrap_or(f64::NAN);
    println!(
        "plan ({} policy, {}): CI {:.0} gCO2e/kWh in [{:.0}, {:.0}], xi {}",
        p.policy.as_deref().unwrap_or("?"),
        p.status,
        n(p.ci),
        n(p.ci_min),
        n(p.ci_max),
        n(p.xi)
    );
    let (expected, at_baseline) = (n(p.expected_g), n(p.baseline_g));
    println!(
        "quality floor {:.1}% of all-{baseline}; expected quality {:.1}%; expected {expected:.4} g/request vs {at_baseline:.4} g at {baseline} ({:.0}% less); solved in {} us ({})",
        n(p.floor) * 100.0,
        n(p.quality) * 100.0,
        100.0 * (1.0 - expected / at_baseline.max(1e-12)),
        p.solve_us.unwrap_or(0),
        p.reason.as_deref().unwrap_or("")
    );
    println!("mix {levels}: {}", per_level(p.x.as_deref()));
    println!("{:<12} {:>6}  {:<20} {:<20} {:<20} {:<16} {}", "class", "share", "x", "q (kept, lower bound)", "e (J)", "p (s)", "samples");
    for c in classes {
        let kept: Vec<String> = c.kept.iter().flatten().map(|k| k.n.to_string()).collect();
        let held: Vec<&str> = c.allowed.iter().zip(&p.levels).filter(|(a, _)| !**a).map(|(_, l)| l.as_str()).collect();
        let held = if held.is_empty() { String::new() } else { format!(" ({} held at 0: bound below the floor)", held.join(", ")) };
        println!(
            "{:<12} {:>5.0}%  {:<20} {:<20} {:<20} {:<16} {}{}",
            c.name,
            c.weight * 100.0,
            joined(&c.x, 1.0, 2),
            joined(&c.q, 1.0, 2),
            joined(&c.e_kwh, 3.6e6, 0),
            joined(&c.p_s, 1.0, 1),
            kept.join(" / "),
            held
        );
    }
    let history = p.history.unwrap_or_default();
    if history.len() > 1 {
        println!("recent solves (CI -> mix):");
        for h in history.iter().rev().take(6) {
            println!("  {:>5.0} -> {}  ({})", h.ci, joined(&h.x, 1.0, 2), h.status);
        }
    }
    Ok(())
}

pub async fn stats(client: &Client, since: Option<&str>, json: bool) -> Result<(), CliError> {
    let since = since.map(parse_since).transpose()?;
    let s = client.stats(since).await?;
    if json {
        print_json(&s);
        return Ok(());
    }
    println!("requests:  {}  ({} prompt + {} completion tokens)", s.requests, s.prompt_tokens, s.completion_tokens);
    println!("energy:    {:.1} J  ({} estimated, {} measured requests)", s.energy_j, s.estimated_requests, s.measured_requests);
    println!("carbon:    {:.4} gCO2e  (operational {:.4}, embodied {:.4})", s.carbon_g, s.operational_g, s.embodied_g);
    let own = &s.own_work;
    println!(
        "own work:  {} requests, {:.1} J, {:.4} gCO2e  (evaluation runs: in the totals, not in the savings or levels)",
        own.requests, own.energy_j, own.carbon_g
    );
    match s.savings.carbon_g {
        Some(g) => println!("saved:     {g:.4} gCO2e against serving every user request at {}", s.savings.baseline),
        None => println!("saved:     unknown until a {} request has succeeded", s.savings.baseline),
    }
    println!("users' requests by level:");
    println!("{:<6} {:>8} {:>7} {:>12} {:>12} {:>12}", "LEVEL", "REQUESTS", "SHARE", "MEAN TOKENS", "MEAN J", "MEAN gCO2e");
    for (name, l) in &s.levels {
        println!(
            "{:<6} {:>8} {:>6.0}% {:>12.1} {:>12.1} {:>12.5}",
            name,
            l.totals.requests,
            100.0 * l.share,
            l.mean_completion_tokens,
            l.mean_energy_j,
            l.mean_carbon_g
        );
    }
    Ok(())
}

pub async fn carbon(client: &Client, json: bool) -> Result<(), CliError> {
    let c = client.carbon().await?;
    if json {
        print_json(&c);
        return Ok(());
    }
    let src = &c.source;
    println!("intensity now: {:.0} gCO2e/kWh  (source: {} {})", c.now.gco2_per_kwh, src.kind, src.name);
    let age = src.age_s.map(|a| format!("{a} s ago"));
    if src.fallback {
        println!(
            "FALLBACK in use: {} (last error: {}; last good reading {})",
            src.fallback_name.as_deref().unwrap_or("?"),
            src.last_error.as_deref().unwrap_or("none yet"),
            age.unwrap_or_else(|| "never".into())
        );
    } else if let Some(age) = age {
        println!("last reading:  {age}");
    }
    if let Some((i, low)) = c.forecast.iter().enumerate().min_by(|a, b| a.1.gco2_per_kwh.total_cmp(&b.1.gco2_per_kwh)) {
        println!(
            "lowest in the next {} h: {:.0} gCO2e/kWh in {} h (forecast from the {})",
            c.forecast.len(),
            low.gco2_per_kwh,
            i + 1,
            src.forecast
        );
    }
    let values = |v: &[Reading]| v.iter().map(|r| format!("{:.0}", r.gco2_per_kwh)).collect::<Vec<_>>().join(" ");
    println!("past hours:    {}", values(&c.past));
    println!("next hours:    {}", values(&c.forecast));
    Ok(())
}

pub async fn ledger_export(client: &Client, format: &str, since: Option<&str>) -> Result<(), CliError> {
    let since = since.map(parse_since).transpose()?;
    let out = client.ledger(format, since).await?;
    print!("{out}");
    if !out.ends_with('\n') {
        println!();
    }
    Ok(())
}
