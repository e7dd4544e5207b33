//! Xen's CPUID leaves at 0x40000000 (xen/include/public/arch-x86/cpuid.h;
//! values as xen/arch/x86/traps.c cpuid_hypervisor_leaves gives an HVM guest).

use sim_core::cpuid::{CpuidResult, CpuidTable, XEN_HVM_VCPU_ID_PRESENT};

use crate::time::time_scale;

pub const BASE: u32 = 0x4000_0000;
/// XEN_HVM_CPUID_* (leaf base+4 EAX).
pub const HVM_VCPU_ID_PRESENT: u32 = XEN_HVM_VCPU_ID_PRESENT;
pub const HVM_DOMID_PRESENT: u32 = 1 << 4;
pub const HVM_UPCALL_VECTOR: u32 = 1 << 6;

fn sig(s: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*s)
}

/// Add the leaves for Xen `version` (major, minor). The vCPU id in base+4
/// EBX is filled per vCPU by `CpuidTable::lookup`.
pub fn install(t: &mut CpuidTable, version: (u16, u16)) {
    t.set(BASE, 0, CpuidResult { eax: BASE + 4, ebx: sig(b"XenV"), ecx: sig(b"MMXe"), edx: sig(b"nVMM") });
    t.set(BASE + 1, 0, CpuidResult { eax: (version.0 as u32) << 16 | version.1 as u32, ..Default::default() });
    // One hypercall page, MSR 0x40000000.
    t.set(BASE + 2, 0, CpuidResult { eax: 1, ebx: crate::platform::HYPERCALL_MSR, ecx: 0, edx: 0 });
    // Time leaf: sub 0 features (bit 1: TSC reliable), TSC mode 0 (default),
    // guest TSC kHz; sub 1 offset 0 and the ns scale; sub 2 host kHz.
    let khz = (sim_core::clock::TSC_HZ / 1000) as u32;
    let (mul, shift) = time_scale(sim_core::clock::TSC_HZ);
    t.set_indexed(BASE + 3);
    t.set(BASE + 3, 0, CpuidResult { eax: 1 << 1, ebx: 0, ecx: khz, edx: 0 });
    t.set(BASE + 3, 1, CpuidResult { eax: 0, ebx: 0, ecx: mul, edx: shift as i32 as u32 });
    t.set(BASE + 3, 2, CpuidResult { eax: khz, ebx: 0, ecx: 0, edx: 0 });
    t.set(
        BASE + 4,
        0,
        CpuidResult {
            eax: HVM_VCPU_ID_PRESENT | HVM_DOMID_PRESENT | HVM_UPCALL_VECTOR,
            ebx: 0,
            ecx: crate::GUEST_DOMID as u32,
            edx: 0,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use sim_core::cpuid::Vendor;

    #[test]
    fn leaves_as_the_abi_describes() {
        let mut t = CpuidTable::baseline(Vendor::Intel);
        install(&mut t, (4, 17));
        let r = t.lookup(0, 2, BASE, 0);
        let mut s = Vec::new();
        for w in [r.ebx, r.ecx, r.edx] {
            s.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(&s, b"XenVMMXenVMM");
        assert!(r.eax >= BASE + 4);
        assert_eq!(t.lookup(0, 2, BASE + 1, 0).eax, 0x0004_0011);
        let l2 = t.lookup(0, 2, BASE + 2, 0);
        assert_eq!((l2.eax, l2.ebx), (1, 0x4000_0000));
        assert_eq!(t.lookup(0, 2, BASE + 3, 0).ecx, 1_000_000, "1 GHz TSC in kHz");
        assert_eq!(t.lookup(0, 2, BASE + 3, 1).ecx, 0x8000_0000);
        let h = t.lookup(1, 2, BASE + 4, 0);
        assert_eq!(h.eax & (1 << 3 | 1 << 6), 1 << 3 | 1 << 6);
        assert_eq!((h.ebx, h.ecx), (1, 1), "vcpu id 1, domid 1");
    }
}
