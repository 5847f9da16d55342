//! What the daemon reports: `plan`, `stats`, `carbon`, `ledger export`.

use serde_json::Value;

use super::{parse_since, print_json, CliError};
use crate::client::Client;

pub async fn plan(client: &Client, json: bool) -> Result<(), CliError> {
    let p = client.plan().await?;
    if json {
        print_json(&p);
        return Ok(());
    }
    let levels: Vec<String> = p["levels"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect();
    let fmt = |v: &Value, scale: f64, prec: usize| -> String {
        v.as_array()
            .map(|a| a.iter().map(|x| format!("{:.prec$}", x.as_f64().unwrap_or(f64::NAN) * scale)).collect::<Vec<_>>().join(" / "))
            .unwrap_or_else(|| "-".into())
    };
    if p["enabled"] != true || p["classes"].is_null() {
        println!("optimizer: {} ; fixed mix {} = {}", p["status"].as_str().unwrap_or("?"), levels.join(" / "), fmt(&p["x"], 1.0, 2));
        return Ok(());
    }
    println!(
        "plan ({} policy, {}): CI {:.0} gCO2e/kWh in [{:.0}, {:.0}], xi {}",
        p["policy"].as_str().unwrap_or("?"),
        p["status"].as_str().unwrap_or("?"),
        p["ci"].as_f64().unwrap_or(f64::NAN),
        p["ci_min"].as_f64().unwrap_or(f64::NAN),
        p["ci_max"].as_f64().unwrap_or(f64::NAN),
        p["xi"]
    );
    println!(
        "quality floor {:.1}% of all-{}; expected quality {:.1}%; expected {:.4} g/request vs {:.4} g at {} ({:.0}% less); solved in {} us ({})",
        p["floor"].as_f64().unwrap_or(f64::NAN) * 100.0,
        levels.first().map(String::as_str).unwrap_or("L0"),
        p["quality"].as_f64().unwrap_or(f64::NAN) * 100.0,
        p["expected_g"].as_f64().unwrap_or(f64::NAN),
        p["baseline_g"].as_f64().unwrap_or(f64::NAN),
        levels.first().map(String::as_str).unwrap_or("L0"),
        100.0 * (1.0 - p["expected_g"].as_f64().unwrap_or(0.0) / p["baseline_g"].as_f64().unwrap_or(1.0).max(1e-12)),
        p["solve_us"],
        p["reason"].as_str().unwrap_or("")
    );
    println!("mix {}: {}", levels.join(" / "), fmt(&p["x"], 1.0, 2));
    println!("{:<12} {:>6}  {:<20} {:<20} {:<20} {:<16} {}", "class", "share", "x", "q (kept, lower bound)", "e (J)", "p (s)", "samples");
    for c in p["classes"].as_array().into_iter().flatten() {
        let kept: Vec<String> = c["kept"].as_array().into_iter().flatten().map(|k| k["n"].to_string()).collect();
        let allowed: Vec<&str> = c["allowed"].as_array().into_iter().flatten().map(|a| if a == true { "" } else { "held" }).collect();
        let held = if allowed.iter().any(|a| !a.is_empty()) { format!(" ({})", allowed.iter().enumerate().filter(|(_, a)| !a.is_empty()).map(|(i, _)| levels.get(i).cloned().unwrap_or_default()).collect::<Vec<_>>().join(", ") + " held at 0: bound below the floor") } else { String::new() };
        println!(
            "{:<12} {:>5.0}%  {:<20} {:<20} {:<20} {:<16} {}{}",
            c["name"].as_str().unwrap_or("?"),
            c["weight"].as_f64().unwrap_or(0.0) * 100.0,
            fmt(&c["x"], 1.0, 2),
            fmt(&c["q"], 1.0, 2),
            fmt(&c["e_kwh"], 3.6e6, 0),
            fmt(&c["p_s"], 1.0, 1),
            kept.join(" / "),
            held
        );
    }
    let hist = p["history"].as_array().cloned().unwrap_or_default();
    if hist.len() > 1 {
        println!("recent solves (CI -> mix):");
        for h in hist.iter().rev().take(6) {
            println!("  {:>5.0} -> {}  ({})", h["ci"].as_f64().unwrap_or(f64::NAN), fmt(&h["x"], 1.0, 2), h["status"].as_str().unwrap_or(""));
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
    let f = |k: &str| s[k].as_f64().unwrap_or(0.0);
    println!("requests:  {}  ({} prompt + {} completion tokens)", s["requests"], s["prompt_tokens"], s["completion_tokens"]);
    println!("energy:    {:.1} J  ({} estimated, {} measured requests)", f("energy_j"), s["estimated_requests"], s["measured_requests"]);
    println!("carbon:    {:.4} gCO2e  (operational {:.4}, embodied {:.4})", f("carbon_g"), f("operational_g"), f("embodied_g"));
    let own = &s["own_work"];
    println!(
        "own work:  {} requests, {:.1} J, {:.4} gCO2e  (evaluation runs: in the totals, not in the savings or levels)",
        own["requests"],
        own["energy_j"].as_f64().unwrap_or(0.0),
        own["carbon_g"].as_f64().unwrap_or(0.0)
    );
    match s["savings"]["carbon_g"].as_f64() {
        Some(g) => println!("saved:     {g:.4} gCO2e against serving every user request at {}", s["savings"]["baseline"].as_str().unwrap_or("L0")),
        None => println!("saved:     unknown until a {} request has succeeded", s["savings"]["baseline"].as_str().unwrap_or("L0")),
    }
    println!("users' requests by level:");
    println!("{:<6} {:>8} {:>7} {:>12} {:>12} {:>12}", "LEVEL", "REQUESTS", "SHARE", "MEAN TOKENS", "MEAN J", "MEAN gCO2e");
    if let Some(levels) = s["levels"].as_object() {
        for (name, l) in levels {
            println!(
                "{:<6} {:>8} {:>6.0}% {:>12.1} {:>12.1} {:>12.5}",
                name,
                l["totals"]["requests"].as_u64().unwrap_or(0),
                100.0 * l["share"].as_f64().unwrap_or(0.0),
                l["mean_completion_tokens"].as_f64().unwrap_or(0.0),
                l["mean_energy_j"].as_f64().unwrap_or(0.0),
                l["mean_carbon_g"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

pub async fn carbon(client: &Client, json: bool) -> Result<(), CliError> {
    let c = client.carbon().await?;
    if json {
        print_json(&c);
        return Ok(());
    }
    let now = c["now"]["gco2_per_kwh"].as_f64().unwrap_or(f64::NAN);
    let src = &c["source"];
    println!("intensity now: {now:.0} gCO2e/kWh  (source: {} {})", src["kind"].as_str().unwrap_or("?"), src["name"].as_str().unwrap_or("?"));
    if src["fallback"].as_bool() == Some(true) {
        println!(
            "FALLBACK in use: {} (last error: {}; last good reading {})",
            src["fallback_name"].as_str().unwrap_or("?"),
            src["last_error"].as_str().unwrap_or("none yet"),
            src["age_s"].as_i64().map(|a| format!("{a} s ago")).unwrap_or_else(|| "never".into())
        );
    } else if let Some(age) = src["age_s"].as_i64() {
        println!("last reading:  {age} s ago");
    }
    let forecast = c["forecast"].as_array().cloned().unwrap_or_default();
    if let Some((i, low)) = forecast
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r["gco2_per_kwh"].as_f64().map(|v| (i, v)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
    {
        println!(
            "lowest in the next {} h: {low:.0} gCO2e/kWh in {} h (forecast from the {})",
            forecast.len(),
            i + 1,
            src["forecast"].as_str().unwrap_or("?")
        );
    }
    let values = |v: &Value| -> String {
        v.as_array().into_iter().flatten().filter_map(|r| r["gco2_per_kwh"].as_f64()).map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(" ")
    };
    println!("past hours:    {}", values(&c["past"]));
    println!("next hours:    {}", values(&c["forecast"]));
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
