//! What the host API's reads cost on big books, and what a retained finished
//! request costs in memory.
//!
//! `cargo bench -p vmm --bench api_read` (a plain `main`, no harness).
//! Nothing here asserts a timing; docs/benchmarks.md explains each figure.
//!
//! 1. Builds one VM's books as the VMM opens them for 2 vCPUs (two vCPU
//!    writers, the sampler, the device thread) with 10,000 containers and
//!    1,000,000 retained finished requests (1,050,000 run through, so 50,000
//!    are evicted on the way), all through the real paths: ring entries
//!    through `Accounting::apply`, charges through `Writer` (exits of 2–3
//!    reasons, sampled run time, block work on one request in four).
//! 2. Heap bytes per retained finished request: a counting global
//!    allocator's live bytes after the requests minus before, divided by the
//!    number retained; and the RSS delta likewise (glibc's chunk headers and
//!    rounding included).
//! 3. Times the real handler path, `vmm::api::route`, for
//!    `GET /v1/containers` (its default page of 1,000; for reference a page
//!    from the middle and all 10,000 at once) and
//!    `GET /v1/requests?order=cost&limit=100`
//!    (and, for reference, `order=begin` and one container's top 100), and
//!    `GET /v1/flamegraph.svg?resource=host_ns` (SVG and folded): p50, p99
//!    and max over the iterations, answers' sizes; and what one flame graph
//!    read allocates at its peak.
//! 4. The registry lock: the longest single hold of each read (timed inside
//!    `accounting::query`), and the longest wait of a prober thread that
//!    takes the lock every ~100 µs the way a vCPU does on its rare path,
//!    while the timed reads run.
//!
//! Environment knobs: `API_READ_CONTAINERS` (10000), `API_READ_REQUESTS`
//! (1000000, retained; 5% more are run through), `API_READ_ITERS` (200).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use accounting::abi::{tag, EntryKind, RingEntry};
use accounting::ledger::Accounting;
use accounting::query::{RequestFilter, RequestOrder};
use accounting::registry::Limits;
use accounting::report::VmInfo;
use accounting::resource::{BlockOp, BlockWork, ExitReason};
use vmm::api::{route, ApiState, DevicesInfo};

/// Counts live heap bytes (requested sizes).
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
/// The most `LIVE_BYTES` reached since it was last reset (the report's
/// cost is the peak during its writing minus the bytes before).
static PEAK_BYTES: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE_BYTES.fetch_add(by, Relaxed) + by;
    PEAK_BYTES.fetch_max(now, Relaxed);
}

// SAFETY: forwards every call to the system allocator unchanged and only
// counts sizes on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        grew(l.size());
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE_BYTES.fetch_sub(l.size(), Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        grew(l.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        grew(new);
        LIVE_BYTES.fetch_sub(l.size(), Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// Targets from the issue.
const TARGET_P99_MS: f64 = 10.0;
const TARGET_BYTES_PER_REQUEST: f64 = 256.0;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Nearest-rank percentile of a sorted slice.
fn pct(sorted: &[f64], p: f64) -> f64 {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ring(kind: EntryKind, id: u32, arg: u32, name: &str) -> RingEntry {
    RingEntry::new(kind, id, arg, 0, name.as_bytes())
}

/// xorshift64*: deterministic, cheap variety for the charges.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const NR_VCPUS: usize = 2;

/// The books: `containers` containers (100 top-level, the rest nested one
/// level below them) and `requests` finished requests retained.
fn build(containers: u32, requests: u32) -> (Arc<Accounting>, u64, u64, u64, f64) {
    let limits = Limits {
        max_containers: containers,
        max_live_requests: 4096,
        retained_requests: requests,
    };
    // vCPU writers, then the sampler, then the device thread (as vm.rs).
    let acct = Accounting::new("bench", NR_VCPUS, 2, limits);
    let before = LIVE_BYTES.load(Relaxed);
    for id in 1..=containers {
        let parent = if id <= 100 { 0 } else { 1 + id % 100 };
        acct.apply(&ring(EntryKind::DeclareContainer, id, parent, &format!("c{id}")))
            .expect("declare");
    }
    let per_container = (LIVE_BYTES.load(Relaxed) - before) as f64 / f64::from(containers);
    let mut vcpus: Vec<_> = (0..NR_VCPUS).map(|i| acct.writer(i)).collect();
    let mut sampler = acct.writer(NR_VCPUS);
    let mut device = acct.writer(NR_VCPUS + 1);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

    let (bytes0, rss0) = (LIVE_BYTES.load(Relaxed), rss_bytes());
    let total = requests + requests / 20;
    let t = Instant::now();
    for n in 0..total {
        let id = 1 + n % 60_000; // guest ids are reused, as guests do
        let c = 1 + u32::try_from(rng.below(u64::from(containers))).expect("small");
        acct.apply(&ring(EntryKind::BeginRequest, id, c, ""))
            .expect("begin");
        let t = Some(tag(c, id));
        let w = &mut vcpus[usize::try_from(n).expect("small") % NR_VCPUS];
        for _ in 0..1 + rng.below(6) {
            w.charge_exit(t, ExitReason::PortOut, 20_000 + rng.below(40_000));
        }
        for _ in 0..1 + rng.below(2) {
            w.charge_exit(t, ExitReason::MmioWrite, 30_000 + rng.below(30_000));
        }
        if rng.below(3) == 0 {
            w.charge_exit(t, ExitReason::PortIn, 15_000 + rng.below(10_000));
        }
        for _ in 0..1 + rng.below(3) {
            sampler.charge_run(0, t, 3_000_000 + rng.below(2_000_000));
        }
        if n % 4 == 0 {
            device.charge_block(
                t,
                &BlockWork {
                    op: if rng.below(2) == 0 {
                        BlockOp::Read
                    } else {
                        BlockOp::Write
                    },
                    bytes: 4096 * (1 + rng.below(16)),
                    device_ns: 10_000 + rng.below(50_000),
                    latency_ns: 40_000 + rng.below(200_000),
                    error: false,
                    throttled_ns: None,
                },
            );
            device.charge_interrupt(t);
        }
        acct.apply(&ring(EntryKind::EndRequest, id, 0, "")).expect("end");
    }
    let build_s = t.elapsed().as_secs_f64();
    // Writers let go of what their caches held (a running VM's writers do
    // at their next charge); the next read compacts those too.
    drop((vcpus, sampler, device));
    let _ = acct.select_requests(RequestFilter {
        container: None,
        order: RequestOrder::Cost,
        limit: 1,
        trace_id: None,
    });
    let reg = acct.registry();
    let (pending, evicted_pending) = reg.pending_len();
    assert_eq!(reg.retained_len(), requests as usize);
    assert_eq!((pending, evicted_pending), (0, 0));
    assert_eq!(reg.stats().requests_evicted, u64::from(total - requests));
    drop(reg);
    let bytes = (LIVE_BYTES.load(Relaxed) - bytes0) as u64;
    let rss = rss_bytes().saturating_sub(rss0);
    println!(
        "built {containers} containers and {total} requests ({requests} retained, {} evicted) in {build_s:.1} s",
        total - requests
    );
    (acct, bytes, rss, u64::from(total), per_container)
}

struct Timed {
    name: &'static str,
    ms: Vec<f64>,
    body_bytes: usize,
}

fn time(state: &ApiState, name: &'static str, target: &str, iters: usize) -> Timed {
    let warm = route(state, "GET", target);
    assert_eq!(
        warm.status,
        200,
        "{target}: {}",
        String::from_utf8_lossy(&warm.body)
    );
    let mut ms = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let r = route(state, "GET", target);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(r.body);
    }
    ms.sort_by(f64::total_cmp);
    Timed {
        name,
        ms,
        body_bytes: warm.body.len(),
    }
}

#[allow(clippy::cast_precision_loss)]
fn main() {
    let containers = u32::try_from(env_usize("API_READ_CONTAINERS", 10_000)).expect("u32");
    let requests = u32::try_from(env_usize("API_READ_REQUESTS", 1_000_000)).expect("u32");
    let iters = env_usize("API_READ_ITERS", 200).max(1);

    let (acct, bytes, rss, _, per_container) = build(containers, requests);
    let per_req = bytes as f64 / f64::from(requests);
    let rss_per_req = rss as f64 / f64::from(requests);

    // The prober: a vCPU-like thread taking the registry lock every ~100 µs.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (acct, stop) = (Arc::clone(&acct), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut waits = Vec::new();
            while !stop.load(Relaxed) {
                let t = Instant::now();
                let reg = acct.registry();
                let waited = t.elapsed().as_secs_f64() * 1e3;
                drop(reg);
                waits.push(waited);
                std::thread::sleep(Duration::from_micros(100));
            }
            waits.sort_by(f64::total_cmp);
            waits
        })
    };

    let state = ApiState::new(Arc::clone(&acct), DevicesInfo::default(), VmInfo::default);
    let top_container = 1 + containers / 2;
    let by_container = format!("/v1/requests?container={top_container}&order=cost&limit=100");
    let timed = [
        time(&state, "GET /v1/containers", "/v1/containers", iters),
        time(
            &state,
            "GET /v1/containers?after=5000 (a middle page)",
            "/v1/containers?after=5000",
            iters,
        ),
        time(
            &state,
            "GET /v1/containers?limit=10000 (all at once)",
            "/v1/containers?limit=10000",
            iters.min(50),
        ),
        time(
            &state,
            "GET /v1/requests?order=cost&limit=100",
            "/v1/requests?order=cost&limit=100",
            iters,
        ),
        time(
            &state,
            "GET /v1/requests?order=begin&limit=100",
            "/v1/requests?order=begin&limit=100",
            iters,
        ),
        time(
            &state,
            "GET /v1/requests?container=N&order=cost",
            &by_container,
            iters,
        ),
        time(&state, "GET /metrics", "/metrics", iters.min(50)),
        time(
            &state,
            "GET /v1/flamegraph.svg?resource=host_ns",
            "/v1/flamegraph.svg?resource=host_ns",
            iters.min(20),
        ),
        time(
            &state,
            "GET /v1/flamegraph.svg?...&format=folded",
            "/v1/flamegraph.svg?resource=host_ns&format=folded",
            iters.min(20),
        ),
    ];
    stop.store(true, Relaxed);
    let waits = prober.join().expect("prober");

    // The containers view without the JSON, to tell the two apart.
    let mut view_ms = Vec::new();
    for _ in 0..iters.min(50) {
        let t = Instant::now();
        std::hint::black_box(acct.containers_view());
        view_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    view_ms.sort_by(f64::total_cmp);

    // Lock holds as timed inside the reads themselves.
    let mut longest_containers = 0u64;
    let mut longest_requests = 0u64;
    let (mut steps_c, mut steps_r) = (0, 0);
    for _ in 0..20 {
        let (_, s) = acct.containers_view();
        longest_containers = longest_containers.max(s.longest_step_ns);
        steps_c = s.steps;
        let (_, s) = acct.select_requests(RequestFilter {
            container: None,
            order: RequestOrder::Cost,
            limit: 100,
            trace_id: None,
        });
        longest_requests = longest_requests.max(s.longest_step_ns);
        steps_r = s.steps;
    }
    // The flame graph's pass: every request's charges decoded and ranked.
    let mut longest_flame = 0u64;
    let mut steps_f = 0;
    for _ in 0..5 {
        let (_, s) = acct.top_requests_by(vmm::api::flame::MAX_REQUEST_FRAMES, |c| {
            vmm::api::flame::Resource::HostNs.total(c)
        });
        longest_flame = longest_flame.max(s.longest_step_ns);
        steps_f = s.steps;
    }

    println!(
        "\n{:<44} {:>9} {:>9} {:>9} {:>11} {:>8}",
        "read (vmm::api::route)", "p50 ms", "p99 ms", "max ms", "answer", "target"
    );
    for t in &timed {
        let target = if t.name.ends_with("/v1/containers") || t.name.contains("order=cost&limit=100") {
            format!("{TARGET_P99_MS} ms")
        } else {
            "-".into()
        };
        println!(
            "{:<44} {:>9.3} {:>9.3} {:>9.3} {:>9.1} KB {:>8}",
            t.name,
            pct(&t.ms, 50.0),
            pct(&t.ms, 99.0),
            pct(&t.ms, 100.0),
            t.body_bytes as f64 / 1e3,
            target
        );
    }
    println!(
        "\nregistry lock, longest single hold: containers view {:.1} µs ({steps_c} holds per read), \
         top-100 by cost {:.1} µs ({steps_r} holds per read)",
        longest_containers as f64 / 1e3,
        longest_requests as f64 / 1e3,
    );
    println!(
        "registry lock, longest single hold of a flame graph's request pass: {:.1} µs ({steps_f} holds per read)",
        longest_flame as f64 / 1e3,
    );
    println!(
        "prober (takes the lock every ~100 µs, {} probes during the timed reads): wait p50 {:.3} ms, p99 {:.3} ms, \
         p99.9 {:.3} ms, max {:.3} ms",
        waits.len(),
        pct(&waits, 50.0),
        pct(&waits, 99.0),
        pct(&waits, 99.9),
        pct(&waits, 100.0)
    );
    println!(
        "containers view alone (accounting::query, no JSON): p50 {:.3} ms, p99 {:.3} ms",
        pct(&view_ms, 50.0),
        pct(&view_ms, 99.0)
    );
    println!(
        "heap per retained finished request: {per_req:.1} B (counting allocator, requested sizes; target {TARGET_BYTES_PER_REQUEST} B); \
         RSS delta per request {rss_per_req:.1} B"
    );
    println!(
        "heap per container: {per_container:.1} B ({NR_VCPUS} vCPU writers + the sampler and the device thread: a counter block per writer)"
    );

    // The final report, written as the VMM writes it (to a sink here):
    // what it allocates beyond the books at its peak, and how long it takes.
    let before = LIVE_BYTES.load(Relaxed);
    PEAK_BYTES.store(before, Relaxed);
    let t = Instant::now();
    accounting::report::ReportWriter::new(&acct, VmInfo::default())
        .write_json(std::io::sink())
        .expect("a sink takes everything");
    let report_s = t.elapsed().as_secs_f64();
    let report_peak = PEAK_BYTES.load(Relaxed).saturating_sub(before);
    println!(
        "final report of {containers} containers and {requests} retained requests: {:.1} MB at most beyond the books \
         ({:.1} B per retained request), written in {report_s:.1} s",
        report_peak as f64 / 1e6,
        report_peak as f64 / f64::from(requests)
    );

    // A flame graph: what one read allocates beyond the books at its peak.
    let before = LIVE_BYTES.load(Relaxed);
    PEAK_BYTES.store(before, Relaxed);
    let svg = route(&state, "GET", "/v1/flamegraph.svg?resource=host_ns");
    let flame_peak = PEAK_BYTES.load(Relaxed).saturating_sub(before);
    println!(
        "GET /v1/flamegraph.svg?resource=host_ns: {:.1} MB at most beyond the books, answer {:.1} KB",
        flame_peak as f64 / 1e6,
        svg.body.len() as f64 / 1e3
    );

    // Live requests: begun and charged, not ended.
    let live = acct.limits().max_live_requests;
    let before = LIVE_BYTES.load(Relaxed);
    let mut w = acct.writer(0);
    for id in 0..live {
        let id = 2_000_000 + id;
        acct.apply(&ring(EntryKind::BeginRequest, id, 1, ""))
            .expect("begin");
        w.charge_exit(Some(tag(1, id)), ExitReason::PortOut, 1);
    }
    let per_live = (LIVE_BYTES.load(Relaxed) - before) as f64 / f64::from(live);
    println!("heap per live request: {per_live:.1} B ({live} begun and charged once each)");
}
