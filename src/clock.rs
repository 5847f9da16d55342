//! `Clock`: the daemon's one source of "now" and of timed waits.
//!
//! Every component that keeps time (the planner's re-solve interval and the
//! carbon trace's hour, the deferral promoter, the evaluator's schedule,
//! result retention, the carbon poller, job timestamps in the store) reads
//! it from the clock [`crate::daemon::run`] was given and sleeps on it. In
//! production that is [`Clock::system`]: the wall clock and tokio's timers.
//! Tests give a [`Clock::manual`] instead and move it with
//! [`Clock::advance`]: a component sleeping on it wakes when the clock
//! passes its deadline, to the millisecond, without the test waiting hours
//! (or seconds) of wall time.
//!
//! What is not on the clock: engine and HTTP timeouts, network retry
//! back-offs and durations measured for receipts (`Instant`), which measure
//! real work and stay on real time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// The wall clock, or a manual one tests move. Cheap to clone; clones of a
/// manual clock share its time.
#[derive(Clone, Default)]
pub struct Clock(Option<Arc<Manual>>);

struct Manual {
    now_ms: AtomicU64,
    moved: Notify,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Clock::system"),
            Some(m) => write!(f, "Clock::manual({})", m.now_ms.load(Ordering::SeqCst)),
        }
    }
}

impl Clock {
    /// The wall clock; sleeps are tokio's.
    pub fn system() -> Self {
        Clock(None)
    }

    /// A clock that stands at `start_ms` (Unix milliseconds) until
    /// [`Clock::advance`] moves it.
    pub fn manual(start_ms: u64) -> Self {
        Clock(Some(Arc::new(Manual { now_ms: AtomicU64::new(start_ms), moved: Notify::new() })))
    }

    /// Unix time in milliseconds.
    pub fn now_ms(&self) -> u64 {
        match &self.0 {
            None => wall_ms(),
            Some(m) => m.now_ms.load(Ordering::SeqCst),
        }
    }

    /// Unix time in whole seconds.
    pub fn now_s(&self) -> i64 {
        (self.now_ms() / 1000) as i64
    }

    /// Waits until this clock has moved `d` past now (now: when this is
    /// called, as with tokio's `sleep`). A sleep already over still yields
    /// once, so a loop sleeping zero on a manual clock cannot starve the
    /// runtime.
    pub fn sleep(&self, d: Duration) -> impl std::future::Future<Output = ()> + Send + 'static {
        let manual = self.0.clone();
        let target = manual.as_ref().map(|m| m.now_ms.load(Ordering::SeqCst).saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)));
        async move {
            let (Some(m), Some(target)) = (manual, target) else {
                return tokio::time::sleep(d).await;
            };
            loop {
                // Registered before the check, so an advance between the two is not missed.
                let moved = m.moved.notified();
                tokio::pin!(moved);
                moved.as_mut().enable();
                if m.now_ms.load(Ordering::SeqCst) >= target {
                    tokio::task::yield_now().await;
                    return;
                }
                moved.await;
            }
        }
    }

    /// Moves a manual clock forward by `d`, waking the sleeps it passes.
    ///
    /// # Panics
    /// On the system clock, which only time moves.
    pub fn advance(&self, d: Duration) {
        let m = self.0.as_ref().expect("Clock::advance on the system clock");
        m.now_ms.fetch_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
        m.moved.notify_waiters();
    }
}

/// The wall clock in Unix milliseconds, for what runs outside the daemon's
/// components (the CLI, the TUI, tools); the daemon reads [`Clock`].
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_sleep_ends_when_the_clock_passes_its_deadline_and_not_before() {
        let clock = Clock::manual(1_000_000);
        let c = clock.clone();
        // The deadline is a minute after the call, however late the task first runs.
        let sleep = clock.sleep(Duration::from_secs(60));
        let sleeper = tokio::spawn(async move {
            sleep.await;
            c.now_ms()
        });
        clock.advance(Duration::from_millis(59_999));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!sleeper.is_finished(), "woke 1 ms early");
        clock.advance(Duration::from_millis(1));
        let woke_at = tokio::time::timeout(Duration::from_secs(5), sleeper).await.expect("never woke").unwrap();
        assert_eq!(woke_at, 1_060_000);
    }

    #[tokio::test]
    async fn a_loop_of_zero_sleeps_on_a_manual_clock_lets_other_tasks_run() {
        let clock = Clock::manual(0);
        let c = clock.clone();
        let spinner = tokio::spawn(async move {
            loop {
                c.sleep(Duration::ZERO).await;
            }
        });
        // On this single-threaded runtime the test itself runs again only if the loop yields.
        tokio::time::timeout(Duration::from_secs(5), tokio::task::yield_now()).await.expect("starved");
        spinner.abort();
    }

    #[tokio::test]
    async fn a_zero_sleep_returns_at_once_and_clones_share_the_time() {
        let clock = Clock::manual(5_000);
        tokio::time::timeout(Duration::from_secs(1), clock.sleep(Duration::ZERO)).await.expect("a zero sleep waited");
        let other = clock.clone();
        other.advance(Duration::from_secs(2));
        assert_eq!((clock.now_ms(), clock.now_s()), (7_000, 7));
    }

    #[test]
    fn the_system_clock_reads_the_wall_clock() {
        let (before, now, after) = (wall_ms(), Clock::system().now_ms(), wall_ms());
        assert!(before <= now && now <= after, "{before} {now} {after}");
        assert!(Clock::default().now_ms() >= before);
    }
}
