//! Beyond one machine: a sproutd in front of other OpenAI-compatible
//! servers, all real processes on loopback (other sproutds with the echo
//! engine, and llama.cpp's server with the default model), each backend on
//! its own carbon trace.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A flat carbon trace at `g` gCO2e/kWh, written into `dir`.
fn flat_trace(dir: &Path, name: &str, g: f64) -> String {
    let path = dir.join(format!("{name}.csv"));
    std::fs::write(&path, format!("datetime,gco2_per_kwh\n2023-01-01 00:00:00,{g}\n2023-01-01 01:00:00,{g}\n")).unwrap();
    path.display().to_string()
}

/// An upstream: sproutd with the echo engine, serving every request at L0
/// (its optimizer and evaluator off), `delay_ms` per word.
fn upstream_config(delay_ms: u64) -> String {
    echo_config(delay_ms, 8, &OFF)
}

/// Optimizer and evaluator off, every request at L0 unless pinned.
const OFF: [(&str, &str); 3] = [
    ("enabled = true\n# \"best\"", "enabled = false\n# \"best\""),
    ("mix = { L0 = 0.4, L1 = 0.3, L2 = 0.3 }", "mix = { L0 = 1.0 }"),
    ("enabled = true\nsample_size = 500", "enabled = false\nsample_size = 500"),
];

/// The front: no embedded model; `backends` is appended as TOML.
fn front_config(backends: &str) -> String {
    let mut edits = vec![("kind = \"gguf\"", "kind = \"none\"")];
    edits.extend_from_slice(&OFF);
    format!("{}\n{backends}", config_text(&edits))
}

fn backend(name: &str, url: &str, slots: usize, trace: &str) -> String {
    format!(
        "[[backends]]\nname = {name:?}\nurl = \"{url}/v1\"\nmodel = \"echo\"\nmax_concurrent = {slots}\ntimeout = \"5s\"\nj_per_prompt_token = 0.5\nj_per_completion_token = 2.0\nembodied_kgco2 = 0.0\n[backends.carbon]\nsource = \"trace\"\ntrace_file = {trace:?}\n"
    )
}

fn submit(url: &str, body: Value) -> String {
    let (s, b) = http("POST", &format!("{url}/v1/jobs"), Some(&body.to_string()));
    assert_eq!(s, 202, "{b}");
    b["id"].as_str().unwrap().to_string()
}

fn wait_job(url: &str, id: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let (s, b) = http("GET", &format!("{url}/v1/jobs/{id}?wait=30"), None);
        assert_eq!(s, 200, "{b}");
        if ["succeeded", "failed", "cancelled"].contains(&b["state"].as_str().unwrap()) {
            return b;
        }
        assert!(t0.elapsed() < Duration::from_secs(180), "job {id} not done: {b}");
    }
}

fn ledger(url: &str) -> Vec<Value> {
    let (s, b) = http("GET", &format!("{url}/v1/ledger"), None);
    assert_eq!(s, 200, "{b}");
    b["data"].as_array().unwrap().clone()
}

fn backends(url: &str) -> Vec<Value> {
    let (s, b) = http("GET", &format!("{url}/v1/backends"), None);
    assert_eq!(s, 200, "{b}");
    b["data"].as_array().unwrap().clone()
}

fn words(n: usize) -> String {
    (0..n).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ")
}

#[test]
fn jobs_go_to_the_cleanest_backend_until_it_is_full_then_spill_over_with_directives_and_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let clean = Daemon::start(&upstream_config(40));
    let dirty = Daemon::start(&upstream_config(40));
    let cfg = front_config(&format!(
        "{}{}",
        backend("dirty", &dirty.url, 8, &flat_trace(dir.path(), "dirty", 400.0)),
        backend("clean", &clean.url, 2, &flat_trace(dir.path(), "clean", 50.0)),
    ));
    let front = Daemon::start(&cfg);

    // Six at once: the clean backend takes two (its slots), the rest spill over.
    let ids: Vec<String> = (0..6).map(|_| submit(&front.url, json!({"messages": [{"role": "user", "content": words(25)}]}))).collect();
    let jobs: Vec<Value> = ids.iter().map(|id| wait_job(&front.url, id)).collect();
    let on = |name: &str| jobs.iter().filter(|j| j["result"]["usage"]["sprout"]["backend"] == name).count();
    assert_eq!((on("clean"), on("dirty")), (2, 4), "{jobs:#?}");
    for j in &jobs {
        assert_eq!(j["state"], "succeeded", "{j}");
        let r = &j["result"]["usage"]["sprout"];
        let clean_one = r["backend"] == "clean";
        assert_eq!(r["intensity_gco2_per_kwh"], if clean_one { 50.0 } else { 400.0 }, "{r}");
        assert!(r["zone"].as_str().unwrap().contains(if clean_one { "clean" } else { "dirty" }), "{r}");
        // The per-token estimate, on the upstream's own counts.
        let u = &j["result"]["usage"];
        let want = 0.5 * u["prompt_tokens"].as_f64().unwrap() + 2.0 * u["completion_tokens"].as_f64().unwrap();
        assert!((r["energy_j"].as_f64().unwrap() - want).abs() < 1e-9, "{j}");
        assert_eq!(r["estimated"], true);
        assert_eq!(j["result"]["choices"][0]["message"]["content"], words(25));
    }
    // Alone, a job goes to the clean one.
    let id = submit(&front.url, json!({"messages": [{"role": "user", "content": "one two"}]}));
    assert_eq!(wait_job(&front.url, &id)["result"]["usage"]["sprout"]["backend"], "clean");

    // The directive is applied here and reaches the upstream as a system
    // message (the echo engine answers only the first sentence under one).
    let (s, b) = http(
        "POST",
        &format!("{}/v1/chat/completions", front.url),
        Some(&json!({"messages": [{"role": "user", "content": "First part. Second part."}], "directive": "L2"}).to_string()),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["choices"][0]["message"]["content"], "First part.");
    assert_eq!(b["usage"]["sprout"]["directive"], "L2");
    let (_, up_jobs) = http("GET", &format!("{}/v1/jobs?limit=1", clean.url), None);
    let sent = &up_jobs["data"][0]["request"]["messages"];
    assert_eq!(sent[0]["role"], "system", "{sent}");
    assert!(sent[0]["content"].as_str().unwrap().len() > 10, "{sent}");
    assert_eq!(sent[1]["content"], "First part. Second part.", "{sent}");

    // Streaming through the front.
    let chunks = sse(&format!("{}/v1/chat/completions", front.url), &json!({"messages": [{"role": "user", "content": "a b c"}], "stream": true}).to_string());
    let text: String = chunks.iter().filter_map(|c| serde_json::from_str::<Value>(c).ok()).filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_string)).collect();
    assert_eq!(text.split_whitespace().collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(chunks.last().unwrap(), "[DONE]");

    // Every record names its backend; the backends' view and the CLI agree.
    let l = ledger(&front.url);
    assert_eq!(l.len(), 9, "{l:#?}");
    assert!(l.iter().all(|e| e["backend"] == "clean" || e["backend"] == "dirty"), "{l:#?}");
    let views = backends(&front.url);
    let view = |n: &str| views.iter().find(|v| v["name"] == n).unwrap().clone();
    assert_eq!(views.len(), 2);
    assert_eq!(view("clean")["gco2_per_kwh"], 50.0);
    assert_eq!(view("clean")["requests"].as_u64().unwrap() + view("dirty")["requests"].as_u64().unwrap(), 9);
    assert_eq!(view("dirty")["requests"], 4);
    assert!(view("clean")["expected_g_per_token"].as_f64().unwrap() < view("dirty")["expected_g_per_token"].as_f64().unwrap());
    assert_eq!((view("clean")["healthy"].clone(), view("clean")["capacity"].clone()), (json!(true), json!(2)));
    let (code, out, err) = sproutctl(&front.url, &["backends"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("clean") && out.contains("dirty") && out.contains("estimated"), "{out}");
    let (_, metrics) = http("GET", &format!("{}/metrics", front.url), None);
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(metrics.contains("sproutd_backend_requests_total{backend=\"dirty\"} 4"), "{metrics}");
    assert!(metrics.contains("sproutd_backend_grid_intensity_gco2_per_kwh{backend=\"clean\"} 50"), "{metrics}");
    promtool_check(&metrics);
}

#[test]
fn a_backend_killed_mid_answer_loses_no_job_and_comes_back_and_sigkill_of_sproutd_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let clean = Daemon::start(&upstream_config(100));
    let dirty = Daemon::start(&upstream_config(20));
    let cfg = front_config(&format!(
        "{}{}",
        backend("clean", &clean.url, 4, &flat_trace(dir.path(), "clean", 50.0)),
        backend("dirty", &dirty.url, 8, &flat_trace(dir.path(), "dirty", 400.0)),
    ));
    let front = Daemon::start(&cfg);
    let chat = format!("{}/v1/chat/completions", front.url);

    // Three jobs and a streaming chat, all on the clean backend (4 slots);
    // it is killed after the stream's first words.
    let ids: Vec<String> = (0..3).map(|_| submit(&front.url, json!({"messages": [{"role": "user", "content": words(40)}]}))).collect();
    let streamed = {
        let chat = chat.clone();
        std::thread::spawn(move || sse(&chat, &json!({"messages": [{"role": "user", "content": words(40)}], "stream": true}).to_string()))
    };
    let t0 = Instant::now();
    while backends(&front.url).iter().find(|b| b["name"] == "clean").unwrap()["running"] != 4 {
        assert!(t0.elapsed() < Duration::from_secs(20), "{:#?}", backends(&front.url));
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(800));
    let (clean_dir, clean_port) = clean.kill();

    // Every job finishes elsewhere, once in the ledger.
    for id in &ids {
        let j = wait_job(&front.url, id);
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["result"]["usage"]["sprout"]["backend"], "dirty", "{j}");
        assert_eq!(j["result"]["choices"][0]["message"]["content"], words(40));
    }
    // The stream had words already: it ends with an error event, not a hang.
    let chunks = streamed.join().unwrap();
    let err = chunks.iter().filter_map(|c| serde_json::from_str::<Value>(c).ok()).find(|v| v.get("error").is_some()).expect("an error event");
    assert_eq!(err["error"]["code"], "backend_failed", "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("requeued"), "{err}");
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    // ... and its job, too, finished elsewhere.
    let t0 = Instant::now();
    let l = loop {
        let l = ledger(&front.url);
        if l.len() >= 4 {
            break l;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{l:#?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut seen: Vec<&str> = l.iter().map(|e| e["job_id"].as_str().unwrap()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!((l.len(), seen.len()), (4, 4), "{l:#?}");
    assert!(l.iter().all(|e| e["backend"] == "dirty" && e["state"] == "succeeded"), "{l:#?}");
    let down = backends(&front.url).into_iter().find(|b| b["name"] == "clean").unwrap();
    assert_eq!(down["healthy"], false, "{down}");
    assert!(down["faults"].as_u64().unwrap() >= 1, "{down}");
    let (_, out, _) = sproutctl(&front.url, &["backends"]);
    assert!(out.contains("down") && out.contains("last error"), "{out}");

    // It comes back: probed until it answers, then chosen again.
    let _clean = Daemon::spawn(&upstream_config(100), Some((clean_dir, clean_port)));
    let t0 = Instant::now();
    while backends(&front.url).iter().find(|b| b["name"] == "clean").unwrap()["healthy"] != true {
        assert!(t0.elapsed() < Duration::from_secs(90), "{:#?}", backends(&front.url));
        std::thread::sleep(Duration::from_millis(200));
    }
    let id = submit(&front.url, json!({"messages": [{"role": "user", "content": "back again"}]}));
    assert_eq!(wait_job(&front.url, &id)["result"]["usage"]["sprout"]["backend"], "clean");

    // SIGKILL the front while jobs run remotely: after a restart each
    // acknowledged job completes, once.
    let ids: Vec<String> = (0..3).map(|_| submit(&front.url, json!({"messages": [{"role": "user", "content": words(30)}]}))).collect();
    let t0 = Instant::now();
    while backends(&front.url).iter().map(|b| b["running"].as_u64().unwrap()).sum::<u64>() < 3 {
        assert!(t0.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
    }
    let reuse = front.kill();
    let front = Daemon::spawn(&cfg, Some(reuse));
    let mut front = front;
    front.wait_ready(Duration::from_secs(60));
    for id in &ids {
        let j = wait_job(&front.url, id);
        assert_eq!(j["state"], "succeeded", "{j}");
    }
    let l = ledger(&front.url);
    for id in &ids {
        assert_eq!(l.iter().filter(|e| e["job_id"] == id.as_str()).count(), 1, "{l:#?}");
    }
}

/// A Prometheus endpoint whose energy counter (mJ) grows at `watts`.
struct FakeExporter {
    url: String,
    stop: Arc<AtomicBool>,
    t0: Instant,
    watts: f64,
}

impl FakeExporter {
    fn start(watts: f64) -> FakeExporter {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let mj = t0.elapsed().as_secs_f64() * watts * 1000.0;
                let body = format!(
                    "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\nDCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{gpu=\"0\",Hostname=\"n1\"}} {mj:.0}\nDCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{gpu=\"0\",Hostname=\"other\"}} 99999999\n"
                );
                let _ = write!(conn, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            }
        });
        FakeExporter { url, stop, t0, watts }
    }

    fn joules(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * self.watts
    }
}

impl Drop for FakeExporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_backends_prometheus_energy_counter_makes_its_receipts_measured() {
    let exporter = FakeExporter::start(200.0);
    let up = Daemon::start(&upstream_config(60));
    let cfg = front_config(&format!(
        "[[backends]]\nname = \"gpu\"\nurl = \"{}/v1\"\nmodel = \"echo\"\nmax_concurrent = 2\nenergy_url = {:?}\nenergy_metric = \"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION\"\nenergy_labels = {{ Hostname = \"n1\" }}\nenergy_unit = \"mJ\"\nenergy_interval = \"200ms\"\n",
        up.url, exporter.url
    ));
    let front = Daemon::start(&cfg);
    std::thread::sleep(Duration::from_millis(600));
    let counted_from = exporter.joules();
    // Two at once, then one alone.
    let ids: Vec<String> = (0..2).map(|_| submit(&front.url, json!({"messages": [{"role": "user", "content": words(30)}]}))).collect();
    for id in &ids {
        wait_job(&front.url, id);
    }
    let id = submit(&front.url, json!({"messages": [{"role": "user", "content": words(30)}]}));
    wait_job(&front.url, &id);
    let l = ledger(&front.url);
    assert_eq!(l.len(), 3);
    for e in &l {
        assert_eq!(e["estimated"], false, "{e}");
        assert_eq!(e["backend"], "gpu");
        // 200 W for about 1.8 s, shared with the other job when two ran.
        assert!(e["energy_j"].as_f64().unwrap() > 50.0, "{e}");
    }
    let sum: f64 = l.iter().map(|e| e["energy_j"].as_f64().unwrap()).sum();
    let b = backends(&front.url).into_iter().next().unwrap();
    assert_eq!(b["measured"], true, "{b}");
    assert!(b["energy_source"].as_str().unwrap().contains("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"), "{b}");
    let idle = b["idle_energy_j"].as_f64().unwrap();
    // Receipts and idle add up to the counter's increase (the other host's
    // series is filtered out by the label), within a scrape or two of lag
    // (200 ms at 200 W: 40 J each).
    let grown = exporter.joules() - counted_from;
    assert!(sum > 500.0, "{sum}");
    assert!(
        (sum + idle - grown).abs() < 100.0,
        "receipts {sum:.1} J + idle {idle:.1} J against the counter's {grown:.1} J since start"
    );
    assert!(b["j_per_token_measured"] == true && (b["energy_j"].as_f64().unwrap() - sum).abs() < 1e-6, "{b}");
}

#[test]
fn llama_cpp_server_is_a_backend_the_directive_reaches() {
    let (Some(model), Ok(server)) = (model_path(), std::env::var("SPROUT_LLAMA_SERVER")) else {
        assert!(std::env::var("SPROUT_REQUIRE_MODEL").is_err(), "SPROUT_REQUIRE_MODEL is set but the model or SPROUT_LLAMA_SERVER (scripts/build-llamacpp.sh) is missing");
        eprintln!("skipped: needs the default model and SPROUT_LLAMA_SERVER");
        return;
    };
    let port = free_port();
    let lib = Path::new(&server).parent().unwrap().to_path_buf();
    let _llama = KillOnDrop(
        std::process::Command::new(&server)
            .args(["-m", &model.display().to_string(), "--host", "127.0.0.1", "--port", &port.to_string(), "-c", "4096", "-t", "2", "-np", "2"])
            .env("LD_LIBRARY_PATH", &lib)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("llama-server"),
    );
    let llama_url = format!("http://127.0.0.1:{port}");
    let t0 = Instant::now();
    while reqwest::blocking::get(format!("{llama_url}/health")).map(|r| r.status() != 200).unwrap_or(true) {
        assert!(t0.elapsed() < Duration::from_secs(120), "llama-server did not come up");
        std::thread::sleep(Duration::from_millis(200));
    }
    let dir = tempfile::tempdir().unwrap();
    let echo = Daemon::start(&upstream_config(0));
    let cfg = front_config(&format!(
        "[[backends]]\nname = \"llama\"\nurl = \"{llama_url}/v1\"\nmodel = \"qwen\"\nmax_concurrent = 2\ntimeout = \"120s\"\nj_per_prompt_token = 0.2\nj_per_completion_token = 3.0\nembodied_kgco2 = 0.0\n[backends.carbon]\nsource = \"trace\"\ntrace_file = {:?}\n{}",
        flat_trace(dir.path(), "clean", 30.0),
        backend("echo", &echo.url, 2, &flat_trace(dir.path(), "dirty", 500.0)),
    ));
    let front = Daemon::start(&cfg);
    let ask = |directive: &str| {
        let body = json!({"messages": [{"role": "user", "content": "What is the capital of France?"}], "directive": directive, "max_tokens": 96});
        let (s, b) = http("POST", &format!("{}/v1/chat/completions", front.url), Some(&body.to_string()));
        assert_eq!(s, 200, "{b}");
        b
    };
    let l0 = ask("L0");
    let l2 = ask("L2");
    for b in [&l0, &l2] {
        assert_eq!(b["usage"]["sprout"]["backend"], "llama", "{b}");
        assert!(b["choices"][0]["message"]["content"].as_str().unwrap().to_lowercase().contains("paris"), "{b}");
        assert!(b["usage"]["prompt_tokens"].as_u64().unwrap() > 10, "{b}");
    }
    // The directive reached the model: greedy, the same question, a shorter
    // answer ("Paris" against "The capital of France is Paris."). (The
    // prompts are the same length: Qwen's template puts its own default
    // system message where a request has none.)
    assert!(l2["usage"]["completion_tokens"].as_u64() < l0["usage"]["completion_tokens"].as_u64(), "{l0}\n{l2}");
    // Streamed from llama.cpp through sproutd.
    let chunks = sse(
        &format!("{}/v1/chat/completions", front.url),
        &json!({"messages": [{"role": "user", "content": "Say hello."}], "stream": true, "max_tokens": 16}).to_string(),
    );
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    let last: Value = serde_json::from_str(&chunks[chunks.len() - 2]).unwrap();
    assert_eq!(last["usage"]["sprout"]["backend"], "llama", "{last}");
}

#[test]
fn calibrate_fits_joules_per_token_against_the_counter() {
    // 100 W whenever it is read, and an upstream spending 20 ms per word:
    // the energy above idle is 2 J per completion token.
    let exporter = FakeExporter::start(100.0);
    let up = Daemon::start(&upstream_config(20));
    let (code, out, err) = sproutctl(
        &up.url,
        &[
            "backends", "calibrate", "--url", &format!("{}/v1", up.url), "--model", "echo", "--energy-url", &exporter.url,
            "--energy-metric", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "--energy-labels", "Hostname=n1", "--energy-unit", "mJ",
            "--rounds", "1", "--settle", "0.5", "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!((v["idle_w"].as_f64().unwrap() - 100.0).abs() < 10.0, "{v}");
    let b = v["j_per_completion_token"].as_f64().unwrap();
    assert!((1.2..3.5).contains(&b), "{v}");
    assert!(v["j_per_prompt_token"].as_f64().unwrap() < 0.2, "{v}");
    assert_eq!(v["samples"].as_array().unwrap().len(), 3);
    // Bad input: one line, non-zero.
    let (code, _, err) = sproutctl(&up.url, &["backends", "calibrate", "--url", "http://x/v1", "--model", "m", "--energy-url", "http://x/metrics", "--energy-metric", "e", "--energy-unit", "GJ"]);
    assert_ne!(code, 0);
    assert!(err.contains("--energy-unit") && err.lines().count() == 1, "{err}");
}

#[test]
fn upstreams_answer_while_the_embedded_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    let up = Daemon::start(&upstream_config(0));
    // The embedded (echo) engine takes 8 s to "load"; the upstream is dirtier.
    let mut edits = vec![("kind = \"gguf\"", "kind = \"echo\"\necho_load_delay_ms = 8000"), ("name = \"qwen2.5-coder-0.5b-instruct\"", "name = \"echo\"")];
    edits.extend_from_slice(&OFF);
    let cfg = format!("{}\n{}", config_text(&edits), backend("remote", &up.url, 4, &flat_trace(dir.path(), "dirty", 900.0)));
    let mut front = Daemon::spawn(&cfg, None);
    let t0 = Instant::now();
    let b = loop {
        let r = reqwest::blocking::Client::new()
            .post(format!("{}/v1/chat/completions", front.url))
            .header("content-type", "application/json")
            .body(json!({"messages": [{"role": "user", "content": "early bird"}]}).to_string())
            .send();
        if let Ok(r) = r {
            assert_eq!(r.status(), 200, "{}", r.text().unwrap());
            break r.json::<Value>().unwrap();
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "sproutd not listening");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(t0.elapsed() < Duration::from_secs(6), "answered only after the model loaded");
    assert_eq!(b["usage"]["sprout"]["backend"], "remote", "{b}");
    let (s, _) = http("GET", &format!("{}/healthz", front.url), None);
    assert_eq!(s, 503, "healthz waits for the embedded model");
    front.wait_ready(Duration::from_secs(30));
    let views = backends(&front.url);
    assert_eq!(views[0]["name"], "local");
    assert_eq!(views[0]["ready"], true);
}
