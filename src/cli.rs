//! `sproutctl`: the command-line client. [`Command`] is the one place that
//! lists every subcommand; each is a function below that talks to sproutd
//! through [`Client`] and prints for people, or JSON with `--json`.

use std::io::Read;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use crate::client::{Client, ClientError};

#[derive(Debug, Parser)]
#[command(name = "sproutctl", version, about = "Control sproutd, the carbon-aware LLM server")]
pub struct Cli {
    /// sproutd's address.
    #[arg(long, global = true, env = "SPROUT_URL", default_value = "http://127.0.0.1:7878")]
    pub url: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Queue a prompt as a job (PROMPT, or - to read it from stdin).
    Submit {
        prompt: String,
        /// A system message sent with the prompt (the directive is appended to it).
        #[arg(long)]
        system: Option<String>,
        /// Pin a directive level (e.g. L0, L1, L2) instead of letting sproutd choose.
        #[arg(long)]
        directive: Option<String>,
        #[arg(long)]
        max_tokens: Option<u32>,
        /// Sampling seed, for a reproducible answer.
        #[arg(long)]
        seed: Option<u64>,
        /// Lower runs first.
        #[arg(long, allow_hyphen_values = true)]
        priority: Option<i32>,
        /// Submitting again with the same key returns the first job instead of a new one.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait for the answer and print it with its receipt.
        #[arg(long)]
        wait: bool,
        /// Print the job as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a job's state.
    Status {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// List recent jobs.
    List {
        /// Only jobs in this state (queued, running, succeeded, failed, cancelled).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a queued or running job.
    Cancel {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Totals, savings against the baseline level, and the directive mix.
    Stats {
        /// Only since this Unix time (seconds) or this long ago (e.g. 24h, 7d).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The grid's carbon intensity now and over the next 24 hours.
    Carbon {
        #[arg(long)]
        json: bool,
    },
    /// Accounting records, one per job that ran.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Print a finished job's answer and receipt.
    Result {
        id: String,
        /// Wait until the job has finished.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Write the records to stdout as CSV or JSON.
    Export {
        #[arg(long, value_parser = ["csv", "json"], default_value = "csv")]
        format: String,
        /// Only records since this Unix time (seconds) or this long ago (e.g. 24h, 7d).
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Usage(String),
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    let client = Client::new(&cli.url, std::env::var("SPROUT_TOKEN").ok().filter(|t| !t.is_empty()));
    match cli.command {
        Command::Submit { prompt, system, directive, max_tokens, seed, priority, idempotency_key, wait, json } => {
            let prompt = read_prompt(prompt)?;
            let mut messages = Vec::new();
            if let Some(s) = system {
                messages.push(json!({"role": "system", "content": s}));
            }
            messages.push(json!({"role": "user", "content": prompt}));
            let mut body = json!({"messages": messages});
            if let Some(d) = directive {
                body["directive"] = json!(d);
            }
            if let Some(n) = max_tokens {
                body["max_tokens"] = json!(n);
            }
            if let Some(s) = seed {
                body["seed"] = json!(s);
            }
            if let Some(p) = priority {
                body["priority"] = json!(p);
            }
            let job = client.submit_job(&body, idempotency_key.as_deref()).await?;
            let id = job["id"].as_str().ok_or_else(|| ClientError::Protocol("job without id".into()))?.to_string();
            if !wait {
                if json {
                    print_json(&job);
                } else {
                    println!("{id} {}", state_text(&job));
                }
                return Ok(());
            }
            let job = client.wait_job(&id).await?;
            if json {
                print_json(&job);
                return Ok(());
            }
            print_answer(&job)
        }
        Command::Status { id, json } => {
            let job = client.job(&id, None).await?;
            if json {
                print_json(&job);
            } else {
                print_status(&job);
            }
            Ok(())
        }
        Command::List { state, limit, json } => {
            let list = client.jobs(state.as_deref(), limit).await?;
            if json {
                print_json(&list);
                return Ok(());
            }
            let jobs = list["data"].as_array().cloned().unwrap_or_default();
            println!("{:<22} {:<12} {:>4} {:<5} {:>8} {:>10}  prompt", "ID", "STATE", "PRIO", "LEVEL", "TOKENS", "gCO2e");
            for j in &jobs {
                let usage = &j["result"]["usage"];
                let tokens = usage["completion_tokens"].as_u64().map(|t| t.to_string()).unwrap_or_else(|| "-".into());
                let carbon = usage["sprout"]["carbon_g"].as_f64().map(|c| format!("{c:.4}")).unwrap_or_else(|| "-".into());
                let state = match j["position"].as_u64() {
                    Some(p) => format!("queued #{}", p + 1),
                    None => j["state"].as_str().unwrap_or("?").to_string(),
                };
                println!(
                    "{:<22} {:<12} {:>4} {:<5} {:>8} {:>10}  {}",
                    j["id"].as_str().unwrap_or("?"),
                    state,
                    j["priority"].as_i64().unwrap_or(0),
                    j["directive"].as_str().unwrap_or("?"),
                    tokens,
                    carbon,
                    prompt_preview(j, 50)
                );
            }
            if jobs.is_empty() {
                println!("(no jobs)");
            }
            Ok(())
        }
        Command::Cancel { id, json } => {
            let job = client.cancel(&id).await?;
            if json {
                print_json(&job);
            } else {
                println!("{id} {}", job["state"].as_str().unwrap_or("?"));
            }
            Ok(())
        }
        Command::Stats { since, json } => {
            let since = since.as_deref().map(parse_since).transpose()?;
            let s = client.stats(since).await?;
            if json {
                print_json(&s);
                return Ok(());
            }
            let f = |k: &str| s[k].as_f64().unwrap_or(0.0);
            println!("requests:  {}  ({} prompt + {} completion tokens)", s["requests"], s["prompt_tokens"], s["completion_tokens"]);
            println!("energy:    {:.1} J  ({} estimated, {} measured requests)", f("energy_j"), s["estimated_requests"], s["measured_requests"]);
            println!("carbon:    {:.4} gCO2e  (operational {:.4}, embodied {:.4})", f("carbon_g"), f("operational_g"), f("embodied_g"));
            match s["savings"]["carbon_g"].as_f64() {
                Some(g) => println!("saved:     {g:.4} gCO2e against serving everything at {}", s["savings"]["baseline"].as_str().unwrap_or("L0")),
                None => println!("saved:     unknown until a {} request has succeeded", s["savings"]["baseline"].as_str().unwrap_or("L0")),
            }
            println!("{:<6} {:>8} {:>7} {:>12} {:>12} {:>12}", "LEVEL", "REQUESTS", "SHARE", "MEAN TOKENS", "MEAN J", "MEAN gCO2e");
            if let Some(levels) = s["levels"].as_object() {
                for (name, l) in levels {
                    println!(
                        "{:<6} {:>8} {:>6.0}% {:>12.1} {:>12.1} {:>12.5}",
                        name,
                        l["totals"]["requests"],
                        100.0 * l["share"].as_f64().unwrap_or(0.0),
                        l["mean_completion_tokens"].as_f64().unwrap_or(0.0),
                        l["mean_energy_j"].as_f64().unwrap_or(0.0),
                        l["mean_carbon_g"].as_f64().unwrap_or(0.0)
                    );
                }
            }
            Ok(())
        }
        Command::Carbon { json } => {
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
            let line: Vec<String> =
                forecast.iter().filter_map(|r| r["gco2_per_kwh"].as_f64()).map(|v| format!("{v:.0}")).collect();
            println!("next hours:    {}", line.join(" "));
            Ok(())
        }
        Command::Ledger { command: LedgerCommand::Export { format, since } } => {
            let since = match since {
                None => None,
                Some(s) => Some(parse_since(&s)?),
            };
            let out = client.ledger(&format, since).await?;
            print!("{out}");
            if !out.ends_with('\n') {
                println!();
            }
            Ok(())
        }
        Command::Result { id, wait, json } => {
            let job = if wait { client.wait_job(&id).await? } else { client.job(&id, None).await? };
            match job["state"].as_str() {
                Some("succeeded") => {
                    if json {
                        print_json(&job["result"]);
                        Ok(())
                    } else {
                        print_answer(&job)
                    }
                }
                Some(state @ ("queued" | "running")) => {
                    Err(CliError::Usage(format!("job {id} is {state}; no result yet (use --wait to wait for it)")))
                }
                Some(state) => Err(CliError::Usage(format!(
                    "job {id} ended {state}: {}",
                    job["error"]["message"].as_str().unwrap_or("no result")
                ))),
                None => Err(ClientError::Protocol("job without state".into()).into()),
            }
        }
    }
}

/// `--since`: Unix seconds, or a duration ago ("24h", "7d").
fn parse_since(s: &str) -> Result<f64, CliError> {
    if let Ok(t) = s.parse::<f64>() {
        if t.is_finite() && t >= 0.0 {
            return Ok(t);
        }
    }
    let ago = crate::config::parse_duration(s)
        .filter(|_| s.trim_end().ends_with(|c: char| c.is_ascii_alphabetic()))
        .ok_or_else(|| CliError::Usage(format!("--since {s:?}: expected Unix seconds or a duration like 24h or 7d")))?;
    Ok(crate::job::now_ms() as f64 / 1000.0 - ago.as_secs_f64())
}

fn read_prompt(prompt: String) -> Result<String, CliError> {
    let text = if prompt == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::Usage(format!("cannot read the prompt from stdin: {e}")))?;
        s
    } else {
        prompt
    };
    if text.trim().is_empty() {
        return Err(CliError::Usage("the prompt is empty".into()));
    }
    Ok(text)
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn prompt_preview(job: &Value, max: usize) -> String {
    let text = job["request"]["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .replace('\n', " ");
    if text.chars().count() > max {
        format!("{}…", text.chars().take(max - 1).collect::<String>())
    } else {
        text
    }
}

/// One line: the receipt of an answer.
pub fn receipt_line(job: &Value) -> String {
    let usage = &job["result"]["usage"];
    let s = &usage["sprout"];
    format!(
        "[{} | directive {} | {} prompt + {} completion tokens | {:.1} J | {:.4} gCO2e | {}]",
        job["id"].as_str().unwrap_or("?"),
        s["directive"].as_str().unwrap_or("?"),
        usage["prompt_tokens"],
        usage["completion_tokens"],
        s["energy_j"].as_f64().unwrap_or(f64::NAN),
        s["carbon_g"].as_f64().unwrap_or(f64::NAN),
        if s["estimated"].as_bool().unwrap_or(true) { "estimated" } else { "measured" },
    )
}

fn print_answer(job: &Value) -> Result<(), CliError> {
    match job["state"].as_str() {
        Some("succeeded") => {
            let text = job["result"]["choices"][0]["message"]["content"].as_str().unwrap_or("");
            println!("{}", text.trim_end());
            println!("{}", receipt_line(job));
            Ok(())
        }
        state => Err(CliError::Usage(format!(
            "job {} ended {}: {}",
            job["id"].as_str().unwrap_or("?"),
            state.unwrap_or("?"),
            job["error"]["message"].as_str().unwrap_or("no result")
        ))),
    }
}

/// "queued (position 3, directive L1)" and the like.
fn state_text(job: &Value) -> String {
    let state = job["state"].as_str().unwrap_or("?");
    match job["position"].as_u64() {
        Some(p) => format!("{state} (position {}, directive {})", p + 1, job["directive"].as_str().unwrap_or("?")),
        None => format!("{state} (directive {})", job["directive"].as_str().unwrap_or("?")),
    }
}

fn print_status(job: &Value) {
    println!("id:        {}", job["id"].as_str().unwrap_or("?"));
    println!("state:     {}", state_text(job));
    println!("priority:  {}", job["priority"]);
    println!("attempts:  {}", job["attempts"]);
    println!("prompt:    {}", prompt_preview(job, 70));
    if job["state"] == "succeeded" {
        println!("receipt:   {}", receipt_line(job));
    }
    if let Some(e) = job["error"]["message"].as_str() {
        println!("error:     {e}");
    }
}
