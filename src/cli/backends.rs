//! `sproutctl backends`: the backends' table, and `backends calibrate`.

use serde_json::json;

use super::{print_json, CliError};
use crate::client::Client;

pub async fn list(client: &Client, json: bool) -> Result<(), CliError> {
    let list = client.backends().await?;
    if json {
        print_json(&serde_json::to_value(&list).expect("serializable"));
        return Ok(());
    }
    println!(
        "{:<12} {:<8} {:<6} {:>7} {:>8} {:>10} {:>9} {:>9} {:>10} {:>10}  {}",
        "backend", "kind", "health", "load", "gCO2/kWh", "J/token", "mg/token", "requests", "energy kJ", "carbon g", "grid; energy source"
    );
    for b in &list.data {
        let health = match (b.ready, b.healthy) {
            (false, _) => "loading",
            (true, true) => "up",
            (true, false) => "down",
        };
        println!(
            "{:<12} {:<8} {:<6} {:>7} {:>8.0} {:>10} {:>9.3} {:>9} {:>10.2} {:>10.4}  {}; {}{}",
            b.name,
            b.kind,
            health,
            format!("{}/{}", b.running, b.capacity),
            b.gco2_per_kwh,
            format!("{:.3}{}", b.j_per_token, if b.j_per_token_measured { "" } else { "*" }),
            b.expected_g_per_token * 1000.0,
            b.requests,
            b.energy_j / 1000.0,
            b.carbon_g,
            b.zone,
            b.energy_source,
            if b.measured { " (measured)" } else { " (estimated)" },
        );
        if let Some(e) = b.last_error.as_ref().filter(|_| !b.healthy) {
            println!("{:<12} last error: {e}; next probe in {:.0} s", "", b.retry_in_s.unwrap_or(0.0));
        }
    }
    println!("(* J/token not measured yet: the prior routing uses until its first answer)");
    Ok(())
}

/// `sproutctl backends calibrate`: the requests and readings; the fit is
/// `backends::calibrate::fit`.
#[allow(clippy::too_many_arguments)]
pub async fn calibrate(url: &str, model: &str, energy_url: &str, metric: &str, labels: &[String], unit: &str, rounds: usize, settle: f64, json: bool) -> Result<(), CliError> {
    use crate::backends::calibrate::{fit, Sample};
    use crate::engine::{Engine, GenRequest};
    let joules_per_unit = crate::config::joules_per_energy_unit(unit)
        .ok_or_else(|| CliError::Usage(format!("--energy-unit {unit:?}: not one of J, mJ, Wh, kWh")))?;
    let mut filter = std::collections::BTreeMap::new();
    for l in labels {
        let (k, v) = l.split_once('=').ok_or_else(|| CliError::Usage(format!("--energy-labels {l:?}: expected key=value")))?;
        filter.insert(k.trim().to_string(), v.trim().to_string());
    }
    if !(settle.is_finite() && settle >= 0.0) || rounds == 0 {
        return Err(CliError::Usage("--settle must be >= 0 and --rounds >= 1".into()));
    }
    let (_, scraper) = crate::backends::prometheus::meter(energy_url, metric, &filter, joules_per_unit, std::time::Duration::from_secs(1));
    let read = || async { scraper.scrape_once().await.map_err(|e| CliError::Usage(format!("reading the energy counter: {e}"))) };
    let cfg = crate::config::BackendConfig {
        name: "calibrate".into(),
        url: url.trim_end_matches('/').to_string(),
        model: model.to_string(),
        api_key_file: None,
        max_concurrent: 1,
        timeout: std::time::Duration::from_secs(300),
        energy: crate::config::BackendEnergy::PerToken { prompt_j: 0.0, completion_j: 0.0 },
        embodied_kgco2: 0.0,
        lifetime_years: 1.0,
        carbon: None,
    };
    let upstream = crate::engine::upstream::Upstream::new(&cfg).map_err(CliError::Usage)?;
    let pause = std::time::Duration::from_secs_f64(settle);
    // Idle power first, to take out of the settling time after each answer.
    let (e0, t0) = (read().await?, std::time::Instant::now());
    tokio::time::sleep(pause.max(std::time::Duration::from_secs(3))).await;
    let idle_w = ((read().await? - e0) / t0.elapsed().as_secs_f64()).max(0.0);
    let context = "The committee reviewed the quarterly figures for every site, compared them with the plan, and noted where the numbers diverged. ".repeat(40);
    let shapes: [(String, usize); 3] = [
        (format!("{context}\nIn one word: did the committee review figures?"), 8),
        ("Write a long, detailed story about a lighthouse keeper.".to_string(), 256),
        (format!("{}\nSummarise the text above in a few sentences.", &context[..context.len() / 3]), 96),
    ];
    let mut samples = Vec::new();
    for round in 0..rounds {
        for (prompt, max_tokens) in &shapes {
            let before = read().await?;
            let t = std::time::Instant::now();
            let req = GenRequest { messages: vec![crate::job::Message::new(crate::job::Role::User, prompt.clone())], max_tokens: *max_tokens, ..Default::default() };
            let out = upstream
                .generate(req, tokio::sync::mpsc::unbounded_channel().0)
                .await
                .map_err(|e| CliError::Usage(format!("{url}: {e}")))?;
            let busy = t.elapsed();
            tokio::time::sleep(pause).await;
            let joules = (read().await? - before - idle_w * pause.as_secs_f64()).max(0.0);
            if !json {
                println!("round {}: {} prompt + {} completion tokens in {:.1} s: {joules:.1} J", round + 1, out.prompt_tokens, out.completion_tokens, busy.as_secs_f64());
            }
            samples.push(Sample { prompt: out.prompt_tokens as f64, completion: out.completion_tokens as f64, joules });
        }
    }
    let (a, b, r2) = fit(&samples).ok_or_else(|| CliError::Usage("too few answers to fit".into()))?;
    if json {
        print_json(&json!({"idle_w": idle_w, "j_per_prompt_token": a, "j_per_completion_token": b, "r2": r2,
            "samples": samples.iter().map(|s| json!({"prompt_tokens": s.prompt, "completion_tokens": s.completion, "joules": s.joules})).collect::<Vec<_>>()}));
    } else {
        println!("idle: {idle_w:.1} W (taken out of the {settle} s settling after each answer)");
        println!("fit (R² {r2:.3}): put in the backend's [[backends]] entry:\nj_per_prompt_token = {a:.4}\nj_per_completion_token = {b:.4}");
    }
    Ok(())
}
