//! Per-exit cost of the VMM process, Resourceful against Firecracker, on
//! the same guest (docs/benchmarks.md, "Per exit, against Firecracker").
//!
//! `cargo bench -p vmm --bench vs_firecracker` (a plain `main`). With
//! `FIRECRACKER=/path/to/firecracker` set, Firecracker runs the same guest
//! in the same rounds; without it, Resourceful's figures are printed alone.
//!
//! The guest is `images::exit_loop(N)`: a plain 64-bit ELF booted at CPL0
//! through the Linux ELF protocol by both VMMs, making N `out`s to port
//! 0x80 and then an i8042 reset. Each arm runs it with N = 10,000 and
//! N = 100,000 as a child process; its CPU time comes from `wait4`'s
//! rusage, and the per-exit cost is `(t(100k) − t(10k)) / 90,000`, so
//! start-up, teardown and the boot cancel out. Rounds alternate the arms in
//! rotating order (drift hits each alike); ratios are taken within a round.
//!
//! Arms: `on` (accounting, the default clock), `off` (`--no-accounting`),
//! `on-monotonic` (accounting with `RESOURCEFUL_CLOCK=monotonic`: what the
//! TSC clock saves), and `firecracker` when given. User CPU is the VMM's own
//! code; system CPU is mostly KVM's (with CPL0 guest code emulated by the
//! nested KVM of the development machines, it is not the VMM's).
//!
//! Knobs: `VS_FC_ROUNDS` (default 20); `RESOURCEFUL_BIN=PATH` measures that
//! `resourceful` binary instead of this build's (e.g. the static release
//! build of docs/benchmarks.md). Writes `target/vs_firecracker.json`.
//! Nothing here asserts a timing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::json;

mod common;
use common::{mad, median, reap, secs};

const BIN: &str = env!("CARGO_BIN_EXE_resourceful");
const N_LO: u32 = 10_000;
const N_HI: u32 = 100_000;

/// CPU seconds and peak RSS of one child run.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    user: f64,
    sys: f64,
    maxrss_kib: u64,
}

/// Runs `cmd` to its end and returns its rusage; panics if it failed.
fn measured(mut cmd: Command, what: &str) -> Usage {
    // Reaped by wait4 below, which also gives its resource usage.
    #[allow(clippy::zombie_processes)]
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let ru = reap(child.id(), what);
    Usage {
        user: secs(ru.ru_utime),
        sys: secs(ru.ru_stime),
        maxrss_kib: u64::try_from(ru.ru_maxrss).unwrap_or(0),
    }
}

/// One way to run the guest.
struct Arm {
    name: &'static str,
    command: Box<dyn Fn(&Path) -> Command>,
}

fn resourceful(
    extra: &'static [&'static str],
    env: Option<(&'static str, &'static str)>,
) -> Box<dyn Fn(&Path) -> Command> {
    let bin = std::env::var_os("RESOURCEFUL_BIN").map_or_else(|| PathBuf::from(BIN), PathBuf::from);
    Box::new(move |kernel: &Path| {
        let mut c = Command::new(&bin);
        c.args(["run", "--kernel"])
            .arg(kernel)
            .args(["--vcpus", "1", "--mem-mib", "128", "--console", "/dev/null"])
            .args(extra);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        c
    })
}

/// Firecracker with no API socket, from a configuration file next to the
/// kernel.
fn firecracker(bin: PathBuf) -> Box<dyn Fn(&Path) -> Command> {
    Box::new(move |kernel: &Path| {
        let config = kernel.with_extension("fc.json");
        let body = json!({
            "boot-source": { "kernel_image_path": kernel, "boot_args": "console=ttyS0" },
            "drives": [],
            "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
        });
        std::fs::write(&config, body.to_string()).unwrap();
        let mut c = Command::new(&bin);
        c.arg("--no-api").arg("--config-file").arg(&config);
        c
    })
}

fn main() {
    let rounds: usize = std::env::var("VS_FC_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/vs_firecracker");
    std::fs::create_dir_all(&dir).unwrap();
    let kernels: Vec<PathBuf> = [N_LO, N_HI]
        .iter()
        .map(|n| {
            let p = dir.join(format!("exit-loop-{n}.elf"));
            std::fs::write(&p, images::exit_loop(*n)).unwrap();
            p
        })
        .collect();

    let mut arms = vec![
        Arm {
            name: "on",
            command: resourceful(&[], None),
        },
        Arm {
            name: "off",
            command: resourceful(&["--no-accounting"], None),
        },
        Arm {
            name: "on-monotonic",
            command: resourceful(&[], Some(("RESOURCEFUL_CLOCK", "monotonic"))),
        },
    ];
    let fc = std::env::var_os("FIRECRACKER").map(PathBuf::from);
    if let Some(bin) = &fc {
        arms.push(Arm {
            name: "firecracker",
            command: firecracker(bin.clone()),
        });
    } else {
        println!("FIRECRACKER is not set: Resourceful's figures only.");
    }

    // Per arm: per-exit user and user+sys CPU (ns), peak RSS at N_HI (KiB).
    let mut user = vec![Vec::new(); arms.len()];
    let mut total = vec![Vec::new(); arms.len()];
    let mut rss = vec![Vec::new(); arms.len()];
    let exits = f64::from(N_HI - N_LO);
    for round in 0..rounds {
        for k in 0..arms.len() {
            let a = (round + k) % arms.len();
            let arm = &arms[a];
            let lo = measured((arm.command)(&kernels[0]), arm.name);
            let hi = measured((arm.command)(&kernels[1]), arm.name);
            user[a].push((hi.user - lo.user) / exits * 1e9);
            total[a].push((hi.user + hi.sys - lo.user - lo.sys) / exits * 1e9);
            rss[a].push(hi.maxrss_kib as f64);
        }
    }

    println!(
        "\nper exit, {rounds} rounds, (t({N_HI}) - t({N_LO})) / {}:",
        N_HI - N_LO
    );
    println!(
        "{:<14} {:>16} {:>18} {:>14}",
        "arm", "user ns (MAD)", "user+sys ns (MAD)", "peak RSS KiB"
    );
    let mut out = serde_json::Map::new();
    for (a, arm) in arms.iter().enumerate() {
        println!(
            "{:<14} {:>9.1} ({:>4.1}) {:>11.1} ({:>4.1}) {:>14.0}",
            arm.name,
            median(&user[a]),
            mad(&user[a]),
            median(&total[a]),
            mad(&total[a]),
            median(&rss[a])
        );
        out.insert(
            arm.name.into(),
            json!({
                "user_ns_per_exit": median(&user[a]),
                "user_ns_mad": mad(&user[a]),
                "user_sys_ns_per_exit": median(&total[a]),
                "peak_rss_kib": median(&rss[a]),
            }),
        );
    }
    // Ratios within each round, then their median.
    let ratio = |x: usize, y: usize| {
        median(
            &user[x]
                .iter()
                .zip(&user[y])
                .map(|(a, b)| a / b)
                .collect::<Vec<_>>(),
        )
    };
    println!("\nuser CPU per exit, median of per-round ratios:");
    println!("  on / off           {:.3}", ratio(0, 1));
    println!("  on-monotonic / on  {:.3}", ratio(2, 0));
    out.insert("on_over_off".into(), json!(ratio(0, 1)));
    out.insert("monotonic_over_on".into(), json!(ratio(2, 0)));
    if fc.is_some() {
        println!("  on / firecracker   {:.3}", ratio(0, 3));
        println!("  off / firecracker  {:.3}", ratio(1, 3));
        out.insert("on_over_firecracker".into(), json!(ratio(0, 3)));
    }
    let path = dir.join("../vs_firecracker.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap()).unwrap();
    println!("\nwritten: {}", path.display());
}
