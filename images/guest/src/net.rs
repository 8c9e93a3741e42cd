//! A polling virtio-net driver (virtio 1.x §5.1) over virtio-mmio.
//!
//! Two queues of 16 entries: receive (0) and transmit (1). Every chain the
//! driver hands over starts with the 12-byte virtio-net v1 header (all
//! zeroes on TX: no offloads). Initialisation makes an exactly known number
//! of register accesses (see `Net::init`), including the one RX notify; each
//! sent frame afterwards costs exactly one exit (the TX `QueueNotify`
//! write). Receiving costs no exit: the driver polls the RX used ring and
//! reposts consumed buffers without notifying.

use crate::virtio::{self, reg, status, Mmio, Shared, UsedError, Virtqueue, DESC_F_NEXT, DESC_F_WRITE};
use core::cell::UnsafeCell;
use core::ptr::addr_of_mut;

/// VIRTIO_NET_F_MAC (feature bit 5): the configuration space holds the MAC.
pub const F_MAC: u64 = 1 << 5;
/// Index of the receive queue.
pub const RX_QUEUE: u32 = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: u32 = 1;
/// Bytes of the virtio-net v1 header (`num_buffers` included).
pub const HDR_LEN: usize = 12;
/// Bytes of each receive buffer: the header and a frame.
pub const RX_BUF_LEN: usize = 2048;
/// Receive buffers posted: one per descriptor of the RX queue, each a
/// one-descriptor chain.
pub const RX_BUFS: usize = virtio::QUEUE_SIZE as usize;
/// Longest frame `send` takes (without the header).
pub const MAX_FRAME: usize = 2048 - HDR_LEN;

/// The TX chain's head: one frame is in flight at a time, so the chain is
/// always descriptors 0 (header) and 1 (frame).
const TX_HEAD: u16 = 0;

#[repr(C, align(4096))]
struct RxBufs([[u8; RX_BUF_LEN]; RX_BUFS]);

#[repr(C, align(4096))]
struct TxBuf {
    /// The virtio-net header: never written, so all zeroes.
    hdr: [u8; HDR_LEN],
    pad: [u8; 64 - HDR_LEN],
    frame: [u8; MAX_FRAME],
}

/// The last received frame, copied out of its receive buffer so that the
/// buffer can be reposted at once.
#[repr(C, align(64))]
struct RxCopy([u8; RX_BUF_LEN]);

// All zeroes, so they live in .bss (zeroed by the VMM before start).
static RX_RINGS: Shared<virtio::Rings> = Shared(UnsafeCell::new(virtio::Rings::ZERO));
static TX_RINGS: Shared<virtio::Rings> = Shared(UnsafeCell::new(virtio::Rings::ZERO));
// SAFETY: plain bytes; all-zero is a valid value.
static RX: Shared<RxBufs> = Shared(UnsafeCell::new(unsafe { core::mem::zeroed() }));
// SAFETY: as above.
static TX: Shared<TxBuf> = Shared(UnsafeCell::new(unsafe { core::mem::zeroed() }));
// SAFETY: as above.
static RX_COPY: Shared<RxCopy> = Shared(UnsafeCell::new(unsafe { core::mem::zeroed() }));

/// Why the device could not be set up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// VIRTIO_F_VERSION_1 or VIRTIO_NET_F_MAC not offered.
    Features,
    /// FEATURES_OK did not stick.
    FeaturesRefused,
    /// A queue already ready, or `QueueNumMax < 16`.
    QueueUnavailable,
    /// DEVICE_NEEDS_RESET or FAILED (or no DRIVER_OK) after DRIVER_OK.
    Refused,
}

/// An initialised network device.
pub struct Net {
    mmio: Mmio,
    rx: Virtqueue,
    tx: Virtqueue,
    /// The device's MAC (configuration space offset 0).
    pub mac: [u8; 6],
}

fn rx_buf(i: u16) -> *mut u8 {
    // SAFETY: in-bounds projection (callers pass i < RX_BUFS).
    unsafe { addr_of_mut!((*RX.0.get()).0[usize::from(i)]) as *mut u8 }
}

impl Net {
    /// Initialises the device (§3.1.1, §4.2.3, §5.1.5): exactly 30
    /// `mmio_write` and 16 `mmio_read` when it succeeds and the
    /// configuration generation does not change; on an error, the accesses
    /// made so far plus one `mmio_write` (Status |= FAILED).
    ///
    /// Writes: Status = 0, ACKNOWLEDGE, ACKNOWLEDGE|DRIVER; DeviceFeaturesSel
    /// = 0, = 1; DriverFeaturesSel = 0, DriverFeatures = MAC, DriverFeaturesSel
    /// = 1, DriverFeatures = 1 (VERSION_1); Status |= FEATURES_OK; 9 per
    /// queue (RX, then TX; see `virtio::setup_queue`); Status |= DRIVER_OK;
    /// QueueNotify = 0 (the RX buffers). Reads: DeviceFeatures (2); Status
    /// (confirm FEATURES_OK); QueueReady and QueueNumMax per queue (4);
    /// ConfigGeneration, the 6 MAC bytes (one 8-bit load each),
    /// ConfigGeneration; Status (after DRIVER_OK).
    ///
    /// The 16 receive buffers are posted (descriptors, avail ring) before
    /// DRIVER_OK, and notified once after it.
    pub fn init(mmio: Mmio) -> Result<Net, InitError> {
        use status::*;
        let m = mmio;
        let fail = |st: u32, e: InitError| {
            m.write(reg::STATUS, st | FAILED);
            Err(e)
        };
        let st = match virtio::negotiate(m, virtio::F_VERSION_1 | F_MAC) {
            Ok((_, st)) => st,
            Err((st, virtio::Negotiation::NotOffered)) => return fail(st, InitError::Features),
            Err((st, virtio::Negotiation::Refused)) => return fail(st, InitError::FeaturesRefused),
        };

        let mut rx = Virtqueue::with_rings(&RX_RINGS);
        let tx = Virtqueue::with_rings(&TX_RINGS);
        if !virtio::setup_queue(m, RX_QUEUE, &rx) || !virtio::setup_queue(m, TX_QUEUE, &tx) {
            return fail(st, InitError::QueueUnavailable);
        }

        // The MAC: six byte loads inside a ConfigGeneration check (§2.5.1;
        // one pass unless it changes).
        let mac = loop {
            let before = m.read(reg::CONFIG_GENERATION);
            let mut mac = [0u8; 6];
            for (i, b) in mac.iter_mut().enumerate() {
                *b = m.read8(reg::CONFIG + i as u64);
            }
            if m.read(reg::CONFIG_GENERATION) == before {
                break mac;
            }
        };

        // Post every receive buffer (no exit): descriptor i = buffer i.
        for i in 0..RX_BUFS as u16 {
            rx.set_desc(i, rx_buf(i) as u64, RX_BUF_LEN as u32, DESC_F_WRITE, 0);
            rx.publish(i);
        }

        m.write(reg::STATUS, st | DRIVER_OK);
        let now = m.read(reg::STATUS);
        if now & (DEVICE_NEEDS_RESET | FAILED) != 0 || now & DRIVER_OK == 0 {
            return fail(st, InitError::Refused);
        }
        m.write(reg::QUEUE_NOTIFY, RX_QUEUE);
        Ok(Net { mmio, rx, tx, mac })
    }

    /// Sends `frame` (an Ethernet frame, at most `MAX_FRAME` bytes) as one
    /// chain: the zeroed 12-byte header, then the frame, both
    /// device-readable. `explicit_tag` (0: none) is stored in the queue tag
    /// table of the TX queue (virtio device 0's) for the chain's head before
    /// it is published, and cleared once the chain is used.
    ///
    /// Exactly one exit: the `QueueNotify` write (one `mmio_write`), then
    /// polling of the TX used ring in memory.
    pub fn send(&mut self, frame: &[u8], explicit_tag: u64) -> Result<(), UsedError> {
        let t = TX.0.get();
        let len = frame.len().min(MAX_FRAME);
        for (i, &b) in frame[..len].iter().enumerate() {
            // SAFETY: in bounds (len <= MAX_FRAME); the previous chain was
            // used, so the device does not read the buffer now.
            unsafe { addr_of_mut!((*t).frame[i]).write_volatile(b) };
        }
        // SAFETY: in-bounds projections of the static.
        let (hdr, data) = unsafe { (addr_of_mut!((*t).hdr) as u64, addr_of_mut!((*t).frame) as u64) };
        crate::acct::set_queue_tag(TX_QUEUE, TX_HEAD, explicit_tag);
        let q = &mut self.tx;
        q.set_desc(TX_HEAD, hdr, HDR_LEN as u32, DESC_F_NEXT, TX_HEAD + 1);
        q.set_desc(TX_HEAD + 1, data, len as u32, 0, 0);
        q.publish(TX_HEAD);
        self.mmio.write(reg::QUEUE_NOTIFY, TX_QUEUE);
        let used = q.wait_used(TX_HEAD);
        crate::acct::set_queue_tag(TX_QUEUE, TX_HEAD, 0);
        used.map(|_| ())
    }

    /// Tells the device that receive buffers were reposted (one exit: the
    /// RX `QueueNotify` write). `recv` reposts without notifying; a device
    /// that ran out of buffers waits for this before it reads again.
    pub fn notify_rx(&mut self) {
        self.mmio.write(reg::QUEUE_NOTIFY, RX_QUEUE);
    }

    /// Polls the RX used ring (memory reads only, no exits) up to `polls`
    /// times for a received chain. Returns its frame (without the 12-byte
    /// header), copied out of the buffer, which is reposted at once without
    /// a notify; `Some(&[])` for a chain the device used empty (a frame it
    /// dropped); `None` if nothing arrived.
    pub fn recv(&mut self, polls: u64) -> Option<&[u8]> {
        let mut spins: u64 = 0;
        let (id, len) = loop {
            if let Some(e) = self.rx.poll_used() {
                break e;
            }
            spins += 1;
            if spins >= polls {
                return None;
            }
            core::hint::spin_loop();
        };
        let c = RX_COPY.0.get();
        let mut n = 0;
        if usize::from(id) < RX_BUFS {
            let len = (len as usize).min(RX_BUF_LEN);
            n = len.saturating_sub(HDR_LEN);
            let src = rx_buf(id);
            for i in 0..n {
                // SAFETY: HDR_LEN + i < len <= RX_BUF_LEN: inside buffer
                // `id` and inside the copy; the device wrote the buffer
                // before it published the used element.
                unsafe { addr_of_mut!((*c).0[i]).write_volatile(src.add(HDR_LEN + i).read_volatile()) };
            }
            // Repost the buffer (descriptor `id` still describes it).
            self.rx.publish(id);
        }
        // SAFETY: the first `n` bytes of the copy were just written; only
        // this driver (vCPU 0) touches the copy, and the borrow of `self`
        // keeps the next `recv` from overwriting it while the slice lives.
        Some(unsafe { core::slice::from_raw_parts(addr_of_mut!((*c).0) as *const u8, n) })
    }
}
