//! `sproutctl eval`: run, status and history of quality evaluations.

use serde_json::{json, Value};

use super::{print_json, utc, CliError, EvalCommand};
use crate::client::Client;

pub async fn command(client: &Client, command: EvalCommand) -> Result<(), CliError> {
    match command {
        EvalCommand::Run { prompts, judge_url, judge_model, wait, json } => {
            let mut body = json!({"wait": wait});
            if let Some(k) = prompts {
                body["prompts"] = json!(k);
            }
            if let Some(u) = judge_url {
                body["judge_url"] = json!(u);
            }
            if let Some(m) = judge_model {
                body["judge_model"] = json!(m);
            }
            let run = client.eval_run(&body).await?;
            if json {
                print_json(&run);
                return Ok(());
            }
            if !wait {
                println!("evaluation started; `sproutctl eval status` shows it");
                return Ok(());
            }
            let levels: Vec<String> = run["levels"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect();
            println!("{}: q {} = {} ({} prompts, {} judge calls, {} unreadable; judge {})",
                run["id"].as_str().unwrap_or("?"), levels.join(" / "), fmt_q(&run["q"]),
                run["verdicts"].as_array().map(Vec::len).unwrap_or(0), run["judge_calls"], run["failures"], run["judge"].as_str().unwrap_or("?"));
            println!("cost: {:.1} J, {:.4} gCO2e{}", run["energy_j"].as_f64().unwrap_or(0.0), run["carbon_g"].as_f64().unwrap_or(0.0),
                if run["estimated"] == true { " (estimated)" } else { "" });
            for v in run["verdicts"].as_array().into_iter().flatten() {
                let picks: Vec<String> = v["picks"].as_array().into_iter().flatten()
                    .map(|p| p.as_u64().and_then(|i| levels.get(i as usize).cloned()).unwrap_or_else(|| "?".into())).collect();
                let prompt: String = v["prompt"].as_str().unwrap_or("").chars().take(60).collect();
                println!("  [{}] {}  <- {}", picks.join(" "), fmt_q(&v["credit"]), prompt.replace('\n', " "));
            }
            Ok(())
        }
        EvalCommand::Status { json } => {
            let s = client.eval_status().await?;
            if json {
                print_json(&s);
                return Ok(());
            }
            let levels: Vec<String> = s["levels"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect();
            println!("q {} = {} (from {})", levels.join(" / "), fmt_q(&s["q"]), s["q_source"].as_str().unwrap_or("?"));
            println!("kept the baseline's quality (share, 95% lower bound, samples) per class:");
            for (class, kept) in s["kept"].as_object().into_iter().flatten() {
                let cells: Vec<String> = kept
                    .as_array()
                    .into_iter()
                    .flatten()
                    .zip(&levels)
                    .skip(1)
                    .map(|(k, l)| format!("{l} {:.2} >= {:.2} (n {})", k["mean"].as_f64().unwrap_or(0.0), k["lower"].as_f64().unwrap_or(0.0), k["n"]))
                    .collect();
                println!("  {class:<12} {}", cells.join("   "));
            }
            if let Some(r) = s["last_run"].as_object() {
                println!("last run: {} at {} ({})", r["id"].as_str().unwrap_or("?"), utc(r["at"].as_f64().unwrap_or(0.0)), r["judge"].as_str().unwrap_or("?"));
            }
            let n = &s["next"];
            if s["running"] == true {
                println!("running now");
            } else if n["run_now"] == true {
                println!("next run: now ({})", n["reason"].as_str().unwrap_or(""));
            } else {
                println!("next run: {} (forecast {:.0} gCO2/kWh): {}", utc(n["at"].as_f64().unwrap_or(0.0)),
                    n["forecast_gco2_per_kwh"].as_f64().unwrap_or(f64::NAN), n["reason"].as_str().unwrap_or(""));
            }
            println!("samples kept: {} (a scheduled run needs {})", s["samples"], s["samples_needed"]);
            Ok(())
        }
        EvalCommand::History { limit, json } => {
            let h = client.eval_history(limit).await?;
            if json {
                print_json(&h);
                return Ok(());
            }
            println!("{:<20} {:<17} {:>8} {:<18} {:>5} {:>9}  reason", "ID", "STARTED (UTC)", "gCO2/kWh", "q", "FAILS", "gCO2e");
            for r in h["data"].as_array().into_iter().flatten() {
                println!("{:<20} {:<17} {:>8.0} {:<18} {:>5} {:>9.4}  {}",
                    r["id"].as_str().unwrap_or("?"), utc(r["started_ms"].as_f64().unwrap_or(0.0) / 1000.0).trim_end_matches(" UTC"),
                    r["intensity_gco2_per_kwh"].as_f64().unwrap_or(f64::NAN), fmt_q(&r["q"]), r["failures"].as_u64().unwrap_or(0), r["carbon_g"].as_f64().unwrap_or(0.0),
                    r["reason"].as_str().unwrap_or(""));
            }
            Ok(())
        }
    }
}

fn fmt_q(q: &Value) -> String {
    q.as_array()
        .map(|a| a.iter().map(|x| format!("{:.2}", x.as_f64().unwrap_or(f64::NAN))).collect::<Vec<_>>().join(" / "))
        .unwrap_or_else(|| "-".into())
}
