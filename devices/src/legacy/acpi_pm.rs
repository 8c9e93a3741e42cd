//! The power-management device of a hardware-reduced ACPI platform.
//!
//! A hardware-reduced FADT has no PM1 event or control blocks; instead it
//! names three registers by address (as Generic Address Structures): the
//! sleep control register, the sleep status register and the reset
//! register. This device is those three registers, one byte each, on port
//! I/O at [`ACPI_PM_PORT`]:
//!
//! | port | register | what a write does |
//! |---|---|---|
//! | `0x600` | sleep control | `SLP_EN` (bit 5) with `SLP_TYP` (bits 2–4) = [`SLP_TYP_S5`]: power off |
//! | `0x601` | sleep status | nothing (there is no wake to report) |
//! | `0x602` | reset | [`ACPI_RESET_VALUE`]: reset |
//! | `0x603` | (reserved) | nothing |
//!
//! Every other value is ignored and every read returns 0. Linux powers off
//! by writing `SLP_TYP << 2 | SLP_EN` to the sleep control register, with
//! `SLP_TYP` taken from the DSDT's `\_S5_` package (5 here), and resets by
//! writing the FADT's reset value to the reset register.
//!
//! Why 0x600: it is free on this machine (COM1 0x3f8, i8042 0x60/0x64,
//! CMOS 0x70/0x71, POST 0x80, exit 0xf4) and clear of the ranges a PC's
//! chipset or firmware traditionally claims (0xcf8–0xcff PCI configuration,
//! 0xb2 APM, 0x400–0x4ff legacy PM blocks). The FADT built in
//! `vmm::arch::acpi` points at these constants, so the two cannot disagree.

use crate::bus::{BusDevice, VmAction};

/// First port of the device.
pub const ACPI_PM_PORT: u16 = 0x600;
/// Ports the device claims: three registers and one reserved byte.
pub const ACPI_PM_LEN: u16 = 4;
/// Offset of the sleep control register.
pub const SLEEP_CONTROL_OFFSET: u16 = 0;
/// Offset of the sleep status register.
pub const SLEEP_STATUS_OFFSET: u16 = 1;
/// Offset of the reset register.
pub const RESET_OFFSET: u16 = 2;
/// The value the FADT tells the guest to write to the reset register.
pub const ACPI_RESET_VALUE: u8 = 0x01;
/// `SLP_EN`: bit 5 of the sleep control register.
pub const SLP_EN: u8 = 1 << 5;
/// Shift of the 3-bit `SLP_TYP` field in the sleep control register.
pub const SLP_TYP_SHIFT: u8 = 2;
/// The sleep type of S5 (soft off) that the DSDT's `\_S5_` announces.
pub const SLP_TYP_S5: u8 = 5;

/// The three registers (see the module docs). Stateless: sleep status
/// always reads 0, as nothing ever wakes.
#[derive(Debug, Default)]
pub struct AcpiPm;

impl AcpiPm {
    /// What a byte written to register `offset` asks of the VM.
    fn write_byte(offset: u64, value: u8) -> Option<VmAction> {
        match offset {
            o if o == u64::from(SLEEP_CONTROL_OFFSET) => {
                let typ = (value >> SLP_TYP_SHIFT) & 0x7;
                (value & SLP_EN != 0 && typ == SLP_TYP_S5).then_some(VmAction::PowerOff)
            }
            o if o == u64::from(RESET_OFFSET) => (value == ACPI_RESET_VALUE).then_some(VmAction::Reset),
            _ => None,
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    /// A wider access covers consecutive registers: each byte is written
    /// to its own register, and the first one that ends the VM wins.
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmAction> {
        data.iter()
            .zip(offset..)
            .find_map(|(&value, reg)| Self::write_byte(reg, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S5_ENTER: u8 = SLP_TYP_S5 << SLP_TYP_SHIFT | SLP_EN;

    #[test]
    fn sleep_enable_with_s5_powers_off() {
        assert_eq!(S5_ENTER, 0x34);
        assert_eq!(AcpiPm.write(0, &[S5_ENTER]), Some(VmAction::PowerOff));
    }

    #[test]
    fn other_sleep_types_and_sleep_without_enable_are_ignored() {
        let mut pm = AcpiPm;
        assert_eq!(pm.write(0, &[SLP_TYP_S5 << SLP_TYP_SHIFT]), None);
        for typ in (0..8).filter(|t| *t != SLP_TYP_S5) {
            assert_eq!(
                pm.write(0, &[typ << SLP_TYP_SHIFT | SLP_EN]),
                None,
                "SLP_TYP {typ}"
            );
        }
        assert_eq!(pm.write(0, &[!SLP_EN]), None);
    }

    #[test]
    fn reset_value_to_the_reset_register_resets() {
        let mut pm = AcpiPm;
        assert_eq!(pm.write(2, &[ACPI_RESET_VALUE]), Some(VmAction::Reset));
        assert_eq!(pm.write(2, &[0x06]), None);
        assert_eq!(pm.write(2, &[0]), None);
    }

    #[test]
    fn sleep_status_and_reserved_writes_do_nothing() {
        let mut pm = AcpiPm;
        assert_eq!(pm.write(1, &[S5_ENTER]), None);
        assert_eq!(pm.write(1, &[ACPI_RESET_VALUE]), None);
        assert_eq!(pm.write(3, &[S5_ENTER]), None);
        assert_eq!(pm.write(3, &[ACPI_RESET_VALUE]), None);
    }

    #[test]
    fn a_wide_write_reaches_each_register_it_covers() {
        let mut pm = AcpiPm;
        assert_eq!(pm.write(0, &[0, 0, ACPI_RESET_VALUE, 0]), Some(VmAction::Reset));
        assert_eq!(pm.write(1, &[0, ACPI_RESET_VALUE]), Some(VmAction::Reset));
        assert_eq!(pm.write(0, &[S5_ENTER, 0]), Some(VmAction::PowerOff));
        assert_eq!(pm.write(0, &u32::MAX.to_le_bytes()), None);
    }

    #[test]
    fn reads_return_zero() {
        let mut pm = AcpiPm;
        let mut b = [0xaa; 4];
        pm.read(0, &mut b);
        assert_eq!(b, [0; 4]);
        let mut one = [0xaa];
        pm.read(2, &mut one);
        assert_eq!(one, [0]);
    }
}
