//! The virtio-vsock packet header and the parsing of TX chains.
//!
//! Every packet starts with a 44-byte little-endian header (virtio 1.2,
//! "Socket Device", `struct virtio_vsock_hdr`); an RW packet carries `len`
//! payload bytes after it. [`parse_tx`] gathers a TX chain into a buffer and
//! checks what can be checked without the device's state: the chain's shape,
//! the header's length field against the bytes present, the 64 KiB bound.

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

/// Bytes of the packet header.
pub const HDR_LEN: usize = 44;
/// Largest payload accepted from the guest or sent to it.
pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;

/// `type`: a stream socket (the only one offered).
pub const TYPE_STREAM: u16 = 1;

/// `op`: not a valid operation.
pub const OP_INVALID: u16 = 0;
/// `op`: connect.
pub const OP_REQUEST: u16 = 1;
/// `op`: connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// `op`: connection refused or torn down.
pub const OP_RST: u16 = 3;
/// `op`: the sender will not receive and/or send any more.
pub const OP_SHUTDOWN: u16 = 4;
/// `op`: data.
pub const OP_RW: u16 = 5;
/// `op`: here is my buffer space.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// `op`: tell me your buffer space.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// The packet header, as numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context ID.
    pub src_cid: u64,
    /// Destination context ID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload bytes after the header.
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub type_: u16,
    /// Operation (`OP_*`).
    pub op: u16,
    /// Operation flags (SHUTDOWN).
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, ever.
    pub fwd_cnt: u32,
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl Header {
    /// Decodes the first [`HDR_LEN`] bytes of `b`; `None` if shorter.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let b = b.get(..HDR_LEN)?;
        Some(Self {
            src_cid: le_u64(b, 0),
            dst_cid: le_u64(b, 8),
            src_port: le_u32(b, 16),
            dst_port: le_u32(b, 20),
            len: le_u32(b, 24),
            type_: le_u16(b, 28),
            op: le_u16(b, 30),
            flags: le_u32(b, 32),
            buf_alloc: le_u32(b, 36),
            fwd_cnt: le_u32(b, 40),
        })
    }

    /// The header's wire form.
    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
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
        b
    }
}

/// Why a chain is not a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// More descriptors than the queue has entries.
    #[error("more descriptors than the queue size")]
    TooManyDescriptors,
    /// The chain loops or points past the table.
    #[error("chain truncated or looping")]
    Truncated,
    /// TX: a descriptor is device-writable; RX: one is device-readable.
    #[error("wrong descriptor direction")]
    Direction,
    /// Shorter than the 44-byte header.
    #[error("shorter than the 44-byte header")]
    TooShort,
    /// The header's `len` is over 64 KiB.
    #[error("payload length over 64 KiB")]
    TooLong,
    /// The header's `len` is more than the chain holds.
    #[error("payload length beyond the chain")]
    LenBeyondChain,
    /// A buffer lies outside guest memory.
    #[error("buffer outside guest memory")]
    OutOfMemory,
}

/// Gathers a TX chain into `buf` (header and payload, device-readable
/// descriptors only, at most `max` of them) and decodes its header. On
/// success `buf` holds exactly the header and `len` payload bytes; bytes
/// after `len` are ignored. `Err` carries the header when one was read.
pub fn parse_tx(
    chain: DescriptorChain<&GuestMemoryMmap>,
    max: u16,
    buf: &mut Vec<u8>,
) -> Result<Header, (PacketError, Option<Header>)> {
    buf.clear();
    let mem = chain.memory();
    let mut n = 0usize;
    let mut last_has_next = false;
    let limit = HDR_LEN + MAX_PKT_PAYLOAD;
    let mut hdr = None;
    for d in chain.clone() {
        n += 1;
        if n > usize::from(max) {
            return Err((PacketError::TooManyDescriptors, hdr));
        }
        last_has_next = d.has_next();
        if d.is_write_only() {
            return Err((PacketError::Direction, hdr));
        }
        let len = usize::try_from(d.len()).unwrap_or(usize::MAX);
        // Copy no more than a packet can hold; the rest of a longer chain
        // is never read (its length is judged against the header below).
        let want = len.min(limit - buf.len());
        let at = buf.len();
        buf.resize(at + want, 0);
        mem.read_slice(&mut buf[at..], d.addr())
            .map_err(|_| (PacketError::OutOfMemory, hdr))?;
        if hdr.is_none() {
            hdr = Header::decode(buf);
        }
    }
    if last_has_next {
        return Err((PacketError::Truncated, hdr));
    }
    let Some(h) = hdr else {
        return Err((PacketError::TooShort, None));
    };
    let len = usize::try_from(h.len).unwrap_or(usize::MAX);
    if len > MAX_PKT_PAYLOAD {
        return Err((PacketError::TooLong, hdr));
    }
    if buf.len() - HDR_LEN < len {
        return Err((PacketError::LenBeyondChain, hdr));
    }
    buf.truncate(HDR_LEN + len);
    Ok(h)
}

/// The device-writable buffers of an RX chain and their total length.
pub fn rx_buffers(
    chain: DescriptorChain<&GuestMemoryMmap>,
    max: u16,
) -> Result<(Vec<(GuestAddress, usize)>, usize), PacketError> {
    let mem = chain.memory();
    let mut bufs = Vec::new();
    let mut total = 0usize;
    let mut last_has_next = false;
    for d in chain.clone() {
        if bufs.len() >= usize::from(max) {
            return Err(PacketError::TooManyDescriptors);
        }
        last_has_next = d.has_next();
        if !d.is_write_only() {
            return Err(PacketError::Direction);
        }
        let len = usize::try_from(d.len()).unwrap_or(0);
        if len > 0 && !mem.check_range(d.addr(), len, Permissions::Write) {
            return Err(PacketError::OutOfMemory);
        }
        total = total.saturating_add(len);
        bufs.push((d.addr(), len));
    }
    if last_has_next {
        return Err(PacketError::Truncated);
    }
    // Room for the header and at least one byte: every chain can carry
    // a control packet or data.
    if total <= HDR_LEN {
        return Err(PacketError::TooShort);
    }
    Ok((bufs, total))
}

/// Writes `parts` one after the other across `bufs`; false if a write
/// failed or they do not fit.
pub fn scatter(mem: &GuestMemoryMmap, bufs: &[(GuestAddress, usize)], parts: &[&[u8]]) -> bool {
    let mut bi = 0usize;
    let mut off = 0usize;
    for part in parts {
        let mut done = 0usize;
        while done < part.len() {
            let Some(&(addr, len)) = bufs.get(bi) else {
                return false;
            };
            if off >= len {
                bi += 1;
                off = 0;
                continue;
            }
            let k = (len - off).min(part.len() - done);
            let Some(at) = addr.checked_add(off as u64) else {
                return false;
            };
            if mem.write_slice(&part[done..done + k], at).is_err() {
                return false;
            }
            done += k;
            off += k;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_round_trips_in_little_endian() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1122_3344,
            dst_port: 1024,
            len: 5,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 7,
        };
        let b = h.encode();
        assert_eq!(&b[16..20], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(Header::decode(&b), Some(h));
        assert_eq!(Header::decode(&b[..43]), None);
    }

    proptest! {
        #[test]
        fn decode_never_panics_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Some(h) = Header::decode(&bytes) {
                prop_assert_eq!(&h.encode()[..], &bytes[..HDR_LEN]);
            } else {
                prop_assert!(bytes.len() < HDR_LEN);
            }
        }
    }
}
