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
use std::time::Duration;

use tokio::sync::Notify;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::eval::{EvalRun, PromptSample};
use crate::clock::Clock;
use crate::job::{ChatRequest, Job, JobResult, JobState, LedgerEntry, Origin};
use crate::stats::Totals;

mod eval;
mod jobs;
mod ledger;
mod open;
pub mod admin;

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
    #[error("creating the data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
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
    /// Stamps jobs' created/started/finished times ([`Store::with_clock`]).
    clock: Clock,
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

/// How long opening waits for the store's file lock to be released.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Opens sled at `dir`, waiting up to [`LOCK_WAIT`] for its file lock: sled
/// 0.34 releases the lock of a dropped database only when its flusher thread
/// has ended (sled#1289), so a store closed and reopened at once in one
/// process can find it still held for a moment. A lock another process
/// holds (a second sproutd on the same directory) is still an error, after
/// the wait.
fn open_db(dir: &Path) -> Result<sled::Db, sled::Error> {
    let t0 = std::time::Instant::now();
    loop {
        match sled::Config::new().path(dir).flush_every_ms(None).open() {
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if t0.elapsed() >= LOCK_WAIT {
                    return Err(sled::Error::Io(e));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
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
        let db = open_db(dir).map_err(|source| StoreError::Open { path: path.clone(), source })?;
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
            clock: Clock::system(),
            seq_floor: AtomicU64::new(floor),
            io_errors: AtomicU64::new(0),
            failure: Mutex::new(None),
        })
    }

    /// The same store, stamping job times from `clock` (the daemon's; the
    /// wall clock until this is called).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The clock that stamps job times.
    pub fn clock(&self) -> &Clock {
        &self.clock
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

    /// Takes the next queued job (lowest priority value, then oldest) and marks it running.
    /// Returns once every write made so far is on disk (group commit). The
    /// worker calls it after a claim, so the attempt a claim counts survives
    /// a crash while the job runs and `queue.max_attempts` is exact.
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.durable(self.written.load(Ordering::SeqCst)).await
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
mod tests;
