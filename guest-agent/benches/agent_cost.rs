//! The agent's own cost with 1,000 extra processes.
//!
//! Spawns 1,000 `sleep 600` children, then runs the agent's real interval
//! work (`guest_agent::agent::tick`: read /proc and cgroup v2, keep rule
//! containers in step, build, trim, validate and encode the `context`
//! report, queue it) `AGENT_COST_INTERVALS` times (default 50) back to back,
//! and prints the CPU time per report (getrusage of this process around the
//! loop; nothing else runs in it then), the wall time per report, the
//! report's size, and the process's peak RSS (`VmHWM`). The children
//! are killed at the end. Run: `cargo bench -p guest-agent --bench agent_cost`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use guest_agent::agent::{tick, Shared};
use guest_agent::collect::Collector;
use guest_agent::config::Config;
use guest_agent::procfs::self_cpu_ns;

const CHILDREN: usize = 1000;

fn main() {
    let intervals: u64 = std::env::var("AGENT_COST_INTERVALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50)
        .max(1);
    let list_threads = std::env::var("AGENT_COST_NO_THREADS").is_err();
    let mut kids: Vec<Child> = Vec::with_capacity(CHILDREN);
    for _ in 0..CHILDREN {
        match Command::new("sleep")
            .arg("600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
        {
            Ok(c) => kids.push(c),
            Err(e) => {
                eprintln!("spawned only {} children: {e}", kids.len());
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));

    let cgroup_root = guest_agent::cgroup::host_cgroup2_mount();
    let config = Config::parse(
        r#"{"containers":[{"cgroup":"/system.slice/*.service"},{"process":"sleep","name":"sleepers"}]}"#,
        "bench",
    )
    .expect("bench config");
    let mut collector = Collector::new("/proc", cgroup_root, 1000);
    collector.set_list_threads(list_threads);
    // A buffer of one report: each tick's report replaces the last.
    let shared = Shared::new(1);

    // One warm-up tick (first allocations, page cache of /proc dentries).
    tick(&shared, &mut collector, &config);
    let snap = collector.snapshot();
    let processes = snap.processes.len();
    let cpu0 = self_cpu_ns();
    let (user0, sys0) = user_sys_ns();
    let t0 = Instant::now();
    for _ in 0..intervals {
        tick(&shared, &mut collector, &config);
    }
    let wall = t0.elapsed();
    let cpu = self_cpu_ns() - cpu0;
    let report_bytes = shared.lock().outbox.held_bytes();
    let (user1, sys1) = user_sys_ns();
    let hwm = vm_hwm_bytes();

    for k in &mut kids {
        let _ = k.kill();
    }
    for k in &mut kids {
        let _ = k.wait();
    }

    let per = cpu / intervals;
    println!(
        "agent_cost: {} sleeping children, {processes} processes listed, threads listed: {list_threads}",
        kids.len()
    );
    println!("  intervals                 {intervals}");
    println!("  CPU per report            {:.2} ms", per as f64 / 1e6);
    println!(
        "    user / system           {:.2} / {:.2} ms",
        (user1 - user0) as f64 / intervals as f64 / 1e6,
        (sys1 - sys0) as f64 / intervals as f64 / 1e6
    );
    println!(
        "  wall per report           {:.2} ms",
        wall.as_secs_f64() * 1e3 / intervals as f64
    );
    println!("  CPU share at 1 s interval {:.2} %", per as f64 / 1e7);
    println!(
        "  report frame              {report_bytes} bytes ({:.0} bytes/process)",
        report_bytes as f64 / processes.max(1) as f64
    );
    println!(
        "  peak RSS (VmHWM)          {:.1} MiB",
        hwm as f64 / (1024.0 * 1024.0)
    );
}

/// Peak RSS of this process since exec (`VmHWM`). `ru_maxrss` is not
/// used: it keeps the high-water mark of the pre-exec image (cargo's).
fn vm_hwm_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn user_sys_ns() -> (u64, u64) {
    // SAFETY: an all-zero rusage is a valid value of a plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is valid and writable for the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let ns = |t: libc::timeval| {
        u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_usec).unwrap_or(0) * 1000
    };
    (ns(ru.ru_utime), ns(ru.ru_stime))
}
