//! The ledger: finished jobs' records in finishing order, the running
//! totals, and retention.

use super::*;

impl Store {
    /// Deletes finished jobs that ended before `cutoff_ms` (and their
    /// idempotency keys). Ledger entries stay. Returns how many went.
    pub fn collect_finished(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self.jobs.iter() {
            let (k, v) = item?;
            let job: Job = decode(&k, &v)?;
            if job.state.is_terminal() && job.finished_ms.is_some_and(|f| f < cutoff_ms) {
                self.write(|| {
                    (&self.jobs, &self.idem).transaction(|(jobs, idem)| {
                        jobs.remove(&k)?;
                        if let Some(key) = &job.idempotency_key {
                            idem.remove(key.as_bytes())?;
                        }
                        Ok::<_, ConflictableTransactionError<StoreError>>(())
                    })?;
                    Ok(())
                })?;
                n += 1;
            }
        }
        if n > 0 {
            self.flush()?;
        }
        Ok(n)
    }

    /// Totals over the whole ledger.
    pub fn totals(&self) -> Totals {
        self.totals.lock().expect("poisoned").clone()
    }

    /// Ledger entries that finished at or after `since_ms`, oldest first.
    pub fn ledger(&self, since_ms: u64) -> Result<Vec<LedgerEntry>, StoreError> {
        let mut out = Vec::new();
        for item in self.ledger.range(ledger_key(since_ms, 0).to_vec()..) {
            let (k, v) = item?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    /// The newest ledger records since `since_ms`, newest first, at most `limit`.
    pub fn ledger_recent(&self, since_ms: u64, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        let mut out = Vec::new();
        for item in self.ledger.range(ledger_key(since_ms, 0).to_vec()..).rev().take(limit) {
            let (k, v) = item?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }
}
