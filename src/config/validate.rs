//! From [`RawConfig`] to [`Config`]: one validator per section, each turning
//! its words into enums, its durations into `Duration`s and its paths into
//! paths against the config's folder, once, and adding every problem it
//! finds, with its key's path, to the one list [`config`] reports.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

/// What the validators share: the problems found so far, and the folder
/// relative paths resolve against.
pub(super) struct Check<'a> {
    errs: Vec<String>,
    base: &'a Path,
}

impl Check<'_> {
    /// A path setting: `${VAR}` and `${VAR:-default}` expanded from the
    /// environment (systemd's `${CREDENTIALS_DIRECTORY}`, ...), then
    /// relative to the config's folder.
    fn path(&mut self, key: &str, p: &Path) -> PathBuf {
        let p = match expand_vars(&p.to_string_lossy(), &|name| std::env::var(name).ok()) {
            Ok(s) => PathBuf::from(s),
            Err(e) => {
                self.errs.push(format!("{key}: {e}"));
                p.to_owned()
            }
        };
        if p.is_absolute() { p } else { self.base.join(p) }
    }

    /// An optional path setting (empty: unset).
    fn opt_path(&mut self, key: &str, p: Option<&Path>) -> Option<PathBuf> {
        p.filter(|p| !p.as_os_str().is_empty()).map(|p| self.path(key, p))
    }

    /// A duration more than zero; `example` is shown in the error.
    fn positive(&mut self, key: &str, v: &str, example: &str, fallback: Duration) -> Duration {
        parse_duration(v).filter(|d| !d.is_zero()).unwrap_or_else(|| {
            self.errs.push(format!("{key}: {v:?} is not a positive duration like {example}"));
            fallback
        })
    }

    /// A duration, zero allowed.
    fn duration(&mut self, key: &str, v: &str) -> Duration {
        parse_duration(v).unwrap_or_else(|| {
            self.errs.push(format!("{key}: {v:?} is not a duration like \"30s\", \"15m\", \"6h\" or \"7d\" (at most 100 years)"));
            Duration::ZERO
        })
    }

    /// One of a few words; `fallback` stands in after an error.
    fn word<T: Word>(&mut self, key: &str, v: &str, fallback: T) -> T {
        T::parse(v).unwrap_or_else(|| {
            let words: Vec<String> = T::WORDS.iter().map(|(w, _)| format!("{w:?}")).collect();
            self.errs.push(format!("{key}: {v:?} is not one of {}", words.join(", ")));
            fallback
        })
    }

    fn push(&mut self, e: impl Into<String>) {
        self.errs.push(e.into());
    }
}

/// Validates every section; all problems at once, or the config.
pub(super) fn config(raw: RawConfig, base: &Path) -> Result<Config, ConfigErrors> {
    let mut ck = Check { errs: Vec::new(), base };
    let (listen, access) = server(&mut ck, &raw.server);
    let model = model(&mut ck, &raw.model, &raw.backends);
    generation(&mut ck, &raw.generation);
    let directives = directives(&mut ck, &raw.directives);
    let accounting = accounting(&mut ck, &raw.accounting);
    let carbon = carbon(&mut ck, "carbon", &raw.carbon);
    let backends = backends(&mut ck, &raw.backends, &raw.accounting);
    let queue = queue(&mut ck, &raw.queue);
    let store_open_timeout = ck.duration("storage.open_timeout", &raw.storage.open_timeout);
    if store_open_timeout.is_zero() && parse_duration(&raw.storage.open_timeout).is_some() {
        ck.push("storage.open_timeout: must be more than 0");
    }
    let token_file = ck.opt_path("auth.token_file", raw.auth.token_file.as_deref());
    if let Some(l) = listen {
        if !l.ip().is_loopback() && token_file.is_none() {
            ck.push(format!(
                "auth.token_file: required when server.listen ({l}) is not a loopback address; without it anyone on the network could use the API"
            ));
        }
    }
    let optimizer = optimizer(&mut ck, &raw.optimizer, &directives.levels);
    let evaluator = evaluator(&mut ck, &raw.evaluator);
    let data_dir = ck.path("storage.data_dir", &raw.storage.data_dir);
    if !ck.errs.is_empty() {
        return Err(ConfigErrors(ck.errs));
    }
    Ok(Config {
        listen: listen.expect("checked"),
        max_body_bytes: raw.server.max_body_bytes,
        access,
        data_dir,
        store_open_timeout,
        model: model.expect("checked"),
        generation: raw.generation,
        directives,
        accounting,
        carbon,
        queue,
        optimizer,
        evaluator,
        token_file,
        backends,
    })
}

/// `[server]`: the address, and who may reach the API from where.
fn server(ck: &mut Check, s: &RawServer) -> (Option<SocketAddr>, AccessConfig) {
    let listen = s.listen.parse::<SocketAddr>().ok();
    if listen.is_none() {
        ck.push(format!("server.listen: {:?} is not an ADDR:PORT socket address", s.listen));
    }
    if s.max_body_bytes < 1024 {
        ck.push("server.max_body_bytes: must be at least 1024");
    }
    let header_read_timeout = ck.positive("server.header_read_timeout", &s.header_read_timeout, "\"10s\" (at most 100 years)", Duration::from_secs(1));
    let body_read_timeout = ck.positive("server.body_read_timeout", &s.body_read_timeout, "\"10s\" (at most 100 years)", Duration::from_secs(1));
    let allowed_hosts: Vec<String> = s.allowed_hosts.iter().map(|h| h.trim().to_ascii_lowercase()).collect();
    for (i, h) in allowed_hosts.iter().enumerate() {
        if h.is_empty() || h.contains(['/', ' ']) || (h.contains(':') && !h.starts_with('[')) {
            ck.push(format!("server.allowed_hosts[{i}]: {h:?} is not a host name (no scheme, path or port; IPv6 in brackets), or \"*\""));
        }
    }
    let allowed_origins: Vec<String> = s.allowed_origins.iter().map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase()).collect();
    for (i, o) in allowed_origins.iter().enumerate() {
        let ok = o == "*"
            || ((o.starts_with("http://") || o.starts_with("https://"))
                && !o.split_once("://").map(|(_, rest)| rest).unwrap_or("").is_empty()
                && !o.split_once("://").map(|(_, rest)| rest.contains('/')).unwrap_or(true));
        if !ok {
            ck.push(format!("server.allowed_origins[{i}]: {o:?} is not an origin like \"https://app.example.com\" or \"http://localhost:3000\", or \"*\""));
        }
    }
    (listen, AccessConfig { allowed_hosts, allowed_origins, header_read_timeout, body_read_timeout })
}

/// `[model]`: which engine, and the name clients use.
fn model(ck: &mut Check, m: &RawModel, backends: &[RawBackend]) -> Option<ModelConfig> {
    let source = match m.kind.as_str() {
        "gguf" => match &m.path {
            Some(p) => Some(ModelSource::Gguf { path: ck.path("model.path", p), cpu: m.cpu }),
            None => {
                ck.push("model.path: required when model.kind = \"gguf\"");
                None
            }
        },
        "hf" => {
            #[cfg(feature = "engine")]
            if let Some(isq) = &m.isq {
                if let Err(e) = mistralrs::parse_isq_value(isq, None) {
                    ck.push(format!("model.isq: {e}"));
                }
            }
            match &m.hf_id {
                Some(id) if !id.is_empty() => Some(ModelSource::HuggingFace { id: id.clone(), isq: m.isq.clone(), cpu: m.cpu }),
                _ => {
                    ck.push("model.hf_id: required when model.kind = \"hf\"");
                    None
                }
            }
        }
        "echo" => Some(ModelSource::Echo { token_delay_ms: m.echo_token_delay_ms, load_delay_ms: m.echo_load_delay_ms }),
        "none" => {
            if backends.is_empty() {
                ck.push("model.kind: \"none\" (no embedded engine) needs at least one [[backends]] entry");
            }
            Some(ModelSource::None)
        }
        other => {
            ck.push(format!("model.kind: {other:?} is not one of \"gguf\", \"hf\", \"echo\", \"none\""));
            None
        }
    };
    if m.max_seqs == 0 || m.max_seqs > 256 {
        ck.push("model.max_seqs: must be between 1 and 256");
    }
    let name = m.name.clone().unwrap_or_else(|| match &source {
        Some(ModelSource::Gguf { path, .. }) => path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        Some(ModelSource::HuggingFace { id, .. }) => id.clone(),
        Some(ModelSource::None) => backends.first().map(|b| b.model.clone()).unwrap_or_default(),
        _ => "echo".into(),
    });
    if name.is_empty() {
        ck.push("model.name: must not be empty");
    }
    Some(ModelConfig { source: source?, name, max_seqs: m.max_seqs })
}

/// `[generation]`: sampling defaults and limits (kept as they are).
fn generation(ck: &mut Check, g: &RawGeneration) {
    if !(0.0..=2.0).contains(&g.temperature) {
        ck.push("generation.temperature: must be within [0, 2]");
    }
    if !(g.top_p > 0.0 && g.top_p <= 1.0) {
        ck.push("generation.top_p: must be within (0, 1]");
    }
    if !(g.repetition_penalty > 0.0) {
        ck.push("generation.repetition_penalty: must be positive");
    }
    if g.max_tokens_cap == 0 {
        ck.push("generation.max_tokens_cap: must be at least 1");
    }
    if g.default_max_tokens == 0 || g.default_max_tokens > g.max_tokens_cap {
        ck.push("generation.default_max_tokens: must be between 1 and generation.max_tokens_cap");
    }
}

/// `[directives]`: the levels (L0 first, without a directive), their
/// per-class wordings, and the fixed mix.
fn directives(ck: &mut Check, d: &RawDirectives) -> DirectiveConfig {
    let mut levels = Vec::new();
    for (i, l) in d.levels.iter().enumerate() {
        if l.name.is_empty() || !l.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            ck.push(format!("directives.levels[{i}].name: {:?} must be non-empty letters, digits, '_' or '-'", l.name));
        }
        if levels.iter().any(|(n, _): &(String, String)| n == &l.name) {
            ck.push(format!("directives.levels[{i}].name: {:?} is defined twice", l.name));
        }
        levels.push((l.name.clone(), l.text.trim().to_string()));
        for (class, text) in &l.classes {
            if !crate::plan::classify::CLASSES.contains(&class.as_str()) {
                ck.push(format!(
                    "directives.levels[{i}].classes.{class}: no such prompt class (one of {})",
                    crate::plan::classify::CLASSES.join(", ")
                ));
            } else if i == 0 && !text.trim().is_empty() {
                ck.push(format!("directives.levels[0].classes.{class}: the baseline level has no directive"));
            } else if i > 0 && text.trim().is_empty() {
                ck.push(format!("directives.levels[{i}].classes.{class}: empty; leave the class out to use the level's text"));
            }
        }
    }
    if levels.is_empty() {
        ck.push("directives.levels: at least one level is required");
    } else if !levels[0].1.is_empty() {
        ck.push("directives.levels[0].text: the first level is the baseline and must have no directive");
    }
    for name in d.mix.keys() {
        if !levels.iter().any(|(n, _)| n == name) {
            ck.push(format!("directives.mix.{name}: no such level in directives.levels"));
        }
    }
    let mix: Vec<f64> = levels.iter().map(|(n, _)| d.mix.get(n).copied().unwrap_or(0.0)).collect();
    if mix.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
        ck.push("directives.mix: shares must be finite and non-negative");
    } else if (mix.iter().sum::<f64>() - 1.0).abs() > 1e-6 {
        ck.push(format!("directives.mix: shares must sum to 1 (they sum to {})", mix.iter().sum::<f64>()));
    }
    DirectiveConfig {
        levels,
        class_texts: d.levels.iter().map(|l| l.classes.iter().map(|(k, v)| (k.clone(), v.trim().to_string())).collect()).collect(),
        mix,
        seed: d.seed,
    }
}

/// `[accounting]`: the meter, the estimate's draw, the embodied carbon.
fn accounting(ck: &mut Check, a: &RawAccounting) -> AccountingConfig {
    let meter = ck.word("accounting.meter", &a.meter, MeterKind::Auto);
    let sample_interval = ck.positive("accounting.sample_interval", &a.sample_interval, "\"1s\"", Duration::from_secs(1));
    for (key, v) in [("accounting.idle_w", a.idle_w), ("accounting.tdp_w", a.tdp_w), ("accounting.embodied_kgco2", a.embodied_kgco2)] {
        if !(v.is_finite() && v >= 0.0) {
            ck.push(format!("{key}: must be a non-negative number"));
        }
    }
    if !(a.lifetime_years.is_finite() && a.lifetime_years > 0.0) {
        ck.push("accounting.lifetime_years: must be positive");
    }
    AccountingConfig {
        meter,
        rapl_root: ck.path("accounting.rapl_root", &a.rapl_root),
        idle_w: a.idle_w,
        tdp_w: a.tdp_w,
        sample_interval,
        embodied_kgco2: a.embodied_kgco2,
        lifetime_years: a.lifetime_years,
    }
}

/// `[queue]`: limits, retention, the shutdown grace, deadlines' margin.
fn queue(ck: &mut Check, q: &RawQueue) -> QueueConfig {
    if q.max_queued == 0 {
        ck.push("queue.max_queued: must be at least 1");
    }
    if q.max_attempts == 0 {
        ck.push("queue.max_attempts: must be at least 1");
    }
    if q.max_prompt_chars == 0 {
        ck.push("queue.max_prompt_chars: must be at least 1");
    }
    QueueConfig {
        max_queued: q.max_queued,
        max_attempts: q.max_attempts,
        max_prompt_chars: q.max_prompt_chars,
        result_retention: ck.duration("queue.result_retention", &q.result_retention),
        shutdown_grace: ck.duration("queue.shutdown_grace", &q.shutdown_grace),
        deadline_margin: ck.duration("queue.deadline_margin", &q.deadline_margin),
    }
}

/// `[optimizer]`: the policy, the floor's tolerance, when to re-solve, and
/// per-level priors of energy and time (`levels` from `[directives]`).
fn optimizer(ck: &mut Check, o: &RawOptimizer, levels: &[(String, String)]) -> OptimizerConfig {
    let policy = ck.word("optimizer.policy", &o.policy, OptimizerPolicy::Best);
    if !(o.xi.is_finite() && (0.0..=1.0).contains(&o.xi)) {
        ck.push("optimizer.xi: must be between 0 and 1");
    }
    let resolve_interval = ck.positive("optimizer.resolve_interval", &o.resolve_interval, "\"1h\"", Duration::from_secs(3600));
    if !(o.resolve_threshold.is_finite() && o.resolve_threshold > 0.0) {
        ck.push("optimizer.resolve_threshold: must be a positive number (gCO2e/kWh)");
    }
    let ci_range = match (o.ci_min, o.ci_max) {
        (None, None) => None,
        (Some(lo), Some(hi)) if lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo < hi => Some((lo, hi)),
        (Some(_), Some(_)) => {
            ck.push("optimizer.ci_min, optimizer.ci_max: need 0 <= ci_min < ci_max");
            None
        }
        _ => {
            ck.push("optimizer.ci_min, optimizer.ci_max: set both or neither");
            None
        }
    };
    let mut per_level = |key: &str, map: &BTreeMap<String, f64>, default: &[f64]| -> Vec<f64> {
        for name in map.keys() {
            if !levels.iter().any(|(n, _)| n == name) {
                ck.push(format!("optimizer.{key}.{name}: no such level in directives.levels"));
            }
        }
        let v: Vec<f64> = levels
            .iter()
            .enumerate()
            .map(|(i, (n, _))| map.get(n).copied().unwrap_or_else(|| default.get(i).copied().unwrap_or(*default.last().unwrap_or(&0.0))))
            .collect();
        if v.iter().any(|x| !(x.is_finite() && *x >= 0.0)) {
            ck.push(format!("optimizer.{key}: values must be finite and non-negative"));
        }
        v
    };
    // Priors for e and p until the ledger and the evaluator have data:
    // this README's measurements on the CPU model.
    let prior_energy_j = per_level("prior_energy_j", &o.prior_energy_j, &[400.0, 280.0, 60.0]);
    let prior_time_s = per_level("prior_time_s", &o.prior_time_s, &[10.0, 7.0, 1.5]);
    if !o.prior_q.is_empty() {
        ck.push("optimizer.prior_q: no longer used: a prior from another model never licenses a shorter level; each level serves a class once the evaluator has measured that it keeps quality there (remove the key)");
    }
    OptimizerConfig {
        enabled: o.enabled,
        policy,
        xi: o.xi,
        resolve_interval,
        resolve_threshold: o.resolve_threshold,
        ci_range,
        min_samples: o.min_samples.max(1),
        prior_energy_j,
        prior_time_s,
    }
}

/// `[evaluator]`: samples, the judge, the schedule.
fn evaluator(ck: &mut Check, ev: &RawEvaluator) -> EvaluatorConfig {
    let judge = ck.word("evaluator.judge", &ev.judge, JudgeKind::Local);
    let dur = |ck: &mut Check, key: &str, v: &str| ck.positive(&format!("evaluator.{key}"), v, "\"6h\"", Duration::from_secs(1));
    let evaluator = EvaluatorConfig {
        enabled: ev.enabled,
        sample_size: ev.sample_size,
        sample_retention: dur(ck, "sample_retention", &ev.sample_retention),
        prompts: ev.prompts,
        max_tokens: ev.max_tokens,
        share: ev.share,
        judge,
        judge_url: ev.judge_url.clone().filter(|u| !u.trim().is_empty()),
        judge_model: ev.judge_model.clone().filter(|m| !m.trim().is_empty()),
        judge_key_file: ck.opt_path("evaluator.judge_key_file", ev.judge_key_file.as_deref()),
        judge_timeout: dur(ck, "judge_timeout", &ev.judge_timeout),
        judge_retries: ev.judge_retries,
        judge_prompt: ev.judge_prompt.clone().filter(|p| !p.trim().is_empty()),
        min_interval: dur(ck, "min_interval", &ev.min_interval),
        max_staleness: dur(ck, "max_staleness", &ev.max_staleness),
        tolerance: ev.tolerance,
        check_interval: dur(ck, "check_interval", &ev.check_interval),
    };
    if !(ev.share.is_finite() && (0.0..=1.0).contains(&ev.share)) {
        ck.push(format!("evaluator.share: {} must be between 0 and 1", ev.share));
    }
    if judge == JudgeKind::OpenAi && (evaluator.judge_url.is_none() || evaluator.judge_model.is_none()) {
        ck.push("evaluator.judge_url, evaluator.judge_model: required for judge = \"openai\"");
    }
    if let Some(u) = &evaluator.judge_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            ck.push(format!("evaluator.judge_url: {u:?} is not an http:// or https:// URL"));
        }
    }
    if ev.prompts == 0 || ev.max_tokens == 0 || ev.sample_size == 0 {
        ck.push("evaluator.prompts, evaluator.max_tokens, evaluator.sample_size: must be at least 1");
    }
    if !(ev.tolerance.is_finite() && ev.tolerance >= 0.0) {
        ck.push("evaluator.tolerance: must be a non-negative share (0.05 = 5%)");
    }
    for key in ["{question}", "{answers}"] {
        if evaluator.judge_prompt.as_ref().is_some_and(|p| !p.contains(key)) {
            ck.push(format!("evaluator.judge_prompt: must contain {key}"));
        }
    }
    if evaluator.min_interval > evaluator.max_staleness {
        ck.push("evaluator.min_interval: must not exceed evaluator.max_staleness");
    }
    evaluator
}

/// Validates a carbon-source table (`[carbon]`, or a backend's own
/// `[backends.carbon]`): `prefix` names it in errors.
fn carbon(ck: &mut Check, prefix: &str, c: &RawCarbon) -> CarbonConfig {
    let kind = ProviderKind::parse(&c.source);
    if kind.is_none() && c.source != "trace" {
        ck.push(format!(
            "{prefix}.source: {:?} is not one of \"trace\", \"electricitymaps\", \"watttime\", \"uk\", \"carbon_aware_sdk\"",
            c.source
        ));
    }
    if !(c.trace_speedup.is_finite() && c.trace_speedup > 0.0) {
        ck.push(format!("{prefix}.trace_speedup: must be a positive number"));
    }
    if !c.trace_offset_hours.is_finite() {
        ck.push(format!("{prefix}.trace_offset_hours: must be a number"));
    }
    let live = kind.map(|kind| {
        use ProviderKind as K;
        let url = c.url.clone().filter(|u| !u.trim().is_empty()).unwrap_or_else(|| kind.default_url().to_string());
        if url.is_empty() {
            ck.push(format!("{prefix}.url: required for carbon.source = {:?} (the URL of its WebApi)", c.source));
        } else if !(url.starts_with("http://") || url.starts_with("https://")) {
            ck.push(format!("{prefix}.url: {url:?} is not an http:// or https:// URL"));
        }
        if c.zone.trim().is_empty() && kind != K::Uk {
            let what = match kind {
                K::ElectricityMaps => "a zone such as \"DE\"",
                K::WattTime => "a region such as \"CAISO_NORTH\"",
                _ => "a location such as \"eastus\"",
            };
            ck.push(format!("{prefix}.zone: required for carbon.source = {:?}: {what}", c.source));
        }
        if kind == K::Uk && !c.zone.trim().is_empty() && !matches!(c.zone.trim().parse::<u32>(), Ok(1..=17)) {
            ck.push(format!("{prefix}.zone: {:?} is not a GB region id (1 to 17; empty for national)", c.zone));
        }
        if kind == K::WattTime && c.username.as_deref().unwrap_or("").is_empty() {
            ck.push(format!("{prefix}.username: required for carbon.source = \"watttime\" (the password comes from carbon.token_file or SPROUT_CARBON_TOKEN)"));
        }
        if c.fallback_gco2_per_kwh.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
            ck.push(format!("{prefix}.fallback_gco2_per_kwh: must be a non-negative number"));
        }
        let token_file = ck.opt_path(&format!("{prefix}.token_file"), c.token_file.as_deref());
        let mut dur = |key: &str, v: &str| ck.positive(&format!("{prefix}.{key}"), v, r#""10s" or "5m""#, Duration::from_secs(1));
        LiveCarbonConfig {
            kind,
            url,
            zone: c.zone.trim().to_string(),
            token_file,
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
        trace_file: ck.opt_path(&format!("{prefix}.trace_file"), c.trace_file.as_deref()),
        offset_hours: c.trace_offset_hours,
        speedup: c.trace_speedup,
        live,
    }
}


/// Validates `[[backends]]`.
fn backends(ck: &mut Check, raw: &[RawBackend], accounting: &RawAccounting) -> Vec<BackendConfig> {
    let mut out = Vec::new();
    for (i, b) in raw.iter().enumerate() {
        let at = format!("backends[{i}]");
        if b.name.is_empty() || !b.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.') {
            ck.push(format!("{at}.name: {:?} must be non-empty letters, digits, '_', '-' or '.'", b.name));
        } else if b.name == EMBEDDED_BACKEND || raw[..i].iter().any(|o| o.name == b.name) {
            ck.push(format!("{at}.name: {:?} is taken (\"{EMBEDDED_BACKEND}\" is the embedded engine; names are unique)", b.name));
        }
        let url = b.url.trim().trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.split_once("://").is_some_and(|(_, r)| r.is_empty()) {
            ck.push(format!("{at}.url: {:?} is not an http:// or https:// URL like \"http://10.0.0.5:8000/v1\"", b.url));
        }
        if b.model.trim().is_empty() {
            ck.push(format!("{at}.model: required: the model name the upstream serves"));
        }
        if b.max_concurrent == 0 || b.max_concurrent > 4096 {
            ck.push(format!("{at}.max_concurrent: must be between 1 and 4096"));
        }
        let timeout = ck.positive(&format!("{at}.timeout"), &b.timeout, r#""60s""#, Duration::from_secs(60));
        let amounts = [("j_per_prompt_token", b.j_per_prompt_token), ("j_per_completion_token", b.j_per_completion_token), ("embodied_kgco2", b.embodied_kgco2)];
        for (key, v) in amounts {
            if v.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                ck.push(format!("{at}.{key}: must be a non-negative number"));
            }
        }
        if b.lifetime_years.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
            ck.push(format!("{at}.lifetime_years: must be positive"));
        }
        let energy = match (&b.energy_url, &b.energy_metric) {
            (Some(u), Some(metric)) => {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    ck.push(format!("{at}.energy_url: {u:?} is not an http:// or https:// URL of a Prometheus /metrics page"));
                }
                if metric.is_empty() || !metric.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                    ck.push(format!("{at}.energy_metric: {metric:?} is not a Prometheus metric name"));
                }
                let joules_per_unit = joules_per_energy_unit(&b.energy_unit).unwrap_or_else(|| {
                    ck.push(format!("{at}.energy_unit: {:?} is not one of \"J\", \"mJ\" (DCGM), \"Wh\", \"kWh\"", b.energy_unit));
                    1.0
                });
                let interval = ck.positive(&format!("{at}.energy_interval"), &b.energy_interval, r#""1s""#, Duration::from_secs(1));
                if b.j_per_prompt_token.is_some() {
                    ck.push(format!("{at}.j_per_prompt_token: not used with a measured energy_url (only j_per_completion_token, as the routing prior until measured)"));
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
                    ck.push(format!(
                        "{at}: no energy source: set energy_url and energy_metric (a Prometheus counter, measured) or j_per_prompt_token and j_per_completion_token (an estimate; `sproutctl backends calibrate` measures them)"
                    ));
                    BackendEnergy::PerToken { prompt_j: 0.0, completion_j: 0.0 }
                }
            },
            (Some(_), None) => {
                ck.push(format!("{at}.energy_metric: required with energy_url (e.g. \"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION\")"));
                BackendEnergy::PerToken { prompt_j: 0.0, completion_j: 0.0 }
            }
            (None, Some(_)) => {
                ck.push(format!("{at}.energy_url: required with energy_metric (the exporter's /metrics URL)"));
                BackendEnergy::PerToken { prompt_j: 0.0, completion_j: 0.0 }
            }
        };
        out.push(BackendConfig {
            name: b.name.clone(),
            url,
            model: b.model.trim().to_string(),
            api_key_file: ck.opt_path(&format!("{at}.api_key_file"), b.api_key_file.as_deref()),
            max_concurrent: b.max_concurrent,
            timeout,
            energy,
            embodied_kgco2: b.embodied_kgco2.unwrap_or(accounting.embodied_kgco2),
            lifetime_years: b.lifetime_years.unwrap_or(accounting.lifetime_years),
            carbon: b.carbon.as_ref().map(|c| carbon(ck, &format!("{at}.carbon"), c)),
        });
    }
    out
}

