//! Parsing and validating one virtio-blk descriptor chain (virtio 1.2, 5.2.6).
//!
//! A request is a 16-byte device-readable header (`type: u32`, `reserved:
//! u32`, `sector: u64`), data descriptors (device-writable for IN and GET_ID,
//! device-readable for OUT) and a last device-writable descriptor whose first
//! byte receives the status. Every way a guest can get this wrong is a
//! [`RequestError`]; the [`Malformed`] answer also says whether a status byte
//! was found, so that the device can still tell the guest IOERR.

use std::ops::Deref;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory, Permissions};

/// Bytes in a sector.
pub const SECTOR_SIZE: u64 = 512;
/// Bytes of the request header.
pub const HEADER_LEN: u32 = 16;
/// Bytes of a GET_ID answer.
pub const ID_BYTES: usize = 20;

/// Request types.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Write.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Flush.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Device ID string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: I/O error (and every malformed request).
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: request type not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// Read sectors into the data buffers.
    In,
    /// Write the data buffers to sectors.
    Out,
    /// Make earlier writes durable.
    Flush,
    /// Write the device's serial to the data buffers.
    GetId,
    /// A type this device does not know.
    Unsupported(u32),
}

/// A validated request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// What it asks for.
    pub kind: RequestKind,
    /// First sector (IN and OUT).
    pub sector: u64,
    /// Data buffers, each wholly inside guest memory.
    pub data: Vec<(GuestAddress, u32)>,
    /// Where the status byte goes (inside guest memory).
    pub status_addr: GuestAddress,
}

impl Request {
    /// Total bytes of the data buffers.
    pub fn data_len(&self) -> u64 {
        self.data.iter().map(|&(_, len)| u64::from(len)).sum()
    }
}

/// Why a chain is not a valid request.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// The head index is outside the table, or its descriptor unreadable.
    #[error("empty descriptor chain")]
    EmptyChain,
    /// A descriptor's `next` points back into the chain.
    #[error("descriptor chain loops")]
    DescriptorLoop,
    /// More descriptors than the queue size (through an indirect table).
    #[error("descriptor chain longer than the queue")]
    ChainTooLong,
    /// The chain stops at a `next` outside the table, or passes 4 GiB.
    #[error("descriptor chain truncated: bad next index or over 4 GiB")]
    ChainTruncated,
    /// Only one descriptor: no room for both header and status.
    #[error("no status descriptor")]
    MissingStatus,
    /// The last descriptor is device-readable.
    #[error("status descriptor is not device-writable")]
    StatusNotWritable,
    /// The last descriptor has length 0.
    #[error("status descriptor too short")]
    StatusTooShort,
    /// The status byte is outside guest memory.
    #[error("status descriptor outside guest memory")]
    StatusOutOfMemory,
    /// The header descriptor is device-writable.
    #[error("header in a device-writable descriptor")]
    HeaderWriteOnly,
    /// The header descriptor is shorter than 16 bytes.
    #[error("header shorter than 16 bytes")]
    HeaderTooShort,
    /// The header is outside guest memory.
    #[error("header outside guest memory")]
    HeaderOutOfMemory,
    /// A data descriptor has the wrong direction for the request type.
    #[error("data descriptor has the wrong direction")]
    DataDirection,
    /// A data buffer is outside guest memory.
    #[error("data descriptor outside guest memory")]
    DataOutOfMemory,
    /// An address plus a length, or the total data length, overflows.
    #[error("data length overflows")]
    LengthOverflow,
    /// IN/OUT data length not a multiple of 512.
    #[error("data length not a multiple of 512")]
    UnalignedLength,
    /// The request runs past the end of the disk.
    #[error("request past the end of the disk")]
    SectorOutOfRange,
}

/// A chain that is not a valid request, and where its status byte is if one
/// was found (the device then answers IOERR there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// What is wrong.
    pub error: RequestError,
    /// The validated status byte, if the chain has one.
    pub status_addr: Option<GuestAddress>,
    /// The request's kind, once its header could be read: a write past the
    /// end of the disk is still a (failed) write.
    pub kind: Option<RequestKind>,
}

#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Header {
    kind: u32,
    reserved: u32,
    sector: u64,
}

// SAFETY: `Header` is plain old data: integers only, no padding, any bit
// pattern is valid.
unsafe impl ByteValued for Header {}

fn fail(error: RequestError, status_addr: Option<GuestAddress>) -> Malformed {
    Malformed {
        error,
        status_addr,
        kind: None,
    }
}

/// Whether the descriptors, followed from `head`, revisit an index.
fn revisits(head: u16, descs: &[Descriptor]) -> bool {
    let mut seen = std::collections::HashSet::with_capacity(descs.len());
    seen.insert(head);
    descs
        .iter()
        .filter(|d| d.has_next())
        .any(|d| !seen.insert(d.next()))
}

/// Parses `chain` of a queue of size `queue_size` for a disk of `disk_sectors`.
pub fn parse<M>(
    mut chain: DescriptorChain<M>,
    disk_sectors: u64,
    queue_size: u16,
) -> Result<Request, Malformed>
where
    M: Deref,
    M::Target: GuestMemory,
{
    use RequestError as E;
    let head = chain.head_index();
    let max = usize::from(queue_size);
    let descs: Vec<Descriptor> = chain.by_ref().take(max + 1).collect();
    let mem = chain.memory();

    let (Some(first), Some(last)) = (descs.first(), descs.last()) else {
        return Err(fail(E::EmptyChain, None));
    };
    if descs.len() > max {
        return Err(fail(E::ChainTooLong, None));
    }
    if last.has_next() {
        let e = if revisits(head, &descs) {
            E::DescriptorLoop
        } else {
            E::ChainTruncated
        };
        return Err(fail(e, None));
    }
    if descs.len() < 2 {
        return Err(fail(E::MissingStatus, None));
    }

    // The status byte first, so that every later error can be answered.
    if !last.is_write_only() {
        return Err(fail(E::StatusNotWritable, None));
    }
    if last.len() < 1 {
        return Err(fail(E::StatusTooShort, None));
    }
    if !mem.check_range(last.addr(), 1, Permissions::Write) {
        return Err(fail(E::StatusOutOfMemory, None));
    }
    let status = Some(last.addr());

    if first.is_write_only() {
        return Err(fail(E::HeaderWriteOnly, status));
    }
    if first.len() < HEADER_LEN {
        return Err(fail(E::HeaderTooShort, status));
    }
    let header: Header = mem
        .read_obj(first.addr())
        .map_err(|_| fail(E::HeaderOutOfMemory, status))?;
    let (kind, sector) = (u32::from_le(header.kind), u64::from_le(header.sector));
    let kind = match kind {
        VIRTIO_BLK_T_IN => RequestKind::In,
        VIRTIO_BLK_T_OUT => RequestKind::Out,
        VIRTIO_BLK_T_FLUSH => RequestKind::Flush,
        VIRTIO_BLK_T_GET_ID => RequestKind::GetId,
        other => RequestKind::Unsupported(other),
    };

    // From here on the kind is known and travels with every error.
    let failk = |error: RequestError, status_addr: Option<GuestAddress>| Malformed {
        error,
        status_addr,
        kind: Some(kind),
    };
    let middle = &descs[1..descs.len() - 1];
    let mut data = Vec::with_capacity(middle.len());
    let mut total: u64 = 0;
    for d in middle {
        let writable_needed = match kind {
            RequestKind::In | RequestKind::GetId => Some(true),
            RequestKind::Out => Some(false),
            RequestKind::Flush | RequestKind::Unsupported(_) => None,
        };
        if writable_needed.is_some_and(|w| w != d.is_write_only()) {
            return Err(failk(E::DataDirection, status));
        }
        if d.addr().0.checked_add(u64::from(d.len())).is_none() {
            return Err(failk(E::LengthOverflow, status));
        }
        let len = usize::try_from(d.len()).map_err(|_| failk(E::LengthOverflow, status))?;
        let perm = if d.is_write_only() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !mem.check_range(d.addr(), len, perm) {
            return Err(failk(E::DataOutOfMemory, status));
        }
        total += u64::from(d.len());
        data.push((d.addr(), d.len()));
    }
    if total > u64::from(u32::MAX) {
        return Err(failk(E::LengthOverflow, status));
    }

    if matches!(kind, RequestKind::In | RequestKind::Out) {
        if !total.is_multiple_of(SECTOR_SIZE) {
            return Err(failk(E::UnalignedLength, status));
        }
        let end = sector.checked_add(total / SECTOR_SIZE);
        if end.is_none_or(|end| end > disk_sectors) {
            return Err(failk(E::SectorOutOfRange, status));
        }
    }
    if matches!(kind, RequestKind::Flush | RequestKind::Unsupported(_)) {
        data.clear();
    }
    Ok(Request {
        kind,
        sector,
        data,
        status_addr: last.addr(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};
    use vm_memory::GuestMemoryMmap;

    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const INDIRECT: u16 = 4;
    const HDR: u64 = 0x1_0000;
    const DATA: u64 = 0x2_0000;
    const STATUS: u64 = 0x3_0000;
    const MEM_END: u64 = 0x10_0000;
    const SECTORS: u64 = 64;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), usize::try_from(MEM_END).unwrap())]).unwrap()
    }

    fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    fn header(m: &GuestMemoryMmap, kind: u32, sector: u64) {
        let h = Header {
            kind: kind.to_le(),
            reserved: 0,
            sector: sector.to_le(),
        };
        m.write_obj(h, GuestAddress(HDR)).unwrap();
    }

    /// Builds a chain from `descs` (the mock sets NEXT and next) and parses it.
    fn parse_descs(m: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Result<Request, Malformed> {
        let q = MockSplitQueue::new(m, 16);
        parse(q.build_desc_chain(descs).unwrap(), SECTORS, 16)
    }

    /// Writes `descs` as they are (flags and next untouched) and parses head 0.
    fn parse_raw(
        m: &GuestMemoryMmap,
        descs: &[RawDescriptor],
        queue_size: u16,
    ) -> Result<Request, Malformed> {
        let q = MockSplitQueue::new(m, queue_size);
        parse(q.build_multiple_desc_chains(descs).unwrap(), SECTORS, queue_size)
    }

    fn err(r: Result<Request, Malformed>) -> (RequestError, Option<GuestAddress>) {
        let m = r.unwrap_err();
        (m.error, m.status_addr)
    }

    fn status() -> RawDescriptor {
        raw(STATUS, 1, WRITE, 0)
    }

    #[test]
    fn parse_accepts_a_read() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 3);

        let r = parse_descs(&m, &[raw(HDR, 16, 0, 0), raw(DATA, 1024, WRITE, 0), status()]).unwrap();

        assert_eq!(r.kind, RequestKind::In);
        assert_eq!(r.sector, 3);
        assert_eq!(r.data, vec![(GuestAddress(DATA), 1024)]);
        assert_eq!(r.status_addr, GuestAddress(STATUS));
    }

    #[test]
    fn parse_accepts_write_flush_get_id_and_unknown_types() {
        let m = mem();
        let cases = [
            (VIRTIO_BLK_T_OUT, 0, RequestKind::Out),
            (VIRTIO_BLK_T_FLUSH, 0, RequestKind::Flush),
            (VIRTIO_BLK_T_GET_ID, WRITE, RequestKind::GetId),
            (99, 0, RequestKind::Unsupported(99)),
        ];
        for (kind, flags, want) in cases {
            header(&m, kind, 0);

            let r = parse_descs(&m, &[raw(HDR, 16, 0, 0), raw(DATA, 512, flags, 0), status()]).unwrap();

            assert_eq!(r.kind, want);
        }
    }

    #[test]
    fn parse_rejects_a_descriptor_loop() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 0);
        let descs = [
            raw(HDR, 16, NEXT, 1),
            raw(DATA, 512, WRITE | NEXT, 2),
            raw(STATUS, 1, WRITE | NEXT, 1),
        ];

        assert_eq!(
            err(parse_raw(&m, &descs, 16)),
            (RequestError::DescriptorLoop, None)
        );
    }

    #[test]
    fn parse_rejects_a_next_index_outside_the_table() {
        let m = mem();
        let descs = [raw(HDR, 16, NEXT, 1), raw(STATUS, 1, WRITE | NEXT, 40)];

        assert_eq!(
            err(parse_raw(&m, &descs, 16)),
            (RequestError::ChainTruncated, None)
        );
    }

    #[test]
    fn parse_rejects_a_chain_longer_than_the_queue() {
        let m = mem();
        // An indirect table of 8 descriptors behind a queue of 4.
        let table = 0x8000;
        for i in 0..8u16 {
            let flags = if i == 7 { WRITE } else { NEXT };
            let d = raw(DATA, 512, flags, i + 1);
            m.write_obj(d, GuestAddress(table + 16 * u64::from(i))).unwrap();
        }

        let r = parse_raw(&m, &[raw(table, 8 * 16, INDIRECT, 0)], 4);

        assert_eq!(err(r), (RequestError::ChainTooLong, None));
    }

    #[test]
    fn parse_rejects_an_empty_chain() {
        let m = mem();
        let q = MockSplitQueue::new(&m, 16);
        q.avail().ring().ref_at(0).unwrap().store(40);
        q.avail().idx().store(1);
        let mut queue: Queue = q.create_queue().unwrap();
        let chain = queue.iter(&m).unwrap().next().unwrap();

        assert_eq!(err(parse(chain, SECTORS, 16)), (RequestError::EmptyChain, None));
    }

    #[test]
    fn parse_rejects_bad_status_descriptors_without_a_status_address() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        let cases = [
            (vec![raw(HDR, 16, 0, 0)], RequestError::MissingStatus),
            (
                vec![raw(HDR, 16, 0, 0), raw(STATUS, 1, 0, 0)],
                RequestError::StatusNotWritable,
            ),
            (
                vec![raw(HDR, 16, 0, 0), raw(STATUS, 0, WRITE, 0)],
                RequestError::StatusTooShort,
            ),
            (
                vec![raw(HDR, 16, 0, 0), raw(MEM_END, 1, WRITE, 0)],
                RequestError::StatusOutOfMemory,
            ),
        ];
        for (descs, want) in cases {
            assert_eq!(err(parse_descs(&m, &descs)), (want, None));
        }
    }

    #[test]
    fn parse_rejects_bad_headers_with_the_status_address() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        let cases = [
            (raw(HDR, 16, WRITE, 0), RequestError::HeaderWriteOnly),
            (raw(HDR, 8, 0, 0), RequestError::HeaderTooShort),
            (raw(MEM_END - 8, 16, 0, 0), RequestError::HeaderOutOfMemory),
        ];
        for (hdr, want) in cases {
            let r = parse_descs(&m, &[hdr, status()]);

            assert_eq!(err(r), (want, Some(GuestAddress(STATUS))));
        }
    }

    #[test]
    fn parse_rejects_bad_data_descriptors() {
        let m = mem();
        let cases = [
            (VIRTIO_BLK_T_IN, raw(DATA, 512, 0, 0), RequestError::DataDirection),
            (
                VIRTIO_BLK_T_OUT,
                raw(DATA, 512, WRITE, 0),
                RequestError::DataDirection,
            ),
            (
                VIRTIO_BLK_T_IN,
                raw(MEM_END - 512, 1024, WRITE, 0),
                RequestError::DataOutOfMemory,
            ),
            (
                VIRTIO_BLK_T_IN,
                raw(u64::MAX - 255, 512, WRITE, 0),
                RequestError::LengthOverflow,
            ),
            (
                VIRTIO_BLK_T_IN,
                raw(DATA, 100, WRITE, 0),
                RequestError::UnalignedLength,
            ),
        ];
        for (kind, data, want) in cases {
            header(&m, kind, 0);

            let r = parse_descs(&m, &[raw(HDR, 16, 0, 0), data, status()]);

            assert_eq!(err(r), (want, Some(GuestAddress(STATUS))), "{want:?}");
        }
    }

    #[test]
    fn parse_rejects_a_total_length_over_4_gib() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 0);
        let big = raw(DATA, u32::MAX - 511, WRITE, 0);

        let r = parse_descs(&m, &[raw(HDR, 16, 0, 0), big, big, status()]);

        // virtio-queue stops the chain at 4 GiB; it never reaches the status.
        assert_eq!(err(r), (RequestError::ChainTruncated, None));
    }

    #[test]
    fn parse_rejects_sectors_past_the_end_of_the_disk() {
        let m = mem();
        for sector in [SECTORS - 1, SECTORS + 1, u64::MAX] {
            header(&m, VIRTIO_BLK_T_OUT, sector);

            let r = parse_descs(&m, &[raw(HDR, 16, 0, 0), raw(DATA, 1024, 0, 0), status()]);

            // Still known to be a write, so it is charged as a failed one.
            assert_eq!(
                r.as_ref().map_err(|m| m.kind).unwrap_err(),
                Some(RequestKind::Out)
            );
            assert_eq!(
                err(r),
                (RequestError::SectorOutOfRange, Some(GuestAddress(STATUS)))
            );
        }
    }

    #[test]
    fn parse_accepts_the_last_sector() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, SECTORS - 2);

        let r = parse_descs(&m, &[raw(HDR, 16, 0, 0), raw(DATA, 1024, WRITE, 0), status()]);

        assert!(r.is_ok());
    }

    fn any_addr() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(HDR),
            Just(DATA),
            Just(STATUS),
            0..MEM_END,
            MEM_END - 64..MEM_END + 64,
            any::<u64>(),
        ]
    }

    fn any_desc() -> impl Strategy<Value = (u64, u32, u16, u16)> {
        let len = prop_oneof![Just(0u32), Just(1), Just(16), Just(512), 0..4096u32, any::<u32>()];
        (any_addr(), len, 0..8u16, 0..20u16)
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_descriptor_tables(
            descs in proptest::collection::vec(any_desc(), 16),
            head in 0..20u16,
            kind in prop_oneof![Just(0u32), Just(1), Just(4), Just(8), any::<u32>()],
            sector in prop_oneof![0..SECTORS + 2, any::<u64>()],
        ) {
            let m = mem();
            header(&m, kind, sector);
            let q = MockSplitQueue::new(&m, 16);
            for (i, &(addr, len, flags, next)) in (0u16..).zip(descs.iter()) {
                q.desc_table().store(i, raw(addr, len, flags, next)).unwrap();
            }
            q.avail().ring().ref_at(0).unwrap().store(head);
            q.avail().idx().store(1);
            let mut queue: Queue = q.create_queue().unwrap();
            let chain = queue.iter(&m).unwrap().next().unwrap();

            match parse(chain, SECTORS, 16) {
                Ok(r) => {
                    prop_assert!(m.check_range(r.status_addr, 1, Permissions::Write));
                    prop_assert!(r.data.len() <= 14);
                    for (addr, len) in r.data {
                        prop_assert!(m.check_range(addr, usize::try_from(len).unwrap(), Permissions::Read));
                    }
                }
                Err(e) => if let Some(s) = e.status_addr {
                    prop_assert!(m.check_range(s, 1, Permissions::Write));
                },
            }
        }
    }
}
