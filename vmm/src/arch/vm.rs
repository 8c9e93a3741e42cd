//! VM-wide x86 setup that must happen before vCPUs are created.
//!
//! Intel VMX needs three pages of guest-physical address space for KVM's
//! real-mode TSS, placed where nothing else lives ([`KVM_TSS_ADDR`], in the
//! MMIO gap). A Linux guest also needs the in-kernel interrupt controllers
//! (PIC, I/O APIC, local APICs) and the PIT; the bare-metal guests run with
//! interrupts off and need neither, so the caller decides.
//!
//! The 8259 PICs are left as firmware leaves them, not in KVM's reset state:
//! every line masked (the master's cascade input aside) and the vector bases
//! a PC BIOS programs (0x08, 0x70). KVM's reset state has every line
//! unmasked and vector base 0, and it raises each GSI below 16 on the PICs
//! too (the virtio-mmio, serial and i8042 interrupts included). A Linux that
//! never initialises the PICs — a hardware-reduced ACPI kernel — keeps the
//! BSP's LINT0 in virtual-wire mode because it finds it unmasked, so every
//! such interrupt also reached the BSP through the PIC as vector 0–15, i.e.
//! as a CPU exception (`#UD` for IRQ 6, a `#DF` without error code for IRQ 0):
//! seen as triple faults during boot and at `poweroff`. A kernel that uses
//! the PICs programs them itself (`init_8259A`), as on hardware.

use kvm_bindings::{
    kvm_irqchip, kvm_pic_state, kvm_pit_config, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_PIT_SPEAKER_DUMMY,
};
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
    /// `KVM_GET_IRQCHIP` / `KVM_SET_IRQCHIP` on a PIC failed.
    #[error("KVM refused to set the in-kernel 8259 PIC's start state")]
    Pic(#[source] kvm_ioctls::Error),
}

/// The master PIC's mask after firmware: everything but the cascade (IRQ 2).
pub const PIC_MASTER_IMR: u8 = 0xfb;
/// The slave PIC's mask after firmware: everything.
pub const PIC_SLAVE_IMR: u8 = 0xff;
/// Vector bases a PC BIOS programs.
pub const PIC_MASTER_BASE: u8 = 0x08;
/// See [`PIC_MASTER_BASE`].
pub const PIC_SLAVE_BASE: u8 = 0x70;

/// `pic` as firmware leaves it (see the module docs).
pub fn firmware_pic(mut pic: kvm_pic_state, master: bool) -> kvm_pic_state {
    (pic.imr, pic.irq_base) = if master {
        (PIC_MASTER_IMR, PIC_MASTER_BASE)
    } else {
        (PIC_SLAVE_IMR, PIC_SLAVE_BASE)
    };
    pic
}

fn set_firmware_pics(vm: &VmFd) -> Result<(), ArchError> {
    for (chip_id, master) in [(KVM_IRQCHIP_PIC_MASTER, true), (KVM_IRQCHIP_PIC_SLAVE, false)] {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        vm.get_irqchip(&mut chip).map_err(ArchError::Pic)?;
        // SAFETY: KVM_GET_IRQCHIP with a PIC chip id fills the `pic` member.
        let pic = unsafe { chip.chip.pic };
        chip.chip.pic = firmware_pic(pic, master);
        vm.set_irqchip(&chip).map_err(ArchError::Pic)?;
    }
    Ok(())
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
        set_firmware_pics(vm)?;
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

    /// With the irqchip, KVM holds the PICs masked with the BIOS's vector
    /// bases (needs `/dev/kvm`).
    #[test]
    fn the_pics_start_masked_as_firmware_leaves_them() {
        let kvm = kvm_ioctls::Kvm::new().expect("this test needs /dev/kvm");
        let vm = kvm.create_vm().unwrap();
        setup_vm(&vm, true).unwrap();
        for (chip_id, imr, base) in [
            (KVM_IRQCHIP_PIC_MASTER, 0xfb, 0x08),
            (KVM_IRQCHIP_PIC_SLAVE, 0xff, 0x70),
        ] {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm.get_irqchip(&mut chip).unwrap();
            // SAFETY: a PIC chip id fills the `pic` member.
            let pic = unsafe { chip.chip.pic };
            assert_eq!((pic.imr, pic.irq_base), (imr, base), "chip {chip_id}");
        }
    }
}
