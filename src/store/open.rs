//! Opening the store at start-up, bounded in time: sled can panic or spin
//! on a damaged store, and start-up must end with one clear error instead.

use std::path::Path;
use std::time::Duration;

use super::{Store, StoreError};

impl Store {
    /// Opens the job store at `dir` (creating it) in its own thread, so that a
    /// damaged store which makes sled panic or spin ends start-up with one clear
    /// error instead of a crash or a hang: progress is logged every 10 s, and
    /// after `timeout` it gives up. `accept_loss` serves a store that lost
    /// acknowledged jobs ([`Store::open_accepting_loss`]).
    pub fn open_bounded(dir: &Path, timeout: Duration, accept_loss: bool) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir { path: dir.display().to_string(), source })?;
        let path = dir.display().to_string();
        let damaged = |message: String| StoreError::Damaged { path: path.clone(), message };
        let (tx, rx) = std::sync::mpsc::channel();
        let owned = dir.to_path_buf();
        // sled reports some damage by panicking; that is an answer here, not a crash to print.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let spawned = std::thread::Builder::new().name("store-open".into()).spawn(move || {
            let opened = std::panic::catch_unwind(|| {
                if accept_loss {
                    Store::open_accepting_loss(&owned)
                } else {
                    Store::open(&owned)
                }
            });
            let _ = tx.send(opened);
        });
        let t0 = std::time::Instant::now();
        let out = match spawned {
            Err(e) => Err(damaged(format!("starting the thread that opens it: {e}"))),
            Ok(_) => loop {
                let left = timeout.saturating_sub(t0.elapsed());
                match rx.recv_timeout(left.min(Duration::from_secs(10))) {
                    Ok(Ok(opened)) => break opened,
                    Ok(Err(panic)) => {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "unknown".into());
                        break Err(damaged(format!("the store library failed reading it ({what})")));
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) if t0.elapsed() < timeout => {
                        tracing::info!(secs = t0.elapsed().as_secs(), data_dir = %path, "still opening the job store");
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        break Err(damaged(format!(
                            "opening it took longer than storage.open_timeout ({} s)",
                            timeout.as_secs()
                        )))
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break Err(damaged("the thread opening it ended without an answer".into())),
                }
            },
        };
        std::panic::set_hook(hook);
        out
    }
}
