//! The guest side of the tag ABI: the shared region in .bss, registration,
//! the declaration ring (producer side) and tag switches.

use crate::io;
use accounting::abi::{self, RegionHeader, RingEntry, TagSlot};
use core::cell::UnsafeCell;
use core::ptr::addr_of_mut;
use core::sync::atomic::{AtomicU64, Ordering};

/// Tag slots in the region: the most vCPUs this guest supports.
pub const NR_SLOTS: u32 = 64;
/// Ring entries in the region. Large enough that no scenario except the
/// floods ever fills it between two exits (so no forced exit happens and the
/// exit counts stay exact).
pub const RING_ENTRIES: u32 = 4096;
/// Queue tag tables: one per queue of virtio device 0 (the block device).
pub const QTAG_TABLES: u32 = abi::QTAG_QUEUES_PER_DEVICE;
/// Entries per queue tag table: the block driver's queue size.
pub const QTAG_ENTRIES: u32 = 16;
/// Length of the region as registered: header, slots, ring, queue tag
/// tables, throttle words.
pub const REGION_LEN: u32 =
    abi::region_len(NR_SLOTS, RING_ENTRIES) as u32 + 8 * QTAG_TABLES * QTAG_ENTRIES + 8 * NR_SLOTS;
/// Offset of slot 0.
pub const SLOTS_OFFSET: u32 = 64;
/// Offset of ring entry 0.
pub const RING_OFFSET: u32 = 64 + 64 * NR_SLOTS;

/// Offset of the queue tag tables.
pub const QTAG_OFFSET: u32 = RING_OFFSET + 64 * RING_ENTRIES;

/// Offset of the throttle words (one per slot, written by the VMM).
pub const THROTTLE_OFFSET: u32 = QTAG_OFFSET + 8 * QTAG_TABLES * QTAG_ENTRIES;

/// The shared region: header, slots, ring, queue tag tables, throttle
/// words, in that order.
#[repr(C, align(64))]
pub struct Region {
    header: RegionHeader,
    slots: [TagSlot; NR_SLOTS as usize],
    ring: [RingEntry; RING_ENTRIES as usize],
    qtags: [u64; (QTAG_TABLES * QTAG_ENTRIES) as usize],
    throttle: [u64; NR_SLOTS as usize],
}

const _: () = assert!(core::mem::size_of::<Region>() == REGION_LEN as usize);
const _: () = assert!(core::mem::offset_of!(Region, slots) == SLOTS_OFFSET as usize);
const _: () = assert!(core::mem::offset_of!(Region, ring) == RING_OFFSET as usize);
const _: () = assert!(core::mem::offset_of!(Region, qtags) == QTAG_OFFSET as usize);
const _: () = assert!(core::mem::offset_of!(Region, throttle) == THROTTLE_OFFSET as usize);
const _: () = assert!(THROTTLE_OFFSET % 64 == 0);
const _: () = assert!(RING_ENTRIES.is_power_of_two() && RING_ENTRIES <= abi::MAX_RING_ENTRIES);
const _: () = assert!(REGION_LEN <= abi::MAX_REGION_LEN);

/// A static shared between vCPUs (and with the VMM); accessed only through
/// raw pointers and atomics.
#[repr(transparent)]
struct Shared<T>(UnsafeCell<T>);
// SAFETY: all accesses go through raw pointers, with atomics where vCPUs or
// the VMM access the same field concurrently.
unsafe impl<T> Sync for Shared<T> {}

// All zeroes, so it lives in .bss (zeroed by the VMM before start).
// SAFETY: `Region` is plain integers; all-zero is a valid value.
static REGION: Shared<Region> = Shared(UnsafeCell::new(unsafe { core::mem::zeroed() }));

/// Guest-private: ring positions published so far. Producers publish in
/// position order, so when `push` returns every earlier position is complete
/// too, and the VMM's drain at this vCPU's next exit reaches this entry even
/// when several vCPUs produce at once.
static PUBLISHED: AtomicU64 = AtomicU64::new(0);
/// Guest-private: exits forced with an `out` to DEBUG_PORT because the ring
/// was full.
static FORCED_EXITS: AtomicU64 = AtomicU64::new(0);

fn region() -> *mut Region {
    REGION.0.get()
}

/// Guest-physical (= virtual, identity-mapped) address of the region.
pub fn region_gpa() -> u64 {
    region() as u64
}

fn header() -> *mut RegionHeader {
    // SAFETY: in-bounds projection of the static region.
    unsafe { addr_of_mut!((*region()).header) }
}

fn atomic_at(field: *mut u64) -> &'static AtomicU64 {
    // SAFETY: `field` points at an aligned u64 of the static region, which is
    // only ever accessed atomically once the region is registered.
    unsafe { AtomicU64::from_ptr(field) }
}

/// Writes a valid header (before registration; nothing else reads it yet).
pub fn init_header() {
    let h = RegionHeader {
        magic: abi::MAGIC,
        version: abi::ABI_VERSION,
        header_len: core::mem::size_of::<RegionHeader>() as u16,
        nr_slots: NR_SLOTS,
        slots_offset: SLOTS_OFFSET,
        ring_entries: RING_ENTRIES,
        ring_offset: RING_OFFSET,
        ring_reserved: 0,
        ring_consumed: 0,
        ring_rejected: 0,
        qtag_offset: QTAG_OFFSET,
        qtag_entries: QTAG_ENTRIES,
        qtag_tables: QTAG_TABLES,
        throttle_offset: THROTTLE_OFFSET,
    };
    // SAFETY: the region is not registered yet (or registration failed), so
    // neither the VMM nor another vCPU accesses the header now.
    unsafe { header().write_volatile(h) };
}

/// Changes one header field before a (deliberately bad) registration.
pub fn edit_header(f: impl FnOnce(&mut RegionHeader)) {
    // SAFETY: as in `init_header`.
    unsafe {
        let mut h = header().read_volatile();
        f(&mut h);
        header().write_volatile(h);
    }
}

/// Writes, `shift` bytes into the region, the header of a region with
/// `ring_entries` entries that is valid in every respect but its (bad)
/// alignment. Before registration only.
pub fn write_shifted_header(shift: usize, ring_entries: u32) {
    let h = RegionHeader {
        magic: abi::MAGIC,
        version: abi::ABI_VERSION,
        header_len: core::mem::size_of::<RegionHeader>() as u16,
        nr_slots: NR_SLOTS,
        slots_offset: SLOTS_OFFSET,
        ring_entries,
        ring_offset: RING_OFFSET,
        ring_reserved: 0,
        ring_consumed: 0,
        ring_rejected: 0,
        qtag_offset: 0,
        qtag_entries: 0,
        qtag_tables: 0,
        throttle_offset: 0,
    };
    // SAFETY: before registration nothing else reads the region; `shift` is
    // small, so the header stays inside it. Unaligned, hence write_unaligned.
    unsafe { (region().cast::<u8>().add(shift) as *mut RegionHeader).write_unaligned(h) };
}

/// Zeroes the bytes `write_shifted_header(shift, _)` wrote.
pub fn clear_shifted_header(shift: usize) {
    for i in 0..core::mem::size_of::<RegionHeader>() {
        // SAFETY: as in `write_shifted_header`.
        unsafe { region().cast::<u8>().add(shift + i).write_volatile(0) };
    }
}

/// Registers `len` bytes at `gpa`: REG_REGION_GPA (one 64-bit store),
/// REG_REGION_LEN, REG_COMMAND = Register, then reads REG_STATUS.
/// Costs 3 `mmio_write` + 1 `mmio_read`.
pub fn register_at(gpa: u64, len: u32) -> u32 {
    io::mmio_write64(abi::REG_REGION_GPA, gpa);
    io::mmio_write32(abi::REG_REGION_LEN, len);
    io::mmio_write32(abi::REG_COMMAND, abi::Command::Register as u32);
    io::mmio_read32(abi::REG_STATUS)
}

/// Writes `value` to REG_COMMAND and reads REG_STATUS: 1 `mmio_write` +
/// 1 `mmio_read`.
pub fn command(value: u32) -> u32 {
    io::mmio_write32(abi::REG_COMMAND, value);
    io::mmio_read32(abi::REG_STATUS)
}

/// Writes a valid header and registers the region: 3 `mmio_write` +
/// 1 `mmio_read`, all while every slot holds tag 0. Exits with status 3 if
/// the VMM refuses.
pub fn register() {
    init_header();
    let status = register_at(region_gpa(), REGION_LEN);
    if status != abi::Status::Ok as u32 {
        io::print("register failed\n");
        io::exit(3);
    }
}

/// Sets vCPU `vcpu`'s current principal: one 64-bit store, no exit.
#[inline(always)]
pub fn set_tag(vcpu: u32, tag: u64) {
    // SAFETY: `vcpu < NR_SLOTS` (checked at boot); the slot is an aligned u64
    // that only this vCPU writes and the VMM reads.
    let slot = unsafe { addr_of_mut!((*region()).slots[vcpu as usize].tag) };
    atomic_at(slot).store(tag, Ordering::Release);
}

/// Reads the time stamp counter (allowed at CPL3: the VMM leaves CR4.TSD
/// clear).
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Switches vCPU `vcpu` to `tag` and logs the switch (the switch log of
/// docs/tag-abi.md): the sequence odd (a locked store: visible before the
/// time stamp is taken), the entry stamped with the TSC, the tag, then the
/// sequence even, so the VMM can place the switch exactly on the vCPU's run
/// clock. Returns the TSC it logged. No exit.
#[inline(always)]
pub fn switch_logged(vcpu: u32, tag: u64) -> u64 {
    log_with(vcpu, tag, || {
        // SAFETY: LFENCE and RDTSC only order and read.
        unsafe {
            core::arch::x86_64::_mm_lfence();
            core::arch::x86_64::_rdtsc()
        }
    })
}

/// As [`switch_logged`] with any time stamp (what a lying guest does).
#[inline(always)]
pub fn log_at(vcpu: u32, tag: u64, tsc: u64) {
    log_with(vcpu, tag, || tsc);
}

#[inline(always)]
fn log_with(vcpu: u32, tag: u64, stamp: impl FnOnce() -> u64) -> u64 {
    // SAFETY: `vcpu < NR_SLOTS` (checked at boot); the slot's words are
    // aligned u64s that only this vCPU writes and the VMM reads.
    unsafe {
        let slot = addr_of_mut!((*region()).slots[vcpu as usize]);
        let seq = atomic_at(addr_of_mut!((*slot).log_seq));
        let n = seq.load(Ordering::Relaxed) & !1;
        seq.swap(n.wrapping_add(1), Ordering::SeqCst);
        let k = (n / 2) % abi::SWITCH_LOG_ENTRIES as u64;
        let entry = addr_of_mut!((*slot).log[k as usize]);
        let now = stamp();
        atomic_at(addr_of_mut!((*entry).tsc)).store(now, Ordering::Relaxed);
        atomic_at(addr_of_mut!((*entry).tag)).store(tag, Ordering::Relaxed);
        atomic_at(addr_of_mut!((*slot).tag)).store(tag, Ordering::Release);
        seq.store(n.wrapping_add(2), Ordering::Release);
        now
    }
}

/// vCPU `vcpu`'s throttle word, as the VMM wrote it: 0, or
/// `abi::THROTTLE_SPENT` (| `THROTTLE_TENANT`) | the id of the container
/// whose CPU budget is spent. One load, no exit.
#[inline(always)]
pub fn throttle_word(vcpu: u32) -> u64 {
    // SAFETY: `vcpu < NR_SLOTS` (checked at boot); the word is an aligned
    // u64 that only the VMM writes.
    let w = unsafe { addr_of_mut!((*region()).throttle[vcpu as usize]) };
    atomic_at(w).load(Ordering::Acquire)
}

/// Overwrites vCPU `vcpu`'s log sequence (what a lying guest does).
pub fn set_log_seq(vcpu: u32, n: u64) {
    // SAFETY: as in `log_at`.
    let seq = unsafe { addr_of_mut!((*region()).slots[vcpu as usize].log_seq) };
    atomic_at(seq).store(n, Ordering::Release);
}

/// Stores the explicit tag of the request whose chain starts at descriptor
/// `head` of queue `queue` of virtio device 0 (0: none, the notifier's tag
/// applies). Before the chain is published; heads beyond the table are
/// ignored.
pub fn set_queue_tag(queue: u32, head: u16, tag: u64) {
    if queue >= QTAG_TABLES || u32::from(head) >= QTAG_ENTRIES {
        return;
    }
    let i = (abi::qtag_table(0, queue) * QTAG_ENTRIES + u32::from(head)) as usize;
    // SAFETY: `i` is inside `qtags` (both bounds checked above); an aligned
    // u64 that this vCPU writes and the VMM's device thread reads.
    let entry = unsafe { addr_of_mut!((*region()).qtags[i]) };
    atomic_at(entry).store(tag, Ordering::Release);
}

/// `header.ring_consumed`, as last written by the VMM.
pub fn ring_consumed() -> u64 {
    // SAFETY: in-bounds projection.
    atomic_at(unsafe { addr_of_mut!((*header()).ring_consumed) }).load(Ordering::Acquire)
}

/// `header.ring_rejected`, as last written by the VMM.
pub fn ring_rejected() -> u64 {
    // SAFETY: in-bounds projection.
    atomic_at(unsafe { addr_of_mut!((*header()).ring_rejected) }).load(Ordering::Acquire)
}

/// Exits forced so far because the ring was full.
pub fn forced_exits() -> u64 {
    FORCED_EXITS.load(Ordering::Relaxed)
}

/// A ring entry's contents (everything but `seq`).
#[derive(Clone, Copy)]
pub struct Decl {
    pub kind: u16,
    /// The `name_len` field as written (may lie; at most 32 bytes are copied).
    pub name_len: u16,
    pub id: u32,
    pub arg: u32,
    pub arg64: u64,
    pub name: [u8; abi::MAX_NAME_LEN],
}

impl Decl {
    /// An entry of `kind` with the given ids and no name.
    pub const fn new(kind: u16, id: u32, arg: u32) -> Self {
        Decl {
            kind,
            name_len: 0,
            id,
            arg,
            arg64: 0,
            name: [0; abi::MAX_NAME_LEN],
        }
    }

    /// Sets the name (at most 32 bytes copied) and `name_len = name.len()`.
    pub fn named(mut self, name: &[u8]) -> Self {
        let mut i = 0;
        while i < name.len() && i < self.name.len() {
            self.name[i] = name[i];
            i += 1;
        }
        self.name_len = name.len() as u16;
        self
    }
}

/// Pushes one declaration (see `push_with_seq`).
pub fn push(d: &Decl) {
    push_with_seq(d, 0);
}

/// Declares container `id` under `parent` (0 = top level) named `name`.
pub fn declare_container(id: u32, parent: u32, name: &[u8]) {
    push(&Decl::new(abi::EntryKind::DeclareContainer as u16, id, parent).named(name));
}

/// Begins request `id` in container `container`, with guest-side id `arg64`.
pub fn begin_request(id: u32, container: u32, arg64: u64) {
    let mut d = Decl::new(abi::EntryKind::BeginRequest as u16, id, container);
    d.arg64 = arg64;
    push(&d);
}

/// Ends request `id`.
pub fn end_request(id: u32) {
    push(&Decl::new(abi::EntryKind::EndRequest as u16, id, 0));
}

/// The MPMC producer protocol of `RingEntry`: claim position `p` with a
/// fetch-add on `ring_reserved`; wait until `p - ring_consumed <
/// ring_entries`, forcing an exit with one `out` to DEBUG_PORT each time the
/// ring is found full (the VMM drains the ring at every exit); fill the
/// entry; wait until all earlier positions are published; store
/// `seq = p + 1 + seq_bias` with release ordering (`seq_bias` is 0 except
/// when testing the VMM with an entry from "the future").
///
/// No exit happens unless the ring is full.
pub fn push_with_seq(d: &Decl, seq_bias: u64) {
    // SAFETY: in-bounds projection.
    let reserved = atomic_at(unsafe { addr_of_mut!((*header()).ring_reserved) });
    let p = reserved.fetch_add(1, Ordering::AcqRel);
    while p.wrapping_sub(ring_consumed()) >= u64::from(RING_ENTRIES) {
        FORCED_EXITS.fetch_add(1, Ordering::Relaxed);
        io::outb(abi::DEBUG_PORT, 0);
    }
    let idx = (p % u64::from(RING_ENTRIES)) as usize;
    // SAFETY: `idx < RING_ENTRIES`; position `p` is ours alone (claimed by
    // the fetch-add) and the VMM has consumed the entry's previous use.
    unsafe {
        let e = addr_of_mut!((*region()).ring[idx]);
        addr_of_mut!((*e).kind).write_volatile(d.kind);
        addr_of_mut!((*e).name_len).write_volatile(d.name_len);
        addr_of_mut!((*e).reserved).write_volatile(0);
        addr_of_mut!((*e).id).write_volatile(d.id);
        addr_of_mut!((*e).arg).write_volatile(d.arg);
        addr_of_mut!((*e).arg64).write_volatile(d.arg64);
        let name = addr_of_mut!((*e).name) as *mut u64;
        for (i, chunk) in d.name.chunks_exact(8).enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            name.add(i).write_volatile(u64::from_le_bytes(w));
        }
        while PUBLISHED.load(Ordering::Acquire) != p {
            core::hint::spin_loop();
        }
        let seq = atomic_at(addr_of_mut!((*e).seq));
        seq.store(p + 1 + seq_bias, Ordering::Release);
    }
    PUBLISHED.store(p + 1, Ordering::Release);
}
