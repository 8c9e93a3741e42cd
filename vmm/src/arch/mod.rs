//! x86_64 machine setup: the guest-physical memory map, guest memory, the
//! structures the CPU needs to run in long mode (GDT, IDT, page tables), the
//! legacy MP table and the ACPI tables for Linux, the per-vCPU CPUID, and the register state a
//! vCPU starts in.
//!
//! Everything here is pure data plus a thin layer of KVM ioctls:
//! [`setup_vm`] prepares a VM (TSS, optional in-kernel irqchip and PIT) and
//! [`configure_vcpu`] puts one vCPU in its start state for a [`BootMode`]
//! that the loader in [`crate::boot`] chose. The pieces are separate pure
//! functions so they are unit-tested without `/dev/kvm`.
//!
//! `docs/boot.md` describes the memory map and the CPU state at entry.

pub mod acpi;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod memory;
pub mod mptable;
pub mod paging;
pub mod regs;
pub mod vm;

pub use acpi::{create_acpi_tables, AcpiDevices, AcpiError, VirtioMmioSlot};
pub use cpuid::{patch_cpuid, CpuidError, HostCaps, HostCpuid};
pub use gdt::{write_gdt_and_idt, write_tss, GdtError};
pub use memory::{create_guest_memory, ram_below_gap, ram_regions, MemoryError};
pub use mptable::{setup_mptable, MptableError};
pub use paging::{write_identity_page_tables, PagingError};
pub use regs::{configure_vcpu, BootMode, RegsError};
pub use vm::{setup_vm, ArchError};
