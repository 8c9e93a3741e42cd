//! virtio-blk request parsing: one descriptor chain, built from fuzzer input
//! in a small guest memory with a hole, through the real
//! `devices::virtio::block::parse`.
//!
//! The input is decoded with `arbitrary` into: a queue size, the head index
//! the avail ring offers, the disk size, the descriptor table (each address
//! either in a scratch area, anywhere near guest memory, or any u64), an
//! optional request header in the scratch area, and blobs of bytes written
//! there too (more headers, indirect tables).
//! `parse` must not panic; when it accepts the chain, the request must keep
//! every promise `Request` documents.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use devices::virtio::block::{parse, Malformed, Request, RequestError, RequestKind};

/// Guest RAM: two adjacent regions, a hole, and a third region.
const REGIONS: [(u64, u64); 3] = [(0, 0x4_0000), (0x4_0000, 0x8_0000), (0xc_0000, 0x10_0000)];
const MEM_END: u64 = 0x10_0000;
const DESC_TABLE: u64 = 0x0;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const SCRATCH: u64 = 0x1_0000;
const MAX_QUEUE: u16 = 256;

#[derive(Arbitrary, Debug)]
enum Addr {
    /// `SCRATCH + offset`: where the blobs go.
    Scratch(u16),
    /// Anywhere up to a little past the end of guest memory.
    Near(u32),
    /// Any address at all (overflows, far outside memory).
    Raw(u64),
}

impl Addr {
    fn get(&self) -> u64 {
        match *self {
            Addr::Scratch(o) => SCRATCH + u64::from(o),
            Addr::Near(a) => u64::from(a) % (MEM_END + 0x1000),
            Addr::Raw(a) => a,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Desc {
    addr: Addr,
    len: u32,
    flags: u16,
    next: u16,
}

#[derive(Arbitrary, Debug)]
enum Sectors {
    Small(u16),
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
struct Input {
    queue_size_log2: u8,
    head: u16,
    sectors: Sectors,
    descs: Vec<Desc>,
    /// A request header at `SCRATCH + offset`: type IN, OUT, FLUSH,
    /// GET_ID or the raw value, and a sector.
    header: Option<(u16, u8, u32, u64)>,
    blobs: Vec<(u16, Vec<u8>)>,
}

fn in_memory(addr: u64, len: u64) -> bool {
    if len == 0 {
        return true;
    }
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    // Walk the regions in order: the range must be covered without a gap.
    let mut at = addr;
    for &(start, stop) in &REGIONS {
        if at >= start && at < stop {
            at = stop;
            if at >= end {
                return true;
            }
        }
    }
    false
}

fn check_ok(r: &Request, sectors: u64, queue_size: u16) {
    assert!(in_memory(r.status_addr.0, 1), "status outside memory: {r:?}");
    assert!(
        r.data.len() + 2 <= usize::from(queue_size),
        "too many buffers: {r:?}"
    );
    for &(a, len) in &r.data {
        assert!(in_memory(a.0, u64::from(len)), "buffer outside memory: {r:?}");
    }
    let total = r.data_len();
    assert!(total <= u64::from(u32::MAX));
    match r.kind {
        RequestKind::In | RequestKind::Out => {
            assert_eq!(total % 512, 0, "unaligned: {r:?}");
            let end = r
                .sector
                .checked_add(total / 512)
                .expect("sector overflow accepted");
            assert!(end <= sectors, "past the disk ({sectors} sectors): {r:?}");
        }
        RequestKind::Flush | RequestKind::Unsupported(_) => {
            assert!(r.data.is_empty(), "data kept for {:?}", r.kind)
        }
        RequestKind::GetId => {}
    }
    if let RequestKind::Unsupported(k) = r.kind {
        assert!(![0, 1, 4, 8].contains(&k), "known type {k} reported unsupported");
    }
}

fn check_err(m: &Malformed) {
    use RequestError as E;
    if let Some(s) = m.status_addr {
        assert!(in_memory(s.0, 1), "status outside memory: {m:?}");
    }
    let shape = matches!(
        m.error,
        E::EmptyChain
            | E::DescriptorLoop
            | E::ChainTooLong
            | E::ChainTruncated
            | E::MissingStatus
            | E::StatusNotWritable
            | E::StatusTooShort
            | E::StatusOutOfMemory
    );
    // Before the status byte is validated there is none to answer; after, there is.
    assert_eq!(shape, m.status_addr.is_none(), "{m:?}");
    if shape {
        assert!(m.kind.is_none(), "{m:?}");
    }
}

fuzz_target!(|input: Input| {
    let ranges: Vec<(GuestAddress, usize)> = REGIONS
        .iter()
        .map(|&(s, e)| (GuestAddress(s), usize::try_from(e - s).unwrap()))
        .collect();
    let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap();

    let size = 1u16 << (input.queue_size_log2 % 9);
    for (i, d) in input.descs.iter().take(usize::from(size)).enumerate() {
        let raw = RawDescriptor::from(Descriptor::new(d.addr.get(), d.len, d.flags, d.next));
        mem.write_obj(raw, GuestAddress(DESC_TABLE + 16 * i as u64))
            .unwrap();
    }
    for (off, bytes) in &input.blobs {
        let at = SCRATCH + u64::from(*off);
        let n = bytes
            .len()
            .min(usize::try_from(0x2_0000 - u64::from(*off)).unwrap());
        mem.write_slice(&bytes[..n], GuestAddress(at)).unwrap();
    }
    if let Some((off, sel, raw, sector)) = input.header {
        let kind = [0, 1, 4, 8].get(usize::from(sel % 5)).copied().unwrap_or(raw);
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(SCRATCH + u64::from(off)))
            .unwrap();
    }
    // avail: flags, idx = 1, ring[0] = head.
    mem.write_obj(0u16, GuestAddress(AVAIL)).unwrap();
    mem.write_obj(1u16.to_le(), GuestAddress(AVAIL + 2)).unwrap();
    mem.write_obj(input.head.to_le(), GuestAddress(AVAIL + 4))
        .unwrap();

    let mut q = Queue::new(MAX_QUEUE).unwrap();
    q.try_set_size(size).unwrap();
    q.try_set_desc_table_address(GuestAddress(DESC_TABLE)).unwrap();
    q.try_set_avail_ring_address(GuestAddress(AVAIL)).unwrap();
    q.try_set_used_ring_address(GuestAddress(USED)).unwrap();
    q.set_ready(true);
    assert!(q.is_valid(&mem));

    let sectors = match input.sectors {
        Sectors::Small(s) => u64::from(s),
        Sectors::Raw(s) => s,
    };
    let Some(chain) = q.pop_descriptor_chain(&mem) else {
        return;
    };
    match parse(chain, sectors, size) {
        Ok(r) => check_ok(&r, sectors, size),
        Err(m) => check_err(&m),
    }
});
