//! What accounting costs a whole VM, and what the VMM costs around a guest.
//!
//! `cargo bench -p vmm --bench vm_overhead` (a plain `main`, no harness).
//! Prints a table with each target and writes `target/vm_overhead.json`.
//! Nothing here asserts a timing; docs/benchmarks.md explains each figure.
//!
//! 1. Exits per second with accounting on and off: the demo scenario on one
//!    vCPU (deterministic, 3242 exits) booted in this process through
//!    `vmm::run`, in interleaved rounds of (on, off, on with the run-time
//!    sampler not ticking) whose order rotates, so drift of the machine hits
//!    every arm alike. Reported: the median of each arm, the ratio of
//!    medians, and the spread of the per-round ratio. The third arm is a
//!    diagnostic: it separates the per-exit cost from the sampler thread's.
//! 2. VMM handler time per exit, from the accounting-on runs' reports.
//! 3. Peak RSS of the `resourceful` process beyond the guest memory touched,
//!    for a 128 MiB guest, measured on the real binary as a child process.
//! 4. Fixed start-up plus teardown: process wall time minus the VM's own
//!    `wall_ns`, for guests that do almost nothing.
//!
//! Environment knobs: `VM_OVERHEAD_ROUNDS` (default 40),
//! `VM_OVERHEAD_RSS_RUNS` (default 7), `VM_OVERHEAD_START_RUNS` (default 30).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use accounting::report::Report;
use accounting::resource::ExitReason;
use serde_json::{json, Value};
use vmm::config::{Builtin, ConsoleTarget, KernelSource, VmConfig};

mod common;
use common::{median, sorted};

const BIN: &str = env!("CARGO_BIN_EXE_resourceful");

// Targets from the issue.
const TARGET_RATIO: f64 = 0.99;
const TARGET_RSS_BYTES: f64 = 3_000_000.0;
const TARGET_STARTUP_MS: f64 = 15.0;
const TARGET_CHARGE_NS: f64 = 20.0;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Nearest-rank percentile (`p` in 0..=100) of a non-empty slice.
fn pct(v: &[f64], p: f64) -> f64 {
    let s = sorted(v);
    if s.is_empty() {
        return f64::NAN;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

fn stats(v: &[f64]) -> Value {
    json!({
        "n": v.len(),
        "median": median(v),
        "min": pct(v, 0.0),
        "p10": pct(v, 10.0),
        "p90": pct(v, 90.0),
        "max": pct(v, 100.0),
    })
}

#[allow(clippy::cast_precision_loss)]
fn f(x: u64) -> f64 {
    x as f64
}

// ---------------------------------------------------------------------------
// 1 + 2: in-process runs of the demo scenario

/// Sampling interval for the diagnostic arm: longer than a demo run, so the
/// sampler thread starts and is joined but never ticks during the run.
const NO_TICK_SAMPLE_US: u64 = 150_000;

fn demo_config(accounting: bool, sample_interval_us: u64) -> VmConfig {
    VmConfig {
        cmdline: Some("scenario=demo".into()),
        vcpus: 1,
        accounting,
        sample_interval_us,
        console: ConsoleTarget::Null,
        ..VmConfig::new(KernelSource::Builtin(Builtin::TestGuest))
    }
}

fn run_demo(accounting: bool, sample_interval_us: u64) -> Report {
    let out = vmm::run(&demo_config(accounting, sample_interval_us))
        .unwrap_or_else(|e| panic!("demo VM failed to run: {e}"));
    assert!(
        out.vm.end == "guest_exit" && out.vm.guest_status == Some(0),
        "demo VM ended badly: {} {:?}",
        out.vm.end,
        out.vm.end_detail
    );
    out.report()
}

struct Overhead {
    exits: u64,
    on_wall_ns: Vec<f64>,
    off_wall_ns: Vec<f64>,
    /// on/off exits-per-second ratio of each round.
    pair_ratio: Vec<f64>,
    /// Diagnostic arm: accounting on, sampler never ticking during the run.
    notick_wall_ns: Vec<f64>,
    notick_ratio: Vec<f64>,
    handler_ns_per_exit: Vec<f64>,
    by_reason: BTreeMap<&'static str, (u64, Vec<f64>)>,
}

#[derive(Clone, Copy, PartialEq)]
enum Arm {
    On,
    Off,
    OnNoTick,
}

fn measure_overhead(rounds: usize) -> Overhead {
    let default_us = VmConfig::new(KernelSource::Builtin(Builtin::TestGuest)).sample_interval_us;
    let boot = |arm| match arm {
        Arm::On => run_demo(true, default_us),
        Arm::Off => run_demo(false, default_us),
        Arm::OnNoTick => run_demo(true, NO_TICK_SAMPLE_US),
    };
    // Warm-up round: page cache, KVM module state, the allocator, CPU clocks.
    for arm in [Arm::On, Arm::Off, Arm::OnNoTick] {
        boot(arm);
    }

    let mut o = Overhead {
        exits: 0,
        on_wall_ns: Vec::new(),
        off_wall_ns: Vec::new(),
        pair_ratio: Vec::new(),
        notick_wall_ns: Vec::new(),
        notick_ratio: Vec::new(),
        handler_ns_per_exit: Vec::new(),
        by_reason: BTreeMap::new(),
    };
    for i in 0..rounds {
        // Interleaved, and the order rotates every round so that each arm
        // runs first, second and third equally often.
        let mut order = [Arm::On, Arm::Off, Arm::OnNoTick];
        order.rotate_left(i % 3);
        let mut on = None;
        let mut off = None;
        let mut notick = None;
        for arm in order {
            let r = boot(arm);
            match arm {
                Arm::On => on = Some(r),
                Arm::Off => off = Some(r),
                Arm::OnNoTick => notick = Some(r),
            }
        }
        let (on, off, notick) = (on.expect("on"), off.expect("off"), notick.expect("no tick"));
        let total = on.totals.exits_total;
        assert!(total.count > 0, "accounting-on run charged no exits");
        if o.exits == 0 {
            o.exits = total.count;
        } else if o.exits != total.count {
            eprintln!(
                "warning: exit count changed between runs ({} vs {})",
                o.exits, total.count
            );
        }
        assert_eq!(
            notick.totals.exits_total.count, total.count,
            "no-tick run charged a different count"
        );
        assert_eq!(
            off.totals.exits_total.count, 0,
            "accounting-off run charged exits"
        );
        o.on_wall_ns.push(f(on.vm.wall_ns));
        o.off_wall_ns.push(f(off.vm.wall_ns));
        o.notick_wall_ns.push(f(notick.vm.wall_ns));
        // Same exit count on every arm, so the exits/s ratio is off/on wall.
        o.pair_ratio.push(f(off.vm.wall_ns) / f(on.vm.wall_ns));
        o.notick_ratio.push(f(off.vm.wall_ns) / f(notick.vm.wall_ns));
        for r in [&on, &notick] {
            let t = r.totals.exits_total;
            o.handler_ns_per_exit.push(f(t.host_ns) / f(t.count));
        }
        for r in ExitReason::ALL {
            let c = on.totals.exits_of(r);
            if c.count > 0 {
                let e = o.by_reason.entry(r.name()).or_insert((c.count, Vec::new()));
                e.1.push(f(c.host_ns) / f(c.count));
            }
        }
    }
    o
}

// ---------------------------------------------------------------------------
// 3 + 4: the real binary as a child process

struct ChildRun {
    wall_ns: f64,
    report: Value,
    /// `ru_maxrss` from `wait4`, bytes.
    ru_maxrss: u64,
    /// `VmHWM`, `RssAnon`, `RssFile` of the child at its exit (ptrace exit
    /// stop), bytes; `None` where ptrace was refused.
    at_exit: Option<(u64, u64, u64)>,
}

fn args(kernel: &str, cmdline: Option<&str>, mem_mib: Option<u64>) -> Vec<String> {
    let mut a = vec!["run".to_string(), "--kernel".into(), kernel.into()];
    if let Some(c) = cmdline {
        a.extend(["--cmdline".into(), c.into()]);
    }
    if let Some(m) = mem_mib {
        a.extend(["--mem-mib".into(), m.to_string()]);
    }
    a.extend(["--json".into(), "--console".into(), "/dev/null".into()]);
    a
}

fn status_kib(pid: libc::pid_t, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `resourceful ARGS`. With `trace`, the child is started under
/// `PTRACE_TRACEME` and stopped once at its exit, when its memory still
/// exists, to read its peak RSS from `/proc` (see `peak_rss` for why
/// `ru_maxrss` alone is not enough).
fn spawn(args: &[String], trace: bool) -> ChildRun {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if trace {
        // SAFETY: the closure runs in the forked child before exec and only
        // makes one async-signal-safe system call.
        unsafe {
            cmd.pre_exec(|| {
                if libc::ptrace(
                    libc::PTRACE_TRACEME,
                    0,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                ) == -1
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("spawn resourceful");
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    let mut stdout = child.stdout.take().expect("stdout");
    // The traced child stops while we are not reading; read on a thread.
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).expect("read child stdout");
        s
    });
    let mut at_exit = None;
    let mut seen_exec = false;
    let ru_maxrss = loop {
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero rusage is a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are to live locals of the right type.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        assert!(r == pid, "wait4: {}", std::io::Error::last_os_error());
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            break u64::try_from(ru.ru_maxrss).unwrap_or(0) * 1024;
        }
        if libc::WIFSTOPPED(status) {
            let sig = libc::WSTOPSIG(status);
            let event = (status >> 16) & 0xffff;
            let mut pass: libc::c_int = 0;
            if sig == libc::SIGTRAP && event == 0 && !seen_exec {
                // The stop after exec: ask for an exit stop too.
                seen_exec = true;
                // SAFETY: pid is our traced, stopped child.
                unsafe {
                    libc::ptrace(
                        libc::PTRACE_SETOPTIONS,
                        pid,
                        std::ptr::null_mut::<libc::c_void>(),
                        libc::PTRACE_O_TRACEEXIT as usize as *mut libc::c_void,
                    );
                }
            } else if sig == libc::SIGTRAP && event == libc::PTRACE_EVENT_EXIT {
                let kib = |field| status_kib(pid, field).unwrap_or(0) * 1024;
                at_exit = Some((kib("VmHWM:"), kib("RssAnon:"), kib("RssFile:")));
            } else {
                pass = sig;
            }
            // SAFETY: pid is our traced, stopped child; `pass` is a signal
            // number or 0.
            unsafe {
                libc::ptrace(
                    libc::PTRACE_CONT,
                    pid,
                    std::ptr::null_mut::<libc::c_void>(),
                    pass as usize as *mut libc::c_void,
                );
            }
        }
    };
    let wall_ns = t0.elapsed().as_secs_f64() * 1e9;
    // The child was reaped by wait4; `child` must not wait again (dropping a
    // Child does not wait).
    drop(child);
    let out = reader.join().expect("reader thread");
    let report: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON from resourceful {args:?}: {e}"));
    ChildRun {
        wall_ns,
        report,
        ru_maxrss,
        at_exit,
    }
}

fn vm_u64(r: &Value, field: &str) -> u64 {
    r["vm"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("report has no vm.{field}"))
}

struct Rss {
    own_hwm: Vec<f64>,
    /// VmHWM - RssFile at exit - guest: the peak of the VMM's private
    /// (anonymous) memory, approximately (file pages are rarely dropped).
    own_private: Vec<f64>,
    own_maxrss: Vec<f64>,
    guest: Vec<f64>,
    anon: Vec<f64>,
    file: Vec<f64>,
}

/// Peak RSS beyond guest memory. Two readings per run:
/// - `VmHWM` of the child's own address space, read at its exit stop: the
///   peak RSS of the exec'd `resourceful` image and nothing else;
/// - `ru_maxrss` from `wait4`, as `time -v` reports it. Linux folds the
///   pre-exec address space's peak into `ru_maxrss` at exec, so for a child
///   forked from this (larger) bench process it can show the bench's RSS, not
///   the VMM's; it is printed for comparison.
fn peak_rss(kernel: &str, cmdline: Option<&str>, runs: usize) -> Rss {
    let a = args(kernel, cmdline, Some(128));
    spawn(&a, true); // warm-up
    let mut r = Rss {
        own_hwm: Vec::new(),
        own_private: Vec::new(),
        own_maxrss: Vec::new(),
        guest: Vec::new(),
        anon: Vec::new(),
        file: Vec::new(),
    };
    for _ in 0..runs {
        let c = spawn(&a, true);
        let guest = f(vm_u64(&c.report, "guest_resident_bytes"));
        r.guest.push(guest);
        r.own_maxrss.push(f(c.ru_maxrss) - guest);
        if let Some((hwm, anon, file)) = c.at_exit {
            r.own_hwm.push(f(hwm) - guest);
            r.own_private.push(f(hwm) - f(file) - guest);
            r.anon.push(f(anon));
            r.file.push(f(file));
        }
    }
    r
}

/// Process wall time minus the VM's `wall_ns`, in ms.
fn startup(kernel: &str, cmdline: Option<&str>, runs: usize) -> (Vec<f64>, Vec<f64>) {
    let a = args(kernel, cmdline, None);
    spawn(&a, false); // warm-up
    let mut fixed = Vec::new();
    let mut process = Vec::new();
    for _ in 0..runs {
        let c = spawn(&a, false);
        fixed.push((c.wall_ns - f(vm_u64(&c.report, "wall_ns"))) / 1e6);
        process.push(c.wall_ns / 1e6);
    }
    (fixed, process)
}

// ---------------------------------------------------------------------------

fn machine() -> Value {
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let under_hypervisor = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|w| w == "hypervisor"));
    let clocksource =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .unwrap_or_default()
            .trim()
            .to_string();
    json!({
        "nproc": nproc,
        "kernel": kernel,
        "cpu": model,
        "kvm_nested": under_hypervisor,
        "clocksource": clocksource,
    })
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

fn target_dir() -> PathBuf {
    // BIN is TARGET/<profile>/resourceful.
    Path::new(BIN)
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
}

/// The charge bench's latest estimate for case (a), if criterion left one.
fn charge_estimate(target: &Path) -> Option<f64> {
    let p = target.join("criterion/charge_exit/a_container/new/estimates.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

#[allow(clippy::too_many_lines)]
fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let pairs = env_usize("VM_OVERHEAD_ROUNDS", 40);
    let rss_runs = env_usize("VM_OVERHEAD_RSS_RUNS", 7);
    let start_runs = env_usize("VM_OVERHEAD_START_RUNS", 30);
    let m = machine();
    eprintln!(
        "vm_overhead: {pairs} interleaved rounds, {rss_runs} RSS runs, {start_runs} start-up runs per guest"
    );

    // Child-process measurements first, while this process is still small.
    let rss_tg = peak_rss("builtin:test-guest", Some("scenario=basic"), rss_runs);
    let rss_cpl0 = peak_rss("builtin:exit-cpl0", None, rss_runs);
    let (start_cpl0, proc_cpl0) = startup("builtin:exit-cpl0", None, start_runs);
    let (start_ec, proc_ec) = startup("builtin:test-guest", Some("scenario=exit-code"), start_runs);

    let o = measure_overhead(pairs);
    let exits = f(o.exits);
    let on_eps: Vec<f64> = o.on_wall_ns.iter().map(|w| exits / (w / 1e9)).collect();
    let off_eps: Vec<f64> = o.off_wall_ns.iter().map(|w| exits / (w / 1e9)).collect();
    let ratio = median(&on_eps) / median(&off_eps);
    let pair_ratio_median = median(&o.pair_ratio);
    // Wall time accounting adds per exit, round by round.
    let added_ns: Vec<f64> = o
        .on_wall_ns
        .iter()
        .zip(&o.off_wall_ns)
        .map(|(on, off)| (on - off) / exits)
        .collect();
    let notick_added_ns: Vec<f64> = o
        .notick_wall_ns
        .iter()
        .zip(&o.off_wall_ns)
        .map(|(on, off)| (on - off) / exits)
        .collect();
    let notick_eps: Vec<f64> = o.notick_wall_ns.iter().map(|w| exits / (w / 1e9)).collect();
    let notick_ratio = median(&notick_eps) / median(&off_eps);

    let target = target_dir();
    let charge_ns = charge_estimate(&target);

    // ------------------------------------------------------------- table
    println!();
    println!(
        "machine: {} CPUs ({}), Linux {}, clocksource {}, {}",
        m["nproc"],
        m["cpu"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?"),
        m["clocksource"].as_str().unwrap_or("?"),
        if m["kvm_nested"].as_bool() == Some(true) {
            "running under a hypervisor: /dev/kvm is nested KVM"
        } else {
            "bare metal KVM"
        }
    );
    println!();
    println!("{:<58} {:>14} {:>12} {:>6}", "figure", "measured", "target", "");
    println!("{}", "-".repeat(94));
    let row = |name: &str, val: String, tgt: &str, ok: Option<bool>| {
        println!(
            "{:<58} {:>14} {:>12} {:>6}",
            name,
            val,
            tgt,
            ok.map_or("", verdict)
        );
    };
    if let Some(ns) = charge_ns {
        row(
            "charge_exit, cached container tag (criterion, last run)",
            format!("{ns:.1} ns"),
            "<= 20 ns",
            Some(ns <= TARGET_CHARGE_NS),
        );
    } else {
        row(
            "charge_exit (run `cargo bench -p accounting --bench charge`)",
            "-".into(),
            "<= 20 ns",
            None,
        );
    }
    row(
        &format!("demo, 1 vCPU, {} exits: exits/s accounting ON (median)", o.exits),
        format!("{:.0}", median(&on_eps)),
        "",
        None,
    );
    row(
        "  exits/s accounting OFF (median)",
        format!("{:.0}", median(&off_eps)),
        "",
        None,
    );
    row(
        "  ratio ON/OFF (ratio of medians)",
        format!("{ratio:.4}"),
        ">= 0.99",
        Some(ratio >= TARGET_RATIO),
    );
    row(
        &format!("  per-round ratio, {} rounds: median", o.pair_ratio.len()),
        format!("{pair_ratio_median:.4}"),
        ">= 0.99",
        Some(pair_ratio_median >= TARGET_RATIO),
    );
    row(
        "  per-round ratio: p10 .. p90",
        format!("{:.3}..{:.3}", pct(&o.pair_ratio, 10.0), pct(&o.pair_ratio, 90.0)),
        "",
        None,
    );
    row(
        "  per-round ratio: min .. max",
        format!("{:.3}..{:.3}", pct(&o.pair_ratio, 0.0), pct(&o.pair_ratio, 100.0)),
        "",
        None,
    );
    row(
        "  wall per run ON / OFF (median, ms)",
        format!(
            "{:.1} / {:.1}",
            median(&o.on_wall_ns) / 1e6,
            median(&o.off_wall_ns) / 1e6
        ),
        "",
        None,
    );
    row(
        "  wall added per exit, (ON - OFF) / exits: median",
        format!("{:.0} ns", median(&added_ns)),
        "",
        None,
    );
    row(
        "  wall added per exit: p10 .. p90",
        format!("{:.0}..{:.0} ns", pct(&added_ns, 10.0), pct(&added_ns, 90.0)),
        "",
        None,
    );
    row(
        &format!(
            "  diagnostic: ON, sampler not ticking ({} ms interval)",
            NO_TICK_SAMPLE_US / 1000
        ),
        String::new(),
        "",
        None,
    );
    row(
        "    ratio ON(no tick)/OFF, ratio of medians",
        format!("{notick_ratio:.4}"),
        "",
        None,
    );
    row(
        "    per-round ratio: median / p10 .. p90",
        format!(
            "{:.3} / {:.3}..{:.3}",
            median(&o.notick_ratio),
            pct(&o.notick_ratio, 10.0),
            pct(&o.notick_ratio, 90.0)
        ),
        "",
        None,
    );
    row(
        "    wall added per exit: median",
        format!("{:.0} ns", median(&notick_added_ns)),
        "",
        None,
    );
    row(
        "VMM handler time per exit (median over runs)",
        format!("{:.0} ns", median(&o.handler_ns_per_exit)),
        "",
        None,
    );
    for (name, (count, v)) in &o.by_reason {
        row(
            &format!("  {name} ({count} exits/run)"),
            format!("{:.0} ns", median(v)),
            "",
            None,
        );
    }
    let rss_row = |label: &str, r: &Rss| {
        if r.own_hwm.is_empty() {
            row(
                &format!("{label}: VmHWM unavailable (ptrace refused)"),
                "-".into(),
                "",
                None,
            );
        } else {
            let v = median(&r.own_hwm);
            row(
                &format!("{label}: peak RSS - guest resident"),
                format!("{:.2} MiB", v / f64::from(1 << 20)),
                "<= 3 MB",
                Some(v <= TARGET_RSS_BYTES),
            );
            row(
                "  at exit: RssAnon / RssFile (median)",
                format!(
                    "{:.0} / {:.0} KiB",
                    median(&r.anon) / 1024.0,
                    median(&r.file) / 1024.0
                ),
                "",
                None,
            );
        }
        if !r.own_private.is_empty() {
            row(
                "  of which private (VmHWM - RssFile - guest), approx.",
                format!("{:.0} KiB", median(&r.own_private) / 1024.0),
                "",
                None,
            );
        }
        row(
            "  guest resident (median)",
            format!("{:.0} KiB", median(&r.guest) / 1024.0),
            "",
            None,
        );
        row(
            "  ru_maxrss - guest resident (see note)",
            format!("{:.2} MiB", median(&r.own_maxrss) / f64::from(1 << 20)),
            "",
            None,
        );
    };
    rss_row("test-guest basic, 128 MiB", &rss_tg);
    rss_row("exit-cpl0 (Linux ELF path, CPL0), 128 MiB", &rss_cpl0);
    let start_row = |label: &str, fixed: &[f64], process: &[f64]| {
        let med = median(fixed);
        row(
            &format!("{label}: start-up + teardown, median"),
            format!("{med:.2} ms"),
            "<= 15 ms",
            Some(med <= TARGET_STARTUP_MS),
        );
        row("  p90", format!("{:.2} ms", pct(fixed, 90.0)), "", None);
        row(
            "  whole process wall, median",
            format!("{:.2} ms", median(process)),
            "",
            None,
        );
    };
    start_row("exit-cpl0", &start_cpl0, &proc_cpl0);
    start_row("test-guest exit-code", &start_ec, &proc_ec);
    println!();
    println!("note: ru_maxrss folds in the peak of the forked pre-exec address space (a copy of this");
    println!("bench process), so it is an upper bound; the VmHWM rows are the VMM's own peak.");

    // -------------------------------------------------------------- JSON
    let by_reason: BTreeMap<&str, Value> = o
        .by_reason
        .iter()
        .map(|(k, (count, v))| (*k, json!({"exits_per_run": count, "host_ns_per_exit": stats(v)})))
        .collect();
    let rss_json = |r: &Rss| {
        json!({
            "mem_mib": 128,
            "own_peak_bytes_vmhwm": stats(&r.own_hwm),
            "own_private_peak_bytes_approx": stats(&r.own_private),
            "own_peak_bytes_ru_maxrss": stats(&r.own_maxrss),
            "guest_resident_bytes": stats(&r.guest),
            "rss_anon_at_exit_bytes": stats(&r.anon),
            "rss_file_at_exit_bytes": stats(&r.file),
            "target_bytes": TARGET_RSS_BYTES,
        })
    };
    let doc = json!({
        "machine": m,
        "charge_exit_ns_criterion": charge_ns,
        "exits_per_second": {
            "scenario": "demo",
            "vcpus": 1,
            "exits_per_run": o.exits,
            "rounds": o.pair_ratio.len(),
            "order": "rounds of (on, off, on-without-sampler-ticks), order rotated each round; one warm-up round discarded",
            "on": stats(&on_eps),
            "off": stats(&off_eps),
            "ratio_of_medians": ratio,
            "per_pair_ratio": stats(&o.pair_ratio),
            "wall_added_ns_per_exit": stats(&added_ns),
            "diagnostic_on_without_sampler_ticks": {
                "sample_interval_us": NO_TICK_SAMPLE_US,
                "exits_per_second": stats(&notick_eps),
                "ratio_of_medians": notick_ratio,
                "per_round_ratio": stats(&o.notick_ratio),
                "wall_added_ns_per_exit": stats(&notick_added_ns),
            },
            "target_ratio": TARGET_RATIO,
            "on_wall_ns": stats(&o.on_wall_ns),
            "off_wall_ns": stats(&o.off_wall_ns),
        },
        "handler_ns_per_exit": { "all": stats(&o.handler_ns_per_exit), "by_reason": by_reason },
        "peak_rss": {
            "test_guest_basic": rss_json(&rss_tg),
            "exit_cpl0": rss_json(&rss_cpl0),
        },
        "startup_teardown_ms": {
            "exit_cpl0": { "fixed": stats(&start_cpl0), "process_wall": stats(&proc_cpl0) },
            "test_guest_exit_code": { "fixed": stats(&start_ec), "process_wall": stats(&proc_ec) },
            "target_ms": TARGET_STARTUP_MS,
        },
    });
    let path = target.join("vm_overhead.json");
    match std::fs::write(&path, serde_json::to_string_pretty(&doc).expect("json")) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}
