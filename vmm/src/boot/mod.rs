//! Kernel loading: from an image to a [`BootPlan`] the vCPUs can start from.
//!
//! [`load_kernel`] looks at the image and picks one of two paths:
//!
//! - **Bare metal** — an ELF64 file carrying the `"Resourceful"` marker note
//!   (see [`elf_note`]): one of the project's own guest programs. Its
//!   segments are loaded at their physical addresses (at or above 1 MiB),
//!   `.bss` is zeroed, the command line is written at
//!   [`layout::CMDLINE_ADDR`], and the GDT, IDT and identity page tables are
//!   written so the vCPUs can start at CPL 3 in 64-bit mode
//!   ([`BootMode::BareMetal`]). These guests run on any KVM, including the
//!   nested, emulating one of the development machines.
//! - **Linux** ([`linux`]) — any other ELF64 (a `vmlinux`) or a bzImage,
//!   booted with the 64-bit Linux boot protocol as Firecracker does it: zero
//!   page, e820 map, MP table, optional initrd ([`BootMode::Linux64`]). This
//!   needs hardware virtualization.
//!
//! The images are passed as bytes: the embedded guest programs already are,
//! and a `--kernel` file is read with [`read_image`]. linux-loader reads
//! them through a `Cursor`.

pub mod elf_note;
pub mod linux;

use std::io::Cursor;
use std::path::Path;

use linux_loader::loader::{Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::gdt::{write_gdt_and_idt, write_tss, GdtError};
use crate::arch::layout::{self, CMDLINE_ADDR, CMDLINE_CAPACITY, HIMEM_START};
use crate::arch::memory::{ram_below_gap, to_usize};
use crate::arch::mptable::{MptableError, MAX_SUPPORTED_CPUS};
use crate::arch::paging::{write_identity_page_tables, PagingError};
use crate::arch::regs::BootMode;

use self::elf_note::{ElfInfo, ElfNoteError};

/// Largest image [`read_image`] accepts (1 GiB).
pub const MAX_IMAGE_BYTES: u64 = 1 << 30;

/// The format of a Linux kernel image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinuxFormat {
    /// A compressed `bzImage`.
    Bzimage,
    /// An uncompressed ELF `vmlinux` (or any plain ELF64 program).
    Elf,
}

/// What kind of guest an image is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    /// A Linux kernel, booted with the 64-bit boot protocol.
    Linux {
        /// Its image format.
        format: LinuxFormat,
    },
    /// One of the project's bare-metal guest programs.
    BareMetal,
}

/// The result of loading a kernel: everything the vCPU setup needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootPlan {
    /// What was loaded.
    pub kind: KernelKind,
    /// How every vCPU starts; pass it to [`crate::arch::configure_vcpu`].
    pub mode: BootMode,
    /// Guest-physical `[start, end)` of the loaded image (with `.bss`).
    pub kernel_range: (GuestAddress, GuestAddress),
    /// Guest-physical `[start, end)` of the initrd, if one was loaded.
    pub initrd_range: Option<(GuestAddress, GuestAddress)>,
}

impl BootPlan {
    /// Whether the guest expects the in-kernel irqchip and PIT
    /// ([`crate::arch::setup_vm`]'s `with_irqchip`): Linux does, the
    /// bare-metal guests run with interrupts off and do not.
    pub fn wants_irqchip(&self) -> bool {
        matches!(self.kind, KernelKind::Linux { .. })
    }
}

/// Errors from loading a kernel.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The image could not be read from disk.
    #[error("cannot read the {what} image {path}: check the path given with --{what}")]
    Read {
        /// `kernel` or `initrd`.
        what: &'static str,
        /// The path.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The image is larger than [`MAX_IMAGE_BYTES`].
    #[error("the {what} image {path} is {size} bytes, more than the {MAX_IMAGE_BYTES}-byte limit")]
    ImageTooLarge {
        /// `kernel` or `initrd`.
        what: &'static str,
        /// The path.
        path: String,
        /// Its size.
        size: u64,
    },
    /// Neither ELF64 nor bzImage.
    #[error(
        "the kernel image is not a format Resourceful boots: pass an x86_64 ELF (a bare-metal guest \
         program or a Linux vmlinux) or a Linux bzImage with --kernel"
    )]
    UnknownFormat,
    /// A malformed ELF, or a bare-metal marker with the wrong version.
    #[error(transparent)]
    Elf(#[from] ElfNoteError),
    /// Bad vCPU count.
    #[error("{0} vCPUs is not supported: pass --vcpus between 1 and {MAX_SUPPORTED_CPUS}")]
    VcpuCount(u8),
    /// The bare-metal stacks do not fit above 1 MiB.
    #[error(
        "{nr_vcpus} bare-metal stacks of {} KiB do not fit in {ram_end:#x} bytes of RAM: raise --mem-mib",
        layout::BARE_METAL_STACK_SIZE >> 10
    )]
    StacksDoNotFit {
        /// RAM below the gap.
        ram_end: u64,
        /// vCPUs.
        nr_vcpus: u8,
    },
    /// A bare-metal image does not fit between 1 MiB and the stacks.
    #[error(
        "the guest image occupies [{start:#x}, {end:#x}) but must lie within [{HIMEM_START:#x}, \
         {limit:#x}) below the vCPU stacks: raise --mem-mib or link the image at 1 MiB or above"
    )]
    ImageDoesNotFit {
        /// Lowest byte of the image.
        start: u64,
        /// End of the image.
        end: u64,
        /// Lowest stack byte.
        limit: u64,
    },
    /// A Linux ELF kernel loads below 1 MiB, where the boot structures go.
    #[error(
        "the kernel image loads at {start:#x}, below {HIMEM_START:#x} where the zero page, command \
         line and page tables go: pass a vmlinux linked at 1 MiB or above with --kernel"
    )]
    KernelBelowHimem {
        /// Lowest byte of the image.
        start: u64,
    },
    /// The entry point is not in any byte the image loads.
    #[error(
        "the guest image's entry point {entry:#x} lies outside what it loads, [{start:#x}, {end:#x}): \
         fix the program's entry symbol or linker script and pass the rebuilt file with --kernel"
    )]
    EntryOutsideImage {
        /// The ELF entry point.
        entry: u64,
        /// Lowest byte of the image.
        start: u64,
        /// End of the image.
        end: u64,
    },
    /// The ELF has nothing to load.
    #[error("the ELF image has no PT_LOAD segment: pass a linked executable with --kernel")]
    NothingToLoad,
    /// linux-loader failed.
    #[error("could not load the kernel into guest memory (is --mem-mib large enough for it?)")]
    Load(#[source] linux_loader::loader::Error),
    /// The command line is too long.
    #[error("the kernel command line is {len} bytes; the limit is {max} bytes")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The limit (without the NUL).
        max: usize,
    },
    /// The command line has a character the kernel cannot take.
    #[error("the kernel command line is invalid: use printable ASCII without NUL bytes")]
    CmdlineInvalid(#[source] Option<linux_loader::cmdline::Error>),
    /// The command line could not be written.
    #[error("could not write the kernel command line into guest memory")]
    CmdlineWrite(#[source] linux_loader::loader::Error),
    /// The initrd does not fit.
    #[error(
        "the initrd of {size} bytes does not fit between the kernel end {kernel_end:#x} and \
         {limit:#x}: raise --mem-mib or use a smaller initrd"
    )]
    InitrdDoesNotFit {
        /// Its size.
        size: u64,
        /// End of the kernel.
        kernel_end: u64,
        /// Highest address (exclusive) it may reach.
        limit: u64,
    },
    /// Writing to guest memory failed.
    #[error("could not write the {what} into guest memory (raise --mem-mib)")]
    Write {
        /// What.
        what: &'static str,
        /// What vm-memory reported.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// Too many e820 entries.
    #[error("the e820 memory map has more entries than the zero page holds")]
    E820Full,
    /// The zero page could not be written.
    #[error("could not write the Linux zero page")]
    BootParams(#[source] linux_loader::configurator::Error),
    /// The descriptor tables could not be written.
    #[error(transparent)]
    Gdt(#[from] GdtError),
    /// The page tables could not be written.
    #[error(transparent)]
    Paging(#[from] PagingError),
    /// The MP table could not be written.
    #[error(transparent)]
    Mptable(#[from] MptableError),
}

/// Reads a kernel or initrd image from `path`; `what` (`"kernel"` or
/// `"initrd"`) names the flag in error messages.
pub fn read_image(path: &Path, what: &'static str) -> Result<Vec<u8>, BootError> {
    let shown = || path.display().to_string();
    let size = std::fs::metadata(path)
        .map_err(|source| BootError::Read {
            what,
            path: shown(),
            source,
        })?
        .len();
    if size > MAX_IMAGE_BYTES {
        return Err(BootError::ImageTooLarge {
            what,
            path: shown(),
            size,
        });
    }
    std::fs::read(path).map_err(|source| BootError::Read {
        what,
        path: shown(),
        source,
    })
}

/// Detects the kind of `kernel` without loading it.
pub fn detect_kind(kernel: &[u8]) -> Result<KernelKind, BootError> {
    if elf_note::is_elf(kernel) {
        return Ok(match elf_note::bare_metal_marker(kernel)? {
            Some(_) => KernelKind::BareMetal,
            None => KernelKind::Linux {
                format: LinuxFormat::Elf,
            },
        });
    }
    if linux::looks_like_bzimage(kernel) {
        return Ok(KernelKind::Linux {
            format: LinuxFormat::Bzimage,
        });
    }
    Err(BootError::UnknownFormat)
}

/// Loads `kernel` (and, for Linux, `initrd`) into `mem` with `cmdline`, for
/// a VM of `nr_vcpus` vCPUs, and writes every boot structure the chosen
/// path needs. A bare-metal guest ignores `initrd`.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    kernel: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    nr_vcpus: u8,
) -> Result<BootPlan, BootError> {
    if nr_vcpus == 0 || nr_vcpus > MAX_SUPPORTED_CPUS {
        return Err(BootError::VcpuCount(nr_vcpus));
    }
    match detect_kind(kernel)? {
        KernelKind::BareMetal => {
            if initrd.is_some() {
                log::warn!("bare-metal guests take no initrd; ignoring --initrd");
            }
            load_bare_metal(mem, kernel, cmdline, nr_vcpus)
        }
        KernelKind::Linux { format } => linux::load_linux(mem, kernel, format, initrd, cmdline, nr_vcpus),
    }
}

/// Zeroes `[paddr + filesz, paddr + memsz)` of every `PT_LOAD`: linux-loader
/// copies the file bytes only.
pub(crate) fn zero_bss(mem: &GuestMemoryMmap, info: &ElfInfo) -> Result<(), BootError> {
    const ZEROS: [u8; 4096] = [0; 4096];
    for seg in &info.loads {
        let mut addr = seg.paddr + seg.filesz;
        let end = seg.end();
        while addr < end {
            let n = (end - addr).min(ZEROS.len() as u64);
            mem.write_slice(&ZEROS[..to_usize(n)], GuestAddress(addr))
                .map_err(|source| BootError::Write { what: ".bss", source })?;
            addr += n;
        }
    }
    Ok(())
}

/// Writes a NUL-terminated command line at [`CMDLINE_ADDR`] and returns its
/// length without the NUL.
fn write_raw_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<u64, BootError> {
    if cmdline.len() >= CMDLINE_CAPACITY {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_CAPACITY - 1,
        });
    }
    if cmdline.contains('\0') {
        return Err(BootError::CmdlineInvalid(None));
    }
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_ADDR))
        .map_err(|source| BootError::Write {
            what: "command line",
            source,
        })?;
    Ok(cmdline.len() as u64)
}

/// The bare-metal path (see the module docs).
fn load_bare_metal(
    mem: &GuestMemoryMmap,
    kernel: &[u8],
    cmdline: &str,
    nr_vcpus: u8,
) -> Result<BootPlan, BootError> {
    let info = elf_note::parse_elf(kernel)?;
    let (start, end) = info.load_range().ok_or(BootError::NothingToLoad)?;
    let ram_end = ram_below_gap(mem);
    let stack_base = layout::bare_metal_stack_base(ram_end, nr_vcpus)
        .ok_or(BootError::StacksDoNotFit { ram_end, nr_vcpus })?;
    if !(start..end).contains(&info.entry) {
        return Err(BootError::EntryOutsideImage {
            entry: info.entry,
            start,
            end,
        });
    }
    let outside = |a: u64| a < HIMEM_START || a > stack_base;
    if outside(start) || outside(end) {
        return Err(BootError::ImageDoesNotFit {
            start,
            end,
            limit: stack_base,
        });
    }

    Elf::load(
        mem,
        None,
        &mut Cursor::new(kernel),
        Some(GuestAddress(HIMEM_START)),
    )
    .map_err(BootError::Load)?;
    zero_bss(mem, &info)?;

    let cmdline_len = write_raw_cmdline(mem, cmdline)?;
    write_gdt_and_idt(mem)?;
    write_tss(mem)?;
    write_identity_page_tables(mem)?;

    Ok(BootPlan {
        kind: KernelKind::BareMetal,
        mode: BootMode::BareMetal {
            entry: GuestAddress(info.entry),
            cmdline_addr: GuestAddress(CMDLINE_ADDR),
            cmdline_len,
            ram_end,
            stack_base,
        },
        kernel_range: (GuestAddress(start), GuestAddress(end)),
        initrd_range: None,
    })
}

#[cfg(test)]
mod tests {
    use super::elf_note::testutil::*;
    use super::*;
    use crate::arch::gdt::GDT;
    use crate::arch::layout::{GDT_ADDR, PML4_ADDR};

    fn mem(bytes: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), bytes)]).unwrap()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    #[test]
    fn bare_metal_image_is_loaded_with_bss_zeroed() {
        let mem = mem(32 << 20);
        mem.write_slice(&[0xaa; 0x4000], GuestAddress(0x10_0000)).unwrap();
        let image = bare_metal_elf(u32::from(accounting::abi::ABI_VERSION));

        let plan = load_kernel(&mem, &image, None, "mode=test", 2).unwrap();

        assert_eq!(plan.kind, KernelKind::BareMetal);
        assert!(!plan.wants_irqchip());
        assert_eq!(read(&mem, 0x10_0000, 0x30), vec![0xf4; 0x30]);
        assert_eq!(read(&mem, 0x10_1000, 0x10), vec![0x11; 0x10]);
        assert_eq!(read(&mem, 0x10_1010, 0x2000 - 0x10), vec![0; 0x2000 - 0x10]);
        // Past the segment's memsz, memory is untouched.
        assert_eq!(read(&mem, 0x10_3000, 0x10), vec![0xaa; 0x10]);
        assert_eq!(
            plan.kernel_range,
            (GuestAddress(0x10_0000), GuestAddress(0x10_3000))
        );
    }

    #[test]
    fn bare_metal_plan_carries_the_entry_convention() {
        let mem = mem(32 << 20);
        let image = bare_metal_elf(1);
        let plan = load_kernel(&mem, &image, None, "hello", 3).unwrap();
        let ram_end = 32u64 << 20;
        assert_eq!(
            plan.mode,
            BootMode::BareMetal {
                entry: GuestAddress(0x10_0000),
                cmdline_addr: GuestAddress(CMDLINE_ADDR),
                cmdline_len: 5,
                ram_end,
                stack_base: ram_end - 3 * layout::BARE_METAL_STACK_SIZE,
            }
        );
        assert_eq!(read(&mem, CMDLINE_ADDR, 6), b"hello\0");
        assert_eq!(mem.read_obj::<u64>(GuestAddress(GDT_ADDR + 32)).unwrap(), GDT[4]);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(PML4_ADDR)).unwrap() & 0x7, 0x7);
    }

    #[test]
    fn bare_metal_image_that_reaches_the_stacks_is_refused() {
        // 2 MiB of RAM: the stacks of 9 vCPUs would reach below 1 MiB.
        let mem = mem(2 << 20);
        let image = bare_metal_elf(1);
        assert!(matches!(
            load_kernel(&mem, &image, None, "", 9),
            Err(BootError::StacksDoNotFit { .. })
        ));
        // Room for the stacks but not for a big .bss.
        let image = build_elf(
            0x10_0000,
            &[
                note_ph(note(
                    accounting::abi::NOTE_NAME,
                    accounting::abi::NOTE_TYPE_BAREMETAL,
                    &[1, 0, 0, 0],
                )),
                load_ph(0x10_0000, vec![0xf4; 16], 0x10_0000),
            ],
        );
        let err = load_kernel(&mem, &image, None, "", 1).unwrap_err();
        assert!(matches!(err, BootError::ImageDoesNotFit { .. }));
        assert!(err.to_string().contains("--mem-mib"));
    }

    #[test]
    fn an_entry_point_outside_the_image_is_named_in_the_refusal() {
        let mem = mem(32 << 20);
        let image = build_elf(
            0x20_0000,
            &[
                note_ph(note(
                    accounting::abi::NOTE_NAME,
                    accounting::abi::NOTE_TYPE_BAREMETAL,
                    &[1, 0, 0, 0],
                )),
                load_ph(0x10_0000, vec![0xf4; 16], 16),
            ],
        );
        let err = load_kernel(&mem, &image, None, "", 1).unwrap_err();
        assert!(matches!(
            err,
            BootError::EntryOutsideImage {
                entry: 0x20_0000,
                start: 0x10_0000,
                end: 0x10_0010
            }
        ));
        assert!(err.to_string().contains("entry point 0x200000"), "{err}");
    }

    #[test]
    fn bare_metal_cmdline_too_long_is_refused() {
        let mem = mem(32 << 20);
        let long = "x".repeat(CMDLINE_CAPACITY);
        assert!(matches!(
            load_kernel(&mem, &bare_metal_elf(1), None, &long, 1),
            Err(BootError::CmdlineTooLong { max, .. }) if max == CMDLINE_CAPACITY - 1
        ));
        let longest = "x".repeat(CMDLINE_CAPACITY - 1);
        load_kernel(&mem, &bare_metal_elf(1), None, &longest, 1).unwrap();
    }

    #[test]
    fn unknown_formats_are_refused_with_a_hint() {
        let err = detect_kind(b"#!/bin/sh\necho not a kernel\n").unwrap_err();
        assert!(matches!(err, BootError::UnknownFormat));
        assert!(err.to_string().contains("bzImage"));
        assert!(matches!(detect_kind(&[]), Err(BootError::UnknownFormat)));
    }

    #[test]
    fn truncated_elf_is_a_clean_error() {
        let image = bare_metal_elf(1);
        assert!(matches!(
            detect_kind(&image[..40]),
            Err(BootError::Elf(ElfNoteError::Malformed(_)))
        ));
    }

    #[test]
    fn wrong_abi_version_is_refused() {
        assert!(matches!(
            detect_kind(&bare_metal_elf(7)),
            Err(BootError::Elf(ElfNoteError::UnsupportedAbi { found: 7, .. }))
        ));
    }

    #[test]
    fn zero_vcpus_is_refused() {
        assert!(matches!(
            load_kernel(&mem(32 << 20), &bare_metal_elf(1), None, "", 0),
            Err(BootError::VcpuCount(0))
        ));
    }

    /// Boots a tiny bare-metal guest with `nr_vcpus` vCPUs on the real KVM
    /// (needs `/dev/kvm`). Each vCPU reads the first
    /// command-line byte through the identity map, pushes and pops it
    /// through its own stack, writes it to the exit port, and then executes
    /// `hlt`, which faults at CPL 3 and, with no IDT, shuts the vCPU down.
    /// Checks the whole CPL 3 path: load, VM setup, vCPU setup, entry
    /// registers.
    fn boot_on_real_kvm(with_irqchip: bool, nr_vcpus: u8) {
        use crate::arch::{configure_vcpu, setup_vm};
        use kvm_bindings::kvm_userspace_memory_region;
        use kvm_ioctls::{Kvm, VcpuExit};
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

        let kvm = Kvm::new().expect("this test boots on the real KVM and needs /dev/kvm");
        let code = vec![
            0x8a, 0x06, // mov al, [rsi]
            0x50, // push rax
            0x5b, // pop rbx
            0x88, 0xd8, // mov al, bl
            0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
            0xee, // out dx, al (COM1: needs the TSS I/O bitmap on nested KVM)
            0x66, 0xba, 0xf4, 0x00, // mov dx, 0xf4
            0xee, // out dx, al
            0xf4, // hlt: #GP at CPL 3, triple fault
        ];
        let image = build_elf(
            0x10_0000,
            &[
                note_ph(note(
                    accounting::abi::NOTE_NAME,
                    accounting::abi::NOTE_TYPE_BAREMETAL,
                    &u32::from(accounting::abi::ABI_VERSION).to_le_bytes(),
                )),
                load_ph(0x10_0000, code, 0x1000),
            ],
        );
        let ram = 16u64 << 20;
        let mem = mem(to_usize(ram));
        let plan = load_kernel(&mem, &image, None, "Z", nr_vcpus).unwrap();

        let vm = kvm.create_vm().unwrap();
        setup_vm(&vm, with_irqchip).unwrap();
        for (slot, region) in mem.iter().enumerate() {
            let region_desc = kvm_userspace_memory_region {
                slot: u32::try_from(slot).unwrap(),
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which
            // outlives the VM in this test.
            unsafe { vm.set_user_memory_region(region_desc) }.unwrap();
        }
        let cpuid = crate::arch::HostCpuid::read(&kvm).unwrap();
        for id in 0..nr_vcpus {
            let mut vcpu = vm.create_vcpu(u64::from(id)).unwrap();
            configure_vcpu(&vcpu, &mem, &cpuid, id, nr_vcpus, &plan.mode, with_irqchip).unwrap();

            for expected_port in [accounting::abi::COM1_PORT, accounting::abi::EXIT_PORT] {
                match vcpu.run().unwrap() {
                    VcpuExit::IoOut(port, data) => {
                        assert_eq!((port, data), (expected_port, &b"Z"[..]));
                    }
                    other => panic!("unexpected exit {other:?}"),
                }
            }
            let regs = vcpu.get_regs().unwrap();
            let stacks = layout::BARE_METAL_STACK_SIZE;
            assert_eq!(regs.rsp, ram - u64::from(id) * stacks);
            // rdx held the command-line length; the guest reused it for the port.
            assert_eq!((regs.rdi, regs.rcx), (u64::from(id), u64::from(nr_vcpus)));
            assert_eq!(regs.rbx & 0xff, u64::from(b'Z'));
            assert_eq!((regs.r8, regs.r9), (ram, ram - u64::from(nr_vcpus) * stacks));
            let sregs = vcpu.get_sregs().unwrap();
            assert_eq!((sregs.cs.selector, sregs.ss.selector), (0x23, 0x2b));

            assert!(matches!(vcpu.run(), Ok(VcpuExit::Shutdown)));
        }
    }

    #[test]
    fn bare_metal_guest_runs_on_real_kvm() {
        boot_on_real_kvm(false, 1);
    }

    #[test]
    fn bare_metal_guests_run_on_real_kvm_with_irqchip_and_several_vcpus() {
        boot_on_real_kvm(true, 3);
    }

    #[test]
    fn read_image_names_the_flag() {
        let err = read_image(Path::new("/nonexistent/vmlinux"), "kernel").unwrap_err();
        assert!(err.to_string().contains("--kernel"));
    }
}
