//! A chat-completions request body, as `POST /v1/chat/completions` and
//! `POST /v1/jobs` parse it: any bytes must give a request or an error, never
//! a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sprout::config::Config;
use sprout::plan::directive::Directives;

fn setup() -> &'static (Config, Directives) {
    static S: OnceLock<(Config, Directives)> = OnceLock::new();
    S.get_or_init(|| {
        let c = Config::default_config();
        let d = Directives::new(&c.directives);
        (c, d)
    })
}

fuzz_target!(|data: &[u8]| {
    let (cfg, directives) = setup();
    let _ = sprout::api::openai::parse_request(data, cfg, directives);
});
