//! One example of each body, kept in `tests/snapshots/wire/<name>.json`:
//! the JSON a type writes must equal its file (a renamed or retyped field
//! fails here, not in a user's script), and the file must read back into
//! a value that writes the same body (what `client` relies on). After a deliberate change of
//! shape, `SPROUT_UPDATE_SNAPSHOTS=1 cargo test --lib wire` rewrites the
//! files; the diff is the change to review.

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use super::*;
use crate::api::error::ApiError;
use crate::job::{Deferral, Job, JobResult, Role, Tool, ToolCall, ToolChoice};
use crate::stats::Totals;
use crate::testing::{chat_request, ledger_entry};

fn check<T: Serialize + DeserializeOwned>(name: &str, example: &T) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/wire").join(format!("{name}.json"));
    let written = serde_json::to_string_pretty(example).expect("serializes") + "\n";
    if std::env::var("SPROUT_UPDATE_SNAPSHOTS").as_deref() == Ok("1") {
        std::fs::write(&path, &written).expect("writes the snapshot");
    }
    let stored = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (SPROUT_UPDATE_SNAPSHOTS=1 writes it)", path.display()));
    assert_eq!(
        written,
        stored,
        "{name}: the body's shape changed; if that is meant, rerun with SPROUT_UPDATE_SNAPSHOTS=1 and review the diff"
    );
    // Read back and written again, it is the same body (what a type keeps
    // off the wire, like the stats' running accumulators, is not compared).
    let read: T = serde_json::from_str(&stored).unwrap_or_else(|e| panic!("{name}: the snapshot does not read back: {e}"));
    assert_eq!(serde_json::to_string_pretty(&read).expect("serializes") + "\n", stored, "{name}: the snapshot reads back as another body");
}

fn receipt() -> Receipt {
    Receipt {
        directive: "L1".into(),
        job_id: "job-1".into(),
        energy_j: 52.5,
        carbon_g: 0.00625,
        operational_g: 0.005833,
        embodied_g: 0.000417,
        intensity_gco2_per_kwh: 400.0,
        duration_s: 1.75,
        estimated: true,
        backend: "local".into(),
        zone: "GB".into(),
    }
}

/// A succeeded job that called a tool, and a deferred one, as the job API shows them.
fn jobs() -> (JobView, JobView) {
    let mut request = chat_request("qwen", "What is the weather in Paris?");
    request.messages.insert(0, Message::new(Role::System, "Be brief."));
    request.tools = vec![Tool { name: "get_weather".into(), description: None, parameters: json!({"type": "object"}) }];
    request.tool_choice = ToolChoice::Auto;
    let done = Job {
        id: "job-1".into(),
        seq: 1,
        origin: Origin::Job,
        state: JobState::Succeeded,
        priority: 0,
        request: request.clone(),
        directive: "L1".into(),
        seed: 7,
        created_ms: 1_700_000_000_000,
        started_ms: Some(1_700_000_000_500),
        finished_ms: Some(1_700_000_002_250),
        attempts: 1,
        result: Some(JobResult {
            text: String::new(),
            finish_reason: FinishReason::ToolCalls,
            prompt_tokens: 30,
            completion_tokens: 12,
            receipt: receipt(),
            tool_calls: vec![ToolCall { id: "call-1".into(), name: "get_weather".into(), arguments: r#"{"city":"Paris"}"#.into() }],
            logprobs: None,
        }),
        error: None,
        idempotency_key: None,
        deadline_ms: None,
        deferral: None,
    };
    let held = Job {
        id: "job-2".into(),
        seq: 2,
        state: JobState::Deferred,
        request: chat_request("qwen", "Summarise the report."),
        directive: "L0".into(),
        started_ms: None,
        finished_ms: None,
        attempts: 0,
        result: None,
        deadline_ms: Some(1_700_021_600_000),
        deferral: Some(Deferral { until_ms: 1_700_010_800_000, forecast_gco2_per_kwh: 120.0, submit_gco2_per_kwh: 310.0 }),
        ..done.clone()
    };
    let mut done = crate::api::openai::job_view(&done);
    // The fingerprint names the version; the snapshot should not.
    done.result.as_mut().expect("succeeded").system_fingerprint = "sprout-x".into();
    (done, crate::api::openai::job_view(&held))
}

#[test]
fn job_bodies_match_their_snapshots() {
    let (done, held) = jobs();
    assert_eq!(done.answer(), None, "a tool call's blank text is null content");
    assert_eq!(done.receipt(), Some(&receipt()));
    assert_eq!(done.prompt(), "What is the weather in Paris?");
    check("job", &done);
    check("jobs", &List::new(vec![JobView { position: None, ..held.clone() }, JobView { tokens_so_far: Some(3), ..held }]));
    check(
        "job_submission",
        &JobSubmission {
            messages: vec![Message::new(Role::User, "hello")],
            directive: Some("L2".into()),
            max_tokens: Some(64),
            seed: None,
            priority: Some(-1),
            deadline: Some("6h".into()),
        },
    );
    check("chat_completion", done.result.as_ref().expect("succeeded"));
    check("ledger", &List::new(vec![ledger_entry("L1", "math", 36.0)]));
}

#[test]
fn error_and_small_bodies_match_their_snapshots() {
    check("error", &ApiError::invalid("max_tokens", "max_tokens must be at most 4096").body());
    check("model", &Model { id: "qwen".into(), object: "model".into(), created: 0, owned_by: "sprout".into() });
    check(
        "health",
        &Health {
            status: "ok".into(),
            model: "qwen".into(),
            engine: "ready".into(),
            store: "ok".into(),
            queued: 2,
            version: "0.0.0".into(),
        },
    );
}

#[test]
fn stats_and_carbon_bodies_match_their_snapshots() {
    let mut own = ledger_entry("L0", "math", 720.0);
    own.origin = Origin::Daemon;
    let totals = Totals::from_entries(&[ledger_entry("L0", "math", 360.0), ledger_entry("L2", "qa", 90.0), own]);
    let meter = MeterStatus { meter: "estimate (idle 10 W, TDP 65 W)".into(), measured: false, idle_energy_j: 12.5, read_failures: 0 };
    let stats = crate::api::stats::body(&totals, None, "L0", meter, QueueCounts { deferred: 1, queued: 2, running: 1 });
    assert_eq!((stats.requests, stats.user_requests, stats.own_work.requests), (3, 2, 1));
    check("stats", &stats);
    let reading = |at: i64, g: f64| Reading { at, gco2_per_kwh: g };
    check(
        "carbon",
        &CarbonView {
            object: "carbon".into(),
            now: reading(1_700_000_000, 250.0),
            past: vec![reading(1_699_996_400, 270.0)],
            forecast: vec![reading(1_700_003_600, 210.0), reading(1_700_007_200, 180.0)],
            source: CarbonStatus {
                kind: "electricitymaps".into(),
                name: "electricitymaps DE".into(),
                forecast: "provider".into(),
                fetched_at: Some(1_699_999_900),
                age_s: Some(100),
                last_error: None,
                consecutive_failures: 0,
                fallback: false,
                fallback_name: Some("trace builtin".into()),
            },
            range: Range { min: 120.0, max: 450.0 },
            unit: "gCO2e/kWh".into(),
        },
    );
}

#[test]
fn plan_bodies_match_their_snapshots() {
    let levels = vec!["L0".into(), "L1".into(), "L2".into()];
    let unsolved = PlanView::unsolved(true, "not solved yet", levels, vec![1.0, 0.0, 0.0]);
    check("plan_unsolved", &unsolved);
    let kept = |n: usize, mean: f64, lower: f64| Kept { n, mean, lower };
    check(
        "plan",
        &PlanView {
            status: "optimal".into(),
            x: Some(vec![0.8, 0.2, 0.0]),
            policy: Some("sprout".into()),
            ci: Some(300.0),
            ci_min: Some(100.0),
            ci_max: Some(500.0),
            xi: Some(0.1),
            margin: Some(0.0),
            floor: Some(0.95),
            quality: Some(0.97),
            expected_g: Some(0.004),
            baseline_g: Some(0.005),
            solve_us: Some(850),
            solved_at: Some(1_700_000_000),
            reason: Some("new measurements".into()),
            classes: Some(vec![PlanClass {
                name: "qa".into(),
                weight: 1.0,
                e_kwh: vec![1e-5, 6e-6, 3e-6],
                p_s: vec![2.0, 1.2, 0.6],
                q: vec![1.0, 0.9, 0.5],
                allowed: vec![true, true, false],
                kept: Some(vec![kept(40, 1.0, 1.0), kept(40, 0.95, 0.9), kept(40, 0.6, 0.5)]),
                x: vec![0.8, 0.2, 0.0],
                expected_g: 0.004,
                sources: vec!["ledger (40)".into(), "ledger (12)".into(), "prior".into()],
            }]),
            history: Some(vec![HistoryItem {
                at_ms: 1_700_000_000_000,
                ci: 300.0,
                floor: 0.95,
                quality: 0.97,
                expected_g: 0.004,
                baseline_g: 0.005,
                status: "optimal".into(),
                x: vec![0.8, 0.2, 0.0],
            }]),
            ..unsolved
        },
    );
}

#[test]
fn evaluator_bodies_match_their_snapshots() {
    let run = EvalRun {
        id: "eval-1".into(),
        started_ms: 1_700_000_000_000,
        finished_ms: 1_700_000_600_000,
        reason: "forced".into(),
        intensity_gco2_per_kwh: 180.0,
        judge: "local (qwen)".into(),
        levels: vec!["L0".into(), "L1".into()],
        q: Some(vec![0.75, 0.25]),
        verdicts: vec![PromptVerdict {
            prompt: "What is 2+3?".into(),
            class: "math".into(),
            picks: vec![Some(0), None],
            credit: vec![1.0, 0.0],
            kept: vec![Some(1.0), Some(1.0)],
            signal: "agreement".into(),
        }],
        failures: 1,
        judge_calls: 2,
        jobs: vec!["job-9".into()],
        tokens: 420,
        energy_j: 150.0,
        carbon_g: 0.0075,
        estimated: true,
        error: None,
        wording: "abc123".into(),
        cells: vec![Cell { class: "math".into(), level: "L1".into(), n: 1, energy_j: 40.0, duration_s: 1.5 }],
        settled: vec!["choice".into()],
    };
    check("eval_run", &EvalRunReply::Finished(Box::new(run.clone())));
    check("eval_started", &EvalRunReply::Started(EvalStarted { object: "eval.run".into(), state: "running".into() }));
    let summary = EvalRunSummary::from(&run);
    assert_eq!(summary.prompts, 1);
    check("eval_runs", &List::new(vec![summary]));
    check("eval_run_request", &EvalRunRequest { prompts: Some(8), judge_url: None, judge_model: None, wait: true });
    check(
        "eval_status",
        &EvalStatus {
            object: "eval.status".into(),
            enabled: true,
            running: false,
            samples: 64,
            samples_needed: 8,
            levels: run.levels.clone(),
            q: run.q.clone(),
            q_source: "the last run's judged prompts (pick-best shares)".into(),
            kept: [("math".to_string(), vec![Kept { n: 8, mean: 1.0, lower: 1.0 }, Kept { n: 8, mean: 0.75, lower: 0.45 }])].into(),
            settled: vec!["choice".into()],
            last_run: Some(LastRun {
                id: run.id.clone(),
                at: 1_700_000_000.0,
                q: run.q.clone(),
                failures: 1,
                judge: run.judge.clone(),
                carbon_g: 0.0075,
                energy_j: 150.0,
            }),
            next: NextRun { run_now: false, at: 1_700_036_000, forecast_gco2_per_kwh: 150.0, reason: "waiting for a low-carbon hour".into() },
            rule: EvalRule { min_interval_s: 3600, max_staleness_s: 86_400, tolerance: 0.05 },
        },
    );
}

#[test]
fn the_backends_body_matches_its_snapshot() {
    check(
        "backends",
        &List::new(vec![BackendView {
            name: "local".into(),
            kind: "embedded".into(),
            url: None,
            model: "qwen".into(),
            healthy: true,
            ready: true,
            last_error: None,
            retry_in_s: None,
            running: 1,
            capacity: 1,
            zone: "GB".into(),
            gco2_per_kwh: 250.0,
            energy_source: "estimate".into(),
            measured: false,
            j_per_token: 1.5,
            j_per_token_measured: true,
            expected_g_per_token: 0.0001,
            requests: 10,
            faults: 0,
            prompt_tokens: 300,
            completion_tokens: 900,
            energy_j: 1350.0,
            carbon_g: 0.09,
            idle_energy_j: Some(20.0),
        }]),
    );
}

#[test]
fn a_body_with_an_unknown_field_in_a_request_is_refused() {
    let e = serde_json::from_str::<EvalRunRequest>(r#"{"prompt": 3}"#).unwrap_err();
    assert!(e.to_string().contains("unknown field"), "{e}");
}
