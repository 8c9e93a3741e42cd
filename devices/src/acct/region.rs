//! The registered region: tag slots and the declaration ring.
//!
//! [`TagRegion`] also holds the second source of slots, the pages the guest
//! agent registers (`pages.rs`): both are published under one generation
//! counter, so a reader notices either change with the same single load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use accounting::abi::{self, RegionHeader, RingEntry, Status};
use accounting::errors::GuestError;
use accounting::ledger::Accounting;
use accounting::region::{self as geometry, Geometry};

use super::pages::PageSlots;
use accounting::warn_rl;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// A validated registration.
#[derive(Debug)]
pub struct Registration {
    gpa: u64,
    geom: Geometry,
    /// Host address of the region's first byte.
    host: *mut u8,
    /// Keeps the mapping behind `host` alive.
    mem: GuestMemoryMmap,
    /// Next ring position to consume.
    consumed: AtomicU64,
    /// Entries rejected so far.
    rejected: AtomicU64,
    /// Serialises consumers (vCPU threads and the sampler), and holds the
    /// budget of skipped entries.
    drain: Mutex<SkipBudget>,
}

/// Entries with a bad sequence number a ring may make the VMM skip per
/// second (and at once): a valid entry costs the guest a write per entry
/// per lap, a stale bad one costs it nothing once written, so bad ones are
/// what a guest could make the host spin on.
pub const SKIPS_PER_SEC: u64 = 10_000;

/// A token bucket of skips, refilled at [`SKIPS_PER_SEC`].
#[derive(Debug)]
struct SkipBudget {
    tokens: u64,
    since: Instant,
}

impl SkipBudget {
    fn new() -> Self {
        Self {
            tokens: SKIPS_PER_SEC,
            since: Instant::now(),
        }
    }

    /// Refills for the time since the last refill; takes one token.
    fn take(&mut self, now: Instant) -> bool {
        if self.tokens == 0 {
            let ms = u64::try_from(now.saturating_duration_since(self.since).as_millis()).unwrap_or(u64::MAX);
            let add = ms.saturating_mul(SKIPS_PER_SEC) / 1000;
            if add > 0 {
                self.tokens = add.min(SKIPS_PER_SEC);
                self.since = now;
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        if self.tokens == 0 {
            self.since = now;
        }
        true
    }
}

// SAFETY: `host` points into guest memory mapped for the whole life of `mem`,
// which this struct owns a handle to. The memory is shared with the guest by
// design; every access through `host` is an atomic load or store, so
// concurrent use from several threads is sound.
unsafe impl Send for Registration {}
// SAFETY: as for `Send`: only atomic accesses go through `host`.
unsafe impl Sync for Registration {}

impl Registration {
    /// Validates a registration of `[gpa, gpa + len)` for a VM of `nr_vcpus`.
    pub fn new(mem: &GuestMemoryMmap, gpa: u64, len: u64, nr_vcpus: usize) -> Result<Self, Status> {
        geometry::check_range(gpa, len)?;
        let region = mem.find_region(GuestAddress(gpa)).ok_or(Status::NotInRam)?;
        let last = gpa.checked_add(len - 1).ok_or(Status::NotInRam)?;
        if last > region.last_addr().0 {
            return Err(Status::NotInRam);
        }
        let host = mem
            .get_host_address(GuestAddress(gpa))
            .map_err(|_| Status::NotInRam)?;
        if !(host as usize).is_multiple_of(64) {
            return Err(Status::NotInRam);
        }
        let mut raw = [0u8; 64];
        mem.read_slice(&mut raw, GuestAddress(gpa))
            .map_err(|_| Status::NotInRam)?;
        let geom = geometry::check_header(&RegionHeader::from_bytes(&raw), len, nr_vcpus)?;
        let reg = Self {
            gpa,
            geom,
            host,
            mem: mem.clone(),
            consumed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            drain: Mutex::new(SkipBudget::new()),
        };
        // Every registration starts the ring afresh: positions from 0, and
        // no entry left over from an earlier registration can match one.
        for pos in 0..u64::from(geom.ring_entries) {
            reg.word(geom.ring_entry_offset(pos) + abi::ENTRY_SEQ)
                .store(0, Ordering::Relaxed);
        }
        reg.word(abi::HDR_RING_CONSUMED).store(0, Ordering::Release);
        reg.word(abi::HDR_RING_REJECTED).store(0, Ordering::Release);
        Ok(reg)
    }

    /// Guest-physical address of the region.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    /// Its validated geometry.
    pub fn geometry(&self) -> Geometry {
        self.geom
    }

    /// The 64-bit word at `offset`, which must be 8-aligned and inside the
    /// region (all callers pass offsets derived from the validated geometry).
    fn word(&self, offset: u64) -> &AtomicU64 {
        assert!(
            offset.is_multiple_of(8) && offset + 8 <= self.geom.len,
            "offset {offset:#x} outside region"
        );
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        // SAFETY: `host` is 64-byte aligned and the region `[host, host+len)`
        // lies in one guest memory mapping kept alive by `self.mem`; the
        // assertion keeps the 8-byte word inside it and aligned. Guest memory
        // may change under us at any time, which `AtomicU64` tolerates.
        unsafe { AtomicU64::from_ptr(self.host.add(offset).cast::<u64>()) }
    }

    /// Host pointer to vCPU `vcpu`'s tag word, if it has a slot.
    fn slot(&self, vcpu: usize) -> Option<&AtomicU64> {
        self.geom.slot_offset(vcpu).map(|off| self.word(off))
    }

    /// Host pointer to vCPU `vcpu`'s throttle word, if the region has them.
    fn throttle_word(&self, vcpu: usize) -> Option<&AtomicU64> {
        self.geom.throttle_word_offset(vcpu).map(|off| self.word(off))
    }

    /// The whole 64-byte slot of `vcpu`, as eight words.
    fn line(&self, vcpu: usize) -> Option<&super::switchlog::SlotLine> {
        let off = self.geom.slot_offset(vcpu)?;
        // Bounds and alignment of the last word (the slot lies in the
        // validated slot array, 64-aligned).
        let _ = self.word(off + 56);
        let first: *const AtomicU64 = self.word(off);
        // SAFETY: the slot's eight words lie inside the region (the checks
        // of `word` on its first and last word), 8-aligned, in guest memory
        // kept mapped by `self.mem`; `[AtomicU64; 8]` has the layout of
        // eight consecutive words and tolerates concurrent guest writes.
        Some(unsafe { &*first.cast::<super::switchlog::SlotLine>() })
    }

    /// The explicit tag the guest stored for the request at descriptor
    /// `head` of queue tag table `table`; `None` if the region has no such
    /// entry or the entry is 0.
    fn queue_tag(&self, table: u32, head: u16) -> Option<u64> {
        let off = self.geom.qtag_entry_offset(table, head)?;
        Some(self.word(off).load(Ordering::Acquire)).filter(|t| *t != 0)
    }

    /// Whether the ring holds something to consume (or garbage to skip).
    #[inline]
    fn ring_pending(&self) -> bool {
        if self.geom.ring_entries == 0 {
            return false;
        }
        let pos = self.consumed.load(Ordering::Acquire);
        let seq = self
            .word(self.geom.ring_entry_offset(pos))
            .load(Ordering::Acquire);
        seq > pos
    }

    /// Applies every complete entry in order, at most one ring's worth;
    /// entries with a sequence number ahead of the consumer are skipped
    /// only while the skip budget lasts ([`SKIPS_PER_SEC`]): past it the
    /// drain stops there (counted once per drain as `ring_throttled`) and
    /// goes on when the budget refills. Returns the number of entries
    /// consumed.
    fn drain(&self, acct: &Accounting) -> usize {
        self.drain_at(acct, Instant::now())
    }

    fn drain_at(&self, acct: &Accounting, now: Instant) -> usize {
        let mut budget = self.drain.lock().unwrap_or_else(|p| p.into_inner());
        let n = u64::from(self.geom.ring_entries);
        let mut done = 0;
        while done < n {
            let pos = self.consumed.load(Ordering::Relaxed);
            let off = self.geom.ring_entry_offset(pos);
            let seq = self.word(off).load(Ordering::Acquire);
            if seq <= pos {
                break;
            }
            if seq == pos + 1 {
                let mut raw = [0u8; 64];
                if self
                    .mem
                    .read_slice(&mut raw, GuestAddress(self.gpa + off))
                    .is_err()
                {
                    break;
                }
                let entry = RingEntry::from_bytes(&raw);
                if entry.reserved != 0 {
                    acct.count_error(GuestError::RingReservedNonZero);
                }
                if let Err(e) = acct.apply(&entry) {
                    self.rejected.fetch_add(1, Ordering::Relaxed);
                    warn_rl!(
                        "tag ring: entry {pos} (kind {}, id {}) rejected: {}",
                        entry.kind,
                        entry.id,
                        e.name()
                    );
                }
            } else {
                if !budget.take(now) {
                    acct.count_error(GuestError::RingThrottled);
                    warn_rl!("tag ring: more than {SKIPS_PER_SEC} entries with bad sequence numbers per second; draining paused");
                    break;
                }
                acct.count_error(GuestError::RingBadSeq);
                self.rejected.fetch_add(1, Ordering::Relaxed);
                warn_rl!("tag ring: entry {pos} has sequence {seq}, ahead of the consumer; skipped");
            }
            self.consumed.store(pos + 1, Ordering::Release);
            done += 1;
        }
        if done > 0 {
            self.word(abi::HDR_RING_CONSUMED)
                .store(self.consumed.load(Ordering::Relaxed), Ordering::Release);
            self.word(abi::HDR_RING_REJECTED)
                .store(self.rejected.load(Ordering::Relaxed), Ordering::Release);
        }
        usize::try_from(done).unwrap_or(usize::MAX)
    }
}

/// The VM's current slot sources, shared by the device, the agent hub, the
/// vCPU threads and the sampler. Readers notice a change through a
/// generation counter (one acquire load per exit) and only then take the
/// lock.
#[derive(Debug)]
pub struct TagRegion {
    nr_vcpus: usize,
    generation: AtomicU64,
    current: Mutex<Sources>,
}

/// Where slots come from: the accounting device's region (which also
/// carries the ring and the queue tag tables) and the agent's pages.
#[derive(Clone, Debug, Default)]
struct Sources {
    device: Option<Arc<Registration>>,
    agent: Option<Arc<PageSlots>>,
}

/// Which source a vCPU's slot is read from now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotSource {
    /// A region registered through the accounting device.
    Device,
    /// Pages registered by the guest agent (`register_slots`).
    Agent,
    /// Nothing registered: exits are charged to `unattributed`.
    None,
}

impl SlotSource {
    /// The name used in the report and the API.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Agent => "agent",
            Self::None => "none",
        }
    }
}

impl TagRegion {
    /// No registration yet, for a VM of `nr_vcpus`.
    pub fn new(nr_vcpus: usize) -> Arc<Self> {
        Arc::new(Self {
            nr_vcpus,
            generation: AtomicU64::new(0),
            current: Mutex::new(Sources::default()),
        })
    }

    /// The VM's vCPU count.
    pub fn nr_vcpus(&self) -> usize {
        self.nr_vcpus
    }

    fn sources(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the device's registration (or clears it with `None`).
    pub fn set(&self, reg: Option<Registration>) {
        self.sources().device = reg.map(Arc::new);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Replaces the agent's slot pages (or clears them with `None`).
    pub fn set_agent(&self, slots: Option<PageSlots>) {
        self.sources().agent = slots.map(Arc::new);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The current device registration.
    pub fn current(&self) -> Option<Arc<Registration>> {
        self.sources().device.clone()
    }

    /// The agent's slot pages in force.
    pub fn agent(&self) -> Option<Arc<PageSlots>> {
        self.sources().agent.clone()
    }

    /// Which source slots are read from now, and the vCPUs that have one
    /// there (ascending). A device region covers every vCPU (it is refused
    /// with fewer slots than vCPUs).
    pub fn slot_source(&self) -> (SlotSource, Vec<u32>) {
        let s = self.sources().clone();
        let all = || (0..self.nr_vcpus).filter_map(|v| u32::try_from(v).ok()).collect();
        match (&s.device, &s.agent) {
            (Some(_), _) => (SlotSource::Device, all()),
            (None, Some(a)) => (SlotSource::Agent, a.vcpus()),
            (None, None) => (SlotSource::None, Vec::new()),
        }
    }

    /// A reader for vCPU `vcpu`'s slot.
    pub fn reader(self: &Arc<Self>, vcpu: usize) -> TagReader {
        TagReader {
            view: View::new(self),
            vcpu,
        }
    }

    /// A reader of the queue tag tables, for a device thread.
    pub fn queue_tag_reader(self: &Arc<Self>) -> QueueTagReader {
        QueueTagReader {
            view: View::new(self),
        }
    }
}

/// One thread's cached view of the current sources: a generation check
/// (one load) per use, the lock only when it changed.
#[derive(Debug)]
struct View {
    region: Arc<TagRegion>,
    generation: u64,
    sources: Sources,
}

impl View {
    fn new(region: &Arc<TagRegion>) -> Self {
        Self {
            region: Arc::clone(region),
            generation: u64::MAX,
            sources: Sources::default(),
        }
    }

    /// Called up to three times per vCPU exit: the check is inlined and the
    /// refresh kept out of line, so the common case is a load and a compare
    /// (as one out-of-line function it cost ~19 instructions a call).
    #[inline(always)]
    fn sources(&mut self) -> &Sources {
        let g = self.region.generation.load(Ordering::Acquire);
        if g != self.generation {
            self.refresh(g);
        }
        &self.sources
    }

    #[cold]
    #[inline(never)]
    fn refresh(&mut self, g: u64) {
        self.sources = self.region.sources().clone();
        self.generation = g;
    }

    /// The device's registration (the ring and the queue tags are its only).
    #[inline]
    fn get(&mut self) -> Option<&Registration> {
        self.sources().device.as_deref()
    }
}

/// One thread's view of one vCPU's slot.
#[derive(Debug)]
pub struct TagReader {
    view: View,
    vcpu: usize,
}

impl TagReader {
    /// The vCPU's current tag: from the device's region if one is
    /// registered, else from the agent's pages if they give this vCPU a
    /// slot; `None` (charged to `unattributed`) otherwise. One atomic
    /// acquire load of the slot either way.
    #[inline]
    pub fn tag(&mut self) -> Option<u64> {
        let vcpu = self.vcpu;
        let s = self.view.sources();
        if let Some(w) = s.device.as_deref().and_then(|reg| reg.slot(vcpu)) {
            return Some(w.load(Ordering::Acquire));
        }
        s.agent.as_deref()?.tag(vcpu)
    }

    /// Calls `f` with the vCPU's whole slot (tag, switch log), from the same
    /// source [`TagReader::tag`] reads; `None` where the vCPU has no slot.
    /// `f` also gets what the slot's logged time stamps are.
    #[inline]
    pub fn with_line<R>(
        &mut self,
        f: impl FnOnce(&super::switchlog::SlotLine, super::switchlog::Stamps<'_>) -> R,
    ) -> Option<R> {
        let vcpu = self.vcpu;
        let s = self.view.sources();
        if let Some(line) = s.device.as_deref().and_then(|reg| reg.line(vcpu)) {
            return Some(f(line, super::switchlog::Stamps::Tsc));
        }
        let agent = s.agent.as_deref()?;
        agent.line(vcpu).map(|line| f(line, agent.stamps()))
    }

    /// Stores `word` (`abi::THROTTLE_SPENT | ...`, or 0) in the vCPU's
    /// throttle word, if the device's region has throttle words (slots the
    /// agent registered have none); returns whether it did. One release
    /// store, only when the word changes (the caller keeps what it wrote).
    pub fn set_throttle(&mut self, word: u64) -> bool {
        let vcpu = self.vcpu;
        match self.view.get().and_then(|reg| reg.throttle_word(vcpu)) {
            Some(w) => {
                w.store(word, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Whether the ring holds entries to consume (or skip): two loads.
    #[inline]
    pub fn pending(&mut self) -> bool {
        self.view.get().is_some_and(Registration::ring_pending)
    }

    /// Drains pending declarations into `acct`; returns how many entries
    /// were consumed. Cheap when nothing is pending: two loads.
    #[inline]
    pub fn drain(&mut self, acct: &Accounting) -> usize {
        match self.view.get() {
            Some(reg) if reg.ring_pending() => reg.drain(acct),
            _ => 0,
        }
    }
}

/// A device thread's view of the queue tag tables
/// ([`accounting::abi::QueueTags`]).
#[derive(Debug)]
pub struct QueueTagReader {
    view: View,
}

impl QueueTagReader {
    /// The explicit tag of the request at descriptor `head` in queue tag
    /// table `table`, if the guest gave one.
    pub fn tag(&mut self, table: u32, head: u16) -> Option<u64> {
        self.view.get()?.queue_tag(table, head)
    }

    /// The explicit tag of the chain at `head` in queue `queue` of virtio
    /// device `device` (its index among the VM's virtio devices, which picks
    /// its tables), if the guest gave one.
    pub fn chain_tag(&mut self, device: u32, queue: usize, head: u16) -> Option<u64> {
        let queue = u32::try_from(queue).ok()?;
        self.tag(abi::qtag_table(device, queue), head)
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use accounting::abi::{tag, EntryKind};
    use accounting::registry::Limits;

    const GPA: u64 = 0x10000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn write_header(mem: &GuestMemoryMmap, slots: u32, ring: u32) -> u64 {
        let h = RegionHeader {
            magic: abi::MAGIC,
            version: abi::ABI_VERSION,
            header_len: 64,
            nr_slots: slots,
            slots_offset: 64,
            ring_entries: ring,
            ring_offset: 64 + 64 * slots,
            ..Default::default()
        };
        let mut raw = [0u8; 64];
        raw[0..4].copy_from_slice(&h.magic.to_le_bytes());
        raw[4..6].copy_from_slice(&h.version.to_le_bytes());
        raw[6..8].copy_from_slice(&h.header_len.to_le_bytes());
        raw[8..12].copy_from_slice(&slots.to_le_bytes());
        raw[12..16].copy_from_slice(&h.slots_offset.to_le_bytes());
        raw[16..20].copy_from_slice(&ring.to_le_bytes());
        raw[20..24].copy_from_slice(&h.ring_offset.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(GPA)).unwrap();
        abi::region_len(slots, ring) as u64
    }

    fn push(mem: &GuestMemoryMmap, slots: u32, ring: u32, pos: u64, mut e: RingEntry) {
        e.seq = pos + 1;
        let off = 64 + 64 * u64::from(slots) + 64 * (pos % u64::from(ring));
        mem.write_slice(&e.to_bytes(), GuestAddress(GPA + off)).unwrap();
    }

    fn declare(id: u32, name: &str) -> RingEntry {
        RingEntry::new(EntryKind::DeclareContainer, id, 0, 0, name.as_bytes())
    }

    #[test]
    fn registration_validates_range_and_header() {
        let m = mem();
        let len = write_header(&m, 2, 4);
        assert!(Registration::new(&m, GPA, len, 2).is_ok());
        assert_eq!(
            Registration::new(&m, GPA + 8, len, 2).unwrap_err(),
            Status::Misaligned
        );
        assert_eq!(
            Registration::new(&m, (1 << 20) - 64, 4096, 2).unwrap_err(),
            Status::NotInRam
        );
        assert_eq!(
            Registration::new(&m, 0xd000_0000, 4096, 2).unwrap_err(),
            Status::NotInRam
        );
        assert_eq!(
            Registration::new(&m, GPA, len, 3).unwrap_err(),
            Status::BadGeometry
        );
    }

    #[test]
    fn registering_again_does_not_replay_old_entries() {
        let m = mem();
        let len = write_header(&m, 1, 4);
        let region = TagRegion::new(1);
        let acct = Accounting::new("t", 1, 0, Limits::default());
        region.set(Some(Registration::new(&m, GPA, len, 1).unwrap()));
        push(&m, 1, 4, 0, declare(1, "a"));
        let mut r = region.reader(0);
        assert_eq!(r.drain(&acct), 1);
        region.set(Some(Registration::new(&m, GPA, len, 1).unwrap()));
        assert_eq!(r.drain(&acct), 0);
        assert_eq!(acct.errors().get(GuestError::RingDuplicateContainer), 0);
        let seq: u64 = m.read_obj(GuestAddress(GPA + 128)).unwrap();
        assert_eq!(seq, 0);
    }

    #[test]
    fn reader_sees_slot_stores_and_registration_changes() {
        let m = mem();
        let len = write_header(&m, 2, 0);
        let region = TagRegion::new(2);
        let mut r1 = region.reader(1);
        assert_eq!(r1.tag(), None);
        region.set(Some(Registration::new(&m, GPA, len, 2).unwrap()));
        assert_eq!(r1.tag(), Some(0));
        m.write_obj(tag(3, 4), GuestAddress(GPA + 128)).unwrap();
        assert_eq!(r1.tag(), Some(tag(3, 4)));
        region.set(None);
        assert_eq!(r1.tag(), None);
    }

    #[test]
    fn a_poisoned_ring_costs_at_most_the_skip_budget_per_second() {
        // The largest ring, every entry's sequence number far ahead: once
        // written, these cost the guest nothing while the consumer laps.
        const RING: u32 = abi::MAX_RING_ENTRIES;
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let len = write_header(&m, 1, RING);
        let reg = Registration::new(&m, GPA, len, 1).unwrap();
        for pos in 0..u64::from(RING) {
            m.write_obj(u64::MAX / 2, GuestAddress(GPA + 128 + 64 * pos))
                .unwrap();
        }
        let acct = Accounting::new("t", 1, 0, Limits::default());
        let t0 = Instant::now();
        assert_eq!(reg.drain_at(&acct, t0), SKIPS_PER_SEC as usize, "one budget");
        assert_eq!(acct.errors().get(GuestError::RingBadSeq), SKIPS_PER_SEC);
        assert_eq!(acct.errors().get(GuestError::RingThrottled), 1);
        // Every further drain in the same instant skips nothing.
        for _ in 0..1000 {
            assert_eq!(reg.drain_at(&acct, t0), 0);
        }
        assert_eq!(acct.errors().get(GuestError::RingThrottled), 1001);
        // 100 ms later: 1,000 more.
        let later = t0 + std::time::Duration::from_millis(100);
        assert_eq!(reg.drain_at(&acct, later), 1000);
        // A valid entry at the consumer's position is applied whatever the
        // budget.
        let pos = SKIPS_PER_SEC + 1000;
        push(&m, 1, RING, pos, declare(7, "ok"));
        assert_eq!(reg.drain_at(&acct, later), 1);
        assert!(acct.registry().live_container(7).is_some());
        assert_eq!(acct.errors().get(GuestError::RingBadSeq), SKIPS_PER_SEC + 1000);
    }

    #[test]
    fn ring_applies_in_order_skips_bad_seq_and_reports_progress() {
        let m = mem();
        let len = write_header(&m, 1, 4);
        let region = TagRegion::new(1);
        region.set(Some(Registration::new(&m, GPA, len, 1).unwrap()));
        let acct = Accounting::new("t", 1, 0, Limits::default());
        let mut r = region.reader(0);
        assert_eq!(r.drain(&acct), 0);

        push(&m, 1, 4, 0, declare(1, "a"));
        push(
            &m,
            1,
            4,
            1,
            RingEntry {
                kind: 99,
                id: 1,
                ..Default::default()
            },
        );
        // Position 2 carries a sequence from the far future: skipped, counted.
        let mut bad = declare(2, "b");
        bad.seq = 0;
        push(&m, 1, 4, 2, bad);
        m.write_obj(1_000u64, GuestAddress(GPA + 64 + 64 + 128)).unwrap();
        assert_eq!(r.drain(&acct), 3);
        assert_eq!(acct.errors().get(GuestError::RingBadKind), 1);
        assert_eq!(acct.errors().get(GuestError::RingBadSeq), 1);
        let consumed: u64 = m.read_obj(GuestAddress(GPA + abi::HDR_RING_CONSUMED)).unwrap();
        let rejected: u64 = m.read_obj(GuestAddress(GPA + abi::HDR_RING_REJECTED)).unwrap();
        assert_eq!((consumed, rejected), (3, 2));

        // Position 3 not yet written: nothing to do. Then wrap around.
        assert_eq!(r.drain(&acct), 0);
        push(&m, 1, 4, 3, declare(3, "c"));
        push(&m, 1, 4, 4, declare(4, "d"));
        assert_eq!(r.drain(&acct), 2);
        assert_eq!(acct.registry().containers().len(), 4);
    }

    proptest::proptest! {
        /// Whatever the guest writes into its ring, a drain never panics,
        /// consumes at most one ring's worth, and keeps the books balanced
        /// enough to be read back.
        #[test]
        fn drains_of_arbitrary_ring_bytes_are_bounded(
            ring_bytes in proptest::collection::vec(proptest::num::u8::ANY, 64 * 8),
            seqs in proptest::collection::vec(0u64..12, 8),
        ) {
            let m = mem();
            let len = write_header(&m, 1, 8);
            let region = TagRegion::new(1);
            region.set(Some(Registration::new(&m, GPA, len, 1).unwrap()));
            let acct = Accounting::new("t", 1, 0, Limits::default());
            let mut r = region.reader(0);
            let ring_gpa = GPA + 128;
            m.write_slice(&ring_bytes, GuestAddress(ring_gpa)).unwrap();
            for (i, seq) in seqs.iter().enumerate() {
                m.write_obj(*seq, GuestAddress(ring_gpa + 64 * i as u64)).unwrap();
            }
            let mut total = 0;
            for _ in 0..4 {
                let n = r.drain(&acct);
                proptest::prop_assert!(n <= 8);
                total += n;
            }
            let consumed: u64 = m.read_obj(GuestAddress(GPA + abi::HDR_RING_CONSUMED)).unwrap();
            proptest::prop_assert_eq!(consumed, total as u64);
            proptest::prop_assert!(acct.registry().containers().len() <= 9);
        }
    }
}
