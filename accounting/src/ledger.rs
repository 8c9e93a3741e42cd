//! The charging hot path.
//!
//! [`Accounting`] is one VM's books: the [`Registry`] behind a mutex (touched
//! only when the guest declares something or a writer first meets a tag), a
//! generation counter bumped on every change to it, the guest-error counters,
//! and per-vCPU totals.
//!
//! A [`Writer`] belongs to one thread (a vCPU thread, the run-time sampler,
//! or the device thread). It keeps a small cache from tag values to resolved
//! principals, valid while the generation is unchanged. Charging an exit with
//! a cached tag is one acquire load of the generation (a plain load on x86),
//! a short scan of the cache, and single-writer adds into the writer's own
//! column of the container's ledger (plus `fetch_add`s on the request's block
//! when a request is named). No lock, and no cache line written by two vCPUs
//! except a request's block when two vCPUs serve one request at the same time.
//!
//! A request's block is shared, but each resource group in it has a fixed
//! set of writing threads: exits come from any vCPU (`fetch_add`), guest run
//! time only from the sampler, block work and interrupts only from the device
//! thread. Those two groups therefore use single-writer adds on request
//! blocks too. A second thread charging the same group (say, a network
//! device on a thread of its own charging interrupts) must switch that group
//! to the shared adds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::abi::RingEntry;
use crate::clock::Clock;
use crate::errors::{GuestError, GuestErrors};
use crate::registry::{Limits, Registry, Resolved};
use crate::resource::{
    AgentCharge, BlockWork, Charges, Counters, ExitReason, NetCharge, RingCharge, VsockCharge,
};

/// Tag cache entries per writer.
const CACHE_SLOTS: usize = 8;

#[repr(align(64))]
#[derive(Debug, Default)]
struct Generation(AtomicU64);

/// One VM's books.
#[derive(Debug)]
pub struct Accounting {
    tenant: String,
    nr_vcpus: usize,
    writers: usize,
    limits: Limits,
    generation: Generation,
    registry: Mutex<Registry>,
    /// Threads blocked on `registry` now: long reads
    /// (`accounting::query`) let them in between their steps.
    registry_waiters: AtomicU64,
    errors: GuestErrors,
    /// Per-writer totals, counted independently of the principals: exits
    /// and device work written by each writer into its own block; guest run
    /// time written by the sampler into the sampled vCPU's block (different
    /// fields, one writer each).
    writer_totals: Box<[Counters]>,
    clock: Clock,
    /// A guest switch log has placed run time ([`Accounting::run_logged`]).
    run_logged: std::sync::atomic::AtomicBool,
}

impl Accounting {
    /// Books for a VM of `tenant` with `nr_vcpus` vCPU writers and
    /// `aux_writers` more (the sampler, device threads).
    pub fn new(tenant: &str, nr_vcpus: usize, aux_writers: usize, limits: Limits) -> Arc<Self> {
        let writers = nr_vcpus + aux_writers;
        Arc::new(Self {
            tenant: tenant.to_string(),
            nr_vcpus,
            writers,
            limits,
            generation: Generation::default(),
            registry: Mutex::new(Registry::new(writers, limits)),
            registry_waiters: AtomicU64::new(0),
            errors: GuestErrors::default(),
            writer_totals: (0..writers).map(|_| Counters::default()).collect(),
            clock: Clock::start(),
            run_logged: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The tenant (set by the host).
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The limits on guest-declared state (fixed for the VM's life; read
    /// without the registry lock).
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Number of vCPUs.
    pub fn nr_vcpus(&self) -> usize {
        self.nr_vcpus
    }

    /// Nanoseconds since the books were opened ([`Clock`]: the TSC where
    /// it is invariant).
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    /// Whether a guest switch log has placed run time in this VM: then a
    /// container none of whose run time was charged by sample has run-time
    /// provenance `exact`. Set by the sampler.
    pub fn run_logged(&self) -> bool {
        self.run_logged.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The sampler says a switch log is in use.
    pub fn set_run_logged(&self) {
        self.run_logged.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The books' clock (for converting host TSC readings).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// What [`Accounting::now_ns`] reads: `tsc` or `monotonic`.
    pub fn clock_source(&self) -> &'static str {
        self.clock.source()
    }

    /// The guest-error counters.
    pub fn errors(&self) -> &GuestErrors {
        &self.errors
    }

    /// Locks the registry (rare path: declarations, reports).
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock cannot leave the registry torn in a
        // way that matters more than losing the books; keep going.
        match self.registry.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                // Counted so a long read stepping through the registry
                // lets this thread in before its next step.
                self.registry_waiters.fetch_add(1, Ordering::SeqCst);
                let g = self.registry.lock().unwrap_or_else(|p| p.into_inner());
                self.registry_waiters.fetch_sub(1, Ordering::SeqCst);
                g
            }
        }
    }

    /// Threads blocked on the registry lock now.
    pub fn registry_waiters(&self) -> u64 {
        self.registry_waiters.load(Ordering::SeqCst)
    }

    /// Applies one declaration from the ring; a rejected one is counted and
    /// returned so the caller can log it.
    pub fn apply(&self, entry: &RingEntry) -> Result<(), GuestError> {
        let now = self.now_ns();
        let result = self.registry().apply(entry, now);
        match result {
            Ok(()) => {
                self.generation.0.fetch_add(1, Ordering::Release);
            }
            Err(e) => self.errors.inc(e),
        }
        result
    }

    /// Begins request `id` in container `container` (guest ids) with the
    /// agent's trace id and attributes: the ring's `begin` plus metadata.
    /// A refusal is counted like the ring's.
    pub fn begin_with_meta(
        &self,
        id: u32,
        container: u32,
        external_id: u64,
        meta: Option<crate::registry::RequestMeta>,
    ) -> Result<(), GuestError> {
        let now = self.now_ns();
        let result = self
            .registry()
            .begin_with_meta(id, container, external_id, meta, now);
        match result {
            Ok(()) => {
                self.generation.0.fetch_add(1, Ordering::Release);
            }
            Err(e) => self.errors.inc(e),
        }
        result
    }

    /// Counts a guest mistake found outside the registry.
    pub fn count_error(&self, e: GuestError) {
        self.errors.inc(e);
    }

    /// Totals per writer (vCPUs first, then the auxiliary writers), counted
    /// independently of the principals: their sum is the tenant's total.
    pub fn writer_totals(&self) -> Vec<Charges> {
        self.writer_totals.iter().map(Counters::read).collect()
    }

    /// Totals of the vCPU writers only.
    pub fn vcpu_totals(&self) -> Vec<Charges> {
        self.writer_totals[..self.nr_vcpus]
            .iter()
            .map(Counters::read)
            .collect()
    }

    /// A writer with ledger column `id` (`0..nr_vcpus` for vCPUs, then the
    /// auxiliary writers).
    ///
    /// # Panics
    /// If `id` is not below the number of writers the books were opened
    /// with; ids are the VMM's, never a guest's.
    pub fn writer(self: &Arc<Self>, id: usize) -> Writer {
        assert!(id < self.writers, "writer id {id} out of range");
        let unattributed = self.registry().unattributed(None);
        Writer {
            acct: Arc::clone(self),
            id,
            generation: u64::MAX,
            cache: Vec::new(),
            next_victim: 0,
            unattributed,
        }
    }
}

/// A thread's handle for charging: owns ledger column `id`.
#[derive(Debug)]
pub struct Writer {
    acct: Arc<Accounting>,
    id: usize,
    generation: u64,
    cache: Vec<(u64, Resolved)>,
    next_victim: usize,
    unattributed: Resolved,
}

impl Writer {
    /// The books this writer charges.
    pub fn accounting(&self) -> &Arc<Accounting> {
        &self.acct
    }

    fn resolve(&mut self, tag: Option<u64>) -> &Resolved {
        let Some(tag) = tag else { return &self.unattributed };
        let generation = self.acct.generation.0.load(Ordering::Acquire);
        if generation != self.generation {
            self.cache.clear();
            self.generation = generation;
        }
        let hit = self.cache.iter().position(|(t, _)| *t == tag);
        let idx = match hit {
            Some(i) => i,
            None => self.fill(tag),
        };
        &self.cache[idx].1
    }

    #[cold]
    fn fill(&mut self, tag: u64) -> usize {
        let resolved = self.acct.registry().resolve(tag);
        if self.cache.len() < CACHE_SLOTS {
            self.cache.push((tag, resolved));
            self.cache.len() - 1
        } else {
            let i = self.next_victim;
            self.next_victim = (i + 1) % CACHE_SLOTS;
            self.cache[i] = (tag, resolved);
            i
        }
    }

    /// Charges one exit of vCPU `self.id` to the principal in `tag` (`None`:
    /// no region registered or no slot for this vCPU).
    #[inline]
    pub fn charge_exit(&mut self, tag: Option<u64>, reason: ExitReason, host_ns: u64) {
        let id = self.id;
        self.acct.writer_totals[id].add_exit_single_writer(reason, host_ns);
        let r = self.resolve(tag);
        r.container_cells.col(id).add_exit_single_writer(reason, host_ns);
        if let Some(req) = &r.request {
            req.add_exit_shared(reason, host_ns);
        }
        if let (Some(e), container) = (r.error, r.container) {
            self.acct.errors.inc(e);
            invalid_tag(id, tag, e, container);
        }
    }

    /// Charges `ns` of vCPU `vcpu`'s guest run time (one sample) to `tag`.
    /// Only the one writer that samples run time may call this.
    #[inline]
    /// Run time charged this way is sampled: the container's run-time
    /// provenance becomes `sampled`.
    pub fn charge_run(&mut self, vcpu: usize, tag: Option<u64>, ns: u64) {
        let r = self.resolve(tag).clone();
        self.charge_run_to(vcpu, &r, ns, false);
    }

    /// Who `tag` names now (from this writer's cache), to charge later
    /// with [`Writer::charge_run_to`] even if the request ends meanwhile: a
    /// request's charges stay open while a resolution of it is held.
    pub fn resolved(&mut self, tag: u64) -> Resolved {
        self.resolve(Some(tag)).clone()
    }

    /// As [`Writer::charge_run`], to a principal resolved earlier; `exact`:
    /// placed by a switch log (else the container's run-time provenance
    /// becomes `sampled`).
    pub fn charge_run_to(&self, vcpu: usize, r: &Resolved, ns: u64, exact: bool) {
        if !exact && ns > 0 {
            r.container_cells.mark_run_sampled();
        }
        if let Some(totals) = self.acct.writer_totals[..self.acct.nr_vcpus].get(vcpu) {
            totals.add_run_single_writer(ns);
        }
        r.container_cells.col(self.id).add_run_single_writer(ns);
        if let Some(req) = &r.request {
            // Only the sampler charges run time: single writer here too.
            req.add_run_single_writer(ns);
        }
    }

    /// Charges one block request to `tag` (the tag of the vCPU that
    /// notified the queue).
    pub fn charge_block(&mut self, tag: Option<u64>, work: &BlockWork) {
        let id = self.id;
        self.acct.writer_totals[id].add_block_single_writer(work);
        let r = self.resolve(tag);
        r.container_cells.col(id).add_block_single_writer(work);
        if let Some(req) = &r.request {
            // Only the device thread charges block work: single writer.
            req.add_block_single_writer(work);
        }
        if let (Some(e), container) = (r.error, r.container) {
            self.acct.errors.inc(e);
            invalid_tag(id, tag, e, container);
        }
    }

    /// Charges one frame's network work to `tag` (`None`: unattributed).
    /// Only the device thread charges network work: single writer on
    /// request blocks too.
    pub fn charge_net(&mut self, tag: Option<u64>, work: &NetCharge) {
        let id = self.id;
        self.acct.writer_totals[id].add_net_single_writer(work);
        let r = self.resolve(tag);
        r.container_cells.col(id).add_net_single_writer(work);
        if let Some(req) = &r.request {
            req.add_net_single_writer(work);
        }
        if let (Some(e), container) = (r.error, r.container) {
            self.acct.errors.inc(e);
            invalid_tag(id, tag, e, container);
        }
    }

    /// Charges one vsock packet's work to `tag` (`None`: unattributed).
    /// Only the device thread charges vsock work: single writer on request
    /// blocks too.
    pub fn charge_vsock(&mut self, tag: Option<u64>, work: &VsockCharge) {
        let id = self.id;
        self.acct.writer_totals[id].add_vsock_single_writer(work);
        let r = self.resolve(tag);
        r.container_cells.col(id).add_vsock_single_writer(work);
        if let Some(req) = &r.request {
            req.add_vsock_single_writer(work);
        }
        if let (Some(e), container) = (r.error, r.container) {
            self.acct.errors.inc(e);
            invalid_tag(id, tag, e, container);
        }
    }

    /// Charges agent-channel work to `tag` (`None`: unattributed).
    pub fn charge_agent(&mut self, tag: Option<u64>, work: &AgentCharge) {
        let id = self.id;
        self.acct.writer_totals[id].add_agent_single_writer(work);
        let r = self.resolve(tag);
        r.container_cells.col(id).add_agent_single_writer(work);
        if let Some(req) = &r.request {
            req.add_agent_single_writer(work);
        }
    }

    /// Charges ring-drain work to `tag` (`None`: unattributed).
    pub fn charge_ring(&mut self, tag: Option<u64>, work: &RingCharge) {
        let id = self.id;
        self.acct.writer_totals[id].add_ring_single_writer(work);
        let r = self.resolve(tag);
        r.container_cells.col(id).add_ring_single_writer(work);
        if let Some(req) = &r.request {
            req.add_ring_single_writer(work);
        }
    }

    /// Charges one hold of this writer's vCPU by a guest CPU limit
    /// (`held_ns` out of the guest) to the principal of `tag`, the tag its
    /// slot named when it was held. A request's block may see several
    /// vCPUs' holds: added to with `fetch_add`.
    pub fn charge_cpu_throttle(&mut self, tag: Option<u64>, held_ns: u64) {
        let id = self.id;
        self.acct.writer_totals[id].add_cpu_throttle_single_writer(held_ns);
        let r = self.resolve(tag);
        r.container_cells.col(id).add_cpu_throttle_single_writer(held_ns);
        if let Some(req) = &r.request {
            req.add_cpu_throttle_shared(held_ns);
        }
    }

    /// Charges one interrupt injected for work done for `tag`.
    pub fn charge_interrupt(&mut self, tag: Option<u64>) {
        let id = self.id;
        self.acct.writer_totals[id].add_interrupt_single_writer();
        let r = self.resolve(tag);
        r.container_cells.col(id).add_interrupt_single_writer();
        if let Some(req) = &r.request {
            req.add_interrupt_single_writer();
        }
    }
}

/// The warning for an invalid tag, beside the counter it goes with. The
/// sampler's run-time charges neither count nor warn: a slot it reads may
/// name a request that ended an instant before, which is no guest error.
#[cold]
fn invalid_tag(writer: usize, tag: Option<u64>, e: GuestError, container: usize) {
    let (c, r) = crate::abi::untag(tag.unwrap_or(0));
    crate::warn_rl!(
        "writer {writer}: tag (container {c}, request {r}) is invalid: {}; charged to {}",
        e.name(),
        if container == 0 {
            "unattributed"
        } else {
            "the container alone"
        }
    );
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::abi::{tag, EntryKind};

    fn declare(acct: &Accounting, id: u32, name: &str) {
        let e = RingEntry::new(EntryKind::DeclareContainer, id, 0, 0, name.as_bytes());
        acct.apply(&e).unwrap();
    }

    fn begin(acct: &Accounting, id: u32, container: u32) {
        acct.apply(&RingEntry {
            kind: EntryKind::BeginRequest as u16,
            id,
            arg: container,
            ..Default::default()
        })
        .unwrap();
    }

    /// The cache lines a block occupies.
    fn lines(c: &Counters) -> std::ops::Range<usize> {
        let start = std::ptr::from_ref(c) as usize;
        start / 64..(start + std::mem::size_of::<Counters>()).div_ceil(64)
    }

    /// What a vCPU's exit writes, when its tag names a container (no
    /// request), is its own: its total and its column of the container's
    /// ledger, in cache lines no other vCPU writes (docs/benchmarks.md, exit
    /// path scaling). Only a request's block is shared, when two vCPUs serve
    /// one request at once.
    #[test]
    fn no_two_vcpus_write_one_cache_line_on_the_exit_path() {
        const VCPUS: usize = 8;
        let acct = Accounting::new("t", VCPUS, 3, Limits::default());
        declare(&acct, 1, "web");
        let mut seen: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
        for v in 0..VCPUS {
            let mut w = acct.writer(v);
            w.charge_exit(Some(tag(1, 0)), ExitReason::PortOut, 1);
            let r = w.resolve(Some(tag(1, 0))).clone();
            assert_eq!(r.container, 1);
            for block in [&acct.writer_totals[v], r.container_cells.col(v)] {
                assert_eq!(block.read().exits_total().count, 1, "vCPU {v} wrote this block");
                seen.push((v, lines(block)));
            }
        }
        for (i, (va, a)) in seen.iter().enumerate() {
            for (vb, b) in &seen[i + 1..] {
                if va != vb {
                    assert!(
                        a.end <= b.start || b.end <= a.start,
                        "vCPUs {va} and {vb} share a line"
                    );
                }
            }
        }
    }

    #[test]
    fn charges_land_on_container_request_and_vcpu() {
        let acct = Accounting::new("t", 2, 1, Limits::default());
        let mut w0 = acct.writer(0);
        let mut w1 = acct.writer(1);
        declare(&acct, 1, "web");
        begin(&acct, 9, 1);
        w0.charge_exit(Some(tag(1, 9)), ExitReason::PortOut, 100);
        w1.charge_exit(Some(tag(1, 0)), ExitReason::PortOut, 50);
        w1.charge_exit(None, ExitReason::MmioWrite, 10);

        let reg = acct.registry();
        let web = &reg.containers()[1];
        assert_eq!(web.cells.sum().exits[ExitReason::PortOut.index()].count, 2);
        assert_eq!(web.cells.col(0).read().exits_total().count, 1);
        let req = reg.live_requests().next().unwrap();
        assert_eq!(req.cells.read().exits_total().host_ns, 100);
        assert_eq!(reg.containers()[0].cells.sum().exits_total().count, 1);
        let totals = acct.vcpu_totals();
        assert_eq!(
            (totals[0].exits_total().count, totals[1].exits_total().count),
            (1, 2)
        );
    }

    #[test]
    fn cache_is_invalidated_when_declarations_change() {
        let acct = Accounting::new("t", 1, 0, Limits::default());
        let mut w = acct.writer(0);
        // Container 1 is not declared yet: unattributed, flagged.
        w.charge_exit(Some(tag(1, 0)), ExitReason::PortOut, 1);
        declare(&acct, 1, "web");
        w.charge_exit(Some(tag(1, 0)), ExitReason::PortOut, 1);
        let reg = acct.registry();
        assert_eq!(reg.containers()[0].cells.sum().exits_total().count, 1);
        assert_eq!(reg.containers()[1].cells.sum().exits_total().count, 1);
        assert_eq!(acct.errors().get(GuestError::TagUnknownContainer), 1);
    }

    #[test]
    fn many_distinct_tags_evict_cache_entries_without_losing_charges() {
        let acct = Accounting::new("t", 1, 0, Limits::default());
        for id in 1..=20 {
            declare(&acct, id, &format!("c{id}"));
        }
        let mut w = acct.writer(0);
        for round in 0..3 {
            for id in 1..=20 {
                w.charge_exit(Some(tag(id, 0)), ExitReason::MmioRead, round);
            }
        }
        let reg = acct.registry();
        for c in &reg.containers()[1..] {
            assert_eq!(c.cells.sum().exits_total().count, 3);
        }
    }

    #[test]
    fn run_time_provenance_is_exact_only_where_every_charge_was_placed_by_a_log() {
        use crate::resource::Provenance;
        let acct = Accounting::new("t", 1, 1, Limits::default());
        declare(&acct, 1, "logged");
        declare(&acct, 2, "sampled");
        let mut sampler = acct.writer(1);
        let logged = sampler.resolved(tag(1, 0));
        sampler.charge_run_to(0, &logged, 700, true);
        sampler.charge_run(0, Some(tag(2, 0)), 300);
        let run = |i: usize| {
            let c = acct.container_view(i).unwrap().to_report();
            (c.provenance.guest_run, c.charges.guest_run_ns)
        };
        // No log in use: sampled, both.
        assert_eq!(run(1), (Provenance::Sampled, 700));
        assert_eq!(run(2), (Provenance::Sampled, 300));
        acct.set_run_logged();
        assert_eq!(run(1), (Provenance::Exact, 700));
        assert_eq!(run(2).0, Provenance::Sampled);
        // One charge not placed (exact = false) makes it sampled for good.
        sampler.charge_run_to(0, &logged, 5, false);
        assert_eq!(run(1), (Provenance::Sampled, 705));
        assert_eq!(run(0).0, Provenance::Unattributed);
    }

    #[test]
    fn run_time_goes_to_the_sampled_tag_and_the_vcpu() {
        let acct = Accounting::new("t", 2, 1, Limits::default());
        declare(&acct, 1, "cpu");
        let mut sampler = acct.writer(2);
        sampler.charge_run(1, Some(tag(1, 0)), 1_000);
        sampler.charge_run(0, None, 500);
        let reg = acct.registry();
        assert_eq!(reg.containers()[1].cells.sum().guest_run_ns, 1_000);
        assert_eq!(reg.containers()[0].cells.sum().guest_run_ns, 500);
        let totals = acct.vcpu_totals();
        assert_eq!((totals[0].guest_run_ns, totals[1].guest_run_ns), (500, 1_000));
    }
}
