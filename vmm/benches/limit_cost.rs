//! What per-container limits cost when no limit holds anything
//! (docs/benchmarks.md, "Limits: the cost with no limit set").
//!
//! `cargo bench -p vmm --bench limit_cost` (a plain `main`, no harness).
//! One workload, the `blk` scenario with `loop=1` (rounds of one 4 KiB
//! write, one 4 KiB read and one GET_ID on a 1 MiB disk, until the VMM
//! stops the VM), booted in this process through `vmm::run` for a fixed
//! time (`LIMIT_COST_MS`, default 300 ms) under three arms, interleaved
//! round by round with the order rotating:
//!
//! - **none**: no `--limit`, no `--api-sock`: the disk has no throttle and
//!   never looks a request's limit up;
//! - **api**: `--api-sock` and no limit: the disk has a lookup, a timer and
//!   a wake armed (a limit may be set live), and each request costs the
//!   generation check;
//! - **other**: `--limit other:blk-ops=1/s`, a limit on a container the
//!   guest never declares: every request is looked up in the registry
//!   (its container's path against the limit's) and passes.
//!
//! Reported per arm: exits/s and block requests/s (from each run's report:
//! the VM's charged exits and block requests over its wall time), and the
//! device thread's CPU time per block request (`block.device_ns` over the
//! requests: where a lookup's cost lands, and a CPU clock, so it does not
//! count time the thread waited for a core), medians over rounds, and the ratios api/none and other/none with the spread of
//! the per-round ratio. Every run is checked: no request held, the guest
//! made progress. Nothing asserts a timing. Writes `target/limit_cost.json`.
//! Without `--bench` (`cargo test --benches`) it makes a 2-round smoke run.

use std::path::PathBuf;

use accounting::report::Report;
use serde_json::json;
use vmm::config::{Builtin, ConsoleTarget, DiskConfig, KernelSource, VmConfig};

mod common;
use common::{median, sorted};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arm {
    None,
    Api,
    Other,
}

const ARMS: [Arm; 3] = [Arm::None, Arm::Api, Arm::Other];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[allow(clippy::cast_precision_loss)]
fn f(x: u64) -> f64 {
    x as f64
}

/// One run of `arm` for `ms`; its report.
fn run(arm: Arm, ms: u64, dir: &std::path::Path, disk: &std::path::Path, n: usize) -> Report {
    let mut c = VmConfig {
        cmdline: Some("scenario=blk loop=1".into()),
        vcpus: 1,
        console: ConsoleTarget::Null,
        time_limit_ms: Some(ms),
        disks: vec![DiskConfig {
            path: disk.to_path_buf(),
            read_only: false,
        }],
        ..VmConfig::new(KernelSource::Builtin(Builtin::TestGuest))
    };
    match arm {
        Arm::None => {}
        Arm::Api => c.api_sock = Some(dir.join(format!("api-{n}.sock"))),
        Arm::Other => c.container_limits = vec!["other:blk-ops=1/s".parse().expect("a valid limit")],
    }
    let out = vmm::run(&c).unwrap_or_else(|e| panic!("{arm:?} VM failed to run: {e}"));
    assert_eq!(out.vm.end, "time_limit", "{arm:?}: {:?}", out.vm.end_detail);
    out.report()
}

/// Exits/s, block requests/s and device-thread CPU ns per block request
/// of a run.
fn rates(r: &Report) -> (f64, f64, f64) {
    let b = r.totals.block;
    let ops = b.reads + b.writes + b.flushes + b.other;
    assert!(ops > 100, "the guest made no progress: {ops} block requests");
    assert_eq!(b.throttle_events, 0, "no limit may hold a request");
    let secs = f(r.vm.wall_ns) / 1e9;
    (
        f(r.totals.exits_total.count) / secs,
        f(ops) / secs,
        f(b.device_ns) / f(ops),
    )
}

/// p10 and p90 of `v`.
fn spread(v: &[f64]) -> (f64, f64) {
    let s = sorted(v);
    let at = |p: usize| s[(s.len() * p / 100).min(s.len() - 1)];
    (at(10), at(90))
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let rounds = if bench {
        env_u64("LIMIT_COST_ROUNDS", 25)
    } else {
        2
    };
    let ms = if bench { env_u64("LIMIT_COST_MS", 300) } else { 100 };
    let dir = std::env::temp_dir().join(format!("resourceful-limit-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let disk: PathBuf = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("the disk image");
    eprintln!("limit_cost: {rounds} rounds of 3 arms x {ms} ms (blk loop=1, 1 vCPU)");

    // Warm-up: page cache, KVM, the allocator.
    let mut n = 0;
    for arm in ARMS {
        run(arm, ms, &dir, &disk, n);
        n += 1;
    }
    let mut eps: [Vec<f64>; 3] = Default::default();
    let mut ops: [Vec<f64>; 3] = Default::default();
    let mut dev: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        let mut order = ARMS;
        order.rotate_left(usize::try_from(round).unwrap_or(0) % 3);
        for arm in order {
            let (e, o, d) = rates(&run(arm, ms, &dir, &disk, n));
            n += 1;
            let i = ARMS.iter().position(|a| *a == arm).unwrap_or(0);
            eps[i].push(e);
            ops[i].push(o);
            dev[i].push(d);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    let ratio =
        |v: &[Vec<f64>; 3], i: usize| -> Vec<f64> { v[i].iter().zip(&v[0]).map(|(a, b)| a / b).collect() };
    let mut out = serde_json::Map::new();
    println!(
        "\n{:<44} {:>14} {:>14} {:>20}",
        "arm", "exits/s", "blk ops/s", "device ns/blk op"
    );
    for (i, arm) in ARMS.iter().enumerate() {
        let (d10, d90) = spread(&dev[i]);
        println!(
            "{:<44} {:>14.0} {:>14.0} {:>20}",
            format!("{arm:?} (median of {})", eps[i].len()),
            median(&eps[i]),
            median(&ops[i]),
            format!("{:.0} [{d10:.0}-{d90:.0}]", median(&dev[i])),
        );
        out.insert(
            format!("{arm:?}").to_lowercase(),
            json!({"exits_per_s": median(&eps[i]), "blk_ops_per_s": median(&ops[i]),
                   "device_ns_per_blk_op": median(&dev[i]), "device_ns_p10": d10, "device_ns_p90": d90}),
        );
    }
    for (i, name) in [(1, "api/none"), (2, "other/none")] {
        let (re, ro) = (ratio(&eps, i), ratio(&ops, i));
        let ((e10, e90), (o10, o90)) = (spread(&re), spread(&ro));
        println!(
            "{:<44} {:>14} {:>14}",
            format!("{name}: ratio of medians [per-round p10-p90]"),
            format!("{:.3} [{e10:.3}-{e90:.3}]", median(&eps[i]) / median(&eps[0])),
            format!("{:.3} [{o10:.3}-{o90:.3}]", median(&ops[i]) / median(&ops[0])),
        );
        out.insert(
            name.replace('/', "_over_"),
            json!({
                "exits": median(&eps[i]) / median(&eps[0]),
                "exits_p10": e10, "exits_p90": e90,
                "blk_ops": median(&ops[i]) / median(&ops[0]),
                "blk_ops_p10": o10, "blk_ops_p90": o90,
            }),
        );
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/limit_cost.json");
    if let Err(e) = std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap_or_default()) {
        eprintln!("limit_cost: cannot write {}: {e}", path.display());
    }
}
