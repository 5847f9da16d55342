//! Integration tests: real `sproutd` processes over real HTTP on loopback.
//! The echo engine stands in where only the queue and API are under test;
//! the `real_model_*` tests run the default model through mistral.rs.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

// ---------------------------------------------------------------------------
// API contract and bad input (echo engine).

#[test]
fn bad_inputs_get_openai_errors_with_the_right_status() {
    let d = Daemon::start(&echo_config(0, 2, &[("max_body_bytes = 1048576", "max_body_bytes = 4096")]));
    let chat = format!("{}/v1/chat/completions", d.url);
    let cases: Vec<(String, u16, Option<&str>)> = vec![
        ("{\"messages\": [".into(), 400, None),
        ("not json at all".into(), 400, None),
        ("{}".into(), 400, Some("messages")),
        (json!({"messages": []}).to_string(), 400, Some("messages")),
        (json!({"messages": [{"role": "robot", "content": "hi"}]}).to_string(), 400, Some("messages[0].role")),
        (json!({"messages": user("hi"), "max_tokens": 0}).to_string(), 400, Some("max_tokens")),
        (json!({"messages": user("hi"), "max_tokens": 100000}).to_string(), 400, Some("max_tokens")),
        (json!({"messages": user("hi"), "directive": "L7"}).to_string(), 400, Some("directive")),
        (json!({"messages": user("hi"), "model": "gpt-4o"}).to_string(), 404, Some("model")),
        (json!({"messages": user(&"x".repeat(10_000))}).to_string(), 413, None),
    ];
    for (body, status, param) in &cases {
        for url in [chat.clone(), format!("{}/v1/jobs", d.url)] {
            let (s, b) = http("POST", &url, Some(body));
            assert_error(s, &b, *status, *param);
        }
    }
    let (s, b) = http("GET", &format!("{}/v1/jobs/job-00000000deadbeef", d.url), None);
    assert_error(s, &b, 404, None);
    let (s, b) = http("DELETE", &format!("{}/v1/jobs/nope", d.url), None);
    assert_error(s, &b, 404, None);
    let (s, b) = http("GET", &format!("{}/v1/nowhere", d.url), None);
    assert_error(s, &b, 404, None);
    let (s, b) = http("PUT", &format!("{}/v1/models", d.url), None);
    assert_error(s, &b, 405, None);
    // Nothing crashed: the daemon still answers.
    let (s, b) = http("POST", &chat, Some(&json!({"messages": user("still here")}).to_string()));
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["choices"][0]["message"]["content"], "still here");
}

#[test]
fn generation_is_503_while_the_model_loads_and_jobs_queue_meanwhile() {
    let cfg = echo_config(0, 1, &[("cpu = true", "cpu = true\necho_load_delay_ms = 3000")]);
    let d = Daemon::spawn(&cfg, None);
    let t0 = std::time::Instant::now();
    let health = loop {
        if let Ok(r) = reqwest::blocking::get(format!("{}/healthz", d.url)) {
            break r;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no answer: {}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(health.status(), 503);
    assert_eq!(health.json::<Value>().unwrap()["engine"], "loading");
    let (s, b) = http("POST", &format!("{}/v1/chat/completions", d.url), Some(&json!({"messages": user("hi")}).to_string()));
    assert_error(s, &b, 503, None);
    // An asynchronous job is accepted and runs once the model is up.
    let (s, job) = http("POST", &format!("{}/v1/jobs", d.url), Some(&json!({"messages": user("queued early")}).to_string()));
    assert_eq!(s, 202, "{job}");
    let (_, done) = http("GET", &format!("{}/v1/jobs/{}?wait=30", d.url, job["id"].as_str().unwrap()), None);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["choices"][0]["message"]["content"], "queued early");
}

#[test]
fn models_and_health() {
    let d = Daemon::start(&echo_config(0, 2, &[]));
    let (s, b) = http("GET", &format!("{}/v1/models", d.url), None);
    assert_eq!(s, 200);
    assert_eq!(b["object"], "list");
    assert_eq!(b["data"][0]["id"], "echo");
    let (s, b) = http("GET", &format!("{}/healthz", d.url), None);
    assert_eq!(s, 200);
    assert_eq!(b["status"], "ok");
}

#[test]
fn job_lifecycle_and_cancel() {
    // One sequence at a time, 200 ms per token: the first job holds the engine.
    let d = Daemon::start(&echo_config(200, 1, &[]));
    let submit = |text: &str, extra: Value| {
        let mut body = json!({"messages": user(text)});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (s, job) = http("POST", &format!("{}/v1/jobs", d.url), Some(&body.to_string()));
        assert_eq!(s, 202, "{job}");
        assert_eq!(job["state"], "queued");
        job["id"].as_str().unwrap().to_string()
    };
    let long = submit(&"word ".repeat(100), json!({"directive": "L1"}));
    let waiting = submit("never runs", json!({}));
    // Let the long one start.
    let t0 = std::time::Instant::now();
    while http("GET", &format!("{}/v1/jobs/{long}", d.url), None).1["state"] != "running" {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    // Cancelling a queued job is immediate.
    let (s, j) = http("DELETE", &format!("{}/v1/jobs/{waiting}", d.url), None);
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["state"], "cancelled");
    // Cancelling a running one aborts it.
    let (s, j) = http("DELETE", &format!("{}/v1/jobs/{long}", d.url), None);
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["state"], "cancelled");
    assert!(t0.elapsed() < Duration::from_secs(15), "cancel did not abort the 20 s job");
    // Cancelling a finished job is a conflict.
    let (s, b) = http("DELETE", &format!("{}/v1/jobs/{long}", d.url), None);
    assert_error(s, &b, 409, None);
    // A normal job runs to the end with its pinned directive and a receipt.
    let ok = submit("a b c", json!({"directive": "L2", "max_tokens": 2}));
    let (_, j) = http("GET", &format!("{}/v1/jobs/{ok}?wait=30", d.url), None);
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["directive"], "L2");
    let r = &j["result"];
    assert_eq!(r["choices"][0]["message"]["content"], "a b");
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    assert_eq!(r["usage"]["completion_tokens"], 2);
    let receipt = &r["usage"]["sprout"];
    assert_eq!(receipt["directive"], "L2");
    assert_eq!(receipt["job_id"], ok.as_str());
    assert_eq!(receipt["estimated"], true);
    assert!(receipt["energy_j"].as_f64().unwrap() > 0.0);
    assert!(receipt["carbon_g"].as_f64().unwrap() > 0.0);
    // The list shows all three, newest first.
    let (_, list) = http("GET", &format!("{}/v1/jobs", d.url), None);
    let ids: Vec<_> = list["data"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, [ok.clone(), waiting, long]);
    let (_, list) = http("GET", &format!("{}/v1/jobs?state=succeeded", d.url), None);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

#[test]
fn unpinned_requests_follow_the_configured_mix() {
    let d = Daemon::start(&echo_config(0, 4, &[("mix = { L0 = 0.4, L1 = 0.3, L2 = 0.3 }", "mix = { L0 = 0.0, L1 = 0.5, L2 = 0.5 }")]));
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..40 {
        let (s, b) = http("POST", &format!("{}/v1/chat/completions", d.url), Some(&json!({"messages": user(&format!("q{i}"))}).to_string()));
        assert_eq!(s, 200, "{b}");
        *seen.entry(b["usage"]["sprout"]["directive"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    assert!(!seen.contains_key("L0"), "{seen:?}");
    assert!(seen["L1"] >= 8 && seen["L2"] >= 8, "{seen:?}");
}

#[test]
fn streaming_ends_with_done_and_carries_the_receipt() {
    let d = Daemon::start(&echo_config(5, 2, &[]));
    let body = json!({"messages": user("one two three"), "stream": true, "stream_options": {"include_usage": true}, "directive": "L1"});
    let events = sse(&format!("{}/v1/chat/completions", d.url), &body.to_string());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, "one two three");
    let finish = chunks.iter().find(|c| c["choices"][0]["finish_reason"].is_string()).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage_only = chunks.last().unwrap();
    assert_eq!(usage_only["choices"], json!([]));
    assert_eq!(usage_only["usage"]["completion_tokens"], 3);
    assert_eq!(usage_only["usage"]["sprout"]["directive"], "L1");
    assert_eq!(usage_only["usage"]["sprout"]["estimated"], true);
}

#[test]
fn engine_failure_is_reported_not_crashed() {
    let d = Daemon::start(&echo_config(0, 1, &[]));
    let (s, b) = http("POST", &format!("{}/v1/chat/completions", d.url), Some(&json!({"messages": user("boom [[engine-error]]")}).to_string()));
    assert_error(s, &b, 500, None);
    let (_, list) = http("GET", &format!("{}/v1/jobs?state=failed", d.url), None);
    assert_eq!(list["data"][0]["state"], "failed");
    assert!(list["data"][0]["error"]["message"].as_str().unwrap().contains("failure requested"));
}

#[test]
fn acknowledged_jobs_survive_sigkill() {
    let cfg = echo_config(20, 2, &[]);
    let d = Daemon::start(&cfg);
    let mut ids = Vec::new();
    for i in 0..30 {
        let (s, j) = http("POST", &format!("{}/v1/jobs", d.url), Some(&json!({"messages": user(&format!("job {i} a b c d e"))}).to_string()));
        assert_eq!(s, 202);
        ids.push(j["id"].as_str().unwrap().to_string());
    }
    let reuse = d.kill();
    let d = Daemon::spawn(&cfg, Some(reuse));
    d.wait_ready(Duration::from_secs(30));
    for (i, id) in ids.iter().enumerate() {
        let (s, j) = http("GET", &format!("{}/v1/jobs/{id}?wait=60", d.url), None);
        assert_eq!(s, 200, "{j}");
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["result"]["choices"][0]["message"]["content"], format!("job {i} a b c d e"));
    }
}

#[test]
fn sigterm_exits_zero() {
    let mut d = Daemon::start(&echo_config(0, 1, &[]));
    let status = d.sigterm();
    assert!(status.success(), "{status:?}\n{}", d.log());
}

// ---------------------------------------------------------------------------
// sproutctl.

#[test]
fn sproutctl_without_a_daemon_says_so_in_one_line() {
    let url = format!("http://127.0.0.1:{}", free_port());
    for args in [&["submit", "hi"][..], &["list"], &["status", "job-1"]] {
        let (code, out, err) = sproutctl(&url, args);
        assert_ne!(code, 0);
        assert!(out.is_empty());
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("cannot reach sproutd"), "{err}");
    }
}

#[test]
fn sproutctl_submit_wait_status_list_result_cancel() {
    let d = Daemon::start(&echo_config(0, 2, &[]));
    let (code, out, err) = sproutctl(&d.url, &["submit", "--directive", "L2", "--system", "be kind", "--wait", "hello there"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("hello there\n"), "{out}");
    assert!(out.contains("directive L2") && out.contains("gCO2e") && out.contains("estimated"), "{out}");
    let (code, out, _) = sproutctl(&d.url, &["submit", "--json", "--max-tokens", "1", "x y"]);
    assert_eq!(code, 0);
    let job: Value = serde_json::from_str(&out).unwrap();
    let id = job["id"].as_str().unwrap();
    let (code, out, _) = sproutctl(&d.url, &["result", "--wait", id]);
    assert_eq!(code, 0);
    assert!(out.starts_with("x\n"), "{out}");
    let (code, out, _) = sproutctl(&d.url, &["status", id]);
    assert_eq!(code, 0);
    assert!(out.contains("succeeded"), "{out}");
    let (code, out, _) = sproutctl(&d.url, &["list"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 3, "{out}");
    let (code, _, err) = sproutctl(&d.url, &["cancel", id]);
    assert_ne!(code, 0);
    assert!(err.contains("409") && err.contains("already succeeded"), "{err}");
    let (code, _, err) = sproutctl(&d.url, &["submit", "--directive", "L5", "x"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown directive"), "{err}");
    // The prompt from stdin.
    let out = std::process::Command::new(SPROUTCTL)
        .env("SPROUT_URL", &d.url)
        .args(["submit", "--wait", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"from stdin")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("from stdin"));
}

#[test]
fn check_config_reports_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = config_text(&[("listen = \"127.0.0.1:7878\"", "listen = \"everywhere\""), ("top_p = 0.9", "top_p = 7.0")]);
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, bad).unwrap();
    let out = std::process::Command::new(SPROUTD).args(["check-config", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.listen:") && err.contains("generation.top_p:"), "{err}");
    let out = std::process::Command::new(SPROUTD).args(["check-config", "--config"]).arg(repo().join("config.toml")).output().unwrap();
    assert!(out.status.success());
}

// ---------------------------------------------------------------------------
// The real model (Qwen2.5-Coder-0.5B-Instruct GGUF through mistral.rs).

fn chat(d: &Daemon, body: Value) -> Value {
    let (s, b) = http("POST", &format!("{}/v1/chat/completions", d.url), Some(&body.to_string()));
    assert_eq!(s, 200, "{b}\n{}", d.log());
    b
}

#[test]
fn real_model_answers_with_directives_receipts_and_seeds() {
    let Some(model) = model_path() else { return };
    let d = Daemon::start(&model_config(&model, &[]));
    let q = "What is the capital of France?";
    let a = chat(&d, json!({"model": "qwen2.5-coder-0.5b-instruct", "messages": user(q), "directive": "L2", "max_tokens": 24, "seed": 11}));
    let text = a["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("Paris"), "{text}");
    assert_eq!(a["object"], "chat.completion");
    let u = &a["usage"];
    assert!(u["prompt_tokens"].as_u64().unwrap() > 5);
    let n = u["completion_tokens"].as_u64().unwrap();
    assert!(n >= 1 && n <= 24, "{u}");
    assert_eq!(u["total_tokens"].as_u64().unwrap(), u["prompt_tokens"].as_u64().unwrap() + n);
    assert_eq!(u["sprout"]["directive"], "L2");
    assert_eq!(u["sprout"]["estimated"], true);
    assert!(u["sprout"]["energy_j"].as_f64().unwrap() > 0.0);
    // The same seed gives the same answer; the level is recorded on the job.
    let b = chat(&d, json!({"messages": user(q), "directive": "L2", "max_tokens": 24, "seed": 11}));
    assert_eq!(a["choices"][0]["message"]["content"], b["choices"][0]["message"]["content"]);
    let job_id = u["sprout"]["job_id"].as_str().unwrap();
    let (_, job) = http("GET", &format!("{}/v1/jobs/{job_id}", d.url), None);
    assert_eq!(job["directive"], "L2");
    assert_eq!(job["seed"], 11);
    // max_tokens is honoured with finish_reason "length".
    let c = chat(&d, json!({"messages": user("Write a long essay about the history of Rome."), "directive": "L0", "max_tokens": 8, "seed": 1}));
    assert_eq!(c["usage"]["completion_tokens"], 8);
    assert_eq!(c["choices"][0]["finish_reason"], "length");
}

#[test]
fn real_model_streams_and_batches_concurrent_requests() {
    let Some(model) = model_path() else { return };
    let d = Daemon::start(&model_config(&model, &[]));
    let body = json!({"messages": user("Name three colors."), "stream": true, "max_tokens": 16, "seed": 3, "directive": "L1"});
    let events = sse(&format!("{}/v1/chat/completions", d.url), &body.to_string());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(!text.trim().is_empty());
    let last = chunks.last().unwrap();
    assert!(last["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    assert_eq!(last["usage"]["sprout"]["directive"], "L1");
    // Four requests at once all complete (the engine batches them).
    let url = d.url.clone();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let body = json!({"messages": user(&format!("Say the number {i}.")), "max_tokens": 12, "seed": i});
                http("POST", &format!("{url}/v1/chat/completions"), Some(&body.to_string()))
            })
        })
        .collect();
    for h in handles {
        let (s, b) = h.join().unwrap();
        assert_eq!(s, 200, "{b}");
        assert!(b["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    }
}

#[test]
fn real_model_official_openai_python_client() {
    let Some(model) = model_path() else { return };
    let python = match std::env::var("SPROUT_PYTHON") {
        Ok(p) => p,
        Err(_) if std::env::var("SPROUT_REQUIRE_MODEL").as_deref() == Ok("1") => {
            panic!("SPROUT_PYTHON (a python with the openai package) is not set")
        }
        Err(_) => {
            eprintln!("skipping: SPROUT_PYTHON not set");
            return;
        }
    };
    let d = Daemon::start(&model_config(&model, &[]));
    let out = std::process::Command::new(python)
        .arg(repo().join("tests/openai_client.py"))
        .arg(format!("{}/v1", d.url))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("models ok") && stdout.contains("chat ok") && stdout.contains("stream ok"), "{stdout}");
}
