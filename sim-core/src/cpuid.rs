//! One CPUID table for every backend. The base CPU is a plain x86-64
//! baseline (what the interpreter implements); the platform adds its leaves
//! (the Xen leaves at 0x40000000) with `set`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::paging::MAX_PHYS_BITS;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CpuidResult {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Xen's HVM features leaf (base 0x40000000 + 4) and its vCPU-id flag.
pub const XEN_HVM_LEAF: u32 = 0x4000_0004;
pub const XEN_HVM_VCPU_ID_PRESENT: u32 = 1 << 3;

/// The CPU vendor the guest sees; decides e.g. VMCALL vs VMMCALL stubs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Vendor {
    #[default]
    Intel,
    Amd,
}

/// Feature bits (leaf 1 EDX/ECX, leaf 0x80000001 EDX/ECX).
pub mod feat {
    pub const EDX_FPU: u32 = 1 << 0;
    pub const EDX_DE: u32 = 1 << 2;
    pub const EDX_PSE: u32 = 1 << 3;
    pub const EDX_TSC: u32 = 1 << 4;
    pub const EDX_MSR: u32 = 1 << 5;
    pub const EDX_PAE: u32 = 1 << 6;
    pub const EDX_CX8: u32 = 1 << 8;
    pub const EDX_APIC: u32 = 1 << 9;
    pub const EDX_SEP: u32 = 1 << 11;
    pub const EDX_PGE: u32 = 1 << 13;
    pub const EDX_CMOV: u32 = 1 << 15;
    pub const EDX_PAT: u32 = 1 << 16;
    pub const EDX_PSE36: u32 = 1 << 17;
    pub const EDX_CLFSH: u32 = 1 << 19;
    pub const EDX_MMX: u32 = 1 << 23;
    pub const EDX_FXSR: u32 = 1 << 24;
    pub const EDX_SSE: u32 = 1 << 25;
    pub const EDX_SSE2: u32 = 1 << 26;
    pub const ECX_CX16: u32 = 1 << 13;
    pub const ECX_X2APIC: u32 = 1 << 21;
    pub const ECX_TSC_DEADLINE: u32 = 1 << 24;
    pub const ECX_HYPERVISOR: u32 = 1 << 31;
    pub const EXT_EDX_SYSCALL: u32 = 1 << 11;
    pub const EXT_EDX_NX: u32 = 1 << 20;
    pub const EXT_EDX_RDTSCP: u32 = 1 << 27;
    pub const EXT_EDX_LM: u32 = 1 << 29;
    pub const EXT_ECX_LAHF_LM: u32 = 1 << 0;
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidTable {
    vendor: Vendor,
    entries: BTreeMap<(u32, u32), CpuidResult>,
    /// Leaves whose answer depends on ECX (the others ignore the sub-leaf).
    indexed: Vec<u32>,
}

fn vendor_regs(s: &[u8; 12]) -> (u32, u32, u32) {
    let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    (w(0), w(4), w(8))
}

impl CpuidTable {
    /// The baseline CPU: family 6, the x86-64 baseline features with
    /// FXSR/SSE/SSE2, CX16, x2APIC, TSC-deadline, RDTSCP, NX and LM.
    pub fn baseline(vendor: Vendor) -> Self {
        let mut t = CpuidTable { vendor, entries: BTreeMap::new(), indexed: vec![4, 7, 0xb] };
        let name: &[u8; 12] = match vendor {
            Vendor::Intel => b"GenuineIntel",
            Vendor::Amd => b"AuthenticAMD",
        };
        let (b, d, c) = vendor_regs(name);
        t.set(0, 0, CpuidResult { eax: 0xb, ebx: b, ecx: c, edx: d });
        use feat::*;
        let edx = EDX_FPU
            | EDX_DE
            | EDX_PSE
            | EDX_TSC
            | EDX_MSR
            | EDX_PAE
            | EDX_CX8
            | EDX_APIC
            | EDX_SEP
            | EDX_PGE
            | EDX_CMOV
            | EDX_PAT
            | EDX_PSE36
            | EDX_CLFSH
            | EDX_MMX
            | EDX_FXSR
            | EDX_SSE
            | EDX_SSE2;
        let ecx = ECX_CX16 | ECX_X2APIC | ECX_TSC_DEADLINE | ECX_HYPERVISOR;
        // Family 6 model 0x3a stepping 9; CLFLUSH line 8 qwords.
        t.set(1, 0, CpuidResult { eax: 0x0003_06a9, ebx: 8 << 8, ecx, edx });
        // Leaf 7.0: no structured extended features.
        t.set(7, 0, CpuidResult::default());
        let ext_edx = EXT_EDX_SYSCALL | EXT_EDX_NX | EXT_EDX_RDTSCP | EXT_EDX_LM;
        let (eb, ed, ec) = vendor_regs(name);
        t.set(0x8000_0000, 0, CpuidResult { eax: 0x8000_0008, ebx: eb, ecx: ec, edx: ed });
        t.set(0x8000_0001, 0, CpuidResult { eax: 0x0003_06a9, ebx: 0, ecx: EXT_ECX_LAHF_LM, edx: ext_edx });
        let brand = *b"xensim virtual x86-64 CPU\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        for (i, leaf) in (0x8000_0002u32..=0x8000_0004).enumerate() {
            let w = |j: usize| {
                let o = i * 16 + j * 4;
                u32::from_le_bytes([brand[o], brand[o + 1], brand[o + 2], brand[o + 3]])
            };
            t.set(leaf, 0, CpuidResult { eax: w(0), ebx: w(1), ecx: w(2), edx: w(3) });
        }
        t.set(0x8000_0008, 0, CpuidResult { eax: MAX_PHYS_BITS | (48 << 8), ebx: 0, ecx: 0, edx: 0 });
        t
    }

    pub fn vendor(&self) -> Vendor {
        self.vendor
    }

    pub fn set(&mut self, leaf: u32, subleaf: u32, r: CpuidResult) {
        self.entries.insert((leaf, subleaf), r);
    }

    /// Declare that `leaf` is indexed by ECX.
    pub fn set_indexed(&mut self, leaf: u32) {
        if !self.indexed.contains(&leaf) {
            self.indexed.push(leaf);
        }
    }

    /// Entries as stored (for KVM_SET_CPUID2), ascending.
    pub fn entries(&self) -> impl Iterator<Item = (u32, u32, CpuidResult)> + '_ {
        self.entries.iter().map(|(&(l, s), &r)| (l, s, r))
    }

    pub fn is_indexed(&self, leaf: u32) -> bool {
        self.indexed.contains(&leaf)
    }

    /// CPUID as vCPU `vcpu_id` of `vcpu_count` executes it. Leaves above the
    /// maximum of their range return the highest basic leaf (Intel's rule);
    /// per-vCPU fields (APIC IDs, topology) are filled in here.
    pub fn lookup(&self, vcpu_id: u32, vcpu_count: u32, leaf: u32, subleaf: u32) -> CpuidResult {
        let max_of = |base: u32| self.entries.get(&(base, 0)).map(|r| r.eax);
        let range_base = leaf & 0xffff_0000;
        let leaf = match max_of(range_base) {
            Some(max) if leaf <= max => leaf,
            _ if range_base == 0x4000_0000 && max_of(range_base).is_none() => {
                return CpuidResult::default();
            }
            _ => max_of(0).unwrap_or(0),
        };
        let sub = if self.is_indexed(leaf) { subleaf } else { 0 };
        let mut r = self.entries.get(&(leaf, sub)).copied().unwrap_or_default();
        match leaf {
            1 => {
                r.ebx = (r.ebx & 0x00ff_ffff) | (vcpu_id << 24);
                if vcpu_count > 1 {
                    r.ebx = (r.ebx & 0xff00_ffff) | (vcpu_count.min(255) << 16);
                    r.edx |= 1 << 28; // HTT: the count field is valid
                }
            }
            0xb => {
                // x2APIC topology: one thread per core, all cores in a package.
                let (shift, count, level_type) = match sub {
                    0 => (0, 1, 1),
                    1 => (32 - (vcpu_count.max(1) - 1).leading_zeros(), vcpu_count, 2),
                    _ => (0, 0, 0),
                };
                r = CpuidResult { eax: shift, ebx: count, ecx: (level_type << 8) | (sub & 0xff), edx: vcpu_id };
            }
            // Xen's HVM leaf: EBX carries the vCPU id when EAX bit 3
            // (XEN_HVM_CPUID_VCPU_ID_PRESENT) says so.
            XEN_HVM_LEAF if r.eax & XEN_HVM_VCPU_ID_PRESENT != 0 => r.ebx = vcpu_id,
            _ => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_string_and_features() {
        let t = CpuidTable::baseline(Vendor::Intel);
        let r = t.lookup(0, 1, 0, 0);
        let mut s = Vec::new();
        for w in [r.ebx, r.edx, r.ecx] {
            s.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(&s, b"GenuineIntel");
        let e = t.lookup(0, 1, 0x8000_0001, 0);
        assert_ne!(e.edx & feat::EXT_EDX_LM, 0);
        assert_eq!(t.lookup(0, 1, 0x8000_0008, 0).eax & 0xff, MAX_PHYS_BITS);
    }

    #[test]
    fn apic_id_is_per_vcpu() {
        let t = CpuidTable::baseline(Vendor::Amd);
        assert_eq!(t.lookup(3, 4, 1, 0).ebx >> 24, 3);
        assert_eq!(t.lookup(3, 4, 0xb, 0).edx, 3);
        assert_eq!(t.lookup(0, 4, 0xb, 1).ebx, 4);
        assert_eq!((t.lookup(0, 4, 1, 0).ebx >> 16) & 0xff, 4);
    }

    #[test]
    fn out_of_range_leaves_follow_intels_rule() {
        let t = CpuidTable::baseline(Vendor::Intel);
        // Above the basic maximum: the highest basic leaf's data (leaf 0xb, sub 0 shape).
        assert_eq!(t.lookup(0, 1, 0x20, 0), t.lookup(0, 1, 0xb, 0));
        // No hypervisor leaves until the platform adds them.
        assert_eq!(t.lookup(0, 1, 0x4000_0000, 0), CpuidResult::default());
        let mut t2 = t.clone();
        t2.set(0x4000_0000, 0, CpuidResult { eax: 0x4000_0004, ..Default::default() });
        assert_eq!(t2.lookup(0, 1, 0x4000_0000, 0).eax, 0x4000_0004);
    }

    #[test]
    fn xen_hvm_leaf_reports_each_vcpus_id() {
        let mut t = CpuidTable::baseline(Vendor::Intel);
        t.set(0x4000_0000, 0, CpuidResult { eax: 0x4000_0004, ..Default::default() });
        t.set(XEN_HVM_LEAF, 0, CpuidResult { eax: 1 << 6, ebx: 0, ecx: 1, edx: 0 });
        assert_eq!(t.lookup(2, 4, XEN_HVM_LEAF, 0).ebx, 0, "flag absent: EBX as stored");
        t.set(XEN_HVM_LEAF, 0, CpuidResult { eax: (1 << 6) | XEN_HVM_VCPU_ID_PRESENT, ebx: 0, ecx: 1, edx: 0 });
        assert_eq!(t.lookup(2, 4, XEN_HVM_LEAF, 0).ebx, 2);
        assert_eq!(t.lookup(3, 4, XEN_HVM_LEAF, 0).ebx, 3);
        assert_eq!(t.lookup(3, 4, XEN_HVM_LEAF, 0).ecx, 1, "other registers untouched");
    }
}
