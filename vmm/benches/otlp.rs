//! What OpenTelemetry export (`--otlp-endpoint`, docs/opentelemetry.md)
//! costs a running VM, and how many spans per second the exporter sustains.
//!
//! `cargo bench -p vmm --bench otlp` (a plain `main`, no harness). Nothing
//! here asserts a timing; docs/benchmarks.md ("OpenTelemetry export")
//! records the figures.
//!
//! 1. Exits per second, export off and on: the demo workload in rounds
//!    (`demo loop=1`, 1 vCPU, ended by a time limit), so requests finish
//!    all the time and the exporter reads and posts them while the vCPU
//!    runs. Exits / the VM's own `wall_ns`, per run; rounds of (off, on)
//!    whose order alternates; the ratio of the medians (on/off) and the
//!    spread of the per-round ratio.
//! 2. Block requests per second, export off and on: the `blk` scenario on
//!    a 1 MiB file, the same way (block requests / `wall_ns`).
//! 3. Spans per second: books holding N finished requests (declared through
//!    the ring-entry path), an exporter started on them against a
//!    collector in this process that reads each POST and answers 200; the
//!    time until all N are exported.
//!
//! The collector is a thread of this process: on the 2-core machine it
//! shares the CPUs with the VM, as a node-local collector would.
//!
//! Environment knobs: `OTLP_BENCH_ROUNDS` (default 15), `OTLP_BENCH_MS`
//! (time limit of each demo run, default 300), `OTLP_BENCH_SPANS` (default
//! 200000).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use accounting::abi::{EntryKind, RingEntry};
use accounting::ledger::Accounting;
use accounting::registry::Limits;
use accounting::report::Report;
use vmm::config::{Builtin, ConsoleTarget, DiskConfig, KernelSource, Seccomp, VmConfig};
use vmm::otlp::{Exporter, OtlpConfig};

mod common;
use common::median;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A collector that accepts every POST (reads it whole, answers 200) until
/// dropped.
struct Collector {
    url: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while !s.load(Ordering::Acquire) {
                let Ok((mut c, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                };
                c.set_nonblocking(false).unwrap();
                let mut got = Vec::new();
                let (head_end, len) = loop {
                    let n = c.read(&mut buf).unwrap();
                    assert!(n > 0, "a POST cut short");
                    got.extend_from_slice(&buf[..n]);
                    if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..i]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .unwrap()
                            .parse()
                            .unwrap();
                        break (i + 4, len);
                    }
                };
                let mut have = got.len() - head_end;
                while have < len {
                    let n = c.read(&mut buf).unwrap();
                    assert!(n > 0, "a body cut short");
                    have += n;
                }
                c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .unwrap();
            }
        });
        Self {
            url,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn config(cmdline: &str, otlp: Option<&str>) -> VmConfig {
    VmConfig {
        cmdline: Some(cmdline.into()),
        vcpus: 1,
        tenant: "bench".into(),
        console: ConsoleTarget::File("/dev/null".into()),
        otlp: otlp.map(|u| OtlpConfig {
            endpoint: u.into(),
            interval_ms: 1000,
        }),
        ..VmConfig::new(KernelSource::Builtin(Builtin::TestGuest))
    }
}

/// One run: its report (and the export's counters checked: nothing lost).
fn run(cfg: &VmConfig) -> Report {
    let out = vmm::run(cfg).unwrap_or_else(|e| panic!("the VM failed to run: {e}"));
    let report = out.report();
    if let Some(o) = &report.vm.otlp {
        let finished = report.requests.iter().filter(|r| r.state == "finished").count() as u64;
        assert_eq!((o.spans_exported, o.spans_dropped), (finished, 0), "{o:?}");
    }
    report
}

#[allow(clippy::cast_precision_loss)]
fn per_sec(count: u64, wall_ns: u64) -> f64 {
    count as f64 / (wall_ns as f64 / 1e9)
}

/// Rounds of (off, on), order alternating: each arm's rates and the
/// per-round on/off ratios.
fn arms(
    rounds: usize,
    off: &VmConfig,
    on: &VmConfig,
    rate: impl Fn(&Report) -> f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut offs, mut ons, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    // One warm-up of each, not counted.
    run(off);
    run(on);
    for r in 0..rounds {
        let (a, b) = if r % 2 == 0 {
            let a = rate(&run(off));
            (a, rate(&run(on)))
        } else {
            let b = rate(&run(on));
            (rate(&run(off)), b)
        };
        offs.push(a);
        ons.push(b);
        ratios.push(b / a);
    }
    (offs, ons, ratios)
}

fn print_arms(what: &str, (offs, ons, ratios): &(Vec<f64>, Vec<f64>, Vec<f64>)) {
    let mut r = ratios.clone();
    r.sort_by(f64::total_cmp);
    println!(
        "{what}: off {:.0}/s, on {:.0}/s (medians of {}), on/off {:.4}; per-round ratio median {:.4}, min {:.4}, max {:.4}",
        median(offs),
        median(ons),
        offs.len(),
        median(ons) / median(offs),
        median(ratios),
        r.first().copied().unwrap_or(f64::NAN),
        r.last().copied().unwrap_or(f64::NAN),
    );
}

/// Books holding `n` finished requests in one container.
fn books_with_finished(n: u32) -> Arc<Accounting> {
    let limits = Limits {
        retained_requests: n,
        ..Limits::default()
    };
    let acct = Accounting::new("bench", 1, 1, limits);
    acct.apply(&RingEntry::new(EntryKind::DeclareContainer, 1, 0, 0, b"web"))
        .unwrap();
    for id in 2..n + 2 {
        for kind in [EntryKind::BeginRequest, EntryKind::EndRequest] {
            acct.apply(&RingEntry {
                kind: kind as u16,
                id,
                arg: 1,
                ..Default::default()
            })
            .unwrap();
        }
    }
    acct
}

#[allow(clippy::cast_precision_loss)]
fn spans_per_sec(n: u32, url: &str) -> f64 {
    let acct = books_with_finished(n);
    let cfg = OtlpConfig {
        endpoint: url.into(),
        interval_ms: 3_600_000,
    };
    let t = Instant::now();
    let exporter = Exporter::start(&cfg, &acct, Seccomp::Off).unwrap();
    let stats = exporter.stats();
    loop {
        let i = stats.info();
        if i.spans_exported + i.spans_dropped >= u64::from(n) {
            assert_eq!(i.spans_dropped, 0, "{i:?}");
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = t.elapsed().as_secs_f64();
    drop(exporter);
    f64::from(n) / secs
}

fn main() {
    let rounds = env_usize("OTLP_BENCH_ROUNDS", 15);
    let ms = env_usize("OTLP_BENCH_MS", 300);
    let spans = u32::try_from(env_usize("OTLP_BENCH_SPANS", 200_000)).unwrap_or(u32::MAX);
    let collector = Collector::start();
    println!("otlp: {rounds} rounds per figure, demo runs of {ms} ms, {spans} spans");

    let demo = |otlp| VmConfig {
        time_limit_ms: Some(u64::try_from(ms).unwrap_or(300)),
        ..config("scenario=demo loop=1", otlp)
    };
    let exits = arms(rounds, &demo(None), &demo(Some(collector.url.as_str())), |r| {
        per_sec(r.totals.exits_total.count, r.vm.wall_ns)
    });
    print_arms("exits/s (demo loop=1, 1 vCPU)", &exits);

    let disk = std::env::temp_dir().join(format!("resourceful-otlp-bench-{}.img", std::process::id()));
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let blk = |otlp| VmConfig {
        disks: vec![DiskConfig {
            path: disk.clone(),
            read_only: false,
        }],
        ..config("scenario=blk", otlp)
    };
    let blk_ops = arms(rounds, &blk(None), &blk(Some(collector.url.as_str())), |r| {
        let b = &r.totals.block;
        per_sec(b.reads + b.writes + b.flushes + b.other, r.vm.wall_ns)
    });
    let _ = std::fs::remove_file(&disk);
    print_arms("blk ops/s (blk scenario, 1 vCPU)", &blk_ops);

    let rates: Vec<f64> = (0..3).map(|_| spans_per_sec(spans, &collector.url)).collect();
    println!(
        "spans/s sustained ({spans} finished requests, batches of 512, collector in-process): median {:.0} of {:?}",
        median(&rates),
        rates.iter().map(|r| r.round()).collect::<Vec<_>>()
    );
}
