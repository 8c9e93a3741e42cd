//! Guest RAM: where it lives in the guest-physical address space and how it
//! is allocated.
//!
//! RAM fills the address space from 0 up to the MMIO gap
//! ([`layout::MMIO_GAP_START`]); whatever does not fit below the gap
//! continues at 4 GiB. The regions are anonymous host mappings created with
//! vm-memory's `GuestMemoryMmap`; the VM setup registers each one with KVM
//! as a memory slot.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::layout::{self, MMIO_GAP_END, MMIO_GAP_START, PAGE_SIZE};

/// Smallest amount of guest RAM accepted: the first megabyte plus room for
/// a small image and its stacks.
pub const MIN_MEM_BYTES: u64 = 2 << 20;
/// Largest amount of guest RAM accepted (1 TiB): far above what this VMM
/// is meant for, low enough that no address computation can overflow.
pub const MAX_MEM_BYTES: u64 = 1 << 40;

/// Errors from creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is outside the accepted range.
    #[error(
        "guest memory of {mem_bytes} bytes is not supported: choose between {} MiB and {} MiB \
         with --mem-mib",
        MIN_MEM_BYTES >> 20,
        MAX_MEM_BYTES >> 20
    )]
    BadSize {
        /// The requested size.
        mem_bytes: u64,
    },
    /// The requested size is not a whole number of pages.
    #[error("guest memory of {mem_bytes} bytes is not a multiple of 4 KiB: round --mem-mib")]
    Unaligned {
        /// The requested size.
        mem_bytes: u64,
    },
    /// The host could not map the memory.
    #[error(
        "could not allocate {mem_bytes} bytes of guest memory on the host: lower --mem-mib or \
         free host memory"
    )]
    Allocate {
        /// The requested size.
        mem_bytes: u64,
        /// What vm-memory reported.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Converts a guest size to a host `usize`; x86_64 hosts have 64-bit `usize`.
#[allow(clippy::cast_possible_truncation)]
pub(crate) const fn to_usize(v: u64) -> usize {
    const _: () = assert!(usize::BITS == 64, "Resourceful needs a 64-bit host");
    v as usize
}

/// The RAM regions of a VM with `mem_bytes` of RAM: one region from 0 when
/// RAM fits below the MMIO gap, else the part below the gap and the rest
/// from 4 GiB.
pub fn ram_regions(mem_bytes: u64) -> Vec<(GuestAddress, usize)> {
    let low = layout::ram_end_below_gap(mem_bytes);
    let mut regions = Vec::with_capacity(2);
    if low > 0 {
        regions.push((GuestAddress(0), to_usize(low)));
    }
    if mem_bytes > MMIO_GAP_START {
        regions.push((GuestAddress(MMIO_GAP_END), to_usize(mem_bytes - MMIO_GAP_START)));
    }
    regions
}

/// Allocates `mem_bytes` of guest RAM laid out by [`ram_regions`].
pub fn create_guest_memory(mem_bytes: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if !(MIN_MEM_BYTES..=MAX_MEM_BYTES).contains(&mem_bytes) {
        return Err(MemoryError::BadSize { mem_bytes });
    }
    if mem_bytes & (PAGE_SIZE - 1) != 0 {
        return Err(MemoryError::Unaligned { mem_bytes });
    }
    GuestMemoryMmap::<()>::from_ranges(&ram_regions(mem_bytes))
        .map_err(|source| MemoryError::Allocate { mem_bytes, source })
}

/// Number of RAM bytes below the MMIO gap in `mem` (the end of the region
/// that starts at guest-physical 0, capped at the gap).
pub fn ram_below_gap<M: GuestMemoryBackend>(mem: &M) -> u64 {
    mem.iter()
        .find(|r| r.start_addr() == GuestAddress(0))
        .map_or(0, |r| r.len().min(MMIO_GAP_START))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_is_one_region_from_zero() {
        assert_eq!(ram_regions(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
    }

    #[test]
    fn ram_exactly_up_to_the_gap_is_one_region() {
        assert_eq!(
            ram_regions(MMIO_GAP_START),
            vec![(GuestAddress(0), to_usize(MMIO_GAP_START))]
        );
    }

    #[test]
    fn ram_past_the_gap_continues_at_4_gib() {
        let mem = 4u64 << 30;
        assert_eq!(
            ram_regions(mem),
            vec![
                (GuestAddress(0), to_usize(MMIO_GAP_START)),
                (GuestAddress(1 << 32), to_usize(mem - MMIO_GAP_START)),
            ]
        );
    }

    #[test]
    fn regions_add_up_to_the_requested_size() {
        for mem in [2u64 << 20, 1 << 30, MMIO_GAP_START + 0x1000, 6 << 30] {
            let total: usize = ram_regions(mem).iter().map(|r| r.1).sum();
            assert_eq!(total as u64, mem);
        }
    }

    #[test]
    fn create_rejects_bad_sizes() {
        assert!(matches!(
            create_guest_memory(1 << 20),
            Err(MemoryError::BadSize { .. })
        ));
        assert!(matches!(
            create_guest_memory((16 << 20) + 1),
            Err(MemoryError::Unaligned { .. })
        ));
    }

    #[test]
    fn create_allocates_and_reports_low_ram() {
        let mem = create_guest_memory(128 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(ram_below_gap(&mem), 128 << 20);
    }

    #[test]
    fn create_above_4_gib_has_two_regions() {
        // Anonymous mappings are lazily backed, so this costs no real memory.
        let mem = create_guest_memory(5 << 30).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert_eq!(ram_below_gap(&mem), MMIO_GAP_START);
        assert!(mem.address_in_range(GuestAddress(MMIO_GAP_END)));
        assert!(!mem.address_in_range(GuestAddress(MMIO_GAP_START)));
    }
}
