//! The durable job queue, on sled.
//!
//! Trees:
//! - `jobs`:  job id → `Job` (JSON). Ids are `job-` + the zero-padded hex
//!   sequence number, so key order is submission order.
//! - `queue`: priority (sign-flipped, big-endian) ‖ seq (big-endian) → job id,
//!   one entry per *queued* job: the first key is the next job to run.
//! - `meta`:  `schema_version`.
//!
//! Invariant: a job is in `queue` exactly when its state is `Queued`; both
//! trees change in one sled transaction. Every write that a client is told
//! about (a submission, a cancel, a finished result) is flushed before the
//! call returns, so an acknowledged job survives a crash.

use std::path::Path;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::job::{now_ms, ChatRequest, Job, JobResult, JobState, Origin};

/// Bumped whenever the persisted layout or the `Job` JSON changes incompatibly.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the job store at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("the job store at {path} has schema version {found}, this sproutd understands {SCHEMA_VERSION}")]
    Schema { path: String, found: u32 },
    #[error("job store I/O: {0}")]
    Sled(#[from] sled::Error),
    #[error("job store holds a corrupt record for {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("job {0} not found")]
    NotFound(String),
    #[error("job {id} is already {state}")]
    Conflict { id: String, state: &'static str },
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

pub struct Store {
    db: sled::Db,
    jobs: sled::Tree,
    queue: sled::Tree,
}

/// What a new job needs besides what the store assigns (id, seq, timestamps).
pub struct NewJob {
    pub origin: Origin,
    pub priority: i32,
    pub request: ChatRequest,
}

/// Returned by [`Store::cancel`].
#[derive(Debug, PartialEq)]
pub enum CancelOutcome {
    /// It was queued and is now cancelled.
    Cancelled(Job),
    /// It is running: the worker must abort it (and then records it cancelled).
    Running(Job),
}

fn queue_key(priority: i32, seq: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&((priority as u32) ^ 0x8000_0000).to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn job_id(seq: u64) -> String {
    format!("job-{seq:016x}")
}

fn decode(key: &[u8], bytes: &[u8]) -> Result<Job, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
}

fn encode(job: &Job) -> Vec<u8> {
    serde_json::to_vec(job).expect("a Job always serializes")
}

impl Store {
    /// Opens (or creates) the store, checks its schema version, and recovers
    /// jobs a previous process left running: they go back to the queue.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.display().to_string();
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|source| StoreError::Open { path: path.clone(), source })?;
        let meta = db.open_tree("meta")?;
        match meta.get("schema_version")? {
            Some(v) => {
                let found = v.as_ref().try_into().map(u32::from_be_bytes).unwrap_or(0);
                if found != SCHEMA_VERSION {
                    return Err(StoreError::Schema { path, found });
                }
            }
            None => {
                meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
            }
        }
        let store = Store { jobs: db.open_tree("jobs")?, queue: db.open_tree("queue")?, db };
        store.recover()?;
        store.db.flush()?;
        Ok(store)
    }

    fn recover(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self.jobs.iter() {
            let (k, v) = item?;
            let job = decode(&k, &v)?;
            if job.state == JobState::Running {
                self.requeue(job)?;
                n += 1;
            }
        }
        if n > 0 {
            tracing::warn!(jobs = n, "requeued jobs left running by a previous process");
        }
        Ok(n)
    }

    fn requeue(&self, mut job: Job) -> Result<(), StoreError> {
        job.state = JobState::Queued;
        job.started_ms = None;
        let key = queue_key(job.priority, job.seq);
        let bytes = encode(&job);
        (&self.jobs, &self.queue).transaction(|(jobs, queue)| {
            jobs.insert(job.id.as_bytes(), bytes.as_slice())?;
            queue.insert(&key, job.id.as_bytes())?;
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        })?;
        Ok(())
    }

    /// Allocates the next sequence number (monotonic across restarts).
    pub fn next_seq(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    /// Persists a new queued job and flushes it to disk before returning.
    /// `seq` comes from [`Store::next_seq`]; `directive` and `seed` are the
    /// caller's choice for this job.
    pub async fn submit(&self, seq: u64, new: NewJob, directive: String, seed: u64) -> Result<Job, StoreError> {
        let job = Job {
            id: job_id(seq),
            seq,
            origin: new.origin,
            state: JobState::Queued,
            priority: new.priority,
            request: new.request,
            directive,
            seed,
            created_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
            attempts: 0,
            result: None,
            error: None,
        };
        self.requeue(job.clone())?;
        // Several concurrent submits share one flush when they overlap (sled
        // coalesces them), and each is acknowledged only after its own returns.
        self.db.flush_async().await?;
        Ok(job)
    }

    pub fn get(&self, id: &str) -> Result<Job, StoreError> {
        match self.jobs.get(id.as_bytes())? {
            Some(v) => decode(id.as_bytes(), &v),
            None => Err(StoreError::NotFound(id.to_string())),
        }
    }

    /// Takes the next queued job (lowest priority value, then oldest) and marks it running.
    pub fn claim(&self) -> Result<Option<Job>, StoreError> {
        loop {
            let Some((key, id)) = self.queue.first()? else { return Ok(None) };
            let claimed = (&self.jobs, &self.queue).transaction(|(jobs, queue)| {
                if queue.remove(&key)?.is_none() {
                    return Ok(None); // taken meanwhile; look again
                }
                let Some(bytes) = jobs.get(&id)? else { return Ok(None) };
                let mut job = decode(&id, &bytes).map_err(ConflictableTransactionError::Abort)?;
                job.state = JobState::Running;
                job.started_ms = Some(now_ms());
                job.attempts += 1;
                jobs.insert(&id, encode(&job))?;
                Ok(Some(job))
            })?;
            if let Some(job) = claimed {
                return Ok(Some(job));
            }
        }
    }

    /// Records the end of a running job (succeeded, failed or cancelled) and flushes.
    pub async fn finish(
        &self,
        id: &str,
        state: JobState,
        result: Option<JobResult>,
        error: Option<String>,
    ) -> Result<Job, StoreError> {
        debug_assert!(state.is_terminal());
        let mut job = self.get(id)?;
        if job.state.is_terminal() {
            return Err(StoreError::Conflict { id: id.into(), state: job.state.as_str() });
        }
        job.state = state;
        job.finished_ms = Some(now_ms());
        job.result = result;
        job.error = error;
        self.jobs.insert(id.as_bytes(), encode(&job))?;
        self.db.flush_async().await?;
        Ok(job)
    }

    /// Cancels a queued job at once; a running one is reported so the worker can abort it.
    pub async fn cancel(&self, id: &str) -> Result<CancelOutcome, StoreError> {
        let job = self.get(id)?;
        match job.state {
            JobState::Queued => {
                let key = queue_key(job.priority, job.seq);
                let done = (&self.jobs, &self.queue).transaction(|(jobs, queue)| {
                    let Some(bytes) = jobs.get(id.as_bytes())? else {
                        return Err(ConflictableTransactionError::Abort(StoreError::NotFound(id.into())));
                    };
                    let mut job = decode(id.as_bytes(), &bytes).map_err(ConflictableTransactionError::Abort)?;
                    if job.state != JobState::Queued {
                        return Ok(Err(job)); // claimed meanwhile
                    }
                    queue.remove(&key)?;
                    job.state = JobState::Cancelled;
                    job.finished_ms = Some(now_ms());
                    job.error = Some("cancelled by request".into());
                    jobs.insert(id.as_bytes(), encode(&job))?;
                    Ok(Ok(job))
                })?;
                match done {
                    Ok(job) => {
                        self.db.flush_async().await?;
                        Ok(CancelOutcome::Cancelled(job))
                    }
                    Err(job) if job.state == JobState::Running => Ok(CancelOutcome::Running(job)),
                    Err(job) => Err(StoreError::Conflict { id: id.into(), state: job.state.as_str() }),
                }
            }
            JobState::Running => Ok(CancelOutcome::Running(job)),
            s => Err(StoreError::Conflict { id: id.into(), state: s.as_str() }),
        }
    }

    /// Jobs newest first, optionally only those in `state`.
    pub fn list(&self, state: Option<JobState>, limit: usize) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::new();
        for item in self.jobs.iter().rev() {
            let (k, v) = item?;
            let job = decode(&k, &v)?;
            if state.is_none_or(|s| s == job.state) {
                out.push(job);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Number of queued jobs.
    pub fn queued_len(&self) -> usize {
        self.queue.len()
    }

    /// Puts every running job back in the queue (graceful shutdown), and flushes.
    pub fn requeue_running(&self) -> Result<usize, StoreError> {
        let n = self.recover()?;
        self.db.flush()?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{FinishReason, Message, Receipt, Role};

    fn req(text: &str) -> ChatRequest {
        ChatRequest {
            model: "m".into(),
            messages: vec![Message { role: Role::User, content: text.into() }],
            max_tokens: 8,
            temperature: None,
            top_p: None,
            seed: None,
            stop: vec![],
            directive: None,
        }
    }

    async fn submit(s: &Store, text: &str, priority: i32) -> Job {
        let seq = s.next_seq().unwrap();
        s.submit(seq, NewJob { origin: Origin::Job, priority, request: req(text) }, "L0".into(), seq).await.unwrap()
    }

    fn result(id: &str) -> JobResult {
        JobResult {
            text: "ok".into(),
            finish_reason: FinishReason::Stop,
            prompt_tokens: 1,
            completion_tokens: 1,
            receipt: Receipt {
                directive: "L0".into(),
                job_id: id.into(),
                energy_j: 1.0,
                carbon_g: 0.1,
                operational_g: 0.1,
                embodied_g: 0.0,
                intensity_gco2_per_kwh: 400.0,
                duration_s: 0.1,
                estimated: true,
            },
        }
    }

    #[tokio::test]
    async fn claims_by_priority_then_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = submit(&s, "a", 0).await;
        let b = submit(&s, "b", -5).await;
        let c = submit(&s, "c", 0).await;
        let d = submit(&s, "d", 10).await;
        let order: Vec<_> = std::iter::from_fn(|| s.claim().unwrap()).map(|j| j.id).collect();
        assert_eq!(order, [b.id, a.id, c.id, d.id]);
        assert_eq!(s.queued_len(), 0);
    }

    #[tokio::test]
    async fn running_jobs_are_requeued_on_reopen_and_results_survive() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let s = Store::open(dir.path()).unwrap();
            let a = submit(&s, "a", 0).await;
            let b = submit(&s, "b", 0).await;
            let ca = s.claim().unwrap().unwrap();
            s.finish(&ca.id, JobState::Succeeded, Some(result(&ca.id)), None).await.unwrap();
            let cb = s.claim().unwrap().unwrap();
            assert_eq!(cb.state, JobState::Running);
            (a, b)
        };
        let s = Store::open(dir.path()).unwrap();
        let a = s.get(&a.id).unwrap();
        assert_eq!(a.state, JobState::Succeeded);
        assert_eq!(a.result.unwrap().text, "ok");
        let b2 = s.claim().unwrap().unwrap();
        assert_eq!(b2.id, b.id);
        assert_eq!(b2.attempts, 2, "the interrupted attempt counts");
    }

    #[tokio::test]
    async fn cancel_queued_running_and_finished() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = submit(&s, "a", 0).await;
        let b = submit(&s, "b", 0).await;
        let CancelOutcome::Cancelled(j) = s.cancel(&b.id).await.unwrap() else { panic!() };
        assert_eq!(j.state, JobState::Cancelled);
        assert_eq!(s.queued_len(), 1);
        let running = s.claim().unwrap().unwrap();
        assert_eq!(running.id, a.id);
        assert!(matches!(s.cancel(&a.id).await.unwrap(), CancelOutcome::Running(_)));
        assert!(matches!(s.cancel(&b.id).await, Err(StoreError::Conflict { .. })));
        assert!(matches!(s.cancel("job-nope").await, Err(StoreError::NotFound(_))));
        assert!(s.claim().unwrap().is_none());
    }

    #[tokio::test]
    async fn a_store_from_another_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("meta").unwrap().insert("schema_version", &99u32.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        assert!(matches!(Store::open(dir.path()), Err(StoreError::Schema { found: 99, .. })));
    }
}
