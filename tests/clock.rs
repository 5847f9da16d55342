//! The daemon's timekeeping, tested in process on a manual clock: the real
//! `daemon::run` (echo engine, real sled store, real HTTP on a port-0
//! listener) with a [`Clock::manual`] the test moves. Hours of carbon trace,
//! deferral, re-solving, evaluation scheduling and retention pass in
//! milliseconds, and each test checks what happens to the second of the
//! daemon's clock, not "within a few wall seconds". What needs a process
//! (SIGKILL, SIGTERM, systemd, the TUI, the real model) stays in `it.rs`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{echo_config, http, sproutctl, user, with_file_setting};
use serde_json::{json, Value};
use sprout::clock::Clock;
use sprout::config::Config;
use sprout::store::Store;

/// 2026-11-28 10:00:00 UTC: the clock starts on an hour (trace hour 10).
const T0: u64 = 1_795_860_000_000;
const T0_S: f64 = (T0 / 1000) as f64;
const HOUR: Duration = Duration::from_secs(3600);

/// `daemon::run` on its own runtime and thread, on a manual clock.
struct InProcess {
    url: String,
    clock: Clock,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    fn start(config_text: &str, clock: Clock) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config_text).unwrap();
        let mut config = Config::parse(config_text, &path, dir.path()).unwrap_or_else(|e| panic!("{e}"));
        config.data_dir = dir.path().join("data");
        let store = Store::open(&config.data_dir).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let daemon_clock = clock.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                port_tx.send(listener.local_addr().unwrap().port()).unwrap();
                sprout::daemon::run(config, None, store, listener, daemon_clock, async move {
                    let _ = stop_rx.await;
                })
                .await
                .map_err(|e| e.to_string())
            })
        });
        let port = port_rx.recv_timeout(Duration::from_secs(30)).expect("the daemon never bound its port");
        let d = InProcess { url: format!("http://127.0.0.1:{port}"), clock, stop: Some(stop_tx), thread: Some(thread), _dir: dir };
        wait(|| http("GET", &format!("{}/healthz", d.url), None).0 == 200, "ready");
        d
    }

    fn get(&self, path: &str) -> Value {
        let (s, v) = http("GET", &format!("{}{path}", self.url), None);
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        http("POST", &format!("{}{path}", self.url), Some(&body.to_string()))
    }

    /// Moves the daemon's clock and lets its components react.
    fn advance(&self, d: Duration) {
        self.clock.advance(d);
        settle();
    }

    fn now_s(&self) -> f64 {
        self.clock.now_ms() as f64 / 1000.0
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        let out = self.thread.take().unwrap().join();
        if !std::thread::panicking() {
            assert_eq!(out.expect("the daemon's thread panicked"), Ok(()), "daemon::run failed");
        }
    }
}

/// Real time for the daemon's tasks to act on a move of its clock.
fn settle() {
    std::thread::sleep(Duration::from_millis(150));
}

/// Waits (real time, up to 20 s) until `cond` holds.
fn wait(mut cond: impl FnMut() -> bool, what: &str) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Eight identical days from 2023-01-01: `base` gCO2/kWh, but `low` at the
/// hour `hours_ahead` after [`T0`]'s (the forecast learns it from the week).
fn daily_trace(base: u32, low: u32, hours_ahead: u64) -> String {
    let dip = (10 + hours_ahead) % 24;
    let mut t = String::from("datetime,gco2_per_kwh\n");
    for h in 0..24 * 8 {
        t += &format!("2023-01-{:02} {:02}:00:00,{}\n", 1 + h / 24, h % 24, if h % 24 == dip { low } else { base });
    }
    t
}

/// The echo config with `trace` as the carbon trace and `extra` edits.
fn with_trace(dir: &Path, trace: &str, extra: &[(&str, &str)]) -> String {
    with_file_setting(&echo_config(0, 1, extra), dir, "trace_file", "trace.csv", trace)
}

fn history_len(d: &InProcess) -> usize {
    d.get("/v1/plan")["history"].as_array().map_or(0, Vec::len)
}

#[test]
fn a_deferred_job_is_held_until_its_low_carbon_hour_to_the_second() {
    let tmp = tempfile::tempdir().unwrap();
    let d = InProcess::start(&with_trace(tmp.path(), &daily_trace(300, 50, 6), &[]), Clock::manual(T0));
    let (s, job) = d.post("/v1/jobs", &json!({"messages": user("Summarise the week's logs."), "deadline": "8h", "directive": "L0"}));
    assert_eq!(s, 202, "{job}");
    assert_eq!(job["state"], "deferred", "{job}");
    // The forecast's lowest hour before the deadline (less its 10-minute margin).
    let until = T0_S + 6.0 * 3600.0;
    assert_eq!(job["deferred"]["until"].as_f64(), Some(until), "{job}");
    assert_eq!(job["deadline_at"].as_f64(), Some(T0_S + 8.0 * 3600.0), "{job}");
    assert_eq!((job["deferred"]["forecast_gco2_per_kwh"].as_f64(), job["deferred"]["submit_gco2_per_kwh"].as_f64()), (Some(50.0), Some(300.0)));
    let id = job["id"].as_str().unwrap().to_string();
    for args in [&["status", id.as_str()][..], &["list"]] {
        let (code, out, err) = sproutctl(&d.url, args);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("deferred until") && out.contains("forecast 50 gCO2/kWh"), "{args:?}: {out}");
    }
    // A second deferred job can be cancelled while it waits.
    let (_, other) = d.post("/v1/jobs", &json!({"messages": user("later"), "deadline": "8h"}));
    assert_eq!(other["state"], "deferred", "{other}");
    let (s, c) = http("DELETE", &format!("{}/v1/jobs/{}", d.url, other["id"].as_str().unwrap()), None);
    assert_eq!((s, c["state"].as_str()), (200, Some("cancelled")), "{c}");

    // One second before its hour it still waits; at its hour it runs.
    d.advance(6 * HOUR - Duration::from_secs(1));
    assert_eq!(d.get(&format!("/v1/jobs/{id}"))["state"], "deferred");
    d.advance(Duration::from_secs(1));
    wait(|| d.get(&format!("/v1/jobs/{id}"))["state"] == "succeeded", "the deferred job to run");
    let done = d.get(&format!("/v1/jobs/{id}"));
    assert_eq!((done["started_at"].as_f64(), done["finished_at"].as_f64()), (Some(until), Some(until)), "{done}");
    let r = &done["result"]["usage"]["sprout"];
    assert_eq!(r["intensity_gco2_per_kwh"], 50.0, "{done}");
    // The saving is its energy at the 250 gCO2/kWh it avoided, counted apart.
    let stats = d.get("/v1/stats");
    let expect = r["energy_j"].as_f64().unwrap() / 3.6e6 * 250.0;
    assert!((stats["deferral"]["saving_g"].as_f64().unwrap() - expect).abs() < 1e-12, "{stats}");
    assert_eq!(stats["deferral"]["jobs"], 1);

    // Bad deadlines: 400 naming the parameter; chat completions take none.
    for (deadline, needle) in [(json!("soon"), "not a duration"), (json!(1.0), "has passed"), (json!("30d"), "at most 72 h")] {
        let (s, e) = d.post("/v1/jobs", &json!({"messages": user("x"), "deadline": deadline}));
        assert_eq!((s, e["error"]["param"].as_str()), (400, Some("deadline")), "{e}");
        assert!(e["error"]["message"].as_str().unwrap().contains(needle), "{e}");
    }
    let (s, e) = d.post("/v1/chat/completions", &json!({"messages": user("x"), "deadline": "1h"}));
    assert_eq!(s, 400, "{e}");
}

#[test]
fn the_plan_is_re_solved_when_the_trace_hour_turns_and_on_its_interval() {
    let tmp = tempfile::tempdir().unwrap();
    // Hours alternate clean (even hours, 100) and dirty (400).
    let mut trace = String::from("datetime,gco2_per_kwh\n");
    for h in 0..48 {
        trace += &format!("2023-01-{:02} {:02}:00:00,{}\n", 1 + h / 24, h % 24, if h % 2 == 0 { 100 } else { 400 });
    }
    let d = InProcess::start(&with_trace(tmp.path(), &trace, &[]), Clock::manual(T0 + 1_800_000));
    wait(|| history_len(&d) == 1, "the first solve");
    let p = d.get("/v1/plan");
    assert_eq!((p["reason"].as_str(), p["ci"].as_f64(), p["floor"].as_f64()), (Some("start"), Some(100.0), Some(1.0)), "{p}");
    assert_eq!((p["ci_min"].as_f64(), p["ci_max"].as_f64(), p["policy"].as_str()), (Some(100.0), Some(400.0), Some("best")));
    // Half an hour later the dirty hour begins: solved at its first second,
    // at the relaxed floor (0.9 + margin at the dirtiest hour).
    d.advance(Duration::from_secs(1799));
    assert_eq!(history_len(&d), 1, "solved before the hour turned");
    d.advance(Duration::from_secs(1));
    wait(|| history_len(&d) == 2, "a re-solve at 11:00");
    let p = d.get("/v1/plan");
    assert!(p["reason"].as_str().unwrap().starts_with("intensity moved +300"), "{p}");
    assert_eq!((p["solved_at"].as_f64(), p["floor"].as_f64()), (Some(T0_S + 3600.0), Some(0.92)), "{p}");
    // Unpinned requests draw from their class's plan: nothing has measured
    // any level's quality yet, so every class is served at L0, dirty (11:00)
    // or clean (12:00). (Four answers: too few new measurements to re-solve.)
    for hour in 0..3 {
        for i in 0..2 * usize::from(hour < 2) {
            let (s, b) = d.post("/v1/chat/completions", &json!({"messages": user(&format!("Write a poem about the number {hour}{i}."))}));
            assert_eq!(s, 200, "{b}");
            assert_eq!(b["usage"]["sprout"]["directive"], "L0", "unmeasured levels must not serve: {b}");
        }
        let before = history_len(&d);
        d.advance(HOUR);
        wait(|| history_len(&d) > before, "a re-solve as the hour turns");
    }
    let p = d.get("/v1/plan");
    let hist = p["history"].as_array().unwrap();
    assert!(hist.len() >= 5, "{p}");
    let at: Vec<f64> = hist.iter().map(|h| h["at_ms"].as_f64().unwrap() / 1000.0 - T0_S).collect();
    assert!(at.ends_with(&[3600.0, 7200.0, 10_800.0, 14_400.0]), "every re-solve at the hour's first second: {at:?}");
    for c in p["classes"].as_array().unwrap() {
        let x: f64 = c["x"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).sum();
        assert!((x - 1.0).abs() < 1e-6, "{c}");
    }
    let (code, out, err) = sproutctl(&d.url, &["plan"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("quality floor") && out.contains("mix L0 / L1 / L2"), "{out}");
    let metrics = reqwest::blocking::get(format!("{}/metrics", d.url)).unwrap().text().unwrap();
    assert!(metrics.contains("sproutd_plan_quality_floor"), "{metrics}");
    drop(d);

    // A flat grid: nothing moves, so the plan is re-solved once its
    // interval (an hour) is over, and not before.
    let flat = daily_trace(200, 200, 0);
    let d = InProcess::start(&with_trace(tmp.path(), &flat, &[]), Clock::manual(T0));
    wait(|| history_len(&d) == 1, "the first solve");
    d.advance(HOUR - Duration::from_secs(1));
    assert_eq!(history_len(&d), 1);
    d.advance(Duration::from_secs(1));
    wait(|| history_len(&d) == 2, "the interval's re-solve");
    let p = d.get("/v1/plan");
    assert_eq!((p["reason"].as_str(), p["solved_at"].as_f64()), (Some("interval"), Some(T0_S + 3600.0)), "{p}");
}

fn eval_runs(d: &InProcess) -> Vec<Value> {
    d.get("/v1/eval/runs")["data"].as_array().cloned().unwrap_or_default()
}

#[test]
fn the_evaluator_runs_first_when_it_has_prompts_then_at_the_low_carbon_hour() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = with_trace(tmp.path(), &daily_trace(300, 50, 9), &[("prompts = 24", "prompts = 2"), ("check_interval = \"1m\"", "check_interval = \"1h\"")]);
    let d = InProcess::start(&cfg, Clock::manual(T0));
    for q in ["What is 2 + 3?", "Name a prime number above 10."] {
        let (s, b) = d.post("/v1/chat/completions", &json!({"messages": user(q)}));
        assert_eq!(s, 200, "{b}");
    }
    // The scheduler looks once an hour: the first look runs at once.
    d.advance(HOUR);
    wait(|| eval_runs(&d).len() == 1, "the first evaluation");
    let first = &eval_runs(&d)[0];
    assert_eq!((first["reason"].as_str(), first["started_ms"].as_u64()), (Some("no evaluation yet"), Some(T0 + 3_600_000)), "{first}");
    wait(|| !d.get("/v1/eval/status")["running"].as_bool().unwrap(), "the run to end");
    // Six hours later (min_interval) the grid is dirty and the forecast
    // shows its clean hour two hours on: the scheduler waits for it.
    let dip = T0_S + 9.0 * 3600.0;
    d.advance(6 * HOUR);
    wait(|| d.get("/v1/eval/status")["next"]["at"].as_f64() == Some(dip), "the scheduler to plan the dip");
    let st = d.get("/v1/eval/status");
    assert_eq!(st["next"]["run_now"].as_bool(), Some(false), "{st}");
    assert!((st["next"]["forecast_gco2_per_kwh"].as_f64().unwrap() - 50.0).abs() < 1e-9, "{st}");
    d.advance(HOUR);
    assert_eq!(eval_runs(&d).len(), 1, "ran before the clean hour: {:?}", eval_runs(&d));
    d.advance(HOUR);
    wait(|| eval_runs(&d).len() == 2, "the evaluation at the clean hour");
    let second = &eval_runs(&d)[0];
    assert_eq!(second["started_ms"].as_u64(), Some(dip as u64 * 1000), "{second}");
    assert_eq!(second["intensity_gco2_per_kwh"].as_f64(), Some(50.0), "{second}");
    assert!(second["reason"].as_str().unwrap().contains("lowest forecast"), "{second}");
    assert_eq!(d.now_s(), dip, "the clock moved only as the test moved it");
}

#[test]
fn scheduled_runs_leave_out_classes_settled_at_the_baseline() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = with_trace(tmp.path(), &daily_trace(300, 300, 0), &[("prompts = 24", "prompts = 20"), ("check_interval = \"1m\"", "check_interval = \"1h\"")]);
    let d = InProcess::start(&cfg, Clock::manual(T0));
    // Math whose shorter answers (the echo engine's first sentence) end on
    // another number than the whole prompt: no level keeps L0's answer.
    for i in 0..20 {
        let q = format!("Tom has {i} apples. He buys 3 more, {} in all?", i + 3);
        let (s, b) = d.post("/v1/chat/completions", &json!({"messages": user(&q)}));
        assert_eq!(s, 200, "{b}");
    }
    let own = |d: &InProcess| d.get("/v1/jobs?limit=1000")["data"].as_array().unwrap().iter().filter(|j| j["origin"] == "daemon").count();
    d.advance(HOUR);
    wait(|| eval_runs(&d).len() == 1 && !d.get("/v1/eval/status")["running"].as_bool().unwrap(), "the first evaluation");
    let full = |d: &InProcess| d.get(&format!("/v1/eval/runs/{}", eval_runs(d)[0]["id"].as_str().unwrap()));
    let first = full(&d);
    assert_eq!(first["verdicts"].as_array().unwrap().len(), 20, "{first}");
    assert_eq!(own(&d), 60);
    // 20 of 20 lost: math is settled at L0. The next scheduled run (past
    // max_staleness) asks nothing, spends nothing, and says why.
    d.advance(73 * HOUR);
    wait(|| eval_runs(&d).len() == 2, "the second evaluation");
    let second = full(&d);
    assert_eq!(second["settled"], json!(["math"]), "{second}");
    assert!(second["verdicts"].as_array().unwrap().is_empty() && second["energy_j"] == 0.0, "{second}");
    assert!(second["error"].as_str().unwrap().contains("settled"), "{second}");
    assert_eq!(own(&d), 60, "no answers were queued for a settled class");
    assert_eq!(d.get("/v1/eval/status")["settled"], json!(["math"]));
    let (code, out, err) = sproutctl(&d.url, &["eval", "status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("settled at L0") && out.contains(": math"), "{out}");
    // A class not settled is still asked, beside the settled one.
    let (s, b) = d.post("/v1/chat/completions", &json!({"messages": user("What is the capital of France?")}));
    assert_eq!(s, 200, "{b}");
    d.advance(73 * HOUR);
    wait(|| eval_runs(&d).len() == 3 && !d.get("/v1/eval/status")["running"].as_bool().unwrap(), "the third evaluation");
    let third = full(&d);
    assert_eq!(third["settled"], json!(["math"]), "{third}");
    let classes: Vec<&str> = third["verdicts"].as_array().unwrap().iter().map(|v| v["class"].as_str().unwrap()).collect();
    assert_eq!(classes, ["question"], "{third}");
    assert_eq!(own(&d), 63);
    // A forced run (a minute on: run ids are their start times) measures
    // every class again.
    d.advance(Duration::from_secs(60));
    let (s, forced) = d.post("/v1/eval/runs", &json!({"wait": true}));
    assert_eq!(s, 200, "{forced}");
    assert_eq!(forced["settled"], json!([]), "{forced}");
    assert_eq!(forced["verdicts"].as_array().unwrap().len(), 21, "{forced}");
}

#[test]
fn finished_jobs_are_collected_after_their_retention_and_not_before() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = with_trace(tmp.path(), &daily_trace(200, 200, 0), &[("result_retention = \"7d\"", "result_retention = \"1h\"")]);
    let d = InProcess::start(&cfg, Clock::manual(T0));
    let (s, job) = d.post("/v1/jobs", &json!({"messages": user("keep me an hour")}));
    assert_eq!(s, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    wait(|| d.get(&format!("/v1/jobs/{id}"))["state"] == "succeeded", "the job");
    // The collector looks every tenth of the retention (6 minutes): at
    // 59 minutes the result is kept, at 65 it is gone; its record stays.
    d.advance(Duration::from_secs(59 * 60));
    let kept = d.get(&format!("/v1/jobs/{id}"));
    assert!(kept["result"]["choices"][0]["message"]["content"].is_string(), "{kept}");
    d.advance(Duration::from_secs(6 * 60));
    wait(|| http("GET", &format!("{}/v1/jobs/{id}", d.url), None).0 == 404, "the collector");
    let ledger = d.get("/v1/ledger");
    assert!(ledger["data"].as_array().unwrap().iter().any(|e| e["job_id"] == id.as_str()), "{ledger}");
}
