//! Validation of a guest's region registration.
//!
//! The guest names a piece of its memory; before the VMM reads a byte of it
//! through a host pointer, the address, length and header are checked here.
//! Whether the range lies inside guest RAM is the VMM's check (it owns the
//! memory map); everything else is pure and lives here.

use crate::abi::{self, RegionHeader, Status};

/// Where the parts of a validated region lie, as offsets from its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Region length in bytes.
    pub len: u64,
    /// Number of tag slots (at least the VM's vCPU count).
    pub nr_slots: u32,
    /// Offset of slot 0.
    pub slots_offset: u64,
    /// Number of ring entries (0: no ring).
    pub ring_entries: u32,
    /// Offset of ring entry 0.
    pub ring_offset: u64,
    /// Offset of queue tag table 0 (meaningful when `qtag_tables > 0`).
    pub qtag_offset: u64,
    /// Entries per queue tag table.
    pub qtag_entries: u32,
    /// Number of queue tag tables (0: none).
    pub qtag_tables: u32,
    /// Offset of the throttle words, one `u64` per slot (0: none).
    pub throttle_offset: u64,
}

impl Geometry {
    /// Offset of vCPU `vcpu`'s tag word, if it has a slot.
    pub fn slot_offset(&self, vcpu: usize) -> Option<u64> {
        (vcpu < self.nr_slots as usize).then(|| self.slots_offset + 64 * vcpu as u64)
    }

    /// Offset of the explicit tag of the request at descriptor `head` of
    /// queue tag table `table`, if the region has that entry.
    pub fn qtag_entry_offset(&self, table: u32, head: u16) -> Option<u64> {
        (table < self.qtag_tables && u32::from(head) < self.qtag_entries).then(|| {
            self.qtag_offset + 8 * (u64::from(table) * u64::from(self.qtag_entries) + u64::from(head))
        })
    }

    /// Offset of vCPU `vcpu`'s throttle word, if the region has them and
    /// the vCPU a slot.
    pub fn throttle_word_offset(&self, vcpu: usize) -> Option<u64> {
        (self.throttle_offset != 0 && vcpu < self.nr_slots as usize)
            .then(|| self.throttle_offset + 8 * vcpu as u64)
    }

    /// Offset of the ring entry for position `pos`.
    pub fn ring_entry_offset(&self, pos: u64) -> u64 {
        self.ring_offset + 64 * (pos & (u64::from(self.ring_entries) - 1))
    }
}

/// Checks a registration's address and length before anything is read.
pub fn check_range(gpa: u64, len: u64) -> Result<(), Status> {
    if !gpa.is_multiple_of(abi::REGION_ALIGN) {
        return Err(Status::Misaligned);
    }
    if len < 64 || len > u64::from(abi::MAX_REGION_LEN) {
        return Err(Status::BadLength);
    }
    gpa.checked_add(len).map(|_| ()).ok_or(Status::NotInRam)
}

/// Checks the header the guest wrote at the start of its region.
pub fn check_header(h: &RegionHeader, len: u64, nr_vcpus: usize) -> Result<Geometry, Status> {
    if h.magic != abi::MAGIC || h.version != abi::ABI_VERSION || h.header_len != 64 {
        return Err(Status::BadHeader);
    }
    let slots_ok = (h.nr_slots as usize) >= nr_vcpus && h.nr_slots <= abi::MAX_SLOTS;
    let ring_ok =
        h.ring_entries == 0 || (h.ring_entries.is_power_of_two() && h.ring_entries <= abi::MAX_RING_ENTRIES);
    let aligned = u64::from(h.slots_offset).is_multiple_of(abi::REGION_ALIGN)
        && u64::from(h.ring_offset).is_multiple_of(abi::REGION_ALIGN)
        && h.slots_offset >= 64;
    if !slots_ok || !ring_ok || !aligned {
        return Err(Status::BadGeometry);
    }
    let slots = (
        u64::from(h.slots_offset),
        u64::from(h.slots_offset) + 64 * u64::from(h.nr_slots),
    );
    let ring = (
        u64::from(h.ring_offset),
        u64::from(h.ring_offset) + 64 * u64::from(h.ring_entries),
    );
    if h.ring_entries > 0 && (h.ring_offset < 64 || (ring.0 < slots.1 && slots.0 < ring.1)) {
        return Err(Status::BadGeometry);
    }
    let qtags = if h.qtag_tables == 0 {
        (0, 0)
    } else {
        let ok = h.qtag_tables <= abi::MAX_QTAG_TABLES
            && (1..=abi::MAX_QTAG_ENTRIES).contains(&h.qtag_entries)
            && u64::from(h.qtag_offset).is_multiple_of(abi::REGION_ALIGN)
            && h.qtag_offset >= 64;
        if !ok {
            return Err(Status::BadGeometry);
        }
        let start = u64::from(h.qtag_offset);
        let end = start + 8 * u64::from(h.qtag_tables) * u64::from(h.qtag_entries);
        let overlaps = |(a, b): (u64, u64)| a < end && start < b;
        if overlaps(slots) || (h.ring_entries > 0 && overlaps(ring)) {
            return Err(Status::BadGeometry);
        }
        (start, end)
    };
    let throttle = if h.throttle_offset == 0 {
        (0, 0)
    } else {
        let start = u64::from(h.throttle_offset);
        let end = start + 8 * u64::from(h.nr_slots);
        let overlaps = |(a, b): (u64, u64)| a < end && start < b;
        if !start.is_multiple_of(abi::REGION_ALIGN)
            || overlaps(slots)
            || (h.ring_entries > 0 && overlaps(ring))
            || overlaps(qtags)
        {
            return Err(Status::BadGeometry);
        }
        (start, end)
    };
    if slots.1 > len || ring.1 > len || qtags.1 > len || throttle.1 > len {
        return Err(Status::BadLength);
    }
    Ok(Geometry {
        len,
        nr_slots: h.nr_slots,
        slots_offset: slots.0,
        ring_entries: h.ring_entries,
        ring_offset: ring.0,
        qtag_offset: qtags.0,
        qtag_entries: if h.qtag_tables == 0 { 0 } else { h.qtag_entries },
        qtag_tables: h.qtag_tables,
        throttle_offset: throttle.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good(nr_slots: u32, ring: u32) -> RegionHeader {
        RegionHeader {
            magic: abi::MAGIC,
            version: abi::ABI_VERSION,
            header_len: 64,
            nr_slots,
            slots_offset: 64,
            ring_entries: ring,
            ring_offset: 64 + 64 * nr_slots,
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_well_formed_region() {
        let len = abi::region_len(2, 16) as u64;
        let g = check_header(&good(2, 16), len, 2).unwrap();
        assert_eq!(g.slot_offset(1), Some(128));
        assert_eq!(g.slot_offset(2), None);
        assert_eq!(g.ring_entry_offset(17), 64 + 128 + 64);
    }

    #[test]
    fn rejects_fewer_slots_than_vcpus() {
        let len = abi::region_len(1, 16) as u64;
        assert_eq!(check_header(&good(1, 16), len, 2), Err(Status::BadGeometry));
    }

    #[test]
    fn rejects_bad_magic_and_version() {
        let len = abi::region_len(1, 0) as u64;
        let mut h = good(1, 0);
        h.magic = 0;
        assert_eq!(check_header(&h, len, 1), Err(Status::BadHeader));
        let mut h = good(1, 0);
        h.version = 99;
        assert_eq!(check_header(&h, len, 1), Err(Status::BadHeader));
    }

    #[test]
    fn rejects_ring_not_power_of_two_and_overlap_and_short_length() {
        let len = abi::region_len(1, 16) as u64;
        assert_eq!(check_header(&good(1, 12), len, 1), Err(Status::BadGeometry));
        let mut h = good(1, 16);
        h.ring_offset = 64;
        assert_eq!(check_header(&h, len, 1), Err(Status::BadGeometry));
        assert_eq!(check_header(&good(1, 16), len - 64, 1), Err(Status::BadLength));
    }

    #[test]
    fn queue_tag_tables_are_checked_and_located() {
        let base = abi::region_len(2, 16) as u64;
        let mut h = good(2, 16);
        (h.qtag_offset, h.qtag_entries, h.qtag_tables) = (u32::try_from(base).unwrap(), 256, 2);
        let g = check_header(&h, base + 2 * 256 * 8, 2).unwrap();
        assert_eq!(g.qtag_entry_offset(1, 3), Some(base + 8 * (256 + 3)));
        assert_eq!(g.qtag_entry_offset(2, 0), None);
        assert_eq!(g.qtag_entry_offset(0, 256), None);
        // Too short for its tables, overlapping the ring, too many entries.
        assert_eq!(check_header(&h, base + 100, 2), Err(Status::BadLength));
        h.qtag_offset = 64 + 64 * 2;
        assert_eq!(check_header(&h, base + 4096, 2), Err(Status::BadGeometry));
        (h.qtag_offset, h.qtag_entries) = (u32::try_from(base).unwrap(), abi::MAX_QTAG_ENTRIES + 1);
        assert_eq!(check_header(&h, 4 << 20, 2), Err(Status::BadGeometry));
        // No tables: no entries, whatever the other fields say.
        h.qtag_tables = 0;
        assert_eq!(check_header(&h, base, 2).unwrap().qtag_entry_offset(0, 0), None);
    }

    #[test]
    fn throttle_words_are_checked_and_located() {
        let base = abi::region_len(2, 16) as u64;
        let mut h = good(2, 16);
        h.throttle_offset = u32::try_from(base).unwrap();
        let g = check_header(&h, base + 16, 2).unwrap();
        assert_eq!(g.throttle_word_offset(1), Some(base + 8));
        assert_eq!(g.throttle_word_offset(2), None);
        // Too short, misaligned, overlapping the slots or the ring.
        assert_eq!(check_header(&h, base + 8, 2), Err(Status::BadLength));
        h.throttle_offset += 8;
        assert_eq!(check_header(&h, base + 64, 2), Err(Status::BadGeometry));
        for off in [64, 64 + 128] {
            h.throttle_offset = off;
            assert_eq!(check_header(&h, base, 2), Err(Status::BadGeometry), "{off}");
        }
        // None (the field was reserved, zero, before): no words.
        assert_eq!(
            check_header(&good(2, 16), base, 2)
                .unwrap()
                .throttle_word_offset(0),
            None
        );
    }

    #[test]
    fn range_checks() {
        assert_eq!(check_range(0x1008, 4096), Err(Status::Misaligned));
        assert_eq!(check_range(0x1000, 32), Err(Status::BadLength));
        assert_eq!(
            check_range(0x1000, u64::from(abi::MAX_REGION_LEN) + 64),
            Err(Status::BadLength)
        );
        assert_eq!(check_range(u64::MAX - 63, 64), Err(Status::NotInRam));
        assert_eq!(check_range(0x1000, 4096), Ok(()));
    }

    proptest::proptest! {
        #[test]
        fn any_header_is_either_rejected_or_fits_its_length(bytes in proptest::collection::vec(proptest::num::u8::ANY, 64), len in 0u64..(8 << 20), vcpus in 1usize..8) {
            let mut b = [0u8; 64];
            b.copy_from_slice(&bytes);
            let h = RegionHeader::from_bytes(&b);
            if let Ok(g) = check_header(&h, len, vcpus) {
                proptest::prop_assert!(g.slots_offset + 64 * u64::from(g.nr_slots) <= len);
                proptest::prop_assert!(g.ring_offset + 64 * u64::from(g.ring_entries) <= len);
                proptest::prop_assert!(g.qtag_offset + 8 * u64::from(g.qtag_tables) * u64::from(g.qtag_entries) <= len);
                proptest::prop_assert!(g.nr_slots as usize >= vcpus);
                proptest::prop_assert!(g.throttle_offset + 8 * u64::from(g.nr_slots) * u64::from(g.throttle_offset != 0) <= len);
            }
        }
    }
}
