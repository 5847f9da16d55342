//! The config loader: any text must give a config or errors, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sprout::config::Config::parse(text, Path::new("fuzz.toml"), Path::new("/tmp"));
    }
});
