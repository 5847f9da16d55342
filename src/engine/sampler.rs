//! Seeded per-request sampling.
//!
//! mistral.rs samples with one engine-wide RNG, so two requests with the same
//! seed would not get the same answer. Sprout samples itself instead, inside a
//! mistral.rs logits processor that runs after the engine's repetition penalty:
//! it draws the token from temperature + top-k + top-p with a random number
//! that depends only on the request's seed and the position, then hands the
//! engine logits where only that token is finite, and the engine (set to
//! greedy) takes it. Same seed, same prompt, same answer, whatever else is
//! batched alongside.

use crate::directive::splitmix64;

/// Picks a token index from raw `logits` (pure; the processor wraps it).
pub fn pick(logits: &[f32], temperature: f64, top_k: usize, top_p: f64, seed: u64, position: usize) -> usize {
    let mut idx: Vec<usize> = (0..logits.len()).filter(|&i| logits[i].is_finite()).collect();
    if idx.is_empty() {
        return 0;
    }
    let by_logit_desc = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]);
    if temperature <= 0.0 {
        return *idx.iter().min_by(|a, b| by_logit_desc(a, b)).expect("non-empty");
    }
    // Top-k in O(n) first: the vocabulary is ~150k tokens and this runs per token.
    if top_k > 0 && top_k < idx.len() {
        idx.select_nth_unstable_by(top_k - 1, by_logit_desc);
        idx.truncate(top_k);
    }
    idx.sort_unstable_by(by_logit_desc);
    let max = logits[idx[0]] as f64;
    let weights: Vec<f64> = idx.iter().map(|&i| ((logits[i] as f64 - max) / temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    // Top-p: the smallest prefix whose probability reaches top_p.
    let mut keep = weights.len();
    if top_p < 1.0 {
        let mut acc = 0.0;
        for (n, w) in weights.iter().enumerate() {
            acc += w / total;
            if acc >= top_p {
                keep = n + 1;
                break;
            }
        }
    }
    let kept_total: f64 = weights[..keep].iter().sum();
    let u = (splitmix64(seed ^ splitmix64(position as u64)) >> 11) as f64 / (1u64 << 53) as f64 * kept_total;
    let mut acc = 0.0;
    for (n, w) in weights[..keep].iter().enumerate() {
        acc += w;
        if u < acc {
            return idx[n];
        }
    }
    idx[keep - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_largest() {
        assert_eq!(pick(&[0.1, 3.0, 2.0, f32::NEG_INFINITY], 0.0, 40, 0.9, 1, 0), 1);
    }

    #[test]
    fn same_seed_same_choice_and_seeds_differ() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32 / 300.0).collect();
        let a: Vec<_> = (0..50).map(|p| pick(&logits, 1.0, 0, 1.0, 42, p)).collect();
        let b: Vec<_> = (0..50).map(|p| pick(&logits, 1.0, 0, 1.0, 42, p)).collect();
        let c: Vec<_> = (0..50).map(|p| pick(&logits, 1.0, 0, 1.0, 43, p)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        // Token 0 holds almost all the mass: top_p = 0.5 keeps it alone.
        let logits = [10.0, 0.0, 0.0, 0.0];
        assert!((0..200).all(|p| pick(&logits, 1.0, 0, 0.5, 9, p) == 0));
        // top_k = 2 never picks outside the two best.
        let logits = [1.0, 1.0, 0.9, 0.9, 0.8];
        assert!((0..500).all(|p| pick(&logits, 5.0, 2, 1.0, 3, p) < 2));
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // p(0) = e^1 / (e^1 + 1) ~ 0.731 at temperature 1.
        let logits = [1.0, 0.0];
        let n = 20_000;
        let zeros = (0..n).filter(|&p| pick(&logits, 1.0, 0, 1.0, 5, p) == 0).count();
        let share = zeros as f64 / n as f64;
        assert!((share - 0.731).abs() < 0.02, "{share}");
    }
}
