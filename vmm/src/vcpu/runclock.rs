//! Guest run time of one vCPU, readable by the sampler without a lock.
//!
//! The vCPU thread stamps entry into and exit from `KVM_RUN`; the sampler
//! reads the cumulative run time including the interval in progress. A
//! seqlock keeps the pair consistent: the writer (one vCPU thread) never
//! waits, the reader retries in the rare case it raced a stamp.

use std::sync::atomic::{fence, AtomicU64, Ordering};

/// One consistent reading of a [`RunClock`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The clock's sequence at the reading.
    pub seq: u64,
    /// Run time of the finished intervals, ns.
    pub done: u64,
    /// When the interval in progress began (VM clock), 0 if none.
    pub entered: u64,
}

/// Cumulative run time of one vCPU.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct RunClock {
    seq: AtomicU64,
    done_ns: AtomicU64,
    /// Timestamp of the entry in progress, 0 when outside the guest.
    entered_at: AtomicU64,
}

impl RunClock {
    fn write(&self, f: impl FnOnce()) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        f();
        self.seq.store(s + 2, Ordering::Release);
    }

    /// The vCPU enters the guest at `now` (ns, VM clock; never 0).
    #[inline]
    pub fn enter(&self, now: u64) {
        self.write(|| self.entered_at.store(now.max(1), Ordering::Relaxed));
    }

    /// The vCPU left the guest at `now`; returns the interval's length.
    #[inline]
    pub fn exit(&self, now: u64) -> u64 {
        let entered = self.entered_at.load(Ordering::Relaxed);
        if entered == 0 {
            return 0;
        }
        let ran = now.saturating_sub(entered);
        self.write(|| {
            self.done_ns
                .store(self.done_ns.load(Ordering::Relaxed) + ran, Ordering::Relaxed);
            self.entered_at.store(0, Ordering::Relaxed);
        });
        ran
    }

    /// Cumulative run time as of `now`, the interval in progress included.
    pub fn read(&self, now: u64) -> u64 {
        let s = self.snapshot();
        s.done
            + if s.entered == 0 {
                0
            } else {
                now.saturating_sub(s.entered)
            }
    }

    /// Run time of the finished intervals; only meaningful on the vCPU's
    /// own thread (the one writer).
    pub fn done(&self) -> u64 {
        self.done_ns.load(Ordering::Relaxed)
    }

    /// Whether the clock is still as `s` saw it (no entry or exit since).
    pub fn unchanged_since(&self, s: &Snapshot) -> bool {
        fence(Ordering::Acquire);
        self.seq.load(Ordering::Relaxed) == s.seq
    }

    /// A consistent view: finished run time, and the entry in progress.
    pub fn snapshot(&self) -> Snapshot {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            let done = self.done_ns.load(Ordering::Relaxed);
            let entered = self.entered_at.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            let s2 = self.seq.load(Ordering::Relaxed);
            if s1 == s2 && s1.is_multiple_of(2) {
                return Snapshot {
                    seq: s1,
                    done,
                    entered,
                };
            }
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulates_finished_and_in_progress_intervals() {
        let c = RunClock::default();
        assert_eq!(c.read(100), 0);
        c.enter(100);
        assert_eq!(c.read(150), 50);
        assert_eq!(c.exit(200), 100);
        assert_eq!(c.read(1_000), 100);
        c.enter(1_000);
        assert_eq!(c.exit(1_010), 10);
        assert_eq!(c.read(5_000), 110);
        // An exit without an entry adds nothing.
        assert_eq!(c.exit(6_000), 0);
    }

    #[test]
    fn concurrent_reads_are_monotonic() {
        let c = std::sync::Arc::new(RunClock::default());
        let w = c.clone();
        let writer = std::thread::spawn(move || {
            for i in 0..50_000u64 {
                w.enter(i * 10 + 1);
                w.exit(i * 10 + 6);
            }
        });
        let mut last = 0;
        for _ in 0..50_000 {
            let v = c.read(0);
            assert!(v >= last, "run time went backwards: {v} < {last}");
            last = v;
        }
        writer.join().unwrap();
        assert_eq!(c.read(0), 50_000 * 5);
    }
}
