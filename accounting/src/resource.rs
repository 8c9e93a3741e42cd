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

/// Count and host handling time of exits of one reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitCharge {
    /// Number of exits.
    pub count: u64,
    /// Host nanoseconds spent handling them: from `KVM_RUN` returning to the
    /// charge (device emulation, ring drain and tag read included).
    pub host_ns: u64,
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
    }

    /// Whether nothing was charged.
    pub fn is_zero(&self) -> bool {
        *self == Charges::default()
    }
}

/// The atomic block writers add to.
///
/// A block in a container's per-writer column has exactly one writer, which
/// adds with a relaxed load and store (no locked instruction). A request's
/// block may be charged by several vCPUs at once and is added to with
/// `fetch_add`. Aligned to a cache line so blocks never share one.
#[derive(Debug, Default)]
#[repr(C, align(64))]
pub struct Counters {
    exit_count: [AtomicU64; ExitReason::COUNT],
    exit_ns: [AtomicU64; ExitReason::COUNT],
    guest_run_ns: AtomicU64,
    run_samples: AtomicU64,
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

    /// Adds this block's current values into `out`.
    pub fn add_into(&self, out: &mut Charges) {
        for (i, e) in out.exits.iter_mut().enumerate() {
            e.count += self.exit_count[i].load(Relaxed);
            e.host_ns += self.exit_ns[i].load(Relaxed);
        }
        out.guest_run_ns += self.guest_run_ns.load(Relaxed);
        out.run_samples += self.run_samples.load(Relaxed);
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
}

impl Columns {
    /// Zeroed columns for `writers` writers.
    pub fn new(writers: usize) -> Self {
        Self {
            cols: (0..writers).map(|_| Counters::default()).collect(),
        }
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
        assert_eq!(std::mem::size_of::<Counters>(), 128);
    }

    #[test]
    fn reason_index_matches_all_order() {
        for (i, r) in ExitReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
