//! Configuration in two stages: [`RawConfig`] (`raw`) mirrors `config.toml`
//! as typed; [`Config::from_raw`] (`validate`, one validator per section)
//! turns its words into enums, its durations into `Duration`s and its paths
//! into paths against the config file's folder, once, and reports *every*
//! problem at once, each with its key's path. The running daemon only ever
//! sees the validated [`Config`].
//!
//! `config.toml` at the repository root is the annotated default and is parsed
//! by a unit test here, so the documentation cannot drift from the code.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod raw;
#[cfg(test)]
mod tests;
mod validate;

pub use raw::*;

/// The default config, compiled in so that `sproutd` runs without a file.
pub const DEFAULT_CONFIG: &str = include_str!("../../config.toml");

/// Every validation problem found, each as `key.path: what is wrong`.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error(s) in config: {}", self.0.len(), self.0.join("; "))
    }
}

/// The API token `auth.token_file` names, or its absence where one is needed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading the API token from {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("refusing to listen on {0} without an API token: set auth.token_file (only loopback addresses may go without)")]
    Missing(SocketAddr),
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
// The settings that are one of a few words.

/// A setting's words and the values they name, in the order errors list them.
pub trait Word: Copy + PartialEq + 'static {
    const WORDS: &'static [(&'static str, Self)];

    fn parse(s: &str) -> Option<Self> {
        Self::WORDS.iter().find(|(w, _)| *w == s).map(|(_, v)| *v)
    }

    fn as_str(self) -> &'static str {
        Self::WORDS.iter().find(|(_, v)| *v == self).map(|(w, _)| *w).expect("every value has its word")
    }
}

/// `optimizer.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerPolicy {
    /// One mix per prompt class, with a safety margin on the floor.
    Best,
    /// The method: one mix for all requests.
    Sprout,
}

impl Word for OptimizerPolicy {
    const WORDS: &'static [(&'static str, Self)] = &[("best", Self::Best), ("sprout", Self::Sprout)];
}

/// `accounting.meter`: where energy comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeterKind {
    /// NVML, then RAPL, then the estimate.
    Auto,
    Nvml,
    Rapl,
    Estimate,
}

impl Word for MeterKind {
    const WORDS: &'static [(&'static str, Self)] =
        &[("auto", Self::Auto), ("nvml", Self::Nvml), ("rapl", Self::Rapl), ("estimate", Self::Estimate)];
}

/// `evaluator.judge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JudgeKind {
    /// The served model, through the queue.
    Local,
    /// An OpenAI-compatible server (`judge_url`, `judge_model`).
    OpenAi,
}

impl Word for JudgeKind {
    const WORDS: &'static [(&'static str, Self)] = &[("local", Self::Local), ("openai", Self::OpenAi)];
}

// ---------------------------------------------------------------------------
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
    pub meter: MeterKind,
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
    pub judge: JudgeKind,
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


/// The directive optimizer in the daemon (validated).
#[derive(Debug, Clone)]
pub struct OptimizerConfig {
    pub enabled: bool,
    pub policy: OptimizerPolicy,
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

    /// The API token from `auth.token_file` (read at start and on each
    /// reload), if the config names one.
    pub fn read_token(&self) -> Result<Option<String>, TokenError> {
        let Some(path) = &self.token_file else { return Ok(None) };
        let err = |reason: String| TokenError::Read { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let token = text.trim().to_string();
        if token.len() < 16 {
            return Err(err("the token must be at least 16 characters".into()));
        }
        Ok(Some(token))
    }

    /// Validates what the file says, reporting every problem at once with
    /// its key's path; relative paths resolve against `base`.
    pub fn from_raw(raw: RawConfig, base: &Path) -> Result<Config, ConfigErrors> {
        validate::config(raw, base)
    }
}
