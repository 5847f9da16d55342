//! The engine against its anchor, llama.cpp, side by side in one run, on the
//! default model and the same cores:
//!
//! 1. Single stream, 256 new tokens, greedy, no repetition penalty: prefill
//!    and decode tokens/s of llama.cpp in-process (llama-cpp-python), of
//!    mistral.rs in-process (the patched engine sproutd embeds) and of
//!    sproutd over HTTP (streamed; prefill = prompt tokens / time to the first
//!    token, decode = the remaining tokens / the time after it).
//! 2. Aggregate completion tokens/s at client concurrency 1, 4 and 8 (16
//!    different prompts, 128 new tokens): sproutd against llama.cpp's own
//!    server with 8 parallel slots and continuous batching, and the energy
//!    per completion token: sproutd's receipts (its estimate meter here), and
//!    for both servers the same estimate from their processes' CPU time
//!    (`idle_w` + `tdp_w` x utilisation, config.toml's values).
//! 3. Whether batching changes answers: sproutd's answers at concurrency 4
//!    and 8 against its answers at 1, and mistral.rs in-process against
//!    sproutd.
//! 4. Long prompts: prefill tokens/s of sproutd and `llama-server` (prompt
//!    cache off) on prompts of about 1,000 tokens, each new.
//!
//!   scripts/build-llamacpp.sh                 # once: llama.cpp from the llama-cpp-python sdist
//!   cargo bench --bench throughput            # SPROUT_BENCH_REPS=2 rounds; SPROUT_BENCH_THREADS=2
//!
//! Sides take turns and never overlap; each keeps its model loaded. sproutd
//! runs with the evaluator off and logs to `sproutd-throughput.log` in the
//! system's temp folder.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use mistralrs::{RequestBuilder, Response, TextMessageRole};
use serde_json::{json, Value};
use sprout::config::Config;
use sprout::engine::mistral::{greedy_params, MistralEngine};

const SINGLE_PROMPTS: &[&str] = &[
    "Write a long, detailed essay about the history of the Roman Empire.",
    "Write a detailed tutorial on how hash maps work, with examples in Python.",
];
const SINGLE_TOKENS: usize = 256;

const PROMPTS: &[&str] = &[
    "Explain what a hash map is.",
    "Write a haiku about autumn.",
    "What causes the seasons on Earth?",
    "Give three tips for writing clear code.",
    "Describe the water cycle.",
    "What is the difference between TCP and UDP?",
    "Summarize the plot of Romeo and Juliet.",
    "How does a bicycle stay upright?",
    "Why is the sky blue?",
    "Explain recursion to a beginner.",
    "What is photosynthesis?",
    "List the planets of the solar system and one fact about each.",
    "How do vaccines work?",
    "What is the difference between a list and a tuple in Python?",
    "Describe how a car engine works.",
    "What are the causes of inflation?",
];
const CONC_TOKENS: usize = 128;

#[derive(Default, Clone, Copy)]
struct Single {
    prompt_tokens: f64,
    prefill_s: f64,
    decode_tokens: f64,
    decode_s: f64,
    completion_tokens: f64,
    wall_s: f64,
}

impl Single {
    fn add(&mut self, o: Single) {
        self.prompt_tokens += o.prompt_tokens;
        self.prefill_s += o.prefill_s;
        self.decode_tokens += o.decode_tokens;
        self.decode_s += o.decode_s;
        self.completion_tokens += o.completion_tokens;
        self.wall_s += o.wall_s;
    }
    fn row(&self, name: &str) -> String {
        format!(
            "{:<28} {:>14.1} {:>13.1} {:>18.1} {:>10.0}",
            name,
            self.prompt_tokens / self.prefill_s,
            self.decode_tokens / self.decode_s,
            self.completion_tokens / self.wall_s,
            self.completion_tokens
        )
    }
}

/// llama.cpp in-process through benches/llamacpp_stream.py.
struct LlamaPy {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl LlamaPy {
    fn start(python: &Path, lib: &Path, model: &Path, threads: usize) -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/llamacpp_stream.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(model)
            .arg(threads.to_string())
            .env("LLAMA_CPP_LIB_PATH", lib)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start llama-cpp-python (scripts/build-llamacpp.sh)");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.contains("ready"), "llama-cpp-python did not start: {line}");
        Self { child, stdin, stdout }
    }

    fn run(&mut self, prompt: &str, max_tokens: usize) -> Single {
        writeln!(self.stdin, "{}", json!({"prompt": prompt, "max_tokens": max_tokens})).unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).expect("llama-cpp-python answer");
        let f = |k: &str| v[k].as_f64().unwrap();
        Single {
            prompt_tokens: f("prefill_n"),
            prefill_s: f("prefill_s"),
            decode_tokens: f("decode_n"),
            decode_s: f("decode_s"),
            completion_tokens: f("completion_tokens"),
            wall_s: f("wall_s"),
        }
    }
}

async fn mistral_single(engine: &MistralEngine, prompt: &str) -> Single {
    let mut params = greedy_params();
    params.max_len = Some(SINGLE_TOKENS);
    let req = RequestBuilder::new().add_message(TextMessageRole::User, prompt).set_sampling(params);
    let t0 = Instant::now();
    let mut stream = engine.model().stream_chat_request(req).await.expect("mistral.rs request");
    let mut usage = None;
    while let Some(r) = stream.next().await {
        match r {
            Response::Chunk(c) => {
                if let Some(u) = c.usage {
                    usage = Some(u);
                    break;
                }
            }
            Response::Done(d) => {
                usage = Some(d.usage);
                break;
            }
            _ => panic!("mistral.rs answered with an error"),
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let u = usage.expect("usage");
    Single {
        prompt_tokens: u.prompt_tokens as f64,
        prefill_s: u.total_prompt_time_sec as f64,
        decode_tokens: u.completion_tokens as f64,
        decode_s: u.total_completion_time_sec as f64,
        completion_tokens: u.completion_tokens as f64,
        wall_s: wall,
    }
}

/// One streamed chat completion against an OpenAI-compatible server: the
/// usage, the time to the first content token, the total time and the text.
async fn stream_chat(http: &reqwest::Client, url: &str, body: Value) -> (Value, f64, f64, String) {
    let t0 = Instant::now();
    let resp = http.post(format!("{url}/v1/chat/completions")).json(&body).send().await.expect("request");
    assert_eq!(resp.status(), 200, "{url}");
    let mut bytes = resp.bytes_stream();
    let (mut buf, mut text, mut usage, mut first) = (String::new(), String::new(), Value::Null, None);
    while let Some(chunk) = bytes.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.expect("body")));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(data).expect("SSE JSON");
            if let Some(piece) = v["choices"][0]["delta"]["content"].as_str() {
                if !piece.is_empty() {
                    first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
                    text.push_str(piece);
                }
            }
            if !v["usage"].is_null() {
                usage = v["usage"].clone();
            }
        }
    }
    let total = t0.elapsed().as_secs_f64();
    (usage, first.unwrap_or(total), total, text)
}

fn http_single(usage: &Value, ttft: f64, total: f64) -> Single {
    let n = usage["completion_tokens"].as_f64().expect("usage in the stream");
    Single {
        prompt_tokens: usage["prompt_tokens"].as_f64().unwrap(),
        prefill_s: ttft,
        decode_tokens: n - 1.0,
        decode_s: total - ttft,
        completion_tokens: n,
        wall_s: total,
    }
}

/// About 1,000 tokens of numbered notes (PROMPTS, four times over).
fn long_notes() -> String {
    (0..4 * PROMPTS.len()).map(|i| format!("Note {}: {}\n", i + 1, PROMPTS[i % PROMPTS.len()].repeat(2))).collect()
}

/// No "model": each server answers with the one it serves (sproutd refuses
/// a name it does not serve).
fn body(prompt: &str, max_tokens: usize) -> Value {
    json!({
        "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
        "temperature": 0, "stream": true, "stream_options": {"include_usage": true}, "directive": "L0"
    })
}

fn llama_body(prompt: &str, max_tokens: usize) -> Value {
    let mut b = body(prompt, max_tokens);
    b.as_object_mut().unwrap().remove("directive");
    b["repeat_penalty"] = json!(1.0);
    b
}

/// CPU seconds a process has used (utime + stime from /proc).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let f = |i: usize| fields.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (f(11) + f(12)) / ticks
}

struct Conc {
    tokens: f64,
    wall: f64,
    cpu: f64,
    receipts_j: f64,
    texts: Vec<String>,
}

/// `concurrency` clients in a closed loop over PROMPTS.
async fn concurrent(url: &str, pid: u32, concurrency: usize, llama: bool) -> Conc {
    // A connection per request: llama-server closed a reused one mid-run
    // (IncompleteMessage), which would end the benchmark.
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("http client");
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let clients = (0..concurrency).map(|_| {
        let (http, next, url) = (http.clone(), next.clone(), url.to_string());
        tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= PROMPTS.len() {
                    return out;
                }
                let b = if llama { llama_body(PROMPTS[i], CONC_TOKENS) } else { body(PROMPTS[i], CONC_TOKENS) };
                let (usage, _, _, text) = stream_chat(&http, &url, b).await;
                out.push((i, usage, text));
            }
        })
    });
    let mut results: Vec<(usize, Value, String)> = Vec::new();
    for c in futures::future::join_all(clients).await {
        results.extend(c.unwrap());
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    results.sort_by_key(|r| r.0);
    Conc {
        tokens: results.iter().map(|r| r.1["completion_tokens"].as_f64().unwrap()).sum(),
        wall,
        cpu,
        receipts_j: results.iter().filter_map(|r| r.1["sprout"]["energy_j"].as_f64()).sum(),
        texts: results.into_iter().map(|r| r.2).collect(),
    }
}

async fn wait_ready(url: &str, path: &str) {
    let t0 = Instant::now();
    while reqwest::get(format!("{url}{path}")).await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(t0.elapsed() < Duration::from_secs(180), "{url} did not become ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let reps = common::env_count("SPROUT_BENCH_REPS", 2);
    let threads = common::env_count("SPROUT_BENCH_THREADS", 2);
    let llama_dir = std::env::var("LLAMA_DIR").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/sprout/llama.cpp")
    });
    let (server_bin, lib, python) =
        (llama_dir.join("build/bin/llama-server"), llama_dir.join("build/bin"), llama_dir.join("venv/bin/python"));
    assert!(server_bin.exists() && python.exists(), "run scripts/build-llamacpp.sh first ({})", llama_dir.display());

    // sproutd with the default config, greedy answers without repetition
    // penalty (llama.cpp gets repeat_penalty 1.0), the estimate meter.
    let mut config_text = std::fs::read_to_string(root.join("config.toml")).unwrap();
    config_text = config_text.replace("repetition_penalty = 1.05", "repetition_penalty = 1.0");
    // The engine alone: the evaluator's own jobs would share it mid-run.
    config_text = config_text.replacen("\nenabled = true\nsample_size", "\nenabled = false\nsample_size", 1);
    // The model path is relative to the repository, the config copy is not.
    config_text = config_text.replace("path = \"models/", &format!("path = \"{}/models/", root.display()));
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("config.toml");
    std::fs::write(&cfg_path, &config_text).unwrap();
    let config = Config::load(&cfg_path).expect("config");
    let model_path = match &config.model.source {
        sprout::config::ModelSource::Gguf { path, .. } => path.clone(),
        _ => panic!("the benchmark needs the default GGUF model"),
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    let (idle_w, tdp_w) = (config.accounting.idle_w, config.accounting.tdp_w);

    // mistral.rs in this process and in sproutd run on rayon's global pool: the same thread count.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let engine = MistralEngine::load(&config.model).await.expect("load the model (scripts/fetch-model.sh)");
    let sprout_port = free_port();
    let data = dir.path().join("data");
    let mut sproutd = Command::new(env!("CARGO_BIN_EXE_sproutd"))
        .arg("--config")
        .arg(&cfg_path)
        .arg("--listen")
        .arg(format!("127.0.0.1:{sprout_port}"))
        .arg("--data-dir")
        .arg(&data)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .stderr(std::fs::File::create(std::env::temp_dir().join("sproutd-throughput.log")).expect("sproutd's log file"))
        .spawn()
        .expect("spawn sproutd");
    let llama_port = free_port();
    let mut llama_server = Command::new(&server_bin)
        .args(["-m", model_path.to_str().unwrap(), "-t", &threads.to_string(), "-tb", &threads.to_string()])
        .args(["-np", "8", "-c", "16384", "--host", "127.0.0.1", "--port", &llama_port.to_string()])
        .env("LD_LIBRARY_PATH", &lib)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn llama-server");
    let mut llama_py = LlamaPy::start(&python, &lib, &model_path, threads);
    let sprout_url = format!("http://127.0.0.1:{sprout_port}");
    let llama_url = format!("http://127.0.0.1:{llama_port}");
    wait_ready(&sprout_url, "/healthz").await;
    wait_ready(&llama_url, "/health").await;
    let http = reqwest::Client::new();

    println!(
        "model {}, {threads} threads, model.max_seqs {}, greedy, no repetition penalty, {reps} rounds",
        model_path.display(),
        config.model.max_seqs
    );

    // Warm-up, one short answer each.
    llama_py.run(PROMPTS[0], 16);
    mistral_single(&engine, PROMPTS[0]).await;
    stream_chat(&http, &sprout_url, body(PROMPTS[0], 16)).await;
    stream_chat(&http, &llama_url, llama_body(PROMPTS[0], 16)).await;

    // 1. Single stream.
    let (mut lp, mut mr, mut sp) = (Single::default(), Single::default(), Single::default());
    for _ in 0..reps {
        for p in SINGLE_PROMPTS {
            lp.add(llama_py.run(p, SINGLE_TOKENS));
            mr.add(mistral_single(&engine, p).await);
            let (u, ttft, total, _) = stream_chat(&http, &sprout_url, body(p, SINGLE_TOKENS)).await;
            sp.add(http_single(&u, ttft, total));
        }
    }
    println!("\nsingle stream, {SINGLE_TOKENS} new tokens, {} prompts x {reps}", SINGLE_PROMPTS.len());
    println!("{:<28} {:>14} {:>13} {:>18} {:>10}", "", "prefill tok/s", "decode tok/s", "end-to-end tok/s", "tokens");
    println!("{}", lp.row("llama.cpp (llama-cpp-python)"));
    println!("{}", mr.row("mistral.rs in-process"));
    println!("{}", sp.row("sproutd over HTTP"));
    println!(
        "decode ratio sproutd / llama.cpp {:.3}; mistral.rs / llama.cpp {:.3}; end-to-end sproutd / llama.cpp {:.3}",
        (sp.decode_tokens / sp.decode_s) / (lp.decode_tokens / lp.decode_s),
        (mr.decode_tokens / mr.decode_s) / (lp.decode_tokens / lp.decode_s),
        (sp.completion_tokens / sp.wall_s) / (lp.completion_tokens / lp.wall_s),
    );
    drop(llama_py.stdin);
    let _ = llama_py.child.wait();

    // 2. Concurrency.
    println!("\naggregate, {} prompts, {CONC_TOKENS} new tokens, closed loop; J/token = estimate from process CPU time", PROMPTS.len());
    println!(
        "{:<6} {:>15} {:>15} {:>7} {:>16} {:>16} {:>16}",
        "conc", "sproutd tok/s", "llama-srv tok/s", "ratio", "sproutd J/tok", "(receipts)", "llama-srv J/tok"
    );
    let mut base: Option<Vec<String>> = None;
    let mut rates = Vec::new();
    let mut same = Vec::new();
    for c in [1usize, 4, 8] {
        let (mut s_tok, mut s_wall, mut s_cpu, mut s_rj, mut l_tok, mut l_wall, mut l_cpu) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        for _ in 0..reps {
            let s = concurrent(&sprout_url, sproutd.id(), c, false).await;
            let l = concurrent(&llama_url, llama_server.id(), c, true).await;
            (s_tok, s_wall, s_cpu, s_rj) = (s_tok + s.tokens, s_wall + s.wall, s_cpu + s.cpu, s_rj + s.receipts_j);
            (l_tok, l_wall, l_cpu) = (l_tok + l.tokens, l_wall + l.wall, l_cpu + l.cpu);
            match &base {
                None => base = Some(s.texts.clone()),
                Some(b) => same.push((c, b.iter().zip(&s.texts).filter(|(x, y)| x == y).count())),
            }
        }
        let joules = |wall: f64, cpu: f64| wall * idle_w + tdp_w * cpu / cores;
        let (sr, lr) = (s_tok / s_wall, l_tok / l_wall);
        rates.push(sr);
        println!(
            "{:<6} {:>15.1} {:>15.1} {:>7.3} {:>16.3} {:>16.3} {:>16.3}",
            c,
            sr,
            lr,
            sr / lr,
            joules(s_wall, s_cpu) / s_tok,
            s_rj / s_tok,
            joules(l_wall, l_cpu) / l_tok
        );
    }
    println!("sproutd at 4 / sproutd at 1: {:.2}x; at 8 / at 1: {:.2}x", rates[1] / rates[0], rates[2] / rates[0]);
    for (c, n) in &same {
        println!("sproutd answers at concurrency {c} identical to those at 1: {n}/{}", PROMPTS.len());
    }

    // 3. In-process mistral.rs against sproutd at concurrency 1.
    let mut identical = 0;
    for (i, p) in PROMPTS.iter().enumerate() {
        let mut params = greedy_params();
        params.max_len = Some(CONC_TOKENS);
        let req = RequestBuilder::new().add_message(TextMessageRole::User, p).set_sampling(params);
        let r = engine.model().send_chat_request(req).await.expect("mistral.rs");
        let text = r.choices[0].message.content.clone().unwrap_or_default();
        if base.as_ref().is_some_and(|b| b[i] == text) {
            identical += 1;
        }
    }
    println!("mistral.rs in-process answers identical to sproutd's: {identical}/{}", PROMPTS.len());

    // 4. Long prompts: prefill of a prompt of about 1,000 tokens, 3 new
    // tokens, the two servers taking turns. Each prompt starts with a new
    // line, so neither server's prompt cache can serve it.
    let (mut s_prefill, mut l_prefill) = ((0.0, 0.0), (0.0, 0.0));
    let notes = long_notes();
    for i in 0..2 * reps {
        let p = format!("Request {i}. Read these notes, then say which one is longest.\n{notes}");
        let (u, ttft, _, _) = stream_chat(&http, &sprout_url, body(&p, 3)).await;
        let tokens = u["prompt_tokens"].as_f64().expect("usage in the stream");
        s_prefill = (s_prefill.0 + tokens, s_prefill.1 + ttft);
        let mut b = llama_body(&p, 3);
        b["cache_prompt"] = json!(false);
        let (u, ttft, _, _) = stream_chat(&http, &llama_url, b).await;
        l_prefill = (l_prefill.0 + u["prompt_tokens"].as_f64().unwrap_or(tokens), l_prefill.1 + ttft);
    }
    println!(
        "\nlong prompts ({:.0} tokens, {} prompts, new each time): prefill tok/s sproutd {:.1}, llama-server {:.1}, ratio {:.3}",
        s_prefill.0 / (2 * reps) as f64,
        2 * reps,
        s_prefill.0 / s_prefill.1,
        l_prefill.0 / l_prefill.1,
        (s_prefill.0 / s_prefill.1) / (l_prefill.0 / l_prefill.1)
    );

    let _ = sproutd.kill();
    let _ = llama_server.kill();
    let _ = sproutd.wait();
    let _ = llama_server.wait();
}
