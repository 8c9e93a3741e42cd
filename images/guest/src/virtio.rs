//! virtio-mmio for a polling guest (virtio 1.x §4.2, modern devices only):
//! discovery from the command line, the register window, and one split
//! virtqueue (§2.7) whose rings live in `.bss`.
//!
//! Every register access is one `io::mmio_*_at` call, i.e. one exit, so the
//! exit counts of a driver can be read off its code. Ring accesses are plain
//! (volatile/atomic) memory accesses: no exits. No interrupts are used: the
//! driver sets `VIRTQ_AVAIL_F_NO_INTERRUPT` and polls the used ring.

use crate::io;
use core::cell::UnsafeCell;
use core::ptr::addr_of_mut;
use core::sync::atomic::{fence, AtomicU16, Ordering};

/// `MagicValue`: "virt", little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The only transport version this guest drives (virtio 1.x, "modern").
pub const VERSION: u32 = 2;
/// DeviceID of a network device.
pub const DEVICE_ID_NET: u32 = 1;
/// DeviceID of a block device.
pub const DEVICE_ID_BLOCK: u32 = 2;
/// The command-line key announcing a device (Linux's format).
pub const CMDLINE_KEY: &[u8] = b"virtio_mmio.device=";

/// Register offsets in the virtio-mmio window (§4.2.2).
pub mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (§2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// VIRTIO_F_VERSION_1 (feature bit 32).
pub const F_VERSION_1: u64 = 1 << 32;

/// Entries of every virtqueue; the drivers require `QueueNumMax >= 16`.
pub const QUEUE_SIZE: u16 = 16;

/// Parses a number the way Linux's `memparse` does (without the suffix):
/// `0x`-prefixed hexadecimal or decimal. Returns the value and the rest.
fn parse_num(s: &[u8]) -> Option<(u64, &[u8])> {
    let (digits, radix) = match s {
        [b'0', b'x' | b'X', rest @ ..] => (rest, 16),
        _ => (s, 10),
    };
    let mut n: u64 = 0;
    let mut used = 0;
    for &c in digits {
        let d = match c {
            b'0'..=b'9' => u64::from(c - b'0'),
            b'a'..=b'f' if radix == 16 => u64::from(c - b'a' + 10),
            b'A'..=b'F' if radix == 16 => u64::from(c - b'A' + 10),
            _ => break,
        };
        n = n.checked_mul(radix)?.checked_add(d)?;
        used += 1;
    }
    (used > 0).then_some((n, &digits[used..]))
}

/// A number with an optional K/M/G suffix (binary multiples), as in
/// `memparse`.
fn parse_size(s: &[u8]) -> Option<(u64, &[u8])> {
    let (n, rest) = parse_num(s)?;
    let (shift, rest) = match rest {
        [b'k' | b'K', r @ ..] => (10, r),
        [b'm' | b'M', r @ ..] => (20, r),
        [b'g' | b'G', r @ ..] => (30, r),
        r => (0, r),
    };
    let v = n.checked_mul(1u64 << shift)?;
    Some((v, rest))
}

/// Parses the value of one `virtio_mmio.device=` token,
/// `<size>@<base>:<irq>[:<platform id>]` (the IRQ is ignored: this guest
/// polls), and returns the window's base address. `None` for a malformed token, a
/// window too small to hold the block configuration (0x100 + 8 bytes), a
/// misaligned base, or a window not below 4 GiB (the guest maps only the low
/// 4 GiB).
pub fn parse_device(v: &[u8]) -> Option<u64> {
    let (size, rest) = parse_size(v)?;
    let rest = rest.strip_prefix(b"@")?;
    let (base, rest) = parse_num(rest)?;
    let rest = rest.strip_prefix(b":")?;
    let (_irq, rest) = parse_num(rest)?;
    match rest {
        [] => {}
        [b':', id @ ..] => {
            let (_, tail) = parse_num(id)?;
            if !tail.is_empty() {
                return None;
            }
        }
        _ => return None,
    }
    let end = base.checked_add(size)?;
    if size < reg::CONFIG + 8 || base % 4 != 0 || end > 1 << 32 {
        return None;
    }
    Some(base)
}

/// The base addresses of the well-formed `virtio_mmio.device=` tokens of the
/// command line, in order.
pub fn devices(cmdline: &'static [u8]) -> impl Iterator<Item = u64> {
    cmdline
        .split(|&b| b == b' ' || b == b'\0' || b == b'\n' || b == b'\t')
        .filter_map(|tok| tok.strip_prefix(CMDLINE_KEY))
        .filter_map(parse_device)
}

/// A virtio-mmio register window.
#[derive(Clone, Copy)]
pub struct Mmio {
    base: u64,
}

impl Mmio {
    /// One 32-bit load: one `mmio_read` exit.
    #[inline(always)]
    pub fn read(&self, offset: u64) -> u32 {
        io::mmio_read32_at(self.base + offset)
    }

    /// One 8-bit load (device configuration space): one `mmio_read` exit.
    #[inline(always)]
    pub fn read8(&self, offset: u64) -> u8 {
        io::mmio_read8_at(self.base + offset)
    }

    /// One 32-bit store: one `mmio_write` exit.
    #[inline(always)]
    pub fn write(&self, offset: u64, value: u32) {
        io::mmio_write32_at(self.base + offset, value)
    }
}

/// The `n`th (from 0) modern device with `device_id`, probed like [`find`].
pub fn find_nth(cmdline: &'static [u8], device_id: u32, n: usize) -> Option<Mmio> {
    devices(cmdline)
        .map(|base| Mmio { base })
        .filter(|m| {
            m.read(reg::MAGIC_VALUE) == MAGIC
                && m.read(reg::VERSION) == VERSION
                && m.read(reg::DEVICE_ID) == device_id
        })
        .nth(n)
}

/// Probes the announced devices in command-line order and returns the first
/// modern device with `device_id`. Each probe reads MagicValue, then (if it
/// is "virt") Version, then (if it is 2) DeviceID: 1 to 3 `mmio_read` per
/// device probed, exactly 3 when the first token names the device wanted.
pub fn find(cmdline: &'static [u8], device_id: u32) -> Option<Mmio> {
    devices(cmdline).map(|base| Mmio { base }).find(|m| {
        m.read(reg::MAGIC_VALUE) == MAGIC
            && m.read(reg::VERSION) == VERSION
            && m.read(reg::DEVICE_ID) == device_id
    })
}

// ---------------------------------------------------------------------------
// The split virtqueue (§2.7), in .bss
// ---------------------------------------------------------------------------

/// `next` is valid.
pub const DESC_F_NEXT: u16 = 1;
/// Device-writable buffer.
pub const DESC_F_WRITE: u16 = 2;
/// Driver → device: do not interrupt (a hint; this guest never takes one).
const AVAIL_F_NO_INTERRUPT: u16 = 1;

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[repr(C, align(2))]
struct Avail {
    flags: u16,
    idx: u16,
    ring: [u16; QUEUE_SIZE as usize],
    used_event: u16,
}

#[repr(C, align(4))]
#[derive(Clone, Copy)]
struct UsedElem {
    id: u32,
    len: u32,
}

#[repr(C, align(4))]
struct Used {
    flags: u16,
    idx: u16,
    ring: [UsedElem; QUEUE_SIZE as usize],
    avail_event: u16,
}

/// The three rings of one queue, page-aligned (more than the 16/2/4 bytes
/// the spec requires).
#[repr(C, align(4096))]
pub struct Rings {
    desc: [Desc; QUEUE_SIZE as usize],
    avail: Avail,
    used: Used,
}

const _: () = assert!(core::mem::size_of::<Desc>() == 16);
const _: () = assert!(core::mem::offset_of!(Rings, avail) % 2 == 0);
const _: () = assert!(core::mem::offset_of!(Rings, used) % 4 == 0);
const _: () = assert!(core::mem::offset_of!(Used, ring) == 4);

/// A static shared with the device; accessed only through raw pointers,
/// volatile and atomic accesses.
#[repr(transparent)]
pub struct Shared<T>(pub UnsafeCell<T>);
// SAFETY: all accesses go through raw pointers (volatile or atomic); only
// vCPU 0 drives the device.
unsafe impl<T> Sync for Shared<T> {}

impl Rings {
    /// All zeroes, so a static of it lives in .bss (zeroed by the VMM before
    /// start).
    // SAFETY: plain integers; all-zero is a valid value.
    pub const ZERO: Rings = unsafe { core::mem::zeroed() };
}

/// The block device's queue 0.
static RINGS: Shared<Rings> = Shared(UnsafeCell::new(Rings::ZERO));

/// The driver's side of one queue (driven from vCPU 0 only).
pub struct Virtqueue {
    rings: *mut Rings,
    /// Guest-private copy of `avail.idx`.
    next_avail: u16,
    /// `used.idx` as last consumed.
    last_used: u16,
}

/// Why polling the used ring gave up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum UsedError {
    /// `used.idx` did not move within the poll limit.
    Timeout,
    /// The used element names another chain than the one submitted.
    WrongId,
}

/// Spins of `wait_used` before it gives up (several seconds here).
const POLL_LIMIT: u64 = 1 << 28;

impl Virtqueue {
    /// The block device's queue over its static rings; sets
    /// `VIRTQ_AVAIL_F_NO_INTERRUPT`. Call once (before the device sees the
    /// rings).
    pub fn new() -> Self {
        Self::with_rings(&RINGS)
    }

    /// A queue over `rings` (a static that no other queue uses); sets
    /// `VIRTQ_AVAIL_F_NO_INTERRUPT`. Call once per static (before the
    /// device sees the rings).
    pub fn with_rings(rings: &'static Shared<Rings>) -> Self {
        let rings = rings.0.get();
        // SAFETY: in-bounds projection; the device does not know the rings yet.
        unsafe { addr_of_mut!((*rings).avail.flags).write_volatile(AVAIL_F_NO_INTERRUPT) };
        Virtqueue {
            rings,
            next_avail: 0,
            last_used: 0,
        }
    }

    /// Guest-physical addresses of the descriptor table, avail ring and used
    /// ring.
    pub fn addresses(&self) -> (u64, u64, u64) {
        // SAFETY: in-bounds projections of the static rings.
        unsafe {
            (
                addr_of_mut!((*self.rings).desc) as u64,
                addr_of_mut!((*self.rings).avail) as u64,
                addr_of_mut!((*self.rings).used) as u64,
            )
        }
    }

    /// Fills descriptor `i` (`i < QUEUE_SIZE`). No exit.
    pub fn set_desc(&mut self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = Desc {
            addr,
            len,
            flags,
            next,
        };
        // SAFETY: `i % QUEUE_SIZE` indexes the table; the device reads a
        // descriptor only after its chain is published.
        unsafe { addr_of_mut!((*self.rings).desc[usize::from(i % QUEUE_SIZE)]).write_volatile(d) };
    }

    /// Puts chain `head` in the avail ring and publishes it: the ring slot,
    /// then a release fence, then `avail.idx` (release). No exit; the caller
    /// notifies the device.
    pub fn publish(&mut self, head: u16) {
        let slot = usize::from(self.next_avail % QUEUE_SIZE);
        // SAFETY: in-bounds projections; the driver alone writes the avail
        // ring.
        unsafe {
            addr_of_mut!((*self.rings).avail.ring[slot]).write_volatile(head);
            fence(Ordering::Release);
            self.next_avail = self.next_avail.wrapping_add(1);
            AtomicU16::from_ptr(addr_of_mut!((*self.rings).avail.idx))
                .store(self.next_avail, Ordering::Release);
        }
    }

    /// Moves `avail.idx` `ahead` entries past what was published (a hostile
    /// driver's index: more entries than the queue holds).
    pub fn skew_avail_idx(&mut self, ahead: u16) {
        // SAFETY: in-bounds projection; the driver alone writes the avail
        // ring.
        unsafe {
            AtomicU16::from_ptr(addr_of_mut!((*self.rings).avail.idx))
                .store(self.next_avail.wrapping_add(ahead), Ordering::Release);
        }
    }

    /// Polls `used.idx` (memory reads only, no exits) until the device has
    /// used one more chain; checks that it is `head` and returns the length
    /// the device wrote.
    pub fn wait_used(&mut self, head: u16) -> Result<u32, UsedError> {
        // SAFETY: in-bounds projection; `used.idx` is aligned and written by
        // the device with its own atomics.
        let idx = unsafe { AtomicU16::from_ptr(addr_of_mut!((*self.rings).used.idx)) };
        let mut spins: u64 = 0;
        while idx.load(Ordering::Acquire) == self.last_used {
            spins += 1;
            if spins >= POLL_LIMIT {
                return Err(UsedError::Timeout);
            }
            core::hint::spin_loop();
        }
        let slot = usize::from(self.last_used % QUEUE_SIZE);
        self.last_used = self.last_used.wrapping_add(1);
        // SAFETY: in-bounds projection; the element is complete once
        // `used.idx` (acquire) covers it.
        let e = unsafe { addr_of_mut!((*self.rings).used.ring[slot]).read_volatile() };
        if e.id != u32::from(head) {
            return Err(UsedError::WrongId);
        }
        Ok(e.len)
    }

    /// One look at `used.idx` (a memory read, no exit): the next used
    /// element `(id, len)` if the device has used one more chain.
    pub fn poll_used(&mut self) -> Option<(u16, u32)> {
        // SAFETY: as in `wait_used`.
        let idx = unsafe { AtomicU16::from_ptr(addr_of_mut!((*self.rings).used.idx)) };
        if idx.load(Ordering::Acquire) == self.last_used {
            return None;
        }
        let slot = usize::from(self.last_used % QUEUE_SIZE);
        self.last_used = self.last_used.wrapping_add(1);
        // SAFETY: as in `wait_used`.
        let e = unsafe { addr_of_mut!((*self.rings).used.ring[slot]).read_volatile() };
        Some((e.id as u16, e.len))
    }
}

/// Why feature negotiation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Negotiation {
    /// A feature the driver requires was not offered.
    NotOffered,
    /// FEATURES_OK did not stick.
    Refused,
}

/// Feature negotiation, the common start of every driver's initialisation
/// (§3.1.1 steps 1-6): Status = 0, ACKNOWLEDGE, ACKNOWLEDGE|DRIVER; read the
/// 64 offered feature bits; if every bit of `accepted` is offered, write
/// `accepted` as the driver features, set FEATURES_OK and read Status back
/// to confirm it. Exactly 10 `mmio_write` + 3 `mmio_read` when it succeeds.
/// Returns the offered features and the status reached, or the status to
/// fail from and why.
pub fn negotiate(m: Mmio, accepted: u64) -> Result<(u64, u32), (u32, Negotiation)> {
    use status::*;
    m.write(reg::STATUS, 0);
    m.write(reg::STATUS, ACKNOWLEDGE);
    let st = ACKNOWLEDGE | DRIVER;
    m.write(reg::STATUS, st);

    m.write(reg::DEVICE_FEATURES_SEL, 0);
    let lo = m.read(reg::DEVICE_FEATURES);
    m.write(reg::DEVICE_FEATURES_SEL, 1);
    let hi = m.read(reg::DEVICE_FEATURES);
    let offered = u64::from(lo) | u64::from(hi) << 32;
    if offered & accepted != accepted {
        return Err((st, Negotiation::NotOffered));
    }
    m.write(reg::DRIVER_FEATURES_SEL, 0);
    m.write(reg::DRIVER_FEATURES, accepted as u32);
    m.write(reg::DRIVER_FEATURES_SEL, 1);
    m.write(reg::DRIVER_FEATURES, (accepted >> 32) as u32);
    m.write(reg::STATUS, st | FEATURES_OK);
    if m.read(reg::STATUS) & FEATURES_OK == 0 {
        return Err((st, Negotiation::Refused));
    }
    Ok((offered, st | FEATURES_OK))
}

/// Configures queue `index` of a device between FEATURES_OK and DRIVER_OK
/// (§4.2.3.2): QueueSel = `index`, read QueueReady (must be 0), read
/// QueueNumMax (must be at least `QUEUE_SIZE`), QueueNum = `QUEUE_SIZE`,
/// QueueDesc/Driver/Device Low/High, QueueReady = 1. Exactly 9
/// `mmio_write` + 2 `mmio_read` when it succeeds; `false` (after 1 w + 1 or
/// 2 r) when the queue is unavailable.
pub fn setup_queue(m: Mmio, index: u32, queue: &Virtqueue) -> bool {
    m.write(reg::QUEUE_SEL, index);
    if m.read(reg::QUEUE_READY) != 0 {
        return false;
    }
    if m.read(reg::QUEUE_NUM_MAX) < u32::from(QUEUE_SIZE) {
        return false;
    }
    m.write(reg::QUEUE_NUM, u32::from(QUEUE_SIZE));
    let (desc, avail, used) = queue.addresses();
    m.write(reg::QUEUE_DESC_LOW, desc as u32);
    m.write(reg::QUEUE_DESC_HIGH, (desc >> 32) as u32);
    m.write(reg::QUEUE_DRIVER_LOW, avail as u32);
    m.write(reg::QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
    m.write(reg::QUEUE_DEVICE_LOW, used as u32);
    m.write(reg::QUEUE_DEVICE_HIGH, (used >> 32) as u32);
    m.write(reg::QUEUE_READY, 1);
    true
}
