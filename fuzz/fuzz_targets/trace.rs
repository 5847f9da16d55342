//! Carbon-intensity trace files (CSV) and the timestamps in them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(t) = sprout::carbon::trace::Trace::parse(text) {
            let _ = sprout::carbon::trace::range(&t.values);
        }
        for line in text.lines().take(4) {
            let _ = sprout::carbon::trace::parse_utc(line);
        }
    }
});
