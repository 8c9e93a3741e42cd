//! Tag slots the guest agent registers as a list of guest-physical pages.
//!
//! A Linux guest cannot hand the accounting device one contiguous region:
//! its agent keeps the slots in an eBPF array map whose 4 KiB pages are
//! scattered in guest RAM and indexed by Linux CPU number. So the agent
//! sends `register_slots` (`accounting::agent::RegisterSlots`): the pages,
//! and which slot belongs to which CPU by APIC id (= vCPU index here).
//! Slot `k` is in page `k / 64` at byte `64 · (k % 64)`; its first `u64`
//! is the tag, as in the device's region.
//!
//! [`PageSlots`] is one validated registration: a host pointer per vCPU to
//! its slot's tag word, read with one atomic acquire load, as the device's
//! slots are. [`AgentSlots`] is what the agent hub uses: it checks a
//! registration against the VM, counts refusals, and publishes it into the
//! [`TagRegion`] beside the device's registration, which wins where both
//! exist (`TagReader::tag`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use accounting::agent::{slot_position, RegisterSlots, MAX_SLOT_PAGES, SLOT_PAGE_SIZE};
use accounting::errors::GuestError;
use accounting::ledger::Accounting;
use accounting::report::SlotsInfo;
use accounting::warn_rl;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::region::TagRegion;

/// Why a well-formed `register_slots` was refused against the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotsRefusal {
    /// This page is not wholly inside one guest RAM range.
    NotInRam {
        /// The page's guest-physical address.
        page: u64,
    },
    /// The VM has no vCPU with this APIC id.
    UnknownApicId {
        /// The APIC id.
        apic_id: u32,
    },
}

impl SlotsRefusal {
    /// The guest-error counter it is counted under.
    pub const fn error(self) -> GuestError {
        match self {
            Self::NotInRam { .. } => GuestError::SlotsNotInRam,
            Self::UnknownApicId { .. } => GuestError::SlotsUnknownApicId,
        }
    }

    /// The `reason` of the `refused` answer: the counter's name.
    pub const fn reason(self) -> &'static str {
        self.error().name()
    }
}

impl std::fmt::Display for SlotsRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotInRam { page } => write!(f, "slot page {page:#x} is not inside guest RAM"),
            Self::UnknownApicId { apic_id } => write!(f, "no vCPU has APIC id {apic_id}"),
        }
    }
}

/// A registration of slot pages, checked against the VM.
#[derive(Debug)]
pub struct PageSlots {
    /// The pages, as the agent listed them (for [`PageSlots::same_as`]).
    pages: Vec<u64>,
    /// The CPUs, as the agent listed them.
    cpus: Vec<accounting::agent::SlotCpu>,
    /// Per vCPU: host address of its slot's tag word, or null.
    slots: Box<[*mut u64]>,
    /// Keeps the mappings behind `slots` alive.
    _mem: GuestMemoryMmap,
    /// The agent's clock sync for the stamps of the slots' switch logs.
    clock: super::switchlog::ClockCell,
}

// SAFETY: every non-null pointer in `slots` points into guest memory mapped
// for the whole life of `_mem`, which this struct owns a handle to. The
// memory is shared with the guest by design; the only access through them
// is an atomic load, so use from several threads is sound.
unsafe impl Send for PageSlots {}
// SAFETY: as for `Send`: only atomic loads go through the pointers.
unsafe impl Sync for PageSlots {}

impl PageSlots {
    /// Checks `req` (already `validate`d: 1..=16 distinct 4 KiB-aligned
    /// pages, slots inside them) against a VM of `nr_vcpus` with memory
    /// `mem`: every page wholly inside one RAM range, every APIC id a vCPU.
    pub fn new(mem: &GuestMemoryMmap, req: &RegisterSlots, nr_vcpus: usize) -> Result<Self, SlotsRefusal> {
        let mut hosts = [std::ptr::null_mut::<u8>(); MAX_SLOT_PAGES];
        if req.pages.len() > MAX_SLOT_PAGES {
            // `validate` refuses this; never index past `hosts`.
            return Err(SlotsRefusal::NotInRam {
                page: req.pages[MAX_SLOT_PAGES],
            });
        }
        for (host, &page) in hosts.iter_mut().zip(&req.pages) {
            *host = page_host(mem, page).ok_or(SlotsRefusal::NotInRam { page })?;
        }
        if let Some(c) = req
            .cpus
            .iter()
            .find(|c| usize::try_from(c.apic_id).map_or(true, |a| a >= nr_vcpus))
        {
            return Err(SlotsRefusal::UnknownApicId { apic_id: c.apic_id });
        }
        let mut slots = vec![std::ptr::null_mut::<u64>(); nr_vcpus].into_boxed_slice();
        for c in &req.cpus {
            let (page, offset) = slot_position(c.slot);
            let (Some(host), Some(slot)) = (
                hosts.get(page).filter(|h| !h.is_null()),
                usize::try_from(c.apic_id).ok().and_then(|a| slots.get_mut(a)),
            ) else {
                // A slot outside the pages (`validate` refuses it).
                return Err(SlotsRefusal::NotInRam {
                    page: u64::from(c.slot) * 64,
                });
            };
            // The offset is below 4096, inside the page `host` maps.
            let offset = usize::try_from(offset).unwrap_or(0);
            // SAFETY: `host` maps a whole 4 KiB page (checked by
            // `page_host`) and `offset` + 8 <= 4096, so the result stays in
            // the same mapping.
            *slot = unsafe { host.add(offset) }.cast::<u64>();
        }
        Ok(Self {
            pages: req.pages.clone(),
            cpus: req.cpus.clone(),
            slots,
            _mem: mem.clone(),
            clock: super::switchlog::ClockCell::default(),
        })
    }

    /// Whether `req` is the registration this was made from.
    pub fn same_as(&self, req: &RegisterSlots) -> bool {
        self.pages == req.pages && self.cpus == req.cpus
    }

    /// How many pages it spans.
    pub fn pages(&self) -> usize {
        self.pages.len()
    }

    /// The vCPUs that have a slot, ascending.
    pub fn vcpus(&self) -> Vec<u32> {
        (0..self.slots.len())
            .filter(|&v| !self.slots[v].is_null())
            .filter_map(|v| u32::try_from(v).ok())
            .collect()
    }

    /// vCPU `vcpu`'s tag, if it has a slot: one atomic acquire load.
    #[inline]
    pub fn tag(&self, vcpu: usize) -> Option<u64> {
        let p = *self.slots.get(vcpu)?;
        if p.is_null() {
            return None;
        }
        // SAFETY: a non-null `p` points at an 8-aligned word inside a guest
        // RAM page mapped for as long as `self._mem` lives (`new`). The
        // guest may write it at any time, which an atomic load tolerates;
        // no reference to non-atomic data is made.
        Some(unsafe { AtomicU64::from_ptr(p) }.load(Ordering::Acquire))
    }

    /// What the switch logs' stamps are: the guest's `CLOCK_MONOTONIC`,
    /// placed through the agent's last `clock_sync`.
    pub fn stamps(&self) -> super::switchlog::Stamps<'_> {
        super::switchlog::Stamps::Synced(&self.clock)
    }

    /// vCPU `vcpu`'s whole slot (tag and switch log), if it has one.
    #[inline]
    pub fn line(&self, vcpu: usize) -> Option<&super::switchlog::SlotLine> {
        let p = *self.slots.get(vcpu)?;
        if p.is_null() {
            return None;
        }
        // SAFETY: a non-null `p` is the start of a 64-byte slot at a
        // multiple of 64 inside one mapped guest RAM page (`new`), mapped
        // while `self._mem` lives; eight atomic words tolerate guest writes.
        Some(unsafe { &*p.cast::<super::switchlog::SlotLine>() })
    }
}

/// The host address of guest page `page`, if the whole page lies in one
/// RAM range and maps to an 8-aligned host address.
fn page_host(mem: &GuestMemoryMmap, page: u64) -> Option<*mut u8> {
    let region = mem.find_region(GuestAddress(page))?;
    let last = page.checked_add(SLOT_PAGE_SIZE - 1)?;
    if last > region.last_addr().0 {
        return None;
    }
    let host = mem.get_host_address(GuestAddress(page)).ok()?;
    (host as usize).is_multiple_of(64).then_some(host)
}

/// The agent's side of the slot sources: checks `register_slots` against
/// the VM, counts what it did, and publishes into the [`TagRegion`].
#[derive(Debug)]
pub struct AgentSlots {
    region: Arc<TagRegion>,
    mem: GuestMemoryMmap,
    acct: Arc<Accounting>,
    /// Serialises the compare-and-replace of concurrent connections.
    lock: Mutex<()>,
    registrations: AtomicU64,
    refusals: AtomicU64,
}

impl AgentSlots {
    /// Slots of the VM with `mem`, published into `region`; refusals are
    /// counted in `acct`'s guest errors.
    pub fn new(region: Arc<TagRegion>, mem: GuestMemoryMmap, acct: Arc<Accounting>) -> Self {
        Self {
            region,
            mem,
            acct,
            lock: Mutex::new(()),
            registrations: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
        }
    }

    /// Installs `req` (already `validate`d) and returns the vCPUs that now
    /// have a slot; the same pages and CPUs as the registration in force is
    /// a no-op with the same answer. On a refusal (counted, logged at a
    /// limited rate) the registration in force stays.
    pub fn register(&self, req: &RegisterSlots) -> Result<Vec<u32>, SlotsRefusal> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cur) = self.region.agent().filter(|c| c.same_as(req)) {
            return Ok(cur.vcpus());
        }
        match PageSlots::new(&self.mem, req, self.region.nr_vcpus()) {
            Ok(slots) => {
                let vcpus = slots.vcpus();
                log::debug!("agent slots registered: {} pages, vCPUs {vcpus:?}", slots.pages());
                self.region.set_agent(Some(slots));
                self.registrations.fetch_add(1, Ordering::Relaxed);
                Ok(vcpus)
            }
            Err(r) => {
                self.acct.count_error(r.error());
                self.refusals.fetch_add(1, Ordering::Relaxed);
                warn_rl!("agent register_slots refused: {r}; the slots in force stay");
                Err(r)
            }
        }
    }

    /// Records the agent's `clock_sync` (`CLOCK_MONOTONIC` ns and the guest
    /// TSC read together) for the slots in force; `false` if there are none.
    pub fn sync_clock(&self, ns: u64, tsc: u64) -> bool {
        match self.region.agent() {
            Some(cur) => {
                cur.clock.set(ns, tsc, self.acct.clock().tsc_hz().unwrap_or(0));
                true
            }
            None => false,
        }
    }

    /// Forgets the agent's slots (`unregister_slots`, or a guest of another
    /// boot).
    pub fn clear(&self) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.region.agent().is_some() {
            self.region.set_agent(None);
        }
    }

    /// The slot sources as the report and the API show them.
    pub fn info(&self) -> SlotsInfo {
        let (source, vcpus) = self.region.slot_source();
        SlotsInfo {
            source: source.name().into(),
            vcpus,
            pages: self.region.agent().map_or(0, |a| a.pages()),
            registrations: self.registrations.load(Ordering::Relaxed),
            refusals: self.refusals.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acct::Registration;
    use accounting::abi::{self, tag};
    use accounting::agent::SlotCpu;
    use accounting::registry::Limits;
    use vm_memory::Bytes;

    /// 1 MiB of RAM at 0 and 64 KiB at 4 GiB: a hole between them.
    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20), (GuestAddress(1 << 32), 1 << 16)])
            .unwrap()
    }

    fn req(pages: &[u64], cpus: &[(u32, u32)]) -> RegisterSlots {
        let r = RegisterSlots {
            pages: pages.to_vec(),
            cpus: cpus
                .iter()
                .map(|&(apic_id, slot)| SlotCpu { apic_id, slot })
                .collect(),
        };
        r.validate().unwrap();
        r
    }

    fn slots(vcpus: usize) -> (Arc<TagRegion>, AgentSlots, Arc<Accounting>, GuestMemoryMmap) {
        let m = mem();
        let region = TagRegion::new(vcpus);
        let acct = Accounting::new("t", vcpus, 0, Limits::default());
        let s = AgentSlots::new(Arc::clone(&region), m.clone(), Arc::clone(&acct));
        (region, s, acct, m)
    }

    #[test]
    fn the_agents_clock_sync_explains_the_stamps_of_its_slots_logs() {
        use crate::acct::switchlog::LogClock;
        let (region, s, _, m) = slots(1);
        // No slots: nothing to keep the sync with.
        assert!(!s.sync_clock(1, 2));
        assert_eq!(s.register(&req(&[0x5000], &[(0, 1)])), Ok(vec![0]));
        let mut r = region.reader(0);
        assert_eq!(r.with_line(|_, st| st.clock()), Some(LogClock::Unknown));
        assert!(s.sync_clock(1_000, 77_000));
        assert_eq!(
            r.with_line(|_, st| st.clock()),
            Some(LogClock::Monotonic {
                ns: 1_000,
                tsc: 77_000,
                hz: 0
            })
        );
        // The line is slot 1's: its sequence word is the page's byte 72.
        m.write_obj(5u64, GuestAddress(0x5000 + 72)).unwrap();
        assert_eq!(r.with_line(|l, _| l[1].load(Ordering::Relaxed)), Some(5));
    }

    #[test]
    fn slot_k_is_read_from_page_k_div_64_at_64_times_k_mod_64() {
        let (region, s, _, m) = slots(3);
        // vCPU 0 → slot 65 (page 0x5000, byte 64); vCPU 2 → slot 3 (page
        // 0x9000, byte 192); vCPU 1 has none.
        let r = req(&[0x9000, 0x5000], &[(0, 65), (2, 3)]);
        assert_eq!(s.register(&r), Ok(vec![0, 2]));
        m.write_obj(tag(7, 1), GuestAddress(0x5000 + 64)).unwrap();
        m.write_obj(tag(8, 0), GuestAddress(0x9000 + 192)).unwrap();
        // Bytes around the slots must not be read.
        m.write_obj(u64::MAX, GuestAddress(0x5000)).unwrap();
        m.write_obj(u64::MAX, GuestAddress(0x9000 + 64)).unwrap();
        let (mut r0, mut r1, mut r2) = (region.reader(0), region.reader(1), region.reader(2));
        assert_eq!(r0.tag(), Some(tag(7, 1)));
        assert_eq!(r1.tag(), None);
        assert_eq!(r2.tag(), Some(tag(8, 0)));
        m.write_obj(tag(9, 0), GuestAddress(0x5000 + 64)).unwrap();
        assert_eq!(r0.tag(), Some(tag(9, 0)), "every read is a fresh load");
        assert_eq!(s.info().source, "agent");
        assert_eq!(s.info().vcpus, vec![0, 2]);
        assert_eq!(s.info().pages, 2);
    }

    #[test]
    fn pages_outside_ram_are_refused_counted_and_the_old_slots_stay() {
        let (region, s, acct, m) = slots(1);
        s.register(&req(&[0x3000], &[(0, 0)])).unwrap();
        m.write_obj(tag(4, 0), GuestAddress(0x3000)).unwrap();
        let mut r = region.reader(0);
        assert_eq!(r.tag(), Some(tag(4, 0)));
        // In the hole; past the end of the first range; the last page of
        // the second range is fine but the one after it is not.
        for bad in [0x8000_0000u64, 1 << 20, (1 << 32) + (1 << 16)] {
            assert_eq!(
                s.register(&req(&[0x3000 + 0x1000, bad], &[(0, 0)])),
                Err(SlotsRefusal::NotInRam { page: bad })
            );
        }
        assert_eq!(acct.errors().get(GuestError::SlotsNotInRam), 3);
        assert_eq!(r.tag(), Some(tag(4, 0)), "the registration in force stays");
        assert_eq!((s.info().registrations, s.info().refusals), (1, 3));
        assert_eq!(s.register(&req(&[(1 << 32) + 0xf000], &[(0, 0)])), Ok(vec![0]));
    }

    #[test]
    fn unknown_apic_ids_are_refused_and_counted() {
        let (_, s, acct, _) = slots(2);
        let r = req(&[0x3000], &[(0, 0), (2, 1)]);
        let e = s.register(&r).unwrap_err();
        assert_eq!(e, SlotsRefusal::UnknownApicId { apic_id: 2 });
        assert_eq!(e.reason(), "slots_unknown_apic_id");
        assert_eq!(acct.errors().get(GuestError::SlotsUnknownApicId), 1);
        assert_eq!(s.info().source, "none");
        assert!(s.info().vcpus.is_empty());
        // Pages are checked first: both wrong is `slots_not_in_ram`.
        let both = req(&[0x10_0000], &[(9, 0)]);
        assert_eq!(s.register(&both), Err(SlotsRefusal::NotInRam { page: 0x10_0000 }));
    }

    #[test]
    fn the_same_registration_again_is_a_no_op_that_still_answers() {
        let (region, s, _, _) = slots(1);
        let r = req(&[0x3000], &[(0, 5)]);
        assert_eq!(s.register(&r), Ok(vec![0]));
        let installed = region.agent().unwrap();
        assert_eq!(s.register(&r), Ok(vec![0]));
        assert!(Arc::ptr_eq(&installed, &region.agent().unwrap()), "not replaced");
        assert_eq!(s.info().registrations, 1);
        // Another slot is another registration.
        assert_eq!(s.register(&req(&[0x3000], &[(0, 6)])), Ok(vec![0]));
        assert_eq!(s.info().registrations, 2);
        s.clear();
        assert!(region.agent().is_none());
        assert_eq!(s.info().pages, 0);
    }

    fn register_device_region(m: &GuestMemoryMmap, region: &TagRegion, gpa: u64, vcpus: u32) {
        // magic, version, header_len, nr_slots, slots_offset, ring_entries
        // (0), ring_offset: the header of a region of slots only.
        let mut raw = [0u8; 64];
        raw[0..4].copy_from_slice(&abi::MAGIC.to_le_bytes());
        raw[4..6].copy_from_slice(&abi::ABI_VERSION.to_le_bytes());
        raw[6..8].copy_from_slice(&64u16.to_le_bytes());
        raw[8..12].copy_from_slice(&vcpus.to_le_bytes());
        raw[12..16].copy_from_slice(&64u32.to_le_bytes());
        raw[20..24].copy_from_slice(&(64 + 64 * vcpus).to_le_bytes());
        m.write_slice(&raw, GuestAddress(gpa)).unwrap();
        let len = abi::region_len(vcpus, 0) as u64;
        region.set(Some(Registration::new(m, gpa, len, vcpus as usize).unwrap()));
    }

    #[test]
    fn a_device_region_wins_over_the_agents_pages_while_registered() {
        let (region, s, _, m) = slots(2);
        s.register(&req(&[0x3000], &[(0, 0)])).unwrap();
        m.write_obj(tag(1, 0), GuestAddress(0x3000)).unwrap();
        let (mut r0, mut r1) = (region.reader(0), region.reader(1));
        assert_eq!((r0.tag(), r1.tag()), (Some(tag(1, 0)), None));

        register_device_region(&m, &region, 0x10000, 2);
        m.write_obj(tag(2, 0), GuestAddress(0x10000 + 64)).unwrap();
        m.write_obj(tag(3, 0), GuestAddress(0x10000 + 128)).unwrap();
        assert_eq!((r0.tag(), r1.tag()), (Some(tag(2, 0)), Some(tag(3, 0))));
        let info = s.info();
        assert_eq!(
            (info.source.as_str(), info.vcpus, info.pages),
            ("device", vec![0, 1], 1)
        );

        // Unregistering the device's region brings the agent's slots back.
        region.set(None);
        assert_eq!((r0.tag(), r1.tag()), (Some(tag(1, 0)), None));
        s.clear();
        assert_eq!((r0.tag(), r1.tag()), (None, None));
        assert_eq!(s.info().source, "none");
    }
}
