//! The resource-container experiments 1 (prioritized clients) and 4
//! (isolation by shares) on one disk: runs the guest's `blk-mix` scenario
//! under a tenant limit and reads what each container got from the report
//! (docs/experiments.md). Shared by `tests/tests/exp_priority.rs`,
//! `tests/tests/exp_shares.rs` and the benches `vmm/benches/exp_priority.rs`
//! and `exp_shares.rs` (included there by path), so it uses only `vmm`,
//! `accounting` and `std`.

use std::time::{Duration, Instant};

use accounting::report::Report;
use vmm::config::{Builtin, ConsoleTarget, ContainerLimit, DiskConfig, KernelSource, VmConfig};
use vmm::vcpu::exit::VmEnd;

/// The tenant limit of experiment 1: the disk's whole-VM cap that `low`
/// saturates (2048 of its 4096-byte reads per second).
pub const PRIO_CAP: &str = "tenant:blk-bytes=8KiB/1ms";
/// `low`'s reads per second at load 1 (a fifth of the cap): load 10 offers
/// twice the cap.
pub const LOW_BASE_PER_S: f64 = 2048.0 / 5.0;
/// `high`'s reads per run, and its pause after each.
pub const HIGH_READS: u64 = 200;
/// As above.
pub const HIGH_THINK: Duration = Duration::from_micros(500);

/// The tenant limit of experiment 4: 1 MiB/s (250 reads of 4096 bytes per
/// second, a bucket of one), slow enough that each container has its next
/// read held before the next token comes, even on a loaded host.
pub const SHARES_CAP: &str = "tenant:blk-bytes=4KiB/4ms";
/// Reads of experiment 4, both containers together.
pub const SHARES_READS: u64 = 600;

/// Host TSC ticks per microsecond (the guest paces by the same TSC).
pub fn tsc_per_us() -> f64 {
    // SAFETY: RDTSC has no preconditions on x86_64.
    let t0 = unsafe { core::arch::x86_64::_rdtsc() };
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(20));
    // SAFETY: as above.
    let t1 = unsafe { core::arch::x86_64::_rdtsc() };
    (t1 - t0) as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// One run of the guest's `blk-mix` scenario with `args` and `limits`:
/// the report and the guest's TSC cycles from its first request to its
/// last completion; panics unless the guest ended with status 0.
pub fn run_mix(args: &str, limits: &[&str]) -> (Report, u64) {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let scratch = |ext: &str| {
        std::env::temp_dir().join(format!("resourceful-blk-mix-{}-{n}.{ext}", std::process::id()))
    };
    let (disk, console) = (scratch("img"), scratch("console"));
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("a scratch disk");
    let config = VmConfig {
        cmdline: Some(format!("scenario=blk-mix {args}")),
        vcpus: 1,
        tenant: "acme".into(),
        console: ConsoleTarget::File(console.clone()),
        disks: vec![DiskConfig {
            path: disk.clone(),
            read_only: false,
        }],
        container_limits: limits
            .iter()
            .map(|l| l.parse::<ContainerLimit>().expect("a valid --limit"))
            .collect(),
        ..VmConfig::new(KernelSource::Builtin(Builtin::TestGuest))
    };
    let outcome = vmm::run(&config).expect("the VM should build and run");
    let _ = std::fs::remove_file(&disk);
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    let _ = std::fs::remove_file(&console);
    assert_eq!(outcome.end, VmEnd::GuestExit(0), "blk-mix {args}: {text}");
    let kcycles = (text.lines())
        .find_map(|l| l.strip_prefix("blk-mix: kcycles ")?.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("blk-mix {args} printed no kcycles: {text}"));
    (outcome.report(), kcycles * 1000)
}

/// What one container's block reads got.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reads {
    /// Reads completed.
    pub reads: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Mean notification-to-completion latency, µs.
    pub mean_latency_us: f64,
    /// Reads a limit held.
    pub held: u64,
}

/// `path`'s reads in `report` (zero if it never appeared).
pub fn reads_of(report: &Report, path: &str) -> Reads {
    let Some(c) = report.container(path) else {
        return Reads::default();
    };
    let b = &c.charges.block;
    Reads {
        reads: b.reads,
        bytes: b.bytes_read,
        mean_latency_us: b.latency_ns as f64 / 1e3 / b.reads.max(1) as f64,
        held: b.throttle_events,
    }
}

/// Experiment 1, one point: `high` reads while `low` offers `load` times
/// [`LOW_BASE_PER_S`] (0: no `low` at all), under [`PRIO_CAP`], with
/// `high` at priority 7 and `low` at 0 when `prioritized`. Returns their
/// reads and `low`'s reads per second of the guest's run.
#[allow(clippy::cast_possible_truncation)] // Cycles of a few milliseconds, positive.
pub fn prio_point(load: u32, prioritized: bool, tsc_per_us: f64) -> (Reads, Reads, Report, f64) {
    let gap = if load == 0 {
        0
    } else {
        (tsc_per_us * 1e6 / (LOW_BASE_PER_S * f64::from(load))) as u64
    };
    let think = (tsc_per_us * HIGH_THINK.as_micros() as f64) as u64;
    let args = format!("mix=prio hi={HIGH_READS} think={think} gap={gap}");
    let mut limits = vec![PRIO_CAP];
    if prioritized {
        limits.extend(["high:priority=7", "low:priority=0"]);
    }
    let (report, cycles) = run_mix(&args, &limits);
    let (high, low) = (reads_of(&report, "high"), reads_of(&report, "low"));
    let low_per_s = low.reads as f64 / (cycles as f64 / tsc_per_us / 1e6);
    (high, low, report, low_per_s)
}

/// Experiment 4, one point: `a` and `b` with shares `a_share:b_share`
/// (`None`: no shares set, the order without a scheduler) under
/// [`SHARES_CAP`]. Returns their reads and how long the guest's reads
/// took (from its TSC and `tsc_per_us`).
pub fn shares_point(shares: Option<(u32, u32)>, tsc_per_us: f64) -> (Reads, Reads, Report, Duration) {
    let args = format!("mix=shares n={SHARES_READS}");
    let owned: Vec<String> = shares
        .map(|(a, b)| vec![format!("a:share={a}"), format!("b:share={b}")])
        .unwrap_or_default();
    let mut limits = vec![SHARES_CAP];
    limits.extend(owned.iter().map(String::as_str));
    let (report, cycles) = run_mix(&args, &limits);
    let took = Duration::from_secs_f64(cycles as f64 / tsc_per_us / 1e6);
    (reads_of(&report, "a"), reads_of(&report, "b"), report, took)
}
