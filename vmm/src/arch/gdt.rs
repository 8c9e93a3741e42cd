//! The boot GDT and IDT.
//!
//! A vCPU entering long mode directly needs segment descriptors that match
//! the hidden segment state KVM is given, in case the guest ever reloads a
//! selector. The table follows Firecracker's (`arch/x86_64/gdt.rs`) and adds
//! two user (DPL 3) segments for the project's bare-metal guests, which run
//! at CPL 3:
//!
//! | index | selector | descriptor |
//! |---|---|---|
//! | 0 | 0x00 | null |
//! | 1 | 0x08 | kernel code, 64-bit (flags 0xa09b) |
//! | 2 | 0x10 | kernel data (0xc093) |
//! | 3 | 0x18 | TSS, 64-bit busy, base 0x1000, limit 0x2068 (0x008b) |
//! | 4 | 0x23 | user code, 64-bit, DPL 3 (0xa0fb) |
//! | 5 | 0x2b | user data, DPL 3 (0xc0f3) |
//!
//! A 64-bit TSS descriptor is really 16 bytes; its upper half would be
//! entry 4. KVM takes TR's hidden state from `KVM_SET_SREGS`, never from
//! this table, so the overlap only matters to a guest that runs `ltr`, which
//! none of ours do (a Linux kernel installs its own GDT first).
//!
//! The TSS ([`write_tss`]) has an all-zero I/O permission bitmap, so port
//! I/O at CPL 3 is allowed even where RFLAGS.IOPL is not honoured (the
//! development machines' nested KVM); its stack pointers are zero and never
//! used, as the guests take no interrupts.
//!
//! The IDT is one empty entry. The bare-metal guests get an IDT limit of 0,
//! so any exception or interrupt triple-faults and the VMM sees a shutdown
//! exit — the wanted outcome for a guest that has no handlers.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{GDT_ADDR, GDT_ENTRIES, IDT_ADDR, TSS_ADDR, TSS_IO_BITMAP_OFFSET, TSS_IO_BITMAP_SIZE};

/// GDT index of the 64-bit kernel code segment.
pub const KERNEL_CODE_INDEX: u8 = 1;
/// GDT index of the kernel data segment.
pub const KERNEL_DATA_INDEX: u8 = 2;
/// GDT index of the TSS.
pub const TSS_INDEX: u8 = 3;
/// GDT index of the 64-bit user code segment.
pub const USER_CODE_INDEX: u8 = 4;
/// GDT index of the user data segment.
pub const USER_DATA_INDEX: u8 = 5;

/// Limit of the TSS, including its I/O permission bitmap.
#[allow(clippy::cast_possible_truncation)] // 0x2068.
pub const TSS_LIMIT: u32 = super::layout::TSS_LIMIT as u32;
#[allow(clippy::cast_possible_truncation)] // 0x1000.
const TSS_BASE: u32 = TSS_ADDR as u32;

/// Errors from writing the descriptor tables.
#[derive(Debug, thiserror::Error)]
pub enum GdtError {
    /// Guest memory does not cover the fixed table addresses.
    #[error("cannot write the {table} at {addr:#x}: guest memory is too small (raise --mem-mib)")]
    Write {
        /// Which table.
        table: &'static str,
        /// Where it goes.
        addr: u64,
        /// What vm-memory reported.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Builds a segment descriptor from Firecracker-style `flags` (bits 8..16 of
/// the descriptor's high dword: type, S, DPL, P, then AVL, L, D/B, G in the
/// top nibble), a 32-bit `base` and a 20-bit `limit`.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    ((base & 0xff00_0000) << (56 - 24))
        | (((flags as u64) & 0x0000_f0ff) << 40)
        | ((limit & 0x000f_0000) << (48 - 16))
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The boot GDT (see the module docs for the layout).
pub const GDT: [u64; GDT_ENTRIES] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x008b, TSS_BASE, TSS_LIMIT),
    gdt_entry(0xa0fb, 0, 0xfffff),
    gdt_entry(0xc0f3, 0, 0xfffff),
];

/// `GDTR.limit` for [`GDT`].
#[allow(clippy::cast_possible_truncation)] // 47.
pub const GDT_LIMIT: u16 = (GDT_ENTRIES * 8 - 1) as u16;

const fn bit(entry: u64, n: u32) -> u8 {
    ((entry >> n) & 1) as u8
}

/// Converts GDT entry `index` of `table` into the hidden segment state KVM
/// expects. The selector's RPL equals the descriptor's DPL, so user segments
/// come out as `0x23` / `0x2b`. An index past the table gives a null,
/// unusable segment.
pub fn kvm_segment_from_gdt(table: &[u64], index: u8) -> kvm_segment {
    let entry = table.get(usize::from(index)).copied().unwrap_or(0);
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    #[allow(clippy::cast_possible_truncation)] // Masked to 20 bits.
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    let g = bit(entry, 55);
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let dpl = ((entry >> 45) & 0x3) as u8;
    let present = bit(entry, 47);
    kvm_segment {
        base,
        limit,
        selector: (u16::from(index) << 3) | u16::from(dpl),
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl,
        db: bit(entry, 54),
        s: bit(entry, 44),
        l: bit(entry, 53),
        g,
        avl: bit(entry, 52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Writes [`GDT`] at [`GDT_ADDR`] and one zero IDT entry at [`IDT_ADDR`].
pub fn write_gdt_and_idt(mem: &GuestMemoryMmap) -> Result<(), GdtError> {
    let mut bytes = [0u8; GDT_ENTRIES * 8];
    for (chunk, entry) in bytes.chunks_exact_mut(8).zip(GDT) {
        chunk.copy_from_slice(&entry.to_le_bytes());
    }
    mem.write_slice(&bytes, GuestAddress(GDT_ADDR))
        .map_err(|source| GdtError::Write {
            table: "GDT",
            addr: GDT_ADDR,
            source,
        })?;
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(|source| GdtError::Write {
            table: "IDT",
            addr: IDT_ADDR,
            source,
        })
}

/// The TSS bytes: zero stack pointers, `io_map_base` = 0x68, an all-zero
/// bitmap (every port allowed) and the `0xff` terminator.
pub fn tss_bytes() -> Vec<u8> {
    let mut tss = vec![0u8; super::memory::to_usize(TSS_IO_BITMAP_OFFSET + TSS_IO_BITMAP_SIZE + 1)];
    #[allow(clippy::cast_possible_truncation)] // 0x68.
    let io_map_base = TSS_IO_BITMAP_OFFSET as u16;
    tss[0x66..0x68].copy_from_slice(&io_map_base.to_le_bytes());
    if let Some(last) = tss.last_mut() {
        *last = 0xff;
    }
    tss
}

/// Writes the TSS at [`TSS_ADDR`] (see [`tss_bytes`]).
pub fn write_tss(mem: &GuestMemoryMmap) -> Result<(), GdtError> {
    mem.write_slice(&tss_bytes(), GuestAddress(TSS_ADDR))
        .map_err(|source| GdtError::Write {
            table: "TSS",
            addr: TSS_ADDR,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_code_is_a_present_64_bit_ring0_code_segment() {
        let cs = kvm_segment_from_gdt(&GDT, KERNEL_CODE_INDEX);
        assert_eq!(cs.selector, 0x08);
        assert_eq!((cs.type_, cs.s, cs.dpl, cs.present), (0xb, 1, 0, 1));
        assert_eq!((cs.l, cs.db, cs.g), (1, 0, 1));
        assert_eq!((cs.base, cs.limit, cs.unusable), (0, 0xffff_ffff, 0));
    }

    #[test]
    fn kernel_data_is_a_present_ring0_data_segment() {
        let ds = kvm_segment_from_gdt(&GDT, KERNEL_DATA_INDEX);
        assert_eq!(ds.selector, 0x10);
        assert_eq!((ds.type_, ds.s, ds.dpl, ds.present), (0x3, 1, 0, 1));
        assert_eq!((ds.l, ds.db, ds.g), (0, 1, 1));
    }

    #[test]
    fn tss_is_a_busy_64_bit_tss_covering_its_io_bitmap() {
        let tr = kvm_segment_from_gdt(&GDT, TSS_INDEX);
        assert_eq!(tr.selector, 0x18);
        assert_eq!((tr.type_, tr.s, tr.present, tr.g), (11, 0, 1, 0));
        assert_eq!((tr.base, tr.limit), (0x1000, 0x68 + 8192));
    }

    #[test]
    fn tss_allows_every_port() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        mem.write_slice(&[0xaa; 0x3000], GuestAddress(TSS_ADDR)).unwrap();
        write_tss(&mem).unwrap();
        let io_map_base: u16 = mem.read_obj(GuestAddress(TSS_ADDR + 0x66)).unwrap();
        assert_eq!(io_map_base, 0x68);
        let mut bitmap = vec![0xaa; 8192];
        mem.read_slice(&mut bitmap, GuestAddress(TSS_ADDR + 0x68))
            .unwrap();
        assert!(bitmap.iter().all(|b| *b == 0));
        let end: u8 = mem.read_obj(GuestAddress(TSS_ADDR + 0x68 + 8192)).unwrap();
        assert_eq!(end, 0xff);
        // RSP0 and the ISTs are zero.
        assert_eq!(mem.read_obj::<u64>(GuestAddress(TSS_ADDR + 4)).unwrap(), 0);
    }

    #[test]
    fn user_segments_have_dpl3_and_rpl3_selectors() {
        let cs = kvm_segment_from_gdt(&GDT, USER_CODE_INDEX);
        assert_eq!(cs.selector, 0x23);
        assert_eq!((cs.type_, cs.dpl, cs.l, cs.db, cs.present), (0xb, 3, 1, 0, 1));
        let ds = kvm_segment_from_gdt(&GDT, USER_DATA_INDEX);
        assert_eq!(ds.selector, 0x2b);
        assert_eq!((ds.type_, ds.dpl, ds.db, ds.s, ds.present), (0x3, 3, 1, 1, 1));
    }

    #[test]
    fn null_and_out_of_range_entries_are_unusable() {
        assert_eq!(kvm_segment_from_gdt(&GDT, 0).unusable, 1);
        assert_eq!(kvm_segment_from_gdt(&GDT, 200).unusable, 1);
    }

    #[test]
    fn gdt_entry_splits_base_and_limit() {
        let e = gdt_entry(0xc093, 0x1234_5678, 0xabcde);
        let seg = kvm_segment_from_gdt(&[e], 0);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, (0xabcde << 12) | 0xfff);
    }

    #[test]
    fn tables_are_written_to_their_fixed_addresses() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        mem.write_slice(&[0xaa; 0x100], GuestAddress(0x500)).unwrap();
        write_gdt_and_idt(&mem).unwrap();
        for (i, entry) in GDT.iter().enumerate() {
            let got: u64 = mem.read_obj(GuestAddress(GDT_ADDR + 8 * i as u64)).unwrap();
            assert_eq!(got, *entry);
        }
        assert_eq!(mem.read_obj::<u64>(GuestAddress(IDT_ADDR)).unwrap(), 0);
    }
}
