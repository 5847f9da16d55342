//! End-to-end tokens/s through sproutd versus mistral.rs called directly
//! in-process, on the same prompts, greedy decoding, the same max_tokens and
//! repetition penalty, at client concurrency 1 and 4. Prints both, their
//! ratio, and how many answers were identical.
//!
//!   cargo bench --bench throughput            # SPROUT_BENCH_REPS=3 rounds
//!
//! The two sides take turns, so they never share the 2 cores.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::future::join_all;
use mistralrs::{RequestBuilder, TextMessageRole};
use serde_json::{json, Value};
use sprout::config::Config;
use sprout::engine::mistral::MistralEngine;

const PROMPTS: &[&str] = &[
    "Explain what a hash map is.",
    "Write a haiku about autumn.",
    "What causes the seasons on Earth?",
    "Give three tips for writing clear code.",
    "Describe the water cycle.",
    "What is the difference between TCP and UDP?",
    "Summarize the plot of Romeo and Juliet.",
    "How does a bicycle stay upright?",
];
const MAX_TOKENS: usize = 64;

struct Run {
    tokens: usize,
    secs: f64,
    texts: Vec<String>,
}

async fn direct(engine: &MistralEngine, rep: f32, concurrency: usize) -> Run {
    let t0 = Instant::now();
    let mut tokens = 0;
    let mut texts = Vec::new();
    for chunk in PROMPTS.chunks(concurrency) {
        let futs = chunk.iter().map(|p| {
            let req = RequestBuilder::new()
                .add_message(TextMessageRole::User, p)
                .set_deterministic_sampler()
                .set_sampler_max_len(MAX_TOKENS);
            let mut params = mistralrs::SamplingParams::deterministic();
            params.max_len = Some(MAX_TOKENS);
            params.repetition_penalty = Some(rep);
            engine.model().send_chat_request(req.set_sampling(params))
        });
        for r in join_all(futs).await {
            let r = r.expect("mistral.rs request");
            tokens += r.usage.completion_tokens;
            texts.push(r.choices[0].message.content.clone().unwrap_or_default());
        }
    }
    Run { tokens, secs: t0.elapsed().as_secs_f64(), texts }
}

async fn through_sproutd(url: &str, concurrency: usize) -> Run {
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    let mut tokens = 0;
    let mut texts = Vec::new();
    for chunk in PROMPTS.chunks(concurrency) {
        let futs = chunk.iter().map(|p| {
            let body = json!({"messages": [{"role": "user", "content": p}], "max_tokens": MAX_TOKENS, "temperature": 0, "directive": "L0"});
            let http = http.clone();
            async move {
                let r: Value = http.post(format!("{url}/v1/chat/completions")).json(&body).send().await.unwrap().json().await.unwrap();
                r
            }
        });
        for r in join_all(futs).await {
            tokens += r["usage"]["completion_tokens"].as_u64().expect("usage") as usize;
            texts.push(r["choices"][0]["message"]["content"].as_str().unwrap_or("").to_string());
        }
    }
    Run { tokens, secs: t0.elapsed().as_secs_f64(), texts }
}

#[tokio::main]
async fn main() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = Config::load(&root.join("config.toml")).expect("config.toml");
    let rep = config.generation.repetition_penalty;
    let reps: usize = std::env::var("SPROUT_BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);

    // Both sides stay loaded; runs alternate (direct, sproutd, direct, ...) so
    // that drift in machine speed hits both alike. They never overlap.
    let engine = MistralEngine::load(&config.model).await.expect("load the model (scripts/fetch-model.sh)");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sproutd"))
        .arg("--config")
        .arg(root.join("config.toml"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.path())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sproutd");
    let url = format!("http://127.0.0.1:{port}");
    let t0 = Instant::now();
    while reqwest::get(format!("{url}/healthz")).await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(t0.elapsed() < Duration::from_secs(120), "sproutd did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    direct(&engine, rep, 1).await; // warm-up
    through_sproutd(&url, 1).await;

    println!(
        "{} prompts x {reps} rounds, max_tokens {MAX_TOKENS}, greedy, repetition_penalty {rep}, model.max_seqs {}",
        PROMPTS.len(),
        config.model.max_seqs
    );
    println!("{:<12} {:>14} {:>16} {:>8} {:>15}", "concurrency", "direct tok/s", "sproutd tok/s", "ratio", "same answers");
    for c in [1usize, 4] {
        let (mut dt, mut ds, mut st, mut ss, mut same, mut total) = (0, 0.0, 0, 0.0, 0, 0);
        for _ in 0..reps {
            let d = direct(&engine, rep, c).await;
            let s = through_sproutd(&url, c).await;
            same += d.texts.iter().zip(&s.texts).filter(|(a, b)| a == b).count();
            total += PROMPTS.len();
            (dt, ds, st, ss) = (dt + d.tokens, ds + d.secs, st + s.tokens, ss + s.secs);
        }
        let (dr, sr) = (dt as f64 / ds, st as f64 / ss);
        println!("{:<12} {:>14.2} {:>16.2} {:>8.3} {:>12}/{}", c, dr, sr, sr / dr, same, total);
    }
    let _ = child.kill();
    let _ = child.wait();
}
