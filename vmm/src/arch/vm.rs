//! VM-wide x86 setup that must happen before vCPUs are created.
//!
//! Intel VMX needs three pages of guest-physical address space for KVM's
//! real-mode TSS, placed where nothing else lives ([`KVM_TSS_ADDR`], in the
//! MMIO gap). A Linux guest also needs the in-kernel interrupt controllers
//! (PIC, I/O APIC, local APICs) and the PIT; the bare-metal guests run with
//! interrupts off and need neither, so the caller decides.

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::VmFd;

use super::layout::KVM_TSS_ADDR;
use super::memory::to_usize;

/// Errors from the VM-wide setup.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// `KVM_SET_TSS_ADDR` failed.
    #[error("KVM refused the TSS address {KVM_TSS_ADDR:#x}")]
    SetTssAddress(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_IRQCHIP` failed.
    #[error("KVM could not create the in-kernel interrupt controller; this host's KVM may not support it (try a bare-metal guest without irqchip)")]
    CreateIrqChip(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_PIT2` failed.
    #[error("KVM could not create the in-kernel PIT")]
    CreatePit(#[source] kvm_ioctls::Error),
}

/// The PIT configuration: the speaker port is a dummy, as in Firecracker.
pub fn pit_config() -> kvm_pit_config {
    kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    }
}

/// Prepares `vm` for x86 guests: sets KVM's TSS address and, when
/// `with_irqchip` is true, creates the in-kernel irqchip and PIT. Call once,
/// before creating vCPUs.
pub fn setup_vm(vm: &VmFd, with_irqchip: bool) -> Result<(), ArchError> {
    vm.set_tss_address(to_usize(KVM_TSS_ADDR))
        .map_err(ArchError::SetTssAddress)?;
    if with_irqchip {
        vm.create_irq_chip().map_err(ArchError::CreateIrqChip)?;
        vm.create_pit2(pit_config()).map_err(ArchError::CreatePit)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pit_speaker_is_a_dummy() {
        assert_eq!(pit_config().flags, KVM_PIT_SPEAKER_DUMMY);
    }

    /// Needs `/dev/kvm`.
    #[test]
    fn setup_vm_succeeds_on_a_real_kvm() {
        let kvm = kvm_ioctls::Kvm::new().expect("this test boots on the real KVM and needs /dev/kvm");
        let vm = kvm.create_vm().unwrap();
        setup_vm(&vm, false).unwrap();
    }
}
