//! Rate-limited logging for anything a guest can trigger.
//!
//! A hostile guest must not be able to flood the host's logs. Every call site
//! of [`warn_rl!`](crate::warn_rl) owns a [`RateLimit`]: at most
//! [`BURST`] lines per [`WINDOW_SECS`]-second window; the first line of the
//! next window says how many were suppressed. The counters that tell the
//! whole story live elsewhere ([`crate::errors`]); the log is only a hint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Lines allowed per window and call site.
pub const BURST: u64 = 10;
/// Window length in seconds.
pub const WINDOW_SECS: u64 = 5;

fn now_secs() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs()
}

/// Per-call-site limiter state.
#[derive(Debug)]
pub struct RateLimit {
    window: AtomicU64,
    used: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    /// A limiter with an empty window.
    pub const fn new() -> Self {
        Self {
            window: AtomicU64::new(0),
            used: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may be logged now. `Some(n)`: log it, and `n` lines were
    /// suppressed since the last one logged. `None`: suppress it.
    pub fn check(&self) -> Option<u64> {
        self.check_at(now_secs())
    }

    fn check_at(&self, now: u64) -> Option<u64> {
        let window = now / WINDOW_SECS;
        if self.window.swap(window, Ordering::Relaxed) != window {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < BURST {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// `log::warn!` limited to [`BURST`] lines per [`WINDOW_SECS`] seconds per
/// call site.
#[macro_export]
macro_rules! warn_rl {
    ($($arg:tt)+) => {{
        static RL: $crate::ratelimit::RateLimit = $crate::ratelimit::RateLimit::new();
        if let Some(suppressed) = RL.check() {
            if suppressed > 0 {
                $crate::__log::warn!("({} similar messages suppressed)", suppressed);
            }
            $crate::__log::warn!($($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_suppress_then_report_suppressed() {
        let rl = RateLimit::new();
        for _ in 0..BURST {
            assert_eq!(rl.check_at(0), Some(0));
        }
        assert_eq!(rl.check_at(1), None);
        assert_eq!(rl.check_at(2), None);
        // Next window: allowed again, and told about the two suppressed lines.
        assert_eq!(rl.check_at(WINDOW_SECS), Some(2));
        assert_eq!(rl.check_at(WINDOW_SECS), Some(0));
    }
}
