//! What the file says: [`RawConfig`] mirrors `config.toml` as typed, words
//! and durations still strings; [`read_raw`] reads it, collecting every
//! structural error (wrong type, unknown or missing key) with its path.
//! `validate` turns it into [`super::Config`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

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


/// Reads the file's table into [`RawConfig`], collecting each structural
/// error (wrong type, unknown key, missing key) with its path: the offending
/// key is removed and the rest read again, so one bad key hides no other.
/// `None` when a required key is missing or wrong.
pub(super) fn read_raw(mut table: toml::Table) -> (Option<RawConfig>, Vec<String>) {
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
