//! What is charged: resource kinds, provenance, and the counter blocks.
//!
//! [`Counters`] is the atomic block a writer adds to; [`Charges`] is the plain
//! sum a reader gets back. Both have the same fields, so adding a resource
//! kind is one field in each plus one line in [`Counters::add_into`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

/// Why a vCPU returned to the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// `in` instruction.
    PortIn,
    /// `out` instruction.
    PortOut,
    /// Load from an MMIO address.
    MmioRead,
    /// Store to an MMIO address.
    MmioWrite,
    /// Triple fault / shutdown.
    Shutdown,
    /// KVM could not emulate an instruction.
    InternalError,
    /// Anything else KVM returned to user space.
    Other,
}

impl ExitReason {
    /// Number of reasons.
    pub const COUNT: usize = 7;
    /// All reasons, in report order.
    pub const ALL: [ExitReason; Self::COUNT] = [
        Self::PortIn,
        Self::PortOut,
        Self::MmioRead,
        Self::MmioWrite,
        Self::Shutdown,
        Self::InternalError,
        Self::Other,
    ];

    /// Index into per-reason arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The name used in reports, JSON and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::PortIn => "port_in",
            Self::PortOut => "port_out",
            Self::MmioRead => "mmio_read",
            Self::MmioWrite => "mmio_write",
            Self::Shutdown => "shutdown",
            Self::InternalError => "internal_error",
            Self::Other => "other",
        }
    }
}

/// How a charge was attributed to its principal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provenance {
    /// The principal was known when the work happened.
    Exact,
    /// Statistical, from periodic samples of the vCPU's current tag.
    Sampled,
    /// Split across principals by a stated rule.
    Apportioned,
    /// Charged to the tenant's `unattributed` container.
    Unattributed,
}

/// Kinds of block request, as charged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockOp {
    /// Read (virtio-blk IN).
    Read,
    /// Write (virtio-blk OUT).
    Write,
    /// Flush.
    Flush,
    /// Anything else (GET_ID, unsupported types, malformed requests).
    Other,
}

/// Block device work, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlockCharge {
    /// Read requests.
    pub reads: u64,
    /// Write requests.
    pub writes: u64,
    /// Flush requests.
    pub flushes: u64,
    /// Other requests (GET_ID, unsupported, malformed).
    pub other: u64,
    /// Requests answered with an error status.
    pub errors: u64,
    /// Bytes read from the disk into the guest.
    pub bytes_read: u64,
    /// Bytes written from the guest to the disk.
    pub bytes_written: u64,
    /// Device thread CPU time spent on the requests, ns.
    pub device_ns: u64,
    /// Sum of request latencies (notification to used-ring update), ns.
    pub latency_ns: u64,
    /// Requests a per-container limit held back (throttle events).
    pub throttle_events: u64,
    /// Time those requests were held, ns (part of `latency_ns`).
    pub throttled_ns: u64,
}

impl BlockCharge {
    /// All requests.
    pub fn ops(&self) -> u64 {
        self.reads + self.writes + self.flushes + self.other
    }

    fn add(&mut self, o: &BlockCharge) {
        self.reads += o.reads;
        self.writes += o.writes;
        self.flushes += o.flushes;
        self.other += o.other;
        self.errors += o.errors;
        self.bytes_read += o.bytes_read;
        self.bytes_written += o.bytes_written;
        self.device_ns += o.device_ns;
        self.latency_ns += o.latency_ns;
        self.throttle_events += o.throttle_events;
        self.throttled_ns += o.throttled_ns;
    }
}

/// Network device work, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetCharge {
    /// Frames the guest sent (spoofed ones included).
    pub tx_frames: u64,
    /// Their bytes (Ethernet frames, without the virtio-net header).
    pub tx_bytes: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Device thread CPU ns spent on the frames (the TAP reads and writes
    /// and their processing).
    pub host_ns: u64,
    /// TCP payload bytes sent again (a sequence range already sent on the
    /// flow).
    pub retransmitted_bytes: u64,
    /// Frames dropped because their source MAC was not the device's.
    pub spoofed_frames: u64,
    /// TX frames a per-container limit held back (throttle events).
    pub throttle_events: u64,
    /// Time those frames were held, ns (wall time, not host CPU).
    pub throttled_ns: u64,
    /// Received frames a per-container limit with `net-rx-drop` dropped
    /// before they reached the guest (not in `rx_frames`).
    pub rx_dropped_frames: u64,
    /// Their bytes.
    pub rx_dropped_bytes: u64,
}

impl NetCharge {
    fn add(&mut self, o: &NetCharge) {
        self.tx_frames += o.tx_frames;
        self.tx_bytes += o.tx_bytes;
        self.rx_frames += o.rx_frames;
        self.rx_bytes += o.rx_bytes;
        self.host_ns += o.host_ns;
        self.retransmitted_bytes += o.retransmitted_bytes;
        self.spoofed_frames += o.spoofed_frames;
        self.throttle_events += o.throttle_events;
        self.throttled_ns += o.throttled_ns;
        self.rx_dropped_frames += o.rx_dropped_frames;
        self.rx_dropped_bytes += o.rx_dropped_bytes;
    }

    /// The counter deltas of one frame's work, indexed like `Counters::net`.
    fn deltas(&self) -> [u64; 11] {
        [
            self.tx_frames,
            self.tx_bytes,
            self.rx_frames,
            self.rx_bytes,
            self.host_ns,
            self.retransmitted_bytes,
            self.spoofed_frames,
            self.throttle_events,
            self.throttled_ns,
            self.rx_dropped_frames,
            self.rx_dropped_bytes,
        ]
    }
}

/// virtio-vsock work, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VsockCharge {
    /// Packets the guest sent (well-formed; control packets included).
    pub tx_packets: u64,
    /// RW payload bytes the guest sent.
    pub tx_bytes: u64,
    /// Packets delivered to the guest (control packets included).
    pub rx_packets: u64,
    /// RW payload bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Device thread CPU ns spent on the packets and the host streams.
    pub host_ns: u64,
    /// Connections opened (guest REQUEST accepted, or the guest's RESPONSE
    /// to a host-initiated one).
    pub connections: u64,
    /// RSTs: from the guest ending a live connection, or delivered by the
    /// device to refuse or end one.
    pub resets: u64,
    /// Times a per-container limit (`vsock-bytes`) held a connection's
    /// bytes, either way, and let them go.
    pub throttle_events: u64,
    /// Time those bytes were held, ns (wall time, not host CPU).
    pub throttled_ns: u64,
}

impl VsockCharge {
    fn add(&mut self, o: &VsockCharge) {
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.host_ns += o.host_ns;
        self.connections += o.connections;
        self.resets += o.resets;
        self.throttle_events += o.throttle_events;
        self.throttled_ns += o.throttled_ns;
    }

    /// The counter deltas of one packet's work, indexed like `Counters::vsock`.
    fn deltas(&self) -> [u64; 9] {
        [
            self.tx_packets,
            self.tx_bytes,
            self.rx_packets,
            self.rx_bytes,
            self.host_ns,
            self.connections,
            self.resets,
            self.throttle_events,
            self.throttled_ns,
        ]
    }
}

/// One block request, as a device reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockWork {
    /// Its kind.
    pub op: BlockOp,
    /// Data bytes moved (read into the guest or written from it).
    pub bytes: u64,
    /// Device thread CPU time, ns.
    pub device_ns: u64,
    /// Notification to completion, ns.
    pub latency_ns: u64,
    /// Whether the guest was answered with an error status.
    pub error: bool,
    /// Time a per-container limit held it back, if one did.
    pub throttled_ns: Option<u64>,
}

/// Count and host handling time of exits of one reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitCharge {
    /// Number of exits.
    pub count: u64,
    /// Host nanoseconds spent handling them: from `KVM_RUN` returning to the
    /// charge (device emulation, ring drain and tag read included).
    pub host_ns: u64,
}

/// Declaration-ring work done off the exit path: entries the sampler
/// thread consumed (applied or skipped) for a guest that did not exit, and
/// the CPU that took. (A vCPU's own drains are inside its exits' `host_ns`.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RingCharge {
    /// Entries consumed.
    pub entries: u64,
    /// Sampler thread CPU spent consuming them, ns.
    pub host_ns: u64,
}

/// The agent channel's work: frames the VMM parsed and applied for the
/// guest's agent, and the CPU time that took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentCharge {
    /// Frames received and handled (valid or not).
    pub frames: u64,
    /// CPU time of the agent connection threads spent reading, parsing and
    /// applying them (and answering), ns.
    pub host_ns: u64,
}

/// Guest CPU limits' work: how long vCPUs were held out of the guest
/// because the container their slot named was over its CPU budget
/// (docs/limits-per-container.md, "Guest CPU").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuCharge {
    /// Holds of a vCPU (each ends when the budget refills, the slot names
    /// another principal, or the VM stops).
    pub throttle_events: u64,
    /// Nanoseconds vCPUs were held.
    pub throttled_ns: u64,
}

/// Plain totals of every resource kind, as read from [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Charges {
    /// Exits by [`ExitReason::index`].
    pub exits: [ExitCharge; ExitReason::COUNT],
    /// Guest run time in nanoseconds.
    pub guest_run_ns: u64,
    /// Run-time samples that carried it.
    pub run_samples: u64,
    /// Block device work.
    pub block: BlockCharge,
    /// Interrupts injected into the guest.
    pub interrupts: u64,
    /// Network device work.
    pub net: NetCharge,
    /// virtio-vsock work.
    pub vsock: VsockCharge,
    /// The agent channel's work.
    pub agent: AgentCharge,
    /// Ring drains off the exit path.
    pub ring: RingCharge,
    /// Guest CPU limits' holds.
    pub cpu: CpuCharge,
}

impl Charges {
    /// Exits of all reasons together.
    pub fn exits_total(&self) -> ExitCharge {
        self.exits
            .iter()
            .fold(ExitCharge::default(), |acc, e| ExitCharge {
                count: acc.count + e.count,
                host_ns: acc.host_ns + e.host_ns,
            })
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Charges) {
        for (a, b) in self.exits.iter_mut().zip(other.exits.iter()) {
            a.count += b.count;
            a.host_ns += b.host_ns;
        }
        self.guest_run_ns += other.guest_run_ns;
        self.run_samples += other.run_samples;
        self.block.add(&other.block);
        self.agent.frames += other.agent.frames;
        self.agent.host_ns += other.agent.host_ns;
        self.ring.entries += other.ring.entries;
        self.ring.host_ns += other.ring.host_ns;
        self.interrupts += other.interrupts;
        self.net.add(&other.net);
        self.vsock.add(&other.vsock);
        self.cpu.throttle_events += other.cpu.throttle_events;
        self.cpu.throttled_ns += other.cpu.throttled_ns;
    }

    /// Whether nothing was charged.
    pub fn is_zero(&self) -> bool {
        *self == Charges::default()
    }

    /// Number of `u64` fields (every field of `Charges` is a `u64`).
    pub const WORDS: usize = std::mem::size_of::<Charges>() / 8;

    /// Visits every field, always in the same order: the one list of fields
    /// that [`Charges::as_words`], [`Charges::from_words`] and the compact
    /// form of finished requests (`accounting::compact`) derive from. The
    /// destructuring is exhaustive, so a new field (or field group) that is
    /// not listed here does not compile; list it here and nothing else in
    /// the compact encoding changes.
    pub fn for_each_word_mut(&mut self, mut f: impl FnMut(&mut u64)) {
        let Charges {
            exits,
            guest_run_ns,
            run_samples,
            block,
            interrupts,
            net,
            vsock,
            agent,
            ring,
            cpu,
        } = self;
        for ExitCharge { count, host_ns } in exits.iter_mut() {
            f(count);
            f(host_ns);
        }
        f(guest_run_ns);
        f(run_samples);
        let BlockCharge {
            reads,
            writes,
            flushes,
            other,
            errors,
            bytes_read,
            bytes_written,
            device_ns,
            latency_ns,
            throttle_events,
            throttled_ns,
        } = block;
        for w in [
            reads,
            writes,
            flushes,
            other,
            errors,
            bytes_read,
            bytes_written,
            device_ns,
            latency_ns,
            throttle_events,
            throttled_ns,
        ] {
            f(w);
        }
        f(interrupts);
        let NetCharge {
            tx_frames,
            tx_bytes,
            rx_frames,
            rx_bytes,
            host_ns,
            retransmitted_bytes,
            spoofed_frames,
            throttle_events,
            throttled_ns,
            rx_dropped_frames,
            rx_dropped_bytes,
        } = net;
        for w in [
            tx_frames,
            tx_bytes,
            rx_frames,
            rx_bytes,
            host_ns,
            retransmitted_bytes,
            spoofed_frames,
            throttle_events,
            throttled_ns,
            rx_dropped_frames,
            rx_dropped_bytes,
        ] {
            f(w);
        }
        let VsockCharge {
            tx_packets,
            tx_bytes,
            rx_packets,
            rx_bytes,
            host_ns,
            connections,
            resets,
            throttle_events,
            throttled_ns,
        } = vsock;
        for w in [
            tx_packets,
            tx_bytes,
            rx_packets,
            rx_bytes,
            host_ns,
            connections,
            resets,
            throttle_events,
            throttled_ns,
        ] {
            f(w);
        }
        let AgentCharge { frames, host_ns } = agent;
        f(frames);
        f(host_ns);
        let RingCharge { entries, host_ns } = ring;
        f(entries);
        f(host_ns);
        let CpuCharge {
            throttle_events,
            throttled_ns,
        } = cpu;
        f(throttle_events);
        f(throttled_ns);
    }

    /// Every field as a word, in [`Charges::for_each_word_mut`] order.
    pub fn as_words(&self) -> [u64; Self::WORDS] {
        let mut out = [0u64; Self::WORDS];
        let mut copy = *self;
        let mut i = 0;
        copy.for_each_word_mut(|w| {
            if let Some(slot) = out.get_mut(i) {
                *slot = *w;
            }
            i += 1;
        });
        out
    }

    /// The inverse of [`Charges::as_words`].
    pub fn from_words(words: &[u64; Self::WORDS]) -> Self {
        let mut c = Charges::default();
        let mut i = 0;
        c.for_each_word_mut(|w| {
            *w = words.get(i).copied().unwrap_or(0);
            i += 1;
        });
        c
    }
}

// Every field of `Charges` is a `u64`, so its size counts its words.
const _: () = assert!(std::mem::size_of::<Charges>().is_multiple_of(8));

/// The atomic block writers add to.
///
/// A block in a container's per-writer column has exactly one writer, which
/// adds with a relaxed load and store (no locked instruction). A request's
/// block may be charged by several vCPUs at once: its exit fields are added
/// to with `fetch_add`; its run-time and device fields each have one writing
/// thread (see `ledger`). Aligned to a cache line so blocks never share one.
#[derive(Debug, Default)]
#[repr(C, align(64))]
pub struct Counters {
    exit_count: [AtomicU64; ExitReason::COUNT],
    exit_ns: [AtomicU64; ExitReason::COUNT],
    guest_run_ns: AtomicU64,
    run_samples: AtomicU64,
    /// Block: reads, writes, flushes, other, errors, bytes read, bytes
    /// written, device ns, latency ns, throttle events, throttled ns.
    block: [AtomicU64; 11],
    interrupts: AtomicU64,
    /// Net: tx frames, tx bytes, rx frames, rx bytes, host ns, retransmitted
    /// bytes, spoofed frames, throttle events, throttled ns, rx dropped
    /// frames, rx dropped bytes.
    net: [AtomicU64; 11],
    /// Vsock: tx packets, tx bytes, rx packets, rx bytes, host ns,
    /// connections, resets, throttle events, throttled ns.
    vsock: [AtomicU64; 9],
    /// Agent channel: frames, host ns.
    agent: [AtomicU64; 2],
    /// Ring drains off the exit path: entries, host ns.
    ring: [AtomicU64; 2],
    /// Guest CPU limits: holds, held ns.
    cpu: [AtomicU64; 2],
}

const BLK_ERRORS: usize = 4;
const BLK_BYTES_READ: usize = 5;
const BLK_BYTES_WRITTEN: usize = 6;
const BLK_DEVICE_NS: usize = 7;
const BLK_LATENCY_NS: usize = 8;
const BLK_THROTTLE_EVENTS: usize = 9;
const BLK_THROTTLED_NS: usize = 10;

impl BlockWork {
    /// The counter deltas of this request, indexed like `Counters::block`.
    fn deltas(&self) -> [u64; 11] {
        let mut d = [0u64; 11];
        d[match self.op {
            BlockOp::Read => 0,
            BlockOp::Write => 1,
            BlockOp::Flush => 2,
            BlockOp::Other => 3,
        }] = 1;
        d[BLK_ERRORS] = u64::from(self.error);
        match self.op {
            BlockOp::Read => d[BLK_BYTES_READ] = self.bytes,
            BlockOp::Write => d[BLK_BYTES_WRITTEN] = self.bytes,
            BlockOp::Flush | BlockOp::Other => {}
        }
        d[BLK_DEVICE_NS] = self.device_ns;
        d[BLK_LATENCY_NS] = self.latency_ns;
        if let Some(ns) = self.throttled_ns {
            d[BLK_THROTTLE_EVENTS] = 1;
            d[BLK_THROTTLED_NS] = ns;
        }
        d
    }
}

#[inline(always)]
fn add_single_writer(cell: &AtomicU64, v: u64) {
    cell.store(cell.load(Relaxed).wrapping_add(v), Relaxed);
}

impl Counters {
    /// Adds an exit. Only the block's single writer may call this.
    #[inline(always)]
    pub fn add_exit_single_writer(&self, reason: ExitReason, host_ns: u64) {
        add_single_writer(&self.exit_count[reason.index()], 1);
        add_single_writer(&self.exit_ns[reason.index()], host_ns);
    }

    /// Adds an exit; safe with concurrent writers.
    #[inline(always)]
    pub fn add_exit_shared(&self, reason: ExitReason, host_ns: u64) {
        self.exit_count[reason.index()].fetch_add(1, Relaxed);
        self.exit_ns[reason.index()].fetch_add(host_ns, Relaxed);
    }

    /// Adds guest run time (one sample). Only the block's single writer.
    #[inline(always)]
    pub fn add_run_single_writer(&self, ns: u64) {
        add_single_writer(&self.guest_run_ns, ns);
        add_single_writer(&self.run_samples, 1);
    }

    /// Adds guest run time (one sample); safe with concurrent writers.
    #[inline(always)]
    pub fn add_run_shared(&self, ns: u64) {
        self.guest_run_ns.fetch_add(ns, Relaxed);
        self.run_samples.fetch_add(1, Relaxed);
    }

    /// Adds one block request. Only the block's single writer.
    pub fn add_block_single_writer(&self, w: &BlockWork) {
        for (cell, d) in self.block.iter().zip(w.deltas()) {
            if d != 0 {
                add_single_writer(cell, d);
            }
        }
    }

    /// Adds one block request; safe with concurrent writers.
    pub fn add_block_shared(&self, w: &BlockWork) {
        for (cell, d) in self.block.iter().zip(w.deltas()) {
            if d != 0 {
                cell.fetch_add(d, Relaxed);
            }
        }
    }

    /// Adds one frame's network work. Only the block's single writer.
    pub fn add_net_single_writer(&self, w: &NetCharge) {
        for (cell, d) in self.net.iter().zip(w.deltas()) {
            if d != 0 {
                add_single_writer(cell, d);
            }
        }
    }

    /// Adds one vsock packet's work. Only the block's single writer.
    pub fn add_vsock_single_writer(&self, w: &VsockCharge) {
        for (cell, d) in self.vsock.iter().zip(w.deltas()) {
            if d != 0 {
                add_single_writer(cell, d);
            }
        }
    }

    /// Adds agent-channel work. Only the block's single writer.
    pub fn add_agent_single_writer(&self, w: &AgentCharge) {
        add_single_writer(&self.agent[0], w.frames);
        add_single_writer(&self.agent[1], w.host_ns);
    }

    /// Adds ring-drain work. Only the block's single writer.
    pub fn add_ring_single_writer(&self, w: &RingCharge) {
        add_single_writer(&self.ring[0], w.entries);
        add_single_writer(&self.ring[1], w.host_ns);
    }

    /// Adds one hold of a vCPU by a guest CPU limit. Only the block's
    /// single writer.
    pub fn add_cpu_throttle_single_writer(&self, held_ns: u64) {
        add_single_writer(&self.cpu[0], 1);
        add_single_writer(&self.cpu[1], held_ns);
    }

    /// Adds one hold; safe with concurrent writers.
    pub fn add_cpu_throttle_shared(&self, held_ns: u64) {
        self.cpu[0].fetch_add(1, Relaxed);
        self.cpu[1].fetch_add(held_ns, Relaxed);
    }

    /// Adds one injected interrupt. Only the block's single writer.
    pub fn add_interrupt_single_writer(&self) {
        add_single_writer(&self.interrupts, 1);
    }

    /// Adds one injected interrupt; safe with concurrent writers.
    pub fn add_interrupt_shared(&self) {
        self.interrupts.fetch_add(1, Relaxed);
    }

    /// Adds this block's current values into `out`.
    pub fn add_into(&self, out: &mut Charges) {
        for (i, e) in out.exits.iter_mut().enumerate() {
            e.count += self.exit_count[i].load(Relaxed);
            e.host_ns += self.exit_ns[i].load(Relaxed);
        }
        out.guest_run_ns += self.guest_run_ns.load(Relaxed);
        out.run_samples += self.run_samples.load(Relaxed);
        let b: [u64; 11] = std::array::from_fn(|i| self.block[i].load(Relaxed));
        out.block.add(&BlockCharge {
            reads: b[0],
            writes: b[1],
            flushes: b[2],
            other: b[3],
            errors: b[BLK_ERRORS],
            bytes_read: b[BLK_BYTES_READ],
            bytes_written: b[BLK_BYTES_WRITTEN],
            device_ns: b[BLK_DEVICE_NS],
            latency_ns: b[BLK_LATENCY_NS],
            throttle_events: b[BLK_THROTTLE_EVENTS],
            throttled_ns: b[BLK_THROTTLED_NS],
        });
        out.interrupts += self.interrupts.load(Relaxed);
        let n: [u64; 11] = std::array::from_fn(|i| self.net[i].load(Relaxed));
        out.net.add(&NetCharge {
            tx_frames: n[0],
            tx_bytes: n[1],
            rx_frames: n[2],
            rx_bytes: n[3],
            host_ns: n[4],
            retransmitted_bytes: n[5],
            spoofed_frames: n[6],
            throttle_events: n[7],
            throttled_ns: n[8],
            rx_dropped_frames: n[9],
            rx_dropped_bytes: n[10],
        });
        let v: [u64; 9] = std::array::from_fn(|i| self.vsock[i].load(Relaxed));
        out.vsock.add(&VsockCharge {
            tx_packets: v[0],
            tx_bytes: v[1],
            rx_packets: v[2],
            rx_bytes: v[3],
            host_ns: v[4],
            connections: v[5],
            resets: v[6],
            throttle_events: v[7],
            throttled_ns: v[8],
        });
        out.agent.frames += self.agent[0].load(Relaxed);
        out.agent.host_ns += self.agent[1].load(Relaxed);
        out.ring.entries += self.ring[0].load(Relaxed);
        out.ring.host_ns += self.ring[1].load(Relaxed);
        out.cpu.throttle_events += self.cpu[0].load(Relaxed);
        out.cpu.throttled_ns += self.cpu[1].load(Relaxed);
    }

    /// This block's current values.
    pub fn read(&self) -> Charges {
        let mut c = Charges::default();
        self.add_into(&mut c);
        c
    }
}

/// One [`Counters`] block per writer: the container-side ledger. Writer `w`
/// only ever touches column `w`, so no two vCPUs share a cache line.
#[derive(Debug)]
pub struct Columns {
    cols: Box<[Counters]>,
    /// Some of the container's run time was charged by sample (not placed
    /// by a switch log): its run-time provenance is `sampled`.
    run_sampled: std::sync::atomic::AtomicBool,
}

impl Columns {
    /// Zeroed columns for `writers` writers.
    pub fn new(writers: usize) -> Self {
        Self {
            cols: (0..writers).map(|_| Counters::default()).collect(),
            run_sampled: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Some run time was charged here by sample.
    #[inline]
    pub fn mark_run_sampled(&self) {
        if !self.run_sampled.load(Relaxed) {
            self.run_sampled.store(true, Relaxed);
        }
    }

    /// Whether any run time was charged here by sample.
    pub fn run_sampled(&self) -> bool {
        self.run_sampled.load(Relaxed)
    }

    /// Column of `writer`.
    ///
    /// # Panics
    /// If `writer` is out of range; writer ids are assigned by the VMM, never
    /// by a guest.
    #[inline(always)]
    pub fn col(&self, writer: usize) -> &Counters {
        &self.cols[writer]
    }

    /// Sum of all columns.
    pub fn sum(&self) -> Charges {
        let mut c = Charges::default();
        for col in self.cols.iter() {
            col.add_into(&mut c);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_across_columns() {
        let cols = Columns::new(3);
        cols.col(0).add_exit_single_writer(ExitReason::PortOut, 10);
        cols.col(2).add_exit_single_writer(ExitReason::PortOut, 5);
        cols.col(1).add_exit_single_writer(ExitReason::MmioWrite, 7);
        cols.col(2).add_run_single_writer(1000);
        let sum = cols.sum();
        assert_eq!(
            sum.exits[ExitReason::PortOut.index()],
            ExitCharge {
                count: 2,
                host_ns: 15
            }
        );
        assert_eq!(
            sum.exits[ExitReason::MmioWrite.index()],
            ExitCharge { count: 1, host_ns: 7 }
        );
        assert_eq!(
            sum.exits_total(),
            ExitCharge {
                count: 3,
                host_ns: 22
            }
        );
        assert_eq!((sum.guest_run_ns, sum.run_samples), (1000, 1));
    }

    #[test]
    fn counter_block_is_cache_line_sized_and_aligned() {
        assert_eq!(std::mem::align_of::<Counters>(), 64);
        // 54 counters (432 bytes): seven cache lines (48 fitted six
        // exactly; vsock and CPU throttling and net.rx_dropped_* took a seventh).
        assert_eq!(std::mem::size_of::<Counters>(), 448);
    }

    #[test]
    fn block_work_lands_in_its_op_and_byte_counters() {
        let c = Counters::default();
        c.add_block_single_writer(&BlockWork {
            op: BlockOp::Read,
            bytes: 4096,
            device_ns: 7,
            latency_ns: 9,
            error: false,
            throttled_ns: None,
        });
        c.add_block_shared(&BlockWork {
            op: BlockOp::Write,
            bytes: 512,
            device_ns: 1,
            latency_ns: 2,
            error: true,
            throttled_ns: None,
        });
        c.add_block_shared(&BlockWork {
            op: BlockOp::Flush,
            bytes: 0,
            device_ns: 1,
            latency_ns: 1,
            error: false,
            throttled_ns: None,
        });
        c.add_interrupt_shared();
        let b = c.read().block;
        assert_eq!((b.reads, b.writes, b.flushes, b.other, b.errors), (1, 1, 1, 0, 1));
        assert_eq!(
            (b.bytes_read, b.bytes_written, b.device_ns, b.latency_ns),
            (4096, 512, 9, 12)
        );
        assert_eq!(b.ops(), 3);
        assert_eq!(c.read().interrupts, 1);
    }

    #[test]
    fn word_list_covers_every_field_once() {
        // Distinct values in every word round-trip, and the visitor visits
        // exactly `WORDS` words: a field missing from the list would stay 0.
        let words: [u64; Charges::WORDS] = std::array::from_fn(|i| i as u64 + 1);
        let c = Charges::from_words(&words);
        assert_eq!(c.as_words(), words);
        let mut n = 0;
        Charges::default().for_each_word_mut(|_| n += 1);
        assert_eq!(n, Charges::WORDS);
    }

    #[test]
    fn reason_index_matches_all_order() {
        for (i, r) in ExitReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
