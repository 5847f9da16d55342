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
        /// Finish within this long (e.g. 6h): sproutd may hold the job for the
        /// lowest-carbon hour the forecast shows before then.
        #[arg(long)]
        deadline: Option<String>,
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
        /// Only jobs in this state (deferred, queued, running, succeeded, failed, cancelled).
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
    /// Where answers are made: each backend's health, load, grid, energy source and totals.
    Backends {
        #[command(subcommand)]
        command: Option<BackendsCommand>,
        #[arg(long)]
        json: bool,
    },
    /// The directive optimizer's plan: intensity, quality floor, e, p, q and the mix.
    Plan {
        #[arg(long)]
        json: bool,
    },
    /// A live terminal view: queue, emissions, directive mix, evaluator.
    Tui,
    /// The offline quality evaluator: force a run, its status, its history.
    Eval {
        #[command(subcommand)]
        command: EvalCommand,
    },
    /// Accounting records, one per job that ran.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Replay the Sprout method over the published artifact with sproutd's
    /// optimizer (runs here; needs no daemon).
    Simulate(SimulateArgs),
    /// Measure carbon at kept quality: labelled prompts through the running
    /// daemon, pinned at each level and unpinned, scored against references.
    Bench(BenchArgs),
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

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The prompts folder (gsm8k/, mmlu/, natural_questions/, triviaqa/ as in the Sprout data).
    #[arg(long, env = "SPROUT_BENCH_DATA")]
    pub data: std::path::PathBuf,
    /// Datasets, comma-separated.
    #[arg(long, default_value = "gsm8k,mmlu,nq,triviaqa", value_delimiter = ',')]
    pub datasets: Vec<String>,
    /// `tune`: each file's first 100 items (choose wordings here); `test`: spread over the rest (report here).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Skip this many items of the split.
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// Items per dataset.
    #[arg(long, default_value_t = 50)]
    pub n: usize,
    /// Modes in order, comma-separated: levels to pin, and `auto` (the daemon chooses). The first is the baseline.
    #[arg(long, default_value = "L0,L1,L2,auto", value_delimiter = ',')]
    pub modes: Vec<String>,
    #[arg(long, default_value_t = 384)]
    pub max_tokens: u32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Before `auto`: force a quality evaluation run and wait for it (or, if
    /// the daemon's own run is under way, wait for that one).
    #[arg(long)]
    pub eval_first: bool,
    /// Prompts per class in that run.
    #[arg(long)]
    pub eval_prompts: Option<usize>,
    /// Print every answer and the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write that JSON to this file.
    #[arg(long)]
    pub save: Option<std::path::PathBuf>,
    /// Write an SVG of carbon against accuracy (both relative to the baseline).
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// The artifact folder (requests/, judgments/, carbon_intensity/, workload/).
    #[arg(long, env = "SPROUT_ARTIFACT")]
    pub data: Option<std::path::PathBuf>,
    /// Grid zone: a trace in carbon_intensity/ (AU-SA, GB, NL, US-CAL-CISO, US-TEX-ERCO).
    #[arg(long, default_value = "GB")]
    pub region: String,
    /// First hour of the year to replay.
    #[arg(long, default_value_t = 0)]
    pub start_hour: usize,
    #[arg(long, default_value_t = 720)]
    pub hours: usize,
    /// Quality tolerance ξ.
    #[arg(long, default_value_t = 0.1)]
    pub xi: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Average over this many seeds (seed, seed+1, ...).
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// sprout, static, co2, small-model, oracle or best.
    #[arg(long, default_value = "best")]
    pub policy: String,
    /// Quality of the 7B model's answers relative to the 13B's (small-model policy; an assumption).
    #[arg(long, default_value_t = 0.8)]
    pub small_model_quality: f64,
    /// Every policy on every grid from hours 800, 3900 and 7000: the README's table (markdown).
    #[arg(long)]
    pub table: bool,
    /// Compare the method's evaluation trigger with Sprout's over a year of every grid (markdown).
    #[arg(long)]
    pub eval_rules: bool,
    /// The spatial lever: the same workload served from every grid, routed
    /// cleanest first up to each region's capacity (with --table: every grid
    /// as home, three start hours).
    #[arg(long)]
    pub spatial: bool,
    /// Per-region capacities for --spatial, in units of the mean load / regions
    /// (5 with five grids: any one region can take the whole mean load).
    #[arg(long, default_value = "5,2,1,0.5", value_delimiter = ',')]
    pub capacity: Vec<f64>,
    /// Write an SVG of intensity, mix and carbon over the window.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum BackendsCommand {
    /// Measure an upstream's joules per prompt and per completion token
    /// against its energy counter, for `j_per_prompt_token` and
    /// `j_per_completion_token` (talks to the upstream, not to sproutd).
    Calibrate {
        /// The upstream's API base, e.g. http://10.0.0.5:8000/v1.
        #[arg(long)]
        url: String,
        #[arg(long)]
        model: String,
        /// Its Prometheus page and energy counter.
        #[arg(long)]
        energy_url: String,
        #[arg(long)]
        energy_metric: String,
        /// Label filters, `key=value`, comma-separated.
        #[arg(long, value_delimiter = ',')]
        energy_labels: Vec<String>,
        /// J, mJ (DCGM), Wh or kWh.
        #[arg(long, default_value = "J")]
        energy_unit: String,
        /// Times to send each of the three request shapes.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Seconds to wait after each answer for the counter to catch up.
        #[arg(long, default_value_t = 2.0)]
        settle: f64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Run an evaluation now (it queues its own jobs at the lowest priority).
    Run {
        /// How many sampled prompts to judge (default: evaluator.prompts).
        #[arg(long)]
        prompts: Option<usize>,
        /// An OpenAI-compatible judge for this run, e.g. http://host:7878/v1.
        #[arg(long)]
        judge_url: Option<String>,
        #[arg(long)]
        judge_model: Option<String>,
        /// Wait for the run and print its q and verdicts.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// The last q, the next planned run with its forecast intensity, and why.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Past runs, newest first.
    History {
        #[arg(long, default_value_t = 20)]
        limit: usize,
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
    if let Command::Simulate(args) = &cli.command {
        return simulate(args);
    }
    let client = Client::new(&cli.url, std::env::var("SPROUT_TOKEN").ok().filter(|t| !t.is_empty()));
    match cli.command {
        Command::Submit { prompt, system, directive, max_tokens, seed, priority, idempotency_key, deadline, wait, json } => {
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
            if let Some(d) = deadline {
                body["deadline"] = json!(d);
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
                // Running jobs: the tokens so far.
                let tokens = usage["completion_tokens"].as_u64().or(j["tokens_so_far"].as_u64()).map(|t| t.to_string()).unwrap_or_else(|| "-".into());
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
                if j["state"] == "deferred" {
                    println!("{:<22} {}", "", state_text(j));
                }
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
        Command::Simulate(_) => unreachable!("handled above"),
        Command::Bench(args) => bench(&client, args).await,
        Command::Eval { command } => eval(&client, command).await,
        Command::Tui => crate::tui::run(client).await.map_err(|e| CliError::Usage(format!("the terminal: {e}"))),
        Command::Plan { json } => {
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
        Command::Backends { command: Some(BackendsCommand::Calibrate { url, model, energy_url, energy_metric, energy_labels, energy_unit, rounds, settle, json }), .. } => {
            calibrate(&url, &model, &energy_url, &energy_metric, &energy_labels, &energy_unit, rounds, settle, json).await
        }
        Command::Backends { command: None, json } => {
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
            let values = |v: &Value| -> String {
                v.as_array().into_iter().flatten().filter_map(|r| r["gco2_per_kwh"].as_f64()).map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(" ")
            };
            println!("past hours:    {}", values(&c["past"]));
            println!("next hours:    {}", values(&c["forecast"]));
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

/// `sproutctl backends calibrate`: the requests and readings; the fit is
/// `backends::calibrate::fit`.
#[allow(clippy::too_many_arguments)]
async fn calibrate(url: &str, model: &str, energy_url: &str, metric: &str, labels: &[String], unit: &str, rounds: usize, settle: f64, json: bool) -> Result<(), CliError> {
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

/// `2026-11-22 03:00 UTC` from Unix seconds.
fn utc(secs: f64) -> String {
    crate::carbon::live::format_utc_minutes(secs as i64).replace('T', " ").replace('Z', " UTC")
}

/// "queued (position 3, directive L1)", "deferred until ... (forecast ...)" and the like.
fn state_text(job: &Value) -> String {
    let state = job["state"].as_str().unwrap_or("?");
    if state == "deferred" {
        let d = &job["deferred"];
        return format!(
            "deferred until {} (forecast {:.0} gCO2/kWh, {:.0} when submitted; deadline {}; directive {})",
            utc(d["until"].as_f64().unwrap_or(0.0)),
            d["forecast_gco2_per_kwh"].as_f64().unwrap_or(f64::NAN),
            d["submit_gco2_per_kwh"].as_f64().unwrap_or(f64::NAN),
            job["deadline_at"].as_f64().map(utc).unwrap_or_else(|| "-".into()),
            job["directive"].as_str().unwrap_or("?")
        );
    }
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
    if let Some(n) = job["tokens_so_far"].as_u64() {
        println!("tokens:    {n} so far");
    }
    if job["state"] == "succeeded" {
        println!("receipt:   {}", receipt_line(job));
    }
    if let Some(e) = job["error"]["message"].as_str() {
        println!("error:     {e}");
    }
}

async fn bench(client: &Client, args: BenchArgs) -> Result<(), CliError> {
    use crate::bench;
    let items = bench::load(&args.data, &args.datasets, &args.split, args.offset, args.n).map_err(CliError::Usage)?;
    if items.is_empty() {
        return Err(CliError::Usage(format!("no items in split {} (offset {}, n {})", args.split, args.offset, args.n)));
    }
    if args.modes.is_empty() || args.modes.iter().any(|m| m.is_empty()) {
        return Err(CliError::Usage("--modes: name levels (L0, L1, ...) or auto".into()));
    }
    let levels: Vec<String> = match client.eval_status().await {
        Ok(s) => s["levels"].as_array().map(|a| a.iter().filter_map(|l| l.as_str().map(str::to_string)).collect()).unwrap_or_default(),
        Err(e) => return Err(e.into()),
    };
    if let Some(m) = args.modes.iter().find(|m| *m != "auto" && !levels.contains(m)) {
        return Err(CliError::Usage(format!("--modes: {m:?} is not a level of this daemon (its levels: {})", levels.join(", "))));
    }
    let opts = bench::Options {
        modes: args.modes.clone(),
        max_tokens: args.max_tokens,
        concurrency: args.concurrency,
        eval_first: args.eval_first,
        eval_prompts: args.eval_prompts,
    };
    eprintln!("{} items ({} split, offset {}), modes {}", items.len(), args.split, args.offset, args.modes.join(","));
    let answers = bench::run(client, &items, &opts, &|line| eprintln!("{line}")).await?;
    let rows = bench::summarize(&answers, &args.modes, &levels);
    if let Some(path) = &args.plot {
        std::fs::write(path, bench::plot_svg(&rows)).map_err(|e| CliError::Usage(format!("--plot {}: {e}", path.display())))?;
    }
    let report = json!({"split": args.split, "offset": args.offset, "n": args.n, "modes": args.modes, "rows": rows, "answers": answers});
    if let Some(path) = &args.save {
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap_or_default())
            .map_err(|e| CliError::Usage(format!("--save {}: {e}", path.display())))?;
    }
    if args.json {
        print_json(&report);
    } else {
        print!("{}", bench::render(&rows));
        if let Some((d, n)) = bench::paired_latency(&answers, &args.modes[0], "auto") {
            println!("auto answers served at {} with the same tokens as pinned: median latency {d:+.2} s over {n} pairs", args.modes[0]);
        }
        let estimated = answers.iter().filter(|a| a.estimated).count();
        println!("energy: {} of {} answers estimated, the rest measured", estimated, answers.len());
    }
    Ok(())
}

fn simulate(args: &SimulateArgs) -> Result<(), CliError> {
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

fn fmt_q(q: &Value) -> String {
    q.as_array()
        .map(|a| a.iter().map(|x| format!("{:.2}", x.as_f64().unwrap_or(f64::NAN))).collect::<Vec<_>>().join(" / "))
        .unwrap_or_else(|| "-".into())
}

async fn eval(client: &Client, command: EvalCommand) -> Result<(), CliError> {
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
