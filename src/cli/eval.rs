//! `sproutctl eval`: run, status and history of quality evaluations.

use super::{per_level, print_json, utc, CliError, EvalCommand};
use crate::client::Client;
use crate::wire::{EvalRunReply, EvalRunRequest};

pub async fn command(client: &Client, command: EvalCommand) -> Result<(), CliError> {
    match command {
        EvalCommand::Run { prompts, judge_url, judge_model, wait, json } => {
            let reply = client.eval_run(&EvalRunRequest { prompts, judge_url, judge_model, wait }).await?;
            if json {
                print_json(&reply);
                return Ok(());
            }
            let run = match reply {
                EvalRunReply::Finished(run) => run,
                EvalRunReply::Started(_) => {
                    println!("evaluation started; `sproutctl eval status` shows it");
                    return Ok(());
                }
            };
            println!(
                "{}: q {} = {} ({} prompts, {} judge calls, {} unreadable; judge {})",
                run.id,
                run.levels.join(" / "),
                per_level(run.q.as_deref()),
                run.verdicts.len(),
                run.judge_calls,
                run.failures,
                run.judge
            );
            println!("cost: {:.1} J, {:.4} gCO2e{}", run.energy_j, run.carbon_g, if run.estimated { " (estimated)" } else { "" });
            for v in &run.verdicts {
                let picks: Vec<&str> = v.picks.iter().map(|p| p.and_then(|i| run.levels.get(i)).map(String::as_str).unwrap_or("?")).collect();
                let prompt: String = v.prompt.chars().take(60).collect();
                println!("  [{}] {}  <- {}", picks.join(" "), per_level(Some(v.credit.as_slice())), prompt.replace('\n', " "));
            }
            Ok(())
        }
        EvalCommand::Status { json } => {
            let s = client.eval_status().await?;
            if json {
                print_json(&s);
                return Ok(());
            }
            println!("q {} = {} (from {})", s.levels.join(" / "), per_level(s.q.as_deref()), s.q_source);
            println!("kept the baseline's quality (share, 95% lower bound, samples) per class:");
            for (class, kept) in &s.kept {
                let cells: Vec<String> =
                    kept.iter().zip(&s.levels).skip(1).map(|(k, l)| format!("{l} {:.2} >= {:.2} (n {})", k.mean, k.lower, k.n)).collect();
                println!("  {class:<12} {}", cells.join("   "));
            }
            if !s.settled.is_empty() {
                let base = s.levels.first().map_or("the baseline", String::as_str);
                println!("settled at {base} (no shorter level could clear the lowest floor; scheduled runs leave them out for a week): {}", s.settled.join(", "));
            }
            if let Some(r) = &s.last_run {
                println!("last run: {} at {} ({})", r.id, utc(r.at), r.judge);
            }
            let n = &s.next;
            if s.running {
                println!("running now");
            } else if n.run_now {
                println!("next run: now ({})", n.reason);
            } else {
                println!("next run: {} (forecast {:.0} gCO2/kWh): {}", utc(n.at as f64), n.forecast_gco2_per_kwh, n.reason);
            }
            println!("samples kept: {} (a scheduled run needs {})", s.samples, s.samples_needed);
            Ok(())
        }
        EvalCommand::History { limit, json } => {
            let h = client.eval_history(limit).await?;
            if json {
                print_json(&h);
                return Ok(());
            }
            println!("{:<20} {:<17} {:>8} {:<18} {:>5} {:>9}  reason", "ID", "STARTED (UTC)", "gCO2/kWh", "q", "FAILS", "gCO2e");
            for r in &h.data {
                println!(
                    "{:<20} {:<17} {:>8.0} {:<18} {:>5} {:>9.4}  {}",
                    r.id,
                    utc(r.started_ms as f64 / 1000.0).trim_end_matches(" UTC"),
                    r.intensity_gco2_per_kwh,
                    per_level(r.q.as_deref()),
                    r.failures,
                    r.carbon_g,
                    r.reason
                );
            }
            Ok(())
        }
    }
}
