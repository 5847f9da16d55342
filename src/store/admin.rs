//! `sproutd store verify` and `sproutd store export`: look at a job store
//! without changing it. sled has no read-only mode (opening may rewrite a
//! damaged tail), so both work on a copy made in the temporary directory and
//! removed afterwards; the store itself is never opened.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::store::{ExportError, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0} is not a job store directory (no sled `db` file in it)")]
    NotAStore(String),
    #[error("copying the store {from} to {to}: {source}")]
    Copy { from: String, to: String, source: std::io::Error },
    #[error(transparent)]
    Open(#[from] StoreError),
    #[error(transparent)]
    Export(#[from] ExportError),
}

/// A copy of a store directory, removed on drop.
struct Copy(PathBuf);

impl Copy {
    fn of(dir: &Path) -> Result<Copy, AdminError> {
        if !dir.join("db").is_file() {
            return Err(AdminError::NotAStore(dir.display().to_string()));
        }
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let to = std::env::temp_dir().join(format!("sproutd-store-{}-{nanos}", std::process::id()));
        let copy = Copy(to);
        copy_dir(dir, &copy.0).map_err(|source| AdminError::Copy {
            from: dir.display().to_string(),
            to: copy.0.display().to_string(),
            source,
        })?;
        Ok(copy)
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// Opens a copy of the store, accepting lost jobs; says what was lost. The
/// refused first open left the copy as it found the loss, so the second opens
/// the same copy.
fn open_copy(dir: &Path, timeout: Duration) -> Result<(Copy, Store, Option<String>), AdminError> {
    let copy = Copy::of(dir)?;
    match Store::open_bounded(&copy.0, timeout, false) {
        Ok(store) => Ok((copy, store, None)),
        Err(e @ StoreError::Missing { .. }) => {
            let store = Store::open_bounded(&copy.0, timeout, true)?;
            Ok((copy, store, Some(e.to_string())))
        }
        Err(e) => Err(e.into()),
    }
}

/// The report of `store verify` and whether the store is whole.
pub fn verify(dir: &Path, timeout: Duration) -> Result<(String, bool), AdminError> {
    let (_copy, store, missing) = open_copy(dir, timeout)?;
    let v = store.verify().map_err(|e| AdminError::Open(e.into()))?;
    let jobs: u64 = v.jobs.values().sum();
    let by_state = v.jobs.iter().map(|(s, n)| format!("{s} {n}")).collect::<Vec<_>>().join(", ");
    let mut out = format!(
        "store {}: {jobs} jobs ({}), {} ledger records, {} evaluation runs; {} jobs acknowledged in its life, the last {}\n",
        dir.display(),
        if by_state.is_empty() { "none".into() } else { by_state },
        v.ledger,
        v.eval_runs,
        v.watermark.count,
        crate::store::job_id(v.watermark.max_seq),
    );
    if let Some(m) = &missing {
        out += &format!("MISSING: {m}\n");
    }
    for p in &v.problems {
        out += &format!("problem: {p}\n");
    }
    let whole = missing.is_none() && v.problems.is_empty();
    out += if whole { "OK: every acknowledged job is there and every record reads\n" } else { "NOT OK\n" };
    Ok((out, whole))
}

/// `store export`: every job and ledger record as JSON lines to `out`.
pub fn export(dir: &Path, timeout: Duration, out: &mut dyn std::io::Write) -> Result<(u64, u64, Option<String>), AdminError> {
    let (_copy, store, missing) = open_copy(dir, timeout)?;
    let (written, skipped) = store.export(out)?;
    Ok((written, skipped, missing))
}
