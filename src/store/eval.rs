//! The evaluator's records: sampled prompts and stored evaluation runs.

use super::*;

impl Store {
    /// Offers a prompt to the evaluator's reservoir of `cap` samples
    /// (reservoir sampling: every prompt seen has the same chance to be
    /// kept; `r` is a random number). Slots `0..kept` are always the filled
    /// ones (collection compacts them), so a reservoir that is not full
    /// fills its next slot. Not flushed: a sample lost in a crash costs
    /// nothing.
    pub fn sample_prompt(&self, sample: &PromptSample, cap: usize, r: u64) -> Result<(), StoreError> {
        let seen = self.samples_seen.fetch_add(1, Ordering::SeqCst) + 1;
        let cap = cap as u64;
        // Most prompts are not kept once the reservoir is full: no lock and
        // no write at all. The count of prompts seen is persisted with each
        // kept one (after a crash a few uncounted prompts only favour newer ones).
        if self.samples_kept.load(Ordering::SeqCst) as u64 >= cap && r % seen >= cap {
            return Ok(());
        }
        self.write(|| {
            // Decided again under the lock: concurrent offers and a
            // collection may have moved the count.
            let kept = self.samples_kept.load(Ordering::SeqCst) as u64;
            let slot = if kept < cap { kept } else if r % seen < cap { r % seen } else { return Ok(()) };
            if self.samples.insert(slot.to_be_bytes(), encode(sample))?.is_none() {
                self.samples_kept.fetch_add(1, Ordering::SeqCst);
            }
            self.meta.insert("samples_seen", &seen.to_be_bytes())?;
            Ok(())
        })?;
        Ok(())
    }

    /// The reservoir, slot order.
    pub fn samples(&self) -> Result<Vec<PromptSample>, StoreError> {
        self.samples.iter().map(|item| item.map_err(StoreError::from).and_then(|(k, v)| decode(&k, &v))).collect()
    }

    /// Drops samples taken before `cutoff_ms` and moves the rest down to
    /// slots `0..kept`, so the freed slots refill with new prompts.
    pub fn collect_samples(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        let (dropped, _) = self.write(|| {
            let all = self.samples()?;
            let keep: Vec<&PromptSample> = all.iter().filter(|s| s.at_ms >= cutoff_ms).collect();
            if keep.len() == all.len() {
                return Ok(0);
            }
            self.samples.clear()?;
            for (slot, s) in keep.iter().enumerate() {
                self.samples.insert((slot as u64).to_be_bytes(), encode(*s))?;
            }
            self.samples_kept.store(keep.len(), Ordering::SeqCst);
            Ok(all.len() - keep.len())
        })?;
        Ok(dropped)
    }

    /// Stores a finished evaluation run (flushed).
    pub async fn save_eval(&self, run: &EvalRun) -> Result<(), StoreError> {
        let mut key = run.started_ms.to_be_bytes().to_vec();
        key.extend_from_slice(run.id.as_bytes());
        let ((), ticket) = self.write(|| {
            self.evals.insert(key, encode(run))?;
            Ok(())
        })?;
        self.durable(ticket).await
    }

    /// Evaluation runs, newest first, decoded as they are read.
    pub fn eval_runs_iter(&self) -> impl Iterator<Item = Result<EvalRun, StoreError>> + '_ {
        self.evals.iter().rev().map(|item| item.map_err(StoreError::from).and_then(|(k, v)| decode(&k, &v)))
    }

    /// The newest `limit` evaluation runs, newest first.
    pub fn eval_runs(&self, limit: usize) -> Result<Vec<EvalRun>, StoreError> {
        self.eval_runs_iter().take(limit).collect()
    }

    pub fn eval_runs_len(&self) -> usize {
        self.evals.len()
    }

    pub fn samples_len(&self) -> usize {
        self.samples_kept.load(Ordering::SeqCst)
    }
}
