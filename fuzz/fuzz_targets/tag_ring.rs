//! The tag region a guest registers with the accounting device:
//!
//! 1. header bytes → `accounting::region::check_header`; an accepted header
//!    must give a geometry whose slots and ring lie inside the region,
//!    aligned and apart;
//! 2. ring entries → `accounting::registry::Registry::apply` with small
//!    limits; the registry must stay within them (containers ≤
//!    max_containers + `unattributed`, live requests ≤ max_live_requests,
//!    retained ≤ retained_requests) and `resolve` of any tag must not panic;
//! 3. the same, end to end through guest memory: `Registration::new` on the
//!    header at a guest address, entries written into the ring by "the
//!    guest" (with the right or a wrong sequence number), `TagReader::drain`
//!    into an `Accounting` and `TagReader::tag` for every vCPU.
#![no_main]

use accounting::abi::{self, RegionHeader, RingEntry};
use accounting::ledger::Accounting;
use accounting::region::check_header;
use accounting::registry::{Limits, Registry};
use arbitrary::Arbitrary;
use devices::acct::{Registration, TagRegion};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM: 256 KiB, a hole, 64 KiB.
const REGIONS: [(u64, u64); 2] = [(0, 0x4_0000), (0x5_0000, 0x6_0000)];
const NAME_CHARS: &[u8] = b"abcXYZ019._:-/ \0";

#[derive(Arbitrary, Debug)]
enum Header {
    /// Any 64 bytes.
    Raw([u8; 64]),
    /// Right magic, version and length, fields of the fuzzer's choosing.
    Fields {
        nr_slots: u16,
        slots_offset: u32,
        ring_entries: u32,
        ring_offset: u32,
        /// Small counts in units of 64 bytes, to hit valid layouts.
        compact: bool,
    },
}

impl Header {
    fn bytes(&self) -> [u8; 64] {
        match *self {
            Header::Raw(b) => b,
            Header::Fields {
                nr_slots,
                slots_offset,
                ring_entries,
                ring_offset,
                compact,
            } => {
                let (slots_offset, ring_entries, ring_offset) = if compact {
                    (
                        (slots_offset % 64) * 64,
                        1u32.checked_shl(ring_entries % 8).unwrap_or(0) & !1,
                        (ring_offset % 512) * 64,
                    )
                } else {
                    (slots_offset, ring_entries, ring_offset)
                };
                let mut b = [0u8; 64];
                b[0..4].copy_from_slice(&abi::MAGIC.to_le_bytes());
                b[4..6].copy_from_slice(&abi::ABI_VERSION.to_le_bytes());
                b[6..8].copy_from_slice(&64u16.to_le_bytes());
                b[8..12].copy_from_slice(&u32::from(nr_slots).to_le_bytes());
                b[12..16].copy_from_slice(&slots_offset.to_le_bytes());
                b[16..20].copy_from_slice(&ring_entries.to_le_bytes());
                b[20..24].copy_from_slice(&ring_offset.to_le_bytes());
                b
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Entry {
    Raw([u8; 64]),
    /// Small ids and kinds, so that entries refer to each other.
    Small {
        kind: u8,
        id: u8,
        arg: u8,
        arg64: u64,
        name: Vec<u8>,
        name_len: u8,
        reserved: bool,
    },
}

impl Entry {
    fn get(&self) -> RingEntry {
        match self {
            Entry::Raw(b) => RingEntry::from_bytes(b),
            Entry::Small {
                kind,
                id,
                arg,
                arg64,
                name,
                name_len,
                reserved,
            } => {
                let mut e = RingEntry {
                    kind: u16::from(kind % 6),
                    id: u32::from(id % 8),
                    arg: u32::from(arg % 8),
                    arg64: *arg64,
                    name_len: u16::from(*name_len % 40),
                    reserved: u32::from(*reserved),
                    ..Default::default()
                };
                for (d, s) in e.name.iter_mut().zip(name) {
                    *d = NAME_CHARS[usize::from(*s) % NAME_CHARS.len()];
                }
                e
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    header: Header,
    len: u32,
    nr_vcpus: u8,
    gpa: u32,
    limits: [u8; 3],
    entries: Vec<(Entry, Option<u64>, bool)>,
    tags: Vec<u64>,
}

fn check_registry(r: &Registry, l: Limits) {
    let containers = r.containers().len();
    assert!(
        containers <= l.max_containers as usize + 1,
        "{containers} containers, limit {l:?}"
    );
    let live = r.live_requests().count();
    assert!(
        live <= l.max_live_requests as usize,
        "{live} live requests, limit {l:?}"
    );
    let finished = r.finished_requests().count();
    assert!(
        finished <= l.retained_requests as usize,
        "{finished} retained, limit {l:?}"
    );
    assert_eq!(r.stats().containers_declared as usize, containers - 1);
    for c in r.containers() {
        assert!(c.parent.is_none_or(|p| p < containers));
    }
}

fuzz_target!(|input: Input| {
    let nr_vcpus = usize::from(input.nr_vcpus % 8) + 1;
    let hdr_bytes = input.header.bytes();
    let header = RegionHeader::from_bytes(&hdr_bytes);
    let len = u64::from(input.len) % (u64::from(abi::MAX_REGION_LEN) + 0x1000);

    // 1. The header alone.
    if let Ok(g) = check_header(&header, len, nr_vcpus) {
        assert_eq!(g.len, len);
        assert!(g.nr_slots as usize >= nr_vcpus && g.nr_slots <= abi::MAX_SLOTS);
        assert!(g.slots_offset >= 64 && g.slots_offset % 64 == 0);
        assert!(g.slots_offset + 64 * u64::from(g.nr_slots) <= len);
        for v in 0..g.nr_slots as usize + 2 {
            match g.slot_offset(v) {
                Some(off) => assert!(v < g.nr_slots as usize && off % 8 == 0 && off + 8 <= len),
                None => assert!(v >= g.nr_slots as usize),
            }
        }
        if g.ring_entries > 0 {
            assert!(g.ring_entries.is_power_of_two() && g.ring_entries <= abi::MAX_RING_ENTRIES);
            assert!(g.ring_offset >= 64 && g.ring_offset % 64 == 0);
            let ring_end = g.ring_offset + 64 * u64::from(g.ring_entries);
            let slots_end = g.slots_offset + 64 * u64::from(g.nr_slots);
            assert!(ring_end <= len);
            assert!(
                ring_end <= g.slots_offset || slots_end <= g.ring_offset,
                "ring overlaps slots: {g:?}"
            );
            for pos in [0, 1, u64::from(g.ring_entries), u64::MAX, input.gpa.into()] {
                let off = g.ring_entry_offset(pos);
                assert!(off >= g.ring_offset && off + 64 <= ring_end);
            }
        }
    }

    // 2. The entries alone, against a registry with small limits.
    let limits = Limits {
        max_containers: u32::from(input.limits[0] % 8),
        max_live_requests: u32::from(input.limits[1] % 8),
        retained_requests: u32::from(input.limits[2] % 8),
    };
    let mut reg = Registry::new(nr_vcpus, limits);
    for (i, (e, _, _)) in input.entries.iter().enumerate() {
        let _ = reg.apply(&e.get(), i as u64);
        check_registry(&reg, limits);
    }
    for &t in &input.tags {
        let r = reg.resolve(t);
        assert!(r.container < reg.containers().len());
    }

    // 3. End to end through guest memory.
    let ranges: Vec<(GuestAddress, usize)> = REGIONS
        .iter()
        .map(|&(s, e)| (GuestAddress(s), usize::try_from(e - s).unwrap()))
        .collect();
    let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap();
    let gpa = u64::from(input.gpa) % 0x6_1000;
    let _ = mem.write_slice(&hdr_bytes, GuestAddress(gpa));
    let Ok(registration) = Registration::new(&mem, gpa, len, nr_vcpus) else {
        return;
    };
    let g = registration.geometry();
    assert_eq!(registration.gpa(), gpa);
    let region = TagRegion::new(nr_vcpus);
    region.set(Some(registration));
    let acct = Accounting::new("fuzz", nr_vcpus, 0, limits);
    let mut readers: Vec<_> = (0..nr_vcpus).map(|v| region.reader(v)).collect();
    for (pos, (e, seq, drain_now)) in input.entries.iter().enumerate() {
        let pos = pos as u64;
        for (v, r) in readers.iter_mut().enumerate() {
            let tag = r.tag();
            assert!(tag.is_some(), "vCPU {v} has no slot");
        }
        if g.ring_entries > 0 {
            let mut entry = e.get();
            entry.seq = seq.unwrap_or(pos + 1);
            let at = gpa + g.ring_entry_offset(pos);
            mem.write_slice(&entry.to_bytes(), GuestAddress(at)).unwrap();
        }
        if *drain_now {
            let n = readers[pos as usize % nr_vcpus].drain(&acct);
            assert!(n <= g.ring_entries as usize);
            check_registry(&acct.registry(), limits);
        }
    }
    let n = readers[0].drain(&acct);
    assert!(n <= g.ring_entries as usize);
    check_registry(&acct.registry(), limits);
    region.set(None);
    assert!(readers[0].tag().is_none());
});
