//! Integration tests: real `sproutd` processes over real HTTP on loopback.
//! The echo engine stands in where only the queue and API are under test;
//! the `real_model_*` tests run the default model through mistral.rs.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

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
        // Never silently ignored: bad values of the parameters that shape the answer.
        (json!({"messages": user("hi"), "tools": [{"type": "retrieval"}]}).to_string(), 400, Some("tools[0].type")),
        (json!({"messages": user("hi"), "functions": [{"name": "f"}]}).to_string(), 400, Some("functions")),
        (json!({"messages": user("hi"), "response_format": {"type": "xml"}}).to_string(), 400, Some("response_format")),
        (json!({"messages": user("hi"), "logprobs": true, "top_logprobs": 21}).to_string(), 400, Some("top_logprobs")),
        (json!({"messages": user("hi"), "frequency_penalty": 2.5}).to_string(), 400, Some("frequency_penalty")),
        (json!({"messages": user("hi"), "logit_bias": {"one": 5}}).to_string(), 400, Some("logit_bias")),
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
    let (s, b) = http("GET", &format!("{}/v1/models/gpt-4o", d.url), None);
    assert_error(s, &b, 404, Some("model"));
    let (s, b) = http("GET", &format!("{}/v1/models/echo", d.url), None);
    assert_eq!((s, b["id"].as_str()), (200, Some("echo")), "{b}");
    let (s, b) = http("GET", &format!("{}/health", d.url), None);
    assert_eq!((s, b["status"].as_str()), (200, Some("ok")), "{b}");
    // Nothing crashed: the daemon still answers.
    let (s, b) = http("POST", &chat, Some(&json!({"messages": user("still here")}).to_string()));
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["choices"][0]["message"]["content"], "still here");
}

#[test]
fn overflowing_numbers_bad_queries_and_paths_get_openai_errors_not_panics() {
    let d = Daemon::start(&echo_config(0, 2, &[]));
    // Deadlines too far to be meant: 400, never a dropped connection or a wrap.
    for deadline in [json!("99999999999999999999h"), json!("18446744073709551615s"), json!("18446744073713152s"), json!(1e300)] {
        let (s, b) = http("POST", &format!("{}/v1/jobs", d.url), Some(&json!({"messages": user("hi"), "deadline": deadline}).to_string()));
        assert_error(s, &b, 400, Some("deadline"));
    }
    let (s, b) = http("POST", &format!("{}/v1/jobs", d.url), Some(&json!({"messages": user("hi")}).to_string()));
    assert_eq!(s, 202, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    // Query strings and paths axum would reject in plain text.
    for q in ["wait=abc", "wait=", "wait=1&wait=2"] {
        let (s, b) = http("GET", &format!("{}/v1/jobs/{id}?{q}", d.url), None);
        assert_error(s, &b, 400, None);
    }
    for path in ["/v1/jobs?limit=-1", "/v1/ledger?since=", "/v1/stats?since=abc", "/v1/eval/runs?limit=x"] {
        let (s, b) = http("GET", &format!("{}{path}", d.url), None);
        assert_error(s, &b, 400, None);
    }
    let (s, b) = http("GET", &format!("{}/v1/jobs/%ff", d.url), None);
    assert_error(s, &b, 400, None);
    let (s, b) = http("POST", &format!("{}/healthz", d.url), None);
    assert_error(s, &b, 405, None);
    // A config duration that overflows is one clear line, not a panic.
    let dir = tempfile::tempdir().unwrap();
    let cfg = echo_config(0, 1, &[("shutdown_grace = \"30s\"", "shutdown_grace = \"99999999999999999999h\"")]);
    std::fs::write(dir.path().join("config.toml"), cfg).unwrap();
    let out = std::process::Command::new(SPROUTD).arg("check-config").arg("--config").arg(dir.path().join("config.toml")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("queue.shutdown_grace") && !err.contains("panicked"), "{err}");
}

/// Sends raw bytes on a new connection and returns what came back before the
/// server closed it (or `limit` passed).
fn raw_exchange(port: u16, bytes: &[u8], limit: Duration) -> (String, Duration) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    s.write_all(bytes).unwrap();
    let t0 = Instant::now();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), t0.elapsed())
}

#[test]
fn slow_clients_are_timed_out() {
    let d = Daemon::start(&echo_config(
        0,
        1,
        &[("header_read_timeout = \"30s\"", "header_read_timeout = \"1s\""), ("body_read_timeout = \"30s\"", "body_read_timeout = \"1s\"")],
    ));
    // Half a request line, then nothing: the connection is closed.
    let (_, took) = raw_exchange(d.port, b"GET /v1/jobs HT", Duration::from_secs(20));
    assert!(took < Duration::from_secs(10), "held {took:?}");
    // Headers, then a body that never comes: 408 in OpenAI's shape.
    let req = format!("POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"messa", d.port);
    let (reply, took) = raw_exchange(d.port, req.as_bytes(), Duration::from_secs(20));
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("\"request_timeout\""), "{reply}");
    assert!(took < Duration::from_secs(10), "held {took:?}");
    // The daemon still serves, and nothing was queued.
    let (s, b) = http("GET", &format!("{}/v1/jobs", d.url), None);
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"].as_array().unwrap().len(), 0, "{b}");
}

#[test]
fn browsers_cannot_reach_the_loopback_daemon_unless_their_origin_is_allowed() {
    let d = Daemon::start(&echo_config(0, 1, &[("allowed_origins = []", "allowed_origins = [\"http://localhost:3000\"]")]));
    let client = reqwest::blocking::Client::new();
    let jobs = format!("{}/v1/jobs", d.url);
    let body = json!({"messages": user("hi")}).to_string();
    let send = |req: reqwest::blocking::RequestBuilder| {
        let r = req.send().unwrap();
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        (status, headers, r.json::<Value>().unwrap_or(Value::Null))
    };
    // A form post (text/plain, no preflight) from a web page: refused twice over.
    let (s, _, b) = send(client.post(&jobs).header("content-type", "text/plain").header("origin", "https://evil.example").body(body.clone()));
    assert_error(s, &b, 403, None);
    let (s, _, b) = send(client.post(&jobs).header("content-type", "text/plain").body(body.clone()));
    assert_error(s, &b, 415, None);
    let (s, _, b) = send(client.post(&jobs).body(body.clone()));
    assert_error(s, &b, 415, None);
    // DNS rebinding: the page's own host name reaches 127.0.0.1.
    let (s, _, b) = send(client.get(&jobs).header("host", format!("rebind.evil.example:{}", d.port)));
    assert_error(s, &b, 421, None);
    let (s, _, b) = send(client.get(&jobs).header("host", format!("localhost:{}", d.port)));
    assert_eq!(s, 200, "{b}");
    // A configured origin gets CORS: preflight, then the request.
    let (s, h, _) = send(
        client
            .request(reqwest::Method::OPTIONS, &jobs)
            .header("origin", "http://localhost:3000")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type"),
    );
    assert_eq!(s, 204);
    assert_eq!(h["access-control-allow-origin"], "http://localhost:3000");
    assert!(h["access-control-allow-headers"].to_str().unwrap().contains("content-type"));
    let (s, h, b) = send(client.post(&jobs).header("content-type", "application/json").header("origin", "http://localhost:3000").body(body.clone()));
    assert_eq!(s, 202, "{b}");
    assert_eq!(h["access-control-allow-origin"], "http://localhost:3000");
    // Only that one job was queued.
    let (_, list) = http("GET", &jobs, None);
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
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
    // A running job reports the tokens it has produced so far, and they grow.
    let so_far = || http("GET", &format!("{}/v1/jobs/{long}", d.url), None).1["tokens_so_far"].as_u64().unwrap();
    let first = so_far();
    while so_far() <= first {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, out, _) = sproutctl(&d.url, &["status", &long]);
    assert_eq!(code, 0);
    assert!(out.contains("so far"), "{out}");
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
fn unpinned_requests_follow_the_configured_mix_when_the_optimizer_is_off() {
    let d = Daemon::start(&echo_config(0, 4, &[
        ("mix = { L0 = 0.4, L1 = 0.3, L2 = 0.3 }", "mix = { L0 = 0.0, L1 = 0.5, L2 = 0.5 }"),
        ("enabled = true", "enabled = false"),
    ]));
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
    let mut d = Daemon::spawn(&cfg, Some(reuse));
    d.wait_ready(Duration::from_secs(30));
    for (i, id) in ids.iter().enumerate() {
        let (s, j) = http("GET", &format!("{}/v1/jobs/{id}?wait=60", d.url), None);
        assert_eq!(s, 200, "{j}");
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["result"]["choices"][0]["message"]["content"], format!("job {i} a b c d e"));
    }
}

#[test]
fn a_damaged_store_never_loses_acknowledged_jobs_silently_and_never_hangs() {
    let cfg = echo_config(0, 1, &[]);
    let mut d = Daemon::start(&cfg);
    let mut ids = Vec::new();
    for i in 0..350 {
        let body = json!({"messages": user(&format!("job {i}: {}", "lorem ipsum dolor sit amet ".repeat(8)))}).to_string();
        let (s, j) = http("POST", &format!("{}/v1/jobs", d.url), Some(&body));
        assert_eq!(s, 202, "{j}");
        ids.push(j["id"].as_str().unwrap().to_string());
    }
    let (s, j) = http("GET", &format!("{}/v1/jobs/{}?wait=60", d.url, ids[349]), None);
    assert_eq!((s, j["state"].as_str()), (200, Some("succeeded")), "{j}");
    assert!(d.sigterm().success());
    let db = d.data_dir.join("db");
    let size = std::fs::metadata(&db).unwrap().len();
    eprintln!("store db: {size} bytes");
    let mut outcomes = Vec::new();
    for cut in [size / 2, size * 3 / 4, size * 7 / 8, size - 65536, size - 4096, size - 100] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        copy_dir(&d.data_dir, &data);
        std::fs::OpenOptions::new().write(true).open(data.join("db")).unwrap().set_len(cut).unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, &cfg).unwrap();
        let port = free_port();
        let child = std::process::Command::new(SPROUTD)
            .arg("--config")
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let url = format!("http://127.0.0.1:{port}");
        let t0 = Instant::now();
        let outcome = loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
                // 3: not retried by systemd (RestartPreventExitStatus in the unit).
                assert_eq!(status.code(), Some(3), "cut {cut}: {err}");
                // Refused: one clear line about the store, as the last thing said.
                let last = err.trim().lines().last().unwrap_or_default().to_string();
                assert!(last.contains("store"), "cut {cut}: {err}");
                break format!("cut {cut}: refused: {last}");
            }
            if let Ok(r) = reqwest::blocking::Client::new().get(format!("{url}/healthz")).timeout(Duration::from_secs(2)).send() {
                if r.status() == 200 {
                    // Served: every acknowledged job is there.
                    let missing: Vec<&String> = ids.iter().filter(|id| http("GET", &format!("{url}/v1/jobs/{id}"), None).0 == 404).collect();
                    assert!(missing.is_empty(), "cut {cut}: served with {} acknowledged jobs missing", missing.len());
                    break format!("cut {cut}: served all {}", ids.len());
                }
            }
            assert!(t0.elapsed() < Duration::from_secs(90), "cut {cut}: neither serving nor refused after 90 s");
            std::thread::sleep(Duration::from_millis(200));
        };
        outcomes.push(outcome);
    }
    eprintln!("{}", outcomes.join("\n"));
    assert!(outcomes.iter().any(|o| o.contains("lost")), "no cut lost jobs; the detection went untested: {outcomes:?}");

    // The intact store verifies, and verifying changes nothing.
    let store_cmd = |data: &std::path::Path, what: &str| {
        std::process::Command::new(SPROUTD).arg("--config").arg(d.config_path()).args(["store", what, "--data-dir"]).arg(data).output().unwrap()
    };
    let before = std::fs::read(&db).unwrap();
    let out = store_cmd(&d.data_dir, "verify");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("350 jobs (succeeded 350)") && report.contains("OK:"), "{report}");
    assert_eq!(std::fs::read(&db).unwrap(), before, "verify changed the store");

    // A store that lost its last jobs: verify names them, export saves the
    // rest, and --accept-missing-jobs serves it with new ids past the lost ones.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_dir(&d.data_dir, &data);
    std::fs::OpenOptions::new().write(true).open(data.join("db")).unwrap().set_len(before.len() as u64 - 65536).unwrap();
    let out = store_cmd(&data, "verify");
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let lost: usize = report.split("has lost ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{report}"));
    assert!(report.contains("MISSING") && report.contains("NOT OK"), "{report}");
    let out = store_cmd(&data, "export");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let exported_jobs = lines.iter().filter(|l| l.get("job").is_some()).count();
    assert_eq!(exported_jobs, 350 - lost, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(lines.iter().any(|l| l["ledger"]["job_id"].is_string()));
    let port = free_port();
    let mut child = KillOnDrop(
        std::process::Command::new(SPROUTD)
            .arg("--config")
            .arg(d.config_path())
            .args(["--listen", &format!("127.0.0.1:{port}"), "--accept-missing-jobs", "--data-dir"])
            .arg(&data)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    let t0 = Instant::now();
    while reqwest::blocking::get(format!("{url}/healthz")).map(|r| r.status() != 200).unwrap_or(true) {
        assert!(t0.elapsed() < Duration::from_secs(30) && child.0.try_wait().unwrap().is_none(), "not serving with --accept-missing-jobs");
        std::thread::sleep(Duration::from_millis(100));
    }
    let gone = ids.iter().filter(|id| http("GET", &format!("{url}/v1/jobs/{id}"), None).0 == 404).count();
    assert_eq!(gone, lost);
    let (s, j) = http("POST", &format!("{url}/v1/jobs"), Some(&json!({"messages": user("after the loss")}).to_string()));
    assert_eq!(s, 202, "{j}");
    assert!(j["id"].as_str().unwrap() > ids.last().unwrap().as_str(), "a new job reused a lost id: {j}");
    let _ = child.0.kill();
    let _ = child.0.wait();
    // The loss was accepted once: the next start serves without the flag.
    let out = store_cmd(&data, "verify");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// A tmpfs of `mib` MiB mounted at `dir` (unmounted on drop), where the
/// machine allows it (root, or a user namespace); None elsewhere.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, mib: u32) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_makes_sproutd_unhealthy_and_a_restart_after_space_returns_serves_every_acknowledged_job() {
    let root = tempfile::tempdir().unwrap();
    let Some(_fs) = Tmpfs::mount(&root.path().join("fs"), 16) else {
        assert!(std::env::var("SPROUT_REQUIRE_MODEL").as_deref() != Ok("1"), "cannot mount a tmpfs here (needs root)");
        eprintln!("skipping: cannot mount a tmpfs");
        return;
    };
    let cfg = echo_config(0, 1, &[]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), &cfg).unwrap();
    let data = root.path().join("fs/data");
    let port = free_port();
    let start = || {
        KillOnDrop(
            std::process::Command::new(SPROUTD)
                .arg("--config")
                .arg(dir.path().join("config.toml"))
                .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
                .arg(&data)
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let url = format!("http://127.0.0.1:{port}");
    let ready = |child: &mut KillOnDrop| {
        let t0 = Instant::now();
        while reqwest::blocking::get(format!("{url}/healthz")).map(|r| r.status() != 200).unwrap_or(true) {
            assert!(t0.elapsed() < Duration::from_secs(30) && child.0.try_wait().unwrap().is_none(), "not ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut child = start();
    ready(&mut child);
    let submit = |i: usize| http("POST", &format!("{url}/v1/jobs"), Some(&json!({"messages": user(&format!("job {i} {}", "x".repeat(2000)))}).to_string()));
    let mut acked = Vec::new();
    for i in 0..20 {
        let (s, j) = submit(i);
        assert_eq!(s, 202, "{j}");
        acked.push(j["id"].as_str().unwrap().to_string());
    }
    // Fill the disk.
    let filler = root.path().join("fs/filler");
    let _ = std::process::Command::new("dd").args(["if=/dev/zero", "bs=64k"]).arg(format!("of={}", filler.display())).stderr(std::process::Stdio::null()).status();
    let mut refused = 0;
    for i in 20..200 {
        let (s, j) = submit(i);
        if s == 202 {
            acked.push(j["id"].as_str().unwrap().to_string());
        } else {
            assert!(s >= 500, "{s} {j}");
            assert!(j["error"]["message"].is_string(), "{j}");
            refused += 1;
            if refused >= 5 {
                break;
            }
        }
    }
    assert!(refused >= 5, "the full disk never refused a submit");
    // Unhealthy, with the reason, and counted.
    let (s, h) = http("GET", &format!("{url}/healthz"), None);
    assert_eq!(s, 503, "{h}");
    assert_eq!(h["status"], "unhealthy", "{h}");
    assert!(h["store"].as_str().is_some_and(|r| !r.is_empty()), "{h}");
    let metrics = reqwest::blocking::get(format!("{url}/metrics")).unwrap().text().unwrap();
    let errors: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sproutd_store_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(errors >= 1.0, "{metrics}");
    // SIGTERM still ends it while the disk is full (no loop retries forever).
    std::process::Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    let t0 = Instant::now();
    while child.0.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(60), "sproutd did not exit after SIGTERM on a full disk");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Space returns; a restart (systemd's, after the watchdog) serves again with nothing lost.
    std::fs::remove_file(&filler).unwrap();
    let mut child = start();
    ready(&mut child);
    for id in &acked {
        let (s, j) = http("GET", &format!("{url}/v1/jobs/{id}?wait=30"), None);
        assert_eq!((s, j["state"].as_str()), (200, Some("succeeded")), "{id}: {j}");
    }
    let (s, j) = submit(999);
    assert_eq!(s, 202, "{j}");
}

#[test]
fn a_crash_while_a_job_runs_counts_its_attempt() {
    // One attempt allowed: a crash mid-run must fail the job, not run it again.
    let cfg = echo_config(500, 1, &[("max_attempts = 3", "max_attempts = 1")]);
    let d = Daemon::start(&cfg);
    let (s, j) = http("POST", &format!("{}/v1/jobs", d.url), Some(&json!({"messages": user("a b c d e f g h i j k l")}).to_string()));
    assert_eq!(s, 202, "{j}");
    let id = j["id"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    loop {
        let (_, j) = http("GET", &format!("{}/v1/jobs/{id}", d.url), None);
        if j["state"] == "running" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{j}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let reuse = d.kill(); // SIGKILL: nothing flushed after the claim's own flush
    let mut d = Daemon::spawn(&cfg, Some(reuse));
    d.wait_ready(Duration::from_secs(30));
    let (s, j) = http("GET", &format!("{}/v1/jobs/{id}", d.url), None);
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["state"], "failed", "{j}");
    assert_eq!(j["attempts"], 1, "{j}");
    assert!(j["error"]["message"].as_str().unwrap().contains("interrupted 1 times"), "{j}");
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
    // The ledger: one record per job that ran, as CSV and JSON.
    let (code, csv, err) = sproutctl(&d.url, &["ledger", "export", "--format", "csv", "--since", "1h"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("job_id,origin,state,finished_at,directive"), "{csv}");
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines.iter().any(|l| l.contains(id) && l.contains(",succeeded,")), "{csv}");
    let (code, json_out, _) = sproutctl(&d.url, &["ledger", "export", "--format", "json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let (code, _, err) = sproutctl(&d.url, &["ledger", "export", "--since", "yesterday"]);
    assert_ne!(code, 0);
    assert!(err.contains("--since"), "{err}");
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
fn real_model_streams_and_answers_concurrent_requests_as_if_alone() {
    let Some(model) = model_path() else { return };
    // At the default max_seqs (4): the eight requests below decode in
    // batches of up to four sequences of different lengths (mistral.rs patch
    // 0012), each getting its answer alone, bit for bit.
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
    // Requests sent at once get exactly the answers they get alone (greedy):
    // concurrency must never mix one answer into another.
    let questions = [
        "What is the capital of France?",
        "What is the capital of Spain?",
        "What is the capital of Italy?",
        "What is the capital of Japan?",
        "when was the last time anyone was on the moon",
        "who wrote he ain't heavy he's my brother lyrics",
        "when did the eagles win last super bowl",
        "when did the isle of wight become an island",
    ];
    let body = |q: &str| json!({"messages": user(q), "max_tokens": 40, "temperature": 0, "directive": "L0"}).to_string();
    let alone: Vec<Value> = questions.iter().map(|q| chat(&d, serde_json::from_str(&body(q)).unwrap())).collect();
    let url = d.url.clone();
    let handles: Vec<_> = questions
        .iter()
        .map(|q| {
            let (url, b) = (url.clone(), body(q));
            std::thread::spawn(move || http("POST", &format!("{url}/v1/chat/completions"), Some(&b)))
        })
        .collect();
    for (h, a) in handles.into_iter().zip(&alone) {
        let (s, b) = h.join().unwrap();
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["choices"][0]["message"]["content"], a["choices"][0]["message"]["content"]);
    }
}

#[test]
fn real_model_jobs_survive_sigkill() {
    let Some(model) = model_path() else { return };
    let cfg = model_config(&model, &[]);
    let d = Daemon::start(&cfg);
    let questions = ["What is 2 + 3?", "Name a primary color.", "What is the capital of Italy?", "Spell the word cat."];
    let ids: Vec<String> = questions
        .iter()
        .map(|q| {
            let (s, j, _) = post_job(&d.url, &json!({"messages": user(q), "max_tokens": 16, "seed": 1}), None);
            assert_eq!(s, 202);
            j["id"].as_str().unwrap().to_string()
        })
        .collect();
    // Kill it while the first answer is being generated.
    let t0 = std::time::Instant::now();
    while http("GET", &format!("{}/v1/jobs/{}", d.url, ids[0]), None).1["state"] == "queued" {
        assert!(t0.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(10));
    }
    let reuse = d.kill();
    let mut d = Daemon::spawn(&cfg, Some(reuse));
    d.wait_ready(Duration::from_secs(120));
    for id in &ids {
        let (_, j) = http("GET", &format!("{}/v1/jobs/{id}?wait=120", d.url), None);
        assert_eq!(j["state"], "succeeded", "{j}");
        assert!(j["result"]["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    }
    let entries = ledger(&d.url);
    for id in &ids {
        assert_eq!(entries.iter().filter(|e| e["job_id"] == id.as_str()).count(), 1, "{id} completed other than once");
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
    for part in ["models ok", "chat ok", "stream ok", "tools ok", "stream tools ok", "structured ok", "logprobs ok"] {
        assert!(stdout.contains(part), "{part}: {stdout}");
    }
}

#[test]
fn real_model_holds_fixed_shapes_and_applies_openai_sampling_parameters() {
    let Some(model) = model_path() else { return };
    // Every free-text request gets L2 here (optimizer off, a fixed mix), so a
    // directive on the fixed-shape ones below would show.
    let d = Daemon::start(&model_config(
        &model,
        &[("mix = { L0 = 0.4, L1 = 0.3, L2 = 0.3 }", "mix = { L0 = 0.0, L1 = 0.0, L2 = 1.0 }"), ("enabled = true", "enabled = false")],
    ));
    let content = |a: &Value| a["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string();
    let directive = |a: &Value| a["usage"]["sprout"]["directive"].as_str().unwrap().to_string();
    let plain = chat(&d, json!({"messages": user("Name a color."), "max_tokens": 8, "temperature": 0}));
    assert_eq!(directive(&plain), "L2");

    // A JSON schema holds, and the answer ends where the JSON does (not at max_tokens).
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
                        "required": ["city", "population"], "additionalProperties": false});
    let a = chat(&d, json!({"messages": user("Describe Paris."), "max_tokens": 100, "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": schema}}}));
    let v: Value = serde_json::from_str(&content(&a)).unwrap_or_else(|e| panic!("not JSON ({e}): {a}"));
    assert!(v["city"].is_string() && v["population"].is_i64() && v.as_object().unwrap().len() == 2, "{v}");
    assert_eq!(a["choices"][0]["finish_reason"], "stop", "{a}");
    assert!(a["usage"]["completion_tokens"].as_u64().unwrap() < 60, "{a}");
    assert_eq!(directive(&a), "L0", "an unpinned structured answer is not shortened");
    // A pinned level is honoured, and the JSON still holds.
    let a = chat(&d, json!({"messages": user("List three fruits."), "max_tokens": 60, "temperature": 0, "directive": "L2",
        "response_format": {"type": "json_object"}}));
    assert!(serde_json::from_str::<Value>(&content(&a)).unwrap().is_object(), "{a}");
    assert_eq!(directive(&a), "L2");

    // Tools: the model calls one on its own; a named function is forced even
    // where the prompt asks for another.
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time", "description": "The current time in a time zone",
            "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}]);
    let a = chat(&d, json!({"messages": user("What is the weather like in Paris right now?"), "tools": tools, "max_tokens": 64, "temperature": 0}));
    let call = &a["choices"][0]["message"]["tool_calls"][0];
    assert_eq!((call["type"].as_str(), call["function"]["name"].as_str()), (Some("function"), Some("get_weather")), "{a}");
    assert_eq!(a["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(directive(&a), "L0");
    let a = chat(&d, json!({"messages": user("What is the weather like in Paris?"), "tools": tools, "max_tokens": 64, "temperature": 0,
        "tool_choice": {"type": "function", "function": {"name": "get_time"}}}));
    let call = &a["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_time", "{a}");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["tz"].is_string(), "{args}");
    // tool_choice "none": a plain answer, shortened like any other.
    let a = chat(&d, json!({"messages": user("Name a color."), "tools": tools, "tool_choice": "none", "max_tokens": 8, "temperature": 0}));
    assert!(a["choices"][0]["message"]["tool_calls"].is_null() && !content(&a).is_empty(), "{a}");
    assert_eq!(directive(&a), "L2");

    // logit_bias: token 15 is "0" in this vocabulary; +100 makes it every token.
    let a = chat(&d, json!({"messages": user("What is the capital of France?"), "max_tokens": 5, "temperature": 0, "logit_bias": {"15": 100}}));
    assert_eq!(content(&a), "00000", "{a}");
    // A token the vocabulary lacks fails the job with the reason.
    let (s, b) = http("POST", &format!("{}/v1/chat/completions", d.url),
        Some(&json!({"messages": user("hi"), "max_tokens": 2, "logit_bias": {"4000000000": 1}}).to_string()));
    assert!(s >= 400 && b["error"]["message"].as_str().unwrap().contains("4000000000"), "{s} {b}");
    // A frequency penalty stops the loop greedy decoding falls into.
    let body = |extra: Value| {
        let mut b = json!({"messages": user("Repeat the word hello ten times."), "max_tokens": 30, "temperature": 0, "directive": "L0"});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b
    };
    let looped = content(&chat(&d, body(json!({}))));
    let penalised = content(&chat(&d, body(json!({"frequency_penalty": 2.0}))));
    let hellos = |t: &str| t.matches("hello").count();
    assert!(hellos(&penalised) < hellos(&looped), "{looped:?} vs {penalised:?}");
    // Logprobs of a sampled answer: the drawn token is among the listed ones
    // only when likely enough, but its own logprob is always there and finite.
    let a = chat(&d, json!({"messages": user("Name a color."), "max_tokens": 6, "temperature": 0.8, "seed": 4, "logprobs": true, "top_logprobs": 2}));
    let lp = a["choices"][0]["logprobs"]["content"].as_array().unwrap();
    let joined: String = lp.iter().map(|t| t["token"].as_str().unwrap()).collect();
    assert_eq!(joined, content(&a));
    assert!(lp.iter().all(|t| t["logprob"].as_f64().unwrap() <= 0.0 && t["top_logprobs"].as_array().unwrap().len() == 2), "{a}");
    // Jobs carry the same parameters, and their results the same shapes.
    let (s, j, _) = post_job(&d.url, &json!({"messages": user("List three fruits."), "max_tokens": 80, "temperature": 0,
        "response_format": {"type": "json_object"}}), None);
    assert_eq!(s, 202, "{j}");
    let (_, j) = http("GET", &format!("{}/v1/jobs/{}?wait=120", d.url, j["id"].as_str().unwrap()), None);
    assert_eq!(j["request"]["response_format"], json!({"type": "json_object"}), "{j}");
    assert!(serde_json::from_str::<Value>(&content(&j["result"])).unwrap().is_object(), "{j}");
}

#[test]
fn the_echo_engine_refuses_what_it_cannot_do_and_bad_schemas_are_400() {
    let d = Daemon::start(&echo_config(0, 1, &[]));
    let post = |b: Value| http("POST", &format!("{}/v1/chat/completions", d.url), Some(&b.to_string()));
    let (s, b) = post(json!({"messages": user("hi"), "response_format": {"type": "json_object"}}));
    assert!(s >= 400 && b["error"]["message"].as_str().unwrap().contains("cannot"), "{s} {b}");
    let (s, b) = post(json!({"messages": user("hi"), "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "banana"}}}}));
    assert_eq!((s, b["error"]["param"].as_str()), (400, Some("response_format")), "{b}");
    let (s, b) = post(json!({"messages": user("hi"), "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}}}));
    assert_eq!((s, b["error"]["param"].as_str()), (400, Some("tool_choice")), "{b}");
    // Nothing was queued for the refused ones.
    let (_, jobs) = http("GET", &format!("{}/v1/jobs", d.url), None);
    assert_eq!(jobs["data"].as_array().unwrap().len(), 1, "{jobs}");
}

// ---------------------------------------------------------------------------
// Durable queue and lifecycle (issue 3).

fn post_job(url: &str, body: &Value, key: Option<&str>) -> (u16, Value, Option<String>) {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let mut req = client.post(format!("{url}/v1/jobs")).json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (status, resp.json().unwrap(), retry)
}

fn ledger(url: &str) -> Vec<Value> {
    let (s, b) = http("GET", &format!("{url}/v1/ledger"), None);
    assert_eq!(s, 200, "{b}");
    b["data"].as_array().unwrap().clone()
}

#[test]
fn hundreds_of_concurrent_submits_survive_sigkill_and_complete_exactly_once() {
    let cfg = echo_config(3, 4, &[]);
    let d = Daemon::start(&cfg);
    let url = d.url.clone();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (url, acked) = (url.clone(), acked.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
                for i in 0..50 {
                    let text = format!("thread {t} job {i} alpha beta gamma");
                    let body = json!({"messages": user(&text)});
                    match client.post(format!("{url}/v1/jobs")).json(&body).send() {
                        Ok(r) if r.status() == 202 => {
                            let j: Value = r.json().unwrap();
                            acked.lock().unwrap().push((j["id"].as_str().unwrap().to_string(), text));
                        }
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        Err(_) => return, // the daemon is gone: this one was never acknowledged
                    }
                }
            })
        })
        .collect();
    // Kill it mid-stream, once a good share has been acknowledged.
    let t0 = std::time::Instant::now();
    while acked.lock().unwrap().len() < 150 {
        assert!(t0.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(5));
    }
    let reuse = d.kill();
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 150);
    let mut d = Daemon::spawn(&cfg, Some(reuse));
    d.wait_ready(Duration::from_secs(30));
    for (id, text) in &acked {
        let (s, j) = http("GET", &format!("{}/v1/jobs/{id}?wait=120", d.url), None);
        assert_eq!(s, 200, "acknowledged job {id} lost: {j}");
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["result"]["choices"][0]["message"]["content"], text.as_str());
    }
    // Exactly once: one ledger record per job, each succeeded.
    let entries = ledger(&d.url);
    let mut per_job = std::collections::HashMap::<String, usize>::new();
    for e in &entries {
        assert_eq!(e["state"], "succeeded", "{e}");
        *per_job.entry(e["job_id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    for (id, _) in &acked {
        assert_eq!(per_job.get(id), Some(&1), "job {id} completed {:?} times", per_job.get(id));
    }
}

#[test]
fn priorities_order_execution_and_positions_are_reported() {
    let d = Daemon::start(&echo_config(100, 1, &[]));
    // A blocker holds the single slot while the rest queue up.
    let (_, blocker, _) = post_job(&d.url, &json!({"messages": user("w w w w w w w w")}), None);
    let t0 = std::time::Instant::now();
    while http("GET", &format!("{}/v1/jobs/{}", d.url, blocker["id"].as_str().unwrap()), None).1["state"] != "running" {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut ids = Vec::new();
    for (name, prio) in [("p5", 5), ("m1a", -1), ("z0", 0), ("m1b", -1)] {
        let (s, j, _) = post_job(&d.url, &json!({"messages": user(name), "priority": prio}), None);
        assert_eq!(s, 202);
        ids.push((name, j["id"].as_str().unwrap().to_string()));
    }
    let pos = |id: &str| http("GET", &format!("{}/v1/jobs/{id}", d.url), None).1["position"].as_u64();
    assert_eq!(pos(&ids[1].1), Some(0));
    assert_eq!(pos(&ids[3].1), Some(1));
    assert_eq!(pos(&ids[2].1), Some(2));
    assert_eq!(pos(&ids[0].1), Some(3));
    let (code, out, _) = sproutctl(&d.url, &["status", &ids[0].1]);
    assert_eq!(code, 0);
    assert!(out.contains("queued (position 4"), "{out}");
    let mut started = Vec::new();
    for (name, id) in &ids {
        let (_, j) = http("GET", &format!("{}/v1/jobs/{id}?wait=60", d.url), None);
        assert_eq!(j["state"], "succeeded");
        assert_eq!(j["position"], Value::Null);
        started.push((j["started_at"].as_f64().unwrap(), *name));
    }
    started.sort_by(|a, b| a.0.total_cmp(&b.0));
    let order: Vec<_> = started.iter().map(|(_, n)| *n).collect();
    assert_eq!(order, ["m1a", "m1b", "z0", "p5"]);
}

#[test]
fn idempotent_repeats_return_the_same_job() {
    let d = Daemon::start(&echo_config(0, 2, &[]));
    let body = json!({"messages": user("only once")});
    let (s1, a, _) = post_job(&d.url, &body, Some("order-42"));
    let (s2, b, _) = post_job(&d.url, &body, Some("order-42"));
    let (s3, c, _) = post_job(&d.url, &body, Some("order-43"));
    assert_eq!((s1, s2, s3), (202, 200, 202));
    assert_eq!(a["id"], b["id"]);
    assert_ne!(a["id"], c["id"]);
    // The chat route honours the key too, answering with the first job's result.
    let client = reqwest::blocking::Client::new();
    let chat = |key: &str| -> Value {
        client
            .post(format!("{}/v1/chat/completions", d.url))
            .header("Idempotency-Key", key)
            .json(&json!({"messages": user("chat once")}))
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    let x = chat("chat-1");
    let y = chat("chat-1");
    assert_eq!(x["id"], y["id"]);
    assert_eq!(x["usage"]["sprout"]["job_id"], y["usage"]["sprout"]["job_id"]);
    // sproutctl --idempotency-key.
    let (_, o1, _) = sproutctl(&d.url, &["submit", "--json", "--idempotency-key", "cli-1", "hello"]);
    let (_, o2, _) = sproutctl(&d.url, &["submit", "--json", "--idempotency-key", "cli-1", "hello"]);
    let (j1, j2): (Value, Value) = (serde_json::from_str(&o1).unwrap(), serde_json::from_str(&o2).unwrap());
    assert_eq!(j1["id"], j2["id"]);
    let (s, b, _) = post_job(&d.url, &body, Some("bad key with spaces"));
    assert_error(s, &b, 400, Some("Idempotency-Key"));
}

#[test]
fn the_queue_limit_holds_under_16_concurrent_submitters() {
    // The engine loads for a minute: nothing leaves the queue meanwhile.
    let d = Daemon::spawn(
        &echo_config(0, 1, &[("max_queued = 100000", "max_queued = 50"), ("cpu = true", "cpu = true\necho_load_delay_ms = 60000")]),
        None,
    );
    let t0 = Instant::now();
    while reqwest::blocking::get(format!("{}/healthz", d.url)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30), "sproutd did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let url = d.url.clone();
            std::thread::spawn(move || {
                let (mut ok, mut full) = (0, 0);
                for _ in 0..10 {
                    match post_job(&url, &json!({"messages": user("hi")}), None).0 {
                        202 => ok += 1,
                        429 => full += 1,
                        other => panic!("unexpected {other}"),
                    }
                }
                (ok, full)
            })
        })
        .collect();
    let (ok, full) = handles.into_iter().map(|h| h.join().unwrap()).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert_eq!(ok + full, 160);
    assert!(ok <= 50, "{ok} accepted over a limit of 50");
    // A submit being inserted may count twice for a moment (refused early,
    // never over): at most one per concurrent submitter.
    assert!(ok >= 50 - 16, "only {ok} accepted");
    let (_, h) = http("GET", &format!("{}/healthz", d.url), None);
    assert_eq!(h["queued"], ok, "{h}");
}

#[test]
fn a_full_queue_answers_429_with_retry_after_and_long_prompts_400() {
    let d = Daemon::start(&echo_config(
        500,
        1,
        &[("max_queued = 100000", "max_queued = 3"), ("max_prompt_chars = 200000", "max_prompt_chars = 1000")],
    ));
    let body = json!({"messages": user("a b c d e f g h i j")});
    let mut accepted = 0;
    let mut rejected = None;
    for _ in 0..6 {
        let (s, b, retry) = post_job(&d.url, &body, None);
        match s {
            202 => accepted += 1,
            429 => {
                rejected = Some((b, retry));
                break;
            }
            other => panic!("unexpected {other}: {b}"),
        }
    }
    // One running plus three queued fit; the next is refused.
    assert_eq!(accepted, 4);
    let (b, retry) = rejected.expect("a 429");
    assert_error(429, &b, 429, None);
    assert_eq!(b["error"]["code"], "queue_full");
    assert!(retry.unwrap().parse::<u64>().unwrap() > 0);
    let (s, b) = http("POST", &format!("{}/v1/chat/completions", d.url), Some(&json!({"messages": user(&"x".repeat(2000))}).to_string()));
    assert_error(s, &b, 400, Some("messages"));
    assert_eq!(b["error"]["code"], "context_length_exceeded");
    // Accepted work was not lost to the rejections.
    let (_, list) = http("GET", &format!("{}/v1/jobs", d.url), None);
    assert_eq!(list["data"].as_array().unwrap().len(), 4);
}

#[test]
fn an_api_token_guards_every_route_but_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = with_file_setting(&echo_config(0, 1, &[]), dir.path(), "token_file", "token", "s3cret-token-0123456789\n");
    let d = Daemon::start(&cfg);
    let client = reqwest::blocking::Client::new();
    let get = |path: &str, auth: Option<&str>| {
        let mut r = client.get(format!("{}{path}", d.url));
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        let resp = r.send().unwrap();
        (resp.status().as_u16(), resp.json::<Value>().unwrap())
    };
    for path in ["/v1/models", "/v1/jobs", "/v1/ledger", "/v1/nowhere"] {
        let (s, b) = get(path, None);
        assert_error(s, &b, 401, None);
        let (s, b) = get(path, Some("Bearer wrong"));
        assert_error(s, &b, 401, None);
    }
    assert_eq!(get("/v1/models", Some("Bearer s3cret-token-0123456789")).0, 200);
    // The scheme is case-insensitive (RFC 7235); a prefix of the token is not the token.
    assert_eq!(get("/v1/models", Some("BEARER s3cret-token-0123456789")).0, 200);
    assert_eq!(get("/v1/models", Some("bearer s3cret-token-0123456789")).0, 200);
    assert_eq!(get("/v1/models", Some("Bearer s3cret-token-012345678")).0, 401);
    assert_eq!(get("/healthz", None).0, 200);
    let (code, _, err) = sproutctl(&d.url, &["list"]);
    assert_ne!(code, 0);
    assert!(err.contains("401"), "{err}");
    let out = std::process::Command::new(SPROUTCTL)
        .env("SPROUT_URL", &d.url)
        .env("SPROUT_TOKEN", "s3cret-token-0123456789")
        .args(["submit", "--wait", "with token"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn check_config_reads_the_token_file_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let check = |cfg: &str| {
        std::fs::write(dir.path().join("config.toml"), cfg).unwrap();
        let out = std::process::Command::new(SPROUTD).arg("check-config").arg("--config").arg(dir.path().join("config.toml")).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let missing = echo_config(0, 1, &[("# token_file = \"/etc/sproutd/token\"", "token_file = \"no-such-token\"")]);
    let (code, err) = check(&missing);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no-such-token"), "{err}");
    let ok = with_file_setting(&echo_config(0, 1, &[]), dir.path(), "token_file", "token", "s3cret-token-0123456789\n");
    assert_eq!(check(&ok).0, Some(0));
    let wide = echo_config(0, 1, &[("listen = \"127.0.0.1:7878\"", "listen = \"0.0.0.0:7878\"")]);
    let (code, err) = check(&wide);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("auth.token_file"), "{err}");
}

#[test]
fn listening_beyond_loopback_without_a_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = sproutd_refuses_to_start(dir.path(), &echo_config(0, 1, &[]), "0.0.0.0");
    assert!(err.contains("without an API token") && err.contains("auth.token_file"), "{err}");
}

#[test]
fn a_waiting_chat_whose_client_is_told_to_retry_at_shutdown_is_not_run_for_nobody() {
    let cfg = echo_config(50, 1, &[("shutdown_grace = \"30s\"", "shutdown_grace = \"1s\"")]);
    let mut d = Daemon::start(&cfg);
    let chat = |words: usize| {
        let url = format!("{}/v1/chat/completions", d.url);
        let body = json!({"messages": user(&"w ".repeat(words))}).to_string();
        std::thread::spawn(move || http("POST", &url, Some(&body)))
    };
    // One runs (30 s of tokens), then the other waits in the queue behind it.
    let wait_for = |state: &str| {
        let t0 = Instant::now();
        loop {
            let (_, list) = http("GET", &format!("{}/v1/jobs", d.url), None);
            let found = list["data"].as_array().unwrap().iter().find(|j| j["state"] == state).map(|j| j["id"].as_str().unwrap().to_string());
            if let Some(id) = found {
                return id;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "{list}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let running = chat(600);
    let running_id = wait_for("running");
    let waiting = chat(5);
    let waiting_id = wait_for("queued");
    assert!(d.sigterm().success(), "{}", d.log());
    for client in [running, waiting] {
        let (s, b) = client.join().unwrap();
        assert_error(s, &b, 503, None);
    }
    let reuse = (std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap()), d.port);
    drop(d);
    let mut d = Daemon::spawn(&echo_config(0, 1, &[]), Some(reuse));
    d.wait_ready(Duration::from_secs(30));
    let (_, j) = http("GET", &format!("{}/v1/jobs/{waiting_id}", d.url), None);
    assert_eq!(j["state"], "cancelled", "the queued job was told to retry, so it must not run: {j}");
    // The one that was running is requeued by the drain (not yet cancelled:
    // README "Known issues"); it must at least not be lost.
    let (s, _) = http("GET", &format!("{}/v1/jobs/{running_id}", d.url), None);
    assert_eq!(s, 200);
}

#[test]
fn sigterm_drains_running_jobs_then_exits_zero() {
    // A 1 s job, a 30 s job, a 1 s grace: the short one finishes, the long
    // one is requeued (not counted as an attempt) and runs after a restart.
    let cfg = echo_config(50, 2, &[("shutdown_grace = \"30s\"", "shutdown_grace = \"1500ms\"")]);
    let mut d = Daemon::start(&cfg);
    let (_, short, _) = post_job(&d.url, &json!({"messages": user(&"s ".repeat(20))}), None);
    let (_, long, _) = post_job(&d.url, &json!({"messages": user(&"l ".repeat(600))}), None);
    let (short, long) = (short["id"].as_str().unwrap().to_string(), long["id"].as_str().unwrap().to_string());
    let t0 = std::time::Instant::now();
    while http("GET", &format!("{}/v1/jobs/{long}", d.url), None).1["state"] != "running" {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = d.child.id().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // Draining: new work is refused with 503, the server still answers.
    let (s, b, _) = post_job(&d.url, &json!({"messages": user("late")}), None);
    assert_error(s, &b, 503, None);
    let (s, _) = http("GET", &format!("{}/healthz", d.url), None);
    assert_eq!(s, 503);
    let status = d.sigterm();
    assert!(status.success(), "{status:?}\n{}", d.log());
    assert!(t0.elapsed() < Duration::from_secs(20));
    let reuse = {
        let port = d.port;
        let dir = std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap());
        (dir, port)
    };
    drop(d);
    let mut d = Daemon::spawn(&echo_config(0, 2, &[]), Some(reuse));
    d.wait_ready(Duration::from_secs(30));
    let (_, j) = http("GET", &format!("{}/v1/jobs/{short}", d.url), None);
    assert_eq!(j["state"], "succeeded", "the short job finished during the drain: {j}");
    assert_eq!(j["attempts"], 1);
    let (_, j) = http("GET", &format!("{}/v1/jobs/{long}?wait=60", d.url), None);
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["attempts"], 1, "a graceful requeue is not a failed attempt");
}

#[test]
fn systemd_notify_ready_only_when_serving_and_stopping_on_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let cfg_path = dir.path().join("config.toml");
    std::fs::write(&cfg_path, echo_config(0, 1, &[("cpu = true", "cpu = true\necho_load_delay_ms = 1500")])).unwrap();
    let port = free_port();
    let mut child = KillOnDrop(
        std::process::Command::new(SPROUTD)
            .arg("--config")
            .arg(&cfg_path)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir.path().join("data"))
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "400000")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 256];
    let mut recv = || {
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).trim().to_string()
    };
    let mut first = recv();
    while first == "WATCHDOG=1" {
        first = recv();
    }
    assert_eq!(first, "READY=1");
    assert!(t0.elapsed() >= Duration::from_millis(1400), "READY before the model loaded");
    let (s, _) = http("GET", &format!("http://127.0.0.1:{port}/healthz"), None);
    assert_eq!(s, 200, "READY was sent before the API could serve");
    assert_eq!(recv(), "WATCHDOG=1");
    std::process::Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    let mut msg = recv();
    while msg == "WATCHDOG=1" {
        msg = recv();
    }
    assert_eq!(msg, "STOPPING=1");
    assert!(child.0.wait().unwrap().success());
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(repo().join("systemd/sproutd.service")).unwrap();
    for needed in [
        "Type=notify",
        "DynamicUser=yes",
        "StateDirectory=sproutd",
        "ConfigurationDirectory=sproutd",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
    }
    // Reload is SIGHUP (a SIGTERM "reload" drained it and left it stopped);
    // a config error (sproutd's exit status 2, as a bad config really gives)
    // is not retried forever.
    let reloads: Vec<&str> = unit.lines().filter(|l| l.starts_with("ExecReload=")).collect();
    assert_eq!(reloads, ["ExecReload=/bin/kill -HUP $MAINPID"]);
    let prevented: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("RestartPreventExitStatus="))
        .flat_map(|v| v.split_whitespace())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let bad = config_text(&[("top_p = 0.9", "top_p = 7.0")]);
    let err = sproutd_refuses_to_start(dir.path(), &bad, "127.0.0.1");
    assert!(err.contains("generation.top_p"), "{err}");
    let code = std::process::Command::new(SPROUTD).arg("--config").arg(dir.path().join("config.toml")).status().unwrap().code();
    assert!(code.is_some_and(|c| prevented.contains(&c.to_string().as_str())), "exit {code:?} not in RestartPreventExitStatus {prevented:?}");
    // verify checks that ExecStart exists: point it at the binary under test.
    let path = dir.path().join("sproutd.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/sproutd", SPROUTD)).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd; scripts/setup.sh installs it)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "systemd-analyze verify: {err}");
}

/// The Debian package of the binaries under test (scripts/deb.sh), or `None`
/// (a skip) where the tools it needs are missing.
fn build_deb(tools: &[&str]) -> Option<std::path::PathBuf> {
    for tool in ["dpkg-deb", "dpkg-shlibdeps"].iter().chain(tools) {
        if std::process::Command::new("which").arg(tool).output().map(|o| !o.status.success()).unwrap_or(true) {
            assert!(std::env::var("SPROUT_REQUIRE_MODEL").as_deref() != Ok("1"), "{tool} is missing (scripts/setup.sh installs it)");
            eprintln!("skipping: no {tool}");
            return None;
        }
    }
    // Once per test run (the tests run in parallel and would write the same
    // files), from the binaries under test: their target directory.
    static DEB: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    Some(
        DEB.get_or_init(|| {
            let target = std::path::Path::new(SPROUTD).parent().unwrap().parent().unwrap().to_path_buf();
            let out = std::process::Command::new("bash").arg(repo().join("scripts/deb.sh")).arg("--no-build").env("CARGO_TARGET_DIR", &target).output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
            std::path::PathBuf::from(stdout.lines().last().unwrap().trim())
        })
        .clone(),
    )
}

#[test]
fn the_debian_package_holds_the_binaries_the_unit_and_a_conffile_with_an_absolute_model_path() {
    let Some(deb) = build_deb(&["systemd-analyze"]) else { return };
    let run = |args: &[&std::ffi::OsStr]| {
        let o = std::process::Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    let fields = run(&[&os("dpkg-deb"), &os("-f"), deb.as_os_str(), &os("Package"), &os("Version"), &os("Depends"), &os("Architecture")]);
    assert!(fields.contains("Package: sprout\n") && fields.contains(&format!("Version: {}-1\n", env!("CARGO_PKG_VERSION"))), "{fields}");
    assert!(fields.contains("Depends: libc6 (>= "), "{fields}");
    let files = run(&[&os("dpkg-deb"), &os("-c"), deb.as_os_str()]);
    for f in ["./usr/bin/sproutd", "./usr/bin/sproutctl", "./etc/sproutd/config.toml", "./lib/systemd/system/sproutd.service", "./usr/share/doc/sprout/README.md"] {
        assert!(files.lines().any(|l| l.ends_with(f) && l.contains("root/root")), "{f} not in the package:\n{files}");
    }
    let dir = tempfile::tempdir().unwrap();
    let (ctl, fs) = (dir.path().join("DEBIAN"), dir.path().join("root"));
    run(&[&os("dpkg-deb"), &os("-e"), deb.as_os_str(), ctl.as_os_str()]);
    run(&[&os("dpkg-deb"), &os("-x"), deb.as_os_str(), fs.as_os_str()]);
    assert_eq!(std::fs::read_to_string(ctl.join("conffiles")).unwrap(), "/etc/sproutd/config.toml\n");
    for s in ["postinst", "prerm", "postrm"] {
        assert!(ctl.join(s).is_file(), "no {s}");
    }
    // The binaries are the ones built; the conffile names the model by its absolute path.
    assert_eq!(std::fs::read(fs.join("usr/bin/sproutd")).unwrap(), std::fs::read(SPROUTD).unwrap());
    let config = fs.join("etc/sproutd/config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("\npath = \"/var/lib/sproutd/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf\"\n"), "{text}");
    // check-config reads it, and refuses it while the model is not in place (exit 2: the unit does not retry).
    let o = std::process::Command::new(fs.join("usr/bin/sproutd")).arg("check-config").arg("--config").arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    if std::path::Path::new("/var/lib/sproutd/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf").exists() {
        assert!(o.status.success(), "{err}");
    } else {
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("/var/lib/sproutd/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") && err.lines().count() == 1, "{err}");
    }
    // The unit starts the packaged binary; systemd-analyze verifies it there.
    let unit = std::fs::read_to_string(fs.join("lib/systemd/system/sproutd.service")).unwrap();
    assert!(unit.contains("\nExecStart=/usr/bin/sproutd "), "{unit}");
    let checked = dir.path().join("sproutd.service");
    std::fs::write(&checked, unit.replace("/usr/bin/sproutd", &fs.join("usr/bin/sproutd").display().to_string())).unwrap();
    let o = std::process::Command::new("systemd-analyze").arg("verify").arg(&checked).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.trim().is_empty(), "systemd-analyze verify: {err}");
}

/// The package installed on a booted systemd: systemd runs as PID 1 in new
/// PID and mount namespaces, on a tmpfs overlay of this machine's root
/// (nothing outside the overlay changes; killing `unshare` ends it all),
/// with the package installed by dpkg and the echo engine configured.
#[test]
fn the_debian_package_runs_under_a_booted_systemd() {
    let booted_systemd = std::path::Path::new("/lib/systemd/systemd");
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !booted_systemd.exists() {
        assert!(std::env::var("SPROUT_REQUIRE_MODEL").as_deref() != Ok("1"), "needs root and systemd (scripts/setup.sh installs it)");
        eprintln!("skipping: needs root and /lib/systemd/systemd");
        return;
    }
    let Some(deb) = build_deb(&["unshare", "nsenter"]) else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let w = dir.path();
    // The same steps systemd-nspawn takes, by hand (it is not installed here).
    let inner = format!(
        r#"set -e
mount -t tmpfs tmpfs {w}/upper
mkdir -p {w}/upper/u {w}/upper/w {w}/root
mount -t overlay overlay -o lowerdir=/,upperdir={w}/upper/u,workdir={w}/upper/w {w}/root
mount -t proc proc {w}/root/proc
mount --rbind /sys {w}/root/sys
mount --rbind /dev {w}/root/dev
mount -t tmpfs tmpfs {w}/root/run
mount -t tmpfs tmpfs {w}/root/tmp
cp {deb} {w}/root/tmp/sprout.deb
chroot {w}/root dpkg -i /tmp/sprout.deb
chroot {w}/root sed -i 's/^kind = "gguf"/kind = "echo"/; s/^name = "qwen2.5-coder-0.5b-instruct"/name = "echo"/; s/^listen = .*/listen = "127.0.0.1:{port}"/' /etc/sproutd/config.toml
for u in $(chroot {w}/root systemctl list-unit-files --state=enabled --no-legend | cut -d' ' -f1); do chroot {w}/root systemctl mask "$u" >/dev/null 2>&1 || true; done
chroot {w}/root systemctl mask getty.target remote-fs.target >/dev/null 2>&1 || true
chroot {w}/root systemctl enable sproutd.service
exec chroot {w}/root env container=sprout-test /lib/systemd/systemd --system --unit=multi-user.target --log-target=console
"#,
        w = w.display(),
        deb = deb.display(),
    );
    std::fs::create_dir(w.join("upper")).unwrap();
    std::fs::write(w.join("inner.sh"), inner).unwrap();
    let log = std::fs::File::create(w.join("boot.log")).unwrap();
    let child = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount", "--propagation", "private", "--kill-child", "bash"])
        .arg(w.join("inner.sh"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let unshare = child.id();
    let _guard = KillOnDrop(child);
    let boot_log = || std::fs::read_to_string(w.join("boot.log")).unwrap_or_default();
    let url = format!("http://127.0.0.1:{port}");
    let t0 = Instant::now();
    while http_status(&format!("{url}/health")) != Some(200) {
        assert!(t0.elapsed() < Duration::from_secs(90), "sproutd did not come up under systemd:\n{}", boot_log());
        std::thread::sleep(Duration::from_millis(250));
    }
    // systemd is unshare's child; systemctl talks to it inside its namespaces and root.
    let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap();
    let pid = children.split_whitespace().next().expect("systemd").to_string();
    let systemctl = |args: &[&str]| {
        let o = std::process::Command::new("nsenter").args(["-t", &pid, "-m", "-p", "-r", "systemctl"]).args(args).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stdout).trim().to_string(), String::from_utf8_lossy(&o.stderr).trim().to_string())
    };
    assert_eq!(systemctl(&["is-active", "sproutd"]).1, "active");
    let props = systemctl(&["show", "sproutd", "-p", "User", "-p", "Type", "-p", "StatusErrno"]).1;
    assert!(props.contains("User=sproutd") && props.contains("Type=notify"), "{props}");
    let (s, b) = http("POST", &format!("{url}/v1/chat/completions"), Some(&json!({"messages": user("hello from systemd")}).to_string()));
    assert_eq!((s, b["usage"]["sprout"]["estimated"].as_bool()), (200, Some(true)), "{b}");
    // Reload: SIGHUP re-reads the config; here the optimizer off and every request at L2.
    let edit = std::process::Command::new("nsenter")
        .args(["-t", &pid, "-m", "-p", "-r", "sed", "-i", "-e", "0,/^enabled = true/s//enabled = false/", "-e", "s/^mix = .*/mix = { L0 = 0.0, L1 = 0.0, L2 = 1.0 }/", "/etc/sproutd/config.toml"])
        .status()
        .unwrap();
    assert!(edit.success());
    let (code, _, err) = systemctl(&["reload", "sproutd"]);
    assert_eq!(code, Some(0), "{err}");
    let t0 = Instant::now();
    loop {
        let (s, b) = http("POST", &format!("{url}/v1/chat/completions"), Some(&json!({"messages": user("after the reload")}).to_string()));
        assert_eq!(s, 200, "{b}");
        if b["usage"]["sprout"]["directive"] == "L2" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the reload did not take: {b}\n{}", systemctl(&["status", "sproutd"]).1);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(systemctl(&["is-active", "sproutd"]).1, "active");
    assert!(systemctl(&["show", "sproutd", "-p", "StatusText"]).1.contains("config reloaded"));
    // Stop drains and exits 0; start serves the same store.
    assert_eq!(systemctl(&["stop", "sproutd"]).0, Some(0));
    let props = systemctl(&["show", "sproutd", "-p", "ActiveState", "-p", "Result", "-p", "ExecMainStatus"]).1;
    assert!(props.contains("ActiveState=inactive") && props.contains("Result=success") && props.contains("ExecMainStatus=0"), "{props}");
    assert_eq!(http_status(&format!("{url}/health")), None);
    assert_eq!(systemctl(&["start", "sproutd"]).0, Some(0), "{}", boot_log());
    assert_eq!(http_status(&format!("{url}/health")), Some(200), "start returns once READY=1 is sent");
    let (_, jobs) = http("GET", &format!("{url}/v1/jobs"), None);
    assert!(jobs["data"].as_array().is_some_and(|j| j.len() >= 2 && j.iter().any(|j| j["request"]["messages"][0]["content"] == "hello from systemd")), "{jobs}");
    let _ = systemctl(&["poweroff"]);
}

fn http_status(url: &str) -> Option<u16> {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(2)).build().unwrap().get(url).send().ok().map(|r| r.status().as_u16())
}

#[test]
fn sighup_reloads_directives_optimizer_and_token_and_a_bad_config_changes_nothing() {
    let secrets = tempfile::tempdir().unwrap();
    let base = echo_config(0, 1, &[("mix = { L0 = 0.4, L1 = 0.3, L2 = 0.3 }", "mix = { L0 = 1.0, L1 = 0.0, L2 = 0.0 }"), ("enabled = true", "enabled = false")]);
    let cfg = with_file_setting(&base, secrets.path(), "token_file", "token", "first-token-0123456789");
    let d = Daemon::start(&cfg);
    let call = |token: &str| {
        let client = reqwest::blocking::Client::new();
        let r = client.post(format!("{}/v1/chat/completions", d.url)).bearer_auth(token).json(&json!({"messages": user("a b c")})).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().unwrap())
    };
    let (s, b) = call("first-token-0123456789");
    assert_eq!((s, b["usage"]["sprout"]["directive"].as_str()), (200, Some("L0")), "{b}");
    let hup = |d: &Daemon| assert_eq!(unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) }, 0);
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
        let t0 = Instant::now();
        while !ok() {
            assert!(t0.elapsed() < Duration::from_secs(10), "{what}: not after 10 s\n{}", d.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // A new mix, a new token (the same file, new content), the optimizer
    // on, and a change that needs a restart.
    let path = d.dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(secrets.path().join("token"), "second-token-0123456789").unwrap();
    let text = text.replace("mix = { L0 = 1.0, L1 = 0.0, L2 = 0.0 }", "mix = { L0 = 0.0, L1 = 0.0, L2 = 1.0 }").replace("max_queued = 100000", "max_queued = 5");
    assert!(text.contains("L2 = 1.0") && text.contains("max_queued = 5"));
    std::fs::write(&path, &text).unwrap();
    hup(&d);
    wait_for("the new token", &|| call("second-token-0123456789").0 == 200);
    assert_eq!(call("first-token-0123456789").0, 401);
    let (_, b) = call("second-token-0123456789");
    assert_eq!(b["usage"]["sprout"]["directive"], "L2", "{b}");
    assert!(d.log().contains("config reloaded"), "{}", d.log());
    assert!(d.log().contains("keep their running values") && d.log().contains("queue"), "{}", d.log());
    // A broken file: refused with the reason, everything as it was.
    std::fs::write(&path, text.replace("[queue]", "[queue\n")).unwrap();
    hup(&d);
    wait_for("the refusal in the log", &|| d.log().contains("reload refused"));
    let (s, b) = call("second-token-0123456789");
    assert_eq!((s, b["usage"]["sprout"]["directive"].as_str()), (200, Some("L2")), "{b}");
    // A token file that cannot be read is refused too (the old token stays).
    std::fs::write(&path, &text).unwrap();
    std::fs::remove_file(secrets.path().join("token")).unwrap();
    let refusals = d.log().matches("reload refused").count();
    hup(&d);
    wait_for("a second refusal", &|| d.log().matches("reload refused").count() > refusals);
    assert_eq!(call("second-token-0123456789").0, 200);
    // The plan: with the optimizer turned on by a reload, it solves.
    std::fs::write(secrets.path().join("token"), "second-token-0123456789").unwrap();
    std::fs::write(&path, text.replace("enabled = false", "enabled = true")).unwrap();
    hup(&d);
    let client = reqwest::blocking::Client::new();
    wait_for("a plan solved after the reload", &|| {
        let plan: Value = client.get(format!("{}/v1/plan", d.url)).bearer_auth("second-token-0123456789").send().unwrap().json().unwrap();
        plan["enabled"] == true && plan["reason"] == "reload"
    });
}

#[test]
fn the_checked_in_store_fixture_still_opens() {
    // tests/fixtures/store-v1 was written by schema version 1 (see
    // `write_store_fixture`); a change to the format must keep reading it.
    let dir = tempfile::tempdir().unwrap();
    let src = repo().join("tests/fixtures/store-v1");
    copy_dir(&src, &dir.path().join("data"));
    // Its finished job is older than the default retention (7 days) by now:
    // kept for good here, so the test does not expire with the calendar.
    let mut d = Daemon::spawn(&echo_config(0, 1, &[("result_retention = \"7d\"", "result_retention = \"36500d\"")]), Some((dir, free_port())));
    d.wait_ready(Duration::from_secs(30));
    let (_, all) = http("GET", &format!("{}/v1/jobs", d.url), None);
    let all = all["data"].as_array().unwrap().clone();
    assert_eq!(all.len(), 2, "{all:?}");
    let prompt = |j: &Value| j["request"]["messages"][0]["content"].as_str().unwrap().to_string();
    let done = all.iter().find(|j| prompt(j) == "fixture answer").expect("the finished job");
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["result"]["choices"][0]["message"]["content"], "fixture answer");
    assert_eq!(done["directive"], "L1");
    // Its idempotency key is still known.
    let (s, again, _) = post_job(&d.url, &json!({"messages": user("x")}), Some("fixture-key"));
    assert_eq!((s, &again["id"]), (200, &done["id"]));
    // The fixture's queued job runs on this version.
    let queued = all.iter().find(|j| prompt(j) == "still queued in the fixture").expect("the queued job");
    let (_, j) = http("GET", &format!("{}/v1/jobs/{}?wait=30", d.url, queued["id"].as_str().unwrap()), None);
    assert_eq!(j["state"], "succeeded");
    assert_eq!(j["result"]["choices"][0]["message"]["content"], "still queued in the fixture");
    assert_eq!(ledger(&d.url).len(), 2);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Writes tests/fixtures/store-v1: run once per schema version with
/// `cargo test --release --test it write_store_fixture -- --ignored`.
#[test]
#[ignore]
fn write_store_fixture() {
    let target = repo().join("tests/fixtures/store-v1");
    let _ = std::fs::remove_dir_all(&target);
    let d = Daemon::start(&echo_config(0, 1, &[]));
    let (_, j, _) = post_job(&d.url, &json!({"messages": user("fixture answer"), "directive": "L1"}), Some("fixture-key"));
    let (_, j) = http("GET", &format!("{}/v1/jobs/{}?wait=30", d.url, j["id"].as_str().unwrap()), None);
    assert_eq!(j["state"], "succeeded");
    let mut d = d;
    assert!(d.sigterm().success());
    // A queued job, written by the store itself.
    let store = sprout::store::Store::open(&d.data_dir).unwrap();
    let seq = store.next_seq().unwrap();
    let req = sprout::job::ChatRequest {
        seed: Some(1),
        directive: Some("L0".into()),
        ..sprout::testing::chat_request("echo", "still queued in the fixture")
    };
    let new = sprout::store::NewJob {
        origin: sprout::job::Origin::Job,
        priority: 0,
        request: req,
        idempotency_key: None,
        deadline_ms: None,
        deferral: None,
    };
    tokio::runtime::Runtime::new().unwrap().block_on(store.submit(seq, new, "L0".into(), 1)).unwrap();
    drop(store);
    copy_dir(&d.data_dir, &target);
}

// ---------------------------------------------------------------------------
// Carbon intensity (first part of the accounting issue).

#[test]
fn receipts_use_the_trace_intensity_and_carbon_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let flat = "datetime,gco2_per_kwh\n2023-01-01 00:00:00,250\n2023-01-01 01:00:00,250\n";
    let cfg = with_file_setting(&echo_config(0, 1, &[]), dir.path(), "trace_file", "flat.csv", flat);
    let d = Daemon::start(&cfg);
    let (s, b) = http("POST", &format!("{}/v1/chat/completions", d.url), Some(&json!({"messages": user("a b c")}).to_string()));
    assert_eq!(s, 200, "{b}");
    let r = &b["usage"]["sprout"];
    assert_eq!(r["intensity_gco2_per_kwh"], 250.0);
    let op = r["energy_j"].as_f64().unwrap() / 3.6e6 * 250.0;
    assert!((r["operational_g"].as_f64().unwrap() - op).abs() < 1e-12, "{r}");
    let (s, c) = http("GET", &format!("{}/v1/carbon", d.url), None);
    assert_eq!(s, 200);
    assert_eq!(c["now"]["gco2_per_kwh"], 250.0);
    assert_eq!(c["forecast"].as_array().unwrap().len(), 24);
    let past = c["past"].as_array().unwrap();
    assert_eq!(past.len(), 24, "{c}");
    assert!(past.iter().all(|r| r["gco2_per_kwh"] == 250.0), "{c}");
    assert!(c["source"]["name"].as_str().unwrap().ends_with("flat.csv"));
    let (code, out, _) = sproutctl(&d.url, &["carbon"]);
    assert_eq!(code, 0);
    assert!(out.contains("intensity now: 250 gCO2e/kWh") && out.contains(&format!("past hours:    {}", ["250"; 24].join(" "))), "{out}");
}

#[test]
fn the_builtin_trace_serves_by_default_and_a_bad_trace_stops_startup() {
    let d = Daemon::start(&echo_config(0, 1, &[]));
    let (_, c) = http("GET", &format!("{}/v1/carbon", d.url), None);
    assert!(c["source"]["name"].as_str().unwrap().contains("GB 2023"), "{c}");
    let v = c["now"]["gco2_per_kwh"].as_f64().unwrap();
    assert!((0.0..1000.0).contains(&v));
    drop(d);
    let dir = tempfile::tempdir().unwrap();
    let cfg = with_file_setting(&echo_config(0, 1, &[]), dir.path(), "trace_file", "bad.csv", "when,how much\n1,2\n");
    let err = sproutd_refuses_to_start(dir.path(), &cfg, "127.0.0.1");
    assert!(err.contains("bad.csv") && err.contains("unknown trace header"), "{err}");
}

#[test]
fn stats_agree_with_the_ledger_and_metrics_parse_as_prometheus_text() {
    let d = Daemon::start(&echo_config(0, 1, &[]));
    for (text, level) in [("a b c d e f", "L0"), ("a b c d", "L0"), ("a b", "L2"), ("x", "L1")] {
        let (s, b) = http("POST", &format!("{}/v1/chat/completions", d.url), Some(&json!({"messages": user(text), "directive": level}).to_string()));
        assert_eq!(s, 200, "{b}");
    }
    let (_, stats) = http("GET", &format!("{}/v1/stats", d.url), None);
    let entries = ledger(&d.url);
    assert_eq!(stats["requests"], entries.len());
    let sum = |k: &str| entries.iter().map(|e| e[k].as_f64().unwrap()).sum::<f64>();
    assert!((stats["carbon_g"].as_f64().unwrap() - sum("carbon_g")).abs() < 1e-9);
    assert!((stats["energy_j"].as_f64().unwrap() - sum("energy_j")).abs() < 1e-9);
    assert_eq!(stats["completion_tokens"].as_f64().unwrap(), sum("completion_tokens"));
    assert_eq!(stats["levels"]["L0"]["totals"]["requests"], 2);
    assert_eq!(stats["levels"]["L0"]["mean_completion_tokens"], 5.0);
    assert!(stats["savings"]["carbon_g"].is_f64(), "{stats}");
    // sproutctl stats reads the same numbers.
    let (code, out, err) = sproutctl(&d.url, &["stats"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("requests:  4") && out.contains("saved:"), "{out}");
    // /metrics, through the Prometheus project's own text-format parser.
    let (s, _) = http("GET", &format!("{}/metrics", d.url), None);
    assert_eq!(s, 200);
    // Naming conventions: counters end in _total, shares in _ratio, and what
    // can fall (net savings) is a gauge.
    let text = reqwest::blocking::get(format!("{}/metrics", d.url)).unwrap().text().unwrap();
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut it = line["# TYPE ".len()..].split(' ');
        let (name, kind) = (it.next().unwrap(), it.next().unwrap());
        assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
        assert!(!name.contains("share") && !name.contains("mix") || name.ends_with("_ratio"), "{line}");
    }
    assert!(text.contains("# TYPE sproutd_carbon_saved_grams gauge") && text.contains("# TYPE sproutd_deferral_saved_grams gauge"), "{text}");
    // Prometheus' own linter.
    promtool_check(&text);
    let python = match std::env::var("SPROUT_PYTHON") {
        Ok(p) => p,
        Err(_) if std::env::var("SPROUT_REQUIRE_MODEL").as_deref() == Ok("1") => panic!("SPROUT_PYTHON is not set"),
        Err(_) => return,
    };
    let script = r#"
import sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
text = urllib.request.urlopen(sys.argv[1] + "/metrics").read().decode()
samples = {}
for fam in text_string_to_metric_families(text):
    for s in fam.samples:
        samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
print(samples[("sproutd_requests_total", (("directive", "L0"), ("origin", "user")))])
print(samples[("sproutd_tokens_total", (("directive", "L0"), ("kind", "completion"), ("origin", "user")))])
print(samples[("sproutd_requests_total", (("directive", "L0"), ("origin", "daemon")))])
print(samples[("sproutd_jobs", (("state", "queued"),))])
print(samples[("sproutd_up", ())])
print(samples[("sproutd_request_completion_tokens_count", (("origin", "user"),))])
print(samples[("sproutd_request_completion_tokens_sum", (("origin", "user"),))])
print(samples[("sproutd_request_completion_tokens_bucket", (("le", "+Inf"), ("origin", "user")))])
print(samples[("sproutd_request_completion_tokens_bucket", (("le", "1"), ("origin", "user")))])
print(samples[("sproutd_time_to_first_token_seconds_count", (("origin", "user"),))])
print(samples[("sproutd_request_duration_seconds_count", (("origin", "daemon"),))])
"#;
    let out = std::process::Command::new(python).args(["-c", script, &d.url]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<f64> = String::from_utf8_lossy(&out.stdout).lines().map(|l| l.parse().unwrap()).collect();
    // The histograms: 4 user requests of 6, 4, 2 and 1 tokens (one at or below 1).
    assert_eq!(lines, [2.0, 10.0, 0.0, 0.0, 1.0, 4.0, 13.0, 4.0, 1.0, 4.0, 0.0]);
}

// ---------------------------------------------------------------------------
// Live carbon sources and energy meters, through the daemon.

/// A GB Carbon Intensity API on loopback: the current half hour at `value`,
/// or HTTP 500 once `failing` is set.
fn fake_gb_api(value: u32, failing: std::sync::Arc<std::sync::atomic::AtomicBool>) -> String {
    use axum::extract::Path as UrlPath;
    use axum::response::IntoResponse;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/intensity/{from}/fw48h",
                axum::routing::get(move |UrlPath(from): UrlPath<String>| {
                    let failing = failing.clone();
                    async move {
                        if failing.load(std::sync::atomic::Ordering::SeqCst) {
                            return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
                        }
                        let periods: Vec<Value> = (0..96)
                            .map(|_| json!({"from": from.clone(), "intensity": {"forecast": value, "actual": null, "index": "low"}}))
                            .collect();
                        axum::Json(json!({"data": periods})).into_response()
                    }
                }),
            );
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    url
}

#[test]
fn a_live_carbon_source_feeds_receipts_and_its_failure_engages_the_fallback() {
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = fake_gb_api(123, failing.clone());
    let url_line = format!("url = {url:?}");
    let cfg = echo_config(0, 1, &[
        ("source = \"trace\"", "source = \"uk\""),
        ("# url = \"https://api.electricitymaps.com/v4\"", &url_line),
        ("poll_interval = \"5m\"", "poll_interval = \"500ms\""),
        ("retries = 3", "retries = 0"),
        ("max_age = \"2h\"", "max_age = \"2s\""),
    ]);
    let d = Daemon::start(&cfg);
    let deadline = Instant::now() + Duration::from_secs(10);
    let carbon = loop {
        let (_, c) = http("GET", &format!("{}/v1/carbon", d.url), None);
        if c["source"]["fetched_at"].is_i64() || Instant::now() > deadline {
            break c;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(carbon["source"]["kind"], "uk", "{carbon}");
    assert_eq!(carbon["source"]["fallback"], false, "{carbon}");
    assert_eq!(carbon["now"]["gco2_per_kwh"], 123.0, "{carbon}");
    assert_eq!(carbon["source"]["forecast"], "provider");
    let (s, b) = http("POST", &format!("{}/v1/chat/completions", d.url), Some(&json!({"messages": user("a b")}).to_string()));
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["usage"]["sprout"]["intensity_gco2_per_kwh"], 123.0);

    // The API goes down: the last value serves for max_age, then the built-in trace.
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(15);
    let carbon = loop {
        let (_, c) = http("GET", &format!("{}/v1/carbon", d.url), None);
        if c["source"]["fallback"] == true || Instant::now() > deadline {
            break c;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(carbon["source"]["fallback"], true, "{carbon}");
    assert!(carbon["source"]["last_error"].as_str().unwrap().contains("HTTP 500"), "{carbon}");
    assert!(carbon["source"]["fallback_name"].as_str().unwrap().contains("GB 2023"), "{carbon}");
    assert!(carbon["source"]["age_s"].as_i64().unwrap() >= 2);
    let (code, out, _) = sproutctl(&d.url, &["carbon"]);
    assert_eq!(code, 0);
    assert!(out.contains("FALLBACK in use") && out.contains("HTTP 500"), "{out}");
    let text = reqwest::blocking::get(format!("{}/metrics", d.url)).unwrap().text().unwrap();
    assert!(text.contains("sproutd_carbon_source_fallback{source=\"uk\"} 1"), "{text}");
}

#[test]
fn the_rapl_meter_measures_receipts_and_a_missing_meter_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("powercap/intel-rapl:0");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("name"), "package-0\n").unwrap();
    std::fs::write(pkg.join("max_energy_range_uj"), "262143328850\n").unwrap();
    std::fs::write(pkg.join("energy_uj"), "262140000000\n").unwrap();
    let root_line = format!("rapl_root = {:?}", dir.path().join("powercap").display().to_string());
    let cfg = echo_config(20, 1, &[("meter = \"auto\"", "meter = \"rapl\""), ("rapl_root = \"/sys/class/powercap\"", &root_line)]);
    // The "CPU" draws 50 W: the counter advances 0.5 J every 10 ms, and wraps.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (stop2, energy) = (stop.clone(), pkg.join("energy_uj"));
    let writer = std::thread::spawn(move || {
        let mut uj: u64 = 262_140_000_000;
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
            uj = (uj + 500_000) % 262_143_328_850;
            // Written aside and renamed over the counter: a reader never sees a half-written
            // (empty) file, as it never does in sysfs.
            let tmp = energy.with_extension("tmp");
            std::fs::write(&tmp, format!("{uj}\n")).unwrap();
            std::fs::rename(&tmp, &energy).unwrap();
        }
    });
    let d = Daemon::start(&cfg);
    let t0 = Instant::now();
    let (s, b) = http("POST", &format!("{}/v1/chat/completions", d.url), Some(&json!({"messages": user("one two three four five six seven eight")}).to_string()));
    let wall = t0.elapsed().as_secs_f64();
    assert_eq!(s, 200, "{b}");
    let r = &b["usage"]["sprout"];
    assert_eq!(r["estimated"], false, "{r}");
    let e = r["energy_j"].as_f64().unwrap();
    // About 50 W over the request's time (the writer is not exact: loose bounds).
    assert!(e > 0.0 && e < 50.0 * wall * 1.5 + 1.0, "{e} J over {wall} s");
    let (_, stats) = http("GET", &format!("{}/v1/stats", d.url), None);
    assert_eq!(stats["meter"]["measured"], true, "{stats}");
    assert_eq!(stats["measured_requests"], 1);
    assert_eq!(stats["meter"]["meter"], "rapl (package-0)");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    drop(d);

    let cfg = echo_config(0, 1, &[("meter = \"auto\"", "meter = \"rapl\""), ("rapl_root = \"/sys/class/powercap\"", "rapl_root = \"/nonexistent/powercap\"")]);
    let err = sproutd_refuses_to_start(dir.path(), &cfg, "127.0.0.1");
    assert!(err.contains("accounting.meter = \"rapl\": no RAPL zones under /nonexistent/powercap"), "{err}");
}

#[test]
fn without_a_counter_energy_is_estimated_and_labelled_so() {
    let d = Daemon::start(&echo_config(5, 1, &[("rapl_root = \"/sys/class/powercap\"", "rapl_root = \"/nonexistent\"")]));
    let (s, b) = http("POST", &format!("{}/v1/chat/completions", d.url), Some(&json!({"messages": user("a b c d")}).to_string()));
    assert_eq!(s, 200, "{b}");
    let r = &b["usage"]["sprout"];
    assert_eq!(r["estimated"], true);
    // At least the idle draw (20 W) over the time it ran.
    assert!(r["energy_j"].as_f64().unwrap() >= 20.0 * r["duration_s"].as_f64().unwrap() * 0.9, "{r}");
    let (_, stats) = http("GET", &format!("{}/v1/stats", d.url), None);
    assert!(stats["meter"]["meter"].as_str().unwrap().starts_with("estimate"), "{stats}");
    assert_eq!(stats["estimated_requests"], 1);
}

// The directive optimizer's re-solves and deferral to a low-carbon hour are
// tested on the daemon's own clock, in process: tests/clock.rs.

// ---------------------------------------------------------------------------
// The quality evaluator.

#[test]
fn an_evaluation_run_queues_its_own_metered_work_and_counts_unreadable_verdicts() {
    let d = Daemon::start(&echo_config(0, 1, &[]));
    // Nothing sampled yet: a clear refusal.
    let (s, e) = http("POST", &format!("{}/v1/eval/runs", d.url), Some(&json!({"wait": true}).to_string()));
    assert_eq!(s, 409, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("no prompts sampled"), "{e}");
    // Open instructions: no final answer to compare, so the judge decides.
    for (text, store) in [("Write a haiku about the sea.", json!(null)), ("Write a limerick about a cat.", json!(true)), ("my secret question", json!(false))] {
        let (s, b) = http("POST", &format!("{}/v1/chat/completions", d.url), Some(&json!({"messages": user(text), "store": store}).to_string()));
        assert_eq!(s, 200, "{b}");
    }
    let (_, st) = http("GET", &format!("{}/v1/eval/status", d.url), None);
    assert_eq!(st["samples"], 2, "the opted-out prompt is not kept: {st}");
    assert!(st["q"].is_null(), "no prior stands in for a measurement: {st}");
    assert_eq!(st["kept"]["instruction"][1]["n"], 0, "{st}");
    // The echo engine echoes the judge's instructions back: no reply names
    // one answer, so every verdict is a counted failure and q stays unset.
    let (code, out, err) = sproutctl(&d.url, &["eval", "run", "--prompts", "2", "--wait", "--json"]);
    assert_eq!(code, 0, "{err}");
    let run: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(run["verdicts"].as_array().unwrap().len(), 2);
    assert_eq!(run["judge_calls"], 6, "3 rotations x 2 prompts");
    assert_eq!(run["failures"], 6);
    assert!(run["q"].is_null() && run["error"].as_str().unwrap().contains("nothing changes"), "{run}");
    assert!(!run["verdicts"].to_string().contains("my secret question"));
    // Its 6 answers and 6 local judge calls are the daemon's own work in the ledger.
    let ids: Vec<String> = run["jobs"].as_array().unwrap().iter().map(|j| j.as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 12);
    let entries = ledger(&d.url);
    let own: Vec<&Value> = entries.iter().filter(|e| ids.contains(&e["job_id"].as_str().unwrap().to_string())).collect();
    assert_eq!(own.len(), 12);
    assert!(own.iter().all(|e| e["origin"] == "daemon" && e["energy_j"].as_f64().unwrap() > 0.0));
    let energy: f64 = own.iter().map(|e| e["energy_j"].as_f64().unwrap()).sum();
    assert!((run["energy_j"].as_f64().unwrap() - energy).abs() < 1e-9);
    let carbon: f64 = own.iter().map(|e| e["carbon_g"].as_f64().unwrap()).sum();
    assert!((run["carbon_g"].as_f64().unwrap() - carbon).abs() < 1e-12);
    let levels: std::collections::BTreeSet<&str> = own.iter().map(|e| e["directive"].as_str().unwrap()).collect();
    assert_eq!(levels.len(), 3, "an answer at every level");
    // Stats count it as emitted, apart from users' requests: no saving, no share.
    let (_, stats) = http("GET", &format!("{}/v1/stats", d.url), None);
    assert_eq!((stats["requests"].as_u64(), stats["user_requests"].as_u64()), (Some(entries.len() as u64), Some(3)), "{stats}");
    assert_eq!(stats["own_work"]["requests"], 12, "{stats}");
    assert!((stats["own_work"]["carbon_g"].as_f64().unwrap() - carbon).abs() < 1e-12, "{stats}");
    let user_levels = stats["levels"].as_object().unwrap();
    assert_eq!(user_levels.values().map(|l| l["totals"]["requests"].as_u64().unwrap()).sum::<u64>(), 3, "{stats}");
    let (code, out, _) = sproutctl(&d.url, &["stats"]);
    assert_eq!(code, 0);
    assert!(out.contains("own work:  12 requests"), "{out}");
    let (code, out, _) = sproutctl(&d.url, &["eval", "history"]);
    assert_eq!(code, 0);
    assert!(out.contains(run["id"].as_str().unwrap()), "{out}");
    let (code, out, _) = sproutctl(&d.url, &["eval", "status"]);
    assert_eq!(code, 0);
    assert!(out.contains("next run:") && out.contains("samples kept: 2"), "{out}");
}

#[test]
fn the_evaluator_finishes_while_user_traffic_never_stops() {
    // 20 ms a token, one sequence at a time: a 10-word prompt is ~0.2 s of
    // engine time. Users submit faster than that, so the queue never drains.
    let d = Daemon::start(&echo_config(20, 1, &[]));
    let submit = |url: &str, i: usize| {
        let (s, b, _) = post_job(url, &json!({"messages": user(&format!("What is the capital of country number {i} on the list?"))}), None);
        assert_eq!(s, 202, "{b}");
    };
    for i in 0..30 {
        submit(&d.url, i);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let (url, stop) = (d.url.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 30;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                submit(&url, i);
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // One prompt per class: its 3 answers (questions compare final answers, no judge).
    let t0 = Instant::now();
    let (s, run) = http("POST", &format!("{}/v1/eval/runs", d.url), Some(&json!({"prompts": 1, "wait": true}).to_string()));
    let took = t0.elapsed();
    let (_, queued) = http("GET", &format!("{}/v1/jobs?state=queued&limit=1000", d.url), None);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    feeder.join().unwrap();
    assert_eq!(s, 200, "{run}");
    assert_eq!(run["verdicts"][0]["signal"], "agreement", "{run}");
    assert_eq!(run["verdicts"][0]["kept"], json!([1.0, 1.0, 1.0]), "the echo engine answers alike at every level: {run}");
    let waiting = queued["data"].as_array().unwrap().len();
    assert!(waiting > 10, "users' jobs were still waiting when it finished ({waiting}): the run got its share, not the leftovers");
    assert!(took < Duration::from_secs(30), "the evaluation took {took:?} under load");
    // It had a bounded share: users' jobs kept finishing meanwhile.
    let users_done = ledger(&d.url).iter().filter(|e| e["origin"] != "daemon").count();
    assert!(users_done >= 9, "users got at least 9 of every 10 engine turns: {users_done} done");
}

#[test]
fn levels_serve_a_class_only_once_their_measured_quality_clears_the_floor() {
    // The dirtiest hour all day: the floor is at its lowest (0.9 + margin).
    let dir = tempfile::tempdir().unwrap();
    let mut trace = String::from("datetime,gco2_per_kwh\n");
    for h in 0..48 {
        trace += &format!("2023-01-{:02} {:02}:00:00,500\n", 1 + h / 24, h % 24);
    }
    let cfg = with_file_setting(&echo_config(2, 4, &[("# ci_min = 50", "ci_min = 100"), ("# ci_max = 500", "ci_max = 500")]), dir.path(), "trace_file", "dirty.csv", &trace);
    let d = Daemon::start(&cfg);
    // The echo engine echoes only the first sentence under a directive: a
    // shorter answer with the same final number.
    let math = |i: usize| format!("Tom has {i} apples and buys 3 more, {} in all? Now count them again slowly, one apple at a time, to be sure.", i + 3);
    let served = |d: &Daemon, k: usize| -> Vec<String> {
        (0..k)
            .map(|i| {
                let (s, b) = http("POST", &format!("{}/v1/chat/completions", d.url), Some(&json!({"messages": user(&math(1000 + i))}).to_string()));
                assert_eq!(s, 200, "{b}");
                b["usage"]["sprout"]["directive"].as_str().unwrap().to_string()
            })
            .collect()
    };
    // Cold: every math prompt at L0, though the grid is dirty.
    let cold = served(&d, 40);
    assert!(cold.iter().all(|l| l == "L0"), "{cold:?}");
    // A small evaluation (8 math prompts, all agreeing): the bound is too loose.
    let (s, run) = http("POST", &format!("{}/v1/eval/runs", d.url), Some(&json!({"prompts": 8, "wait": true}).to_string()));
    assert_eq!(s, 200, "{run}");
    let (_, p) = http("GET", &format!("{}/v1/plan", d.url), None);
    let math_plan = p["classes"].as_array().unwrap().iter().find(|c| c["name"] == "math").unwrap().clone();
    assert_eq!(math_plan["x"], json!([1.0, 0.0, 0.0]), "8 agreeing samples do not license a level: {math_plan}\n{p}");
    // Enough samples (40 in all): the bound clears the floor, shorter levels serve math.
    let (s, run) = http("POST", &format!("{}/v1/eval/runs", d.url), Some(&json!({"prompts": 32, "wait": true}).to_string()));
    assert_eq!(s, 200, "{run}");
    let (_, p) = http("GET", &format!("{}/v1/plan", d.url), None);
    assert!(p["reason"].as_str().unwrap().starts_with("evaluation"), "{p}");
    let math_plan = p["classes"].as_array().unwrap().iter().find(|c| c["name"] == "math").unwrap().clone();
    assert!(math_plan["x"][0].as_f64().unwrap() < 0.01, "{math_plan}");
    let warm = served(&d, 10);
    assert!(warm.iter().all(|l| l != "L0"), "{warm:?}");
    // Other classes were never measured: still L0.
    let (_, b) = http("POST", &format!("{}/v1/chat/completions", d.url), Some(&json!({"messages": user("Write a haiku about rain.")}).to_string()));
    assert_eq!(b["usage"]["sprout"]["directive"], "L0");
}

/// A folder with a labelled GSM8K-format file of 110 items: under a
/// directive the echo engine keeps the first sentence, which still ends on
/// the right number for even items; odd items put a wrong number in the
/// first sentence.
fn gsm8k_fixture() -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("gsm8k")).unwrap();
    let mut lines = String::new();
    for i in 0..110 {
        let q = if i % 2 == 0 {
            format!("Tom has {i} apples and 3 pears, {} in all? Count them once more.", i + 3)
        } else {
            format!("Tom has {i} apples and 3 pears, {} in all? No: count again, {} in all.", i + 2, i + 3)
        };
        lines += &json!({"question": q, "answer": format!("so #### {}", i + 3)}).to_string();
        lines.push('\n');
    }
    std::fs::write(data.path().join("gsm8k/test.jsonl"), lines).unwrap();
    data
}

#[test]
fn sproutctl_bench_scores_every_mode_against_references_through_the_daemon() {
    let data = gsm8k_fixture();
    let d = Daemon::start(&echo_config(0, 4, &[]));
    let dir = data.path().to_str().unwrap();
    let save = data.path().join("out.json");
    let plot = data.path().join("out.svg");
    let (code, out, err) = sproutctl(
        &d.url,
        &["bench", "--data", dir, "--datasets", "gsm8k", "--n", "8", "--modes", "L0,L2,auto", "--eval-first", "--save", save.to_str().unwrap(), "--plot", plot.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("evaluation") && err.contains("done"), "the evaluator ran before the unpinned mode: {err}");
    assert!(out.contains("overall") && out.contains("agree (lb)"), "{out}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&save).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let row = |mode: &str| rows.iter().find(|r| r["dataset"] == "gsm8k" && r["mode"] == mode).unwrap().clone();
    assert_eq!(row("L0")["accuracy"], 1.0, "{out}");
    // Which items are even depends on the test split's order: L2 loses exactly those that are odd.
    let answers = report["answers"].as_array().unwrap();
    let odd = answers.iter().filter(|a| a["mode"] == "L2" && a["index"].as_u64().unwrap() % 2 == 1).count();
    let l2 = row("L2");
    assert!((l2["accuracy"].as_f64().unwrap() - (8 - odd) as f64 / 8.0).abs() < 1e-12, "{l2}");
    assert!(answers.iter().all(|a| a["index"].as_u64().unwrap() >= 100), "the test split never uses the first 100 items");
    assert!(l2["tokens"].as_f64().unwrap() < row("L0")["tokens"].as_f64().unwrap());
    // Eight agreeing samples per level are too few for a bound to clear the
    // floor: unpinned answers stay at L0.
    assert_eq!(row("auto")["mix"][0], json!(["L0", 1.0]), "{out}");
    assert!(std::fs::read_to_string(&plot).unwrap().contains("<svg"));
    // Bad input: one line, non-zero exit.
    for args in [&["bench", "--data", dir, "--modes", "L0,L9"][..], &["bench", "--data", dir, "--split", "later"], &["bench", "--data", "/nonexistent"]] {
        let (code, out, err) = sproutctl(&d.url, args);
        assert_ne!(code, 0, "{args:?}");
        assert!(out.is_empty() && err.trim().lines().count() == 1, "{args:?}: {err}");
    }
}

#[test]
fn a_client_hanging_up_on_a_waited_evaluation_neither_stops_it_nor_blocks_the_next() {
    let d = Daemon::start(&echo_config(20, 1, &[]));
    let (s, b) = http("POST", &format!("{}/v1/chat/completions", d.url), Some(&json!({"messages": user("What is the capital of France?")}).to_string()));
    assert_eq!(s, 200, "{b}");
    // Waits for the run, but gives up after 300 ms: the run takes seconds.
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let r = client
        .post(format!("{}/v1/eval/runs", d.url))
        .header("content-type", "application/json")
        .body(json!({"prompts": 1, "wait": true}).to_string())
        .send();
    assert!(r.is_err(), "the run should outlast the client's patience");
    // The run goes on to the end and is stored ...
    let t0 = Instant::now();
    loop {
        let (_, h) = http("GET", &format!("{}/v1/eval/runs", d.url), None);
        if h["data"].as_array().map_or(0, |a| a.len()) == 1 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the abandoned run never finished: {h}\n{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    // ... and the evaluator is free for the next one.
    let (s, run) = http("POST", &format!("{}/v1/eval/runs", d.url), Some(&json!({"prompts": 1, "wait": true}).to_string()));
    assert_eq!(s, 200, "{run}");
    let (_, h) = http("GET", &format!("{}/v1/eval/runs", d.url), None);
    assert_eq!(h["data"].as_array().unwrap().len(), 2, "{h}");
}

#[test]
fn a_restart_cancels_the_queued_answers_of_an_interrupted_evaluation() {
    // 300 ms a token: the run's three answers are still queued or running when it dies.
    let d = Daemon::start(&echo_config(300, 1, &[]));
    let (s, b) = http("POST", &format!("{}/v1/jobs", d.url), Some(&json!({"messages": user("What is the capital of France?")}).to_string()));
    assert_eq!(s, 202, "{b}");
    let (_, done) = http("GET", &format!("{}/v1/jobs/{}?wait=30", d.url, b["id"].as_str().unwrap()), None);
    assert_eq!(done["state"], "succeeded", "{done}");
    let (s, r) = http("POST", &format!("{}/v1/eval/runs", d.url), Some(&json!({"prompts": 1}).to_string()));
    assert_eq!(s, 202, "{r}");
    let own = |url: &str| -> Vec<Value> {
        let (_, list) = http("GET", &format!("{url}/v1/jobs"), None);
        list["data"].as_array().unwrap().iter().filter(|j| j["origin"] == "daemon").cloned().collect()
    };
    let t0 = Instant::now();
    while own(&d.url).len() < 3 {
        assert!(t0.elapsed() < Duration::from_secs(10), "no evaluation work queued");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (dir, port) = d.kill();
    let mut d = Daemon::spawn(&echo_config(300, 1, &[]), Some((dir, port)));
    d.wait_ready(Duration::from_secs(30));
    let jobs = own(&d.url);
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    for j in &jobs {
        assert_eq!(j["state"], "cancelled", "{j}");
        assert!(j["error"]["message"].as_str().unwrap().contains("interrupted by a restart"), "{j}");
    }
    // The user's job is untouched, and nothing of the lost run was stored.
    let (_, user_job) = http("GET", &format!("{}/v1/jobs/{}", d.url, b["id"].as_str().unwrap()), None);
    assert_eq!(user_job["state"], "succeeded");
    let (_, h) = http("GET", &format!("{}/v1/eval/runs", d.url), None);
    assert_eq!(h["data"].as_array().unwrap().len(), 0, "{h}");
}

#[test]
fn real_model_judged_by_a_second_sproutd_over_loopback() {
    let Some(model) = model_path() else { return };
    let judge = Daemon::start(&model_config(&model, &[]));
    let judge_url = format!("{}/v1", judge.url);
    let d = Daemon::start(&model_config(&model, &[("max_tokens = 384\n", "max_tokens = 48\n")]));
    // Open instructions: no final answer to compare, so the judge decides.
    for q in ["Write a one-line slogan for a bakery.", "Write a short greeting for a birthday card."] {
        let body = json!({"messages": user(q), "max_tokens": 8, "directive": "L2"}).to_string();
        let (s, b) = http("POST", &format!("{}/v1/chat/completions", d.url), Some(&body));
        assert_eq!(s, 200, "{b}");
    }
    let (code, out, err) = sproutctl(
        &d.url,
        &["eval", "run", "--prompts", "2", "--judge-url", &judge_url, "--judge-model", "qwen2.5-coder-0.5b-instruct", "--wait", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let run: Value = serde_json::from_str(&out).unwrap();
    assert!(run["judge"].as_str().unwrap().contains(&judge_url), "{run}");
    assert_eq!(run["judge_calls"], 6);
    // The judge sproutd really answered six times (its own ledger).
    assert_eq!(ledger(&judge.url).len(), 6);
    let verdicts = run["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 2);
    let readable: usize = verdicts.iter().map(|v| v["picks"].as_array().unwrap().iter().filter(|p| !p.is_null()).count()).sum();
    assert_eq!(readable + run["failures"].as_u64().unwrap() as usize, 6);
    if let Some(q) = run["q"].as_array() {
        let sum: f64 = q.iter().map(|x| x.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-9, "{run}");
        // The optimizer re-solved with it.
        let (_, plan) = http("GET", &format!("{}/v1/plan", d.url), None);
        assert!(plan["reason"].as_str().unwrap().starts_with("evaluation"), "{plan}");
    }
    eprintln!("real judged run: q = {}, failures = {}", run["q"], run["failures"]);
}

/// A remote judge for tests: an OpenAI-compatible chat endpoint on loopback
/// that reads the two answers of a bench judge prompt and names the shorter
/// one, whatever its place (a judge that likes brevity). Counts its calls.
fn brevity_judge() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = calls.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).unwrap();
                    let req: Value = serde_json::from_slice(&body).unwrap();
                    let prompt = req["messages"][0]["content"].as_str().unwrap().to_string();
                    let first = prompt.split("Answer 1:\n").nth(1).unwrap().split("\n\nAnswer 2:\n").next().unwrap().len();
                    let second = prompt.split("Answer 2:\n").nth(1).unwrap().split("\n\nReply with only").next().unwrap().len();
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let pick = if second < first { "2" } else { "1" };
                    let reply = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": pick}, "finish_reason": "stop"}]}).to_string();
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", reply.len());
                    if conn.write_all(head.as_bytes()).and_then(|_| conn.write_all(reply.as_bytes())).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, calls)
}

#[test]
fn sproutctl_bench_judges_open_prompts_and_measures_how_signals_track_references() {
    // The GSM8K fixture (L2 keeps the first sentence: right for even items,
    // wrong for odd ones), and AlpacaEval-format open instructions (no
    // reference).
    let data = gsm8k_fixture();
    std::fs::create_dir_all(data.path().join("alpaca_eval")).unwrap();
    let mut open = String::new();
    for i in 0..110 {
        open += &json!({"instruction": format!("Write a note to neighbour {i}. Say the party is on Friday. Bring snacks."), "output": "x"}).to_string();
        open.push('\n');
    }
    std::fs::write(data.path().join("alpaca_eval/alpaca_eval_text_davinci_003.jsonl"), open).unwrap();
    let d = Daemon::start(&echo_config(0, 4, &[]));
    let (judge_url, calls) = brevity_judge();
    let dir = data.path().to_str().unwrap();
    let save = data.path().join("out.json");
    let (code, out, err) = sproutctl(
        &d.url,
        &["bench", "--data", dir, "--datasets", "gsm8k,alpacaeval", "--n", "6", "--modes", "L0,L2", "--judge", &judge_url, "--judge-model", "brevity", "--save", save.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("judge (lb)") && out.contains("false kept"), "{out}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&save).unwrap()).unwrap();
    // Every L2 answer differs from its L0 answer: two orders each, 24 calls.
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 24, "{err}");
    let row = |set: &str, mode: &str| report["rows"].as_array().unwrap().iter().find(|r| r["dataset"] == set && r["mode"] == mode).unwrap().clone();
    // Open prompts: no accuracy, the judge's verdict instead (the shorter
    // answer won in both orders every time).
    let open = row("alpacaeval", "L2");
    assert!(open["accuracy"].is_null(), "{open}");
    assert_eq!((open["judge_n"].as_u64(), open["judge_kept"].as_f64()), (Some(6), Some(1.0)), "{open}");
    // Against the references, that judge calls every odd item's lost answer
    // kept: the tracking table shows it as false keeps.
    let answers = report["answers"].as_array().unwrap();
    let odd = answers.iter().filter(|a| a["dataset"] == "gsm8k" && a["mode"] == "L2" && a["index"].as_u64().unwrap() % 2 == 1).count();
    let tracked = report["tracking"].as_array().unwrap();
    let judge = tracked.iter().find(|t| t["dataset"] == "gsm8k" && t["signal"] == "judge").unwrap();
    assert_eq!((judge["n"].as_u64(), judge["false_kept"].as_u64()), (Some(6), Some(odd as u64)), "{judge}");
    let agreement = tracked.iter().find(|t| t["dataset"] == "gsm8k" && t["signal"] == "agreement").unwrap();
    assert_eq!((agreement["false_kept"].as_u64(), agreement["matched"].as_f64()), (Some(0), Some(1.0)), "{agreement}");
    assert!(tracked.iter().all(|t| t["dataset"] != "alpacaeval"));
    // Bad input: one line, non-zero exit, no answer asked of the daemon.
    for args in [
        &["bench", "--data", dir, "--datasets", "alpacaeval"][..],
        &["bench", "--data", dir, "--datasets", "gsm8k", "--judge", "ftp://judge"],
        &["bench", "--data", dir, "--datasets", "gsm8k", "--judge", &judge_url],
        &["bench", "--data", dir, "--datasets", "gsm8k", "--judge-model", "m"],
    ] {
        let (code, out, err) = sproutctl(&d.url, args);
        assert_ne!(code, 0, "{args:?}");
        assert!(out.is_empty() && err.trim().lines().count() == 1, "{args:?}: {err}");
    }
}

#[test]
fn real_model_bench_judged_by_the_daemons_own_model() {
    let Some(model) = model_path() else { return };
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("alpaca_eval")).unwrap();
    let mut open = String::new();
    for i in 0..101 {
        open += &json!({"instruction": format!("Write a one-line slogan for bakery number {i}."), "output": "x"}).to_string();
        open.push('\n');
    }
    std::fs::write(data.path().join("alpaca_eval/alpaca_eval_text_davinci_003.jsonl"), open).unwrap();
    let d = Daemon::start(&model_config(&model, &[]));
    let save = data.path().join("out.json");
    let (code, out, err) = sproutctl(
        &d.url,
        &["bench", "--data", data.path().to_str().unwrap(), "--datasets", "alpacaeval", "--n", "1", "--modes", "L0,L2", "--max-tokens", "24", "--judge", "local", "--save", save.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("judge (lb)"), "{out}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&save).unwrap()).unwrap();
    let answers = report["answers"].as_array().unwrap();
    let texts: Vec<&str> = answers.iter().map(|a| a["text"].as_str().unwrap()).collect();
    // The judge's calls went to the daemon itself, pinned at L0, never
    // sampled for the evaluator: the ledger has the two answers and, unless
    // the two were the same text, two judge calls.
    let calls = if texts[0].trim() == texts[1].trim() { 0 } else { 2 };
    assert!(err.contains(&format!("{calls} calls")), "{err}");
    let ledger = ledger(&d.url);
    assert_eq!(ledger.len(), 2 + calls, "{ledger:?}");
    assert!(ledger.iter().skip(2).all(|e| e["directive"] == "L0"), "{ledger:?}");
    let (_, st) = http("GET", &format!("{}/v1/eval/status", d.url), None);
    assert_eq!(st["samples"], 2, "the bench's prompt is sampled as asked (at L0 and L2), the judge's are not: {st}");
    eprintln!("local judge on {texts:?}: {}", answers[1]["judge_kept"]);
}

/// The published artifact under ../shared/data, if this checkout has it.
fn artifact() -> Option<std::path::PathBuf> {
    sprout::testing::shared_data("sprout_artifact")
}

#[test]
fn sproutctl_simulate_reports_quality_three_ways() {
    let Some(data) = artifact() else { return };
    let out = std::process::Command::new(SPROUTCTL)
        .args(["simulate", "--data", data.to_str().unwrap(), "--region", "GB", "--hours", "168", "--policy", "sprout", "--seeds", "2", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (pooled, hourly, own) = (v["quality_pct"].as_f64().unwrap(), v["hourly_quality_pct"].as_f64().unwrap(), v["own_quality_pct"].as_f64().unwrap());
    assert!(pooled > 70.0 && pooled < own && hourly < own, "{v}");
    let text = std::process::Command::new(SPROUTCTL)
        .args(["simulate", "--data", data.to_str().unwrap(), "--region", "GB", "--hours", "24"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("quality, pooled:") && text.contains("quality, as the LP saw it:"), "{text}");
}

#[test]
fn sproutctl_piped_into_a_reader_that_stops_early_ends_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    // ~270 kB of JSON: more than a pipe holds, so it is still writing when the reader goes.
    let Some(data) = artifact() else { return };
    let mut child = std::process::Command::new(SPROUTCTL)
        .args(["simulate", "--data", data.to_str().unwrap(), "--region", "NL", "--hours", "720", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap(); // and the pipe closes
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?} {err}", out.status);
}

// ---------------------------------------------------------------------------
// sproutctl tui, for real, in tmux.

fn tmux(socket: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("tmux").arg("-L").arg(socket).args(args).output().expect("tmux runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_screen(socket: &str, what: &[&str], secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let screen = tmux(socket, &["capture-pane", "-p", "-t", "tui"]);
        if what.iter().all(|w| screen.contains(w)) || Instant::now() > deadline {
            return screen;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_tui_in_tmux_shows_the_panels_resizes_submits_survives_a_dead_daemon_and_quits() {
    if std::process::Command::new("tmux").arg("-V").output().is_err() {
        assert!(std::env::var("SPROUT_REQUIRE_MODEL").as_deref() != Ok("1"), "tmux is missing (scripts/setup.sh installs it)");
        eprintln!("skipping: no tmux");
        return;
    }
    let mut d = Daemon::start(&echo_config(0, 1, &[]));
    let (s, b) = http("POST", &format!("{}/v1/chat/completions", d.url), Some(&json!({"messages": user("hello there")}).to_string()));
    assert_eq!(s, 200, "{b}");
    let socket = format!("sprout-test-{}", d.port);
    let exit_file = d.dir.path().join("tui.exit");
    let cmd = format!("{SPROUTCTL} --url {} tui; echo $? > {}", d.url, exit_file.display());
    tmux(&socket, &["new-session", "-d", "-s", "tui", "-x", "120", "-y", "36", &cmd]);
    let screen = wait_screen(&socket, &["Queue", "Emissions", "Directive mix", "Evaluator", "1 requests"], 15);
    for want in ["Queue", "Emissions", "Directive mix", "Evaluator", "sproutd: connected", "1 requests", "gCO2/kWh", "past 24 h", "next 24 h", "hello there", "plan:", "kept quality", "judged q: -"] {
        assert!(screen.contains(want), "{want:?} not on screen:\n{screen}");
    }
    // Resize: still all four panels.
    tmux(&socket, &["resize-window", "-t", "tui", "-x", "90", "-y", "30"]);
    let screen = wait_screen(&socket, &["Queue", "Evaluator"], 5);
    assert!(screen.lines().all(|l| l.chars().count() <= 90), "{screen}");
    assert!(screen.contains("Queue") && screen.contains("Evaluator"), "{screen}");
    // Submit a prompt from the TUI.
    tmux(&socket, &["send-keys", "-t", "tui", "s"]);
    tmux(&socket, &["send-keys", "-t", "tui", "-l", "from the tui"]);
    tmux(&socket, &["send-keys", "-t", "tui", "Enter"]);
    let screen = wait_screen(&socket, &["submitted job-"], 10);
    assert!(screen.contains("submitted job-"), "{screen}");
    let (_, list) = http("GET", &format!("{}/v1/jobs", d.url), None);
    assert!(list.to_string().contains("from the tui"));
    // The daemon dies: the TUI says so and keeps running.
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let screen = wait_screen(&socket, &["RECONNECTING"], 10);
    assert!(screen.contains("RECONNECTING"), "{screen}");
    tmux(&socket, &["send-keys", "-t", "tui", "q"]);
    // The shell creates the file before it writes the status: wait for the line.
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        let code = std::fs::read_to_string(&exit_file).unwrap_or_default();
        if code.ends_with('\n') || Instant::now() > deadline {
            break code;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    tmux(&socket, &["kill-server"]);
    assert_eq!(code.trim(), "0", "sproutctl tui exit status");
}
