//! A polling virtio-blk driver (virtio 1.x §5.2) over virtio-mmio.
//!
//! Initialisation makes an exactly known number of register accesses (see
//! `Blk::init`); each request afterwards costs exactly one exit: the
//! `QueueNotify` write. Completion is found by polling the used ring.

use crate::virtio::{self, reg, status, Mmio, Shared, UsedError, Virtqueue, DESC_F_NEXT, DESC_F_WRITE};
use core::cell::UnsafeCell;
use core::ptr::addr_of_mut;

/// Request types (§5.2.6).
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;

/// Status byte values.
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;

/// VIRTIO_BLK_F_RO (feature bit 5).
pub const F_RO: u64 = 1 << 5;
/// Bytes of a GET_ID answer.
pub const ID_BYTES: u32 = 20;
/// Bytes of the data buffer (the largest request the guest makes).
pub const DATA_BYTES: usize = 4096;

/// The request header (device-readable).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Header {
    kind: u32,
    reserved: u32,
    sector: u64,
}

/// The one request in flight: data, header, status byte.
#[repr(C, align(4096))]
struct Buffers {
    data: [u8; DATA_BYTES],
    header: Header,
    status: u8,
}

// All zeroes, so it lives in .bss.
// SAFETY: plain integers; all-zero is a valid value.
static BUFS: Shared<Buffers> = Shared(UnsafeCell::new(unsafe { core::mem::zeroed() }));

/// Chains [`Blk::submit`] can have in flight at once (3 descriptors each
/// in the 16-entry queue).
pub const MIX_SLOTS: u16 = 5;

/// Header and status of one chain in flight.
#[repr(C, align(16))]
struct Slot {
    header: Header,
    status: u8,
}

// SAFETY: plain integers; all-zero is a valid value.
static MIX: Shared<[Slot; MIX_SLOTS as usize]> = Shared(UnsafeCell::new(unsafe { core::mem::zeroed() }));

fn bufs() -> *mut Buffers {
    BUFS.0.get()
}

/// Sets the first `len` bytes of the data buffer to `byte` (no exit).
pub fn fill(byte: u8, len: usize) {
    for i in 0..len.min(DATA_BYTES) {
        // SAFETY: in bounds; no request is in flight.
        unsafe { addr_of_mut!((*bufs()).data[i]).write_volatile(byte) };
    }
}

/// Whether the first `len` bytes of the data buffer are all `byte`.
pub fn check(byte: u8, len: usize) -> bool {
    (0..len.min(DATA_BYTES)).all(|i| {
        // SAFETY: in bounds; the device finished with the buffer.
        unsafe { addr_of_mut!((*bufs()).data[i]).read_volatile() == byte }
    })
}

/// Why the device could not be set up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// VIRTIO_F_VERSION_1 not offered.
    NoVersion1,
    /// FEATURES_OK did not stick.
    FeaturesRefused,
    /// Queue 0 already ready, or `QueueNumMax < 16`.
    QueueUnavailable,
    /// DEVICE_NEEDS_RESET or FAILED (or no DRIVER_OK) after DRIVER_OK.
    Refused,
}

/// Why a request got no status.
pub type RequestError = UsedError;

/// The second disk's queue 0 (scenario `blk2`).
static SECOND_RINGS: virtio::Shared<virtio::Rings> =
    virtio::Shared(core::cell::UnsafeCell::new(virtio::Rings::ZERO));

/// An initialised block device.
pub struct Blk {
    mmio: Mmio,
    queue: Virtqueue,
    /// Capacity in 512-byte sectors (config offset 0).
    pub capacity: u64,
    /// VIRTIO_BLK_F_RO was offered (not accepted: the driver accepts
    /// VERSION_1 only).
    pub read_only: bool,
    /// The head of the next chain: 0, 3, 6, 9, 12, 0, ... (five 3-descriptor
    /// chains rotate through the 16 descriptors).
    next_head: u16,
}

impl Blk {
    /// Initialises the device (§3.1.1, §4.2.3): exactly 20 `mmio_write` and
    /// 10 `mmio_read` when it succeeds and the configuration generation
    /// does not change; on an error, the accesses made so far plus one
    /// `mmio_write` (Status |= FAILED).
    ///
    /// Writes: Status = 0, ACKNOWLEDGE, ACKNOWLEDGE|DRIVER; DeviceFeaturesSel
    /// = 0, = 1; DriverFeaturesSel = 0, DriverFeatures = 0, DriverFeaturesSel
    /// = 1, DriverFeatures = 1 (VERSION_1); Status |= FEATURES_OK; QueueSel =
    /// 0; QueueNum = 16; QueueDesc/Driver/Device Low/High (6); QueueReady =
    /// 1; Status |= DRIVER_OK. Reads: DeviceFeatures (2); Status (confirm
    /// FEATURES_OK); QueueReady (must be 0); QueueNumMax; ConfigGeneration,
    /// capacity low, capacity high, ConfigGeneration; Status (after
    /// DRIVER_OK).
    pub fn init(mmio: Mmio) -> Result<Blk, InitError> {
        Self::init_on(mmio, Virtqueue::new())
    }

    /// [`Blk::init`] for a second disk: its queue over its own static
    /// rings (call once; the data buffer is shared, requests go one at a
    /// time).
    pub fn init_second(mmio: Mmio) -> Result<Blk, InitError> {
        Self::init_on(mmio, Virtqueue::with_rings(&SECOND_RINGS))
    }

    fn init_on(mmio: Mmio, queue: Virtqueue) -> Result<Blk, InitError> {
        use status::*;
        let m = mmio;
        let fail = |st: u32, e: InitError| {
            m.write(reg::STATUS, st | FAILED);
            Err(e)
        };
        let (offered, st) = match virtio::negotiate(m, virtio::F_VERSION_1) {
            Ok(v) => v,
            Err((st, virtio::Negotiation::NotOffered)) => return fail(st, InitError::NoVersion1),
            Err((st, virtio::Negotiation::Refused)) => return fail(st, InitError::FeaturesRefused),
        };
        let read_only = offered & F_RO != 0;

        if !virtio::setup_queue(m, 0, &queue) {
            return fail(st, InitError::QueueUnavailable);
        }

        // capacity: a u64 read as two 32-bit loads, inside a
        // ConfigGeneration check (§2.5.1; one pass unless it changes).
        let capacity = loop {
            let before = m.read(reg::CONFIG_GENERATION);
            let lo = m.read(reg::CONFIG);
            let hi = m.read(reg::CONFIG + 4);
            if m.read(reg::CONFIG_GENERATION) == before {
                break u64::from(lo) | u64::from(hi) << 32;
            }
        };

        m.write(reg::STATUS, st | DRIVER_OK);
        let now = m.read(reg::STATUS);
        if now & (DEVICE_NEEDS_RESET | FAILED) != 0 || now & DRIVER_OK == 0 {
            return fail(st, InitError::Refused);
        }
        Ok(Blk {
            mmio,
            queue,
            capacity,
            read_only,
            next_head: 0,
        })
    }

    /// Submits one request of type `kind` at `sector` with `len` data
    /// bytes as chain `slot` (`0..MIX_SLOTS`, heads 0, 3, ..., 12) without
    /// waiting, its explicit tag (0: none) in the queue tag table; one
    /// exit (the notify). Data goes to or from the shared data buffer (the
    /// callers of this do not look at it); header and status are the
    /// slot's own. Not to be mixed with [`Blk::request`] on one device.
    pub fn submit(&mut self, slot: u16, kind: u32, sector: u64, len: u32, tag: u64) {
        let slot = slot % MIX_SLOTS;
        let head = slot * 3;
        let m = MIX.0.get();
        crate::acct::set_queue_tag(0, head, tag);
        // SAFETY: in-bounds projections; slot `slot` is not in flight (the
        // caller's bookkeeping), so the device does not access it now.
        let (hdr, st) = unsafe {
            addr_of_mut!((*m)[usize::from(slot)].header).write_volatile(Header {
                kind,
                reserved: 0,
                sector,
            });
            addr_of_mut!((*m)[usize::from(slot)].status).write_volatile(0xff);
            (
                addr_of_mut!((*m)[usize::from(slot)].header) as u64,
                addr_of_mut!((*m)[usize::from(slot)].status) as u64,
            )
        };
        // SAFETY: in-bounds projection of the static buffers.
        let data = unsafe { addr_of_mut!((*bufs()).data) as u64 };
        let dir = if kind == T_IN || kind == T_GET_ID {
            DESC_F_WRITE
        } else {
            0
        };
        let q = &mut self.queue;
        q.set_desc(
            head,
            hdr,
            core::mem::size_of::<Header>() as u32,
            DESC_F_NEXT,
            head + 1,
        );
        q.set_desc(
            head + 1,
            data,
            len.min(DATA_BYTES as u32),
            dir | DESC_F_NEXT,
            head + 2,
        );
        q.set_desc(head + 2, st, 1, DESC_F_WRITE, 0);
        q.publish(head);
        self.mmio.write(reg::QUEUE_NOTIFY, 0);
    }

    /// One look at the used ring (no exit): the slot of a chain
    /// [`Blk::submit`] sent that the device used, and its status byte.
    pub fn poll(&mut self) -> Option<(u16, u8)> {
        let (id, _) = self.queue.poll_used()?;
        let slot = (id / 3) % MIX_SLOTS;
        crate::acct::set_queue_tag(0, id, 0);
        // SAFETY: in-bounds projection; the chain is used, so the device
        // wrote its status byte before publishing `used.idx`.
        let st = unsafe { addr_of_mut!((*MIX.0.get())[usize::from(slot)].status).read_volatile() };
        Some((slot, st))
    }

    /// Puts `head` in the available ring as is (a hostile driver's entry).
    pub fn publish_raw(&mut self, head: u16) {
        self.queue.publish(head);
    }

    /// Claims `ahead` more available entries than were published.
    pub fn skew_avail(&mut self, ahead: u16) {
        self.queue.skew_avail_idx(ahead);
    }

    /// One `QueueNotify` write (one `mmio_write` exit).
    pub fn notify(&mut self) {
        self.mmio.write(reg::QUEUE_NOTIFY, 0);
    }

    /// One request of type `kind` at `sector` with `len` data bytes from/to
    /// the start of the data buffer (`len` = 0: no data descriptor, as for
    /// FLUSH). The data descriptor is device-writable for IN and GET_ID and
    /// device-readable otherwise. Returns the status byte the device wrote.
    ///
    /// Exactly one exit: the `QueueNotify` write (one `mmio_write`), then
    /// polling of the used ring in memory.
    pub fn request(&mut self, kind: u32, sector: u64, len: u32) -> Result<u8, RequestError> {
        self.request_as(kind, sector, len, 0)
    }

    /// As [`Blk::request`], with an explicit tag for the request (0: none)
    /// stored in the queue tag table entry of its head before it is
    /// published, and cleared once it completed.
    pub fn request_as(&mut self, kind: u32, sector: u64, len: u32, tag: u64) -> Result<u8, RequestError> {
        let b = bufs();
        let head = self.next_head;
        crate::acct::set_queue_tag(0, head, tag);
        self.next_head = (head + 3) % 15;
        let q = &mut self.queue;
        // SAFETY: in-bounds projections; the previous request completed, so
        // the device does not access the buffers now.
        let (hdr, data, st) = unsafe {
            addr_of_mut!((*b).header).write_volatile(Header {
                kind,
                reserved: 0,
                sector,
            });
            // Not a valid status: shows whether the device wrote one.
            addr_of_mut!((*b).status).write_volatile(0xff);
            (
                addr_of_mut!((*b).header) as u64,
                addr_of_mut!((*b).data) as u64,
                addr_of_mut!((*b).status) as u64,
            )
        };
        let header_len = core::mem::size_of::<Header>() as u32;
        if len == 0 {
            q.set_desc(head, hdr, header_len, DESC_F_NEXT, head + 1);
            q.set_desc(head + 1, st, 1, DESC_F_WRITE, 0);
        } else {
            let dir = if kind == T_IN || kind == T_GET_ID {
                DESC_F_WRITE
            } else {
                0
            };
            q.set_desc(head, hdr, header_len, DESC_F_NEXT, head + 1);
            q.set_desc(
                head + 1,
                data,
                len.min(DATA_BYTES as u32),
                dir | DESC_F_NEXT,
                head + 2,
            );
            q.set_desc(head + 2, st, 1, DESC_F_WRITE, 0);
        }
        q.publish(head);
        self.mmio.write(reg::QUEUE_NOTIFY, 0);
        let used = q.wait_used(head);
        crate::acct::set_queue_tag(0, head, 0);
        used?;
        // SAFETY: in-bounds projection; the chain is used, so the device
        // wrote the status byte before publishing `used.idx`.
        Ok(unsafe { addr_of_mut!((*b).status).read_volatile() })
    }
}
