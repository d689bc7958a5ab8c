//! CPUID for each vCPU: KVM's supported set, with the topology fixed up so
//! that vCPU `n` reports APIC ID `n` in a single socket of `count` cores,
//! and with the hypervisor bit set.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZE: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;
const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;

/// Bits needed to hold `count` distinct IDs.
fn id_bits(count: u32) -> u32 {
    32 - count.saturating_sub(1).leading_zeros()
}

/// Fixes one CPUID entry for vCPU `id` of `count`.
pub fn patch_entry(entry: &mut kvm_cpuid_entry2, id: u32, count: u32) {
    match entry.function {
        LEAF_FEATURES => {
            // EBX: APIC ID [31:24], logical processors [23:16], CLFLUSH size 8 qwords.
            entry.ebx = (id << 24) | (count.min(255) << 16) | (8 << 8);
            entry.ecx |= ECX_HYPERVISOR;
            if count > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE => {
            // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing - 1.
            entry.eax &= 0x3fff;
            entry.eax |= (count - 1) << 26;
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            entry.edx = id;
            match entry.index {
                0 => {
                    // SMT level: one thread per core.
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = 1 << 8;
                }
                1 => {
                    // Core level: `count` cores in the package.
                    entry.eax = id_bits(count);
                    entry.ebx = count;
                    entry.ecx = (2 << 8) | 1;
                }
                n => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = n;
                }
            }
        }
        LEAF_AMD_SIZE => {
            // ECX[15:12]: APIC ID bits for cores; ECX[7:0]: cores - 1.
            entry.ecx = (id_bits(count).max(1) << 12) | (count - 1);
        }
        LEAF_AMD_TOPOLOGY => {
            entry.eax = id;
            entry.ebx = id & 0xff;
            entry.ecx = 0;
        }
        _ => {}
    }
}

/// Offers the LAPIC's TSC-deadline timer mode, which KVM's in-kernel LAPIC
/// emulates but leaves out of its supported CPUID (KVM_CAP_TSC_DEADLINE_TIMER
/// says it is there). Linux then arms its timer with one MSR write instead
/// of programming the LAPIC's count registers, and KVM can put the timer
/// on the hardware's preemption timer: fewer, cheaper exits per tick.
pub fn offer_tsc_deadline(cpuid: &mut CpuId) {
    for entry in cpuid.as_mut_slice() {
        if entry.function == LEAF_FEATURES {
            entry.ecx |= ECX_TSC_DEADLINE;
        }
    }
}

/// KVM reports the extended topology leaves (0xb, 0x1f) as "no topology":
/// subleaf 0 alone. Without a core level (subleaf 1) a guest takes every
/// vCPU for a package of its own, and a multi-package AMD guest assumes its
/// TSCs unsynchronized and gives up the TSC as its clock. So subleaf 1 is
/// added where the leaf exists, once for all vCPUs (patch_entry fills it
/// in for each).
pub fn add_core_levels(cpuid: &mut CpuId) {
    for leaf in [LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2] {
        let entries = cpuid.as_slice();
        let present = entries.iter().any(|e| e.function == leaf);
        let has_core = entries.iter().any(|e| e.function == leaf && e.index == 1);
        if present && !has_core {
            let core = kvm_cpuid_entry2 {
                function: leaf,
                index: 1,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ..Default::default()
            };
            if cpuid.push(core).is_err() {
                log::debug!("CPUID: no room for leaf {leaf:#x}'s core level");
            }
        }
    }
}

/// The CPUID table for vCPU `id` of `count`, derived from KVM's supported set.
pub fn for_vcpu(supported: &CpuId, id: u32, count: u32) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        patch_entry(entry, id, count);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn leaf_1_carries_apic_id_count_and_hypervisor_bit() {
        let mut e = entry(1, 0);
        patch_entry(&mut e, 3, 4);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & EDX_HTT, 0);
    }

    #[test]
    fn a_core_level_is_added_to_kvms_empty_topology_leaf() {
        // What KVM_GET_SUPPORTED_CPUID gives: leaf 0xb's subleaf 0, zeros.
        let mut supported = CpuId::from_entries(&[entry(1, 0), entry(0xb, 0)]).unwrap();
        add_core_levels(&mut supported);
        let cpuid = for_vcpu(&supported, 1, 4);
        let leaf = |index| {
            *cpuid
                .as_slice()
                .iter()
                .find(|e| e.function == 0xb && e.index == index)
                .expect("subleaf")
        };
        let (smt, core) = (leaf(0), leaf(1));
        // One thread per core; four cores (2 bits of APIC ID) per package.
        assert_eq!((smt.eax, smt.ebx, smt.ecx >> 8 & 0xff), (0, 1, 1));
        assert_eq!(
            (core.eax, core.ebx, core.ecx >> 8 & 0xff, core.edx),
            (2, 4, 2, 1)
        );
        assert_ne!(core.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 0);
        // A host without the leaf gets none, and nothing is added twice.
        let mut none = CpuId::from_entries(&[entry(1, 0)]).unwrap();
        add_core_levels(&mut none);
        assert!(none.as_slice().iter().all(|e| e.function != 0xb));
        let len = supported.as_slice().len();
        add_core_levels(&mut supported);
        assert_eq!(supported.as_slice().len(), len);
    }

    #[test]
    fn single_vcpu_clears_htt() {
        let mut e = entry(1, 0);
        e.edx = EDX_HTT;
        patch_entry(&mut e, 0, 1);
        assert_eq!(e.edx & EDX_HTT, 0);
    }

    #[test]
    fn extended_topology_reports_cores_and_x2apic_id() {
        let mut smt = entry(0xb, 0);
        let mut core = entry(0xb, 1);
        patch_entry(&mut smt, 5, 6);
        patch_entry(&mut core, 5, 6);
        assert_eq!((smt.ebx, smt.edx), (1, 5));
        assert_eq!((core.eax, core.ebx, core.edx), (3, 6, 5));
    }

    #[test]
    fn amd_core_count_leaf() {
        let mut e = entry(0x8000_0008, 0);
        patch_entry(&mut e, 0, 16);
        assert_eq!(e.ecx & 0xff, 15);
        assert_eq!((e.ecx >> 12) & 0xf, 4);
    }

    #[test]
    fn id_bits_counts() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
    }
}
