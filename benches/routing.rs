//! Routing overhead, side by side in one run:
//! 1. the routing decision itself, in-process: `Backends::choose` over 8
//!    upstreams (each with its own grid), then its slot freed;
//! 2. over real HTTP on loopback: non-streamed chat requests at a fixed
//!    client concurrency, straight to an upstream sproutd (echo engine) and
//!    through a front sproutd routing over two such upstreams. The front's
//!    added latency is everything it does per request: the durable submit
//!    (flushed), the claim, routing, the upstream call, the result (flushed).
//!
//!   cargo bench --bench routing
//!   SPROUT_BENCH_SECS=10 SPROUT_BENCH_CLIENTS=32 cargo bench --bench routing

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sprout::backends::Backends;
use sprout::carbon::Carbon;
use sprout::config::Config;

const OFF: [(&str, &str); 3] = [
    ("enabled = true\n# \"best\"", "enabled = false\n# \"best\""),
    ("mix = { L0 = 0.4, L1 = 0.3, L2 = 0.3 }", "mix = { L0 = 1.0 }"),
    ("enabled = true\nsample_size = 500", "enabled = false\nsample_size = 500"),
];

fn config_text(model: &str, backends: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut text = std::fs::read_to_string(root.join("config.toml")).unwrap();
    text = text.replacen("kind = \"gguf\"", model, 1).replacen("name = \"qwen2.5-coder-0.5b-instruct\"", "name = \"echo\"", 1);
    text = text.replacen("\nmax_seqs = 4\n", "\nmax_seqs = 64\n", 1);
    for (a, b) in OFF {
        text = text.replacen(a, b, 1);
    }
    format!("{text}\n{backends}")
}

fn backend(name: &str, url: &str, ci: f64, dir: &Path) -> String {
    let trace = dir.join(format!("{name}.csv"));
    std::fs::write(&trace, format!("datetime,gco2_per_kwh\n2023-01-01 00:00:00,{ci}\n2023-01-01 01:00:00,{ci}\n")).unwrap();
    format!(
        "[[backends]]\nname = \"{name}\"\nurl = \"{url}/v1\"\nmodel = \"echo\"\nmax_concurrent = 64\nj_per_prompt_token = 0.1\nj_per_completion_token = 1.0\n[backends.carbon]\nsource = \"trace\"\ntrace_file = {:?}\n",
        trace.display().to_string()
    )
}

fn spawn(dir: &Path, name: &str, text: &str, port: u16) -> Child {
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(&cfg, text).unwrap();
    Command::new(env!("CARGO_BIN_EXE_sproutd"))
        .arg("--config")
        .arg(&cfg)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.join(format!("{name}-data")))
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sproutd")
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn wait_healthy(url: &str) {
    let t0 = Instant::now();
    while !reqwest::get(format!("{url}/healthz")).await.map(|r| r.status() == 200).unwrap_or(false) {
        assert!(t0.elapsed() < Duration::from_secs(60), "{url} did not become healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Requests/s and latencies (sorted, ms) of `clients` closed-loop clients for `secs`.
async fn load(url: &str, clients: usize, secs: u64) -> (f64, Vec<f64>) {
    let lat = Arc::new(Mutex::new(Vec::new()));
    let end = Instant::now() + Duration::from_secs(secs);
    let http = reqwest::Client::new();
    let body = serde_json::json!({"messages": [{"role": "user", "content": "one two three four five six seven eight"}]});
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (lat, http, body, url) = (lat.clone(), http.clone(), body.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let t = Instant::now();
                let r = http.post(format!("{url}/v1/chat/completions")).json(&body).send().await.expect("request");
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
                r.bytes().await.unwrap();
                lat.lock().unwrap().push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut l = Arc::try_unwrap(lat).unwrap().into_inner().unwrap();
    l.sort_by(f64::total_cmp);
    (l.len() as f64 / secs as f64, l)
}

fn pct(l: &[f64], p: f64) -> f64 {
    l[((l.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    // 1. The decision alone.
    let ups: String = (0..8).map(|i| backend(&format!("b{i}"), "http://127.0.0.1:9", 100.0 + 50.0 * i as f64, dir.path())).collect();
    let cfg = Config::parse(&config_text("kind = \"none\"", &ups), Path::new("x"), dir.path()).unwrap();
    let meter = sprout::energy::detect(&cfg.accounting).unwrap();
    let metering = Arc::new(Mutex::new(sprout::energy::Metering::new(meter, &cfg.accounting)));
    let backends = Backends::from_config(&cfg, metering, 1_700_000_000).unwrap();
    let daemon = Arc::new(Carbon::from_config(&cfg.carbon, 1_700_000_000).unwrap());
    let n = 200_000;
    let t = Instant::now();
    for _ in 0..n {
        let slot = backends.choose(&daemon, 1_700_000_000).expect("room");
        std::hint::black_box(&slot);
    }
    let per = t.elapsed().as_secs_f64() / n as f64;
    println!("routing decision over 8 backends (choose + free the slot): {:.2} µs ({:.0} decisions/s on one core)", per * 1e6, 1.0 / per);

    // 2. Over HTTP, side by side.
    let secs = common::env_count("SPROUT_BENCH_SECS", 10) as u64;
    let clients = common::env_count("SPROUT_BENCH_CLIENTS", 32);
    let (pa, pb, pf) = (port(), port(), port());
    let echo = "kind = \"echo\"\necho_token_delay_ms = 0";
    let mut a = spawn(dir.path(), "a", &config_text(echo, ""), pa);
    let mut b = spawn(dir.path(), "b", &config_text(echo, ""), pb);
    let (ua, ub) = (format!("http://127.0.0.1:{pa}"), format!("http://127.0.0.1:{pb}"));
    let front_cfg = config_text("kind = \"none\"", &format!("{}{}", backend("clean", &ua, 50.0, dir.path()), backend("dirty", &ub, 400.0, dir.path())));
    let mut f = spawn(dir.path(), "front", &front_cfg, pf);
    let uf = format!("http://127.0.0.1:{pf}");
    for u in [&ua, &ub, &uf] {
        wait_healthy(u).await;
    }
    let (direct_rps, direct) = load(&ua, clients, secs).await;
    let (front_rps, front) = load(&uf, clients, secs).await;
    println!("{clients} clients, {secs} s each, echo upstreams (0 ms per token), 2 cores shared by all four processes:");
    println!("| path | requests/s | p50 ms | p95 ms | p99 ms |\n|---|---:|---:|---:|---:|");
    for (name, rps, l) in [("straight to an upstream sproutd", direct_rps, &direct), ("through the routing front", front_rps, &front)] {
        println!("| {name} | {rps:.0} | {:.2} | {:.2} | {:.2} |", pct(l, 0.5), pct(l, 0.95), pct(l, 0.99));
    }
    println!("added by the front at the median: {:.2} ms", pct(&front, 0.5) - pct(&direct, 0.5));
    for c in [&mut a, &mut b, &mut f] {
        let _ = c.kill();
        let _ = c.wait();
    }
}
