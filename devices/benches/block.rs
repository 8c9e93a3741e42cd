//! virtio-blk requests per second through `BlockDevice::process_queue`, with
//! accounting on vs off, measured interleaved in one run; and the cost that
//! accounting adds per tagged request.
//!
//! Run with `cargo bench -p devices --bench block` (see docs/benchmarks.md).
//! Target: requests/s ON / OFF ≥ 0.98.
//!
//! A plain `main` (`harness = false`) rather than criterion: the arms must
//! run interleaved in the same process on the same device, queue and file, and
//! criterion measures its cases one after the other.
//!
//! Set-up (public APIs only; the unit tests' helpers are `#[cfg(test)]`):
//! 64 MiB of guest memory, a `BlockDevice` on a 16 MiB file in the temp
//! directory (filled with a pattern, so it is in the page cache, and removed at
//! the end), activated with one 256-entry split queue laid out by hand and
//! built as the MMIO transport builds it (`Queue::try_set_*`, `set_ready`).
//! (Not with `virtio_queue::mock::MockSplitQueue`: in virtio-queue 0.18 it
//! places the used ring `len` *bytes* after the avail ring's entries instead
//! of `2 * len`, so with 256 entries the used ring overwrites avail entries
//! 128.. and the device pops garbage heads.)
//! Request `i` of a batch is descriptors `3i..3i+3`: a 16-byte header, one
//! 4 KiB data buffer of its own, a status byte. The descriptor table is
//! written once; before each batch (outside the timed section) the "driver"
//! points each header at the next 4 KiB block of the disk, publishes the 64
//! heads in the avail ring at the current avail index (wrapping around the
//! ring as a real driver does) and bumps the index. The device's used ring
//! advances by 64 per batch, so every batch is real, fresh work: 64 parses,
//! 64 `pread`s (or `pwrite`s) against the page cache, copies into (out of)
//! guest memory, status bytes, used-ring updates and one interrupt.
//!
//! Timed per batch: `QueueNotifier::post_at(Some(tag), Some(avail_idx))` (what
//! the vCPU's `QueueNotify` does), draining the notify `EventFd` (what the
//! event loop does) and `process_queue(0, charger)`. The arms differ only in
//! the charger:
//! - OFF: a no-op `Charger` (the VMM with accounting off charges nothing; the
//!   device still reads its clocks for `device_ns`/`latency_ns`, in both arms);
//! - ON: the same mapping as the VMM's `vmm::charger::BooksCharger` (re-written
//!   here, ~15 lines, because `devices` cannot depend on `vmm`):
//!   `Writer::charge_block(tag, &BlockWork{..})` and, as with a Linux guest
//!   whose interrupts are delivered, `Writer::charge_interrupt`, on books
//!   opened as the VMM opens them for one vCPU (`Accounting::new("t", 1, 2,
//!   ..)`, the device's column after the sampler's) with the tag's container
//!   and a live request declared through `Accounting::apply`. Every request is
//!   tagged with (container 1, request 9), so each charge also adds to the
//!   request's shared block.
//! - ON, container only (diagnostic): the ON charger with the tag
//!   (container 1, no request), to show what the request's shared atomics
//!   cost.
//!
//! The three arms take turns batch by batch (which goes first rotates every
//! batch and every round), so drift hits all alike; one warm-up round is
//! discarded. Requests/s per arm = 64 / the median batch time over all
//! batches (a preempted batch on this shared 2-core host does not move a
//! median); the ratio ON/OFF is that of the medians, and per round the ratio
//! and the ns added per request ((ON − OFF median batch) / 64) give the
//! spread. Requests/s from each round's total time are printed too.
//! `BLOCK_BENCH_ROUNDS` (default 61) and `BLOCK_BENCH_BATCHES` (batches per
//! arm per round, default 300) override the defaults. Run without `--bench`
//! (as `cargo test --benches` does), it does a short smoke run.

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use accounting::abi::{tag, EntryKind, RingEntry};
use accounting::ledger::{Accounting, Writer};
use accounting::registry::Limits;
use accounting::resource::{self, BlockWork};
use devices::virtio::block::{BlockDevice, VIRTIO_BLK_S_OK};
use devices::virtio::{BlockCharge, BlockOp, Charger, VirtioDevice, VIRTIO_F_VERSION_1};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Requests per batch (per notification).
const N: u16 = 64;
/// Queue size (the device's maximum).
const QUEUE_SIZE: u16 = 256;
/// Bytes per request.
const BLOCK: u32 = 4096;
const GUEST_MEM: usize = 64 << 20;
const DISK_BYTES: u64 = 16 << 20;
const SECTOR: u64 = 512;
/// virtio-blk request types and descriptor flags (virtio 1.2, 5.2.6; 2.7.5).
const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const HEADER_LEN: u32 = 16;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
/// Guest-physical layout: descriptor table, avail ring (4 + 2 * 256 + 2
/// bytes), used ring (4 + 8 * 256 + 2 bytes), then the requests.
const DESC_TABLE: u64 = 0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const HEADERS: u64 = 0x10_0000;
const STATUS: u64 = 0x20_0000;
const DATA: u64 = 0x100_0000;
/// The principal every request is tagged with: container 1, live request 9.
const CONTAINER: u32 = 1;
const REQUEST: u32 = 9;

/// Accounting off: charges nothing.
struct Off;

impl Charger for Off {
    fn charge_block(&mut self, c: &BlockCharge) {
        black_box(c);
    }
    fn charge_interrupt(&mut self, tag: Option<u64>) {
        black_box(tag);
    }
}

/// Accounting on: what `vmm::charger::BooksCharger` does with a writer and
/// delivered interrupts (re-implemented: `devices` cannot depend on `vmm`).
struct On {
    writer: Writer,
}

fn block_op(op: BlockOp) -> resource::BlockOp {
    match op {
        BlockOp::Read => resource::BlockOp::Read,
        BlockOp::Write => resource::BlockOp::Write,
        BlockOp::Flush => resource::BlockOp::Flush,
        BlockOp::GetId | BlockOp::Unsupported => resource::BlockOp::Other,
    }
}

impl Charger for On {
    fn charge_block(&mut self, c: &BlockCharge) {
        let work = BlockWork {
            op: block_op(c.op),
            bytes: c.bytes,
            device_ns: c.device_ns,
            latency_ns: c.latency_ns,
            error: c.status != VIRTIO_BLK_S_OK,
            throttled_ns: c.throttled.then_some(c.throttled_ns),
        };
        self.writer.charge_block(c.tag, &work);
    }
    fn charge_interrupt(&mut self, tag: Option<u64>) {
        self.writer.charge_interrupt(tag);
    }
}

/// Books as the VMM opens them for one vCPU (vCPU, sampler, device columns),
/// with container 1 and request 9 in it declared through the ring's path.
fn books() -> (Arc<Accounting>, On) {
    let acct = Accounting::new("t", 1, 2, Limits::default());
    let e = RingEntry::new(EntryKind::DeclareContainer, CONTAINER, 0, 0, b"io");
    acct.apply(&e).expect("declare container");
    acct.apply(&RingEntry {
        kind: EntryKind::BeginRequest as u16,
        id: REQUEST,
        arg: CONTAINER,
        ..Default::default()
    })
    .expect("begin request");
    let writer = acct.writer(2);
    (acct, On { writer })
}

/// The disk image in the temp directory, removed when dropped.
struct TempImage(PathBuf);

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn disk(name: &str) -> (TempImage, File) {
    let path = std::env::temp_dir().join(format!(
        "resourceful-block-bench-{}-{name}.img",
        std::process::id()
    ));
    let image = TempImage(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&image.0)
        .expect("create the disk image");
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251).to_le_bytes()[0]).collect();
    for off in (0..DISK_BYTES).step_by(chunk.len()) {
        file.write_all_at(&chunk, off).expect("fill the disk image");
    }
    // Read it all back once so every page is cached.
    let mut buf = vec![0u8; chunk.len()];
    for off in (0..DISK_BYTES).step_by(buf.len()) {
        file.read_exact_at(&mut buf, off).expect("read the disk image");
    }
    (image, file)
}

/// Whether request `i` of a batch writes (every 4th in the mixed workload).
fn is_write(mixed: bool, i: u16) -> bool {
    mixed && i % 4 == 3
}

/// One workload's device, queue and driver state.
struct Rig<'m> {
    mem: &'m GuestMemoryMmap,
    dev: BlockDevice,
    mixed: bool,
    avail: u16,
    next_block: u64,
    _image: TempImage,
    file: File,
}

impl<'m> Rig<'m> {
    fn new(mem: &'m GuestMemoryMmap, name: &str, mixed: bool) -> Self {
        let (image, file) = disk(name);
        for i in 0..N {
            let (hdr, status, data) = addrs(i);
            let kind = if is_write(mixed, i) {
                VIRTIO_BLK_T_OUT
            } else {
                VIRTIO_BLK_T_IN
            };
            mem.write_obj(kind.to_le(), hdr).unwrap();
            let data_flags = if is_write(mixed, i) {
                F_NEXT
            } else {
                F_NEXT | F_WRITE
            };
            let d = 3 * i;
            let descs = [
                (hdr.0, HEADER_LEN, F_NEXT, d + 1),
                (data.0, BLOCK, data_flags, d + 2),
                (status.0, 1, F_WRITE, 0),
            ];
            for (k, desc) in (d..).zip(descs) {
                write_desc(mem, k, desc);
            }
        }
        let mut dev = BlockDevice::new(file.try_clone().unwrap(), false, "bench").expect("block device");
        let mut queue = Queue::new(QUEUE_SIZE).expect("queue");
        queue.try_set_size(QUEUE_SIZE).expect("queue size");
        queue
            .try_set_desc_table_address(GuestAddress(DESC_TABLE))
            .expect("descriptor table");
        queue
            .try_set_avail_ring_address(GuestAddress(AVAIL))
            .expect("avail ring");
        queue
            .try_set_used_ring_address(GuestAddress(USED))
            .expect("used ring");
        queue.set_ready(true);
        assert!(queue.is_valid(mem), "queue lies in guest memory");
        dev.activate(mem.clone(), vec![queue], 1 << VIRTIO_F_VERSION_1)
            .expect("activate");
        Self {
            mem,
            dev,
            mixed,
            avail: 0,
            next_block: 0,
            _image: image,
            file,
        }
    }

    /// The driver's part, not timed: aim the headers at the next 64 blocks,
    /// reset the status bytes, publish the heads. Returns the new avail index.
    fn publish(&mut self) -> u16 {
        let blocks = DISK_BYTES / u64::from(BLOCK);
        for i in 0..N {
            let (hdr, status, _) = addrs(i);
            let sector = (self.next_block % blocks) * u64::from(BLOCK) / SECTOR;
            self.next_block += 1;
            self.mem
                .write_obj(sector.to_le(), GuestAddress(hdr.0 + 8))
                .unwrap();
            self.mem.write_obj(0xffu8, status).unwrap();
            let slot = self.avail.wrapping_add(i) % QUEUE_SIZE;
            let entry = GuestAddress(AVAIL + 4 + 2 * u64::from(slot));
            self.mem.write_obj((3 * i).to_le(), entry).unwrap();
        }
        self.avail = self.avail.wrapping_add(N);
        self.mem
            .write_obj(self.avail.to_le(), GuestAddress(AVAIL + 2))
            .unwrap();
        self.avail
    }

    /// One batch: publish (untimed), then notify, drain, process (timed).
    fn batch(&mut self, charger: &mut dyn Charger, tag: u64) -> Duration {
        let idx = self.publish();
        let notifier = self.dev.queue_notifiers()[0].clone();
        let t0 = Instant::now();
        notifier.post_at(Some(tag), Some(idx));
        let _ = notifier.eventfd().read();
        let out = self.dev.process_queue(0, charger);
        let dt = t0.elapsed();
        assert_eq!((out.requests, out.malformed), (u64::from(N), 0));
        assert_eq!(
            u16::from_le(self.mem.read_obj(GuestAddress(USED + 2)).unwrap()),
            idx,
            "used ring advanced"
        );
        let _ = self.dev.interrupt().irqfd().read();
        dt
    }

    /// Checks the last batch: every status OK, every read buffer equal to
    /// the file at its block.
    fn verify_last_batch(&self) {
        let blocks = DISK_BYTES / u64::from(BLOCK);
        let first = self.next_block - u64::from(N);
        for i in 0..N {
            let (_, status, data) = addrs(i);
            assert_eq!(self.mem.read_obj::<u8>(status).unwrap(), VIRTIO_BLK_S_OK);
            let off = ((first + u64::from(i)) % blocks) * u64::from(BLOCK);
            let mut want = vec![0u8; BLOCK as usize];
            let mut got = vec![0u8; BLOCK as usize];
            self.file.read_exact_at(&mut want, off).unwrap();
            self.mem.read_slice(&mut got, data).unwrap();
            assert_eq!(got, want, "request {i} (write: {})", is_write(self.mixed, i));
        }
    }
}

/// Writes split descriptor `index` (virtio 1.2, 2.7.5): le64 addr, le32 len,
/// le16 flags, le16 next.
fn write_desc(mem: &GuestMemoryMmap, index: u16, (addr, len, flags, next): (u64, u32, u16, u16)) {
    let at = DESC_TABLE + 16 * u64::from(index);
    mem.write_obj(addr.to_le(), GuestAddress(at)).unwrap();
    mem.write_obj(len.to_le(), GuestAddress(at + 8)).unwrap();
    mem.write_obj(flags.to_le(), GuestAddress(at + 12)).unwrap();
    mem.write_obj(next.to_le(), GuestAddress(at + 14)).unwrap();
}

/// Header, status and data addresses of request `i`.
fn addrs(i: u16) -> (GuestAddress, GuestAddress, GuestAddress) {
    let i = u64::from(i);
    (
        GuestAddress(HEADERS + 16 * i),
        GuestAddress(STATUS + i),
        GuestAddress(DATA + u64::from(BLOCK) * i),
    )
}

/// The `pct`th percentile of `sorted` (nearest rank).
fn quantile(sorted: &[f64], pct: usize) -> f64 {
    let last = sorted.len() - 1;
    sorted[((last * pct + 50) / 100).min(last)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

struct Summary {
    /// Median over rounds of requests / round's total time, per arm.
    off_rps_total: f64,
    on_rps_total: f64,
    /// N / median batch time over all batches, per arm.
    off_rps: f64,
    on_rps: f64,
    /// OFF median batch / ON median batch.
    ratio_of_medians: f64,
    /// Per round: OFF median batch / ON median batch (sorted).
    ratio: Vec<f64>,
    /// Per round: (ON − OFF median batch) / N, ns (sorted).
    added_ns: Vec<f64>,
    /// The container-only diagnostic arm.
    ctr_ratio_of_medians: f64,
    ctr_added_ns: f64,
}

fn run(name: &str, mixed: bool, rounds: usize, batches: usize) -> Summary {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), GUEST_MEM)]).expect("guest memory");
    let mut rig = Rig::new(&mem, name, mixed);
    let (acct, mut on) = books();
    let mut off = Off;
    // Arms: 0 OFF, 1 ON (tag = container + live request), 2 ON with a
    // container-only tag (diagnostic: without the request's shared atomics).
    let tags = [
        tag(CONTAINER, REQUEST),
        tag(CONTAINER, REQUEST),
        tag(CONTAINER, 0),
    ];
    let mut round_ns: [Vec<f64>; 3] = Default::default();
    let mut batch_ns: [Vec<f64>; 3] = Default::default();
    let mut batches_run = 0u64;
    // Round 0 is the warm-up, discarded. Within a round the arms alternate
    // batch by batch, and which goes first rotates every batch and round.
    let mut round_med: [Vec<f64>; 3] = Default::default();
    for round in 0..=rounds {
        let mut t = [0.0f64; 3];
        let mut this_round: [Vec<f64>; 3] = Default::default();
        for b in 0..batches {
            for k in 0..3 {
                let arm = (round + b + k) % 3;
                let dt = if arm == 0 {
                    rig.batch(&mut off, tags[arm])
                } else {
                    rig.batch(&mut on, tags[arm])
                };
                if round > 0 {
                    let dt = dt.as_nanos() as f64;
                    t[arm] += dt;
                    batch_ns[arm].push(dt);
                    this_round[arm].push(dt);
                }
            }
            batches_run += 1;
        }
        if round > 0 {
            for arm in 0..3 {
                round_ns[arm].push(t[arm]);
                round_med[arm].push(quantile(&sorted(std::mem::take(&mut this_round[arm])), 50));
            }
        }
    }
    rig.verify_last_batch();

    // The ON arms' charges all landed on container 1, arm 1's on request 9
    // too; OFF charged nothing.
    let per_arm_total = batches_run * u64::from(N);
    {
        let reg = acct.registry();
        let c = reg.containers()[CONTAINER as usize].cells.sum().block;
        assert_eq!(c.reads + c.writes, 2 * per_arm_total);
        assert_eq!(c.errors, 0);
        let writes = if mixed { 2 * per_arm_total / 4 } else { 0 };
        assert_eq!((c.writes, c.bytes_written), (writes, writes * u64::from(BLOCK)));
        let r = reg
            .live_requests()
            .next()
            .expect("request 9 live")
            .cells
            .read()
            .block;
        assert_eq!(r.reads + r.writes, per_arm_total);
    }
    let stats = rig.dev.stats();
    assert_eq!(stats.requests, 3 * per_arm_total);
    assert_eq!(
        stats.bytes_read + stats.bytes_written,
        3 * per_arm_total * u64::from(BLOCK)
    );

    // Throughput from each round's total time (sensitive to preemption on a
    // loaded host) and from its median batch (robust to it).
    let per_arm = (batches * usize::from(N)) as f64;
    let rps = |ns: &[f64]| quantile(&sorted(ns.iter().map(|t| per_arm / t * 1e9).collect()), 50);
    let [off_tot, on_tot, _] = &round_ns;
    let [off_med, on_med, ctr_med] = &round_med;
    let n = f64::from(N);
    let ratio = sorted(on_med.iter().zip(off_med).map(|(on, off)| off / on).collect());
    let added_ns = sorted(
        on_med
            .iter()
            .zip(off_med)
            .map(|(on, off)| (on - off) / n)
            .collect(),
    );
    let ctr_added = sorted(
        ctr_med
            .iter()
            .zip(off_med)
            .map(|(c, off)| (c - off) / n)
            .collect(),
    );
    let [off_b, on_b, ctr_b] = batch_ns;
    let per_req = |v: Vec<f64>| quantile(&sorted(v), 50) / n;
    let (off_req_ns, on_req_ns, ctr_req_ns) = (per_req(off_b), per_req(on_b), per_req(ctr_b));
    Summary {
        off_rps_total: rps(off_tot),
        on_rps_total: rps(on_tot),
        off_rps: 1e9 / off_req_ns,
        on_rps: 1e9 / on_req_ns,
        ratio_of_medians: off_req_ns / on_req_ns,
        ratio,
        added_ns,
        ctr_ratio_of_medians: off_req_ns / ctr_req_ns,
        ctr_added_ns: quantile(&ctr_added, 50),
    }
}

/// The charge alone, outside the device: ns per `charge_block` on the ON
/// charger (tag cached), and per no-op charge.
fn charge_alone(iters: u64) -> (f64, f64) {
    let (acct, mut on) = books();
    let c = BlockCharge {
        tag: Some(tag(CONTAINER, REQUEST)),
        op: BlockOp::Read,
        bytes: u64::from(BLOCK),
        device_ns: 1500,
        latency_ns: 3000,
        status: VIRTIO_BLK_S_OK,
        throttled: false,
        throttled_ns: 0,
    };
    let time = |ch: &mut dyn Charger| {
        ch.charge_block(&c);
        let t0 = Instant::now();
        for _ in 0..iters {
            ch.charge_block(black_box(&c));
        }
        t0.elapsed().as_nanos() as f64 / iters as f64
    };
    let off = time(&mut Off);
    let on_ns = time(&mut on);
    assert_eq!(
        acct.registry().containers()[CONTAINER as usize]
            .cells
            .sum()
            .block
            .reads,
        iters + 1
    );
    (on_ns, off)
}

/// ns per `devices::virtio::thread_cpu_ns()`: the device reads it twice per
/// request in both arms (for `device_ns`).
fn thread_clock_ns(iters: u64) -> f64 {
    let t0 = Instant::now();
    for _ in 0..iters {
        black_box(devices::virtio::thread_cpu_ns());
    }
    t0.elapsed().as_nanos() as f64 / iters as f64
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (rounds, batches) = if bench {
        (
            env("BLOCK_BENCH_ROUNDS", 61).max(1),
            env("BLOCK_BENCH_BATCHES", 300).max(1),
        )
    } else {
        (2, 2)
    };
    let started = Instant::now();
    println!(
        "virtio-blk through BlockDevice::process_queue: {N} requests of {BLOCK} B per notification, \
         {rounds} rounds x {batches} batches per arm (+1 warm-up round), arms interleaved"
    );
    println!();
    println!(
        "| workload | req/s OFF / ON (from the median batch) | ON/OFF | per-round ON/OFF: median [p10-p90] \
         (min-max) | ns added per tagged request: median of rounds [p10-p90] | req/s OFF / ON (from round \
         totals) | target ON/OFF >= 0.98 |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut diag = Vec::new();
    for (name, mixed) in [("read", false), ("mixed", true)] {
        let s = run(name, mixed, rounds, batches);
        diag.push((name, s.ctr_ratio_of_medians, s.ctr_added_ns));
        let (r, a) = (&s.ratio, &s.added_ns);
        let verdict = if s.ratio_of_medians >= 0.98 {
            "PASS"
        } else {
            "MISS"
        };
        println!(
            "| {} | {:.0} / {:.0} | {:.4} | {:.4} [{:.4}-{:.4}] ({:.4}-{:.4}) | {:.1} [{:.1}-{:.1}] \
             | {:.0} / {:.0} | {verdict} |",
            if mixed {
                "4 KiB, 3 reads : 1 write"
            } else {
                "4 KiB reads"
            },
            s.off_rps,
            s.on_rps,
            s.ratio_of_medians,
            quantile(r, 50),
            quantile(r, 10),
            quantile(r, 90),
            r[0],
            r[r.len() - 1],
            quantile(a, 50),
            quantile(a, 10),
            quantile(a, 90),
            s.off_rps_total,
            s.on_rps_total,
        );
    }
    println!();
    for (name, ratio, added) in diag {
        println!(
            "diagnostic arm, {name}: ON with a container-only tag (no live request): ON/OFF {ratio:.4}, \
             {added:.1} ns/request added (median of rounds)"
        );
    }
    let iters = if bench { 2_000_000 } else { 1000 };
    let (on_ns, off_ns) = charge_alone(iters);
    let clock = thread_clock_ns(if bench { 200_000 } else { 100 });
    println!();
    println!(
        "charge alone (ON charger's charge_block, tag cached, container + live request): {on_ns:.1} ns; \
         no-op: {off_ns:.1} ns"
    );
    println!("thread_cpu_ns() (read once per request by the device, in both arms): {clock:.0} ns");
    println!("total run time: {:.1} s", started.elapsed().as_secs_f64());
}
