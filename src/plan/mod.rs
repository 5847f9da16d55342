//! Planning: how and when each request runs.
//!
//! - [`classify`]: the prompt's task class, from its text;
//! - [`directive`]: the levels' instructions, choosing a level for a job from
//!   the plan and applying it to the conversation;
//! - [`optimizer`]: the linear program (HiGHS) that picks the mix of levels
//!   per class;
//! - [`planner`]: the optimizer in the daemon: its inputs from the ledger,
//!   the evaluator and the grid, re-solved when they change;
//! - [`deferral`]: holding a job with a deadline until a cleaner hour.
//!
//! All but `planner` are pure.

pub mod classify;
pub mod deferral;
pub mod directive;
pub mod optimizer;
pub mod planner;
