//! Per-vCPU CPUID.
//!
//! KVM reports what it can virtualize (`KVM_GET_SUPPORTED_CPUID`); each vCPU
//! gets that table with its topology patched in, so a guest sees one package
//! with `nr_vcpus` single-threaded cores and finds its own APIC id:
//!
//! - leaf 0x1: EBX\[31:24\] initial APIC id = vCPU id, EBX\[23:16\] logical
//!   processor count = `nr_vcpus`, EDX.HTT set when there is more than one
//!   vCPU;
//! - leaf 0x4 (Intel caches): EAX\[31:26\] = cores per package - 1;
//! - leaves 0xb and 0x1f (extended topology): x2APIC id in EDX of every
//!   sub-leaf; sub-leaf 0 is the SMT level (1 thread), sub-leaf 1 the core
//!   level (`nr_vcpus` cores), later sub-leaves are invalid;
//! - leaf 0x6: ECX bit 3 (energy-performance bias) cleared: the MSR behind
//!   it is not virtualized;
//! - leaf 0x1 ECX bit 31 (hypervisor present) set: without it Linux never
//!   looks at the hypervisor leaves, says "Booting paravirtualized kernel on
//!   bare hardware" and uses no kvm-clock. KVM's supported table already
//!   carries the leaves behind it, 0x4000_0000 (`"KVMKVMKVM"`, the highest
//!   hypervisor leaf) and 0x4000_0001 (the paravirtual features KVM offers:
//!   kvm-clock, PV EOI, async page faults, ...), and they pass through;
//! - leaf 0x1 ECX bit 24 (TSC-deadline timer) set when KVM emulates it
//!   (`KVM_CAP_TSC_DEADLINE_TIMER`; KVM's table leaves that bit to the VMM):
//!   a Linux guest then needs no LAPIC-timer calibration against the PIT.
//!
//! Everything else passes through unchanged. This is deliberately modest
//! next to Firecracker's CPU templates; a Linux guest boots with it and the
//! bare-metal guests only read leaf 1.

use kvm_bindings::CpuId;

/// Leaf 1 EDX bit: hyper-threading / multi-core package.
pub const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 6 ECX bit: energy-performance bias MSR.
pub const LEAF6_ECX_EPB: u32 = 1 << 3;
/// Leaf 1 ECX bit: a hypervisor is present.
pub const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX bit: the local APIC timer has a TSC-deadline mode.
pub const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 0x4000_0000: the hypervisor's signature and highest leaf.
pub const KVM_SIGNATURE_LEAF: u32 = 0x4000_0000;

/// What the host's KVM can do beyond its supported CPUID table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCaps {
    /// `KVM_CAP_TSC_DEADLINE_TIMER`: KVM emulates the TSC-deadline timer.
    pub tsc_deadline: bool,
}

/// The host's CPUID facts every vCPU's table is made from: read once per VM.
#[derive(Clone, Debug)]
pub struct HostCpuid {
    /// `KVM_GET_SUPPORTED_CPUID`.
    pub supported: CpuId,
    /// Capabilities that decide bits KVM's table leaves to the VMM.
    pub caps: HostCaps,
}

impl HostCpuid {
    /// Reads the supported table and the capabilities from `kvm`.
    pub fn read(kvm: &kvm_ioctls::Kvm) -> Result<Self, kvm_ioctls::Error> {
        Ok(Self {
            supported: kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)?,
            caps: HostCaps {
                tsc_deadline: kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer),
            },
        })
    }

    /// The table of vCPU `vcpu_id` of `nr_vcpus` (see [`patch_cpuid`]).
    pub fn for_vcpu(&self, vcpu_id: u8, nr_vcpus: u8) -> Result<CpuId, CpuidError> {
        patch_cpuid(&self.supported, self.caps, vcpu_id, nr_vcpus)
    }
}
/// Extended-topology level type "SMT".
const LEVEL_TYPE_SMT: u32 = 1;
/// Extended-topology level type "Core".
const LEVEL_TYPE_CORE: u32 = 2;

/// Errors from preparing a vCPU's CPUID.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// The vCPU id or count is impossible.
    #[error("vCPU id {vcpu_id} is not below the vCPU count {nr_vcpus}: pass --vcpus between 1 and 254")]
    BadTopology {
        /// The vCPU's id.
        vcpu_id: u8,
        /// The vCPU count.
        nr_vcpus: u8,
    },
}

/// Number of APIC-id bits needed to number `n` cores.
fn id_bits(n: u8) -> u32 {
    if n <= 1 {
        0
    } else {
        u8::BITS - (n - 1).leading_zeros()
    }
}

/// Patches a copy of KVM's supported CPUID for vCPU `vcpu_id` of `nr_vcpus`
/// (see the module docs for the leaves touched).
pub fn patch_cpuid(
    supported: &CpuId,
    caps: HostCaps,
    vcpu_id: u8,
    nr_vcpus: u8,
) -> Result<CpuId, CpuidError> {
    if vcpu_id >= nr_vcpus {
        return Err(CpuidError::BadTopology { vcpu_id, nr_vcpus });
    }
    let mut cpuid = supported.clone();
    let id = u32::from(vcpu_id);
    let count = u32::from(nr_vcpus);
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            0x1 => {
                entry.ebx = (entry.ebx & 0x0000_ffff) | (id << 24) | (count << 16);
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
                if caps.tsc_deadline {
                    entry.ecx |= LEAF1_ECX_TSC_DEADLINE;
                }
                if nr_vcpus > 1 {
                    entry.edx |= LEAF1_EDX_HTT;
                } else {
                    entry.edx &= !LEAF1_EDX_HTT;
                }
            }
            0x4 => {
                entry.eax = (entry.eax & 0x03ff_ffff) | ((count - 1).min(63) << 26);
            }
            0x6 => entry.ecx &= !LEAF6_ECX_EPB,
            0xb | 0x1f => {
                let sub = entry.index;
                (entry.eax, entry.ebx, entry.ecx) = match sub {
                    0 => (0, 1, LEVEL_TYPE_SMT << 8),
                    1 => (id_bits(nr_vcpus), count, (LEVEL_TYPE_CORE << 8) | 1),
                    _ => (0, 0, sub & 0xff),
                };
                entry.edx = id;
            }
            _ => {}
        }
    }
    Ok(cpuid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    fn sample() -> CpuId {
        CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 0x1,
                ecx: 0,
                ..entry(0x1, 0)
            },
            entry(0x4, 0),
            entry(0x6, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
            entry(0x8000_0001, 0),
        ])
        .unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_htt() {
        let cpuid = patch_cpuid(&sample(), HostCaps::default(), 3, 4).unwrap();
        let e = find(&cpuid, 1, 0);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ebx & 0xffff, 0xffff);
        assert_ne!(e.edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let cpuid = patch_cpuid(&sample(), HostCaps::default(), 0, 1).unwrap();
        let e = find(&cpuid, 1, 0);
        assert_eq!(e.ebx >> 16, 0x0001);
        assert_eq!(e.edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn leaf4_reports_cores_per_package() {
        let cpuid = patch_cpuid(&sample(), HostCaps::default(), 0, 4).unwrap();
        let e = find(&cpuid, 4, 0);
        assert_eq!(e.eax >> 26, 3);
        assert_eq!(e.eax & 0x03ff_ffff, 0x03ff_ffff);
    }

    #[test]
    fn leaf6_epb_is_cleared() {
        let cpuid = patch_cpuid(&sample(), HostCaps::default(), 0, 1).unwrap();
        assert_eq!(find(&cpuid, 6, 0).ecx & LEAF6_ECX_EPB, 0);
    }

    #[test]
    fn extended_topology_names_the_x2apic_id_and_levels() {
        let cpuid = patch_cpuid(&sample(), HostCaps::default(), 2, 5).unwrap();
        let smt = find(&cpuid, 0xb, 0);
        let core = find(&cpuid, 0xb, 1);
        let invalid = find(&cpuid, 0xb, 2);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 5, 0x201, 2));
        assert_eq!((invalid.eax, invalid.ebx, invalid.ecx, invalid.edx), (0, 0, 2, 2));
    }

    #[test]
    fn other_leaves_pass_through() {
        let cpuid = patch_cpuid(&sample(), HostCaps::default(), 1, 2).unwrap();
        assert_eq!(find(&cpuid, 0x8000_0001, 0), entry(0x8000_0001, 0));
    }

    #[test]
    fn leaf1_says_a_hypervisor_is_present() {
        let cpuid = patch_cpuid(&sample(), HostCaps::default(), 0, 1).unwrap();
        let ecx = find(&cpuid, 1, 0).ecx;
        assert_ne!(ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(
            ecx & LEAF1_ECX_TSC_DEADLINE,
            0,
            "not offered unless KVM emulates it"
        );
    }

    #[test]
    fn tsc_deadline_is_offered_when_kvm_emulates_it() {
        let caps = HostCaps { tsc_deadline: true };
        let cpuid = patch_cpuid(&sample(), caps, 0, 1).unwrap();
        assert_ne!(find(&cpuid, 1, 0).ecx & LEAF1_ECX_TSC_DEADLINE, 0);
    }

    /// Needs `/dev/kvm`: the real table carries KVM's signature leaf, which
    /// Linux finds once the hypervisor bit is set.
    #[test]
    fn the_real_table_carries_kvms_signature_leaf() {
        let kvm = kvm_ioctls::Kvm::new().expect("this test reads the real KVM's CPUID and needs /dev/kvm");
        let supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        let cpuid = patch_cpuid(&supported, HostCaps::default(), 0, 1).unwrap();
        let sig = find(&cpuid, KVM_SIGNATURE_LEAF, 0);
        let text: Vec<u8> = [sig.ebx, sig.ecx, sig.edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        assert_eq!(&text, b"KVMKVMKVM\0\0\0");
        assert!(sig.eax > KVM_SIGNATURE_LEAF, "the features leaf is listed");
    }

    #[test]
    fn vcpu_id_must_be_below_count() {
        assert!(matches!(
            patch_cpuid(&sample(), HostCaps::default(), 2, 2),
            Err(CpuidError::BadTopology { .. })
        ));
    }
}
