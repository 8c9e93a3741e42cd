//! Exit-path scalability: exits per second and the VMM's CPU per exit with
//! 1, 2, 4 and 8 vCPUs, accounting on and off, in one run
//! (docs/benchmarks.md, "Exit-path scaling").
//!
//! `cargo bench -p vmm --bench vcpu_scaling` (a plain `main`). Each vCPU of
//! the test guest's `exits` scenario makes N port writes under its own
//! container. Every configuration runs as a child `resourceful` process
//! with N = 2,000 and N = 10,000 per vCPU: exits per second = all exits /
//! the report's `wall_ns` at N = 10,000; user CPU per exit =
//! (user(10k) − user(2k)) / (vCPUs × 8,000), from `wait4`.
//! Configurations alternate in rotating order within each round.
//!
//! Read the user CPU with care where `/dev/kvm` is PVM (the nested
//! development machines): there the CPL3 guest itself runs in the VMM
//! process's user mode, so its time (the port loop, and vCPU 0 spinning
//! while it waits for the others) counts as the process's user CPU too.
//!
//! On a machine with fewer cores than vCPUs, the vCPU threads share the
//! cores: exits per second then stops growing at the core count, and what is
//! worth reading is whether the CPU per exit grows (contention) and the
//! on/off ratio per vCPU count. `VCPU_SCALING_ROUNDS` (default 5).
//! Writes `target/vcpu_scaling.json`. Nothing here asserts a timing.

use std::process::{Command, Stdio};

use serde_json::{json, Value};

mod common;
use common::{median, reap, secs};

const BIN: &str = env!("CARGO_BIN_EXE_resourceful");
const N_LO: u64 = 2_000;
const N_HI: u64 = 10_000;
const VCPUS: [u8; 4] = [1, 2, 4, 8];

/// User CPU seconds of the child and its report.
fn run(vcpus: u8, n: u64, accounting: bool) -> (f64, Value) {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "run",
        "--kernel",
        "builtin:test-guest",
        "--json",
        "--console",
        "/dev/null",
    ])
    .args(["--vcpus", &vcpus.to_string()])
    .args(["--cmdline", &format!("scenario=exits exits={n}")]);
    if !accounting {
        cmd.arg("--no-accounting");
    }
    // Reaped by wait4 below, which also gives its resource usage.
    #[allow(clippy::zombie_processes)]
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("resourceful runs");
    let pid = child.id();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.expect("piped"), &mut out).unwrap();
    let ru = reap(pid, &format!("{vcpus} vCPUs, {n} exits each"));
    (
        secs(ru.ru_utime),
        serde_json::from_str(&out).expect("one JSON report"),
    )
}

fn main() {
    let rounds: usize = std::env::var("VCPU_SCALING_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let configs: Vec<(u8, bool)> = VCPUS.iter().flat_map(|&v| [(v, true), (v, false)]).collect();
    let mut per_exit = vec![Vec::new(); configs.len()];
    let mut rate = vec![Vec::new(); configs.len()];
    for round in 0..rounds {
        for k in 0..configs.len() {
            let c = (round + k) % configs.len();
            let (vcpus, accounting) = configs[c];
            let (lo, _) = run(vcpus, N_LO, accounting);
            let (hi, report) = run(vcpus, N_HI, accounting);
            let exits = f64::from(vcpus) * (N_HI - N_LO) as f64;
            per_exit[c].push((hi - lo) / exits * 1e9);
            let wall = report["vm"]["wall_ns"].as_f64().unwrap_or(f64::NAN);
            rate[c].push(f64::from(vcpus) * N_HI as f64 / wall * 1e9);
        }
    }
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    println!("\n{rounds} rounds on {cores} cores; exits per vCPU {N_LO} and {N_HI}");
    println!(
        "{:>6} {:>12} {:>12} {:>14} {:>14} {:>8}",
        "vCPUs", "exits/s on", "exits/s off", "user ns/exit on", "user ns/exit off", "on/off"
    );
    let mut out = serde_json::Map::new();
    for (i, &v) in VCPUS.iter().enumerate() {
        let (on, off) = (2 * i, 2 * i + 1);
        let ratio = median(
            &per_exit[on]
                .iter()
                .zip(&per_exit[off])
                .map(|(a, b)| a / b)
                .collect::<Vec<_>>(),
        );
        println!(
            "{:>6} {:>12.0} {:>12.0} {:>14.1} {:>14.1} {:>8.3}",
            v,
            median(&rate[on]),
            median(&rate[off]),
            median(&per_exit[on]),
            median(&per_exit[off]),
            ratio
        );
        out.insert(
            v.to_string(),
            json!({
                "exits_per_s_on": median(&rate[on]),
                "exits_per_s_off": median(&rate[off]),
                "user_ns_per_exit_on": median(&per_exit[on]),
                "user_ns_per_exit_off": median(&per_exit[off]),
                "on_over_off": ratio,
            }),
        );
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/vcpu_scaling.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap()).unwrap();
    println!("written: {}", path.display());
}
