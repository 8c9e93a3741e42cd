//! The guest-physical memory map of a Resourceful VM (x86_64).
//!
//! One place for every fixed address, so the loader, the register setup and
//! the device model agree. The low megabyte follows the conventions of
//! Firecracker (GDT at 0x500, zero page at 0x7000, page tables at 0x9000, the
//! MP table in the EBDA at 0x9fc00); above it, guest RAM runs from
//! [`HIMEM_START`] up to the MMIO gap at [`MMIO_GAP_START`] and continues
//! above 4 GiB. The table in `docs/boot.md` shows the same map.
//!
//! ```text
//! 0x0000_0500  GDT (6 entries)            0x0000_0540  IDT (one empty entry)
//! 0x0000_1000  TSS + I/O bitmap (to 0x3069)
//! 0x0000_7000  Linux zero page            0x0000_8ff0  Linux boot stack top
//! 0x0000_9000  PML4  0x0000_a000 PDPT     0x0000_b000..0x0000_f000  4 PDs
//! 0x0002_0000  command line (64 KiB)      0x0009_fc00  EBDA / MP table
//! 0x000e_0000  ACPI: RSDP, XSDT, FADT, MADT, DSDT (Linux, to 1 MiB)
//! 0x0010_0000  HIMEM_START: kernel / bare-metal image, then free RAM
//!   ...        (bare metal: per-vCPU stacks at the top of low RAM)
//! 0xd000_0000  MMIO gap (devices; the accounting device is first)
//! 0xfffb_d000  KVM's TSS pages (inside the gap)
//! 0x1_0000_0000  RAM above 4 GiB, if any
//! ```

/// Guest-physical address of the GDT.
pub const GDT_ADDR: u64 = 0x500;
/// Number of GDT entries (see [`crate::arch::gdt`]).
pub const GDT_ENTRIES: usize = 6;
/// Guest-physical address of the IDT.
///
/// Firecracker puts the IDT at 0x520, right after its 4-entry GDT; our GDT
/// has 6 entries (user code and data for the CPL3 guests) and ends at 0x530,
/// so the IDT moves to the next 64-byte boundary.
pub const IDT_ADDR: u64 = 0x540;

/// Guest-physical address of the boot TSS: the 104-byte 64-bit TSS, then an
/// all-zero 8 KiB I/O permission bitmap (every port allowed) and the
/// terminating `0xff` byte. The bare-metal guests need the bitmap: a nested
/// KVM that emulates CPL 3 may ignore RFLAGS.IOPL and check it instead.
pub const TSS_ADDR: u64 = 0x1000;
/// Offset of the I/O permission bitmap in the TSS (`io_map_base`).
pub const TSS_IO_BITMAP_OFFSET: u64 = 0x68;
/// Bytes of the I/O permission bitmap: one bit per port.
pub const TSS_IO_BITMAP_SIZE: u64 = 0x1_0000 / 8;
/// The TSS limit (offset of its last byte, the bitmap's `0xff` terminator).
pub const TSS_LIMIT: u64 = TSS_IO_BITMAP_OFFSET + TSS_IO_BITMAP_SIZE;

/// Guest-physical address of the Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer of a Linux guest (Firecracker's `BOOT_STACK_POINTER`).
pub const LINUX_BOOT_STACK: u64 = 0x8ff0;

/// Guest-physical address of the PML4 (the value loaded into CR3).
pub const PML4_ADDR: u64 = 0x9000;
/// Guest-physical address of the single PDPT.
pub const PDPT_ADDR: u64 = 0xa000;
/// Guest-physical address of the first of [`PD_COUNT`] page directories.
pub const PD_ADDR: u64 = 0xb000;
/// Number of page directories: one per GiB of the identity-mapped low 4 GiB.
pub const PD_COUNT: u64 = 4;
/// End (exclusive) of the page tables.
pub const PAGE_TABLES_END: u64 = PD_ADDR + PD_COUNT * 0x1000;
/// Bytes identity-mapped by the boot page tables (2 MiB pages).
pub const IDENTITY_MAP_SIZE: u64 = PD_COUNT << 30;

/// Guest-physical address of the kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Bytes reserved for the command line, its terminating NUL included: a
/// command line may be at most `CMDLINE_CAPACITY - 1` bytes long.
pub const CMDLINE_CAPACITY: usize = 0x1_0000;

/// Start of the Extended BIOS Data Area; Linux reads the MP table from here.
/// RAM below it is reported to Linux as usable, `[EBDA_START, HIMEM_START)`
/// is not reported at all (the legacy VGA/BIOS hole).
pub const EBDA_START: u64 = 0x9_fc00;
/// Guest-physical address of the MP floating pointer and table.
pub const MPTABLE_START: u64 = EBDA_START;

/// Start of the ACPI tables (Linux guests): the RSDP, then the XSDT, FADT,
/// MADT and DSDT. The RSDP lies where Linux also looks for one when the boot
/// protocol does not name it (a scan of `0xe_0000..0x10_0000`), and the
/// area is not in the e820 RAM list, so the tables survive.
pub const ACPI_START: u64 = 0xe_0000;
/// Guest-physical address of the RSDP.
pub const RSDP_ADDR: u64 = ACPI_START;
/// The x86 reset vector in real mode (`f000:fff0`). A hardware-reduced
/// Linux without `reboot=k` ends its reboot attempts with a jump here (its
/// EFI reboot is skipped, then it "returns to the BIOS"); a small stub there
/// writes the ACPI reset register instead ([`crate::arch::acpi`]).
pub const RESET_VECTOR_ADDR: u64 = 0xf_fff0;
/// End (exclusive) of the area the ACPI tables may use: the reset vector.
pub const ACPI_END: u64 = RESET_VECTOR_ADDR;

/// First byte above the legacy first megabyte: kernels and bare-metal images
/// are loaded at or above it.
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the MMIO gap below 4 GiB. Guest RAM stops here and continues at
/// [`MMIO_GAP_END`]. The accounting device is the first device in the gap
/// (`accounting::abi::ACCT_MMIO_BASE`).
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End (exclusive) of the MMIO gap: 4 GiB.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Size of the MMIO gap.
pub const MMIO_GAP_SIZE: u64 = MMIO_GAP_END - MMIO_GAP_START;

/// Address KVM uses for the three pages of its real-mode TSS (Intel VMX).
/// It lies in the MMIO gap, where no RAM or device lives.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// Default physical address of the local APIC.
pub const APIC_DEFAULT_PHYS_BASE: u32 = 0xfee0_0000;
/// Default physical address of the I/O APIC.
pub const IOAPIC_DEFAULT_PHYS_BASE: u32 = 0xfec0_0000;

/// Size of each bare-metal vCPU's stack. vCPU `i`'s stack is
/// `[ram_end - (i + 1) * STACK, ram_end - i * STACK)`, where `ram_end` is
/// the number of RAM bytes below the MMIO gap.
pub const BARE_METAL_STACK_SIZE: u64 = 128 << 10;

/// Alignment of an initrd's start address (one page).
pub const INITRD_ALIGN: u64 = 0x1000;

/// Page size used for the alignment of guest memory sizes.
pub const PAGE_SIZE: u64 = 0x1000;

// The fixed structures must not overlap one another.
const _: () = assert!(GDT_ADDR + (GDT_ENTRIES as u64) * 8 <= IDT_ADDR);
const _: () = assert!(IDT_ADDR + 8 <= TSS_ADDR);
const _: () = assert!(TSS_ADDR + TSS_LIMIT < ZERO_PAGE_ADDR);
const _: () = assert!(ZERO_PAGE_ADDR + 0x1000 <= LINUX_BOOT_STACK);
const _: () = assert!(LINUX_BOOT_STACK < PML4_ADDR);
const _: () = assert!(PAGE_TABLES_END <= CMDLINE_ADDR);
const _: () = assert!(CMDLINE_ADDR + CMDLINE_CAPACITY as u64 <= EBDA_START);
const _: () = assert!(EBDA_START < ACPI_START && ACPI_START < ACPI_END && ACPI_END <= RESET_VECTOR_ADDR);
const _: () = assert!(RESET_VECTOR_ADDR + 16 == HIMEM_START);
const _: () = assert!(IDENTITY_MAP_SIZE == MMIO_GAP_END);
const _: () = assert!(KVM_TSS_ADDR >= MMIO_GAP_START && KVM_TSS_ADDR + 3 * 0x1000 <= MMIO_GAP_END);

/// Number of RAM bytes below the MMIO gap for a VM with `mem_bytes` of RAM.
pub const fn ram_end_below_gap(mem_bytes: u64) -> u64 {
    if mem_bytes < MMIO_GAP_START {
        mem_bytes
    } else {
        MMIO_GAP_START
    }
}

/// Lowest address of the bare-metal stacks of `nr_vcpus` vCPUs when RAM
/// below the gap ends at `ram_end`, or `None` if they do not fit above
/// [`HIMEM_START`].
pub fn bare_metal_stack_base(ram_end: u64, nr_vcpus: u8) -> Option<u64> {
    let stacks = u64::from(nr_vcpus).checked_mul(BARE_METAL_STACK_SIZE)?;
    ram_end.checked_sub(stacks).filter(|base| *base >= HIMEM_START)
}

/// Top (exclusive, 16-byte aligned) of vCPU `vcpu_id`'s bare-metal stack.
pub const fn bare_metal_stack_top(ram_end: u64, vcpu_id: u8) -> u64 {
    ram_end.saturating_sub(vcpu_id as u64 * BARE_METAL_STACK_SIZE) & !0xf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmio_gap_starts_with_the_accounting_device() {
        assert_eq!(MMIO_GAP_START, accounting::abi::ACCT_MMIO_BASE);
        const { assert!(accounting::abi::ACCT_MMIO_BASE + accounting::abi::ACCT_MMIO_SIZE <= KVM_TSS_ADDR) };
    }

    #[test]
    fn ram_end_is_capped_at_the_gap() {
        assert_eq!(ram_end_below_gap(128 << 20), 128 << 20);
        assert_eq!(ram_end_below_gap(MMIO_GAP_START), MMIO_GAP_START);
        assert_eq!(ram_end_below_gap(8 << 30), MMIO_GAP_START);
    }

    #[test]
    fn stacks_sit_at_the_top_of_low_ram() {
        let ram_end = 128 << 20;
        assert_eq!(
            bare_metal_stack_base(ram_end, 4),
            Some(ram_end - 4 * BARE_METAL_STACK_SIZE)
        );
        assert_eq!(bare_metal_stack_top(ram_end, 0), ram_end);
        assert_eq!(
            bare_metal_stack_top(ram_end, 3),
            ram_end - 3 * BARE_METAL_STACK_SIZE
        );
    }

    #[test]
    fn stacks_that_reach_into_low_memory_do_not_fit() {
        assert_eq!(
            bare_metal_stack_base(HIMEM_START + BARE_METAL_STACK_SIZE, 2),
            None
        );
        assert_eq!(bare_metal_stack_base(0, 1), None);
    }
}
