//! Queue benchmarks over real HTTP with the echo test engine:
//! 1. acknowledged durable submits per second (`POST /v1/jobs`, each
//!    answered only after its job is flushed to disk), from concurrent clients;
//! 2. restart time to healthy with 100,000 queued jobs in the store.
//!
//!   cargo bench --bench queue
//!   SPROUT_BENCH_JOBS=100000 SPROUT_BENCH_SECS=10 SPROUT_BENCH_CLIENTS=64 cargo bench --bench queue

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sprout::job::Origin;
use sprout::store::{NewJob, Store};

fn config(dir: &Path) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("config.toml"))
        .unwrap()
        // Slow echo engine, one sequence: submitted jobs stay queued.
        .replacen("kind = \"gguf\"", "kind = \"echo\"\necho_token_delay_ms = 60000", 1)
        .replacen("name = \"qwen2.5-coder-0.5b-instruct\"", "name = \"echo\"", 1)
        .replacen("max_queued = 100000", "max_queued = 10000000", 1);
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn(cfg: &Path, data: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sproutd"))
        .arg("--config")
        .arg(cfg)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sproutd")
}

async fn wait_healthy(url: &str) -> Duration {
    let t0 = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(format!("{url}/healthz")).await {
            if r.status() == 200 {
                return t0.elapsed();
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "sproutd did not become healthy");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::main]
async fn main() {
    let secs = common::env_count("SPROUT_BENCH_SECS", 10);
    let clients = common::env_count("SPROUT_BENCH_CLIENTS", 64);
    let jobs = common::env_count("SPROUT_BENCH_JOBS", 100_000);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());

    // 1. Submits per second.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = spawn(&cfg, &dir.path().join("submit"), port);
    wait_healthy(&url).await;
    let http = reqwest::Client::builder().pool_max_idle_per_host(clients).build().unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs as u64);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (http, url, done) = (http.clone(), url.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while Instant::now() < deadline {
                    let body = json!({"messages": [{"role": "user", "content": format!("client {c} job {i}")}], "max_tokens": 16});
                    let r = http.post(format!("{url}/v1/jobs")).json(&body).send().await.unwrap();
                    assert_eq!(r.status(), 202);
                    let _ = r.bytes().await;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    let _ = child.kill();
    let _ = child.wait();
    println!("durable submits: {n} acknowledged in {elapsed:.1} s from {clients} clients = {:.0}/s", n as f64 / elapsed);

    // 2. Restart with `jobs` queued jobs.
    let data = dir.path().join("restart");
    {
        let store = Store::open(&data).unwrap();
        let t0 = Instant::now();
        for i in 0..jobs {
            let seq = store.next_seq().unwrap();
            let request = sprout::testing::chat_request("echo", &format!("queued job {i}"));
            let new = NewJob {
                origin: Origin::Job,
                priority: (i % 3) as i32,
                request,
                idempotency_key: None,
                deadline_ms: None,
                deferral: None,
            };
            // Straight to the store: flushing each would only slow the set-up.
            store.submit_unflushed(seq, new, "L0".into(), seq).unwrap();
        }
        store.flush().unwrap();
        println!("filled the store with {jobs} queued jobs in {:.1} s", t0.elapsed().as_secs_f64());
    }
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let t0 = Instant::now();
    let mut child = spawn(&cfg, &data, port);
    let healthy = wait_healthy(&url).await;
    let health: serde_json::Value = reqwest::get(format!("{url}/healthz")).await.unwrap().json().await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "restart with {} queued jobs: healthy after {:.2} s (process start to /healthz 200; {:.2} s measured from spawn)",
        health["queued"],
        healthy.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
