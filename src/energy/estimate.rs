//! The estimate, for machines without an energy counter: the machine draws
//! `idle_w` plus `tdp_w` times its utilisation, where utilisation is the CPU
//! time this process used (all threads: the engine runs in-process) over the
//! wall time and the machine's cores. Always labelled `estimated`.

use std::io;
use std::time::Instant;

use super::Meter;

/// Wall time and process CPU time, both in seconds.
pub type Clock = Box<dyn FnMut() -> (f64, f64) + Send>;

pub struct Estimate {
    idle_w: f64,
    tdp_w: f64,
    cores: f64,
    clock: Clock,
    last: (f64, f64),
}

/// Process CPU seconds (user + system, all threads) from getrusage.
fn process_cpu_s() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a rusage into the pointer it is given.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) } == 0;
    if !ok {
        return 0.0;
    }
    // SAFETY: initialised by the successful call above.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

impl Estimate {
    pub fn new(idle_w: f64, tdp_w: f64) -> Self {
        let start = Instant::now();
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        Self::with_clock(idle_w, tdp_w, cores, Box::new(move || (start.elapsed().as_secs_f64(), process_cpu_s())))
    }

    /// With a given clock (tests).
    pub fn with_clock(idle_w: f64, tdp_w: f64, cores: f64, mut clock: Clock) -> Self {
        let last = clock();
        Self { idle_w, tdp_w, cores, clock, last }
    }
}

impl Meter for Estimate {
    fn describe(&self) -> String {
        format!("estimate ({} W idle + {} W x utilisation of {} cores)", self.idle_w, self.tdp_w, self.cores)
    }
    fn measured(&self) -> bool {
        false
    }
    fn joules_since_last(&mut self) -> io::Result<f64> {
        let (wall, cpu) = (self.clock)();
        let (dw, dc) = ((wall - self.last.0).max(0.0), (cpu - self.last.1).max(0.0));
        self.last = (wall, cpu);
        if dw == 0.0 {
            return Ok(0.0);
        }
        let utilisation = (dc / (dw * self.cores)).clamp(0.0, 1.0);
        Ok(dw * (self.idle_w + self.tdp_w * utilisation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn idle_plus_tdp_times_utilisation() {
        let t = Arc::new(Mutex::new((0.0, 0.0)));
        let c = t.clone();
        let mut m = Estimate::with_clock(20.0, 60.0, 2.0, Box::new(move || *c.lock().unwrap()));
        *t.lock().unwrap() = (10.0, 10.0); // 10 s, one of two cores busy: 50 %
        assert!((m.joules_since_last().unwrap() - 10.0 * (20.0 + 30.0)).abs() < 1e-9);
        *t.lock().unwrap() = (20.0, 10.0); // idle
        assert!((m.joules_since_last().unwrap() - 200.0).abs() < 1e-9);
        *t.lock().unwrap() = (21.0, 15.0); // more CPU than cores x wall: capped at 100 %
        assert!((m.joules_since_last().unwrap() - 80.0).abs() < 1e-9);
        assert!(!m.measured());
    }

    #[test]
    fn the_real_clock_counts_this_process() {
        let mut m = Estimate::new(0.0, 100.0);
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 200 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let j = m.joules_since_last().unwrap();
        // One busy core out of n for 0.2 s at 100 W: about 20/n J.
        assert!(j > 1.0, "{j}");
    }
}
