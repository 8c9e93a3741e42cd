//! The run-time sampler: guest run time per principal, and the timer drain
//! of the declaration ring.
//!
//! Every `interval` the sampler reads each vCPU's cumulative run time and
//! the vCPU's tag slot, and charges the run time accrued since its last
//! sample to that tag. A vCPU's run time is its time inside `KVM_RUN`
//! (stamped around the ioctl by the vCPU thread; an AP's wait for INIT/SIPI
//! is left out there) minus the time KVM spent polling and waiting in the
//! guest's halts ([`HaltStats`]). KVM counts a halt when it ends, so while a
//! vCPU is blocked (`blocking`) its sample is put off until the halt is
//! counted; where KVM has no binary statistics, halts count as run time and
//! the report says so (`vm.guest_run_source`). The charged total only grows:
//! a halt that KVM polled for when a sample was taken (at most KVM's
//! `halt_poll_ns`, 200 us by default) may stay charged as run time. The
//! attribution is statistical (provenance `sampled`: work between two samples
//! goes to whoever was current at the second), but the amounts are exact:
//! the sum over principals equals the vCPUs' measured run time, because each
//! sample charges a delta of the same cumulative clock and a final flush
//! after the vCPUs stop charges the rest.
//!
//! It also drains the ring on every tick, so declarations from a guest that
//! rarely exits are still applied.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use accounting::ledger::Writer;
use accounting::resource::RingCharge;
use accounting::warn_rl;
use devices::acct::{TagReader, TagRegion};

use crate::cpu_limit::CpuLimiter;
use crate::vcpu::kvmstats::HaltStats;
use crate::vcpu::switches::{LogTotals, Window};
use crate::vcpu::VcpuShared;

/// How guest run time was measured, for the report's `vm.guest_run_source`.
pub const RUN_SOURCE_EXACT: &str = "kvm_run_minus_halts";
/// As [`RUN_SOURCE_EXACT`], but KVM has no `blocking` flag (before Linux
/// 5.16): a halt in progress is charged as run time until it ends.
pub const RUN_SOURCE_NO_BLOCKING: &str = "kvm_run_minus_ended_halts";
/// KVM has no binary statistics: halted time is charged as run time.
pub const RUN_SOURCE_WITH_HALTS: &str = "kvm_run_halts_included";

/// Ticks a vCPU's charge waits for a switch being logged to be placed
/// (100 ms at the default 4 ms: a vCPU thread descheduled mid-switch by a
/// busy host is waited for; a guest that leaves its sequence odd is not).
pub const MAX_UNPLACED_TICKS: u32 = 25;

/// How often the sampler ticks while a switch log overflows.
pub const FAST_TICK: Duration = Duration::from_millis(1);
/// Ticks at [`FAST_TICK`] after the last overflow seen.
pub const FAST_TICKS: u32 = 1000;

/// One vCPU as the sampler sees it.
struct Sampled {
    shared: Arc<VcpuShared>,
    reader: TagReader,
    stats: Option<HaltStats>,
    /// Run time charged so far.
    charged: u64,
    /// Halted time at the last sample.
    halted: u64,
    /// Ticks in a row that found its switch log not placed.
    unplaced_ticks: u32,
}

/// The sampler's state.
pub struct Sampler {
    writer: Writer,
    vcpus: Vec<Sampled>,
    /// The vCPUs are stopped: this tick charges what is left.
    last: bool,
    /// The switch logs' counters as of the last tick.
    log: LogTotals,
    /// The guest CPU limits, if the VM may have some.
    cpu: Option<CpuLimiter>,
    /// Which vCPUs were charged run time this tick (for `cpu`).
    ran: Vec<bool>,
}

impl Sampler {
    /// A sampler charging through `writer` for the given vCPUs; `stats[i]`
    /// is vCPU i's halt counters, `None` where KVM has none.
    pub fn new(
        writer: Writer,
        region: &Arc<TagRegion>,
        vcpus: Vec<Arc<VcpuShared>>,
        stats: Vec<Option<HaltStats>>,
    ) -> Self {
        let mut stats = stats.into_iter();
        let vcpus: Vec<Sampled> = vcpus
            .into_iter()
            .enumerate()
            .map(|(i, shared)| Sampled {
                shared,
                reader: region.reader(i),
                stats: stats.next().flatten(),
                charged: 0,
                halted: 0,
                unplaced_ticks: 0,
            })
            .collect();
        Self {
            writer,
            ran: vec![false; vcpus.len()],
            vcpus,
            last: false,
            log: LogTotals::default(),
            cpu: None,
        }
    }

    /// Enforces the guest CPU limits of `cpu` at each tick, on the run
    /// time this sampler charges.
    pub fn with_cpu_limits(mut self, cpu: CpuLimiter) -> Self {
        self.cpu = Some(cpu);
        self
    }

    /// How run time is measured (the weakest of the vCPUs').
    pub fn source(&self) -> &'static str {
        if self.vcpus.iter().any(|v| v.stats.is_none()) {
            RUN_SOURCE_WITH_HALTS
        } else if self
            .vcpus
            .iter()
            .any(|v| v.stats.as_ref().is_some_and(|s| !s.sees_blocking()))
        {
            RUN_SOURCE_NO_BLOCKING
        } else {
            RUN_SOURCE_EXACT
        }
    }

    /// Halted time left out of run time so far, all vCPUs, ns.
    pub fn halted_ns(&self) -> u64 {
        self.vcpus.iter().map(|v| v.halted).sum()
    }

    /// One sample of every vCPU, and a drain of the ring.
    pub fn tick(&mut self) {
        if let Some(v) = self.vcpus.first_mut() {
            if v.reader.pending() {
                // A guest that declares without exiting: this work is the
                // VMM's, done for the guest, so it is charged (to
                // `unattributed`: no vCPU's tag is the drain's).
                let cpu0 = devices::virtio::thread_cpu_ns();
                let entries = v.reader.drain(self.writer.accounting());
                if entries > 0 {
                    let host_ns = devices::virtio::thread_cpu_ns().saturating_sub(cpu0);
                    let entries = u64::try_from(entries).unwrap_or(u64::MAX);
                    self.writer.charge_ring(None, &RingCharge { entries, host_ns });
                }
            }
        }
        let acct = Arc::clone(self.writer.accounting());
        let now = acct.now_ns();
        self.ran.iter_mut().for_each(|r| *r = false);
        for (i, v) in self.vcpus.iter_mut().enumerate() {
            // The clock first: a halt that ends after it is subtracted a
            // little early (caught up next time), never charged.
            let snap = v.shared.clock.snapshot();
            let in_run = snap.done
                + if snap.entered == 0 {
                    0
                } else {
                    now.saturating_sub(snap.entered)
                };
            if let Some(stats) = &v.stats {
                match stats.read() {
                    // Not counted yet: wait until it is.
                    Ok(h) if h.blocking => continue,
                    Ok(h) => v.halted = h.halted_ns,
                    Err(e) => {
                        warn_rl!("vCPU {i}: KVM statistics unreadable ({e}); its last halted time stands")
                    }
                }
            }
            let run = in_run.saturating_sub(v.halted);
            // Switches logged in the interval in progress are placed here;
            // those of a finished one by the vCPU's thread, which may not
            // have got to them yet (`unplaced`: charged next tick).
            let book = &v.shared.switches;
            let clock = &v.shared.clock;
            let writer = &mut self.writer;
            let unplaced = v
                .reader
                .with_line(|line, stamps| {
                    if book.moved(line) && snap.entered != 0 {
                        let win = Window {
                            base: snap.done,
                            from: snap.entered,
                            to: now.max(snap.entered),
                        };
                        book.harvest(line, stamps, writer, win, || clock.unchanged_since(&snap));
                    }
                    book.moved(line)
                })
                .unwrap_or(false);
            // A switch being logged, or logged in an interval the vCPU's
            // thread has not read yet: wait for it, a few ticks at most (a
            // guest that leaves its sequence odd gets its time charged, not
            // exact), and never at the last tick.
            v.unplaced_ticks = if unplaced { v.unplaced_ticks + 1 } else { 0 };
            let waits = unplaced && v.unplaced_ticks <= MAX_UNPLACED_TICKS && !self.last;
            if run <= v.charged || waits {
                continue;
            }
            if unplaced {
                book.charge_unplaced();
            }
            let delta = run - v.charged;
            v.charged = run;
            self.ran[i] = true;
            let cpu = &mut self.cpu;
            if book.logging() {
                let split = book.take(in_run, delta);
                for (tag, who, ns) in split.parts {
                    let who = match who {
                        Some(who) => who,
                        None => self.writer.resolved(tag),
                    };
                    // A part not placed by the log is sampled, whoever it goes to.
                    self.writer.charge_run_to(i, &who, ns, split.exact);
                    if let Some(cpu) = cpu {
                        cpu.charged(who.container, ns);
                    }
                }
            } else {
                let tag = v.reader.tag();
                book.charged_without_log(in_run, tag.unwrap_or(0));
                if let Some(cpu) = cpu {
                    let who = self.writer.resolved(tag.unwrap_or(0));
                    cpu.charged(who.container, delta);
                }
                self.writer.charge_run(i, tag, delta);
            }
        }
        if let Some(cpu) = &mut self.cpu {
            if self.last {
                cpu.release_all();
            } else {
                cpu.tick(&self.ran);
            }
        }
        self.log = self.run_log();
        if self.log.vcpus_logging > 0 {
            acct.set_run_logged();
        }
    }

    /// The last tick, once the vCPUs have stopped: charges the rest of
    /// their run time, whatever their logs say.
    pub fn finish(&mut self) {
        self.last = true;
        self.tick();
    }

    /// The switch logs' counters, all vCPUs.
    pub fn run_log(&self) -> LogTotals {
        let mut t = LogTotals::default();
        for v in &self.vcpus {
            t.add(&v.shared.switches.totals());
        }
        t
    }

    /// Ticks every `interval` until `stop` is set, and returns itself so the
    /// caller can tick once more after the vCPUs stopped (the final tick
    /// charges the remainder). The wait is a park: whoever sets `stop`
    /// unparks this thread, so stopping never waits out an interval. (A
    /// spurious wake-up only makes one tick early; deltas stay exact.)
    ///
    /// While a guest's switch log overflows (switches lost between two
    /// reads), the sampler ticks every [`FAST_TICK`] (if `interval` is
    /// longer) for the next [`FAST_TICKS`] ticks, so the log is read before
    /// it wraps.
    pub fn run(mut self, interval: Duration, stop: Arc<AtomicBool>) -> Self {
        let fast = interval.min(FAST_TICK);
        let (mut lost, mut fast_left) = (0, 0u32);
        loop {
            std::thread::park_timeout(if fast_left > 0 { fast } else { interval });
            if stop.load(Ordering::Acquire) {
                return self;
            }
            self.tick();
            fast_left = fast_left.saturating_sub(1);
            if self.log.lost != lost {
                lost = self.log.lost;
                fast_left = FAST_TICKS;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accounting::abi::{self, EntryKind, RingEntry};
    use accounting::ledger::Accounting;
    use accounting::registry::Limits;
    use devices::acct::{Registration, TagRegion};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    #[test]
    fn the_samplers_drains_are_charged_to_unattributed_and_conserved() {
        const GPA: u64 = 0x10000;
        const RING: u32 = 64;
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut raw = [0u8; 64];
        raw[0..4].copy_from_slice(&abi::MAGIC.to_le_bytes());
        raw[4..6].copy_from_slice(&abi::ABI_VERSION.to_le_bytes());
        raw[6..8].copy_from_slice(&64u16.to_le_bytes());
        raw[8..12].copy_from_slice(&1u32.to_le_bytes());
        raw[12..16].copy_from_slice(&64u32.to_le_bytes());
        raw[16..20].copy_from_slice(&RING.to_le_bytes());
        raw[20..24].copy_from_slice(&128u32.to_le_bytes());
        m.write_slice(&raw, GuestAddress(GPA)).unwrap();
        let region = TagRegion::new(1);
        let len = abi::region_len(1, RING) as u64;
        region.set(Some(Registration::new(&m, GPA, len, 1).unwrap()));
        // 50 declarations of a guest that does not exit.
        for pos in 0..50u32 {
            let mut e = RingEntry::new(
                EntryKind::DeclareContainer,
                pos + 1,
                0,
                0,
                format!("c{pos}").as_bytes(),
            );
            e.seq = u64::from(pos) + 1;
            m.write_slice(&e.to_bytes(), GuestAddress(GPA + 128 + 64 * u64::from(pos)))
                .unwrap();
        }
        let acct = Accounting::new("t", 1, 1, Limits::default());
        let mut s = Sampler::new(
            acct.writer(1),
            &region,
            vec![Arc::new(VcpuShared::default())],
            vec![None],
        );
        s.tick();
        assert_eq!(acct.registry().containers().len(), 51, "applied");
        let unattributed = acct.registry().containers()[0].cells.sum();
        assert_eq!(unattributed.ring.entries, 50);
        assert!(unattributed.ring.host_ns > 0);
        assert_eq!(acct.writer_totals()[1].ring, unattributed.ring, "conserved");
        // Nothing pending: nothing more is charged.
        s.tick();
        assert_eq!(acct.registry().containers()[0].cells.sum().ring.entries, 50);
    }
}
