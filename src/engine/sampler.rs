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
//!
//! The same processor applies what the engine lacks or gets wrong for
//! OpenAI's parameters ([`Picker`]): `logit_bias` (mistral.rs 0.8.1 stores it
//! and never applies it), presence and frequency penalties over the
//! *generated* tokens (mistral.rs counts the prompt's too), and the
//! log-probabilities of the distribution the token is drawn from
//! (mistral.rs reports `log10` of a raw logit under greedy decoding).

use std::collections::BTreeMap;

use super::Sampling;
use crate::plan::directive::splitmix64;

/// One generated token: its id, its log-probability and the `n` most likely
/// alternatives (ids), in the distribution it was drawn from.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// A request's token chooser, called once per generated position (twice when
/// a grammar turned the first pick down; the second call wins).
#[derive(Debug)]
pub struct Picker {
    sampling: Sampling,
    logprobs: Option<usize>,
    /// The context length at the first call: the prompt's tokens.
    prompt_len: Option<usize>,
    /// Position in the answer → what was chosen there.
    pub chosen: BTreeMap<usize, Choice>,
}

impl Picker {
    pub fn new(sampling: Sampling, logprobs: Option<usize>) -> Self {
        Self { sampling, logprobs, prompt_len: None, chosen: BTreeMap::new() }
    }

    /// Adjusts `logits` in place (penalties, bias) and returns the token to
    /// emit; `context` is every token so far, prompt included.
    pub fn step(&mut self, logits: &mut [f32], context: &[u32]) -> Result<usize, String> {
        let prompt_len = *self.prompt_len.get_or_insert(context.len());
        let generated = &context[prompt_len.min(context.len())..];
        let s = &self.sampling;
        if s.presence_penalty != 0.0 || s.frequency_penalty != 0.0 {
            let mut counts: BTreeMap<u32, f32> = BTreeMap::new();
            for &t in generated {
                *counts.entry(t).or_default() += 1.0;
            }
            for (&t, &n) in &counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= s.presence_penalty + n * s.frequency_penalty;
                }
            }
        }
        for (&t, &b) in &s.logit_bias {
            let vocab = logits.len();
            let l = logits.get_mut(t as usize).ok_or_else(|| format!("logit_bias names token {t}, but the model has {vocab} tokens"))?;
            *l += b;
        }
        let token = pick(logits, s.temperature, s.top_k, s.top_p, s.seed, context.len());
        if let Some(n) = self.logprobs {
            let scale = if s.temperature > 0.0 { s.temperature } else { 1.0 };
            let lp = log_softmax(logits, scale);
            let mut top: Vec<u32> = (0..lp.len() as u32).filter(|&i| lp[i as usize].is_finite()).collect();
            if n < top.len() {
                let k = n.saturating_sub(1);
                top.select_nth_unstable_by(k, |a, b| lp[*b as usize].total_cmp(&lp[*a as usize]));
                top.truncate(n);
            }
            top.sort_by(|a, b| lp[*b as usize].total_cmp(&lp[*a as usize]));
            self.chosen.insert(
                generated.len(),
                Choice { token: token as u32, logprob: lp[token], top: top.into_iter().map(|i| (i, lp[i as usize])).collect() },
            );
        }
        Ok(token)
    }
}

/// `log softmax(logits / scale)`, in f64 for the sum.
pub fn log_softmax(logits: &[f32], scale: f64) -> Vec<f32> {
    let max = logits.iter().copied().filter(|l| l.is_finite()).fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().filter(|l| l.is_finite()).map(|&l| ((l as f64 - max) / scale).exp()).sum();
    let log_sum = sum.ln();
    logits.iter().map(|&l| if l.is_finite() { ((l as f64 - max) / scale - log_sum) as f32 } else { f32::NEG_INFINITY }).collect()
}

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

    fn greedy() -> Sampling {
        Sampling { top_p: 1.0, repetition_penalty: 1.0, ..Default::default() }
    }

    #[test]
    fn logit_bias_moves_the_choice_and_unknown_tokens_are_an_error() {
        let mut s = greedy();
        s.logit_bias = [(2, 5.0), (0, -100.0)].into();
        let mut p = Picker::new(s.clone(), None);
        let mut logits = vec![3.0, 1.0, 0.0];
        assert_eq!(p.step(&mut logits, &[7, 7]), Ok(2));
        assert_eq!(logits, [-97.0, 1.0, 5.0]);
        s.logit_bias = [(3, 1.0)].into();
        let e = Picker::new(s, None).step(&mut [0.0, 0.0, 0.0], &[1]).unwrap_err();
        assert!(e.contains("token 3") && e.contains("3 tokens"), "{e}");
    }

    #[test]
    fn penalties_count_only_generated_tokens() {
        let mut s = greedy();
        s.presence_penalty = 1.0;
        s.frequency_penalty = 0.5;
        let mut p = Picker::new(s, None);
        // The prompt [0, 0, 0] is not penalised.
        let mut l = vec![2.0, 1.75, 0.0];
        assert_eq!(p.step(&mut l, &[0, 0, 0]), Ok(0));
        assert_eq!(l, [2.0, 1.75, 0.0]);
        // Token 0 generated twice: 2 - 1 - 2 x 0.5 = 0; token 1 once: 1.75 - 1.5 = 0.25.
        let mut l = vec![2.0, 1.75, 0.0];
        assert_eq!(p.step(&mut l, &[0, 0, 0, 0, 1, 0]), Ok(1));
        assert_eq!(l, [0.0, 0.25, 0.0]);
    }

    #[test]
    fn logprobs_are_of_the_distribution_drawn_from() {
        let mut p = Picker::new(greedy(), Some(2));
        let mut l = vec![(0.5f32).ln(), (0.3f32).ln(), (0.2f32).ln(), f32::NEG_INFINITY];
        assert_eq!(p.step(&mut l, &[9]), Ok(0));
        let c = &p.chosen[&0];
        assert!((c.logprob - 0.5f32.ln()).abs() < 1e-6, "{c:?}");
        assert_eq!(c.top.iter().map(|t| t.0).collect::<Vec<_>>(), [0, 1]);
        assert!((c.top[1].1 - 0.3f32.ln()).abs() < 1e-6);
        // A second call at the same position (a grammar's mask) replaces the first.
        let mut l = vec![f32::NEG_INFINITY, 0.0, 0.0, f32::NEG_INFINITY];
        assert_eq!(p.step(&mut l, &[9]), Ok(1));
        assert_eq!(p.chosen.len(), 1);
        assert!((p.chosen[&0].logprob - 0.5f32.ln()).abs() < 1e-6);
        // At temperature 2 the distribution is flatter: logits / 2.
        let mut s = greedy();
        s.temperature = 2.0;
        let mut p = Picker::new(s, Some(1));
        p.step(&mut vec![2.0, 0.0], &[1]).unwrap();
        let expect = (1.0f64 / (1.0 + (-1.0f64).exp())).ln() as f32;
        let c = p.chosen[&0].clone();
        assert!((c.top[0].1 - expect).abs() < 1e-6, "{c:?}");
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
