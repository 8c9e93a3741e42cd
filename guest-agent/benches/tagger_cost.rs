//! What the eBPF slot tagger costs: per context switch, per request rebind
//! (`work_for`), and in the agent process. Needs root and a kernel with BTF.
//!
//! 1. **Per context switch.** Two threads pinned to one CPU ping-pong a
//!    byte over two pipes: every hop is a context switch. Rounds alternate
//!    tagger off (not loaded) and on (loaded, attached; the switched-in
//!    threads are looked up in all four thread maps and miss, the common
//!    path of a task of no container, with rebind pages switched off (three
//!    maps) and on (four); then with the thread bound to a
//!    request (`work_for`'s map, after a miss in the rebind threads); then
//!    with the thread registered in a rebind page whose word names a
//!    request (three lookups: thread, page, word)); then with the two
//!    threads bound to two requests, so every switch changes the slot's tag
//!    and is written to its switch log too), `TAGGER_ROUNDS` each
//!    (default 5) of
//!    `TAGGER_HOPS` hops (default 200,000); prints the median ns per
//!    switch of each and the difference, and the median ns per run
//!    of the switch program itself, from the kernel's run-time statistics
//!    (`BPF_ENABLE_STATS`, on for the bench): unlike the switch, it is not
//!    drowned by a loaded machine's noise.
//! 2. **Per rebind.** A real agent with the tagger, connected to a VMM's
//!    agent hub: one client alternates its thread between two requests
//!    with `work_for`, `TAGGER_REBINDS` times (default 20,000); prints the
//!    mean round trip (the client's write to its reply) per rebind. Then
//!    the same thread registered in a rebind page (`rebind_page`,
//!    `rebind_thread`) alternates between the two requests by storing in
//!    its word, `TAGGER_STORES` times (default 10,000,000): the mean per
//!    store. (Either takes effect at the thread's next switch-in, whose
//!    cost is part 1's.)
//! 3. **The agent process.** `resourceful-agent` run for 3 s with
//!    `--tagging on` and with `--tagging off` (no VMM to reach, so it only
//!    retries): peak RSS (`VmHWM`) and CPU time of each.
//!
//! Run: `cargo bench -p guest-agent --bench tagger_cost`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use accounting::ledger::Accounting;
use accounting::registry::Limits;
use guest_agent::agent::{Agent, Options, TaggingMode};
use guest_agent::link::Endpoint;
use guest_agent::rebind_client::RebindPage;
use guest_agent::tagger::Tagger;
use vmm::agent::AgentHub;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
        .max(1)
}

fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU 0 is in bounds.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
    }
}

fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors are fresh and owned from here on.
    unsafe {
        (
            std::os::fd::FromRawFd::from_raw_fd(fds[0]),
            std::os::fd::FromRawFd::from_raw_fd(fds[1]),
        )
    }
}

/// ns per context switch of a ping-pong of `hops` hops on CPU 0.
fn ping_pong(hops: u64, before_start: impl FnOnce(u32)) -> f64 {
    let (mut r1, mut w1) = pipe();
    let (mut r2, mut w2) = pipe();
    let rounds = hops / 2;
    let (tx, rx) = std::sync::mpsc::channel();
    let peer = std::thread::spawn(move || {
        pin_to_cpu0();
        // SAFETY: gettid has no preconditions.
        tx.send(unsafe { libc::gettid() } as u32).unwrap();
        let mut b = [0u8; 1];
        for _ in 0..rounds {
            r1.read_exact(&mut b).unwrap();
            w2.write_all(&b).unwrap();
        }
    });
    let peer_tid = rx.recv().unwrap();
    before_start(peer_tid);
    pin_to_cpu0();
    let b = [7u8; 1];
    let mut back = [0u8; 1];
    let t0 = Instant::now();
    for _ in 0..rounds {
        w1.write_all(&b).unwrap();
        r2.read_exact(&mut back).unwrap();
    }
    let ns = t0.elapsed().as_nanos() as f64;
    peer.join().unwrap();
    ns / (rounds * 2) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One tagged round: ns per switch, and ns per run of the switch program
/// (the kernel's own statistics, over every switch in the round: mostly
/// the ping-pong's).
fn tagged(t: &Tagger, hops: u64, before_start: impl FnOnce(u32)) -> (f64, f64) {
    let (ns0, n0) = t.switch_run_stats().expect("the switch program's statistics");
    let per_switch = ping_pong(hops, before_start);
    let (ns1, n1) = t.switch_run_stats().expect("the switch program's statistics");
    (per_switch, (ns1 - ns0) as f64 / (n1 - n0).max(1) as f64)
}

fn switches() {
    let rounds = env("TAGGER_ROUNDS", 5);
    let hops = env("TAGGER_HOPS", 200_000);
    let _stats = guest_agent::tagger::enable_run_time_stats().expect("BPF run-time statistics (root)");
    // Per variant: ns per switch, ns per program run.
    let mut v: [(Vec<f64>, Vec<f64>); 6] = Default::default();
    let mut push = |i: usize, (a, b): (f64, f64)| {
        v[i].0.push(a);
        v[i].1.push(b);
    };
    for _ in 0..rounds {
        push(0, (ping_pong(hops, |_| {}), 0.0));
        let t = Tagger::start_with(None, false).expect("the tagger loads (root, BTF)");
        push(1, tagged(&t, hops, |_| {}));
        drop(t);
        let t = Tagger::start(None).expect("the tagger loads (root, BTF)");
        push(2, tagged(&t, hops, |_| {}));
        let tag = accounting::abi::tag(0x1000_0001, 0x1000_0100);
        push(
            3,
            tagged(&t, hops, |tid| {
                t.bind_thread(tid, Some(tag)).unwrap();
                // SAFETY: gettid has no preconditions.
                t.bind_thread(unsafe { libc::gettid() } as u32, Some(tag))
                    .unwrap();
            }),
        );
        // The two threads work for different requests: every switch
        // changes the slot's tag, so each is also logged (the switch log).
        push(
            5,
            tagged(&t, hops, |tid| {
                t.bind_thread(tid, Some(tag)).unwrap();
                // SAFETY: gettid has no preconditions.
                t.bind_thread(unsafe { libc::gettid() } as u32, Some(tag + 1))
                    .unwrap();
            }),
        );
        // SAFETY: gettid has no preconditions.
        t.bind_thread(unsafe { libc::gettid() } as u32, None).unwrap();
        let fd = t.add_rebind_page(0).expect("rebind pages on this kernel");
        let page = RebindPage::map(0, &fd).unwrap();
        push(
            4,
            tagged(&t, hops, |tid| {
                let container = accounting::abi::tag(0x1000_0001, 0);
                // SAFETY: gettid has no preconditions.
                let me = unsafe { libc::gettid() } as u32;
                for (i, tid) in [(0u32, tid), (1, me)] {
                    t.bind_thread(tid, None).unwrap();
                    t.rebind_thread(tid, Some((0, i, container))).unwrap();
                    page.set(i, 0x1000_0100);
                }
            }),
        );
        drop(page);
        drop(t);
    }
    let v = v.map(|(a, b)| (median(a), median(b)));
    let off = v[0].0;
    println!("context switch, tagger off: {off:8.1} ns (median of {rounds} rounds of {hops} switches)");
    let names = [
        "tagger on, rebind pages off, no tag found",
        "tagger on, no tag found",
        "tagger on, thread bound (work_for)",
        "tagger on, thread in a rebind page",
        "tagger on, two requests: every switch logged",
    ];
    for (name, (sw, prog)) in names.iter().zip(&v[1..]) {
        println!(
            "context switch, {name}: {sw:8.1} ns ({:+.1} ns); the program: {prog:6.1} ns per run",
            sw - off
        );
    }
}

struct Line {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Line {
    fn call(&mut self, s: &str) -> String {
        self.w.write_all(s.as_bytes()).unwrap();
        self.w.write_all(b"\n").unwrap();
        let mut out = String::new();
        self.r.read_line(&mut out).unwrap();
        out
    }
}

fn rebinds() {
    let n = env("TAGGER_REBINDS", 20_000);
    let dir = std::env::temp_dir().join(format!("rsrc-tagger-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let acct = Accounting::new("bench", 1, 1, Limits::default());
    let hub = AgentHub::new(Arc::clone(&acct), Some(acct.writer(1)));
    hub.listen(&dir.join("vmm.sock")).unwrap();
    let agent = Agent::start(Options {
        connect: Endpoint::Unix(dir.join("vmm.sock")),
        listen: Some(dir.join("agent.sock")),
        interval: Duration::from_secs(3600),
        cgroup_root: None,
        tagging: TaggingMode::On,
        ..Options::default()
    })
    .expect("the agent starts with the tagger");
    let w = UnixStream::connect(dir.join("agent.sock")).unwrap();
    let mut c = Line {
        r: BufReader::new(w.try_clone().unwrap()),
        w,
    };
    assert!(c.call(r#"{"op":"declare","container":"bench"}"#).contains("true"));
    let id = |s: String| -> u32 {
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        u32::try_from(v["request"].as_u64().expect("a request")).expect("a u32 id")
    };
    let a = id(c.call(r#"{"op":"begin","container":"bench"}"#));
    let b = id(c.call(r#"{"op":"begin","container":"bench"}"#));
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let lines = [
        format!(r#"{{"op":"work_for","request":{a},"tid":{tid}}}"#),
        format!(r#"{{"op":"work_for","request":{b},"tid":{tid}}}"#),
    ];
    let t0 = Instant::now();
    for i in 0..n {
        let r = c.call(&lines[(i % 2) as usize]);
        debug_assert!(r.contains("true"), "{r}");
    }
    let per = t0.elapsed().as_nanos() as f64 / n as f64;
    assert!(c.call(&lines[0]).contains("true"), "work_for failed");
    println!(
        "work_for rebind, round trip over the local socket: {:8.0} ns (mean of {n})",
        per
    );
    let page = RebindPage::request(&c.w, "bench").expect("a rebind page");
    let p = page.page();
    assert!(c
        .call(&format!(
            r#"{{"op":"rebind_thread","page":{p},"index":0,"tid":{tid}}}"#
        ))
        .contains("true"));
    let stores = env("TAGGER_STORES", 10_000_000);
    let t0 = Instant::now();
    for i in 0..stores {
        page.set(0, std::hint::black_box(if i % 2 == 0 { a } else { b }));
    }
    let per = t0.elapsed().as_nanos() as f64 / stores as f64;
    println!(
        "rebind by a store in the thread's rebind page:     {:8.1} ns (mean of {stores})",
        per
    );
    drop(page);
    drop(c);
    agent.stop();
    hub.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

fn agent_process(tagging: &str) -> (u64, f64) {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/resourceful-agent");
    let bin = if bin.exists() {
        bin
    } else {
        PathBuf::from("resourceful-agent")
    };
    let mut child = Command::new(&bin)
        .args([
            "--connect",
            "unix:/nonexistent/vmm.sock",
            "--no-listen",
            "--no-bpf-pin",
        ])
        .args(["--tagging", tagging])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (cargo build --release -p guest-agent first)",
                bin.display()
            )
        });
    std::thread::sleep(Duration::from_secs(3));
    let pid = child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / hz;
    let _ = child.kill();
    let _ = child.wait();
    (hwm, cpu)
}

fn main() {
    switches();
    rebinds();
    for t in ["off", "on"] {
        let (hwm, cpu) = agent_process(t);
        println!(
            "agent --tagging {t:3}: peak RSS {hwm} KiB, CPU {:.2} s in its first 3 s",
            cpu
        );
    }
}
