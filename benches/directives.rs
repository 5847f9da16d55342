//! Do directives shorten answers, and at what accuracy cost?
//!
//! The first N (default 10) questions of GSM8K, MMLU and Natural Questions
//! (`../shared/data/prompts`), each answered at every directive level of
//! `config.toml` by the default model in-process, through the same directive
//! and engine code the daemon uses, greedy decoding, `max_tokens` 512.
//! Prints mean completion tokens and accuracy per dataset and level.
//!
//!   cargo bench --bench directives
//!   SPROUT_BENCH_LEVELS=L2 SPROUT_L2_TEXT="..." cargo bench --bench directives   # try a wording
//!
//! Scoring: GSM8K, the last number in the answer equals the reference;
//! MMLU, the first option letter named equals the key; NQ, any reference
//! alias appears in the answer (case- and punctuation-insensitive).

mod common;

use std::path::PathBuf;
use std::time::Instant;

use futures::future::join_all;
use serde_json::Value;
use sprout::eval::answers::{last_number, normalize};
use sprout::config::Config;
use sprout::plan::directive::Directives;
use sprout::engine::{mistral::MistralEngine, Engine, GenRequest, Sampling};
use sprout::job::{Message, Role};
use tokio::sync::mpsc;

struct Item {
    prompt: String,
    check: Box<dyn Fn(&str) -> bool>,
}

fn shared() -> PathBuf {
    std::env::var("SPROUT_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
}

fn lines(path: PathBuf, n: usize) -> Vec<Value> {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().take(n).map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn mmlu_letter(s: &str) -> Option<char> {
    // "(B)", "B)", "B:", "B." or "answer is B", else a lone capital A-D.
    let b = s.as_bytes();
    for i in 0..b.len() {
        let c = b[i] as char;
        if !matches!(c, 'A'..='D') {
            continue;
        }
        let prev = if i > 0 { b[i - 1] as char } else { ' ' };
        let next = if i + 1 < b.len() { b[i + 1] as char } else { ' ' };
        if !prev.is_alphanumeric() && !next.is_alphanumeric() {
            return Some(c);
        }
    }
    None
}

fn datasets(n: usize) -> Vec<(&'static str, Vec<Item>)> {
    let d = shared().join("prompts");
    let gsm = lines(d.join("gsm8k/test.jsonl"), n)
        .into_iter()
        .map(|v| {
            let gold: f64 = v["answer"].as_str().unwrap().rsplit("####").next().unwrap().trim().replace(',', "").parse().unwrap();
            Item {
                prompt: v["question"].as_str().unwrap().to_string(),
                check: Box::new(move |a| last_number(a).is_some_and(|x| (x - gold).abs() < 1e-6)),
            }
        })
        .collect();
    let mmlu = lines(d.join("mmlu/test_first35_per_subject.jsonl"), n)
        .into_iter()
        .map(|v| {
            let mut prompt = v["question"].as_str().unwrap().to_string();
            for (i, c) in v["choices"].as_array().unwrap().iter().enumerate() {
                prompt.push_str(&format!("\n({}): {}", (b'A' + i as u8) as char, c.as_str().unwrap()));
            }
            let key = v["answer"].as_str().unwrap().chars().next().unwrap();
            Item { prompt, check: Box::new(move |a| mmlu_letter(a) == Some(key)) }
        })
        .collect();
    let nq = lines(d.join("natural_questions/nq_open_dev_first2000.jsonl"), n)
        .into_iter()
        .map(|v| {
            let golds: Vec<String> = v["answer"].as_array().unwrap().iter().map(|a| normalize(a.as_str().unwrap())).collect();
            Item {
                prompt: v["question"].as_str().unwrap().to_string(),
                check: Box::new(move |a| {
                    let a = normalize(a);
                    golds.iter().any(|g| a.contains(g.as_str()))
                }),
            }
        })
        .collect();
    vec![("gsm8k", gsm), ("mmlu", mmlu), ("nq", nq)]
}

#[tokio::main]
async fn main() {
    let n = common::env_count("SPROUT_BENCH_N", 10);
    let max_tokens = common::env_count("SPROUT_BENCH_MAX_TOKENS", 512);
    let mut config = Config::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config.toml")).expect("config.toml");
    for (i, var) in [(1, "SPROUT_L1_TEXT"), (2, "SPROUT_L2_TEXT")] {
        if let Ok(t) = std::env::var(var) {
            config.directives.levels[i].1 = t;
        }
    }
    let directives = Directives::new(&config.directives);
    // SPROUT_BENCH_LEVELS=L0,L2 runs only those levels (when trying wordings).
    let only: Option<Vec<String>> = std::env::var("SPROUT_BENCH_LEVELS").ok().map(|s| s.split(',').map(str::to_string).collect());
    let levels: Vec<String> =
        directives.names().filter(|l| only.as_ref().is_none_or(|o| o.iter().any(|x| x == l))).map(str::to_string).collect();
    for l in &levels {
        println!("level {l}: {:?}", directives.text(l).unwrap_or(""));
    }
    let engine = MistralEngine::load(&config.model).await.expect("load the model (scripts/fetch-model.sh)");
    // SPROUT_BENCH_SETS=gsm8k runs only those datasets.
    let only_sets: Option<Vec<String>> = std::env::var("SPROUT_BENCH_SETS").ok().map(|s| s.split(',').map(str::to_string).collect());
    let sets: Vec<_> =
        datasets(n).into_iter().filter(|(name, _)| only_sets.as_ref().is_none_or(|o| o.iter().any(|x| x == name))).collect();
    println!("\n{:<8} {:<5} {:>12} {:>10} {:>8}", "dataset", "level", "mean_tokens", "accuracy", "secs");
    let mut totals = vec![0usize; levels.len()];
    for (name, items) in &sets {
        for (li, level) in levels.iter().enumerate() {
            let t0 = Instant::now();
            let futs = items.iter().map(|it| {
                let req = GenRequest {
                    messages: directives.apply(level, sprout::plan::classify::classify(&it.prompt), &[Message::new(Role::User, it.prompt.clone())]),
                    max_tokens,
                    sampling: Sampling { top_p: 1.0, repetition_penalty: config.generation.repetition_penalty, ..Default::default() },
                    ..Default::default()
                };
                let (tx, _rx) = mpsc::unbounded_channel();
                let engine = &engine;
                async move { engine.generate(req, tx).await.expect("generation") }
            });
            let outs = join_all(futs).await;
            let tokens: usize = outs.iter().map(|o| o.completion_tokens).sum();
            let correct = outs.iter().zip(items).filter(|(o, it)| (it.check)(&o.text)).count();
            totals[li] += tokens;
            if std::env::var("SPROUT_BENCH_VERBOSE").is_ok() {
                for o in &outs {
                    println!("    [{level}] {} tokens: {:?}", o.completion_tokens, o.text.chars().take(160).collect::<String>());
                }
            }
            println!(
                "{:<8} {:<5} {:>12.1} {:>9.0}% {:>8.1}",
                name,
                level,
                tokens as f64 / items.len() as f64,
                100.0 * correct as f64 / items.len() as f64,
                t0.elapsed().as_secs_f64()
            );
        }
    }
    println!();
    for (li, level) in levels.iter().enumerate() {
        println!(
            "overall {level}: {:.1} mean tokens, {:+.0}% vs {}",
            totals[li] as f64 / (n * sets.len()) as f64,
            100.0 * (totals[li] as f64 / totals[0] as f64 - 1.0),
            levels[0]
        );
    }
}
