//! Configuration in two stages: [`RawConfig`] mirrors `config.toml` as typed;
//! [`Config::from_raw`] validates it, resolves paths against the config file's
//! folder, and reports *every* problem at once, each with its key's path.
//!
//! `config.toml` at the repository root is the annotated default and is parsed
//! by a unit test here, so the documentation cannot drift from the code.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The default config, compiled in so that `sproutd` runs without a file.
pub const DEFAULT_CONFIG: &str = include_str!("../config.toml");

/// Every validation problem found, each as `key.path: what is wrong`.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error(s) in config: {}", self.0.len(), self.0.join("; "))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(transparent)]
    Invalid(#[from] ConfigErrors),
}

// ---------------------------------------------------------------------------
// Raw: what the file says.

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub storage: RawStorage,
    pub model: RawModel,
    #[serde(default)]
    pub generation: RawGeneration,
    pub directives: RawDirectives,
    #[serde(default)]
    pub accounting: RawAccounting,
    #[serde(default)]
    pub carbon: RawCarbon,
    #[serde(default)]
    pub queue: RawQueue,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub optimizer: RawOptimizer,
    #[serde(default)]
    pub evaluator: RawEvaluator,
    /// OpenAI-compatible engines to route requests to, beside the embedded one.
    #[serde(default)]
    pub backends: Vec<RawBackend>,
}

/// One `[[backends]]` entry: an OpenAI-compatible upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub name: String,
    /// The API's base, e.g. `http://10.0.0.5:8000/v1` (`/chat/completions` is added).
    pub url: String,
    /// The model name sent upstream.
    pub model: String,
    pub api_key_file: Option<PathBuf>,
    #[serde(default = "default_backend_concurrency")]
    pub max_concurrent: usize,
    /// The longest silence while connecting or answering.
    #[serde(default = "default_backend_timeout")]
    pub timeout: String,
    /// Energy, estimated: joules per prompt and per completion token.
    pub j_per_prompt_token: Option<f64>,
    pub j_per_completion_token: Option<f64>,
    /// Energy, measured: a Prometheus endpoint and the counter to read.
    pub energy_url: Option<String>,
    pub energy_metric: Option<String>,
    #[serde(default)]
    pub energy_labels: BTreeMap<String, String>,
    /// The counter's unit: `J`, `mJ` (DCGM), `Wh` or `kWh`.
    #[serde(default = "default_energy_unit")]
    pub energy_unit: String,
    #[serde(default = "default_energy_interval")]
    pub energy_interval: String,
    pub embodied_kgco2: Option<f64>,
    pub lifetime_years: Option<f64>,
    /// Its own grid; absent: the daemon's `[carbon]`.
    pub carbon: Option<RawCarbon>,
}

fn default_backend_concurrency() -> usize {
    4
}

fn default_backend_timeout() -> String {
    "60s".into()
}

fn default_energy_unit() -> String {
    "J".into()
}

fn default_energy_interval() -> String {
    "1s".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEvaluator {
    pub enabled: bool,
    pub sample_size: usize,
    pub sample_retention: String,
    pub prompts: usize,
    pub max_tokens: usize,
    pub share: f64,
    pub judge: String,
    pub judge_url: Option<String>,
    pub judge_model: Option<String>,
    pub judge_key_file: Option<PathBuf>,
    pub judge_timeout: String,
    pub judge_retries: u32,
    pub judge_prompt: Option<String>,
    pub min_interval: String,
    pub max_staleness: String,
    pub tolerance: f64,
    pub check_interval: String,
}

impl Default for RawEvaluator {
    fn default() -> Self {
        Self {
            enabled: true,
            sample_size: 500,
            sample_retention: "7d".into(),
            prompts: 24,
            max_tokens: 384,
            share: 0.1,
            judge: "local".into(),
            judge_url: None,
            judge_model: None,
            judge_key_file: None,
            judge_timeout: "120s".into(),
            judge_retries: 2,
            judge_prompt: None,
            min_interval: "6h".into(),
            max_staleness: "72h".into(),
            tolerance: 0.05,
            check_interval: "1m".into(),
        }
    }
}

/// The quality evaluator (validated).
#[derive(Debug, Clone)]
pub struct EvaluatorConfig {
    pub enabled: bool,
    pub sample_size: usize,
    pub sample_retention: Duration,
    /// Prompts per class in one run.
    pub prompts: usize,
    pub max_tokens: usize,
    /// The share of recent engine time the evaluation's jobs may take ahead
    /// of queued users' jobs (they also run whenever no user waits).
    pub share: f64,
    /// `local` (the served model, through the queue) or `openai`.
    pub judge: String,
    pub judge_url: Option<String>,
    pub judge_model: Option<String>,
    /// The judge's API key file; `SPROUT_JUDGE_KEY` when unset.
    pub judge_key_file: Option<PathBuf>,
    pub judge_timeout: Duration,
    pub judge_retries: u32,
    /// `None`: the evaluator's own (`eval::judge::DEFAULT_JUDGE_PROMPT`).
    pub judge_prompt: Option<String>,
    pub min_interval: Duration,
    pub max_staleness: Duration,
    pub tolerance: f64,
    pub check_interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOptimizer {
    pub enabled: bool,
    pub policy: String,
    pub xi: f64,
    pub resolve_interval: String,
    pub resolve_threshold: f64,
    pub ci_min: Option<f64>,
    pub ci_max: Option<f64>,
    pub min_samples: usize,
    pub prior_q: BTreeMap<String, f64>,
    pub prior_energy_j: BTreeMap<String, f64>,
    pub prior_time_s: BTreeMap<String, f64>,
}

impl Default for RawOptimizer {
    fn default() -> Self {
        Self {
            enabled: true,
            policy: "best".into(),
            xi: 0.1,
            resolve_interval: "1h".into(),
            resolve_threshold: 25.0,
            ci_min: None,
            ci_max: None,
            min_samples: 5,
            prior_q: BTreeMap::new(),
            prior_energy_j: BTreeMap::new(),
            prior_time_s: BTreeMap::new(),
        }
    }
}

/// The directive optimizer in the daemon (validated).
#[derive(Debug, Clone)]
pub struct OptimizerConfig {
    pub enabled: bool,
    /// `best` (one mix per prompt class) or `sprout` (the method: one mix).
    pub policy: String,
    pub xi: f64,
    pub resolve_interval: Duration,
    /// Re-solve early when the intensity moves more than this (gCO2e/kWh).
    pub resolve_threshold: f64,
    pub ci_range: Option<(f64, f64)>,
    /// Ledger samples per level (and class) before their means replace the priors.
    pub min_samples: usize,
    /// Per level, in `directives.levels` order.
    pub prior_energy_j: Vec<f64>,
    pub prior_time_s: Vec<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawQueue {
    pub max_queued: usize,
    pub max_attempts: u32,
    pub max_prompt_chars: usize,
    pub result_retention: String,
    pub shutdown_grace: String,
    pub deadline_margin: String,
}

impl Default for RawQueue {
    fn default() -> Self {
        Self {
            max_queued: 100_000,
            max_attempts: 3,
            max_prompt_chars: 200_000,
            result_retention: "7d".into(),
            shutdown_grace: "30s".into(),
            deadline_margin: "10m".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCarbon {
    pub source: String,
    pub trace_file: Option<PathBuf>,
    pub trace_offset_hours: f64,
    pub trace_speedup: f64,
    pub url: Option<String>,
    pub zone: String,
    pub token_file: Option<PathBuf>,
    pub username: Option<String>,
    pub poll_interval: String,
    pub timeout: String,
    pub retries: u32,
    pub backoff: String,
    pub max_age: String,
    pub fallback_gco2_per_kwh: Option<f64>,
}

impl Default for RawCarbon {
    fn default() -> Self {
        Self {
            source: "trace".into(),
            trace_file: None,
            trace_offset_hours: 0.0,
            trace_speedup: 1.0,
            url: None,
            zone: String::new(),
            token_file: None,
            username: None,
            poll_interval: "5m".into(),
            timeout: "10s".into(),
            retries: 3,
            backoff: "2s".into(),
            max_age: "2h".into(),
            fallback_gco2_per_kwh: None,
        }
    }
}

/// Where grid intensity comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct CarbonConfig {
    /// None: the trace compiled into sproutd. With a live source, the
    /// trace is the fallback (unless `fallback_gco2_per_kwh` is set).
    pub trace_file: Option<PathBuf>,
    pub offset_hours: f64,
    pub speedup: f64,
    /// A live HTTP source; None: the trace itself is the source.
    pub live: Option<LiveCarbonConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LiveCarbonConfig {
    pub kind: ProviderKind,
    pub url: String,
    pub zone: String,
    /// The API key (Electricity Maps) or password (WattTime); the
    /// `SPROUT_CARBON_TOKEN` environment variable is used when unset.
    pub token_file: Option<PathBuf>,
    pub username: Option<String>,
    pub poll_interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub backoff: Duration,
    /// The last good value is used up to this old; then the fallback.
    pub max_age: Duration,
    pub fallback_gco2_per_kwh: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: String,
    pub max_body_bytes: usize,
    pub allowed_hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub header_read_timeout: String,
    pub body_read_timeout: String,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7878".into(),
            max_body_bytes: 1 << 20,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            header_read_timeout: "30s".into(),
            body_read_timeout: "30s".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStorage {
    pub data_dir: PathBuf,
    pub open_timeout: String,
}

impl Default for RawStorage {
    fn default() -> Self {
        Self { data_dir: PathBuf::from("data"), open_timeout: "5m".into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// `gguf` (a local file), `hf` (a Hugging Face model id) or `echo` (the test engine).
    pub kind: String,
    /// The name clients use in `"model"`; defaults to the file stem or the HF id.
    pub name: Option<String>,
    pub path: Option<PathBuf>,
    pub hf_id: Option<String>,
    pub isq: Option<String>,
    #[serde(default)]
    pub cpu: bool,
    #[serde(default = "default_max_seqs")]
    pub max_seqs: usize,
    /// Echo engine only: delay per generated token, in milliseconds.
    #[serde(default)]
    pub echo_token_delay_ms: u64,
    /// Echo engine only: how long "loading" takes, in milliseconds.
    #[serde(default)]
    pub echo_load_delay_ms: u64,
}

fn default_max_seqs() -> usize {
    4
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGeneration {
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub repetition_penalty: f32,
    pub default_max_tokens: usize,
    pub max_tokens_cap: usize,
}

impl Default for RawGeneration {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_p: 0.9,
            top_k: 40,
            repetition_penalty: 1.05,
            default_max_tokens: 512,
            max_tokens_cap: 2048,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDirectives {
    pub levels: Vec<RawLevel>,
    /// Share of requests per level when the request pins none.
    pub mix: BTreeMap<String, f64>,
    #[serde(default)]
    pub seed: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLevel {
    pub name: String,
    #[serde(default)]
    pub text: String,
    /// Per prompt class, a wording that replaces `text` for that class.
    #[serde(default)]
    pub classes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAccounting {
    /// `auto` (NVML, then RAPL, then the estimate), `nvml`, `rapl` or `estimate`.
    pub meter: String,
    /// The powercap tree RAPL is read from.
    pub rapl_root: PathBuf,
    /// Estimate: the machine's draw at idle and its added draw at full load (W).
    pub idle_w: f64,
    pub tdp_w: f64,
    /// How often the meter is read while requests run.
    pub sample_interval: String,
    pub embodied_kgco2: f64,
    pub lifetime_years: f64,
}

impl Default for RawAccounting {
    fn default() -> Self {
        Self {
            meter: "auto".into(),
            rapl_root: PathBuf::from("/sys/class/powercap"),
            idle_w: 20.0,
            tdp_w: 65.0,
            sample_interval: "1s".into(),
            embodied_kgco2: 1000.0,
            lifetime_years: 5.0,
        }
    }
}

// ---------------------------------------------------------------------------
/// A live carbon-intensity API (`carbon.source`); the requests and
/// parsers are `carbon::live`'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderKind {
    ElectricityMaps,
    WattTime,
    Uk,
    CarbonAwareSdk,
}

impl ProviderKind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "electricitymaps" => Self::ElectricityMaps,
            "watttime" => Self::WattTime,
            "uk" => Self::Uk,
            "carbon_aware_sdk" => Self::CarbonAwareSdk,
            _ => return None,
        })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ElectricityMaps => "electricitymaps",
            Self::WattTime => "watttime",
            Self::Uk => "uk",
            Self::CarbonAwareSdk => "carbon_aware_sdk",
        }
    }

    pub fn default_url(&self) -> &'static str {
        match self {
            // v4, the current API (v3 is legacy; its paths and shapes are the same).
            Self::ElectricityMaps => "https://api.electricitymaps.com/v4",
            Self::WattTime => "https://api.watttime.org",
            Self::Uk => "https://api.carbonintensity.org.uk",
            // Self-hosted: no public default; config validation requires a URL.
            Self::CarbonAwareSdk => "",
        }
    }
}

// Validated.

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// Who may reach the API from where ([`crate::api::guard`]).
    pub access: AccessConfig,
    pub data_dir: PathBuf,
    /// How long opening the store may take before start-up gives up (a
    /// damaged store can make sled spin).
    pub store_open_timeout: Duration,
    pub model: ModelConfig,
    pub generation: RawGeneration,
    pub directives: DirectiveConfig,
    pub accounting: AccountingConfig,
    pub carbon: CarbonConfig,
    pub queue: QueueConfig,
    pub optimizer: OptimizerConfig,
    pub evaluator: EvaluatorConfig,
    /// The API token file (`auth.token_file`); its content is read at start and on each reload (SIGHUP).
    pub token_file: Option<PathBuf>,
    /// Upstream engines (`[[backends]]`), in the file's order.
    pub backends: Vec<BackendConfig>,
}

/// A validated `[[backends]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    pub name: String,
    /// Base URL without a trailing slash.
    pub url: String,
    pub model: String,
    pub api_key_file: Option<PathBuf>,
    pub max_concurrent: usize,
    pub timeout: Duration,
    pub energy: BackendEnergy,
    pub embodied_kgco2: f64,
    pub lifetime_years: f64,
    /// None: the daemon's grid.
    pub carbon: Option<CarbonConfig>,
}

/// Where a backend's energy comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendEnergy {
    /// Calibrated joules per token (receipts say `estimated`).
    PerToken { prompt_j: f64, completion_j: f64 },
    /// A Prometheus counter, scraped every `interval`, times `joules_per_unit`,
    /// divided among the requests running there by tokens.
    Prometheus {
        url: String,
        metric: String,
        labels: BTreeMap<String, String>,
        joules_per_unit: f64,
        interval: Duration,
        /// Joules per completion token until receipts have measured it (routing only).
        prior_j_per_token: Option<f64>,
    },
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// More queued jobs than this: 429 with Retry-After.
    pub max_queued: usize,
    /// A job interrupted this many times (crashes) fails instead of running again.
    pub max_attempts: u32,
    /// Total characters of a request's messages; longer: 400.
    pub max_prompt_chars: usize,
    /// Finished jobs' results are collected after this long (ledger records stay).
    pub result_retention: Duration,
    /// On SIGTERM, how long running jobs may take to finish before they are requeued.
    pub shutdown_grace: Duration,
    /// A deferred job starts at least this long before its deadline.
    pub deadline_margin: Duration,
}

/// Energy meters and the embodied side of the hardware.
#[derive(Debug, Clone)]
pub struct AccountingConfig {
    pub meter: String,
    pub rapl_root: PathBuf,
    pub idle_w: f64,
    pub tdp_w: f64,
    pub sample_interval: Duration,
    pub embodied_kgco2: f64,
    pub lifetime_years: f64,
}

/// The longest duration [`parse_duration`] accepts: 100 years. Anything
/// longer is a typo, and bounding it keeps every later addition of a
/// duration to a timestamp far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86400);

/// `[server]`'s limits on who reaches the API and how slowly.
#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// Host names (lowercase, without port) a request's `Host` may name besides
    /// the loopback ones; `"*"` allows any.
    pub allowed_hosts: Vec<String>,
    /// Browser origins (`scheme://host[:port]`, lowercase) allowed to call the
    /// API; `"*"` allows any.
    pub allowed_origins: Vec<String>,
    /// A connection that has not sent a request's full headers in this long is closed.
    pub header_read_timeout: Duration,
    /// A request whose body has not arrived in this long gets 408.
    pub body_read_timeout: Duration,
}

/// Parses `90s`, `15m`, `6h`, `7d` (or a bare number of seconds), at most
/// [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "sec" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0 && secs <= MAX_DURATION.as_secs_f64()).then(|| Duration::from_secs_f64(secs))
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub source: ModelSource,
    /// The id served in `/v1/models` and accepted in `"model"`.
    pub name: String,
    pub max_seqs: usize,
}

#[derive(Debug, Clone)]
pub enum ModelSource {
    Gguf { path: PathBuf, cpu: bool },
    HuggingFace { id: String, isq: Option<String>, cpu: bool },
    Echo { token_delay_ms: u64, load_delay_ms: u64 },
    /// No embedded engine: every request goes to a `[[backends]]` upstream.
    None,
}

#[derive(Debug, Clone)]
pub struct DirectiveConfig {
    /// Levels in order, L0 first; `text` empty means no directive.
    pub levels: Vec<(String, String)>,
    /// Same order as `levels`: per prompt class, the wording that replaces
    /// the level's text for that class.
    pub class_texts: Vec<BTreeMap<String, String>>,
    /// Same order as `levels`; sums to 1.
    pub mix: Vec<f64>,
    pub seed: u64,
}

/// Expands `${NAME}` and `${NAME:-default}` in a path setting; `env` looks a
/// name up. An unset or empty `${NAME}` without a default is an error (a path
/// silently missing its directory would point somewhere else); a `$` not
/// followed by `{` stays as it is.
pub fn expand_vars(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after.find('}').ok_or_else(|| format!("{s:?}: \"${{\" without its closing \"}}\""))?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("{s:?}: {name:?} is not an environment variable name"));
        }
        match (env(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!("{s:?}: the environment variable {name} is not set (give a default as ${{{name}:-...}})"))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Reads the file's table into [`RawConfig`], collecting each structural
/// error (wrong type, unknown key, missing key) with its path: the offending
/// key is removed and the rest read again, so one bad key hides no other.
/// `None` when a required key is missing or wrong.
fn read_raw(mut table: toml::Table) -> (Option<RawConfig>, Vec<String>) {
    let mut errs = Vec::new();
    for _ in 0..200 {
        let value = toml::Value::Table(table.clone());
        let err = match serde_path_to_error::deserialize::<_, RawConfig>(value) {
            Ok(raw) => return (Some(raw), errs),
            Err(e) => e,
        };
        let at: Vec<String> = err.path().iter().filter_map(|seg| match seg {
            serde_path_to_error::Segment::Map { key } => Some(key.clone()),
            serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
            _ => None,
        }).collect();
        // The first line: the rest is toml's own "in `section`" context.
        let message = err.inner().to_string().lines().next().unwrap_or_default().trim().to_string();
        let key = at;
        let shown = if key.is_empty() { "(top level)".to_string() } else { key.join(".") };
        let message = match message.strip_prefix("unknown field `") {
            Some(rest) => format!("{shown}: unknown key ({})", rest.split_once(", ").map(|(_, r)| r).unwrap_or("not a setting")),
            None => format!("{shown}: {message}"),
        };
        errs.push(message);
        if key.is_empty() || !remove_key(&mut table, &key) {
            return (None, errs);
        }
    }
    (None, errs)
}

/// Removes the key at `path` (table keys, array indexes); false if absent.
fn remove_key(table: &mut toml::Table, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else { return false };
    if rest.is_empty() {
        return table.remove(first).is_some();
    }
    let mut node = match table.get_mut(first) {
        Some(v) => v,
        None => return false,
    };
    for (i, seg) in rest.iter().enumerate() {
        let last = i + 1 == rest.len();
        match node {
            toml::Value::Table(t) if last => return t.remove(seg).is_some(),
            toml::Value::Array(a) if last => {
                return match seg.parse::<usize>() {
                    Ok(k) if k < a.len() => {
                        a.remove(k);
                        true
                    }
                    _ => false,
                }
            }
            toml::Value::Table(t) => match t.get_mut(seg) {
                Some(v) => node = v,
                None => return false,
            },
            toml::Value::Array(a) => match seg.parse::<usize>().ok().and_then(|k| a.get_mut(k)) {
                Some(v) => node = v,
                None => return false,
            },
            _ => return false,
        }
    }
    false
}

/// Validates a carbon-source table (`[carbon]`, or a backend's own
/// `[backends.carbon]`): `prefix` names it in errors.
fn carbon_config(prefix: &str, c: &RawCarbon, errs: &mut Vec<String>, resolve_at: &dyn Fn(&str, &Path) -> PathBuf) -> CarbonConfig {
    let kind = ProviderKind::parse(&c.source);
    if kind.is_none() && c.source != "trace" {
        errs.push(format!(
            "{prefix}.source: {:?} is not one of \"trace\", \"electricitymaps\", \"watttime\", \"uk\", \"carbon_aware_sdk\"",
            c.source
        ));
    }
    if !(c.trace_speedup.is_finite() && c.trace_speedup > 0.0) {
        errs.push(format!("{prefix}.trace_speedup: must be a positive number"));
    }
    if !c.trace_offset_hours.is_finite() {
        errs.push(format!("{prefix}.trace_offset_hours: must be a number"));
    }
    let live = kind.map(|kind| {
        use ProviderKind as K;
        let url = c.url.clone().filter(|u| !u.trim().is_empty()).unwrap_or_else(|| kind.default_url().to_string());
        if url.is_empty() {
            errs.push(format!("{prefix}.url: required for carbon.source = {:?} (the URL of its WebApi)", c.source));
        } else if !(url.starts_with("http://") || url.starts_with("https://")) {
            errs.push(format!("{prefix}.url: {url:?} is not an http:// or https:// URL"));
        }
        if c.zone.trim().is_empty() && kind != K::Uk {
            let what = match kind {
                K::ElectricityMaps => "a zone such as \"DE\"",
                K::WattTime => "a region such as \"CAISO_NORTH\"",
                _ => "a location such as \"eastus\"",
            };
            errs.push(format!("{prefix}.zone: required for carbon.source = {:?}: {what}", c.source));
        }
        if kind == K::Uk && !c.zone.trim().is_empty() && !matches!(c.zone.trim().parse::<u32>(), Ok(1..=17)) {
            errs.push(format!("{prefix}.zone: {:?} is not a GB region id (1 to 17; empty for national)", c.zone));
        }
        if kind == K::WattTime && c.username.as_deref().unwrap_or("").is_empty() {
            errs.push(format!("{prefix}.username: required for carbon.source = \"watttime\" (the password comes from carbon.token_file or SPROUT_CARBON_TOKEN)"));
        }
        if c.fallback_gco2_per_kwh.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
            errs.push(format!("{prefix}.fallback_gco2_per_kwh: must be a non-negative number"));
        }
        let mut dur = |key: &str, v: &str| {
            parse_duration(v).filter(|d| !d.is_zero()).unwrap_or_else(|| {
                errs.push(format!("{prefix}.{key}: {v:?} is not a positive duration like \"10s\" or \"5m\""));
                Duration::from_secs(1)
            })
        };
        LiveCarbonConfig {
            kind,
            url,
            zone: c.zone.trim().to_string(),
            token_file: c.token_file.as_deref().filter(|p| !p.as_os_str().is_empty()).map(|p| resolve_at(&format!("{prefix}.token_file"), p)),
            username: c.username.clone(),
            poll_interval: dur("poll_interval", &c.poll_interval),
            timeout: dur("timeout", &c.timeout),
            retries: c.retries,
            backoff: dur("backoff", &c.backoff),
            max_age: dur("max_age", &c.max_age),
            fallback_gco2_per_kwh: c.fallback_gco2_per_kwh,
        }
    });
    CarbonConfig {
        trace_file: c.trace_file.as_deref().filter(|p| !p.as_os_str().is_empty()).map(|p| resolve_at(&format!("{prefix}.trace_file"), p)),
        offset_hours: c.trace_offset_hours,
        speedup: c.trace_speedup,
        live,
    }
}

/// The name the embedded engine has among the backends.
pub const EMBEDDED_BACKEND: &str = "local";

/// Joules in one unit of an energy counter: `J`, `mJ` (DCGM), `Wh`, `kWh`.
pub fn joules_per_energy_unit(unit: &str) -> Option<f64> {
    match unit {
        "J" => Some(1.0),
        "mJ" => Some(1e-3),
        "Wh" => Some(3600.0),
        "kWh" => Some(3.6e6),
        _ => None,
    }
}

/// Validates `[[backends]]`.
fn backend_configs(
    raw: &[RawBackend],
    accounting: &RawAccounting,
    errs: &mut Vec<String>,
    resolve_at: &dyn Fn(&str, &Path) -> PathBuf,
) -> Vec<BackendConfig> {
    let mut out = Vec::new();
    for (i, b) in raw.iter().enumerate() {
        let at = format!("backends[{i}]");
        if b.name.is_empty() || !b.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.') {
            errs.push(format!("{at}.name: {:?} must be non-empty letters, digits, '_', '-' or '.'", b.name));
        } else if b.name == EMBEDDED_BACKEND || raw[..i].iter().any(|o| o.name == b.name) {
            errs.push(format!("{at}.name: {:?} is taken (\"{EMBEDDED_BACKEND}\" is the embedded engine; names are unique)", b.name));
        }
        let url = b.url.trim().trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.split_once("://").is_some_and(|(_, r)| r.is_empty()) {
            errs.push(format!("{at}.url: {:?} is not an http:// or https:// URL like \"http://10.0.0.5:8000/v1\"", b.url));
        }
        if b.model.trim().is_empty() {
            errs.push(format!("{at}.model: required: the model name the upstream serves"));
        }
        if b.max_concurrent == 0 || b.max_concurrent > 4096 {
            errs.push(format!("{at}.max_concurrent: must be between 1 and 4096"));
        }
        let timeout = parse_duration(&b.timeout).filter(|d| !d.is_zero()).unwrap_or_else(|| {
            errs.push(format!("{at}.timeout: {:?} is not a positive duration like \"60s\"", b.timeout));
            Duration::from_secs(60)
        });
        let nonneg = |key: &str, v: Option<f64>, errs: &mut Vec<String>| {
            if v.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                errs.push(format!("{at}.{key}: must be a non-negative number"));
            }
        };
        nonneg("j_per_prompt_token", b.j_per_prompt_token, errs);
        nonneg("j_per_completion_token", b.j_per_completion_token, errs);
        nonneg("embodied_kgco2", b.embodied_kgco2, errs);
        if b.lifetime_years.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
            errs.push(format!("{at}.lifetime_years: must be positive"));
        }
        let energy = match (&b.energy_url, &b.energy_metric) {
            (Some(u), Some(metric)) => {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    errs.push(format!("{at}.energy_url: {u:?} is not an http:// or https:// URL of a Prometheus /metrics page"));
                }
                if metric.is_empty() || !metric.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                    errs.push(format!("{at}.energy_metric: {metric:?} is not a Prometheus metric name"));
                }
                let joules_per_unit = joules_per_energy_unit(&b.energy_unit).unwrap_or_else(|| {
                    errs.push(format!("{at}.energy_unit: {:?} is not one of \"J\", \"mJ\" (DCGM), \"Wh\", \"kWh\"", b.energy_unit));
                    1.0
                });
                let interval = parse_duration(&b.energy_interval).filter(|d| !d.is_zero()).unwrap_or_else(|| {
                    errs.push(format!("{at}.energy_interval: {:?} is not a positive duration like \"1s\"", b.energy_interval));
                    Duration::from_secs(1)
                });
                if b.j_per_prompt_token.is_some() {
                    errs.push(format!("{at}.j_per_prompt_token: not used with a measured energy_url (only j_per_completion_token, as the routing prior until measured)"));
                }
                BackendEnergy::Prometheus {
                    url: u.clone(),
                    metric: metric.clone(),
                    labels: b.energy_labels.clone(),
                    joules_per_unit,
                    interval,
                    prior_j_per_token: b.j_per_completion_token,
                }
            }
            (None, None) => match (b.j_per_prompt_token, b.j_per_completion_token) {
                (Some(p), Some(c)) => BackendEnergy::PerToken { prompt_j: p, completion_j: c },
                _ => {
                    errs.push(format!(
                        "{at}: no energy source: set energy_url and energy_metric (a Prometheus counter, measured) or j_per_prompt_token and j_per_completion_token (an estimate; `sproutctl backends calibrate` measures them)"
                    ));
                    BackendEnergy::PerToken { prompt_j: 0.0, completion_j: 0.0 }
                }
            },
            (Some(_), None) => {
                errs.push(format!("{at}.energy_metric: required with energy_url (e.g. \"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION\")"));
                BackendEnergy::PerToken { prompt_j: 0.0, completion_j: 0.0 }
            }
            (None, Some(_)) => {
                errs.push(format!("{at}.energy_url: required with energy_metric (the exporter's /metrics URL)"));
                BackendEnergy::PerToken { prompt_j: 0.0, completion_j: 0.0 }
            }
        };
        out.push(BackendConfig {
            name: b.name.clone(),
            url,
            model: b.model.trim().to_string(),
            api_key_file: b.api_key_file.as_deref().filter(|p| !p.as_os_str().is_empty()).map(|p| resolve_at(&format!("{at}.api_key_file"), p)),
            max_concurrent: b.max_concurrent,
            timeout,
            energy,
            embodied_kgco2: b.embodied_kgco2.unwrap_or(accounting.embodied_kgco2),
            lifetime_years: b.lifetime_years.unwrap_or(accounting.lifetime_years),
            carbon: b.carbon.as_ref().map(|c| carbon_config(&format!("{at}.carbon"), c, errs, resolve_at)),
        });
    }
    out
}

impl Config {
    /// Reads and validates a config file; relative paths resolve against its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(&text, path, &base)
    }

    /// The compiled-in default, with paths relative to the working directory.
    pub fn default_config() -> Config {
        Self::parse(DEFAULT_CONFIG, Path::new("config.toml"), Path::new(""))
            .expect("the shipped config.toml is valid")
    }

    /// Parses and validates, reporting every error at once with its key path:
    /// a syntax error stops at the first (the rest cannot be read), but each
    /// wrong type and unknown key is reported and set aside, and the rest of
    /// the file is still read and validated.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Config, ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        let (raw, mut errs) = read_raw(table);
        match raw {
            Some(raw) => match Self::from_raw(raw, base) {
                Ok(c) if errs.is_empty() => Ok(c),
                Ok(_) => Err(ConfigErrors(errs).into()),
                Err(ConfigErrors(more)) => {
                    errs.extend(more);
                    Err(ConfigErrors(errs).into())
                }
            },
            None => Err(ConfigErrors(errs).into()),
        }
    }

    pub fn from_raw(raw: RawConfig, base: &Path) -> Result<Config, ConfigErrors> {
        let mut errs = Vec::new();
        // Path settings expand ${VAR} and ${VAR:-default} from the environment
        // (systemd's ${CREDENTIALS_DIRECTORY}, ${STATE_DIRECTORY}, ...).
        let path_errs = std::cell::RefCell::new(Vec::new());
        let resolve_at = |key: &str, p: &Path| {
            let text = p.to_string_lossy();
            let p = match expand_vars(&text, &|name| std::env::var(name).ok()) {
                Ok(s) => PathBuf::from(s),
                Err(e) => {
                    path_errs.borrow_mut().push(format!("{key}: {e}"));
                    p.to_owned()
                }
            };
            if p.is_absolute() { p } else { base.join(p) }
        };

        let listen = match raw.server.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errs.push(format!("server.listen: {:?} is not an ADDR:PORT socket address", raw.server.listen));
                None
            }
        };
        if raw.server.max_body_bytes < 1024 {
            errs.push("server.max_body_bytes: must be at least 1024".into());
        }
        let mut server_timeout = |key: &str, v: &str| {
            parse_duration(v).filter(|d| !d.is_zero()).unwrap_or_else(|| {
                errs.push(format!("server.{key}: {v:?} is not a positive duration like \"10s\" (at most 100 years)"));
                Duration::from_secs(1)
            })
        };
        let header_read_timeout = server_timeout("header_read_timeout", &raw.server.header_read_timeout);
        let body_read_timeout = server_timeout("body_read_timeout", &raw.server.body_read_timeout);
        let allowed_hosts: Vec<String> = raw.server.allowed_hosts.iter().map(|h| h.trim().to_ascii_lowercase()).collect();
        for (i, h) in allowed_hosts.iter().enumerate() {
            if h.is_empty() || h.contains(['/', ' ']) || (h.contains(':') && !h.starts_with('[')) {
                errs.push(format!("server.allowed_hosts[{i}]: {h:?} is not a host name (no scheme, path or port; IPv6 in brackets), or \"*\""));
            }
        }
        let allowed_origins: Vec<String> =
            raw.server.allowed_origins.iter().map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase()).collect();
        for (i, o) in allowed_origins.iter().enumerate() {
            let ok = o == "*"
                || ((o.starts_with("http://") || o.starts_with("https://"))
                    && !o.split_once("://").map(|(_, rest)| rest).unwrap_or("").is_empty()
                    && !o.split_once("://").map(|(_, rest)| rest.contains('/')).unwrap_or(true));
            if !ok {
                errs.push(format!("server.allowed_origins[{i}]: {o:?} is not an origin like \"https://app.example.com\" or \"http://localhost:3000\", or \"*\""));
            }
        }

        let m = &raw.model;
        let source = match m.kind.as_str() {
            "gguf" => match &m.path {
                Some(p) => Some(ModelSource::Gguf { path: resolve_at("model.path", p), cpu: m.cpu }),
                None => {
                    errs.push("model.path: required when model.kind = \"gguf\"".into());
                    None
                }
            },
            "hf" => {
                #[cfg(feature = "engine")]
                if let Some(isq) = &m.isq {
                    if let Err(e) = mistralrs::parse_isq_value(isq, None) {
                        errs.push(format!("model.isq: {e}"));
                    }
                }
                match &m.hf_id {
                    Some(id) if !id.is_empty() => {
                        Some(ModelSource::HuggingFace { id: id.clone(), isq: m.isq.clone(), cpu: m.cpu })
                    }
                    _ => {
                        errs.push("model.hf_id: required when model.kind = \"hf\"".into());
                        None
                    }
                }
            }
            "echo" => Some(ModelSource::Echo { token_delay_ms: m.echo_token_delay_ms, load_delay_ms: m.echo_load_delay_ms }),
            "none" => {
                if raw.backends.is_empty() {
                    errs.push("model.kind: \"none\" (no embedded engine) needs at least one [[backends]] entry".into());
                }
                Some(ModelSource::None)
            }
            other => {
                errs.push(format!("model.kind: {other:?} is not one of \"gguf\", \"hf\", \"echo\", \"none\""));
                None
            }
        };
        if m.max_seqs == 0 || m.max_seqs > 256 {
            errs.push("model.max_seqs: must be between 1 and 256".into());
        }
        let name = m.name.clone().unwrap_or_else(|| match &source {
            Some(ModelSource::Gguf { path, .. }) => {
                path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
            }
            Some(ModelSource::HuggingFace { id, .. }) => id.clone(),
            Some(ModelSource::None) => raw.backends.first().map(|b| b.model.clone()).unwrap_or_default(),
            _ => "echo".into(),
        });
        if name.is_empty() {
            errs.push("model.name: must not be empty".into());
        }

        let g = &raw.generation;
        if !(0.0..=2.0).contains(&g.temperature) {
            errs.push("generation.temperature: must be within [0, 2]".into());
        }
        if !(g.top_p > 0.0 && g.top_p <= 1.0) {
            errs.push("generation.top_p: must be within (0, 1]".into());
        }
        if !(g.repetition_penalty > 0.0) {
            errs.push("generation.repetition_penalty: must be positive".into());
        }
        if g.max_tokens_cap == 0 {
            errs.push("generation.max_tokens_cap: must be at least 1".into());
        }
        if g.default_max_tokens == 0 || g.default_max_tokens > g.max_tokens_cap {
            errs.push("generation.default_max_tokens: must be between 1 and generation.max_tokens_cap".into());
        }

        let d = &raw.directives;
        let mut levels = Vec::new();
        for (i, l) in d.levels.iter().enumerate() {
            if l.name.is_empty() || !l.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                errs.push(format!("directives.levels[{i}].name: {:?} must be non-empty letters, digits, '_' or '-'", l.name));
            }
            if levels.iter().any(|(n, _): &(String, String)| n == &l.name) {
                errs.push(format!("directives.levels[{i}].name: {:?} is defined twice", l.name));
            }
            levels.push((l.name.clone(), l.text.trim().to_string()));
            for (class, text) in &l.classes {
                if !crate::plan::classify::CLASSES.contains(&class.as_str()) {
                    errs.push(format!(
                        "directives.levels[{i}].classes.{class}: no such prompt class (one of {})",
                        crate::plan::classify::CLASSES.join(", ")
                    ));
                } else if i == 0 && !text.trim().is_empty() {
                    errs.push(format!("directives.levels[0].classes.{class}: the baseline level has no directive"));
                } else if i > 0 && text.trim().is_empty() {
                    errs.push(format!("directives.levels[{i}].classes.{class}: empty; leave the class out to use the level's text"));
                }
            }
        }
        if levels.is_empty() {
            errs.push("directives.levels: at least one level is required".into());
        } else if !levels[0].1.is_empty() {
            errs.push("directives.levels[0].text: the first level is the baseline and must have no directive".into());
        }
        for name in d.mix.keys() {
            if !levels.iter().any(|(n, _)| n == name) {
                errs.push(format!("directives.mix.{name}: no such level in directives.levels"));
            }
        }
        let mix: Vec<f64> = levels.iter().map(|(n, _)| d.mix.get(n).copied().unwrap_or(0.0)).collect();
        if mix.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
            errs.push("directives.mix: shares must be finite and non-negative".into());
        } else if (mix.iter().sum::<f64>() - 1.0).abs() > 1e-6 {
            errs.push(format!("directives.mix: shares must sum to 1 (they sum to {})", mix.iter().sum::<f64>()));
        }

        let a = &raw.accounting;
        if !["auto", "nvml", "rapl", "estimate"].contains(&a.meter.as_str()) {
            errs.push(format!("accounting.meter: {:?} is not one of \"auto\", \"nvml\", \"rapl\", \"estimate\"", a.meter));
        }
        let sample_interval = parse_duration(&a.sample_interval).filter(|d| !d.is_zero()).unwrap_or_else(|| {
            errs.push(format!("accounting.sample_interval: {:?} is not a positive duration like \"1s\"", a.sample_interval));
            Duration::from_secs(1)
        });
        for (key, v) in [
            ("accounting.idle_w", a.idle_w),
            ("accounting.tdp_w", a.tdp_w),
            ("accounting.embodied_kgco2", a.embodied_kgco2),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                errs.push(format!("{key}: must be a non-negative number"));
            }
        }
        if !(a.lifetime_years.is_finite() && a.lifetime_years > 0.0) {
            errs.push("accounting.lifetime_years: must be positive".into());
        }

        let carbon = carbon_config("carbon", &raw.carbon, &mut errs, &resolve_at);
        let backends = backend_configs(&raw.backends, a, &mut errs, &resolve_at);

        let q = &raw.queue;
        let mut duration = |key: &str, v: &str| {
            parse_duration(v).unwrap_or_else(|| {
                errs.push(format!("{key}: {v:?} is not a duration like \"30s\", \"15m\", \"6h\" or \"7d\" (at most 100 years)"));
                Duration::ZERO
            })
        };
        let result_retention = duration("queue.result_retention", &q.result_retention);
        let shutdown_grace = duration("queue.shutdown_grace", &q.shutdown_grace);
        let deadline_margin = duration("queue.deadline_margin", &q.deadline_margin);
        let store_open_timeout = duration("storage.open_timeout", &raw.storage.open_timeout);
        if store_open_timeout.is_zero() && parse_duration(&raw.storage.open_timeout).is_some() {
            errs.push("storage.open_timeout: must be more than 0".into());
        }
        if q.max_queued == 0 {
            errs.push("queue.max_queued: must be at least 1".into());
        }
        if q.max_attempts == 0 {
            errs.push("queue.max_attempts: must be at least 1".into());
        }
        if q.max_prompt_chars == 0 {
            errs.push("queue.max_prompt_chars: must be at least 1".into());
        }
        let token_file = raw.auth.token_file.as_deref().filter(|p| !p.as_os_str().is_empty()).map(|p| resolve_at("auth.token_file", p));
        if let Some(l) = listen {
            if !l.ip().is_loopback() && token_file.is_none() {
                errs.push(format!(
                    "auth.token_file: required when server.listen ({l}) is not a loopback address; without it anyone on the network could use the API"
                ));
            }
        }

        let o = &raw.optimizer;
        if !["best", "sprout"].contains(&o.policy.as_str()) {
            errs.push(format!("optimizer.policy: {:?} is not \"best\" or \"sprout\"", o.policy));
        }
        if !(o.xi.is_finite() && (0.0..=1.0).contains(&o.xi)) {
            errs.push("optimizer.xi: must be between 0 and 1".into());
        }
        let resolve_interval = parse_duration(&o.resolve_interval).filter(|d| !d.is_zero()).unwrap_or_else(|| {
            errs.push(format!("optimizer.resolve_interval: {:?} is not a positive duration like \"1h\"", o.resolve_interval));
            Duration::from_secs(3600)
        });
        if !(o.resolve_threshold.is_finite() && o.resolve_threshold > 0.0) {
            errs.push("optimizer.resolve_threshold: must be a positive number (gCO2e/kWh)".into());
        }
        let ci_range = match (o.ci_min, o.ci_max) {
            (None, None) => None,
            (Some(lo), Some(hi)) if lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo < hi => Some((lo, hi)),
            (Some(_), Some(_)) => {
                errs.push("optimizer.ci_min, optimizer.ci_max: need 0 <= ci_min < ci_max".into());
                None
            }
            _ => {
                errs.push("optimizer.ci_min, optimizer.ci_max: set both or neither".into());
                None
            }
        };
        let mut per_level = |key: &str, map: &BTreeMap<String, f64>, default: &[f64]| -> Vec<f64> {
            for name in map.keys() {
                if !levels.iter().any(|(n, _)| n == name) {
                    errs.push(format!("optimizer.{key}.{name}: no such level in directives.levels"));
                }
            }
            let v: Vec<f64> = levels
                .iter()
                .enumerate()
                .map(|(i, (n, _))| map.get(n).copied().unwrap_or_else(|| default.get(i).copied().unwrap_or(*default.last().unwrap_or(&0.0))))
                .collect();
            if v.iter().any(|x| !(x.is_finite() && *x >= 0.0)) {
                errs.push(format!("optimizer.{key}: values must be finite and non-negative"));
            }
            v
        };
        // Priors for e and p until the ledger and the evaluator have data:
        // this README's measurements on the CPU model.
        let prior_energy_j = per_level("prior_energy_j", &o.prior_energy_j, &[400.0, 280.0, 60.0]);
        let prior_time_s = per_level("prior_time_s", &o.prior_time_s, &[10.0, 7.0, 1.5]);
        if !o.prior_q.is_empty() {
            errs.push("optimizer.prior_q: no longer used: a prior from another model never licenses a shorter level; each level serves a class once the evaluator has measured that it keeps quality there (remove the key)".into());
        }
        let optimizer = OptimizerConfig {
            enabled: o.enabled,
            policy: o.policy.clone(),
            xi: o.xi,
            resolve_interval,
            resolve_threshold: o.resolve_threshold,
            ci_range,
            min_samples: o.min_samples.max(1),
            prior_energy_j,
            prior_time_s,
        };

        let ev = &raw.evaluator;
        let mut edur = |key: &str, v: &str| {
            parse_duration(v).filter(|d| !d.is_zero()).unwrap_or_else(|| {
                errs.push(format!("evaluator.{key}: {v:?} is not a positive duration like \"6h\""));
                Duration::from_secs(1)
            })
        };
        let evaluator = EvaluatorConfig {
            enabled: ev.enabled,
            sample_size: ev.sample_size,
            sample_retention: edur("sample_retention", &ev.sample_retention),
            prompts: ev.prompts,
            max_tokens: ev.max_tokens,
            share: ev.share,
            judge: ev.judge.clone(),
            judge_url: ev.judge_url.clone().filter(|u| !u.trim().is_empty()),
            judge_model: ev.judge_model.clone().filter(|m| !m.trim().is_empty()),
            judge_key_file: ev.judge_key_file.as_deref().filter(|p| !p.as_os_str().is_empty()).map(|p| resolve_at("evaluator.judge_key_file", p)),
            judge_timeout: edur("judge_timeout", &ev.judge_timeout),
            judge_retries: ev.judge_retries,
            judge_prompt: ev.judge_prompt.clone().filter(|p| !p.trim().is_empty()),
            min_interval: edur("min_interval", &ev.min_interval),
            max_staleness: edur("max_staleness", &ev.max_staleness),
            tolerance: ev.tolerance,
            check_interval: edur("check_interval", &ev.check_interval),
        };
        if !(ev.share.is_finite() && (0.0..=1.0).contains(&ev.share)) {
            errs.push(format!("evaluator.share: {} must be between 0 and 1", ev.share));
        }
        if !["local", "openai"].contains(&ev.judge.as_str()) {
            errs.push(format!("evaluator.judge: {:?} is not \"local\" or \"openai\"", ev.judge));
        }
        if ev.judge == "openai" && (evaluator.judge_url.is_none() || evaluator.judge_model.is_none()) {
            errs.push("evaluator.judge_url, evaluator.judge_model: required for judge = \"openai\"".into());
        }
        if let Some(u) = &evaluator.judge_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                errs.push(format!("evaluator.judge_url: {u:?} is not an http:// or https:// URL"));
            }
        }
        if ev.prompts == 0 || ev.max_tokens == 0 || ev.sample_size == 0 {
            errs.push("evaluator.prompts, evaluator.max_tokens, evaluator.sample_size: must be at least 1".into());
        }
        if !(ev.tolerance.is_finite() && ev.tolerance >= 0.0) {
            errs.push("evaluator.tolerance: must be a non-negative share (0.05 = 5%)".into());
        }
        for key in ["{question}", "{answers}"] {
            if evaluator.judge_prompt.as_ref().is_some_and(|p| !p.contains(key)) {
                errs.push(format!("evaluator.judge_prompt: must contain {key}"));
            }
        }
        if evaluator.min_interval > evaluator.max_staleness {
            errs.push("evaluator.min_interval: must not exceed evaluator.max_staleness".into());
        }

        let data_dir = resolve_at("storage.data_dir", &raw.storage.data_dir);
        let rapl_root = resolve_at("accounting.rapl_root", &a.rapl_root);
        errs.extend(path_errs.take());
        if !errs.is_empty() {
            return Err(ConfigErrors(errs));
        }
        Ok(Config {
            listen: listen.expect("checked"),
            max_body_bytes: raw.server.max_body_bytes,
            access: AccessConfig { allowed_hosts, allowed_origins, header_read_timeout, body_read_timeout },
            data_dir,
            store_open_timeout,
            model: ModelConfig { source: source.expect("checked"), name, max_seqs: m.max_seqs },
            generation: raw.generation,
            directives: DirectiveConfig {
                levels,
                class_texts: d.levels.iter().map(|l| l.classes.iter().map(|(k, v)| (k.clone(), v.trim().to_string())).collect()).collect(),
                mix,
                seed: d.seed,
            },
            accounting: AccountingConfig {
                meter: a.meter.clone(),
                rapl_root,
                idle_w: a.idle_w,
                tdp_w: a.tdp_w,
                sample_interval,
                embodied_kgco2: a.embodied_kgco2,
                lifetime_years: a.lifetime_years,
            },
            carbon,
            queue: QueueConfig {
                max_queued: q.max_queued,
                max_attempts: q.max_attempts,
                max_prompt_chars: q.max_prompt_chars,
                result_retention,
                shutdown_grace,
                deadline_margin,
            },
            optimizer,
            evaluator,
            token_file,
            backends,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_is_valid_and_serves_the_default_model() {
        let c = Config::default_config();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7878");
        assert!(matches!(c.model.source, ModelSource::Gguf { .. }));
        let names: Vec<_> = c.directives.levels.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["L0", "L1", "L2"]);
        assert!(c.directives.levels[0].1.is_empty());
        assert!((c.directives.mix.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn every_error_is_reported_with_its_key() {
        let text = DEFAULT_CONFIG
            .replace("listen = \"127.0.0.1:7878\"", "listen = \"nowhere\"")
            .replace("temperature = 0.7", "temperature = 9.0")
            .replace("kind = \"gguf\"", "kind = \"onnx\"");
        let err = Config::parse(&text, Path::new("x.toml"), Path::new("")).unwrap_err();
        let ConfigError::Invalid(ConfigErrors(errs)) = err else { panic!("expected validation errors") };
        assert!(errs.iter().any(|e| e.starts_with("server.listen:")), "{errs:?}");
        assert!(errs.iter().any(|e| e.starts_with("generation.temperature:")), "{errs:?}");
        assert!(errs.iter().any(|e| e.starts_with("model.kind:")), "{errs:?}");
    }

    #[test]
    fn every_structural_error_is_reported_at_once_with_its_key_path() {
        let text = DEFAULT_CONFIG
            .replace("max_attempts = 3", "max_attempts = \"three\"")
            .replace("[generation]", "[generation]\ntemprature = 1.0")
            .replace("data_dir = \"data\"", "data_dir = 5")
            .replace("[queue]", "[queue]\nmax_queud = 5")
            .replace("top_p = 0.9", "top_p = 7.0")
            + "\n[nonsense]\nx = 1\n";
        let ConfigError::Invalid(ConfigErrors(errs)) = Config::parse(&text, Path::new("x"), Path::new("")).unwrap_err() else { panic!() };
        for want in ["queue.max_attempts:", "generation.temprature: unknown key", "storage.data_dir:", "queue.max_queud: unknown key", "nonsense: unknown key", "generation.top_p:"] {
            assert!(errs.iter().any(|e| e.starts_with(want)), "{want} not in {errs:?}");
        }
        // No line repeats its key inside its message.
        for e in &errs {
            let (key, msg) = e.split_once(": ").unwrap();
            assert!(!msg.starts_with(key), "{e}");
        }
        let text = DEFAULT_CONFIG.replace("open_timeout = \"5m\"", "open_timeout = \"0s\"");
        let ConfigError::Invalid(ConfigErrors(errs)) = Config::parse(&text, Path::new("x"), Path::new("")).unwrap_err() else { panic!() };
        assert_eq!(errs, ["storage.open_timeout: must be more than 0"]);
        // A syntax error is one error with its line.
        let err = Config::parse("[queue\nx = 1", Path::new("x"), Path::new("")).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        // A required section missing is named.
        let ConfigError::Invalid(ConfigErrors(errs)) = Config::parse("[server]\n", Path::new("x"), Path::new("")).unwrap_err() else { panic!() };
        assert!(errs.iter().any(|e| e.contains("missing field `model`") || e.contains("model")), "{errs:?}");
    }

    #[test]
    fn unknown_keys_and_bad_mix_are_rejected() {
        let text = DEFAULT_CONFIG.replace("[generation]", "[generation]\ntemprature = 1.0");
        let ConfigError::Invalid(ConfigErrors(errs)) = Config::parse(&text, Path::new("x"), Path::new("")).unwrap_err() else { panic!() };
        assert!(errs.iter().any(|e| e.starts_with("generation.temprature: unknown key")), "{errs:?}");
        let text = DEFAULT_CONFIG.replace("mix = {", "mix = { L9 = 0.5,");
        let ConfigError::Invalid(ConfigErrors(errs)) =
            Config::parse(&text, Path::new("x"), Path::new("")).unwrap_err()
        else {
            panic!()
        };
        assert!(errs.iter().any(|e| e.starts_with("directives.mix.L9:")), "{errs:?}");
        let text = DEFAULT_CONFIG.replace("mix = { L0 = 0.4,", "mix = { L0 = 0.9,");
        let ConfigError::Invalid(ConfigErrors(errs)) =
            Config::parse(&text, Path::new("x"), Path::new("")).unwrap_err()
        else {
            panic!()
        };
        assert!(errs.iter().any(|e| e.starts_with("directives.mix:") && e.contains("sum to 1")), "{errs:?}");
    }

    #[test]
    fn path_settings_expand_environment_variables() {
        let env = |n: &str| match n {
            "CREDENTIALS_DIRECTORY" => Some("/run/credentials/sproutd.service".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(expand_vars("${CREDENTIALS_DIRECTORY}/token", &env).unwrap(), "/run/credentials/sproutd.service/token");
        assert_eq!(expand_vars("${STATE_DIRECTORY:-/var/lib/sproutd}/data", &env).unwrap(), "/var/lib/sproutd/data");
        assert_eq!(expand_vars("${EMPTY:-x}", &env).unwrap(), "x");
        assert_eq!(expand_vars("a$b/${CREDENTIALS_DIRECTORY}", &env).unwrap(), "a$b//run/credentials/sproutd.service");
        assert_eq!(expand_vars("plain/path", &env).unwrap(), "plain/path");
        assert!(expand_vars("${NOPE}/t", &env).unwrap_err().contains("NOPE is not set"));
        assert!(expand_vars("${EMPTY}", &env).is_err());
        assert!(expand_vars("${OPEN/t", &env).unwrap_err().contains("closing"));
        assert!(expand_vars("${1X}", &env).unwrap_err().contains("not an environment variable name"));
        // Through the config: an unset variable is an error with its key.
        let text = DEFAULT_CONFIG.replace("[auth]", "[auth]\ntoken_file = \"${SPROUT_SURELY_UNSET_VAR}/token\"");
        let ConfigError::Invalid(ConfigErrors(errs)) = Config::parse(&text, Path::new("x"), Path::new("")).unwrap_err() else { panic!() };
        assert!(errs.iter().any(|e| e.starts_with("auth.token_file:") && e.contains("SPROUT_SURELY_UNSET_VAR")), "{errs:?}");
        let text = DEFAULT_CONFIG.replace("[auth]", "[auth]\ntoken_file = \"${SPROUT_SURELY_UNSET_VAR:-/etc/sproutd}/token\"");
        let c = Config::parse(&text, Path::new("x"), Path::new("")).unwrap();
        assert_eq!(c.token_file.unwrap(), PathBuf::from("/etc/sproutd/token"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("6h"), Some(Duration::from_secs(21600)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604800)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("42"), Some(Duration::from_secs(42)));
        assert_eq!(parse_duration("6 h"), Some(Duration::from_secs(21600)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("5y"), None);
        // Too long to be meant, and never a panic or a wrap.
        assert_eq!(parse_duration("100d"), Some(Duration::from_secs(8_640_000)));
        assert_eq!(parse_duration("36500d"), Some(MAX_DURATION));
        assert_eq!(parse_duration("36501d"), None);
        assert_eq!(parse_duration("99999999999999999999h"), None);
        assert_eq!(parse_duration("18446744073709551615s"), None);
        assert_eq!(parse_duration("18446744073713152s"), None);
        assert_eq!(parse_duration("1e400"), None);
    }

    #[test]
    fn a_network_listener_needs_a_token() {
        let text = DEFAULT_CONFIG.replace("listen = \"127.0.0.1:7878\"", "listen = \"0.0.0.0:7878\"");
        let ConfigError::Invalid(ConfigErrors(errs)) = Config::parse(&text, Path::new("x"), Path::new("")).unwrap_err() else {
            panic!()
        };
        assert!(errs.iter().any(|e| e.starts_with("auth.token_file:")), "{errs:?}");
        let text = text.replace("[auth]", "[auth]\ntoken_file = \"/etc/sproutd/token\"");
        assert!(Config::parse(&text, Path::new("x"), Path::new("")).is_ok());
    }

    fn errors(text: &str) -> Vec<String> {
        match Config::parse(text, Path::new("x"), Path::new("")) {
            Err(ConfigError::Invalid(ConfigErrors(errs))) => errs,
            other => panic!("expected validation errors, got {other:?}"),
        }
    }

    #[test]
    fn backends_are_checked_and_need_an_energy_source() {
        let good = "[[backends]]\nname = \"gpu\"\nurl = \"http://10.0.0.5:8000/v1/\"\nmodel = \"m\"\nj_per_prompt_token = 0.1\nj_per_completion_token = 1\n\
                    [[backends]]\nname = \"dcgm\"\nurl = \"https://x/v1\"\nmodel = \"m\"\nenergy_url = \"http://x:9400/metrics\"\nenergy_metric = \"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION\"\nenergy_unit = \"mJ\"\n[backends.carbon]\nsource = \"uk\"\n";
        let c = Config::parse(&format!("{DEFAULT_CONFIG}\n{good}"), Path::new("x"), Path::new("")).unwrap();
        assert_eq!(c.backends.len(), 2);
        assert_eq!(c.backends[0].url, "http://10.0.0.5:8000/v1");
        assert_eq!(c.backends[0].energy, BackendEnergy::PerToken { prompt_j: 0.1, completion_j: 1.0 });
        assert_eq!((c.backends[0].max_concurrent, c.backends[0].timeout), (4, Duration::from_secs(60)));
        assert!(c.backends[0].carbon.is_none());
        assert!(matches!(&c.backends[1].energy, BackendEnergy::Prometheus { joules_per_unit, .. } if *joules_per_unit == 1e-3));
        assert!(c.backends[1].carbon.as_ref().unwrap().live.is_some());
        let bad = "[[backends]]\nname = \"local\"\nurl = \"ftp://x\"\nmodel = \"\"\nmax_concurrent = 0\ntimeout = \"soon\"\n\
                   [[backends]]\nname = \"b\"\nurl = \"http://x\"\nmodel = \"m\"\nenergy_url = \"http://x/metrics\"\nenergy_unit = \"GJ\"\n[backends.carbon]\nsource = \"nowhere\"\n";
        let errs = errors(&format!("{DEFAULT_CONFIG}\n{bad}"));
        for want in [
            "backends[0].name:",
            "backends[0].url:",
            "backends[0].model:",
            "backends[0].max_concurrent:",
            "backends[0].timeout:",
            "backends[0]: no energy source",
            "backends[1].energy_metric: required",
            "backends[1].carbon.source:",
        ] {
            assert!(errs.iter().any(|e| e.starts_with(want)), "{want} not in {errs:?}");
        }
        let errs = errors(&DEFAULT_CONFIG.replace("kind = \"gguf\"", "kind = \"none\""));
        assert!(errs.iter().any(|e| e.starts_with("model.kind: \"none\"")), "{errs:?}");
    }

    #[test]
    fn live_carbon_sources_are_checked() {
        let with = |source: &str, extra: &str| {
            DEFAULT_CONFIG.replace("source = \"trace\"", &format!("source = \"{source}\"\n{extra}")).replace("zone = \"\"\n", "")
        };
        let errs = errors(&with("electricitymaps", ""));
        assert!(errs.iter().any(|e| e.starts_with("carbon.zone:") && e.contains("\"DE\"")), "{errs:?}");
        let errs = errors(&with("watttime", "zone = \"CAISO_NORTH\""));
        assert!(errs.iter().any(|e| e.starts_with("carbon.username:")), "{errs:?}");
        let errs = errors(&with("carbon_aware_sdk", "zone = \"eastus\""));
        assert!(errs.iter().any(|e| e.starts_with("carbon.url:")), "{errs:?}");
        let errs = errors(&with("uk", "zone = \"42\""));
        assert!(errs.iter().any(|e| e.starts_with("carbon.zone:") && e.contains("1 to 17")), "{errs:?}");
        let errs = errors(&with("grid", ""));
        assert!(errs.iter().any(|e| e.starts_with("carbon.source:")), "{errs:?}");
        let errs = errors(&with("uk", "").replace("timeout = \"10s\"", "timeout = \"never\""));
        assert!(errs.iter().any(|e| e.starts_with("carbon.timeout:")), "{errs:?}");
        let c = Config::parse(&with("uk", ""), Path::new("x"), Path::new("")).unwrap();
        let live = c.carbon.live.unwrap();
        assert_eq!(live.url, "https://api.carbonintensity.org.uk");
        assert_eq!(live.poll_interval, Duration::from_secs(300));
        let errs = errors(&DEFAULT_CONFIG.replace("meter = \"auto\"", "meter = \"wattmeter\""));
        assert!(errs.iter().any(|e| e.starts_with("accounting.meter:")), "{errs:?}");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let c = Config::parse(DEFAULT_CONFIG, Path::new("/etc/sproutd/config.toml"), Path::new("/etc/sproutd")).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/etc/sproutd/data"));
        let ModelSource::Gguf { path, .. } = c.model.source else { panic!() };
        assert!(path.starts_with("/etc/sproutd/models"));
    }
}
