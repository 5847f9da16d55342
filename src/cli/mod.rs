//! `sproutctl`: the command-line client. [`Command`] is the one place that
//! lists every subcommand and [`run`] sends each to its function, in a module
//! per area: [`jobs`], [`report`] (plan, stats, carbon, ledger), [`backends`],
//! [`eval`], [`bench`](mod@bench), [`simulate`]. Each talks to sproutd through [`Client`]
//! and prints for people, or JSON with `--json`.

use clap::{Parser, Subcommand};

pub mod backends;
pub mod bench;
pub mod eval;
pub mod jobs;
pub mod report;
pub mod simulate;

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
    Submit(SubmitArgs),
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

/// `sproutctl submit`'s arguments.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    pub prompt: String,
    /// A system message sent with the prompt (the directive is appended to it).
    #[arg(long)]
    pub system: Option<String>,
    /// Pin a directive level (e.g. L0, L1, L2) instead of letting sproutd choose.
    #[arg(long)]
    pub directive: Option<String>,
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Sampling seed, for a reproducible answer.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Lower runs first.
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i32>,
    /// Submitting again with the same key returns the first job instead of a new one.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Finish within this long (e.g. 6h): sproutd may hold the job for the
    /// lowest-carbon hour the forecast shows before then.
    #[arg(long)]
    pub deadline: Option<String>,
    /// Wait for the answer and print it with its receipt.
    #[arg(long)]
    pub wait: bool,
    /// Print the job as JSON.
    #[arg(long)]
    pub json: bool,
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
    /// After the modes, a judge compares every answer with the baseline's to
    /// the same prompt: `local` (the daemon's own model) or the URL of an
    /// OpenAI-compatible API ending in /v1 (key from SPROUT_JUDGE_KEY). Needed
    /// for alpacaeval (no references); elsewhere it measures how the judge
    /// tracks the references.
    #[arg(long)]
    pub judge: Option<String>,
    /// The model a --judge URL serves.
    #[arg(long)]
    pub judge_model: Option<String>,
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
    let client = || Client::new(&cli.url, std::env::var("SPROUT_TOKEN").ok().filter(|t| !t.is_empty()));
    match cli.command {
        Command::Submit(args) => jobs::submit(&client(), args).await,
        Command::Status { id, json } => jobs::status(&client(), &id, json).await,
        Command::List { state, limit, json } => jobs::list(&client(), state.as_deref(), limit, json).await,
        Command::Cancel { id, json } => jobs::cancel(&client(), &id, json).await,
        Command::Result { id, wait, json } => jobs::result(&client(), &id, wait, json).await,
        Command::Stats { since, json } => report::stats(&client(), since.as_deref(), json).await,
        Command::Carbon { json } => report::carbon(&client(), json).await,
        Command::Plan { json } => report::plan(&client(), json).await,
        Command::Ledger { command: LedgerCommand::Export { format, since } } => report::ledger_export(&client(), &format, since.as_deref()).await,
        Command::Backends { command: None, json } => backends::list(&client(), json).await,
        Command::Backends { command: Some(BackendsCommand::Calibrate { url, model, energy_url, energy_metric, energy_labels, energy_unit, rounds, settle, json }), .. } => {
            backends::calibrate(&url, &model, &energy_url, &energy_metric, &energy_labels, &energy_unit, rounds, settle, json).await
        }
        Command::Eval { command } => eval::command(&client(), command).await,
        Command::Bench(args) => bench::command(&client(), args).await,
        Command::Simulate(args) => simulate::command(&args),
        Command::Tui => crate::tui::run(client()).await.map_err(|e| CliError::Usage(format!("the terminal: {e}"))),
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
    Ok(crate::clock::wall_ms() as f64 / 1000.0 - ago.as_secs_f64())
}

/// `0.50 / 0.30 / 0.20`: one value per level, each times `scale`.
fn joined(values: &[f64], scale: f64, prec: usize) -> String {
    values.iter().map(|x| format!("{:.prec$}", x * scale)).collect::<Vec<_>>().join(" / ")
}

/// A per-level share or mix to two places, `-` when there is none.
fn per_level(values: Option<&[f64]>) -> String {
    values.map(|v| joined(v, 1.0, 2)).unwrap_or_else(|| "-".into())
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// `2026-11-22 03:00 UTC` from Unix seconds.
fn utc(secs: f64) -> String {
    crate::carbon::live::format_utc_minutes(secs as i64).replace('T', " ").replace('Z', " UTC")
}

