//! Sprout: carbon-aware LLM inference.
//!
//! # Layout, in the order a request travels
//!
//! ```text
//!  HTTP ─► api (router, OpenAI shapes, errors)
//!           │ parse + validate → ChatRequest
//!           ▼
//!         service::submit ─► queue (sled; flushed before the ack)
//!           │ directive chosen (directive), seed drawn
//!           ▼
//!         worker ─► claim ─► backends (route) ─► directive applied ─► engine (mistral.rs | echo | upstream)
//!           │                                        │ token deltas ─► service listeners ─► SSE
//!           ▼                                        ▼
//!         accounting (energy share, receipt) ─► queue::finish (flushed) ─► api answer
//! ```
//!
//! `daemon::run` wires these together; `client` and `cli` are the other side
//! of the wire (`sproutctl`). Pure logic (`directive`, `accounting`,
//! `api::openai`, `engine::sampler`, `config` validation) does no IO.

pub mod config;
pub mod job;
pub mod api;
pub mod service;
pub mod queue;
pub mod directive;
pub mod worker;
pub mod engine;
pub mod backends;
pub mod accounting;
pub mod stats;
pub mod energy;
pub mod carbon;
pub mod classify;
pub mod answers;
pub mod bench;
pub mod deferral;
pub mod evaluator;
pub mod eval_run;
pub mod optimizer;
pub mod planner;
pub mod simulate;
pub mod tui;
pub mod daemon;
pub mod store_admin;
pub mod client;
pub mod cli;
