//! A polling virtio-vsock driver (virtio 1.2, "Socket Device") over
//! virtio-mmio: stream connections from this guest to host ports.
//!
//! Three queues of 16 entries: receive (0), transmit (1) and event (2; set
//! up, never filled: this guest does not migrate). Every packet starts with
//! the 44-byte little-endian header. The driver keeps one built-in
//! connection (`send`/`recv`), or any number the caller tracks as
//! [`Conn`]s (`send_on`/`recv_on`). It advertises [`BUF_ALLOC`] bytes of
//! receive buffer per connection and consumes everything at once (so a
//! connection's `fwd_cnt` is all it received). Each packet
//! sent costs one exit (the TX `QueueNotify`); each packet received costs
//! one (the RX `QueueNotify` after its buffer is reposted).

use crate::virtio::{self, reg, status, Mmio, Shared, UsedError, Virtqueue, DESC_F_NEXT, DESC_F_WRITE};
use core::cell::UnsafeCell;
use core::ptr::addr_of_mut;

/// DeviceID of a socket device.
pub const DEVICE_ID_VSOCK: u32 = 19;
/// Index of the receive queue.
pub const RX_QUEUE: u32 = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: u32 = 1;
/// Index of the event queue.
pub const EVENT_QUEUE: u32 = 2;
/// Bytes of the packet header.
pub const HDR_LEN: usize = 44;
/// Bytes of each receive buffer: the header and up to 1 KiB of data.
pub const RX_BUF_LEN: usize = HDR_LEN + 1024;
/// Receive buffers posted: one per descriptor of the RX queue.
pub const RX_BUFS: usize = virtio::QUEUE_SIZE as usize;
/// Longest payload `send` takes.
pub const MAX_PAYLOAD: usize = 1024;
/// Receive buffer space advertised per connection.
pub const BUF_ALLOC: u32 = 4096;
/// The host's CID.
pub const HOST_CID: u64 = 2;

/// Packet operations.
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    #[allow(dead_code)] // no scenario asks for credit
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flags: no more receiving, no more sending.
pub const SHUTDOWN_BOTH: u32 = 3;

/// The TX chain's head: one packet in flight at a time, descriptors 0
/// (header) and 1 (payload).
const TX_HEAD: u16 = 0;

#[repr(C, align(4096))]
struct RxBufs([[u8; RX_BUF_LEN]; RX_BUFS]);

#[repr(C, align(4096))]
struct TxBuf {
    hdr: [u8; 64],
    payload: [u8; MAX_PAYLOAD],
}

#[repr(C, align(64))]
struct RxCopy([u8; RX_BUF_LEN]);

static RX_RINGS: Shared<virtio::Rings> = Shared(UnsafeCell::new(virtio::Rings::ZERO));
static TX_RINGS: Shared<virtio::Rings> = Shared(UnsafeCell::new(virtio::Rings::ZERO));
static EV_RINGS: Shared<virtio::Rings> = Shared(UnsafeCell::new(virtio::Rings::ZERO));
// SAFETY: plain bytes; all-zero is a valid value.
static RX: Shared<RxBufs> = Shared(UnsafeCell::new(unsafe { core::mem::zeroed() }));
// SAFETY: as above.
static TX: Shared<TxBuf> = Shared(UnsafeCell::new(unsafe { core::mem::zeroed() }));
// SAFETY: as above.
static RX_COPY: Shared<RxCopy> = Shared(UnsafeCell::new(unsafe { core::mem::zeroed() }));

/// A packet header, as numbers.
#[derive(Clone, Copy, Default)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Hdr {
    fn encode(&self, b: &mut [u8; HDR_LEN]) {
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Option<Hdr> {
        if b.len() < HDR_LEN {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | u64::from(u32_at(i + 4)) << 32;
        Some(Hdr {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16::from_le_bytes([b[28], b[29]]),
            op: u16::from_le_bytes([b[30], b[31]]),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        })
    }
}

/// One stream connection: its two ports and the payload bytes received on
/// it (its `fwd_cnt`). For guests that keep several connections open; the
/// built-in one is `Vsock::{port, peer_port, fwd_cnt}`.
#[derive(Clone, Copy, Default)]
pub struct Conn {
    /// Local (guest) port.
    pub port: u32,
    /// Host port.
    pub peer_port: u32,
    /// Payload bytes received (and consumed) on it.
    pub fwd_cnt: u32,
}

/// Why the device could not be set up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    Features,
    FeaturesRefused,
    QueueUnavailable,
    Refused,
}

/// An initialised socket device.
pub struct Vsock {
    mmio: Mmio,
    rx: Virtqueue,
    tx: Virtqueue,
    /// This guest's CID (configuration space offset 0).
    pub cid: u64,
    /// Local port of the connection.
    pub port: u32,
    /// Host port of the connection.
    pub peer_port: u32,
    /// Payload bytes received (and consumed) on the connection.
    pub fwd_cnt: u32,
}

fn rx_buf(i: u16) -> *mut u8 {
    // SAFETY: in-bounds projection (callers pass i < RX_BUFS).
    unsafe { addr_of_mut!((*RX.0.get()).0[usize::from(i)]) as *mut u8 }
}

impl Vsock {
    /// Initialises the device: feature negotiation (VERSION_1 only), the
    /// three queues, the CID (two 32-bit config reads), the receive buffers,
    /// DRIVER_OK and one RX notify.
    pub fn init(mmio: Mmio) -> Result<Vsock, InitError> {
        use status::*;
        let m = mmio;
        let fail = |st: u32, e: InitError| {
            m.write(reg::STATUS, st | FAILED);
            Err(e)
        };
        let st = match virtio::negotiate(m, virtio::F_VERSION_1) {
            Ok((_, st)) => st,
            Err((st, virtio::Negotiation::NotOffered)) => return fail(st, InitError::Features),
            Err((st, virtio::Negotiation::Refused)) => return fail(st, InitError::FeaturesRefused),
        };
        let mut rx = Virtqueue::with_rings(&RX_RINGS);
        let tx = Virtqueue::with_rings(&TX_RINGS);
        let ev = Virtqueue::with_rings(&EV_RINGS);
        if !virtio::setup_queue(m, RX_QUEUE, &rx)
            || !virtio::setup_queue(m, TX_QUEUE, &tx)
            || !virtio::setup_queue(m, EVENT_QUEUE, &ev)
        {
            return fail(st, InitError::QueueUnavailable);
        }
        let cid = u64::from(m.read(reg::CONFIG)) | u64::from(m.read(reg::CONFIG + 4)) << 32;
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
        Ok(Vsock {
            mmio,
            rx,
            tx,
            cid,
            port: 0,
            peer_port: 0,
            fwd_cnt: 0,
        })
    }

    fn header(&self, c: &Conn, op: u16, len: usize, flags: u32) -> Hdr {
        Hdr {
            src_cid: self.cid,
            dst_cid: HOST_CID,
            src_port: c.port,
            dst_port: c.peer_port,
            len: len as u32,
            type_: 1,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: c.fwd_cnt,
        }
    }

    /// The built-in connection (`port`, `peer_port`, `fwd_cnt`).
    fn own(&self) -> Conn {
        Conn {
            port: self.port,
            peer_port: self.peer_port,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Sends one packet (`op`, `payload` of at most `MAX_PAYLOAD` bytes,
    /// `flags`) on the connection: one exit (the TX notify).
    pub fn send(&mut self, op: u16, payload: &[u8], flags: u32) -> Result<(), UsedError> {
        let c = self.own();
        self.send_on(&c, op, payload, flags)
    }

    /// Sends one packet on connection `c` (see [`Vsock::send`]): one exit.
    pub fn send_on(&mut self, c: &Conn, op: u16, payload: &[u8], flags: u32) -> Result<(), UsedError> {
        let t = TX.0.get();
        let len = payload.len().min(MAX_PAYLOAD);
        let mut h = [0u8; HDR_LEN];
        self.header(c, op, len, flags).encode(&mut h);
        for (i, &b) in h.iter().enumerate() {
            // SAFETY: in bounds; the previous chain was used.
            unsafe { addr_of_mut!((*t).hdr[i]).write_volatile(b) };
        }
        for (i, &b) in payload[..len].iter().enumerate() {
            // SAFETY: in bounds (len <= MAX_PAYLOAD); as above.
            unsafe { addr_of_mut!((*t).payload[i]).write_volatile(b) };
        }
        // SAFETY: in-bounds projections of the static.
        let (hdr, data) = unsafe { (addr_of_mut!((*t).hdr) as u64, addr_of_mut!((*t).payload) as u64) };
        let q = &mut self.tx;
        if len == 0 {
            q.set_desc(TX_HEAD, hdr, HDR_LEN as u32, 0, 0);
        } else {
            q.set_desc(TX_HEAD, hdr, HDR_LEN as u32, DESC_F_NEXT, TX_HEAD + 1);
            q.set_desc(TX_HEAD + 1, data, len as u32, 0, 0);
        }
        q.publish(TX_HEAD);
        self.mmio.write(reg::QUEUE_NOTIFY, TX_QUEUE);
        q.wait_used(TX_HEAD).map(|_| ())
    }

    /// Polls the RX used ring (memory reads only) up to `polls` times for a
    /// packet; returns its header and payload, copied out, after reposting
    /// the buffer and notifying the device (one exit). Payload bytes count
    /// as consumed at once (`fwd_cnt`), whatever connection they came on.
    pub fn recv(&mut self, polls: u64) -> Option<(Hdr, &[u8])> {
        let (h, n) = self.recv_raw(polls)?;
        if h.op == op::RW {
            self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        }
        Some((h, rx_payload(n)))
    }

    /// As [`Vsock::recv`], but RW payload counts as consumed on `c` only, and
    /// only when the packet belongs to `c` (the caller checks the ports).
    pub fn recv_on(&mut self, c: &mut Conn, polls: u64) -> Option<(Hdr, &[u8])> {
        let (h, n) = self.recv_raw(polls)?;
        if h.op == op::RW && h.dst_port == c.port && h.src_port == c.peer_port {
            c.fwd_cnt = c.fwd_cnt.wrapping_add(n as u32);
        }
        Some((h, rx_payload(n)))
    }

    /// Waits for a packet, copies it into `RX_COPY`, reposts its buffer and
    /// notifies (one exit); its header and payload length.
    fn recv_raw(&mut self, polls: u64) -> Option<(Hdr, usize)> {
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
            n = (len as usize).min(RX_BUF_LEN);
            let src = rx_buf(id);
            for i in 0..n {
                // SAFETY: i < n <= RX_BUF_LEN: inside buffer `id` and the
                // copy; the device wrote the buffer before publishing it.
                unsafe { addr_of_mut!((*c).0[i]).write_volatile(src.add(i).read_volatile()) };
            }
            self.rx.publish(id);
            self.mmio.write(reg::QUEUE_NOTIFY, RX_QUEUE);
        }
        // SAFETY: the first `n` bytes of the copy were just written; only
        // this driver touches it, and no slice of it is alive (`recv` and
        // `recv_on` borrow `self` for the slices they return).
        let bytes = unsafe { core::slice::from_raw_parts(addr_of_mut!((*c).0) as *const u8, n) };
        let h = Hdr::decode(bytes)?;
        let end = (HDR_LEN + h.len as usize).min(bytes.len());
        Some((h, end - HDR_LEN))
    }
}

/// The `n` payload bytes of the packet last copied into `RX_COPY`.
fn rx_payload<'a>(n: usize) -> &'a [u8] {
    let c = RX_COPY.0.get();
    // SAFETY: `recv_raw` wrote the header and `n` payload bytes (n <=
    // RX_BUF_LEN - HDR_LEN) just before; callers tie the slice to a borrow
    // of the driver, which is the only writer of the copy.
    unsafe { core::slice::from_raw_parts((addr_of_mut!((*c).0) as *const u8).add(HDR_LEN), n) }
}
