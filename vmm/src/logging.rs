//! The VMM's logger: `env_logger`'s output, with every line from another
//! crate rate-limited per call site.
//!
//! The project's own guest-triggerable lines go through `warn_rl!`, but the
//! rust-vmm crates log on their own: virtio-queue, for one, logs an `error!`
//! per notification of a queue whose available ring holds an out-of-range
//! head, so a guest could write megabytes of log. Here every record whose
//! module is not one of the project's crates passes at most
//! [`BURST`] times per [`WINDOW_SECS`]-second window per call site (file and
//! line); the next line let through says how many were dropped, and
//! [`suppressed`] counts them all (shown as `vm.log_lines_suppressed`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use accounting::ratelimit::{RateLimit, BURST, WINDOW_SECS};
use log::{Log, Metadata, Record};

/// Crates whose lines are the project's own (limited at their call sites).
const OWN: [&str; 5] = ["vmm", "devices", "accounting", "resourceful", "guest_agent"];

static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Lines from other crates dropped by the limiter since the process began.
pub fn suppressed() -> u64 {
    SUPPRESSED.load(Relaxed)
}

/// Wraps `inner`, limiting other crates' lines.
pub struct Limited<L> {
    inner: L,
    /// One limiter per call site. The key space is the set of log call
    /// sites compiled into the binary, so the map is bounded.
    sites: Mutex<HashMap<(String, u32), Arc<RateLimit>>>,
}

impl<L: Log> Limited<L> {
    /// A limiting wrapper around `inner`.
    pub fn new(inner: L) -> Self {
        Self {
            inner,
            sites: Mutex::new(HashMap::new()),
        }
    }

    fn own(record: &Record<'_>) -> bool {
        let module = record.module_path().unwrap_or(record.target());
        let krate = module.split("::").next().unwrap_or("");
        OWN.contains(&krate)
    }
}

impl<L: Log> Log for Limited<L> {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        self.inner.enabled(m)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.inner.enabled(record.metadata()) {
            return;
        }
        if Self::own(record) {
            self.inner.log(record);
            return;
        }
        let key = (
            record.file().unwrap_or(record.target()).to_string(),
            record.line().unwrap_or(0),
        );
        let rl = {
            let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(sites.entry(key).or_default())
        };
        match rl.check() {
            Some(dropped) => {
                if dropped > 0 {
                    self.inner.log(
                        &Record::builder()
                            .args(format_args!(
                                "({dropped} similar messages from {} suppressed: at most {BURST} per {WINDOW_SECS} s)",
                                record.target()
                            ))
                            .level(record.level())
                            .target(record.target())
                            .build(),
                    );
                }
                self.inner.log(record);
            }
            None => {
                SUPPRESSED.fetch_add(1, Relaxed);
            }
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Installs `env_logger` (level from `RUST_LOG`, `default` otherwise),
/// wrapped in [`Limited`].
pub fn init(default: &str) {
    let logger = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default)).build();
    let level = logger.filter();
    if log::set_boxed_logger(Box::new(Limited::new(logger))).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts what reaches it.
    #[derive(Default)]
    struct Count(AtomicU64);

    impl Log for Count {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn log(&self, _: &Record<'_>) {
            self.0.fetch_add(1, Relaxed);
        }
        fn flush(&self) {}
    }

    fn record<'a>(module: &'a str, line: u32, args: std::fmt::Arguments<'a>) -> Record<'a> {
        Record::builder()
            .args(args)
            .level(log::Level::Error)
            .target(module)
            .module_path(Some(module))
            .file(Some("src/queue.rs"))
            .line(Some(line))
            .build()
    }

    #[test]
    fn another_crates_flood_is_cut_to_a_burst_and_counted() {
        let l = Limited::new(Count::default());
        let before = suppressed();
        for _ in 0..20_000 {
            l.log(&record("virtio_queue::queue", 448, format_args!("invalid head")));
        }
        // One burst per window (two if the loop crossed a window's end,
        // plus the line saying how many were dropped).
        let passed = l.inner.0.load(Relaxed);
        assert!((BURST..=2 * BURST + 1).contains(&passed), "{passed}");
        assert!(suppressed() - before >= 20_000 - 2 * BURST);
        // Another call site has a limiter of its own.
        l.log(&record(
            "virtio_queue::queue",
            573,
            format_args!("iterator error"),
        ));
        assert_eq!(l.inner.0.load(Relaxed), passed + 1);
    }

    #[test]
    fn the_projects_own_lines_pass_untouched() {
        let l = Limited::new(Count::default());
        for _ in 0..100 {
            l.log(&record("vmm::vcpu", 1, format_args!("x")));
            l.log(&record("devices::virtio::block", 2, format_args!("y")));
        }
        assert_eq!(l.inner.0.load(Relaxed), 200);
    }
}
