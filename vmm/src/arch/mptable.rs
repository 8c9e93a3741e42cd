//! The Intel MultiProcessor Specification 1.4 table, for Linux guests.
//!
//! Without ACPI, Linux learns how many CPUs there are and how legacy
//! interrupts reach the I/O APIC from the MP table, which it finds by
//! scanning the EBDA for the `_MP_` floating pointer. Like Firecracker and
//! Cloud Hypervisor, we write one at [`MPTABLE_START`]:
//!
//! - the floating pointer (16 bytes) pointing at the configuration table;
//! - the table header (`PCMP`), then one processor entry per vCPU (APIC id
//!   = vCPU id, vCPU 0 the bootstrap processor), one ISA bus, one I/O APIC
//!   (id `nr_vcpus + 1`), an interrupt entry for each of the I/O APIC's 24
//!   pins (ISA IRQ n → pin n, as KVM's default routing has it; 0..15 are the
//!   legacy IRQs, 16..23 are free for virtio-mmio devices), and the two local
//!   interrupt entries (ExtINT on LINT0 of the BSP, NMI on LINT1 of all).
//!
//! Both checksums make their structure's bytes sum to zero. The bare-metal
//! guests do not use the table.

use std::mem::size_of;

use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::layout::{APIC_DEFAULT_PHYS_BASE, IOAPIC_DEFAULT_PHYS_BASE, MPTABLE_START};

/// Most vCPUs the table can describe: APIC ids are 8 bits and the I/O APIC
/// takes the id after the last vCPU.
pub const MAX_SUPPORTED_CPUS: u8 = 254;
/// Number of I/O APIC pins described.
pub const IOAPIC_PINS: u8 = 24;

const APIC_VERSION: u8 = 0x14;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const MPC_APIC_USABLE: u8 = 1;
const MP_IRQ_TYPE_INT: u8 = 0;
const MP_IRQ_TYPE_NMI: u8 = 1;
const MP_IRQ_TYPE_EXTINT: u8 = 3;
const MP_IRQPOL_DEFAULT: u16 = 0;
const MPC_SPEC: u8 = 4;

/// MP floating pointer structure.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MpfIntel {
    /// `"_MP_"`.
    pub signature: [u8; 4],
    /// Physical address of the configuration table.
    pub physptr: u32,
    /// Length in 16-byte units (1).
    pub length: u8,
    /// Specification revision (4 = 1.4).
    pub specification: u8,
    /// Makes the 16 bytes sum to zero.
    pub checksum: u8,
    /// Default configuration type (0: a table is present).
    pub feature1: u8,
    /// IMCR flag and reserved bits.
    pub feature2: u8,
    /// Reserved.
    pub feature3: u8,
    /// Reserved.
    pub feature4: u8,
    /// Reserved.
    pub feature5: u8,
}

/// MP configuration table header.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MpcTable {
    /// `"PCMP"`.
    pub signature: [u8; 4],
    /// Bytes of the header and all entries.
    pub length: u16,
    /// Specification revision (4).
    pub spec: u8,
    /// Makes the header and entries sum to zero.
    pub checksum: u8,
    /// OEM id.
    pub oem: [u8; 8],
    /// Product id.
    pub productid: [u8; 12],
    /// OEM table pointer (none).
    pub oemptr: u32,
    /// OEM table size.
    pub oemsize: u16,
    /// Number of entries.
    pub oemcount: u16,
    /// Physical address of the local APICs.
    pub lapic: u32,
    /// Reserved.
    pub reserved: u32,
}

/// Processor entry.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MpcCpu {
    /// Entry type (`MP_PROCESSOR`).
    pub type_: u8,
    /// Local APIC id.
    pub apicid: u8,
    /// Local APIC version.
    pub apicver: u8,
    /// Enabled / bootstrap flags.
    pub cpuflag: u8,
    /// CPU signature (family, model, stepping).
    pub cpufeature: u32,
    /// CPUID leaf 1 EDX feature flags.
    pub featureflag: u32,
    /// Reserved.
    pub reserved: [u32; 2],
}

/// Bus entry.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MpcBus {
    /// Entry type (`MP_BUS`).
    pub type_: u8,
    /// Bus id.
    pub busid: u8,
    /// Bus type string, space padded.
    pub bustype: [u8; 6],
}

/// I/O APIC entry.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MpcIoapic {
    /// Entry type (`MP_IOAPIC`).
    pub type_: u8,
    /// I/O APIC id.
    pub apicid: u8,
    /// I/O APIC version.
    pub apicver: u8,
    /// Usable flag.
    pub flags: u8,
    /// Physical address.
    pub apicaddr: u32,
}

/// I/O interrupt assignment entry.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MpcIntsrc {
    /// Entry type (`MP_INTSRC`).
    pub type_: u8,
    /// Interrupt type.
    pub irqtype: u8,
    /// Polarity and trigger mode.
    pub irqflag: u16,
    /// Source bus id.
    pub srcbus: u8,
    /// Source bus IRQ.
    pub srcbusirq: u8,
    /// Destination I/O APIC id.
    pub dstapic: u8,
    /// Destination I/O APIC pin.
    pub dstirq: u8,
}

/// Local interrupt assignment entry.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MpcLintsrc {
    /// Entry type (`MP_LINTSRC`).
    pub type_: u8,
    /// Interrupt type.
    pub irqtype: u8,
    /// Polarity and trigger mode.
    pub irqflag: u16,
    /// Source bus id.
    pub srcbusid: u8,
    /// Source bus IRQ.
    pub srcbusirq: u8,
    /// Destination local APIC id (0xff: all).
    pub destapic: u8,
    /// Destination LINT pin.
    pub destapiclint: u8,
}

// Sizes fixed by the MP specification.
const _: () = assert!(size_of::<MpfIntel>() == 16);
const _: () = assert!(size_of::<MpcTable>() == 44);
const _: () = assert!(size_of::<MpcCpu>() == 20);
const _: () = assert!(size_of::<MpcBus>() == 8);
const _: () = assert!(size_of::<MpcIoapic>() == 8);
const _: () = assert!(size_of::<MpcIntsrc>() == 8);
const _: () = assert!(size_of::<MpcLintsrc>() == 8);

// SAFETY: each struct is `repr(C, packed)` and made only of integers and
// integer arrays, so it has no padding and every bit pattern is valid.
unsafe impl ByteValued for MpfIntel {}
// SAFETY: as above.
unsafe impl ByteValued for MpcTable {}
// SAFETY: as above.
unsafe impl ByteValued for MpcCpu {}
// SAFETY: as above.
unsafe impl ByteValued for MpcBus {}
// SAFETY: as above.
unsafe impl ByteValued for MpcIoapic {}
// SAFETY: as above.
unsafe impl ByteValued for MpcIntsrc {}
// SAFETY: as above.
unsafe impl ByteValued for MpcLintsrc {}

/// Errors from writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// More vCPUs than the table can describe.
    #[error("{0} vCPUs do not fit in the MP table: use at most {MAX_SUPPORTED_CPUS} (--vcpus)")]
    TooManyCpus(u8),
    /// No vCPUs.
    #[error("a VM needs at least one vCPU (--vcpus)")]
    NoCpus,
    /// Guest memory does not cover the table.
    #[error("guest memory does not cover the MP table at {MPTABLE_START:#x} (raise --mem-mib)")]
    NotEnoughMemory,
    /// Writing to guest memory failed.
    #[error("cannot write the MP table into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Sum of the bytes of `v`, wrapping.
fn byte_sum<T: ByteValued>(v: &T) -> u8 {
    v.as_slice().iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

/// Bytes the table takes for `nr_vcpus` vCPUs.
pub fn mptable_size(nr_vcpus: u8) -> usize {
    size_of::<MpfIntel>()
        + size_of::<MpcTable>()
        + size_of::<MpcCpu>() * usize::from(nr_vcpus)
        + size_of::<MpcBus>()
        + size_of::<MpcIoapic>()
        + size_of::<MpcIntsrc>() * usize::from(IOAPIC_PINS)
        + size_of::<MpcLintsrc>() * 2
}

/// The serialized entries that follow the table header.
fn entries(nr_vcpus: u8) -> (Vec<u8>, u16) {
    let ioapic_id = nr_vcpus + 1;
    let mut bytes = Vec::with_capacity(mptable_size(nr_vcpus));
    let mut count = 0u16;
    let mut push = |slice: &[u8]| {
        bytes.extend_from_slice(slice);
        count += 1;
    };
    for id in 0..nr_vcpus {
        let cpu = MpcCpu {
            type_: MP_PROCESSOR,
            apicid: id,
            apicver: APIC_VERSION,
            cpuflag: CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 },
            cpufeature: CPU_STEPPING,
            featureflag: CPU_FEATURE_APIC | CPU_FEATURE_FPU,
            reserved: [0; 2],
        };
        push(cpu.as_slice());
    }
    let bus = MpcBus {
        type_: MP_BUS,
        busid: 0,
        bustype: *b"ISA   ",
    };
    push(bus.as_slice());
    let ioapic = MpcIoapic {
        type_: MP_IOAPIC,
        apicid: ioapic_id,
        apicver: APIC_VERSION,
        flags: MPC_APIC_USABLE,
        apicaddr: IOAPIC_DEFAULT_PHYS_BASE,
    };
    push(ioapic.as_slice());
    for pin in 0..IOAPIC_PINS {
        let src = MpcIntsrc {
            type_: MP_INTSRC,
            irqtype: MP_IRQ_TYPE_INT,
            irqflag: MP_IRQPOL_DEFAULT,
            srcbus: 0,
            srcbusirq: pin,
            dstapic: ioapic_id,
            dstirq: pin,
        };
        push(src.as_slice());
    }
    let extint = MpcLintsrc {
        type_: MP_LINTSRC,
        irqtype: MP_IRQ_TYPE_EXTINT,
        irqflag: MP_IRQPOL_DEFAULT,
        srcbusid: 0,
        srcbusirq: 0,
        destapic: 0,
        destapiclint: 0,
    };
    push(extint.as_slice());
    let nmi = MpcLintsrc {
        type_: MP_LINTSRC,
        irqtype: MP_IRQ_TYPE_NMI,
        irqflag: MP_IRQPOL_DEFAULT,
        srcbusid: 0,
        srcbusirq: 0,
        destapic: 0xff,
        destapiclint: 1,
    };
    push(nmi.as_slice());
    (bytes, count)
}

/// Writes the MP table for `nr_vcpus` vCPUs at [`MPTABLE_START`].
pub fn setup_mptable(mem: &GuestMemoryMmap, nr_vcpus: u8) -> Result<(), MptableError> {
    if nr_vcpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if nr_vcpus > MAX_SUPPORTED_CPUS {
        return Err(MptableError::TooManyCpus(nr_vcpus));
    }
    let start = GuestAddress(MPTABLE_START);
    let size = mptable_size(nr_vcpus) as u64;
    let last = start.checked_add(size - 1).ok_or(MptableError::NotEnoughMemory)?;
    if !mem.address_in_range(last) {
        return Err(MptableError::NotEnoughMemory);
    }

    let table_addr = start.unchecked_add(size_of::<MpfIntel>() as u64);
    let (body, count) = entries(nr_vcpus);
    let mut header = MpcTable {
        signature: *b"PCMP",
        #[allow(clippy::cast_possible_truncation)] // At most 44 + 5,080 + 224 bytes.
        length: (size_of::<MpcTable>() + body.len()) as u16,
        spec: MPC_SPEC,
        checksum: 0,
        oem: *b"RSRCFUL ",
        productid: *b"RESOURCEFUL ",
        oemptr: 0,
        oemsize: 0,
        oemcount: count,
        lapic: APIC_DEFAULT_PHYS_BASE,
        reserved: 0,
    };
    let body_sum = body.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    header.checksum = 0u8.wrapping_sub(byte_sum(&header).wrapping_add(body_sum));

    let mut mpf = MpfIntel {
        signature: *b"_MP_",
        #[allow(clippy::cast_possible_truncation)] // Below 1 MiB.
        physptr: table_addr.raw_value() as u32,
        length: 1,
        specification: MPC_SPEC,
        ..Default::default()
    };
    mpf.checksum = 0u8.wrapping_sub(byte_sum(&mpf));

    mem.write_obj(mpf, start).map_err(MptableError::Write)?;
    mem.write_obj(header, table_addr).map_err(MptableError::Write)?;
    mem.write_slice(&body, table_addr.unchecked_add(size_of::<MpcTable>() as u64))
        .map_err(MptableError::Write)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn sum(mem: &GuestMemoryMmap, addr: u64, len: usize) -> u8 {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn floating_pointer_checksum_is_zero() {
        let mem = mem();
        setup_mptable(&mem, 4).unwrap();
        assert_eq!(sum(&mem, MPTABLE_START, 16), 0);
        let mpf: MpfIntel = mem.read_obj(GuestAddress(MPTABLE_START)).unwrap();
        assert_eq!(&mpf.signature, b"_MP_");
        assert_eq!(u64::from(mpf.physptr), MPTABLE_START + 16);
    }

    #[test]
    fn table_checksum_is_zero_and_lists_every_cpu() {
        let mem = mem();
        for nr in [1u8, 2, 7, MAX_SUPPORTED_CPUS] {
            setup_mptable(&mem, nr).unwrap();
            let table_addr = MPTABLE_START + 16;
            let header: MpcTable = mem.read_obj(GuestAddress(table_addr)).unwrap();
            assert_eq!(&header.signature, b"PCMP");
            assert_eq!(sum(&mem, table_addr, usize::from(header.length)), 0);
            assert_eq!(usize::from(header.length) + 16, mptable_size(nr));
            let cpus = (0..u64::from(nr))
                .map(|i| {
                    mem.read_obj::<MpcCpu>(GuestAddress(table_addr + 44 + 20 * i))
                        .unwrap()
                })
                .filter(|c| c.type_ == MP_PROCESSOR && c.cpuflag & CPU_ENABLED != 0)
                .count();
            assert_eq!(cpus, usize::from(nr));
            let bsp: MpcCpu = mem.read_obj(GuestAddress(table_addr + 44)).unwrap();
            assert_eq!(bsp.cpuflag, CPU_ENABLED | CPU_BOOTPROCESSOR);
        }
    }

    #[test]
    fn ioapic_takes_the_id_after_the_last_cpu() {
        let mem = mem();
        setup_mptable(&mem, 3).unwrap();
        let addr = MPTABLE_START + 16 + 44 + 3 * 20 + 8;
        let ioapic: MpcIoapic = mem.read_obj(GuestAddress(addr)).unwrap();
        assert_eq!((ioapic.type_, ioapic.apicid), (MP_IOAPIC, 4));
        assert_eq!({ ioapic.apicaddr }, IOAPIC_DEFAULT_PHYS_BASE);
    }

    #[test]
    fn too_many_cpus_is_a_clean_error() {
        assert!(matches!(
            setup_mptable(&mem(), 255),
            Err(MptableError::TooManyCpus(255))
        ));
        assert!(matches!(setup_mptable(&mem(), 0), Err(MptableError::NoCpus)));
    }

    #[test]
    fn memory_that_ends_before_the_table_is_an_error() {
        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x9_0000)]).unwrap();
        assert!(matches!(
            setup_mptable(&small, 1),
            Err(MptableError::NotEnoughMemory)
        ));
    }
}
