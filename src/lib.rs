//! Sprout: carbon-aware LLM inference.
//!
//! # Layout, in the order a request travels
//!
//! ```text
//!  HTTP ─► api (router, OpenAI shapes, errors)
//!           │ parse + validate → ChatRequest
//!           ▼
//!         service::submit ─► store (sled; flushed before the ack)
//!           │ class (plan::classify), level drawn from the plan (plan::directive), seed
//!           ▼
//!         worker ─► claim ─► backends (route) ─► directive applied ─► engine (mistral.rs | echo | upstream)
//!           │                                        │ token deltas ─► service listeners ─► SSE
//!           ▼                                        ▼
//!         accounting (energy share, receipt) ─► store::finish (flushed) ─► api answer
//! ```
//!
//! Beside the path: `plan` (classify, directives, the optimizer and the
//! planner that re-solves it, deferral), `eval` (the quality evaluator: judge,
//! quality bounds, schedule, runs), `carbon` (grid intensity), `energy`
//! (meters), `stats`, `simulate`. `daemon::run` wires these together; `client`
//! and `cli` are the other side of the wire (`sproutctl`). Pure logic
//! (`plan::{classify, directive, optimizer, deferral}`, `eval::{judge,
//! quality, schedule, answers}`, `accounting`, `api::openai`,
//! `engine::sampler`, `config` validation) does no IO.

pub mod config;
pub mod job;
pub mod api;
pub mod service;
pub mod store;
pub mod worker;
pub mod engine;
pub mod backends;
pub mod accounting;
pub mod stats;
pub mod energy;
pub mod carbon;
pub mod plan;
pub mod eval;
pub mod simulate;
pub mod tui;
pub mod daemon;
pub mod client;
pub mod cli;

/// For tests only: the shared datasets beside the checkout.
#[doc(hidden)]
pub mod testing {
    use std::path::PathBuf;

    /// `../shared/data/<rel>` beside the checkout, if it is there. Missing, a
    /// test skips, saying so, except under `SPROUT_REQUIRE_MODEL=1` (the
    /// README's test command, CI), where it fails unless
    /// `SPROUT_SHARED_OPTIONAL=1` says that skipping is expected (the test
    /// command sets it, loudly, only when the folder is absent).
    pub fn shared_data(rel: &str) -> Option<PathBuf> {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data").join(rel);
        if p.exists() {
            return Some(p);
        }
        let set = |k: &str| std::env::var(k).is_ok_and(|v| v == "1");
        if set("SPROUT_REQUIRE_MODEL") && !set("SPROUT_SHARED_OPTIONAL") {
            panic!("{} is missing (SPROUT_REQUIRE_MODEL=1; set SPROUT_SHARED_OPTIONAL=1 to skip the tests that read it)", p.display());
        }
        eprintln!("skipping: {} not present", p.display());
        None
    }
}
