//! The readers against this machine's real /proc and cgroup v2.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use guest_agent::cgroup;
use guest_agent::collect::{encode_report, Collector};
use guest_agent::procfs::{self, parse_statm, read_file, ProcReader, Units};

fn spin(cpu: Duration) {
    let t0 = Instant::now();
    let mut x = 0u64;
    while t0.elapsed() < cpu {
        for i in 0..10_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
}

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    u32::try_from(tid).unwrap()
}

#[test]
fn our_own_process_appears_with_our_comm_and_cpu() {
    spin(Duration::from_millis(60));
    let me = std::process::id();
    let exe = std::env::current_exe().unwrap();
    let name = exe.file_name().unwrap().to_str().unwrap();
    let comm: String = name.chars().take(15).collect();
    let mut r = ProcReader::new("/proc", Units::host());
    let (ps, _) = r.scan().unwrap();
    let p = ps.iter().find(|p| p.pid == me).expect("our pid is listed");
    assert_eq!(p.comm, comm);
    assert!(p.usage.user_ns + p.usage.system_ns > 0, "{p:?}");
    assert!(p.rss_bytes > 0);
    assert!(p.cgroup.starts_with('/'));
    assert_eq!(p.ppid, std::os::unix::process::parent_id());
    // The test harness runs several threads; ours is among those listed.
    let mine = gettid();
    assert!(p.threads.iter().any(|t| t.tid == mine), "{:?}", p.threads);
}

#[test]
fn the_process_cgroup_is_the_v2_line() {
    let mut buf = Vec::new();
    read_file("/proc/self/cgroup".as_ref(), &mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let want = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/");
    let p = ProcReader::new("/proc", Units::host())
        .process(std::process::id())
        .unwrap();
    assert_eq!(p.cgroup, want);
}

#[test]
fn rss_is_statm_resident() {
    // A sleeping child's memory does not move between the two reads.
    let mut child = Command::new("sleep")
        .arg("30")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let units = Units::host();
    let p = ProcReader::new("/proc", units).process(child.id()).unwrap();
    let mut buf = Vec::new();
    read_file(format!("/proc/{}/statm", child.id()).as_ref(), &mut buf).unwrap();
    let statm = parse_statm(&buf).unwrap() * units.page_size;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(p.rss_bytes, statm);
    assert_eq!(p.comm, "sleep");
}

#[test]
fn a_vanished_process_is_an_error_not_a_panic() {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let r = ProcReader::new("/proc", Units::host()).process(pid);
    assert!(matches!(r, Err(procfs::ProcError::Vanished)), "{r:?}");
}

#[test]
fn the_cgroup_root_reads() {
    let Some(root) = cgroup::host_cgroup2_mount() else {
        eprintln!("no cgroup2 mount on this machine; skipping");
        return;
    };
    let (gs, _) = cgroup::walk(&root, 64).unwrap();
    assert_eq!(gs[0].path, "/");
    assert!(gs[0].cpu_usage_us > 0, "{:?}", gs[0]);
}

#[test]
fn a_real_report_encodes_and_validates() {
    let mut c = Collector::new("/proc", cgroup::host_cgroup2_mount(), 1000);
    let snap = c.snapshot();
    let n = snap.processes.len();
    assert!(n > 1);
    let r = c.report(snap, Default::default());
    assert!(r.agent_cpu_ns > 0 && r.agent_rss_bytes > 0);
    assert_eq!(r.seq, 1);
    let frame = encode_report(r, accounting::agent::MAX_FRAME).unwrap();
    let msg = accounting::agent::decode_agent(&frame[4..]).unwrap();
    let accounting::agent::AgentMessage::Context(back) = msg else {
        panic!()
    };
    assert_eq!(back.processes.len(), n);
}
