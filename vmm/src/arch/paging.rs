//! Boot page tables: an identity map of the low 4 GiB with 2 MiB pages.
//!
//! Long mode requires paging, so a vCPU that starts in 64-bit mode needs
//! tables before its first instruction. One PML4 entry points to one PDPT
//! whose first four entries point to four page directories of 512 2 MiB
//! pages each. Every level has present, writable and user set: the user bit
//! lets the CPL 3 bare-metal guests touch all of it and is harmless for a
//! Linux kernel, which builds its own tables early.
//!
//! The map covers the MMIO gap too, so a guest reaches its devices at their
//! physical addresses.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{PDPT_ADDR, PD_ADDR, PD_COUNT, PML4_ADDR};

/// Page-table entry bit: present.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Page-table entry bit: writable.
pub const PTE_WRITABLE: u64 = 1 << 1;
/// Page-table entry bit: accessible from CPL 3.
pub const PTE_USER: u64 = 1 << 2;
/// Page-directory entry bit: maps a 2 MiB page.
pub const PTE_PAGE_SIZE: u64 = 1 << 7;

const TABLE_FLAGS: u64 = PTE_PRESENT | PTE_WRITABLE | PTE_USER;
const ENTRIES_PER_TABLE: u64 = 512;
const PAGE_2M: u64 = 2 << 20;

/// Errors from writing the page tables.
#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    /// Guest memory does not cover the fixed page-table addresses.
    #[error("cannot write the boot page tables at {addr:#x}: guest memory is too small (raise --mem-mib)")]
    Write {
        /// Where the failing write went.
        addr: u64,
        /// What vm-memory reported.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// The PML4, PDPT and page directories as `(guest address, table bytes)`.
pub fn identity_page_tables() -> Vec<(u64, Vec<u8>)> {
    let table = |entries: &mut dyn Iterator<Item = u64>| {
        let mut bytes = vec![0u8; 4096];
        for (chunk, e) in bytes.chunks_exact_mut(8).zip(entries) {
            chunk.copy_from_slice(&e.to_le_bytes());
        }
        bytes
    };
    let mut tables = Vec::new();
    tables.push((PML4_ADDR, table(&mut std::iter::once(PDPT_ADDR | TABLE_FLAGS))));
    tables.push((
        PDPT_ADDR,
        table(&mut (0..PD_COUNT).map(|i| (PD_ADDR + i * 0x1000) | TABLE_FLAGS)),
    ));
    for pd in 0..PD_COUNT {
        let first_page = pd * ENTRIES_PER_TABLE;
        tables.push((
            PD_ADDR + pd * 0x1000,
            table(
                &mut (first_page..first_page + ENTRIES_PER_TABLE)
                    .map(|page| (page * PAGE_2M) | TABLE_FLAGS | PTE_PAGE_SIZE),
            ),
        ));
    }
    tables
}

/// Writes the identity map into guest memory; CR3 must then be
/// [`PML4_ADDR`].
pub fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), PagingError> {
    for (addr, bytes) in identity_page_tables() {
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(|source| PagingError::Write { addr, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written() -> GuestMemoryMmap {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20000)]).unwrap();
        mem.write_slice(&[0xaa; 0x7000], GuestAddress(0x9000)).unwrap();
        write_identity_page_tables(&mem).unwrap();
        mem
    }

    fn entry(mem: &GuestMemoryMmap, table: u64, index: u64) -> u64 {
        mem.read_obj(GuestAddress(table + index * 8)).unwrap()
    }

    #[test]
    fn pml4_points_to_the_pdpt_and_nothing_else() {
        let mem = written();
        assert_eq!(entry(&mem, PML4_ADDR, 0), PDPT_ADDR | 0x7);
        assert_eq!(entry(&mem, PML4_ADDR, 1), 0);
        assert_eq!(entry(&mem, PML4_ADDR, 511), 0);
    }

    #[test]
    fn pdpt_points_to_four_page_directories() {
        let mem = written();
        for i in 0..4 {
            assert_eq!(entry(&mem, PDPT_ADDR, i), (PD_ADDR + i * 0x1000) | 0x7);
        }
        assert_eq!(entry(&mem, PDPT_ADDR, 4), 0);
    }

    #[test]
    fn page_directories_identity_map_4_gib_with_user_large_pages() {
        let mem = written();
        assert_eq!(entry(&mem, PD_ADDR, 0), 0x87);
        assert_eq!(entry(&mem, PD_ADDR, 1), (2 << 20) | 0x87);
        // 0xd000_0000 (the accounting device) is page 0x680: PD 3, index 0x80.
        assert_eq!(entry(&mem, PD_ADDR + 3 * 0x1000, 0x80), 0xd000_0000 | 0x87);
        // The last page ends exactly at 4 GiB.
        assert_eq!(entry(&mem, PD_ADDR + 3 * 0x1000, 511), 0xffe0_0000 | 0x87);
    }
}
