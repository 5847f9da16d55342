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
