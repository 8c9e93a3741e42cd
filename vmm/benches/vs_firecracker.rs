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
//! N = 100,000 (`VS_FC_N`) as a child process; its CPU time comes from
//! `wait4`'s rusage, and the per-exit cost is `(t(100k) − t(10k)) / 90,000`, so
//! start-up, teardown and the boot cancel out. Rounds alternate the arms in
//! rotating order (drift hits each alike); ratios are taken within a round.
//!
//! Arms: `on` (accounting, the default clock), `off` (`--no-accounting`),
//! `on-monotonic` (accounting with `RESOURCEFUL_CLOCK=monotonic`: what the
//! TSC clock saves), and `firecracker` when given. User CPU is the VMM's own
//! code; system CPU is mostly KVM's (with CPL0 guest code emulated by the
//! nested KVM of the development machines, it is not the VMM's).
//!
//! `VS_FC_CALLGRIND=N` (valgrind installed) also counts, per arm, the
//! instructions per exit under callgrind, from runs of N/5 and N exits
//! (seccomp filters off in both VMMs there): a figure that, unlike CPU
//! time, does not depend on the machine's load.
//!
//! Knobs: `VS_FC_WITH_LOG=1` adds the arm `fc-log-info`: Firecracker with
//! its default log level, which writes a warning line per port-0x80 exit;
//! `VS_FC_ROUNDS` (default 20); `VS_FC_N` (default 100000: the long
//! run's exits; the short run makes a tenth); `RESOURCEFUL_BIN=PATH` measures that
//! `resourceful` binary instead of this build's (e.g. the static release
//! build of docs/benchmarks.md). Writes `target/vs_firecracker.json`.
//! Nothing here asserts a timing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::json;

mod common;
use common::{mad, median, reap, secs, sorted};

const BIN: &str = env!("CARGO_BIN_EXE_resourceful");
/// Default exit counts of the short and the long run (`VS_FC_N`
/// overrides the long one; the short one is a tenth of it).
const N_HI_DEFAULT: u32 = 100_000;

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

/// Makes the command that boots a kernel; `true`: to run under valgrind
/// (seccomp filters off in both VMMs, as valgrind makes syscalls of its own).
type MakeCommand = Box<dyn Fn(&Path, bool) -> Command>;

/// One way to run the guest.
struct Arm {
    name: &'static str,
    command: MakeCommand,
}

fn resourceful(extra: &'static [&'static str], env: Option<(&'static str, &'static str)>) -> MakeCommand {
    let bin = std::env::var_os("RESOURCEFUL_BIN").map_or_else(|| PathBuf::from(BIN), PathBuf::from);
    Box::new(move |kernel: &Path, valgrind: bool| {
        let mut c = Command::new(&bin);
        c.args(["run", "--kernel"])
            .arg(kernel)
            .args(["--vcpus", "1", "--mem-mib", "128", "--console", "/dev/null"])
            .args(extra);
        if valgrind {
            c.arg("--no-seccomp");
        }
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        c
    })
}

/// Firecracker with no API socket, from a configuration file next to the
/// kernel. Firecracker has no device at port 0x80 and logs a warning for
/// every write to a port without one; its logger is set to `level` (the
/// bench's default, `Error`, keeps that line off the exit path, so both
/// VMMs do the same work per exit: a bus lookup and a counter; `Info`, its
/// own default, measures it with the line).
fn firecracker(bin: PathBuf, level: &'static str) -> MakeCommand {
    Box::new(move |kernel: &Path, valgrind: bool| {
        let config = kernel.with_extension(format!("fc-{level}.json"));
        let body = json!({
            "boot-source": { "kernel_image_path": kernel, "boot_args": "console=ttyS0" },
            "drives": [],
            "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
            "logger": { "level": level },
        });
        std::fs::write(&config, body.to_string()).unwrap();
        let mut c = Command::new(&bin);
        c.arg("--no-api").arg("--config-file").arg(&config);
        if valgrind {
            c.arg("--no-seccomp");
        }
        c
    })
}

/// Instructions callgrind counted in each thread of one run (in thread
/// creation order), from its `--separate-threads` output files.
fn callgrind_run(cmd: &Command, out: &Path, what: &str) -> Option<Vec<u64>> {
    let name = out.file_name().unwrap().to_string_lossy().into_owned();
    let dir = out.parent().unwrap();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let mut vg = Command::new("valgrind");
    vg.args(["--tool=callgrind", "--separate-threads=yes"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            vg.env(k, v);
        }
    }
    let status = vg
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{what}: cannot start valgrind: {e}"));
    if !status.success() {
        // Firecracker refuses valgrind's emulated CPUID on AMD hosts (its
        // vendor is not the host's).
        println!("{what}: failed under valgrind ({status})");
        return None;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with(&format!("{name}-")))
        })
        .collect();
    files.sort();
    let counts = files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        })
        .collect();
    Some(counts)
}

/// Instructions per exit under callgrind (load-independent, unlike CPU
/// time): `(Ir(n_hi) − Ir(n_lo)) / (n_hi − n_lo)` of the thread that grows
/// most (the vCPU thread: each VMM here has one), and of the whole process.
fn callgrind_per_exit(arm: &Arm, kernels: &[PathBuf; 2], exits: f64, dir: &Path) -> Option<(f64, f64)> {
    let runs: Vec<Vec<u64>> = kernels
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let out = dir.join(format!("callgrind-{}-{i}.out", arm.name));
            callgrind_run(&(arm.command)(k, true), &out, arm.name)
        })
        .collect::<Option<_>>()?;
    let grow =
        |t: usize| runs[1].get(t).copied().unwrap_or(0) as f64 - runs[0].get(t).copied().unwrap_or(0) as f64;
    let threads = runs[0].len().max(runs[1].len());
    let vcpu = (0..threads).map(grow).fold(f64::MIN, f64::max);
    let all: f64 = (0..threads).map(grow).sum();
    Some((vcpu / exits, all / exits))
}

fn main() {
    let rounds: usize = std::env::var("VS_FC_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/vs_firecracker");
    std::fs::create_dir_all(&dir).unwrap();
    let n_hi: u32 = std::env::var("VS_FC_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 20)
        .unwrap_or(N_HI_DEFAULT);
    let n_lo = n_hi / 10;
    let kernels: Vec<PathBuf> = [n_lo, n_hi]
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
        let version = Command::new(bin)
            .arg("--version")
            .output()
            .map(|o| {
                let out = String::from_utf8_lossy(&o.stdout).into_owned();
                out.lines().next().unwrap_or_default().trim().to_owned()
            })
            .unwrap_or_else(|e| panic!("FIRECRACKER={}: cannot run it: {e}", bin.display()));
        println!("Firecracker: {} ({version})", bin.display());
        arms.push(Arm {
            name: "firecracker",
            command: firecracker(bin.clone(), "Error"),
        });
        if std::env::var_os("VS_FC_WITH_LOG").is_some() {
            arms.push(Arm {
                name: "fc-log-info",
                command: firecracker(bin.clone(), "Info"),
            });
        }
    } else {
        println!("FIRECRACKER is not set: Resourceful's figures only.");
    }

    // Per arm: per-exit user and user+sys CPU (ns), peak RSS at n_hi (KiB).
    let mut user = vec![Vec::new(); arms.len()];
    let mut total = vec![Vec::new(); arms.len()];
    let mut rss = vec![Vec::new(); arms.len()];
    let exits = f64::from(n_hi - n_lo);
    for round in 0..rounds {
        for k in 0..arms.len() {
            let a = (round + k) % arms.len();
            let arm = &arms[a];
            let lo = measured((arm.command)(&kernels[0], false), arm.name);
            let hi = measured((arm.command)(&kernels[1], false), arm.name);
            user[a].push((hi.user - lo.user) / exits * 1e9);
            total[a].push((hi.user + hi.sys - lo.user - lo.sys) / exits * 1e9);
            rss[a].push(hi.maxrss_kib as f64);
        }
    }

    println!(
        "\nper exit, {rounds} rounds, (t({n_hi}) - t({n_lo})) / {}:",
        n_hi - n_lo
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
    // Ratios within each round, then their median and quartiles (the user
    // time of a run is split from system time by the 250 Hz tick on most
    // kernels, so single rounds are coarse: many rounds are needed).
    let ratios = |x: usize, y: usize| -> Vec<f64> {
        sorted(
            &user[x]
                .iter()
                .zip(&user[y])
                .map(|(a, b)| a / b)
                .collect::<Vec<_>>(),
        )
    };
    let quart = |r: &[f64], q: usize| {
        r.get((r.len().saturating_sub(1)) * q / 4)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let mut show = |label: &str, key: &str, x: usize, y: usize| {
        let r = ratios(x, y);
        let of_medians = median(&user[x]) / median(&user[y]);
        println!(
            "  {label:<20} {:.3}  (p25-p75 {:.3}-{:.3}; ratio of medians {of_medians:.3})",
            median(&r),
            quart(&r, 1),
            quart(&r, 3)
        );
        out.insert(key.into(), json!(median(&r)));
        out.insert(format!("{key}_of_medians"), json!(of_medians));
    };
    println!("\nuser CPU per exit, median of per-round ratios:");
    show("on / off", "on_over_off", 0, 1);
    show("on-monotonic / on", "monotonic_over_on", 2, 0);
    if fc.is_some() {
        show("on / firecracker", "on_over_firecracker", 0, 3);
        show("off / firecracker", "off_over_firecracker", 1, 3);
    }
    if let Some(n) = std::env::var("VS_FC_CALLGRIND")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        // Small runs: the instruction count per exit does not depend on N.
        let n = n.max(20);
        let small: [PathBuf; 2] = [n / 5, n].map(|m| {
            let p = dir.join(format!("exit-loop-{m}.elf"));
            std::fs::write(&p, images::exit_loop(m)).unwrap();
            p
        });
        let exits = f64::from(n - n / 5);
        println!(
            "\ncallgrind, instructions per exit, (Ir({n}) - Ir({})) / {exits}:",
            n / 5
        );
        println!("{:<14} {:>12} {:>14}", "arm", "vCPU thread", "whole process");
        let mut cg = serde_json::Map::new();
        for arm in &arms {
            let Some((vcpu, all)) = callgrind_per_exit(arm, &small, exits, &dir) else {
                continue;
            };
            println!("{:<14} {vcpu:>12.1} {all:>14.1}", arm.name);
            cg.insert(
                arm.name.into(),
                json!({ "vcpu_thread_ir_per_exit": vcpu, "process_ir_per_exit": all }),
            );
        }
        out.insert("callgrind".into(), cg.into());
    }
    let path = dir.join("../vs_firecracker.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap()).unwrap();
    println!("\nwritten: {}", path.display());
}
