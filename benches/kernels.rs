//! The quantized matmul kernels against their anchor, a plain read of the
//! same bytes, side by side in one run on the same threads: for each of the
//! default model's weight shapes (Qwen2.5-0.5B Q4_K_M: Q5_0 attention and
//! ffn gate/up, Q6_K/Q4_K ffn down, the Q8_0 output projection) and for 1 and
//! 4 activation rows (one sequence decoding, four decoding together), how
//! many GB/s of weights the matmul gets through, and how that compares with
//! summing the same bytes. Decoding reads every weight once per token, so a
//! ratio near 1 means the kernel runs at the memory's pace; a low ratio
//! means the arithmetic (or the threads' handover) is the limit.
//!
//!   cargo bench --bench kernels               # SPROUT_BENCH_THREADS=2, SPROUT_BENCH_REPS=5
//!   SPROUT_BENCH_ONLY=Q8_0 SPROUT_BENCH_ROWS=1,4,8 cargo bench --bench kernels
//!
//! Weights are random (the speed does not depend on their values); each
//! matmul and each read runs SPROUT_BENCH_REPS times in turns and the median
//! is kept.

mod common;

use std::time::Instant;

use std::borrow::Cow;

use candle_core::quantized::k_quants::{BlockQ4K, BlockQ5_0, BlockQ6K, BlockQ8_0, GgmlType};
use candle_core::quantized::{QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};
use rayon::prelude::*;

/// A deterministic xorshift stream of values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Sums `bytes` as u64 words on the pool's threads, in pieces as the matmul
/// splits its weight rows: the memory's pace for one pass.
fn read_all(bytes: &[u8]) -> u64 {
    bytes
        .par_chunks(64 * 1024)
        .map(|c| {
            c.chunks_exact(8)
                .fold(0u64, |a, w| a.wrapping_add(u64::from_le_bytes(w.try_into().unwrap())))
        })
        .reduce(|| 0, u64::wrapping_add)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// What `main` reads from the environment once for every shape.
struct Settings {
    reps: usize,
    rows: Vec<usize>,
    only: Option<String>,
}

/// One shape: `n` weight rows of `k` values as `T`, times each of
/// `settings.rows` activation rows, through `QMatMul` as the model runs it
/// (Q5_0 and Q8_0 weights then interleaved eight rows at a time). Decoding
/// streams every layer's weights from memory (the model is larger than the
/// caches), so each repetition runs through enough copies of the weights
/// (about 256 MB) that none is still cached when its turn comes again; the
/// figures are per copy.
fn shape<T: GgmlType>(name: &str, k: usize, n: usize, settings: &Settings) {
    if settings.only.as_ref().is_some_and(|only| !name.contains(only.as_str())) {
        return;
    }
    let reps = settings.reps;
    let mut one = vec![T::zeros(); n * k / T::BLCK_SIZE];
    T::from_float(&values(n * k, 7), &mut one);
    let size = std::mem::size_of_val(one.as_slice());
    let copies = (256_000_000 / size).max(1);
    let weights: Vec<Vec<T>> = (0..copies).map(|_| one.clone()).collect();
    let bytes = |w: &[T]| unsafe { std::slice::from_raw_parts(w.as_ptr() as *const u8, size) };
    let mats: Vec<QMatMul> = weights
        .iter()
        .map(|w| {
            let storage = QStorage::from_data(Cow::Borrowed(bytes(w)), &Device::Cpu, T::DTYPE).unwrap();
            QMatMul::from_qtensor(QTensor::new(storage, (n, k)).unwrap()).unwrap()
        })
        .collect();
    let gb = size as f64 / 1e9;
    for &m in &settings.rows {
        let lhs = Tensor::from_vec(values(m * k, 11), (m, k), &Device::Cpu).unwrap();
        let (mut kernel, mut read) = (Vec::new(), Vec::new());
        // The first round warms up (pages the copies in, starts the pool).
        for round in 0..=reps {
            let t = Instant::now();
            for mat in &mats {
                std::hint::black_box(mat.forward(&lhs).unwrap());
            }
            let matmul_s = t.elapsed().as_secs_f64() / copies as f64;
            let t = Instant::now();
            for w in &weights {
                std::hint::black_box(read_all(bytes(w)));
            }
            let read_s = t.elapsed().as_secs_f64() / copies as f64;
            if round > 0 {
                kernel.push(matmul_s);
                read.push(read_s);
            }
        }
        // The same matmul again and again on one copy: its weights then come
        // from the caches (where they fit), which shows the arithmetic's pace.
        let mut hot = Vec::new();
        for _ in 0..reps {
            let t = Instant::now();
            for _ in 0..copies {
                std::hint::black_box(mats[0].forward(&lhs).unwrap());
            }
            hot.push(t.elapsed().as_secs_f64() / copies as f64);
        }
        let (kernel, read, hot) = (median(kernel), median(read), median(hot));
        println!(
            "{name:<26} m={m}  {:>6.2} MB  matmul {:>7.3} ms {:>5.1} GB/s   read {:>7.3} ms {:>5.1} GB/s   ratio {:.2}   cached {:>5.1} GB/s",
            gb * 1e3,
            kernel * 1e3,
            gb / kernel,
            read * 1e3,
            gb / read,
            read / kernel,
            gb / hot
        );
    }
}

fn main() {
    let threads = common::env_count("SPROUT_BENCH_THREADS", 2);
    let reps = common::env_count("SPROUT_BENCH_REPS", 5);
    if reps == 0 {
        common::bad_setting("SPROUT_BENCH_REPS: at least 1 (each figure is a median)".into());
    }
    let rows = match std::env::var("SPROUT_BENCH_ROWS") {
        Err(_) => vec![1, 4],
        Ok(v) => v
            .split(',')
            .map(|m| match m.trim().parse() {
                Ok(m) if m > 0 => m,
                _ => common::bad_setting(format!("SPROUT_BENCH_ROWS: {v:?} is not a list of counts like 1,4")),
            })
            .collect(),
    };
    let settings = Settings { reps, rows, only: std::env::var("SPROUT_BENCH_ONLY").ok() };
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().unwrap();
    println!("quantized matmul against a plain read of its weights, {threads} threads, median of {reps}");
    // The default model's projections (hidden 896, ffn 4864, vocabulary 151936).
    shape::<BlockQ5_0>("Q5_0 attn q/o 896x896", 896, 896, &settings);
    shape::<BlockQ5_0>("Q5_0 ffn gate/up 896x4864", 896, 4864, &settings);
    shape::<BlockQ6K>("Q6_K ffn down 4864x896", 4864, 896, &settings);
    shape::<BlockQ4K>("Q4_K ffn down 4864x896", 4864, 896, &settings);
    shape::<BlockQ8_0>("Q8_0 output 896x151936", 896, 151936, &settings);
}
