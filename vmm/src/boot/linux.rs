//! The Linux path: the 64-bit Linux boot protocol, as Firecracker does it.
//!
//! 1. The kernel is loaded with linux-loader: an ELF `vmlinux` at its
//!    physical addresses, a bzImage's protected-mode part at `code32_start`
//!    (1 MiB). The 64-bit entry is the ELF entry, or the bzImage's load
//!    address + 0x200 (`startup_64`).
//! 2. An initrd, if any, goes at the highest page-aligned address that keeps
//!    it below both the end of low RAM and the kernel's `initrd_addr_max`,
//!    and above the kernel.
//! 3. The command line goes at [`CMDLINE_ADDR`] through linux-loader's
//!    `Cmdline` (printable ASCII, at most the kernel's `cmdline_size`).
//! 4. The zero page (`struct boot_params`) at [`ZERO_PAGE_ADDR`]: the
//!    bzImage's setup header (or a fresh one for an ELF) with the loader
//!    fields filled in, and the e820 map — RAM `[0, EBDA)`, RAM
//!    `[1 MiB, min(end, gap))`, and RAM above 4 GiB if any.
//! 5. The MP table (CPUs and legacy interrupt routing, for kernels without
//!    ACPI), the GDT, IDT and identity page tables.
//! 6. Afterwards the VM writes the ACPI tables, which need the device list
//!    ([`crate::arch::acpi`]), and puts the RSDP's address in the zero page
//!    with [`set_acpi_rsdp_addr`].
//!
//! Booting the result needs hardware virtualization: a kernel's CPL 0 code
//! cannot run on the development machines' emulating nested KVM.

use std::io::Cursor;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{load_cmdline, BzImage, Cmdline, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::{elf_note, zero_bss, BootError, BootPlan, KernelKind, LinuxFormat};
use crate::arch::gdt::write_gdt_and_idt;
use crate::arch::layout::{
    CMDLINE_ADDR, CMDLINE_CAPACITY, EBDA_START, HIMEM_START, INITRD_ALIGN, MMIO_GAP_END, MMIO_GAP_START,
    ZERO_PAGE_ADDR,
};
use crate::arch::memory::ram_below_gap;
use crate::arch::mptable::setup_mptable;
use crate::arch::paging::write_identity_page_tables;
use crate::arch::regs::BootMode;

/// `boot_flag` value.
pub const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `header` value: `"HdrS"`.
pub const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader`: an undefined boot loader.
pub const KERNEL_LOADER_OTHER: u8 = 0xff;
/// `kernel_alignment` for an ELF kernel (Firecracker's value).
pub const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
/// `loadflags`: the protected-mode kernel is loaded at 1 MiB.
pub const LOADED_HIGH: u8 = 0x01;
/// `xloadflags`: the kernel has the 64-bit entry at +0x200.
pub const XLF_KERNEL_64: u16 = 0x01;
/// Offset of the 64-bit entry from a bzImage's protected-mode start.
pub const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// `initrd_addr_max` assumed for boot protocols before 2.03.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// Command-line limit assumed for boot protocols before 2.06.
const OLD_CMDLINE_MAX: usize = 255;
/// Offset of the setup header in a bzImage.
const SETUP_HEADER_OFFSET: usize = 0x1f1;

/// Reads the setup header of a would-be bzImage, if the file is long
/// enough to hold one.
fn read_setup_header(image: &[u8]) -> Option<setup_header> {
    let mut hdr = setup_header::default();
    let bytes = image.get(SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>())?;
    vm_memory::ByteValued::as_mut_slice(&mut hdr).copy_from_slice(bytes);
    Some(hdr)
}

/// Whether `image` has a bzImage setup header (`0xaa55` and `"HdrS"`).
pub fn looks_like_bzimage(image: &[u8]) -> bool {
    read_setup_header(image)
        .is_some_and(|h| h.boot_flag == KERNEL_BOOT_FLAG_MAGIC && h.header == KERNEL_HDR_MAGIC)
}

/// The highest address an initrd may reach (exclusive), from the setup
/// header, or `None` when there is no header (ELF kernels).
fn initrd_limit(hdr: Option<&setup_header>) -> Option<u64> {
    hdr.map(|h| {
        let max = if h.version >= 0x0203 && h.initrd_addr_max != 0 {
            u64::from(h.initrd_addr_max)
        } else {
            DEFAULT_INITRD_ADDR_MAX
        };
        max + 1
    })
}

/// Where an initrd of `size` bytes goes: the highest [`INITRD_ALIGN`]-ed
/// address such that it ends at or below `min(ram_end, limit)` and starts
/// at or above `kernel_end`.
pub fn initrd_addr(ram_end: u64, limit: Option<u64>, size: u64, kernel_end: u64) -> Result<u64, BootError> {
    let top = limit.map_or(ram_end, |l| l.min(ram_end));
    let err = || BootError::InitrdDoesNotFit {
        size,
        kernel_end,
        limit: top,
    };
    let addr = top.checked_sub(size).ok_or_else(err)? & !(INITRD_ALIGN - 1);
    if addr < kernel_end {
        return Err(err());
    }
    Ok(addr)
}

/// The e820 map for `ram_low` bytes of RAM below the gap and `ram_high`
/// bytes above 4 GiB, as `(addr, size, type)`.
pub fn e820_map(ram_low: u64, ram_high: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![(0, EBDA_START.min(ram_low), E820_RAM)];
    let low_end = ram_low.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        map.push((HIMEM_START, low_end - HIMEM_START, E820_RAM));
    }
    if ram_high > 0 {
        map.push((MMIO_GAP_END, ram_high, E820_RAM));
    }
    map
}

/// Bytes of RAM at or above 4 GiB.
fn ram_above_gap(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .filter(|r| r.start_addr().0 >= MMIO_GAP_END)
        .map(|r| r.len())
        .sum()
}

/// The parts of the zero page this VMM sets (everything else stays as the
/// kernel's setup header or zero).
pub struct ZeroPage<'a> {
    /// The bzImage's setup header, `None` for an ELF kernel.
    pub setup_header: Option<setup_header>,
    /// Bytes of the command line, its NUL included.
    pub cmdline_size: u32,
    /// Initrd address and size, if any.
    pub initrd: Option<(u32, u32)>,
    /// The e820 map.
    pub e820: &'a [(u64, u64, u32)],
}

/// Builds `struct boot_params` (see the module docs).
pub fn build_boot_params(zp: &ZeroPage<'_>) -> Result<boot_params, BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = zp.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.loadflags |= LOADED_HIGH;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    #[allow(clippy::cast_possible_truncation)] // 0x20000.
    {
        params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    }
    params.hdr.cmdline_size = zp.cmdline_size;
    if let Some((addr, size)) = zp.initrd {
        params.hdr.ramdisk_image = addr;
        params.hdr.ramdisk_size = size;
    }
    if zp.e820.len() > params.e820_table.len() {
        return Err(BootError::E820Full);
    }
    for (slot, &(addr, size, type_)) in params.e820_table.iter_mut().zip(zp.e820) {
        *slot = boot_e820_entry {
            addr,
            size,
            r#type: type_,
        };
    }
    params.e820_entries = u8::try_from(zp.e820.len()).map_err(|_| BootError::E820Full)?;
    Ok(params)
}

/// Builds the command line the kernel accepts: at most its `cmdline_size`
/// (or our 64 KiB buffer) and printable ASCII.
fn build_cmdline(cmdline: &str, hdr: Option<&setup_header>) -> Result<Cmdline, BootError> {
    let max = match hdr {
        Some(h) if h.version >= 0x0206 => usize::try_from(h.cmdline_size)
            .unwrap_or(usize::MAX)
            .min(CMDLINE_CAPACITY - 1),
        Some(_) => OLD_CMDLINE_MAX,
        None => CMDLINE_CAPACITY - 1,
    };
    if cmdline.trim().len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut cl = Cmdline::new(max + 1).map_err(|e| BootError::CmdlineInvalid(Some(e)))?;
    if !cmdline.trim().is_empty() {
        cl.insert_str(cmdline)
            .map_err(|e| BootError::CmdlineInvalid(Some(e)))?;
    }
    Ok(cl)
}

/// Sets `acpi_rsdp_addr` in the zero page that [`load_linux`] wrote: the
/// kernel takes the RSDP from there (boot protocol 2.14 and later) instead of
/// scanning the BIOS area for it.
pub fn set_acpi_rsdp_addr(mem: &GuestMemoryMmap, rsdp: u64) -> Result<(), BootError> {
    let field = std::mem::offset_of!(boot_params, acpi_rsdp_addr) as u64;
    mem.write_obj(rsdp, GuestAddress(ZERO_PAGE_ADDR + field))
        .map_err(|source| BootError::Write {
            what: "zero page's acpi_rsdp_addr",
            source,
        })
}

/// The Linux path (see the module docs).
pub(crate) fn load_linux(
    mem: &GuestMemoryMmap,
    kernel: &[u8],
    format: LinuxFormat,
    initrd: Option<&[u8]>,
    cmdline: &str,
    nr_vcpus: u8,
) -> Result<BootPlan, BootError> {
    let himem = Some(GuestAddress(HIMEM_START));
    let (entry, setup_header, kernel_start, kernel_end) = match format {
        LinuxFormat::Elf => {
            let info = elf_note::parse_elf(kernel)?;
            let (start, end) = info.load_range().ok_or(BootError::NothingToLoad)?;
            // linux-loader checks the entry, not the segments: one below
            // 1 MiB would overlap the zero page, command line, page tables
            // and MP table written below.
            if start < HIMEM_START {
                return Err(BootError::KernelBelowHimem { start });
            }
            // As for a bare-metal image: the vCPUs would start in bytes the
            // image does not load.
            if !(start..end).contains(&info.entry) {
                return Err(BootError::EntryOutsideImage {
                    entry: info.entry,
                    start,
                    end,
                });
            }
            Elf::load(mem, None, &mut Cursor::new(kernel), himem).map_err(BootError::Load)?;
            zero_bss(mem, &info)?;
            (info.entry, None, start, end)
        }
        LinuxFormat::Bzimage => {
            if let Some(h) = read_setup_header(kernel) {
                if h.version >= 0x020c && h.xloadflags & XLF_KERNEL_64 == 0 {
                    return Err(BootError::UnknownFormat);
                }
            }
            let res = BzImage::load(mem, None, &mut Cursor::new(kernel), himem).map_err(BootError::Load)?;
            let hdr = res.setup_header;
            let start = res.kernel_load.0;
            // `startup_64` must be among the protected-mode bytes loaded.
            let entry = start + BZIMAGE_64BIT_ENTRY_OFFSET;
            if entry >= res.kernel_end {
                return Err(BootError::EntryOutsideImage {
                    entry,
                    start,
                    end: res.kernel_end,
                });
            }
            // The kernel decompresses in place and needs `init_size` bytes.
            let init_end = hdr
                .filter(|h| h.version >= 0x020a)
                .map_or(0, |h| start.saturating_add(u64::from(h.init_size)));
            (entry, hdr, start, res.kernel_end.max(init_end))
        }
    };

    let ram_low = ram_below_gap(mem);
    let initrd_range = match initrd {
        Some(bytes) => {
            let size = bytes.len() as u64;
            let addr = initrd_addr(ram_low, initrd_limit(setup_header.as_ref()), size, kernel_end)?;
            mem.write_slice(bytes, GuestAddress(addr))
                .map_err(|source| BootError::Write {
                    what: "initrd",
                    source,
                })?;
            Some((GuestAddress(addr), GuestAddress(addr + size)))
        }
        None => None,
    };

    let cl = build_cmdline(cmdline, setup_header.as_ref())?;
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cl).map_err(BootError::CmdlineWrite)?;
    let cmdline_size = cl
        .as_cstring()
        .map_err(|e| BootError::CmdlineInvalid(Some(e)))?
        .as_bytes_with_nul()
        .len();

    let e820 = e820_map(ram_low, ram_above_gap(mem));
    let initrd_fields = initrd_range
        .map(|(start, end)| {
            let addr = u32::try_from(start.0).ok()?;
            let size = u32::try_from(end.0 - start.0).ok()?;
            Some((addr, size))
        })
        .map(|f| {
            f.ok_or(BootError::InitrdDoesNotFit {
                size: initrd.map_or(0, |b| b.len() as u64),
                kernel_end,
                limit: MMIO_GAP_START,
            })
        })
        .transpose()?;
    let params = build_boot_params(&ZeroPage {
        setup_header,
        cmdline_size: u32::try_from(cmdline_size).unwrap_or(u32::MAX),
        initrd: initrd_fields,
        e820: &e820,
    })?;
    LinuxBootConfigurator::write_bootparams(&BootParams::new(&params, GuestAddress(ZERO_PAGE_ADDR)), mem)
        .map_err(BootError::BootParams)?;

    setup_mptable(mem, nr_vcpus)?;
    write_gdt_and_idt(mem)?;
    write_identity_page_tables(mem)?;

    Ok(BootPlan {
        kind: KernelKind::Linux { format },
        mode: BootMode::Linux64 {
            entry: GuestAddress(entry),
            boot_params: GuestAddress(ZERO_PAGE_ADDR),
        },
        kernel_range: (GuestAddress(kernel_start), GuestAddress(kernel_end)),
        initrd_range,
    })
}

#[cfg(test)]
mod tests {
    use super::super::elf_note::testutil::*;
    use super::super::load_kernel;
    use super::*;
    use crate::arch::layout::MPTABLE_START;
    use vm_memory::ByteValued;

    fn mem(bytes: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), bytes)]).unwrap()
    }

    /// A synthetic bzImage: one setup sector after the boot sector, then a
    /// 4 KiB "compressed kernel".
    fn bzimage() -> Vec<u8> {
        let mut hdr = setup_header {
            setup_sects: 1,
            boot_flag: KERNEL_BOOT_FLAG_MAGIC,
            header: KERNEL_HDR_MAGIC,
            version: 0x020f,
            loadflags: 0x01,
            code32_start: 0x10_0000,
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x20_0000,
            relocatable_kernel: 1,
            xloadflags: XLF_KERNEL_64,
            cmdline_size: 2047,
            init_size: 0x40_0000,
            ..Default::default()
        };
        hdr.jump = 0x66eb;
        let mut image = vec![0u8; 1024];
        image[SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>()]
            .copy_from_slice(hdr.as_slice());
        image.extend(std::iter::repeat_n(0x5a, 4096));
        image
    }

    fn zero_page(mem: &GuestMemoryMmap) -> boot_params {
        mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap()
    }

    fn e820(params: &boot_params) -> Vec<(u64, u64, u32)> {
        params.e820_table[..usize::from(params.e820_entries)]
            .iter()
            .map(|e| (e.addr, e.size, e.r#type))
            .collect()
    }

    #[test]
    fn e820_for_128_mib() {
        assert_eq!(
            e820_map(128 << 20, 0),
            vec![
                (0, 0x9_fc00, E820_RAM),
                (0x10_0000, (128 << 20) - 0x10_0000, E820_RAM),
            ]
        );
    }

    #[test]
    fn e820_for_more_than_4_gib() {
        let total = 6u64 << 30;
        assert_eq!(
            e820_map(MMIO_GAP_START, total - MMIO_GAP_START),
            vec![
                (0, 0x9_fc00, E820_RAM),
                (0x10_0000, MMIO_GAP_START - 0x10_0000, E820_RAM),
                (1 << 32, total - MMIO_GAP_START, E820_RAM),
            ]
        );
    }

    #[test]
    fn initrd_goes_high_page_aligned_and_below_the_limit() {
        let addr = initrd_addr(128 << 20, Some(0x8000_0000), 0x1234, 0x20_0000).unwrap();
        assert_eq!(addr % INITRD_ALIGN, 0);
        assert!(addr + 0x1234 <= 128 << 20);
        assert_eq!(addr, ((128 << 20) - 0x1234) & !0xfff);
        // The kernel's limit wins when it is lower than RAM.
        let addr = initrd_addr(1 << 30, Some(0x3800_0000), 0x1000, 0x20_0000).unwrap();
        assert_eq!(addr, 0x3800_0000 - 0x1000);
    }

    #[test]
    fn initrd_that_does_not_fit_is_an_error() {
        assert!(matches!(
            initrd_addr(16 << 20, None, 15 << 20, 0x20_0000),
            Err(BootError::InitrdDoesNotFit { .. })
        ));
        assert!(matches!(
            initrd_addr(16 << 20, None, 32 << 20, 0),
            Err(BootError::InitrdDoesNotFit { .. })
        ));
    }

    #[test]
    fn bzimage_boot_params_are_complete() {
        let mem = mem(128 << 20);
        let initrd = vec![0x42u8; 10_000];

        let plan = load_kernel(&mem, &bzimage(), Some(&initrd), "console=ttyS0 quiet", 2).unwrap();

        assert_eq!(
            plan.kind,
            KernelKind::Linux {
                format: LinuxFormat::Bzimage
            }
        );
        assert!(plan.wants_irqchip());
        assert_eq!(
            plan.mode,
            BootMode::Linux64 {
                entry: GuestAddress(0x10_0200),
                boot_params: GuestAddress(ZERO_PAGE_ADDR),
            }
        );
        let p = zero_page(&mem);
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.kernel_alignment }, 0x20_0000);
        assert_eq!(p.hdr.loadflags & LOADED_HIGH, LOADED_HIGH);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x2_0000);
        assert_eq!({ p.hdr.cmdline_size }, 20);
        let (start, end) = plan.initrd_range.unwrap();
        assert_eq!(u64::from(p.hdr.ramdisk_image), start.0);
        assert_eq!({ p.hdr.ramdisk_size }, 10_000);
        assert_eq!(end.0 - start.0, 10_000);
        assert_eq!(start.0 % 4096, 0);
        assert!(end.0 <= 128 << 20);
        assert_eq!(
            e820(&p),
            vec![(0, 0x9_fc00, 1), (0x10_0000, (128 << 20) - 0x10_0000, 1)]
        );
        let mut cmdline = [0u8; 20];
        mem.read_slice(&mut cmdline, GuestAddress(CMDLINE_ADDR)).unwrap();
        assert_eq!(&cmdline, b"console=ttyS0 quiet\0");
        let mut initrd_back = vec![0u8; 10_000];
        mem.read_slice(&mut initrd_back, start).unwrap();
        assert_eq!(initrd_back, initrd);
        // The kernel range covers the in-place decompression area.
        assert_eq!(
            plan.kernel_range,
            (GuestAddress(0x10_0000), GuestAddress(0x50_0000))
        );
        // The MP table is there.
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_START)).unwrap();
        assert_eq!(&sig, b"_MP_");
    }

    #[test]
    fn boot_params_above_4_gib_list_high_ram() {
        // Lazily backed, so 5 GiB of address space costs nothing.
        let mem = GuestMemoryMmap::<()>::from_ranges(&crate::arch::memory::ram_regions(5 << 30)).unwrap();
        load_kernel(&mem, &bzimage(), None, "", 1).unwrap();
        let p = zero_page(&mem);
        assert_eq!(
            e820(&p),
            vec![
                (0, 0x9_fc00, 1),
                (0x10_0000, MMIO_GAP_START - 0x10_0000, 1),
                (1 << 32, (5 << 30) - MMIO_GAP_START, 1),
            ]
        );
        assert_eq!((p.hdr.ramdisk_image, p.hdr.ramdisk_size), (0, 0));
        assert_eq!({ p.hdr.cmdline_size }, 1);
    }

    #[test]
    fn elf_kernel_gets_a_fresh_header_and_its_own_entry() {
        let mem = mem(64 << 20);
        let image = build_elf(0x100_0000, &[load_ph(0x100_0000, vec![0x90; 64], 0x1000)]);

        let plan = load_kernel(&mem, &image, None, "reboot=k", 1).unwrap();

        assert_eq!(
            plan.kind,
            KernelKind::Linux {
                format: LinuxFormat::Elf
            }
        );
        assert_eq!(plan.mode.entry(), GuestAddress(0x100_0000));
        let p = zero_page(&mem);
        assert_eq!({ p.hdr.kernel_alignment }, KERNEL_MIN_ALIGNMENT_BYTES);
        assert_eq!(
            (p.hdr.boot_flag, p.hdr.header, p.hdr.type_of_loader),
            (0xaa55, KERNEL_HDR_MAGIC, 0xff)
        );
        assert_eq!({ p.hdr.cmdline_size }, 9);
    }

    #[test]
    fn cmdline_longer_than_the_kernel_accepts_is_refused() {
        let mem = mem(128 << 20);
        let long = "a".repeat(2048);
        assert!(matches!(
            load_kernel(&mem, &bzimage(), None, &long, 1),
            Err(BootError::CmdlineTooLong { len: 2048, max: 2047 })
        ));
        let ok = "a".repeat(2047);
        load_kernel(&mem, &bzimage(), None, &ok, 1).unwrap();
    }

    #[test]
    fn cmdline_with_control_characters_is_refused() {
        let mem = mem(128 << 20);
        assert!(matches!(
            load_kernel(&mem, &bzimage(), None, "a\tb", 1),
            Err(BootError::CmdlineInvalid(_))
        ));
    }

    #[test]
    fn bzimage_without_64_bit_entry_is_refused() {
        let mut image = bzimage();
        // xloadflags is at 0x236.
        image[0x236] = 0;
        assert!(matches!(
            load_kernel(&mem(128 << 20), &image, None, "", 1),
            Err(BootError::UnknownFormat)
        ));
    }

    #[test]
    fn bzimage_too_short_for_its_64_bit_entry_is_refused() {
        // Found by the boot_image fuzz target: no protected-mode bytes at all,
        // or fewer than reach startup_64 at +0x200.
        for kernel_bytes in [0, 0x200] {
            let mut image = bzimage();
            image.truncate(1024 + kernel_bytes);
            assert!(
                matches!(
                    load_kernel(&mem(128 << 20), &image, None, "", 1),
                    Err(BootError::EntryOutsideImage { entry: 0x10_0200, .. })
                ),
                "{kernel_bytes} bytes"
            );
        }
    }

    #[test]
    fn elf_kernel_with_entry_outside_its_segments_is_refused() {
        let image = build_elf(0x200_0000, &[load_ph(0x100_0000, vec![0x90; 64], 0x1000)]);
        assert!(matches!(
            load_kernel(&mem(128 << 20), &image, None, "", 1),
            Err(BootError::EntryOutsideImage {
                entry: 0x200_0000,
                ..
            })
        ));
    }

    #[test]
    fn elf_kernel_with_a_segment_below_1_mib_is_refused() {
        // Found by the boot_image fuzz target: a PT_LOAD at 0xfff6a, entry above 1 MiB.
        let image = build_elf(0x10_0000, &[load_ph(0xf_f000, vec![0x90; 64], 0x2000)]);
        assert!(matches!(
            load_kernel(&mem(128 << 20), &image, None, "", 1),
            Err(BootError::KernelBelowHimem { start: 0xf_f000 })
        ));
    }

    #[test]
    fn too_many_vcpus_for_the_mp_table_is_refused() {
        assert!(matches!(
            load_kernel(&mem(128 << 20), &bzimage(), None, "", 255),
            Err(BootError::VcpuCount(255))
        ));
    }
}
