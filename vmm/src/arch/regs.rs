//! The state a vCPU starts in, for each of the two boot paths.
//!
//! - [`BootMode::Linux64`]: the 64-bit Linux boot protocol the way
//!   Firecracker does it on hardware KVM — CPL 0, long mode, flat kernel
//!   segments (CS 0x08, data 0x10, TR 0x18), `rsi` = the zero page, the boot
//!   MSRs, and LINT0/LINT1 wired as ExtINT/NMI when the VM has an in-kernel
//!   irqchip.
//! - [`BootMode::BareMetal`]: the project's own guest programs, which start
//!   directly in 64-bit mode at CPL 3 (CS 0x23, SS/DS/ES/FS/GS 0x2b) with
//!   IOPL 3, a TSS whose I/O bitmap allows every port (for hosts that ignore
//!   IOPL at CPL 3) and interrupts off, with the entry registers of the tag
//!   ABI (`accounting::abi`). CPL 3 is what lets them run natively on a
//!   nested KVM whose CPL 0 is emulated. With an in-kernel irqchip every
//!   vCPU is made runnable (KVM would park all but the first in
//!   wait-for-SIPI).
//!
//! [`configure_vcpu`] applies a mode to a vCPU; the register values come
//! from the pure functions below, which the tests check one by one.

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs, KVM_MP_STATE_RUNNABLE,
};
use kvm_ioctls::VcpuFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::cpuid::{CpuidError, HostCpuid};
use super::gdt::{
    kvm_segment_from_gdt, GDT, GDT_LIMIT, KERNEL_CODE_INDEX, KERNEL_DATA_INDEX, TSS_INDEX, USER_CODE_INDEX,
    USER_DATA_INDEX,
};
use super::layout::{self, GDT_ADDR, IDT_ADDR, LINUX_BOOT_STACK, PML4_ADDR};
use super::memory::ram_below_gap;

/// CR0: protection enable.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0: monitor coprocessor.
pub const X86_CR0_MP: u64 = 1 << 1;
/// CR0: extension type (always 1 on modern CPUs).
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0: native x87 error reporting.
pub const X86_CR0_NE: u64 = 1 << 5;
/// CR0: write protect (honoured at CPL 0 too).
pub const X86_CR0_WP: u64 = 1 << 16;
/// CR0: paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension (required for long mode).
pub const X86_CR4_PAE: u64 = 1 << 5;
/// CR4: OS supports FXSAVE/FXRSTOR (enables SSE).
pub const X86_CR4_OSFXSR: u64 = 1 << 9;
/// CR4: OS handles SIMD floating-point exceptions.
pub const X86_CR4_OSXMMEXCPT: u64 = 1 << 10;
/// EFER: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 1 << 10;

/// RFLAGS of a Linux guest: only the always-one bit.
pub const LINUX_RFLAGS: u64 = 0x2;
/// RFLAGS of a bare-metal guest: IOPL 3 (port I/O allowed at CPL 3), IF 0.
pub const BARE_METAL_RFLAGS: u64 = 0x3002;
/// IDT limit of a bare-metal guest: no usable vector, so any exception
/// triple-faults into a shutdown exit.
pub const BARE_METAL_IDT_LIMIT: u16 = 0;
/// IDT limit of a Linux guest (Firecracker's: one 8-byte zero entry).
pub const LINUX_IDT_LIMIT: u16 = 7;

/// x87 control word after `FNINIT`.
pub const FPU_FCW: u16 = 0x37f;
/// MXCSR after reset: all SIMD exceptions masked.
pub const FPU_MXCSR: u32 = 0x1f80;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// MTRRdefType: MTRRs enabled, default type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// How a vCPU starts; chosen by the loader in [`crate::boot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootMode {
    /// The 64-bit Linux boot protocol.
    Linux64 {
        /// The kernel's 64-bit entry point.
        entry: GuestAddress,
        /// The zero page (`struct boot_params`), passed in `rsi`.
        boot_params: GuestAddress,
    },
    /// A bare-metal guest program at CPL 3 (the tag ABI's boot convention).
    BareMetal {
        /// The ELF entry point.
        entry: GuestAddress,
        /// The NUL-terminated command line, passed in `rsi`.
        cmdline_addr: GuestAddress,
        /// Its length without the NUL, passed in `rdx`.
        cmdline_len: u64,
        /// RAM bytes below the MMIO gap, passed in `r8`; stacks grow down
        /// from here.
        ram_end: u64,
        /// Lowest stack byte (`ram_end - nr_vcpus * stack size`), passed in
        /// `r9`.
        stack_base: u64,
    },
}

impl BootMode {
    /// The entry point.
    pub fn entry(&self) -> GuestAddress {
        match *self {
            Self::Linux64 { entry, .. } | Self::BareMetal { entry, .. } => entry,
        }
    }
}

/// Errors from setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// The topology is impossible.
    #[error(transparent)]
    Cpuid(#[from] CpuidError),
    /// `KVM_SET_CPUID2` failed.
    #[error("KVM refused the CPUID of vCPU {vcpu_id}")]
    SetCpuid {
        /// The vCPU.
        vcpu_id: u8,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The MSR list could not be built.
    #[error("too many boot MSRs for KVM's MSR list")]
    BuildMsrs(#[source] vmm_sys_util::fam::Error),
    /// `KVM_SET_MSRS` failed.
    #[error("KVM refused the boot MSRs")]
    SetMsrs(#[source] kvm_ioctls::Error),
    /// `KVM_SET_MSRS` stopped early.
    #[error("KVM set only {written} of {expected} boot MSRs (MSR {failed:#x} was refused)")]
    PartialMsrs {
        /// How many were set.
        written: usize,
        /// How many were asked for.
        expected: usize,
        /// The first refused MSR.
        failed: u32,
    },
    /// A register ioctl failed.
    #[error("KVM could not {what} for vCPU {vcpu_id}")]
    Ioctl {
        /// Which ioctl, as a phrase ("set the special registers").
        what: &'static str,
        /// The vCPU.
        vcpu_id: u8,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The entry point is not in guest RAM.
    #[error("the entry point {0:#x} is not in guest RAM: the image is linked for more memory than the VM has (raise --mem-mib)")]
    EntryOutsideRam(u64),
    /// The bare-metal stacks are not in guest RAM.
    #[error("the bare-metal stacks [{stack_base:#x}, {ram_end:#x}) are not in low guest RAM ({ram_below_gap:#x} bytes)")]
    StacksOutsideRam {
        /// Lowest stack byte.
        stack_base: u64,
        /// End of the stacks.
        ram_end: u64,
        /// RAM below the gap that the VM has.
        ram_below_gap: u64,
    },
}

/// Long-mode special registers on the GDT's `code`/`data` segments,
/// starting from the vCPU's current ones (so `apic_base` and the rest keep
/// KVM's reset values): the skeleton both boot modes share.
fn long_mode_sregs(base: &kvm_sregs, code: u8, data: u8, idt_limit: u16, cr0: u64, cr4: u64) -> kvm_sregs {
    let data = kvm_segment_from_gdt(&GDT, data);
    let mut sregs = *base;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = GDT_LIMIT;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = idt_limit;
    sregs.cs = kvm_segment_from_gdt(&GDT, code);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = kvm_segment_from_gdt(&GDT, TSS_INDEX);
    sregs.cr0 = cr0;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = cr4;
    sregs.efer = EFER_LME | EFER_LMA;
    sregs
}

/// Special registers for [`BootMode::Linux64`]: CPL 0 long mode on the
/// kernel segments.
pub fn linux_sregs(base: &kvm_sregs) -> kvm_sregs {
    let cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG;
    long_mode_sregs(
        base,
        KERNEL_CODE_INDEX,
        KERNEL_DATA_INDEX,
        LINUX_IDT_LIMIT,
        cr0,
        X86_CR4_PAE,
    )
}

/// General registers for [`BootMode::Linux64`].
pub fn linux_regs(entry: GuestAddress, boot_params: GuestAddress) -> kvm_regs {
    kvm_regs {
        rflags: LINUX_RFLAGS,
        rip: entry.0,
        rsp: LINUX_BOOT_STACK,
        rbp: LINUX_BOOT_STACK,
        rsi: boot_params.0,
        ..Default::default()
    }
}

/// Special registers for [`BootMode::BareMetal`]: CPL 3 long mode on the
/// user segments, SSE enabled.
pub fn bare_metal_sregs(base: &kvm_sregs) -> kvm_sregs {
    let cr0 = X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_WP | X86_CR0_PG;
    let cr4 = X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT;
    long_mode_sregs(
        base,
        USER_CODE_INDEX,
        USER_DATA_INDEX,
        BARE_METAL_IDT_LIMIT,
        cr0,
        cr4,
    )
}

/// General registers for [`BootMode::BareMetal`] on vCPU `vcpu_id` of
/// `nr_vcpus`, following the tag ABI's entry convention. Returns `None` for
/// a [`BootMode::Linux64`] mode.
pub fn bare_metal_regs(mode: &BootMode, vcpu_id: u8, nr_vcpus: u8) -> Option<kvm_regs> {
    let BootMode::BareMetal {
        entry,
        cmdline_addr,
        cmdline_len,
        ram_end,
        stack_base,
    } = *mode
    else {
        return None;
    };
    Some(kvm_regs {
        rflags: BARE_METAL_RFLAGS,
        rip: entry.0,
        rsp: layout::bare_metal_stack_top(ram_end, vcpu_id),
        rdi: u64::from(vcpu_id),
        rsi: cmdline_addr.0,
        rdx: cmdline_len,
        rcx: u64::from(nr_vcpus),
        r8: ram_end,
        r9: stack_base,
        ..Default::default()
    })
}

/// FPU state at entry (both modes): the x87 and SSE reset defaults.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_FCW,
        mxcsr: FPU_MXCSR,
        ..Default::default()
    }
}

/// The MSRs a Linux guest expects at entry (Firecracker's list).
pub fn linux_boot_msrs() -> Vec<kvm_msr_entry> {
    let msr = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
}

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (b, r) in bytes.iter_mut().zip(&lapic.regs[offset..offset + 4]) {
        *b = r.to_le_bytes()[0];
    }
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (r, b) in lapic.regs[offset..offset + 4].iter_mut().zip(value.to_le_bytes()) {
        *r = std::ffi::c_char::from_le_bytes([b]);
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// LVT mask bit.
const APIC_LVT_MASKED: u32 = 1 << 16;

/// Wires the LINT pins as a BIOS does in virtual-wire mode (MP spec 3.6.2):
/// on the bootstrap processor LINT0 is ExtINT (the 8259 PIC's output),
/// unmasked; on an application processor it is ExtINT but masked, so that
/// only the BSP ever takes a PIC interrupt (KVM offers the PIC's output to
/// every vCPU whose LINT0 accepts ExtINT). LINT1 is NMI everywhere. This is
/// also what KVM's own reset does for the BSP.
pub fn lapic_with_lint(mut lapic: kvm_lapic_state, bsp: bool) -> kvm_lapic_state {
    let lint0 = with_delivery_mode(lapic_reg(&lapic, APIC_LVT0), APIC_MODE_EXTINT);
    let lint0 = if bsp {
        lint0 & !APIC_LVT_MASKED
    } else {
        lint0 | APIC_LVT_MASKED
    };
    set_lapic_reg(&mut lapic, APIC_LVT0, lint0);
    let lint1 = lapic_reg(&lapic, APIC_LVT1);
    set_lapic_reg(&mut lapic, APIC_LVT1, with_delivery_mode(lint1, APIC_MODE_NMI));
    lapic
}

fn set_msrs(vcpu: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), RegsError> {
    let msrs = Msrs::from_entries(entries).map_err(RegsError::BuildMsrs)?;
    let written = vcpu.set_msrs(&msrs).map_err(RegsError::SetMsrs)?;
    if written != entries.len() {
        return Err(RegsError::PartialMsrs {
            written,
            expected: entries.len(),
            failed: entries.get(written).map_or(0, |e| e.index),
        });
    }
    Ok(())
}

/// Puts vCPU `vcpu_id` of `nr_vcpus` in the start state of `mode`: CPUID,
/// MSRs (Linux), special registers, general registers, FPU and, when the VM
/// has an in-kernel irqchip (`with_irqchip`), the local APIC's LINT pins
/// (Linux) or a runnable MP state for every vCPU (bare metal). The loader
/// must already have written the GDT, IDT and page tables into `mem`.
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    host_cpuid: &HostCpuid,
    vcpu_id: u8,
    nr_vcpus: u8,
    mode: &BootMode,
    with_irqchip: bool,
) -> Result<(), RegsError> {
    let ioctl = |what| {
        move |source| RegsError::Ioctl {
            what,
            vcpu_id,
            source,
        }
    };

    let entry = mode.entry();
    if !mem.address_in_range(entry) {
        return Err(RegsError::EntryOutsideRam(entry.0));
    }
    if let BootMode::BareMetal {
        ram_end, stack_base, ..
    } = *mode
    {
        let low = ram_below_gap(mem);
        if ram_end > low || stack_base >= ram_end {
            return Err(RegsError::StacksOutsideRam {
                stack_base,
                ram_end,
                ram_below_gap: low,
            });
        }
    }

    let cpuid = host_cpuid.for_vcpu(vcpu_id, nr_vcpus)?;
    vcpu.set_cpuid2(&cpuid)
        .map_err(|source| RegsError::SetCpuid { vcpu_id, source })?;

    let base = vcpu.get_sregs().map_err(ioctl("get the special registers"))?;
    let (sregs, regs) = match *mode {
        BootMode::Linux64 { entry, boot_params } => {
            set_msrs(vcpu, &linux_boot_msrs())?;
            (linux_sregs(&base), linux_regs(entry, boot_params))
        }
        BootMode::BareMetal { .. } => (
            bare_metal_sregs(&base),
            bare_metal_regs(mode, vcpu_id, nr_vcpus).unwrap_or_default(),
        ),
    };
    vcpu.set_sregs(&sregs)
        .map_err(ioctl("set the special registers"))?;
    vcpu.set_regs(&regs).map_err(ioctl("set the registers"))?;
    vcpu.set_fpu(&boot_fpu()).map_err(ioctl("set the FPU state"))?;

    if with_irqchip {
        match mode {
            BootMode::Linux64 { .. } => {
                let lapic = vcpu.get_lapic().map_err(ioctl("read the local APIC"))?;
                vcpu.set_lapic(&lapic_with_lint(lapic, vcpu_id == 0))
                    .map_err(ioctl("write the local APIC"))?;
            }
            // With an in-kernel LAPIC, KVM parks every vCPU but the first in
            // wait-for-SIPI. Linux wakes them itself; a bare-metal guest has
            // no code for that and expects all vCPUs to start at the entry.
            BootMode::BareMetal { .. } => vcpu
                .set_mp_state(kvm_mp_state {
                    mp_state: KVM_MP_STATE_RUNNABLE,
                })
                .map_err(ioctl("make the vCPU runnable"))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bare(ram_end: u64, nr: u8) -> BootMode {
        BootMode::BareMetal {
            entry: GuestAddress(0x10_1000),
            cmdline_addr: GuestAddress(layout::CMDLINE_ADDR),
            cmdline_len: 11,
            ram_end,
            stack_base: ram_end - u64::from(nr) * layout::BARE_METAL_STACK_SIZE,
        }
    }

    #[test]
    fn bare_metal_sregs_run_at_cpl3_in_long_mode() {
        let base = kvm_sregs {
            apic_base: 0xfee0_0900,
            ..Default::default()
        };
        let s = bare_metal_sregs(&base);
        assert_eq!((s.cs.selector, s.cs.dpl, s.cs.l, s.cs.db), (0x23, 3, 1, 0));
        for seg in [s.ss, s.ds, s.es, s.fs, s.gs] {
            assert_eq!((seg.selector, seg.dpl, seg.present), (0x2b, 3, 1));
        }
        assert_eq!(
            (s.tr.selector, s.tr.type_, s.tr.limit, s.tr.base),
            (0x18, 11, 0x2068, 0x1000)
        );
        assert_eq!((s.gdt.base, s.gdt.limit), (GDT_ADDR, 47));
        assert_eq!((s.idt.base, s.idt.limit), (IDT_ADDR, 0));
        assert_eq!(s.cr0, 0x8001_0033);
        assert_eq!(s.cr4, 0x620);
        assert_eq!(s.efer, 0x500);
        assert_eq!(s.cr3, PML4_ADDR);
        assert_eq!(s.apic_base, 0xfee0_0900);
    }

    #[test]
    fn bare_metal_regs_follow_the_abi() {
        let ram_end = 128 << 20;
        let mode = bare(ram_end, 4);
        let r = bare_metal_regs(&mode, 2, 4).unwrap();
        assert_eq!(r.rip, 0x10_1000);
        assert_eq!(r.rflags, 0x3002);
        assert_eq!(r.rsp, ram_end - 2 * layout::BARE_METAL_STACK_SIZE);
        assert_eq!(r.rsp % 16, 0);
        assert_eq!((r.rdi, r.rsi, r.rdx, r.rcx), (2, layout::CMDLINE_ADDR, 11, 4));
        assert_eq!(
            (r.r8, r.r9),
            (ram_end, ram_end - 4 * layout::BARE_METAL_STACK_SIZE)
        );
    }

    #[test]
    fn bare_metal_stack_top_is_16_byte_aligned() {
        let r = bare_metal_regs(&bare((64 << 20) + 8, 1), 0, 1).unwrap();
        assert_eq!(r.rsp, 64 << 20);
    }

    #[test]
    fn linux_mode_has_no_bare_metal_regs() {
        let mode = BootMode::Linux64 {
            entry: GuestAddress(0x100_0000),
            boot_params: GuestAddress(0x7000),
        };
        assert_eq!(bare_metal_regs(&mode, 0, 1), None);
    }

    #[test]
    fn linux_sregs_are_flat_ring0_long_mode() {
        let s = linux_sregs(&kvm_sregs::default());
        assert_eq!((s.cs.selector, s.cs.dpl, s.cs.l), (0x08, 0, 1));
        for seg in [s.ss, s.ds, s.es, s.fs, s.gs] {
            assert_eq!((seg.selector, seg.dpl), (0x10, 0));
        }
        assert_eq!(s.tr.selector, 0x18);
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
        assert_eq!(s.cr4, X86_CR4_PAE);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, PML4_ADDR);
    }

    #[test]
    fn linux_regs_point_rsi_at_the_zero_page() {
        let r = linux_regs(GuestAddress(0x100_0200), GuestAddress(0x7000));
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rbp, r.rflags),
            (0x100_0200, 0x7000, 0x8ff0, 0x8ff0, 2)
        );
    }

    #[test]
    fn fpu_has_reset_control_words() {
        let f = boot_fpu();
        assert_eq!((f.fcw, f.mxcsr), (0x37f, 0x1f80));
    }

    #[test]
    fn boot_msrs_enable_fast_strings() {
        let msrs = linux_boot_msrs();
        let misc = msrs.iter().find(|m| m.index == MSR_IA32_MISC_ENABLE).unwrap();
        assert_eq!(misc.data, 1);
        assert!(msrs.iter().any(|m| m.index == MSR_LSTAR));
    }

    #[test]
    fn lint0_is_extint_and_lint1_is_nmi() {
        let mut lapic = kvm_lapic_state::default();
        set_lapic_reg(&mut lapic, APIC_LVT0, 0x0001_0700);
        set_lapic_reg(&mut lapic, APIC_LVT1, 0x0001_0000);
        let bsp = lapic_with_lint(lapic, true);
        assert_eq!(lapic_reg(&bsp, APIC_LVT0), 0x0000_0700);
        assert_eq!(lapic_reg(&bsp, APIC_LVT1), 0x0001_0400);
    }

    /// Only the BSP takes the 8259's interrupts: an AP with an unmasked
    /// ExtINT would race the BSP for the same PIC vector.
    #[test]
    fn ap_lint0_extint_is_masked() {
        let ap = lapic_with_lint(kvm_lapic_state::default(), false);
        assert_eq!(lapic_reg(&ap, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_reg(&ap, APIC_LVT1), 0x0000_0400);
    }

    /// The Linux start state is accepted by the real KVM (needs `/dev/kvm`). Running a kernel needs hardware
    /// virtualization; setting the state does not.
    #[test]
    fn linux_vcpu_setup_is_accepted_by_real_kvm() {
        let kvm = kvm_ioctls::Kvm::new().expect("this test boots on the real KVM and needs /dev/kvm");
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
        let vm = kvm.create_vm().unwrap();
        crate::arch::setup_vm(&vm, true).unwrap();
        let cpuid = HostCpuid::read(&kvm).unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let mode = BootMode::Linux64 {
            entry: GuestAddress(0x100_0000),
            boot_params: GuestAddress(layout::ZERO_PAGE_ADDR),
        };

        configure_vcpu(&vcpu, &mem, &cpuid, 0, 1, &mode, true).unwrap();

        let s = vcpu.get_sregs().unwrap();
        assert_eq!(
            (s.cs.selector, s.efer & EFER_LMA, s.cr3),
            (0x08, EFER_LMA, PML4_ADDR)
        );
        assert_eq!(vcpu.get_regs().unwrap().rsi, layout::ZERO_PAGE_ADDR);
        let lapic = vcpu.get_lapic().unwrap();
        assert_eq!((lapic_reg(&lapic, APIC_LVT0) >> 8) & 0x7, APIC_MODE_EXTINT);
        assert_eq!((lapic_reg(&lapic, APIC_LVT1) >> 8) & 0x7, APIC_MODE_NMI);
    }

    #[test]
    fn entry_outside_ram_is_refused_before_any_ioctl() {
        let kvm = kvm_ioctls::Kvm::new().expect("this test boots on the real KVM and needs /dev/kvm");
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let mode = BootMode::Linux64 {
            entry: GuestAddress(0x100_0000),
            boot_params: GuestAddress(layout::ZERO_PAGE_ADDR),
        };
        let cpuid = HostCpuid {
            supported: kvm_bindings::CpuId::new(0).unwrap(),
            caps: Default::default(),
        };
        assert!(matches!(
            configure_vcpu(&vcpu, &mem, &cpuid, 0, 1, &mode, false),
            Err(RegsError::EntryOutsideRam(0x100_0000))
        ));
    }
}
