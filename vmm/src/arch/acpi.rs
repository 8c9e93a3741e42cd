//! ACPI tables for Linux guests, so that a stock distribution kernel finds
//! every device without command-line tokens.
//!
//! The MP table tells Linux about CPUs and interrupt routing, but nothing
//! about devices: virtio-mmio devices reach a kernel only through
//! `virtio_mmio.device=` tokens, which need `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`
//! (Debian's kernels do not have it). With ACPI, the DSDT lists each device
//! with its `_HID` (`LNRO0005` for virtio-mmio), and the `virtio_mmio`
//! module binds to it on its own. The MP table and the tokens stay, for
//! kernels without ACPI.
//!
//! The platform is *hardware-reduced* ACPI, as in Firecracker and Cloud
//! Hypervisor: no PM1 blocks, no GPEs, no SCI, no FACS. Power-off and reset
//! go through three I/O registers named in the FADT, emulated by
//! [`devices::legacy::AcpiPm`]. The tables, from [`RSDP_ADDR`] up, all
//! below 1 MiB (outside the e820 RAM list):
//!
//! - **RSDP** (revision 2), pointing at the XSDT; its address is also put in
//!   the zero page's `acpi_rsdp_addr` (boot protocol 2.14).
//! - **XSDT**: the FADT and the MADT.
//! - **FADT** (6.5): `HW_REDUCED_ACPI | RESET_REG_SUP`; IA-PC boot flags
//!   "8042 present, no VGA, no MSI, do not touch PCIe ASPM" (the CMOS RTC is
//!   present: `NO_CMOS_RTC` clear, century at CMOS index 0x32); sleep
//!   control/status and reset registers as byte-wide I/O GAS on the PM
//!   device; `X_DSDT`.
//! - **MADT**: the local APIC address, one enabled Processor Local APIC per
//!   vCPU (APIC id = vCPU id), the I/O APIC (id `nr_vcpus + 1`, as in the MP
//!   table, GSI base 0) and one interrupt source override (below).
//! - **DSDT**: `\_SB_` with COM1 (`PNP0501`), the CMOS RTC (`PNP0B00`), the
//!   i8042 (`PNP0303`) and one `LNRO0005` device per virtio-mmio slot, and
//!   `\_S5_` so that Linux can power off.
//!
//! Checksums are computed by `acpi_tables`; the unit tests decode the tables
//! from guest memory by raw offsets and check them.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml, AmlSink};
use devices::legacy::{
    ACPI_PM_PORT, ACPI_RESET_VALUE, RESET_OFFSET, SLEEP_CONTROL_OFFSET, SLEEP_STATUS_OFFSET, SLP_TYP_S5,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{Immutable, IntoBytes};

use super::layout::{
    ACPI_END, APIC_DEFAULT_PHYS_BASE, IOAPIC_DEFAULT_PHYS_BASE, RESET_VECTOR_ADDR, RSDP_ADDR,
};
use super::mptable::MAX_SUPPORTED_CPUS;

/// OEM id in every table header.
pub const OEM_ID: [u8; 6] = *b"RSRCFL";
/// OEM revision in every table header.
const OEM_REVISION: u32 = 1;
/// `_HID` of a virtio-mmio device (Linux's `virtio_mmio` ACPI match).
pub const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// Pins of KVM's in-kernel I/O APIC: GSIs `0..IOAPIC_PINS` can be raised.
pub const IOAPIC_PINS: u32 = 24;
/// CMOS index of the century byte (the FADT's `CENTURY`).
pub const CMOS_CENTURY: u8 = 0x32;

/// IA-PC boot architecture flags (FADT `IAPC_BOOT_ARCH`).
pub mod iapc {
    /// `LEGACY_DEVICES`: user-visible ISA devices outside the namespace.
    /// Clear here: every legacy device is in the DSDT.
    pub const LEGACY_DEVICES: u16 = 1 << 0;
    /// `8042`: an i8042 keyboard controller at 0x60/0x64.
    pub const I8042: u16 = 1 << 1;
    /// `VGA Not Present`.
    pub const VGA_NOT_PRESENT: u16 = 1 << 2;
    /// `MSI Not Supported`.
    pub const MSI_NOT_SUPPORTED: u16 = 1 << 3;
    /// `PCIe ASPM Controls`: the OS must not enable ASPM.
    pub const PCIE_ASPM_CONTROLS: u16 = 1 << 4;
    /// `CMOS RTC Not Present`. Clear here: there is an RTC at 0x70/0x71.
    pub const NO_CMOS_RTC: u16 = 1 << 5;
}

/// The IA-PC boot flags this machine announces.
pub const IAPC_BOOT_ARCH: u16 =
    iapc::I8042 | iapc::VGA_NOT_PRESENT | iapc::MSI_NOT_SUPPORTED | iapc::PCIE_ASPM_CONTROLS;

/// COM1's I/O ports and ISA IRQ.
const COM1: (u16, u8, u32) = (accounting::abi::COM1_PORT, 8, 4);
/// The CMOS RTC's index and data ports.
const CMOS_PORT: u16 = 0x70;
/// The i8042's data port, command/status port and keyboard IRQ.
const I8042: (u16, u16, u32) = (0x60, 0x64, 1);

/// MADT flags of an interrupt source override: polarity active high (bits
/// 0–1 = 01) and trigger mode edge (bits 2–3 = 01).
pub const MPS_INTI_EDGE_HIGH: u16 = 0b0101;

/// One virtio-mmio device as the guest must see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioSlot {
    /// Guest-physical base of its register window.
    pub base: u64,
    /// Bytes of the window.
    pub len: u32,
    /// Its GSI (an I/O APIC pin, edge-triggered, active high).
    pub irq: u32,
}

/// The devices the DSDT announces besides the fixed legacy ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcpiDevices {
    /// virtio-mmio slots, in index order (`_UID` = index).
    pub virtio: Vec<VirtioMmioSlot>,
}

/// Why the ACPI tables could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The MADT has 8-bit APIC ids, and the I/O APIC takes `nr_vcpus + 1`.
    #[error("{0} vCPUs do not fit in the MADT: use 1 to {MAX_SUPPORTED_CPUS} (--vcpus)")]
    VcpuCount(u8),
    /// A virtio-mmio window that a `Memory32Fixed` descriptor cannot hold.
    #[error("virtio-mmio device {index} at {base:#x}+{len:#x} does not lie below 4 GiB")]
    DeviceAbove4G {
        /// The device's index.
        index: usize,
        /// Its base.
        base: u64,
        /// Its length.
        len: u32,
    },
    /// More virtio-mmio devices than I/O APIC pins.
    #[error("{0} virtio-mmio devices do not fit: the I/O APIC has {IOAPIC_PINS} pins; use fewer --disk/--net/--vsock")]
    TooManyDevices(usize),
    /// A virtio-mmio IRQ the I/O APIC does not have.
    #[error("virtio-mmio device {index} uses IRQ {irq}, but the I/O APIC has pins 0 to {}: use fewer devices", IOAPIC_PINS - 1)]
    IrqOutOfRange {
        /// The device's index.
        index: usize,
        /// Its IRQ.
        irq: u32,
    },
    /// The tables do not fit below 1 MiB.
    #[error("the ACPI tables need {need} bytes but {room} are free below 1 MiB")]
    TooBig {
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        room: u64,
    },
    /// Guest memory refused a write.
    #[error("cannot write the ACPI {what} to guest memory")]
    Write {
        /// Which table.
        what: &'static str,
        /// The cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// MADT Interrupt Source Override (type 2), which `acpi_tables` does not
/// provide.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, IntoBytes, Immutable)]
struct InterruptSourceOverride {
    r#type: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: U32,
    flags: U16,
}

impl InterruptSourceOverride {
    fn isa(source: u8, gsi: u32, flags: u16) -> Self {
        Self {
            r#type: 2,
            length: 10,
            bus: 0,
            source,
            gsi: gsi.into(),
            flags: flags.into(),
        }
    }
}

impl Aml for InterruptSourceOverride {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

fn to_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// A byte-wide register of the PM device, as a Generic Address Structure.
fn pm_register(offset: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(ACPI_PM_PORT + offset),
    )
}

/// The FADT: hardware-reduced, pointing at the DSDT and the PM registers.
fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, *b"RSRCFACP", OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .dsdt_64(dsdt_addr);
    f.century = CMOS_CENTURY;
    f.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    f.reset_reg = pm_register(RESET_OFFSET);
    f.reset_value = ACPI_RESET_VALUE;
    f.sleep_control_reg = pm_register(SLEEP_CONTROL_OFFSET);
    f.sleep_status_reg = pm_register(SLEEP_STATUS_OFFSET);
    // SCI_INT stays 0: a hardware-reduced platform has no SCI.
    to_bytes(&f.finalize())
}

/// The MADT (see the module docs).
///
/// The flags stay 0, so `PCAT_COMPAT` is clear: a hardware-reduced kernel
/// replaces the 8259 PICs with a null PIC anyway
/// (`acpi_generic_reduced_hw_init`), and the flag would only invite it to
/// mask PICs it never uses; `acpi_tables` offers no setter for them either.
///
/// Interrupt source overrides: KVM routes ISA IRQ *n* to I/O APIC pin *n*,
/// edge-triggered, active high, which is what Linux assumes for an ISA IRQ
/// without an override, so most need none. IRQ 0 gets none: the usual PC
/// override (IRQ 0 → GSI 2) would be wrong here, identity is the default,
/// and as `SCI_INT` is 0 Linux would read an override of IRQ 0 as the SCI's
/// (`acpi_parse_int_src_ovr`). IRQ 9 is the traditional SCI, which Linux
/// configures level-triggered, active low when it takes 9 for the SCI; an
/// explicit edge/high override keeps pin 9 what KVM makes it, for the
/// virtio-mmio device that gets IRQ 9.
fn madt(nr_vcpus: u8) -> Vec<u8> {
    let mut m = MADT::new(
        OEM_ID,
        *b"RSRCMADT",
        OEM_REVISION,
        LocalInterruptController::Address(APIC_DEFAULT_PHYS_BASE),
    );
    for id in 0..nr_vcpus {
        m.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    m.add_structure(IoApic::new(nr_vcpus + 1, IOAPIC_DEFAULT_PHYS_BASE, 0));
    m.add_structure(InterruptSourceOverride::isa(9, 9, MPS_INTI_EDGE_HIGH));
    to_bytes(&m)
}

/// `_HID`, `_UID` and `_CRS` of one device.
fn device(name: &str, hid: &dyn Aml, uid: u32, resources: &[&dyn Aml]) -> Vec<u8> {
    let crs = aml::ResourceTemplate::new(resources.to_vec());
    to_bytes(&aml::Device::new(
        name.into(),
        vec![
            &aml::Name::new("_HID".into(), hid),
            &aml::Name::new("_UID".into(), &uid),
            &aml::Name::new("_CRS".into(), &crs),
        ],
    ))
}

/// An edge-triggered, active-high, exclusive interrupt the device consumes.
fn edge_irq(irq: u32) -> aml::Interrupt {
    aml::Interrupt::new(true, true, false, false, irq)
}

/// The DSDT's AML (without the table header).
fn dsdt_aml(devices: &AcpiDevices) -> Result<Vec<u8>, AcpiError> {
    let (com1_port, com1_len, com1_irq) = COM1;
    let mut sb = device(
        "COM1",
        &aml::EISAName::new("PNP0501"),
        0,
        &[
            &aml::IO::new(com1_port, com1_port, 1, com1_len),
            &edge_irq(com1_irq),
        ],
    );
    sb.extend(device(
        "RTC_",
        &aml::EISAName::new("PNP0B00"),
        0,
        &[&aml::IO::new(CMOS_PORT, CMOS_PORT, 1, 2)],
    ));
    let (kbd_data, kbd_cmd, kbd_irq) = I8042;
    sb.extend(device(
        "PS2K",
        &aml::EISAName::new("PNP0303"),
        0,
        &[
            &aml::IO::new(kbd_data, kbd_data, 1, 1),
            &aml::IO::new(kbd_cmd, kbd_cmd, 1, 1),
            &edge_irq(kbd_irq),
        ],
    ));
    if devices.virtio.len() > IOAPIC_PINS as usize {
        return Err(AcpiError::TooManyDevices(devices.virtio.len()));
    }
    for (index, slot) in devices.virtio.iter().enumerate() {
        let below_4g = slot
            .base
            .checked_add(u64::from(slot.len))
            .is_some_and(|end| end <= 1 << 32);
        let base = u32::try_from(slot.base)
            .ok()
            .filter(|_| below_4g)
            .ok_or(AcpiError::DeviceAbove4G {
                index,
                base: slot.base,
                len: slot.len,
            })?;
        if slot.irq >= IOAPIC_PINS {
            return Err(AcpiError::IrqOutOfRange { index, irq: slot.irq });
        }
        // At most IOAPIC_PINS devices: the name has 4 characters.
        let uid = u32::try_from(index).unwrap_or(u32::MAX);
        sb.extend(device(
            &format!("V{index:03X}"),
            &VIRTIO_MMIO_HID,
            uid,
            &[
                &aml::Memory32Fixed::new(true, base, slot.len),
                &edge_irq(slot.irq),
            ],
        ));
    }
    let mut aml_bytes = aml::Scope::raw("\\_SB_".into(), sb);
    // \_S5_: SLP_TYP for the sleep control register, then reserved values.
    let s5 = aml::Package::new(vec![&SLP_TYP_S5, &aml::ZERO, &aml::ZERO, &aml::ZERO]);
    aml::Name::new("_S5_".into(), &s5).to_aml_bytes(&mut aml_bytes);
    Ok(aml_bytes)
}

fn dsdt(devices: &AcpiDevices) -> Result<Vec<u8>, AcpiError> {
    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"RSRCDSDT", OEM_REVISION);
    table.append_slice(&dsdt_aml(devices)?);
    Ok(table.as_slice().to_vec())
}

/// Real-mode code for the reset vector: `mov dx, 0x602; mov al, 0x01;
/// out dx, al; hlt; jmp $`. Why: on a hardware-reduced platform Linux's
/// default reboot order becomes EFI, then "BIOS" (`efi_reboot_required()` is
/// true when `HW_REDUCED_ACPI` is set; without EFI runtime services it falls
/// back to `machine_real_restart`), which jumps to `f000:fff0`. With no BIOS
/// there the vCPU would spin on zeroes for ever; the stub turns the jump into
/// the ACPI reset. `reboot=k` (in the VMM's default command line) avoids the
/// path altogether.
fn reset_vector_stub() -> [u8; 9] {
    let port = (ACPI_PM_PORT + RESET_OFFSET).to_le_bytes();
    [
        0xba,
        port[0],
        port[1],
        0xb0,
        ACPI_RESET_VALUE,
        0xee,
        0xf4,
        0xeb,
        0xfe,
    ]
}

/// The next 16-byte aligned address after `len` bytes at `addr`.
fn next_table(addr: u64, len: usize) -> u64 {
    (addr + len as u64 + 15) & !15
}

/// Writes the RSDP, XSDT, FADT, MADT and DSDT for `nr_vcpus` vCPUs and
/// `devices` from [`RSDP_ADDR`] up, and returns the RSDP's address.
pub fn create_acpi_tables(
    mem: &GuestMemoryMmap,
    nr_vcpus: u8,
    devices: &AcpiDevices,
) -> Result<u64, AcpiError> {
    if nr_vcpus == 0 || nr_vcpus > MAX_SUPPORTED_CPUS {
        return Err(AcpiError::VcpuCount(nr_vcpus));
    }
    let dsdt = dsdt(devices)?;
    let madt = madt(nr_vcpus);
    // Two XSDT entries: the FADT and the MADT.
    let xsdt_len = 36 + 2 * 8;
    let xsdt_addr = next_table(RSDP_ADDR, Rsdp::len());
    let fadt_addr = next_table(xsdt_addr, xsdt_len);
    let madt_addr = next_table(fadt_addr, acpi_tables::fadt::FADT::len());
    let dsdt_addr = next_table(madt_addr, madt.len());
    let end = dsdt_addr + dsdt.len() as u64;
    if end > ACPI_END {
        return Err(AcpiError::TooBig {
            need: end - RSDP_ADDR,
            room: ACPI_END - RSDP_ADDR,
        });
    }
    let fadt = fadt(dsdt_addr);
    let mut xsdt = XSDT::new(OEM_ID, *b"RSRCXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = to_bytes(&xsdt);
    debug_assert_eq!(xsdt.len(), xsdt_len);
    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));

    for (what, addr, bytes) in [
        ("RSDP", RSDP_ADDR, &rsdp),
        ("XSDT", xsdt_addr, &xsdt),
        ("FADT", fadt_addr, &fadt),
        ("MADT", madt_addr, &madt),
        ("DSDT", dsdt_addr, &dsdt),
        (
            "reset vector stub",
            RESET_VECTOR_ADDR,
            &reset_vector_stub().to_vec(),
        ),
    ] {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|source| AcpiError::Write { what, source })?;
    }
    Ok(RSDP_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::legacy::ACPI_PM_LEN;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// The table at `addr`: its signature is checked, its whole length read
    /// and its checksum verified.
    fn table(mem: &GuestMemoryMmap, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
        let head = read(mem, addr, 36);
        assert_eq!(&head[..4], sig, "signature at {addr:#x}");
        let len = u32_at(&head, 4) as usize;
        assert!(len >= 36);
        let t = read(mem, addr, len);
        assert_eq!(sum(&t), 0, "{} checksum", String::from_utf8_lossy(sig));
        assert_eq!(&t[10..16], &OEM_ID);
        t
    }

    /// Every table, found from the RSDP as Linux does: (xsdt, fadt, madt, dsdt).
    fn tables(mem: &GuestMemoryMmap) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
        let rsdp = read(mem, RSDP_ADDR, 36);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum");
        assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
        assert_eq!(rsdp[15], 2, "revision");
        assert_eq!(u32_at(&rsdp, 20), 36, "length");
        let xsdt = table(mem, u64_at(&rsdp, 24), b"XSDT");
        assert_eq!(xsdt.len(), 36 + 16);
        let fadt = table(mem, u64_at(&xsdt, 36), b"FACP");
        let madt = table(mem, u64_at(&xsdt, 44), b"APIC");
        let dsdt = table(mem, u64_at(&fadt, 140), b"DSDT");
        (xsdt, fadt, madt, dsdt)
    }

    fn virtio(n: u8) -> AcpiDevices {
        AcpiDevices {
            virtio: (0..n as u32)
                .map(|i| VirtioMmioSlot {
                    base: 0xd000_1000 + 0x1000 * u64::from(i),
                    len: 0x1000,
                    irq: 5 + i,
                })
                .collect(),
        }
    }

    fn count(hay: &[u8], needle: &[u8]) -> usize {
        hay.windows(needle.len()).filter(|w| *w == needle).count()
    }

    /// MADT entries after the 44-byte header, as (type, bytes).
    fn madt_entries(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut off = 44;
        while off < madt.len() {
            let len = usize::from(madt[off + 1]);
            assert!(len >= 2 && off + len <= madt.len(), "entry at {off}");
            out.push((madt[off], madt[off..off + len].to_vec()));
            off += len;
        }
        out
    }

    #[test]
    fn rsdp_at_its_fixed_address_leads_to_every_table_with_valid_checksums() {
        let m = mem();
        let rsdp = create_acpi_tables(&m, 2, &virtio(3)).unwrap();
        assert_eq!(rsdp, 0xe_0000);
        let (xsdt, fadt, _, _) = tables(&m);
        let addrs = [rsdp, u64_at(&xsdt, 36), u64_at(&xsdt, 44), u64_at(&fadt, 140)];
        assert!(
            addrs.windows(2).all(|w| w[0] < w[1]),
            "RSDP, FADT, MADT, DSDT in order: {addrs:x?}"
        );
    }

    #[test]
    fn fadt_is_hardware_reduced_and_points_at_the_pm_device() {
        let m = mem();
        create_acpi_tables(&m, 1, &AcpiDevices::default()).unwrap();
        let (_, fadt, _, _) = tables(&m);
        assert_eq!(fadt.len(), 276);
        assert_eq!((fadt[8], fadt[131]), (6, 5), "FADT revision 6.5");
        let flags = u32_at(&fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_eq!(
            u16_at(&fadt, 109),
            0b1_1110,
            "8042, no VGA, no MSI, no ASPM; RTC present"
        );
        assert_eq!(fadt[108], 0x32, "century");
        assert_eq!(u16_at(&fadt, 46), 0, "no SCI");
        assert_eq!(u32_at(&fadt, 40), 0, "32-bit DSDT unused");
        assert_ne!(u64_at(&fadt, 140), 0, "X_DSDT");
        // GAS: space, bit width, bit offset, access size, address.
        let gas = |off: usize| {
            (
                fadt[off],
                fadt[off + 1],
                fadt[off + 2],
                fadt[off + 3],
                u64_at(&fadt, off + 4),
            )
        };
        assert_eq!(gas(244), (1, 8, 0, 1, 0x600), "sleep control");
        assert_eq!(gas(256), (1, 8, 0, 1, 0x601), "sleep status");
        assert_eq!(gas(116), (1, 8, 0, 1, 0x602), "reset register");
        assert_eq!(fadt[128], ACPI_RESET_VALUE);
        for off in [244, 256, 116] {
            let port = u64_at(&fadt, off + 4);
            assert!((u64::from(ACPI_PM_PORT)..u64::from(ACPI_PM_PORT + ACPI_PM_LEN)).contains(&port));
        }
    }

    #[test]
    fn madt_lists_each_vcpu_and_the_io_apic() {
        for nr in [1u8, 2, 7, MAX_SUPPORTED_CPUS] {
            let m = mem();
            create_acpi_tables(&m, nr, &AcpiDevices::default()).unwrap();
            let (_, _, madt, _) = tables(&m);
            assert_eq!(u32_at(&madt, 36), 0xfee0_0000, "local APIC address");
            assert_eq!(u32_at(&madt, 40), 0, "flags: no PCAT_COMPAT");
            let entries = madt_entries(&madt);
            let lapics: Vec<_> = entries.iter().filter(|(t, _)| *t == 0).collect();
            assert_eq!(lapics.len(), usize::from(nr));
            for (i, (_, e)) in lapics.iter().enumerate() {
                assert_eq!(e.len(), 8);
                assert_eq!((usize::from(e[2]), usize::from(e[3])), (i, i), "uid, APIC id");
                assert_eq!(u32_at(e, 4), 1, "enabled");
            }
            let ioapics: Vec<_> = entries.iter().filter(|(t, _)| *t == 1).collect();
            assert_eq!(ioapics.len(), 1);
            let io = &ioapics[0].1;
            assert_eq!(io[2], nr + 1, "I/O APIC id as in the MP table");
            assert_eq!((u32_at(io, 4), u32_at(io, 8)), (0xfec0_0000, 0));
            let isos: Vec<_> = entries
                .iter()
                .filter(|(t, _)| *t == 2)
                .map(|(_, e)| e.clone())
                .collect();
            assert_eq!(isos, vec![vec![2, 10, 0, 9, 9, 0, 0, 0, 0b0101, 0]]);
        }
    }

    #[test]
    fn dsdt_announces_legacy_devices_each_virtio_slot_and_s5() {
        for n in [0, 1, 3, 19] {
            let m = mem();
            let devs = virtio(n);
            create_acpi_tables(&m, 1, &devs).unwrap();
            let (_, _, _, dsdt) = tables(&m);
            assert_eq!(count(&dsdt, b"LNRO0005\0"), usize::from(n));
            assert_eq!(count(&dsdt, b"_S5_"), 1);
            // \_S5_ = Package(4) { 5, 0, 0, 0 }.
            assert_eq!(count(&dsdt, b"_S5_\x12\x07\x04\x0a\x05\x00\x00\x00"), 1);
            // EISA ids as DWord constants: PNP0501, PNP0B00, PNP0303.
            for id in [0x0105_d041u32, 0x000b_d041, 0x0303_d041] {
                let mut enc = vec![0x0c];
                enc.extend(id.to_le_bytes());
                assert_eq!(count(&dsdt, &enc), 1, "{id:#x}");
            }
            // COM1: IO(0x3f8, 0x3f8, 1, 8) + edge/high IRQ 4; i8042 IRQ 1.
            assert_eq!(count(&dsdt, &[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8]), 1);
            assert_eq!(count(&dsdt, &[0x89, 6, 0, 0b0011, 1, 4, 0, 0, 0]), 1);
            assert_eq!(count(&dsdt, &[0x89, 6, 0, 0b0011, 1, 1, 0, 0, 0]), 1);
            assert_eq!(count(&dsdt, &[0x47, 1, 0x70, 0, 0x70, 0, 1, 2]), 1);
            for (i, s) in devs.virtio.iter().enumerate() {
                let mut mem32 = vec![0x86, 9, 0, 1];
                mem32.extend(u32::try_from(s.base).unwrap().to_le_bytes());
                mem32.extend(s.len.to_le_bytes());
                assert_eq!(count(&dsdt, &mem32), 1, "Memory32Fixed of device {i}");
                let mut irq = vec![0x89, 6, 0, 0b0011, 1];
                irq.extend(s.irq.to_le_bytes());
                assert_eq!(count(&dsdt, &irq), 1, "Interrupt of device {i}");
                assert_eq!(count(&dsdt, format!("V{i:03X}").as_bytes()), 1);
            }
        }
    }

    #[test]
    fn reset_vector_writes_the_reset_register() {
        let m = mem();
        create_acpi_tables(&m, 1, &AcpiDevices::default()).unwrap();
        let stub = read(&m, 0xf_fff0, 9);
        // mov dx, 0x602; mov al, 1; out dx, al; hlt; jmp $
        assert_eq!(stub, [0xba, 0x02, 0x06, 0xb0, 0x01, 0xee, 0xf4, 0xeb, 0xfe]);
    }

    #[test]
    fn impossible_vcpu_counts_are_refused() {
        for nr in [0, 255] {
            assert!(matches!(
                create_acpi_tables(&mem(), nr, &AcpiDevices::default()),
                Err(AcpiError::VcpuCount(n)) if n == nr
            ));
        }
    }

    #[test]
    fn devices_the_tables_cannot_describe_are_refused() {
        let mut devs = virtio(1);
        devs.virtio[0].base = 0x1_0000_0000;
        assert!(matches!(
            create_acpi_tables(&mem(), 1, &devs),
            Err(AcpiError::DeviceAbove4G { index: 0, .. })
        ));
        devs.virtio[0].base = 0xffff_f800;
        assert!(matches!(
            create_acpi_tables(&mem(), 1, &devs),
            Err(AcpiError::DeviceAbove4G { .. })
        ));
        devs.virtio[0].base = 0xffff_f000;
        assert!(
            create_acpi_tables(&mem(), 1, &devs).is_ok(),
            "a window that ends at 4 GiB fits"
        );
        let devs = virtio(20);
        assert!(matches!(
            create_acpi_tables(&mem(), 1, &devs),
            Err(AcpiError::IrqOutOfRange { index: 19, irq: 24 })
        ));
        assert!(matches!(
            create_acpi_tables(&mem(), 1, &virtio(25)),
            Err(AcpiError::TooManyDevices(25))
        ));
    }

    #[test]
    fn tables_stay_below_one_mib() {
        let m = mem();
        create_acpi_tables(&m, MAX_SUPPORTED_CPUS, &virtio(19)).unwrap();
        let (_, fadt, madt, dsdt) = tables(&m);
        let dsdt_addr = u64_at(&fadt, 140);
        assert!(dsdt_addr + dsdt.len() as u64 <= ACPI_END);
        assert!(madt.len() > 254 * 8);
    }
}
