//! The durable job queue, on sled.
//!
//! Trees:
//! - `jobs`:    job id → `Job` (JSON). Ids are `job-` + the zero-padded hex
//!   sequence number, so key order is submission order.
//! - `queue`:   priority (sign-flipped, big-endian) ‖ seq (big-endian) → job id,
//!   one entry per *queued* job: the first key is the next job to run.
//! - `running`: job id → (), one entry per *running* job, so recovery after a
//!   crash reads only those, however many jobs the store holds.
//! - `idem`:    Idempotency-Key → job id.
//! - `ledger`:  finished time (ms, big-endian) ‖ seq → `LedgerEntry` (JSON),
//!   one per job that reached the engine; kept when results are collected.
//! - `meta`:    `schema_version`; `acknowledged`: the count of jobs ever
//!   created and the highest sequence number, written in each job's
//!   creating transaction.
//!
//! **Missing data is detected, not served.** After every flush that
//! acknowledges jobs, the same watermark goes to a small file beside sled's
//! (`acknowledged`, fsynced before any client hears back). sled treats a
//! damaged end of its log as a torn write and opens without it; if the
//! store's own watermark is then behind the file's, acknowledged jobs are
//! gone and [`Store::open`] refuses with how many and which ids, unless the
//! operator accepts the loss ([`Store::open_accepting_loss`]).
//!
//! Invariants: a job is in `queue` exactly when its state is `Queued`, and in
//! `running` exactly when it is `Running`; every change to a job and its
//! indexes is one sled transaction. Every write that a client is told about
//! (a submission, a cancel, a result) is flushed before the call returns, so
//! an acknowledged job survives a crash.
//!
//! Writes and flushes are serialized by one mutex, and flushes are *group
//! commits*: a write takes a ticket; whoever needs durability either finds its
//! ticket already covered or runs the next flush, which covers every write
//! made before it. One fsync acknowledges a whole burst of submits. (The
//! serialization also matters for correctness: in sled 0.34, a transaction
//! waiting for its lock while concurrent flushes wait on each other deadlocks;
//! sled's own background flusher is off for the same reason.)

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::evaluator::{EvalRun, PromptSample};
use crate::job::{now_ms, ChatRequest, Job, JobResult, JobState, LedgerEntry, Origin};
use crate::stats::Totals;

/// Bumped whenever the persisted layout or the JSON of `Job`/`LedgerEntry`
/// changes incompatibly; `tests/fixtures/store-v1` must still open.
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
    #[error(
        "the job store at {path} has lost {count} acknowledged job(s) (ids after job-{after:016x} up to job-{last:016x}): its files were damaged or restored from an older copy; `sproutd store verify` reports, `sproutd store export` saves what is left, `sproutd --accept-missing-jobs` serves it anyway"
    )]
    Missing { path: String, count: u64, after: u64, last: u64 },
    #[error("the job store at {path} is damaged: {message}; restore it from a backup (a `sproutd store export` or a copy of the data dir), or move it aside to start with an empty one")]
    Damaged { path: String, message: String },
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

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// Jobs created so far (never decreases) and the highest sequence number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watermark {
    pub count: u64,
    pub max_seq: u64,
}

/// The watermark file beside sled's, in the store directory.
pub const WATERMARK_FILE: &str = "acknowledged";

impl Watermark {
    fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.count.to_be_bytes());
        b[8..].copy_from_slice(&self.max_seq.to_be_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> Option<Watermark> {
        let b: &[u8; 16] = b.try_into().ok()?;
        Some(Watermark {
            count: u64::from_be_bytes(b[..8].try_into().ok()?),
            max_seq: u64::from_be_bytes(b[8..].try_into().ok()?),
        })
    }

    fn check(self) -> u64 {
        (self.count ^ self.max_seq.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5350_524f_5554
    }

    /// One fixed-length line, so rewriting it in place never leaves a mix of
    /// two values that passes the check.
    pub fn to_line(self) -> String {
        format!("{:020} {:020} {:016x}\n", self.count, self.max_seq, self.check())
    }

    pub fn parse_line(s: &str) -> Option<Watermark> {
        let mut it = s.trim_end().split(' ');
        let w = Watermark { count: it.next()?.parse().ok()?, max_seq: it.next()?.parse().ok()? };
        let check = u64::from_str_radix(it.next()?, 16).ok()?;
        (it.next().is_none() && check == w.check()).then_some(w)
    }

    fn after(self, seq: u64) -> Watermark {
        Watermark { count: self.count + 1, max_seq: self.max_seq.max(seq) }
    }
}

/// The watermark as acknowledged: in memory (updated under the write lock)
/// and in its file (rewritten after each flush).
struct Acknowledged {
    now: Mutex<Watermark>,
    file: std::fs::File,
}

impl Acknowledged {
    /// Writes the watermark of every write made so far (call after a flush,
    /// with the write lock held, so all of them are on disk).
    fn persist(&self) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        let w = *self.now.lock().expect("poisoned");
        let io = |e: std::io::Error| StoreError::Sled(sled::Error::Io(e));
        self.file.write_all_at(w.to_line().as_bytes(), 0).map_err(io)?;
        self.file.sync_data().map_err(io)
    }
}

pub struct Store {
    db: sled::Db,
    jobs: sled::Tree,
    queue: sled::Tree,
    running: sled::Tree,
    idem: sled::Tree,
    ledger: sled::Tree,
    /// Deferred jobs by the time they may start: `until_ms ‖ seq` → id.
    deferred: sled::Tree,
    /// The evaluator's prompt reservoir (slot → sample) and its runs (`started_ms ‖ n` → run).
    samples: sled::Tree,
    evals: sled::Tree,
    meta: sled::Tree,
    /// `queue.len()` walks the tree; this is kept in step with it.
    queued: AtomicUsize,
    held: AtomicUsize,
    /// Prompts offered to the reservoir so far, and samples kept (kept in
    /// memory: `Tree::len` walks the tree, too slow for every submit).
    samples_seen: AtomicU64,
    samples_kept: AtomicUsize,
    /// Held by every write and every flush (see the module doc).
    write: Arc<Mutex<()>>,
    /// Tickets: writes made so far, and writes known to be on disk.
    written: AtomicU64,
    durable: AtomicU64,
    flushing: AtomicBool,
    flushed: Notify,
    /// Totals over the whole ledger, kept in step with it (for /metrics).
    totals: Mutex<Totals>,
    acknowledged: Arc<Acknowledged>,
    /// Sequence numbers start above every one ever acknowledged, even when
    /// sled's id generator lost its place with a damaged tail.
    seq_floor: AtomicU64,
    /// I/O errors of writes and flushes since start, and the latest one while
    /// it stands (a later good flush clears it): the store is then unhealthy.
    io_errors: AtomicU64,
    failure: Mutex<Option<String>>,
}

/// What [`Store::verify`] found.
#[derive(Debug, Default)]
pub struct Verified {
    /// Jobs by state.
    pub jobs: std::collections::BTreeMap<&'static str, u64>,
    pub ledger: u64,
    pub eval_runs: u64,
    pub watermark: Watermark,
    /// Records that do not decode, and index entries that disagree with the jobs.
    pub problems: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the export: {0}")]
    Write(#[from] std::io::Error),
}

impl From<sled::Error> for ExportError {
    fn from(e: sled::Error) -> Self {
        ExportError::Store(StoreError::Sled(e))
    }
}

/// Writes each record of `tree` that decodes as `{"<name>": record}` on a
/// line; returns (written, skipped).
fn export_tree<T: serde::de::DeserializeOwned + serde::Serialize>(
    tree: &sled::Tree,
    name: &str,
    out: &mut dyn std::io::Write,
) -> Result<(u64, u64), ExportError> {
    let (mut written, mut skipped) = (0, 0);
    for item in tree.iter() {
        let (k, bytes) = item?;
        match decode::<T>(&k, &bytes) {
            Ok(record) => {
                serde_json::to_writer(&mut *out, &serde_json::json!({ name: record })).map_err(std::io::Error::from)?;
                out.write_all(b"\n")?;
                written += 1;
            }
            Err(_) => skipped += 1,
        }
    }
    Ok((written, skipped))
}

/// What a new job needs besides what the store assigns.
pub struct NewJob {
    pub origin: Origin,
    pub priority: i32,
    pub request: ChatRequest,
    pub idempotency_key: Option<String>,
    pub deadline_ms: Option<u64>,
    /// Some: the job is held (state `deferred`) until `until_ms`.
    pub deferral: Option<crate::job::Deferral>,
}

/// Returned by [`Store::submit`].
#[derive(Debug)]
pub struct Submitted {
    pub job: Job,
    /// False when the idempotency key named an existing job, returned instead.
    pub created: bool,
}

/// Returned by [`Store::cancel`].
#[derive(Debug, PartialEq)]
pub enum CancelOutcome {
    /// It was queued and is now cancelled.
    Cancelled(Job),
    /// It is running: the worker must abort it (and then records it cancelled).
    Running(Job),
}

/// What recovery did at open.
#[derive(Debug, Default, PartialEq)]
pub struct Recovery {
    pub requeued: usize,
    pub failed: usize,
}

fn queue_key(priority: i32, seq: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&((priority as u32) ^ 0x8000_0000).to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn deferred_key(until_ms: u64, seq: u64) -> [u8; 16] {
    ledger_key(until_ms, seq)
}

fn ledger_key(finished_ms: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&finished_ms.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn job_id(seq: u64) -> String {
    format!("job-{seq:016x}")
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("store records always serialize")
}

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

impl Store {
    /// Opens (or creates) the store and checks its schema version. Call
    /// [`Store::recover`] before serving.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Self::open_with(dir, false)
    }

    /// Opens a store whose acknowledged jobs are known to be missing, serving
    /// what is left (the loss is logged, and the watermark starts afresh).
    pub fn open_accepting_loss(dir: &Path) -> Result<Store, StoreError> {
        Self::open_with(dir, true)
    }

    fn open_with(dir: &Path, accept_loss: bool) -> Result<Store, StoreError> {
        let path = dir.display().to_string();
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(None)
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
        let queue = db.open_tree("queue")?;
        let queued = AtomicUsize::new(queue.len());
        let deferred = db.open_tree("deferred")?;
        let held = AtomicUsize::new(deferred.len());
        let samples = db.open_tree("samples")?;
        let samples_kept = AtomicUsize::new(samples.len());
        let samples_seen = AtomicU64::new(
            meta.get("samples_seen")?.and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)).unwrap_or(0),
        );
        let ledger = db.open_tree("ledger")?;
        let mut totals = Totals::default();
        for item in ledger.iter() {
            let (k, v) = item?;
            totals.add(&decode(&k, &v)?);
        }
        let (acknowledged, floor) = Self::check_watermark(dir, &path, &meta, accept_loss)?;
        Ok(Store {
            jobs: db.open_tree("jobs")?,
            running: db.open_tree("running")?,
            idem: db.open_tree("idem")?,
            ledger,
            queue,
            queued,
            deferred,
            held,
            samples,
            samples_seen,
            samples_kept,
            evals: db.open_tree("evals")?,
            meta,
            db,
            write: Arc::new(Mutex::new(())),
            written: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            flushing: AtomicBool::new(false),
            flushed: Notify::new(),
            totals: Mutex::new(totals),
            acknowledged: Arc::new(acknowledged),
            seq_floor: AtomicU64::new(floor),
            io_errors: AtomicU64::new(0),
            failure: Mutex::new(None),
        })
    }

    /// Compares the store's watermark with the file's (module doc); returns
    /// the watermark to continue from and the first sequence number allowed.
    fn check_watermark(dir: &Path, path: &str, meta: &sled::Tree, accept_loss: bool) -> Result<(Acknowledged, u64), StoreError> {
        let damaged = |message: String| StoreError::Damaged { path: path.to_string(), message };
        let stored = match meta.get("acknowledged")? {
            Some(v) => Watermark::from_bytes(&v).ok_or_else(|| damaged("its acknowledged-jobs watermark is unreadable".into()))?,
            None => Watermark::default(),
        };
        let file_path = dir.join(WATERMARK_FILE);
        let on_file = match std::fs::read_to_string(&file_path) {
            Ok(text) => Some(Watermark::parse_line(&text).ok_or_else(|| {
                damaged(format!("{} does not hold a valid watermark ({:?})", file_path.display(), text.chars().take(80).collect::<String>()))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(damaged(format!("reading {}: {e}", file_path.display()))),
        };
        let mut now = stored;
        if let Some(f) = on_file {
            if f.count > stored.count {
                if !accept_loss {
                    return Err(StoreError::Missing {
                        path: path.to_string(),
                        count: f.count - stored.count,
                        after: stored.max_seq,
                        last: f.max_seq,
                    });
                }
                tracing::warn!(
                    missing = f.count - stored.count,
                    after = %job_id(stored.max_seq),
                    last = %job_id(f.max_seq),
                    "serving a job store that lost acknowledged jobs (--accept-missing-jobs)"
                );
                // Count on from the file's watermark: the loss is accepted
                // once, and the next start finds the two in step.
                now = Watermark { count: f.count, max_seq: f.max_seq.max(stored.max_seq) };
                meta.insert("acknowledged", &now.to_bytes())?;
            }
        } else if stored.count > 0 {
            tracing::warn!(file = %file_path.display(), "the acknowledged-jobs watermark file was missing; recreated from the store");
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&file_path)
            .map_err(|e| damaged(format!("opening {}: {e}", file_path.display())))?;
        let ack = Acknowledged { now: Mutex::new(now), file };
        ack.persist()?;
        let floor = now.max_seq.max(on_file.map(|f| f.max_seq).unwrap_or(0)) + 1;
        Ok((ack, floor))
    }

    /// Reads every record and checks the indexes against the jobs
    /// (`sproutd store verify`); read-only.
    pub fn verify(&self) -> Result<Verified, StoreError> {
        let mut v = Verified { watermark: self.watermark(), ..Verified::default() };
        let mut states = std::collections::HashMap::new();
        for item in self.jobs.iter() {
            let (k, bytes) = item?;
            match decode::<Job>(&k, &bytes) {
                Ok(job) => {
                    *v.jobs.entry(job.state.as_str()).or_insert(0) += 1;
                    states.insert(k.to_vec(), job.state);
                }
                Err(e) => v.problems.push(e.to_string()),
            }
        }
        for (tree, name, want) in [
            (&self.queue, "queue", JobState::Queued),
            (&self.deferred, "deferred", JobState::Deferred),
        ] {
            for item in tree.iter() {
                let (_, id) = item?;
                match states.get(id.as_ref()) {
                    Some(s) if *s == want => {}
                    Some(s) => v.problems.push(format!("the {name} index names {} which is {}", String::from_utf8_lossy(&id), s.as_str())),
                    None => v.problems.push(format!("the {name} index names {} which is not in the store", String::from_utf8_lossy(&id))),
                }
            }
        }
        for item in self.running.iter() {
            let (id, _) = item?;
            if !states.contains_key(id.as_ref()) {
                v.problems.push(format!("the running index names {} which is not in the store", String::from_utf8_lossy(&id)));
            }
        }
        for item in self.ledger.iter() {
            let (k, bytes) = item?;
            match decode::<LedgerEntry>(&k, &bytes) {
                Ok(_) => v.ledger += 1,
                Err(e) => v.problems.push(e.to_string()),
            }
        }
        for item in self.evals.iter() {
            let (k, bytes) = item?;
            match decode::<EvalRun>(&k, &bytes) {
                Ok(_) => v.eval_runs += 1,
                Err(e) => v.problems.push(e.to_string()),
            }
        }
        Ok(v)
    }

    /// Writes every job and ledger record as JSON lines (`sproutd store
    /// export`): `{"job": ...}` then `{"ledger": ...}`; records that do not
    /// decode are skipped and counted. Returns (records written, skipped).
    pub fn export(&self, out: &mut dyn std::io::Write) -> Result<(u64, u64), ExportError> {
        let (jobs, bad_jobs) = export_tree::<Job>(&self.jobs, "job", out)?;
        let (entries, bad_entries) = export_tree::<LedgerEntry>(&self.ledger, "ledger", out)?;
        let (written, skipped) = (jobs + entries, bad_jobs + bad_entries);
        out.flush()?;
        Ok((written, skipped))
    }

    /// The acknowledged-jobs watermark (`store verify`).
    pub fn watermark(&self) -> Watermark {
        *self.acknowledged.now.lock().expect("poisoned")
    }

    /// Runs a write under the write lock; returns its result and its ticket.
    fn write<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<(T, u64), StoreError> {
        let _g = self.write.lock().expect("poisoned");
        let out = self.noted(f())?;
        Ok((out, self.written.fetch_add(1, Ordering::SeqCst) + 1))
    }

    /// Counts an I/O error (not a refused change: those are answers) and
    /// keeps it as the store's failure; a good flush clears the failure.
    fn noted<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Sled(e)) = &r {
            self.io_errors.fetch_add(1, Ordering::SeqCst);
            let first = self.failure.lock().expect("poisoned").replace(e.to_string()).is_none();
            if first {
                tracing::error!(error = %e, "a job store write failed; sproutd reports itself unhealthy (/healthz 503) until a write succeeds again");
            }
        }
        r
    }

    fn flushed_ok(&self) {
        if self.failure.lock().expect("poisoned").take().is_some() {
            tracing::info!("the job store writes again; healthy");
        }
    }

    /// Why the store cannot write, while it cannot (`/healthz`, the watchdog).
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("poisoned").clone()
    }

    /// I/O errors of writes and flushes since start (`sproutd_store_errors_total`).
    pub fn io_errors(&self) -> u64 {
        self.io_errors.load(Ordering::SeqCst)
    }

    /// Returns once the write with `ticket` is on disk (group commit).
    async fn durable(&self, ticket: u64) -> Result<(), StoreError> {
        loop {
            if self.durable.load(Ordering::SeqCst) >= ticket {
                return Ok(());
            }
            if self.flushing.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                let (db, lock) = (self.db.clone(), self.write.clone());
                let written = &self.written;
                let target = written.load(Ordering::SeqCst);
                // Every write with a ticket <= target happened before we take
                // the lock; the flush under the lock covers them all.
                let ack = self.acknowledged.clone();
                let res = tokio::task::spawn_blocking(move || {
                    let _g = lock.lock().expect("poisoned");
                    db.flush()?;
                    ack.persist()
                })
                .await
                .expect("flush task");
                let res = self.noted(res);
                if res.is_ok() {
                    self.durable.fetch_max(target, Ordering::SeqCst);
                    self.flushed_ok();
                }
                self.flushing.store(false, Ordering::SeqCst);
                self.flushed.notify_waiters();
                res?;
                continue;
            }
            let notified = self.flushed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.durable.load(Ordering::SeqCst) >= ticket || !self.flushing.load(Ordering::SeqCst) {
                continue;
            }
            notified.await;
        }
    }

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
                job.finished_ms = Some(now_ms());
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

    fn requeue(&self, mut job: Job) -> Result<(), StoreError> {
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

    fn submit_unflushed_ticket(
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
            created_ms: now_ms(),
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

    /// Takes the next queued job (lowest priority value, then oldest) and marks it running.
    /// Returns once every write made so far is on disk (group commit). The
    /// worker calls it after a claim, so the attempt a claim counts survives
    /// a crash while the job runs and `queue.max_attempts` is exact.
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.durable(self.written.load(Ordering::SeqCst)).await
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

    fn claim_from(&self, daemon_end: bool) -> Result<Option<Job>, StoreError> {
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
                job.started_ms = Some(now_ms());
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
        let finished_ms = now_ms();
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
            job.finished_ms = Some(now_ms());
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

    /// Number of deferred jobs.
    pub fn deferred_len(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Number of queued jobs.
    pub fn queued_len(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Number of running jobs.
    pub fn running_len(&self) -> usize {
        self.running.len()
    }

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

    /// Flushes everything written so far (blocking).
    pub fn flush(&self) -> Result<(), StoreError> {
        let _g = self.write.lock().expect("poisoned");
        let target = self.written.load(Ordering::SeqCst);
        self.noted(self.db.flush().map_err(StoreError::from).and_then(|_| self.acknowledged.persist()))?;
        self.flushed_ok();
        self.durable.fetch_max(target, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{FinishReason, Message, Receipt, Role};

    pub(crate) fn req(text: &str) -> ChatRequest {
        ChatRequest {
            model: "m".into(),
            messages: vec![Message::new(Role::User, text)],
            max_tokens: 8,
            temperature: None,
            top_p: None,
            seed: None,
            stop: vec![],
            directive: None,
            store: None,
            ..Default::default()
        }
    }

    async fn submit_key(s: &Store, text: &str, priority: i32, key: Option<&str>) -> Submitted {
        let seq = s.next_seq().unwrap();
        let new = NewJob {
            origin: Origin::Job,
            priority,
            request: req(text),
            idempotency_key: key.map(str::to_string),
            deadline_ms: None,
            deferral: None,
        };
        s.submit(seq, new, "L0".into(), seq).await.unwrap()
    }

    async fn submit(s: &Store, text: &str, priority: i32) -> Job {
        submit_key(s, text, priority, None).await.job
    }

    fn open(dir: &Path) -> Store {
        let s = Store::open(dir).unwrap();
        s.recover(3).unwrap();
        s
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
                backend: "local".into(),
                zone: "GB".into(),
            },
            tool_calls: vec![],
            logprobs: None,
        }
    }

    fn entry(id: &str) -> LedgerEntry {
        LedgerEntry {
            job_id: id.into(),
            origin: Origin::Job,
            state: JobState::Succeeded,
            finished_ms: 0,
            directive: "L0".into(),
            prompt_tokens: 1,
            completion_tokens: 1,
            duration_s: 0.1,
            energy_j: 1.0,
            intensity_gco2_per_kwh: 400.0,
            operational_g: 0.1,
            embodied_g: 0.0,
            carbon_g: 0.1,
            estimated: true,
            class: "question".into(),
            deferral_saving_g: 0.0,
            deferred: false,
            backend: "local".into(),
            zone: "GB".into(),
        }
    }

    #[tokio::test]
    async fn claims_by_priority_then_fifo_with_positions() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let a = submit(&s, "a", 0).await;
        let b = submit(&s, "b", -5).await;
        let c = submit(&s, "c", 0).await;
        let d = submit(&s, "d", 10).await;
        let pos = s.positions(&[a.clone(), b.clone(), c.clone(), d.clone()]).unwrap();
        assert_eq!(pos[&b.id], 0);
        assert_eq!(pos[&a.id], 1);
        assert_eq!(pos[&c.id], 2);
        assert_eq!(pos[&d.id], 3);
        let queued: Vec<_> = s.list(Some(JobState::Queued), 10).unwrap().into_iter().map(|j| j.id).collect();
        assert_eq!(queued, [b.id.clone(), a.id.clone(), c.id.clone(), d.id.clone()]);
        assert_eq!(s.queued_len(), 4);
        let order: Vec<_> = std::iter::from_fn(|| s.claim().unwrap()).map(|j| j.id).collect();
        assert_eq!(order, [b.id, a.id, c.id, d.id]);
        assert_eq!(s.queued_len(), 0);
        assert_eq!(s.running_len(), 4);
    }

    #[tokio::test]
    async fn running_jobs_are_requeued_on_reopen_and_results_survive() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let s = open(dir.path());
            let a = submit(&s, "a", 0).await;
            let b = submit(&s, "b", 0).await;
            let ca = s.claim().unwrap().unwrap();
            s.finish(&ca.id, JobState::Succeeded, Some(result(&ca.id)), None, Some(entry(&ca.id))).await.unwrap();
            let cb = s.claim().unwrap().unwrap();
            assert_eq!(cb.state, JobState::Running);
            (a, b)
        };
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.recover(3).unwrap(), Recovery { requeued: 1, failed: 0 });
        let a = s.get(&a.id).unwrap();
        assert_eq!(a.state, JobState::Succeeded);
        assert_eq!(a.result.unwrap().text, "ok");
        assert_eq!(s.queued_len(), 1);
        let b2 = s.claim().unwrap().unwrap();
        assert_eq!(b2.id, b.id);
        assert_eq!(b2.attempts, 2, "the interrupted attempt counts");
        // Finishing twice is refused: a job completes once.
        s.finish(&b2.id, JobState::Succeeded, Some(result(&b2.id)), None, Some(entry(&b2.id))).await.unwrap();
        assert!(matches!(
            s.finish(&b2.id, JobState::Succeeded, None, None, None).await,
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(s.ledger(0).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_job_interrupted_max_attempts_times_fails() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let s = open(dir.path());
            submit(&s, "a", 0).await.id
        };
        for round in 1..=3 {
            let s = Store::open(dir.path()).unwrap();
            let rec = s.recover(2).unwrap();
            if round == 3 {
                assert_eq!(rec, Recovery { requeued: 0, failed: 1 });
                let j = s.get(&id).unwrap();
                assert_eq!(j.state, JobState::Failed);
                assert!(j.error.unwrap().contains("interrupted 2 times"));
                assert!(s.claim().unwrap().is_none());
            } else {
                let j = s.claim().unwrap().unwrap(); // then "crash"
                assert_eq!(j.attempts, round);
            }
        }
    }

    #[tokio::test]
    async fn idempotency_key_returns_the_same_job() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let first = submit_key(&s, "a", 0, Some("k1")).await;
        let again = submit_key(&s, "different body", 0, Some("k1")).await;
        let other = submit_key(&s, "a", 0, Some("k2")).await;
        assert!(first.created && !again.created && other.created);
        assert_eq!(first.job.id, again.job.id);
        assert_ne!(first.job.id, other.job.id);
        assert_eq!(s.queued_len(), 2);
    }

    #[tokio::test]
    async fn cancel_queued_running_and_finished() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
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
    async fn retention_collects_results_but_keeps_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let a = submit_key(&s, "a", 0, Some("key")).await.job;
        let j = s.claim().unwrap().unwrap();
        s.finish(&j.id, JobState::Succeeded, Some(result(&j.id)), None, Some(entry(&j.id))).await.unwrap();
        let queued = submit(&s, "b", 0).await;
        assert_eq!(s.collect_finished(now_ms() - 60_000).unwrap(), 0, "too recent");
        assert_eq!(s.collect_finished(now_ms() + 1).unwrap(), 1);
        assert!(matches!(s.get(&a.id), Err(StoreError::NotFound(_))));
        assert_eq!(s.get(&queued.id).unwrap().state, JobState::Queued, "unfinished jobs stay");
        assert_eq!(s.ledger(0).unwrap().len(), 1);
        // The key is free again.
        assert!(submit_key(&s, "a", 0, Some("key")).await.created);
        // Newest first, limited.
        let k = s.claim().unwrap().unwrap();
        s.finish(&k.id, JobState::Succeeded, Some(result(&k.id)), None, Some(entry(&k.id))).await.unwrap();
        let recent = s.ledger_recent(0, 1).unwrap();
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0].job_id, k.id);
        assert_eq!(s.ledger_recent(0, 10).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn deferred_jobs_wait_for_their_time_then_queue_and_can_be_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let hold = |until_ms| crate::job::Deferral { until_ms, forecast_gco2_per_kwh: 50.0, submit_gco2_per_kwh: 300.0 };
        {
            let s = open(dir.path());
            for (text, until) in [("a", 5_000), ("b", 9_000)] {
                let seq = s.next_seq().unwrap();
                let new = NewJob {
                    origin: Origin::Job,
                    priority: 0,
                    request: req(text),
                    idempotency_key: None,
                    deadline_ms: Some(20_000),
                    deferral: Some(hold(until)),
                };
                let j = s.submit(seq, new, "L0".into(), 1).await.unwrap().job;
                assert_eq!(j.state, JobState::Deferred);
            }
            assert_eq!((s.deferred_len(), s.queued_len()), (2, 0));
            assert!(s.claim().unwrap().is_none(), "a deferred job is not claimable");
            assert_eq!(s.promote_due(4_999).await.unwrap(), 0);
        }
        // Held across a restart.
        let s = open(dir.path());
        assert_eq!(s.deferred_len(), 2);
        assert_eq!(s.promote_due(5_000).await.unwrap(), 1);
        let a = s.claim().unwrap().unwrap();
        assert_eq!((a.request.messages[0].content.as_str(), a.state), ("a", JobState::Running));
        let b = s.list(Some(JobState::Deferred), 10).unwrap().remove(0);
        let CancelOutcome::Cancelled(b) = s.cancel(&b.id).await.unwrap() else { panic!("expected cancelled") };
        assert_eq!(b.state, JobState::Cancelled);
        assert_eq!(s.deferred_len(), 0);
        assert_eq!(s.promote_due(u64::MAX / 2).await.unwrap(), 0);
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

    #[test]
    fn the_watermark_line_round_trips_and_rejects_damage() {
        let w = Watermark { count: 350, max_seq: 0x15e };
        let line = w.to_line();
        assert_eq!(line.len(), 59);
        assert_eq!(Watermark::parse_line(&line), Some(w));
        assert_eq!(Watermark::parse_line(&line.replace("350", "351")), None);
        assert_eq!(Watermark::parse_line(&line[..30]), None);
        assert_eq!(Watermark::parse_line(""), None);
    }

    #[tokio::test]
    async fn acknowledged_jobs_missing_from_the_store_are_detected_and_can_be_accepted_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = Vec::new();
        {
            let s = open(dir.path());
            for i in 0..3 {
                ids.push(submit(&s, &format!("job {i}"), 0).await.id);
            }
            assert_eq!(s.watermark().count, 3);
        }
        let file = dir.path().join(WATERMARK_FILE);
        let on_file = Watermark::parse_line(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(on_file.count, 3);
        // As if the store's last two acknowledged jobs were lost with its tail.
        let lost = Watermark { count: 5, max_seq: on_file.max_seq + 2 };
        std::fs::write(&file, lost.to_line()).unwrap();
        match Store::open(dir.path()) {
            Err(StoreError::Missing { count: 2, after, last, .. }) => {
                assert_eq!((after, last), (on_file.max_seq, on_file.max_seq + 2));
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        {
            let s = Store::open_accepting_loss(dir.path()).unwrap();
            assert_eq!(s.get(&ids[2]).unwrap().id, ids[2]);
            // New ids never reuse a lost one.
            assert!(s.next_seq().unwrap() > lost.max_seq);
        }
        Store::open(dir.path()).unwrap();
        // A damaged watermark file is refused, not guessed at.
        std::fs::write(&file, "garbage\n").unwrap();
        assert!(matches!(Store::open(dir.path()), Err(StoreError::Damaged { .. })));
    }

    #[test]
    fn the_reservoir_refills_the_slots_that_retention_freed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let sample = |i: u64| PromptSample { text: format!("prompt {i}"), class: "chat".into(), at_ms: i };
        for i in 0..5 {
            s.sample_prompt(&sample(i), 4, 0).unwrap();
        }
        // Full at 4; r = 0 always lands in a slot once full: the 5th replaced slot 0.
        assert_eq!(s.samples_len(), 4);
        assert_eq!(s.samples().unwrap().iter().map(|p| p.at_ms).collect::<Vec<_>>(), vec![4, 1, 2, 3]);
        // Retention drops those taken before t = 3: two left, moved down to slots 0 and 1.
        assert_eq!(s.collect_samples(3).unwrap(), 2);
        assert_eq!(s.samples_len(), 2);
        assert_eq!(s.samples().unwrap().iter().map(|p| p.at_ms).collect::<Vec<_>>(), vec![4, 3]);
        // The next prompts fill the freed slots whatever the draw, up to the cap again.
        for i in 10..13 {
            s.sample_prompt(&sample(i), 4, u64::MAX).unwrap();
        }
        assert_eq!(s.samples_len(), 4);
        assert_eq!(s.samples().unwrap().iter().map(|p| p.at_ms).collect::<Vec<_>>(), vec![4, 3, 10, 11]);
        // Nothing to collect: nothing moves. The count survives a reopen.
        assert_eq!(s.collect_samples(3).unwrap(), 0);
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.samples_len(), 4);
    }

    #[tokio::test]
    async fn a_restart_cancels_only_the_daemons_own_queued_work() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let mut ids = Vec::new();
        for (origin, priority) in [(Origin::Daemon, i32::MAX), (Origin::Job, i32::MAX), (Origin::Job, 0), (Origin::Daemon, i32::MAX)] {
            let seq = s.next_seq().unwrap();
            let new = NewJob { origin, priority, request: req("x"), idempotency_key: None, deadline_ms: None, deferral: None };
            ids.push(s.submit(seq, new, "L0".into(), seq).await.unwrap().job.id);
        }
        assert_eq!(s.cancel_orphaned_daemon_work().await.unwrap(), 2);
        let states: Vec<JobState> = ids.iter().map(|id| s.get(id).unwrap().state).collect();
        assert_eq!(states, [JobState::Cancelled, JobState::Queued, JobState::Queued, JobState::Cancelled]);
        assert!(s.get(&ids[0]).unwrap().error.unwrap().contains("interrupted by a restart"));
        assert_eq!(s.queued_len(), 2);
        assert_eq!(s.cancel_orphaned_daemon_work().await.unwrap(), 0);
    }
}
