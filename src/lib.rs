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
//! (meters), `stats`, `simulate`. `daemon::run` wires these together and
//! hands every component the one `clock` they keep time by; `wire`
//! holds the shape of each body the API speaks beyond OpenAI's, which `api`
//! writes and `client`, `cli` and `tui` (`sproutctl`) read. Pure logic
//! (`plan::{classify, directive, optimizer, deferral}`, `eval::{judge,
//! quality, schedule, answers}`, `accounting`, `api::openai`,
//! `engine::sampler`, `config` validation) does no IO.

pub mod clock;
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
pub mod wire;
pub mod client;
pub mod cli;
#[cfg(test)]
mod layout_tests;

/// For tests only: the shared datasets beside the checkout, and factories
/// of the records tests build (each test overrides what it is about with
/// struct update syntax).
#[doc(hidden)]
pub mod testing {
    use std::path::PathBuf;

    use crate::job::{ChatRequest, JobState, LedgerEntry, Message, Origin, Role};

    /// A request of one user message, at most 16 new tokens, defaults elsewhere.
    pub fn chat_request(model: &str, text: &str) -> ChatRequest {
        ChatRequest { model: model.into(), messages: vec![Message::new(Role::User, text)], max_tokens: 16, ..Default::default() }
    }

    /// A succeeded job's ledger record at `level` for `class` that used
    /// `energy_j` (estimated) at 400 gCO2e/kWh on the embedded backend in GB:
    /// 1 prompt and 1 completion token, 1 s, no embodied carbon.
    pub fn ledger_entry(level: &str, class: &str, energy_j: f64) -> LedgerEntry {
        let operational_g = energy_j / 3.6e6 * 400.0;
        LedgerEntry {
            job_id: "j".into(),
            origin: Origin::Job,
            state: JobState::Succeeded,
            finished_ms: 0,
            directive: level.into(),
            prompt_tokens: 1,
            completion_tokens: 1,
            duration_s: 1.0,
            energy_j,
            intensity_gco2_per_kwh: 400.0,
            operational_g,
            embodied_g: 0.0,
            carbon_g: operational_g,
            estimated: true,
            class: class.into(),
            deferral_saving_g: 0.0,
            deferred: false,
            backend: crate::config::EMBEDDED_BACKEND.into(),
            zone: "GB".into(),
        }
    }

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
