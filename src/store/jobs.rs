//! Jobs: submitting (durably), claiming, finishing, cancelling, deferring
//! and requeueing, and recovery after a crash.

use super::*;

impl Store {
    /// Jobs a previous process left running go back to the queue with the
    /// interrupted attempt counted, or fail once `max_attempts` is reached.
    pub fn recover(&self, max_attempts: u32) -> Result<Recovery, StoreError> {
        let mut rec = Recovery::default();
        for item in self.running.iter() {
            let (id, _) = item?;
            let mut job: Job = match self.jobs.get(&id)? {
                Some(v) => decode(&id, &v)?,
                None => {
                    self.running.remove(&id)?;
                    continue;
                }
            };
            if job.attempts >= max_attempts {
                job.state = JobState::Failed;
                job.finished_ms = Some(self.clock.now_ms());
                job.error = Some(format!(
                    "interrupted {} times (sproutd stopped or crashed while it ran); giving up after queue.max_attempts = {max_attempts}",
                    job.attempts
                ));
                let bytes = encode(&job);
                self.write(|| {
                    (&self.jobs, &self.running).transaction(|(jobs, running)| {
                        jobs.insert(job.id.as_bytes(), bytes.as_slice())?;
                        running.remove(job.id.as_bytes())?;
                        Ok::<_, ConflictableTransactionError<StoreError>>(())
                    })?;
                    Ok(())
                })?;
                rec.failed += 1;
            } else {
                self.requeue(job)?;
                rec.requeued += 1;
            }
        }
        self.flush()?;
        if rec != Recovery::default() {
            tracing::warn!(requeued = rec.requeued, failed = rec.failed, "recovered jobs left running by a previous process");
        }
        Ok(rec)
    }

    pub(super) fn requeue(&self, mut job: Job) -> Result<(), StoreError> {
        job.state = JobState::Queued;
        job.started_ms = None;
        let key = queue_key(job.priority, job.seq);
        let bytes = encode(&job);
        self.write(|| {
            (&self.jobs, &self.queue, &self.running).transaction(|(jobs, queue, running)| {
                jobs.insert(job.id.as_bytes(), bytes.as_slice())?;
                queue.insert(&key, job.id.as_bytes())?;
                running.remove(job.id.as_bytes())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })?;
            Ok(())
        })?;
        self.queued.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Allocates the next sequence number (monotonic across restarts).
    pub fn next_seq(&self) -> Result<u64, StoreError> {
        let _g = self.write.lock().expect("poisoned");
        // Both strictly increase, so their maximum does too.
        Ok(self.db.generate_id()?.max(self.seq_floor.fetch_add(1, Ordering::SeqCst)))
    }

    /// Persists a new queued job and flushes it before returning. With an
    /// idempotency key already used, returns that job instead (`created: false`).
    pub async fn submit(
        &self,
        seq: u64,
        new: NewJob,
        directive: String,
        seed: u64,
    ) -> Result<Submitted, StoreError> {
        let (submitted, ticket) = self.submit_unflushed_ticket(seq, new, directive, seed)?;
        if submitted.created {
            self.durable(ticket).await?;
        }
        Ok(submitted)
    }

    /// [`Store::submit`] without the flush: for bulk loads that flush once at
    /// the end (benchmarks, imports). Nothing written so may be acknowledged
    /// before a [`Store::flush`].
    pub fn submit_unflushed(&self, seq: u64, new: NewJob, directive: String, seed: u64) -> Result<Submitted, StoreError> {
        Ok(self.submit_unflushed_ticket(seq, new, directive, seed)?.0)
    }

    pub(super) fn submit_unflushed_ticket(
        &self,
        seq: u64,
        new: NewJob,
        directive: String,
        seed: u64,
    ) -> Result<(Submitted, u64), StoreError> {
        let job = Job {
            id: job_id(seq),
            seq,
            origin: new.origin,
            state: if new.deferral.is_some() { JobState::Deferred } else { JobState::Queued },
            priority: new.priority,
            request: new.request,
            directive,
            seed,
            created_ms: self.clock.now_ms(),
            started_ms: None,
            finished_ms: None,
            attempts: 0,
            result: None,
            error: None,
            idempotency_key: new.idempotency_key,
            deadline_ms: new.deadline_ms,
            deferral: new.deferral,
        };
        // A held job waits in `deferred` until its time; the others in `queue`.
        let (tree, key) = match &job.deferral {
            Some(d) => (&self.deferred, deferred_key(d.until_ms, job.seq).to_vec()),
            None => (&self.queue, queue_key(job.priority, job.seq).to_vec()),
        };
        let bytes = encode(&job);
        let (existing, ticket) = self.write(|| {
            let mark = self.acknowledged.now.lock().expect("poisoned").after(job.seq);
            let existing = (&self.jobs, tree, &self.idem, &self.meta).transaction(|(jobs, index, idem, meta)| {
                if let Some(k) = &job.idempotency_key {
                    if let Some(id) = idem.get(k.as_bytes())? {
                        return Ok(Some(id));
                    }
                    idem.insert(k.as_bytes(), job.id.as_bytes())?;
                }
                jobs.insert(job.id.as_bytes(), bytes.as_slice())?;
                index.insert(key.as_slice(), job.id.as_bytes())?;
                meta.insert("acknowledged", &mark.to_bytes())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(None)
            })?;
            if existing.is_none() {
                *self.acknowledged.now.lock().expect("poisoned") = mark;
            }
            // Counted under the write lock, before any claim can see the job
            // (a claim counted first made the count wrap below zero: 429s).
            if existing.is_none() {
                if job.deferral.is_some() { &self.held } else { &self.queued }.fetch_add(1, Ordering::SeqCst);
            }
            Ok(existing)
        })?;
        if let Some(id) = existing {
            let id = String::from_utf8_lossy(&id).into_owned();
            return Ok((Submitted { job: self.get(&id)?, created: false }, ticket));
        }
        Ok((Submitted { job, created: true }, ticket))
    }

    pub fn get(&self, id: &str) -> Result<Job, StoreError> {
        match self.jobs.get(id.as_bytes())? {
            Some(v) => decode(id.as_bytes(), &v),
            None => Err(StoreError::NotFound(id.to_string())),
        }
    }

    /// Queue positions (0 = next) of the queued ones among `jobs`, in one
    /// walk of the queue that stops at the last of them (job id → position).
    pub fn positions(&self, jobs: &[Job]) -> Result<std::collections::HashMap<String, usize>, StoreError> {
        let mut wanted: std::collections::HashSet<&[u8]> =
            jobs.iter().filter(|j| j.state == JobState::Queued).map(|j| j.id.as_bytes()).collect();
        let mut out = std::collections::HashMap::new();
        if wanted.is_empty() {
            return Ok(out);
        }
        for (pos, item) in self.queue.iter().enumerate() {
            let (_, id) = item?;
            if wanted.remove(id.as_ref()) {
                out.insert(String::from_utf8_lossy(&id).into_owned(), pos);
                if wanted.is_empty() {
                    break;
                }
            }
        }
        Ok(out)
    }

    pub fn claim(&self) -> Result<Option<Job>, StoreError> {
        self.claim_from(false)
    }

    /// Takes the daemon's own next job (they queue at the lowest priority,
    /// so at the queue's end), if the queue ends with one: the evaluator's
    /// bounded share of the engine while users keep it busy.
    pub fn claim_daemon(&self) -> Result<Option<Job>, StoreError> {
        self.claim_from(true)
    }

    pub(super) fn claim_from(&self, daemon_end: bool) -> Result<Option<Job>, StoreError> {
        loop {
            let entry = if daemon_end { self.queue.last()? } else { self.queue.first()? };
            let Some((key, id)) = entry else { return Ok(None) };
            // Some(None): taken meanwhile, look again; None: not the daemon's.
            let (claimed, _) = self.write(|| Ok((&self.jobs, &self.queue, &self.running).transaction(|(jobs, queue, running)| {
                let Some(bytes) = jobs.get(&id)? else {
                    queue.remove(&key)?;
                    return Ok(Some(None));
                };
                let mut job: Job = decode(&id, &bytes).map_err(ConflictableTransactionError::Abort)?;
                if daemon_end && job.origin != Origin::Daemon {
                    return Ok(None);
                }
                if queue.remove(&key)?.is_none() {
                    return Ok(Some(None)); // taken meanwhile; look again
                }
                job.state = JobState::Running;
                job.started_ms = Some(self.clock.now_ms());
                job.attempts += 1;
                jobs.insert(&id, encode(&job))?;
                running.insert(&id, &[])?;
                Ok(Some(Some(job)))
            })?))?;
            match claimed {
                None => return Ok(None),
                Some(None) => continue,
                Some(Some(job)) => {
                    self.queued.fetch_sub(1, Ordering::SeqCst);
                    return Ok(Some(job));
                }
            }
        }
    }

    /// Records the end of a running job (succeeded, failed or cancelled) and
    /// its ledger entry, in one transaction, and flushes.
    pub async fn finish(
        &self,
        id: &str,
        state: JobState,
        result: Option<JobResult>,
        error: Option<String>,
        ledger: Option<LedgerEntry>,
    ) -> Result<Job, StoreError> {
        debug_assert!(state.is_terminal());
        let finished_ms = self.clock.now_ms();
        let (job, ticket) = self.write(|| Ok((&self.jobs, &self.running, &self.ledger).transaction(|(jobs, running, ledger_tree)| {
            let Some(bytes) = jobs.get(id.as_bytes())? else { return abort(StoreError::NotFound(id.into())) };
            let mut job: Job = decode(id.as_bytes(), &bytes).map_err(ConflictableTransactionError::Abort)?;
            if job.state != JobState::Running {
                return abort(StoreError::Conflict { id: id.into(), state: job.state.as_str() });
            }
            job.state = state;
            job.finished_ms = Some(finished_ms);
            job.result = result.clone();
            job.error = error.clone();
            jobs.insert(id.as_bytes(), encode(&job))?;
            running.remove(id.as_bytes())?;
            let entry = ledger.clone().map(|mut entry| {
                entry.finished_ms = finished_ms;
                entry.state = state;
                entry
            });
            if let Some(entry) = &entry {
                ledger_tree.insert(&ledger_key(finished_ms, job.seq), encode(entry))?;
            }
            Ok((job, entry))
        })?))?;
        let (job, entry) = job;
        if let Some(e) = &entry {
            self.totals.lock().expect("poisoned").add(e);
        }
        self.durable(ticket).await?;
        Ok(job)
    }

    /// Cancels a queued or deferred job at once; a running one is reported
    /// so the worker can abort it.
    pub async fn cancel(&self, id: &str) -> Result<CancelOutcome, StoreError> {
        self.cancel_because(id, "by request").await
    }

    /// Cancels the daemon's own queued work left by an evaluation run that a
    /// restart interrupted (nobody waits for those answers any more). Run at
    /// startup, before the worker claims anything. The daemon queues its
    /// work at the lowest priority, so only the end of the queue is read.
    pub async fn cancel_orphaned_daemon_work(&self) -> Result<usize, StoreError> {
        let lowest = queue_key(i32::MAX, 0);
        let mut ids = Vec::new();
        for item in self.queue.iter().rev() {
            let (k, id) = item?;
            if k[..4] != lowest[..4] {
                break;
            }
            let id = String::from_utf8_lossy(&id).into_owned();
            if self.get(&id)?.origin == Origin::Daemon {
                ids.push(id);
            }
        }
        for id in &ids {
            self.cancel_because(id, "at startup (the evaluation run it belonged to was interrupted by a restart)").await?;
        }
        Ok(ids.len())
    }

    /// Cancels a queued job (`by` says why, in its error); a running one is left to the worker.
    pub async fn cancel_because(&self, id: &str, by: &str) -> Result<CancelOutcome, StoreError> {
        let job = self.get(id)?;
        let (tree, key, counter, why) = match job.state {
            JobState::Queued => (&self.queue, queue_key(job.priority, job.seq).to_vec(), &self.queued, "before it ran"),
            JobState::Deferred => (
                &self.deferred,
                deferred_key(job.deferral.map(|d| d.until_ms).unwrap_or(0), job.seq).to_vec(),
                &self.held,
                "while deferred",
            ),
            JobState::Running => return Ok(CancelOutcome::Running(job)),
            s => return Err(StoreError::Conflict { id: id.into(), state: s.as_str() }),
        };
        let expected = job.state;
        let (done, ticket) = self.write(|| Ok((&self.jobs, tree).transaction(|(jobs, index)| {
            let Some(bytes) = jobs.get(id.as_bytes())? else { return abort(StoreError::NotFound(id.into())) };
            let mut job: Job = decode(id.as_bytes(), &bytes).map_err(ConflictableTransactionError::Abort)?;
            if job.state != expected {
                return Ok(Err(job)); // claimed or promoted meanwhile
            }
            index.remove(key.as_slice())?;
            job.state = JobState::Cancelled;
            job.finished_ms = Some(self.clock.now_ms());
            job.error = Some(format!("cancelled {by} {why}"));
            jobs.insert(id.as_bytes(), encode(&job))?;
            Ok(Ok(job))
        })?))?;
        match done {
            Ok(job) => {
                counter.fetch_sub(1, Ordering::SeqCst);
                self.durable(ticket).await?;
                Ok(CancelOutcome::Cancelled(job))
            }
            Err(job) if job.state == JobState::Running => Ok(CancelOutcome::Running(job)),
            // Promoted to the queue meanwhile: cancel it there.
            Err(job) if job.state == JobState::Queued => Box::pin(self.cancel_because(id, by)).await,
            Err(job) => Err(StoreError::Conflict { id: id.into(), state: job.state.as_str() }),
        }
    }

    /// Jobs newest first, optionally only those in `state`.
    pub fn list(&self, state: Option<JobState>, limit: usize) -> Result<Vec<Job>, StoreError> {
        if state == Some(JobState::Queued) {
            // In run order, from the index.
            let mut out = Vec::new();
            for item in self.queue.iter().take(limit) {
                let (_, id) = item?;
                out.push(self.get(&String::from_utf8_lossy(&id))?);
            }
            return Ok(out);
        }
        let mut out = Vec::new();
        for item in self.jobs.iter().rev() {
            let (k, v) = item?;
            let job: Job = decode(&k, &v)?;
            if state.is_none_or(|s| s == job.state) {
                out.push(job);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Moves the deferred jobs whose time has come (`until_ms <= now_ms`)
    /// into the queue, flushed; returns how many.
    pub async fn promote_due(&self, now_ms: u64) -> Result<usize, StoreError> {
        let due: Vec<(sled::IVec, sled::IVec)> =
            self.deferred.range(..deferred_key(now_ms, u64::MAX).to_vec()).collect::<Result<_, _>>()?;
        let mut n = 0;
        let mut last_ticket = None;
        for (key, id) in due {
            let (moved, ticket) = self.write(|| {
                let moved = (&self.jobs, &self.deferred, &self.queue).transaction(|(jobs, deferred, queue)| {
                    if deferred.remove(&key)?.is_none() {
                        return Ok(false); // cancelled meanwhile
                    }
                    let Some(bytes) = jobs.get(&id)? else { return Ok(false) };
                    let mut job: Job = decode(&id, &bytes).map_err(ConflictableTransactionError::Abort)?;
                    job.state = JobState::Queued;
                    jobs.insert(&id, encode(&job))?;
                    queue.insert(&queue_key(job.priority, job.seq), &id)?;
                    Ok(true)
                })?;
                // Counted under the write lock, before a claim can see it.
                if moved {
                    self.held.fetch_sub(1, Ordering::SeqCst);
                    self.queued.fetch_add(1, Ordering::SeqCst);
                }
                Ok(moved)
            })?;
            if moved {
                n += 1;
                last_ticket = Some(ticket);
            }
        }
        if let Some(t) = last_ticket {
            self.durable(t).await?;
        }
        Ok(n)
    }

    /// Number of deferred jobs.
    pub fn deferred_len(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// When the earliest held job may start (Unix ms), if any is held.
    pub fn next_deferred_ms(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.deferred.first()?.map(|(k, _)| u64::from_be_bytes(k[..8].try_into().expect("16-byte key"))))
    }

    /// Number of queued jobs.
    pub fn queued_len(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Number of running jobs.
    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    /// Puts one running job back in the queue (the backend running it
    /// failed), and flushes. `counted`: the attempt stays counted (the
    /// backend took the request and failed; a prompt that fails every
    /// backend stops at `queue.max_attempts`); otherwise it is returned.
    pub async fn requeue_job(&self, id: &str, counted: bool) -> Result<Job, StoreError> {
        let bytes = self.jobs.get(id.as_bytes())?.ok_or_else(|| StoreError::NotFound(id.into()))?;
        let mut job: Job = decode(id.as_bytes(), &bytes)?;
        if job.state != JobState::Running {
            return Err(StoreError::Conflict { id: id.into(), state: job.state.as_str() });
        }
        if !counted {
            job.attempts = job.attempts.saturating_sub(1);
        }
        self.requeue(job.clone())?;
        self.sync().await?;
        job.state = JobState::Queued;
        job.started_ms = None;
        Ok(job)
    }

    /// Puts every running job back in the queue (graceful shutdown), and
    /// flushes. A graceful interruption does not count as an attempt.
    pub fn requeue_running(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self.running.iter() {
            let (id, _) = item?;
            if let Some(v) = self.jobs.get(&id)? {
                let mut job: Job = decode(&id, &v)?;
                job.attempts = job.attempts.saturating_sub(1);
                self.requeue(job)?;
                n += 1;
            }
        }
        self.flush()?;
        Ok(n)
    }
}
