//! The run-time sampler: guest run time per principal, and the timer drain
//! of the declaration ring.
//!
//! Every `interval` the sampler reads each vCPU's cumulative run time (exact,
//! stamped around `KVM_RUN` by the vCPU thread) and the vCPU's tag slot, and
//! charges the run time accrued since its last sample to that tag. The
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
use devices::acct::{TagReader, TagRegion};

use crate::vcpu::VcpuShared;

/// The sampler's state.
pub struct Sampler {
    writer: Writer,
    readers: Vec<TagReader>,
    vcpus: Vec<Arc<VcpuShared>>,
    last: Vec<u64>,
}

impl Sampler {
    /// A sampler charging through `writer` for the given vCPUs.
    pub fn new(writer: Writer, region: &Arc<TagRegion>, vcpus: Vec<Arc<VcpuShared>>) -> Self {
        let readers = (0..vcpus.len()).map(|i| region.reader(i)).collect();
        let last = vec![0; vcpus.len()];
        Self {
            writer,
            readers,
            vcpus,
            last,
        }
    }

    /// One sample of every vCPU, and a drain of the ring.
    pub fn tick(&mut self) {
        if let Some(r) = self.readers.first_mut() {
            r.drain(self.writer.accounting());
        }
        let now = self.writer.accounting().now_ns();
        for i in 0..self.vcpus.len() {
            let total = self.vcpus[i].clock.read(now);
            if total > self.last[i] {
                let delta = total - self.last[i];
                self.last[i] = total;
                let tag = self.readers[i].tag();
                self.writer.charge_run(i, tag, delta);
            }
        }
    }

    /// Ticks every `interval` until `stop` is set, and returns itself so the
    /// caller can tick once more after the vCPUs stopped (the final tick
    /// charges the remainder). The wait is a park: whoever sets `stop`
    /// unparks this thread, so stopping never waits out an interval. (A
    /// spurious wake-up only makes one tick early; deltas stay exact.)
    pub fn run(mut self, interval: Duration, stop: Arc<AtomicBool>) -> Self {
        loop {
            std::thread::park_timeout(interval);
            if stop.load(Ordering::Acquire) {
                return self;
            }
            self.tick();
        }
    }
}
