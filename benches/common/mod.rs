//! What the benchmarks share.

/// The count `name` from the environment, or `default` where it is unset. A
/// value that is not a count stops the benchmark with one line naming it,
/// rather than running with the default unnoticed.
pub fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Err(_) => default,
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|_| bad_setting(format!("{name}: {value:?} is not a count"))),
    }
}

/// Stops the benchmark with one line about a setting.
pub fn bad_setting(line: String) -> ! {
    eprintln!("{line}");
    std::process::exit(2)
}
