//! The tag ABI, version 1: the byte-level contract between a guest and the VMM.
//!
//! This module builds without `std` so the project's bare-metal guest programs
//! use the very same definitions as the VMM. `docs/tag-abi.md` describes the
//! same layout in prose; a change to either is a change to both, and any
//! incompatible change bumps [`ABI_VERSION`].
//!
//! The pieces:
//! - the **accounting device**, a 4 KiB MMIO window at [`ACCT_MMIO_BASE`],
//!   through which the guest registers one shared region of its own memory;
//! - the **shared region**: a [`RegionHeader`], one [`TagSlot`] per vCPU (the
//!   vCPU's current principal as a single `u64`, so a switch is one plain
//!   store and the VMM never sees half of one), and a declaration ring of
//!   [`RingEntry`] records through which the guest declares containers and
//!   begins and ends requests without an exit per event;
//! - the **bare-metal boot convention** for the project's own guest programs
//!   (ELF note, entry registers, the ports they use).
//!
//! Registers at entry of a bare-metal guest (64-bit mode, CPL3, IOPL3,
//! interrupts off, identity-mapped low 4 GiB, a private stack per vCPU):
//! `rdi` = vCPU id, `rsi` = guest-physical address of the NUL-terminated
//! command line, `rdx` = its length without the NUL, `rcx` = number of vCPUs,
//! `r8` = bytes of guest RAM below the MMIO gap, `r9` = lowest stack address
//! the VMM reserved (all stacks lie in `[r9, r8)`; the guest owns
//! `[0x10_0000, r9)` minus its own image).
//!
//! All multi-byte fields are little-endian. Every `#[repr(C)]` struct here has
//! its size pinned by a compile-time assertion.

/// Version of this ABI. Reported by [`REG_VERSION`] and expected in
/// [`RegionHeader::version`].
pub const ABI_VERSION: u16 = 1;

/// `"RSRC"` read as a little-endian `u32`: the device's [`REG_MAGIC`] and the
/// region header's [`RegionHeader::magic`].
pub const MAGIC: u32 = u32::from_le_bytes(*b"RSRC");

// ---------------------------------------------------------------------------
// The accounting device (MMIO).
// ---------------------------------------------------------------------------

/// Guest-physical base of the accounting device's MMIO window.
pub const ACCT_MMIO_BASE: u64 = 0xd000_0000;
/// Size of the accounting device's MMIO window.
pub const ACCT_MMIO_SIZE: u64 = 0x1000;

/// RO u32: [`MAGIC`].
pub const REG_MAGIC: u64 = 0x00;
/// RO u32: [`ABI_VERSION`].
pub const REG_VERSION: u64 = 0x04;
/// RO u32: number of vCPUs the VM really has.
pub const REG_NR_VCPUS: u64 = 0x08;
/// RO u32: [`Status`] of the last command.
pub const REG_STATUS: u64 = 0x0c;
/// RW u64 (or two u32 halves, low half first): guest-physical address of the
/// region to register.
pub const REG_REGION_GPA: u64 = 0x10;
/// RW u32: length in bytes of the region to register.
pub const REG_REGION_LEN: u64 = 0x18;
/// WO u32: a [`Command`].
pub const REG_COMMAND: u64 = 0x1c;
/// RO u32: the most containers the VMM accepts for this VM.
pub const REG_MAX_CONTAINERS: u64 = 0x20;
/// RO u32: the most requests that may be live at once in this VM.
pub const REG_MAX_LIVE_REQUESTS: u64 = 0x24;
/// RW u32: scratch register with no effect. Guests use it as a harmless MMIO
/// target (the test guest's MMIO workload writes here).
pub const REG_SCRATCH: u64 = 0x40;

/// Commands written to [`REG_COMMAND`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Command {
    /// Register the region at [`REG_REGION_GPA`] / [`REG_REGION_LEN`]. A new
    /// registration replaces the previous one.
    Register = 1,
    /// Forget the registered region; later exits are charged `unattributed`.
    Unregister = 2,
}

impl Command {
    /// Decodes a value written to [`REG_COMMAND`].
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Register),
            2 => Some(Self::Unregister),
            _ => None,
        }
    }
}

/// Result of the last command, read from [`REG_STATUS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// No command yet, or the last one succeeded.
    Ok = 0,
    /// The command value is unknown.
    BadCommand = 1,
    /// The region address is not aligned to 64 bytes.
    Misaligned = 2,
    /// The region is not wholly inside one range of guest RAM.
    NotInRam = 3,
    /// The region is shorter than 64 bytes or than its header says, or
    /// longer than [`MAX_REGION_LEN`].
    BadLength = 4,
    /// The header's magic or version is wrong.
    BadHeader = 5,
    /// Slot or ring geometry is invalid: fewer slots than vCPUs, more than
    /// [`MAX_SLOTS`], a ring size that is not a power of two, or overlapping
    /// parts.
    BadGeometry = 6,
}

impl Status {
    /// Short lower-case name used in logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::BadCommand => "bad_command",
            Self::Misaligned => "misaligned",
            Self::NotInRam => "not_in_ram",
            Self::BadLength => "bad_length",
            Self::BadHeader => "bad_header",
            Self::BadGeometry => "bad_geometry",
        }
    }
}

/// Largest region the VMM accepts.
pub const MAX_REGION_LEN: u32 = 4 << 20;
/// Most tag slots a region may have.
pub const MAX_SLOTS: u32 = 1024;
/// Most ring entries a region may have.
pub const MAX_RING_ENTRIES: u32 = 1 << 15;
/// Required alignment of the region, its slot array and its ring.
pub const REGION_ALIGN: u64 = 64;

// ---------------------------------------------------------------------------
// The shared region.
// ---------------------------------------------------------------------------

/// Header at offset 0 of the shared region. Written by the guest before it
/// registers the region and read by the VMM at registration; afterwards the
/// VMM only writes `ring_consumed` and `ring_rejected`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct RegionHeader {
    /// [`MAGIC`].
    pub magic: u32,
    /// [`ABI_VERSION`].
    pub version: u16,
    /// `size_of::<RegionHeader>()` (64).
    pub header_len: u16,
    /// Number of [`TagSlot`]s; at least the VM's vCPU count.
    pub nr_slots: u32,
    /// Offset of slot 0 from the region start; multiple of 64.
    pub slots_offset: u32,
    /// Number of [`RingEntry`]s; a power of two, at most [`MAX_RING_ENTRIES`];
    /// 0 means no ring.
    pub ring_entries: u32,
    /// Offset of ring entry 0 from the region start; multiple of 64.
    pub ring_offset: u32,
    /// Guest-private: the producers' reservation counter (the VMM never reads
    /// it). Producers claim position `p` with an atomic fetch-add here.
    pub ring_reserved: u64,
    /// Written by the VMM: ring positions consumed so far. A producer may
    /// write position `p` only once `p - ring_consumed < ring_entries`.
    pub ring_consumed: u64,
    /// Written by the VMM: ring entries it rejected as malformed so far.
    pub ring_rejected: u64,
    /// Offset of the first queue tag table ([`QueueTags`]); multiple of 64.
    /// 0 (with `qtag_tables` 0): no tables, every device request is charged
    /// to the vCPU that notified its queue.
    pub qtag_offset: u32,
    /// Entries per queue tag table (a descriptor head `h` has an entry only
    /// if `h < qtag_entries`); at most [`MAX_QTAG_ENTRIES`].
    pub qtag_entries: u32,
    /// Number of queue tag tables; at most [`MAX_QTAG_TABLES`].
    pub qtag_tables: u32,
    /// Offset of the [throttle words](THROTTLE_SPENT): `nr_slots` `u64`s,
    /// word `i` for slot `i`, written by the VMM; a multiple of 64. 0: the
    /// guest has none (a guest CPU limit still holds its vCPUs, it is only
    /// not told). Before guest CPU limits this field was reserved, zero.
    pub throttle_offset: u32,
}

/// Queue tag tables: explicit per-request tags for device queues.
///
/// Table `t = device * QTAG_QUEUES_PER_DEVICE + queue` belongs to queue
/// `queue` of virtio-mmio device `device` (in the order the VMM announces
/// them on the command line). Entry `h` is a `u64` [`tag`] for the request
/// whose descriptor chain starts at head `h`: the guest stores it before it
/// publishes the chain, and the device charges the request to it. An entry
/// of 0 means "no explicit tag": the request goes to the vCPU that notified
/// the queue, as without tables. Tables lie back to back, `qtag_entries * 8`
/// bytes each, from [`RegionHeader::qtag_offset`].
pub struct QueueTags;

/// Queues per device that have a table slot (table index stride).
pub const QTAG_QUEUES_PER_DEVICE: u32 = 4;
/// Most queue tag tables a region may have (8 devices of 4 queues).
pub const MAX_QTAG_TABLES: u32 = 32;
/// Most entries per queue tag table (virtio-mmio queues here have at most 256
/// descriptors; 1024 leaves room).
pub const MAX_QTAG_ENTRIES: u32 = 1024;

/// Index of the queue tag table of `queue` on virtio device `device`.
pub const fn qtag_table(device: u32, queue: u32) -> u32 {
    device * QTAG_QUEUES_PER_DEVICE + queue
}

/// Throttle word bit: the CPU budget of the principal vCPU `i`'s slot named
/// when the VMM last looked is spent (a guest CPU limit,
/// docs/limits-per-container.md "Guest CPU"). The word's low 32 bits are
/// that container's id (0: `unattributed`, or only the tenant's budget is
/// spent). The VMM sets it when it finds the budget spent and clears the
/// word (to 0) once that budget has refilled; while the slot still names
/// that container after the grace period the vCPU is held out of the guest.
pub const THROTTLE_SPENT: u64 = 1 << 63;
/// Throttle word bit: the spent budget is the tenant's (the whole VM's), so
/// switching to another container does not help.
pub const THROTTLE_TENANT: u64 = 1 << 62;
/// Offset of [`RegionHeader::throttle_offset`] in the header.
pub const HDR_THROTTLE_OFFSET: u64 = 60;

/// Offset of [`RegionHeader::ring_consumed`] in the region.
pub const HDR_RING_CONSUMED: u64 = 32;
/// Offset of [`RegionHeader::ring_rejected`] in the region.
pub const HDR_RING_REJECTED: u64 = 40;

/// One vCPU's current principal. Slot `i` belongs to vCPU `i` (the id the
/// VMM passed at boot). One cache line each, so vCPUs never share one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct TagSlot {
    /// The current principal, see [`tag`]. Written by the guest with one
    /// 64-bit store whenever it switches work; read by the VMM at each exit
    /// of that vCPU and by its run-time sampler.
    pub tag: u64,
    /// The switch log's sequence: twice the switches the guest has logged
    /// on this slot, plus 1 while it logs one (0: it keeps no log, and run
    /// time is sampled). Made odd (visibly, before the time stamp is read)
    /// to begin a switch, even (release) after the entry and the new `tag`.
    pub log_seq: u64,
    /// The last [`SWITCH_LOG_ENTRIES`] switches: switch `k` (counting from
    /// 0) is in entry `k % SWITCH_LOG_ENTRIES`.
    pub log: [SwitchEntry; SWITCH_LOG_ENTRIES],
}

/// Entries in a slot's switch log (the slot's spare 48 bytes).
pub const SWITCH_LOG_ENTRIES: usize = 3;
/// Offset of [`TagSlot::log_seq`] in a slot.
pub const SLOT_LOG_SEQ: usize = 8;
/// Offset of [`TagSlot::log`] in a slot.
pub const SLOT_LOG: usize = 16;

/// One logged principal switch: from `tsc` on, the vCPU works for `tag`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct SwitchEntry {
    /// The guest's time stamp counter (`rdtsc`) when it switched.
    pub tsc: u64,
    /// The tag it switched to (the value it stores in [`TagSlot::tag`]).
    pub tag: u64,
}

/// A tag names no container: work is charged to the tenant's `unattributed`
/// container.
pub const NO_CONTAINER: u32 = 0;
/// A tag names no request: work is charged to the container alone.
pub const NO_REQUEST: u32 = 0;

/// Packs a principal into a slot value: container id in the high 32 bits,
/// request id in the low 32 bits.
pub const fn tag(container: u32, request: u32) -> u64 {
    ((container as u64) << 32) | request as u64
}

/// Unpacks a slot value into `(container, request)`.
#[allow(clippy::cast_possible_truncation)] // Splitting the word in halves is the point.
pub const fn untag(tag: u64) -> (u32, u32) {
    ((tag >> 32) as u32, tag as u32)
}

/// Kinds of declaration carried by a [`RingEntry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum EntryKind {
    /// `id` = new container id (non-zero), `arg` = parent container id or
    /// [`NO_CONTAINER`] for a top-level container, `name` = its name.
    DeclareContainer = 1,
    /// `id` = container id. Its live requests end with it.
    RetireContainer = 2,
    /// `id` = request id (non-zero, not live), `arg` = container id,
    /// `arg64` = an optional guest-side 64-bit identifier kept with the
    /// request (0 for none).
    BeginRequest = 3,
    /// `id` = request id (live).
    EndRequest = 4,
}

impl EntryKind {
    /// Decodes [`RingEntry::kind`].
    pub fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(Self::DeclareContainer),
            2 => Some(Self::RetireContainer),
            3 => Some(Self::BeginRequest),
            4 => Some(Self::EndRequest),
            _ => None,
        }
    }
}

/// Longest container name, in bytes.
pub const MAX_NAME_LEN: usize = 32;

/// One declaration in the ring.
///
/// Protocol (multi-producer, single consumer): a producer claims position
/// `p` (e.g. fetch-add on [`RegionHeader::ring_reserved`]), waits until
/// `p - ring_consumed < ring_entries`, fills entry `p % ring_entries` and
/// finally stores `seq = p + 1` with release ordering. The VMM consumes
/// position `c` only when entry `c % ring_entries` has `seq == c + 1`, in
/// order, and then advances `ring_consumed`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct RingEntry {
    /// `position + 1` once the entry is complete; written last.
    pub seq: u64,
    /// An [`EntryKind`].
    pub kind: u16,
    /// Bytes of `name` in use (DeclareContainer), otherwise 0.
    pub name_len: u16,
    /// Zero.
    pub reserved: u32,
    /// Container or request id, per `kind`.
    pub id: u32,
    /// Second id, per `kind`.
    pub arg: u32,
    /// 64-bit argument, per `kind`.
    pub arg64: u64,
    /// Container name: UTF-8, 1..=32 bytes of `[A-Za-z0-9._:-]`.
    pub name: [u8; MAX_NAME_LEN],
}

/// Offset of [`RingEntry::seq`] within an entry.
pub const ENTRY_SEQ: u64 = 0;

const _: () = assert!(core::mem::size_of::<RegionHeader>() == 64);
// The largest geometry the limits allow must fit in the largest region.
const _: () = assert!(
    region_len(MAX_SLOTS, MAX_RING_ENTRIES) + 8 * (MAX_QTAG_TABLES * MAX_QTAG_ENTRIES) as usize
        <= MAX_REGION_LEN as usize
);
const _: () = assert!(core::mem::offset_of!(RegionHeader, qtag_offset) == 48);
const _: () = assert!(core::mem::size_of::<TagSlot>() == 64);
const _: () = assert!(core::mem::offset_of!(TagSlot, log_seq) == SLOT_LOG_SEQ);
const _: () = assert!(core::mem::offset_of!(TagSlot, log) == SLOT_LOG);
const _: () = assert!(core::mem::size_of::<SwitchEntry>() == 16);
const _: () = assert!(core::mem::size_of::<RingEntry>() == 64);
const _: () = assert!(core::mem::offset_of!(RegionHeader, ring_consumed) as u64 == HDR_RING_CONSUMED);
const _: () = assert!(core::mem::offset_of!(RegionHeader, ring_rejected) as u64 == HDR_RING_REJECTED);

/// Size in bytes of a region with `nr_slots` slots and `ring_entries`
/// entries laid out as header, slots, ring.
pub const fn region_len(nr_slots: u32, ring_entries: u32) -> usize {
    64 + 64 * nr_slots as usize + 64 * ring_entries as usize
}

/// A container name is 1..=[`MAX_NAME_LEN`] bytes of `[A-Za-z0-9._:-]`.
/// (`unattributed` is reserved by the VMM; that check is the VMM's.)
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

// ---------------------------------------------------------------------------
// Bare-metal boot convention for the project's own guest programs.
// ---------------------------------------------------------------------------

/// ELF note owner that marks a bare-metal guest program (`PT_NOTE`, name
/// `"Resourceful\0"`).
pub const NOTE_NAME: &[u8] = b"Resourceful\0";
/// ELF note type of the marker; its descriptor is a little-endian `u32` equal
/// to [`ABI_VERSION`].
pub const NOTE_TYPE_BAREMETAL: u32 = 0x5253_0001;

/// Port the guest writes a `u8`/`u16`/`u32` exit status to, ending the VM
/// (like QEMU's isa-debug-exit, without its status transform).
pub const EXIT_PORT: u16 = 0xf4;
/// The POST-code debug port: writes are recorded and otherwise ignored, so it
/// is a harmless port-I/O target.
pub const DEBUG_PORT: u16 = 0x80;
/// The 16550 console's base port (COM1).
pub const COM1_PORT: u16 = 0x3f8;

// ---------------------------------------------------------------------------
// Decoding from raw bytes (used by the VMM; pure, never panics).
// ---------------------------------------------------------------------------

fn le_u16(b: &[u8; 64], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn le_u32(b: &[u8; 64], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn le_u64(b: &[u8; 64], off: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(v)
}

impl RegionHeader {
    /// Decodes a header from its 64 little-endian bytes.
    pub fn from_bytes(b: &[u8; 64]) -> Self {
        Self {
            magic: le_u32(b, 0),
            version: le_u16(b, 4),
            header_len: le_u16(b, 6),
            nr_slots: le_u32(b, 8),
            slots_offset: le_u32(b, 12),
            ring_entries: le_u32(b, 16),
            ring_offset: le_u32(b, 20),
            ring_reserved: le_u64(b, 24),
            ring_consumed: le_u64(b, 32),
            ring_rejected: le_u64(b, 40),
            qtag_offset: le_u32(b, 48),
            qtag_entries: le_u32(b, 52),
            qtag_tables: le_u32(b, 56),
            throttle_offset: le_u32(b, 60),
        }
    }
}

impl RingEntry {
    /// An entry of `kind` with its ids, 64-bit argument and name (cut to
    /// [`MAX_NAME_LEN`] bytes); `seq` stays 0 for the producer to publish.
    pub fn new(kind: EntryKind, id: u32, arg: u32, arg64: u64, name: &[u8]) -> Self {
        let n = if name.len() < MAX_NAME_LEN {
            name.len()
        } else {
            MAX_NAME_LEN
        };
        let mut e = Self {
            seq: 0,
            kind: kind as u16,
            // At most MAX_NAME_LEN (32).
            name_len: u16::try_from(n).unwrap_or(0),
            reserved: 0,
            id,
            arg,
            arg64,
            name: [0; MAX_NAME_LEN],
        };
        e.name[..n].copy_from_slice(&name[..n]);
        e
    }

    /// Decodes an entry from its 64 little-endian bytes.
    pub fn from_bytes(b: &[u8; 64]) -> Self {
        let mut name = [0u8; MAX_NAME_LEN];
        name.copy_from_slice(&b[32..64]);
        Self {
            seq: le_u64(b, 0),
            kind: le_u16(b, 8),
            name_len: le_u16(b, 10),
            reserved: le_u32(b, 12),
            id: le_u32(b, 16),
            arg: le_u32(b, 20),
            arg64: le_u64(b, 24),
            name,
        }
    }

    /// Encodes the entry as 64 little-endian bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..10].copy_from_slice(&self.kind.to_le_bytes());
        b[10..12].copy_from_slice(&self.name_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.reserved.to_le_bytes());
        b[16..20].copy_from_slice(&self.id.to_le_bytes());
        b[20..24].copy_from_slice(&self.arg.to_le_bytes());
        b[24..32].copy_from_slice(&self.arg64.to_le_bytes());
        b[32..64].copy_from_slice(&self.name);
        b
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn tag_roundtrip() {
        assert_eq!(untag(tag(7, 42)), (7, 42));
        assert_eq!(tag(1, 0), 1 << 32);
        assert_eq!(untag(u64::MAX), (u32::MAX, u32::MAX));
    }

    #[test]
    fn ring_entry_new_fills_the_fields_and_cuts_long_names() {
        let e = RingEntry::new(EntryKind::DeclareContainer, 3, 1, 9, b"web");
        assert_eq!(
            (e.seq, e.kind, e.id, e.arg, e.arg64),
            (0, EntryKind::DeclareContainer as u16, 3, 1, 9)
        );
        assert_eq!(&e.name[..usize::from(e.name_len)], b"web");
        let long = [b'x'; MAX_NAME_LEN + 8];
        assert_eq!(
            usize::from(RingEntry::new(EntryKind::DeclareContainer, 1, 0, 0, &long).name_len),
            MAX_NAME_LEN
        );
    }

    #[test]
    fn ring_entry_bytes_roundtrip_and_field_offsets() {
        let mut e = RingEntry {
            seq: 9,
            kind: 3,
            name_len: 2,
            reserved: 0,
            id: 5,
            arg: 6,
            arg64: 77,
            name: [0; 32],
        };
        e.name[..2].copy_from_slice(b"ab");
        let b = e.to_bytes();
        assert_eq!(RingEntry::from_bytes(&b), e);
        // Offsets agree with the repr(C) layout the guest writes through.
        assert_eq!(core::mem::offset_of!(RingEntry, kind), 8);
        assert_eq!(core::mem::offset_of!(RingEntry, id), 16);
        assert_eq!(core::mem::offset_of!(RingEntry, arg64), 24);
        assert_eq!(core::mem::offset_of!(RingEntry, name), 32);
    }

    #[test]
    fn header_from_bytes_reads_fields_at_repr_c_offsets() {
        let mut b = [0u8; 64];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&1u16.to_le_bytes());
        b[6..8].copy_from_slice(&64u16.to_le_bytes());
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        b[12..16].copy_from_slice(&64u32.to_le_bytes());
        b[16..20].copy_from_slice(&8u32.to_le_bytes());
        b[20..24].copy_from_slice(&192u32.to_le_bytes());
        let h = RegionHeader::from_bytes(&b);
        assert_eq!((h.magic, h.version, h.header_len, h.nr_slots), (MAGIC, 1, 64, 2));
        assert_eq!((h.slots_offset, h.ring_entries, h.ring_offset), (64, 8, 192));
        assert_eq!(core::mem::offset_of!(RegionHeader, ring_entries), 16);
    }

    #[test]
    fn names_are_validated() {
        assert!(valid_name(b"web"));
        assert!(valid_name(b"a.b_c:d-1"));
        assert!(!valid_name(b""));
        assert!(!valid_name(b"has space"));
        assert!(!valid_name(&[0xff]));
        assert!(!valid_name(&[b'a'; 33]));
    }
}
