//! Strategy 3: catch the guest's own VMCALL/VMMCALL instructions with
//! hardware breakpoints when KVM has no Xen support.
//!
//! Before the run the loaded kernel's code is scanned for the two
//! instructions; each site gets a debug register (KVM_SET_GUEST_DEBUG with
//! KVM_GUESTDBG_USE_HW_BP). An instruction breakpoint is a fault (SDM vol.
//! 3, 18.3.1.1): KVM_EXIT_DEBUG arrives with RIP on the VMCALL and the
//! arguments in the registers; the backend reports `VcpuExit::Hypercall`
//! and, once the platform has written RAX, steps RIP over the 3 bytes.
//! There are four debug registers, so at most four sites.

use kvm_bindings::{kvm_guest_debug, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_USE_HW_BP};
use sim_core::boot::ExecSegment;
use sim_core::memory::GuestMemory;

/// VMCALL (Intel) and VMMCALL (AMD): 0F 01 C1 and 0F 01 D9.
pub const VMCALL: [u8; 3] = [0x0f, 0x01, 0xc1];
pub const VMMCALL: [u8; 3] = [0x0f, 0x01, 0xd9];
/// Both are three bytes long.
pub const INSN_LEN: u64 = 3;
/// DR0-DR3.
pub const MAX_SITES: usize = 4;

/// Both instructions.
pub const BOTH: [[u8; 3]; 2] = [VMCALL, VMMCALL];

/// Linux's hypercall functions since XSA-466 (arch/x86/xen/xen-head.S):
/// where its VMCALL and VMMCALL are, when the kernel has a symbol table.
pub const LINUX_HYPERCALL_FUNCTIONS: [&str; 2] = ["xen_hypercall_intel", "xen_hypercall_amd"];

/// The code to scan for sites: with named hypercall functions `funcs`
/// (link address, size), only those functions (in the executable segment
/// that holds each); without, all of `code`. A kernel's whole text holds
/// other VMCALLs (KVM's and VMware's paravirt calls) and stray 0F 01 C1
/// bytes inside other instructions, more than the four breakpoints.
pub fn hypercall_code(code: &[ExecSegment], funcs: &[(String, u64, u64)]) -> Vec<ExecSegment> {
    if funcs.is_empty() {
        return code.to_vec();
    }
    funcs
        .iter()
        .filter_map(|&(_, at, size)| {
            let s = code.iter().find(|s| at >= s.vaddr && at - s.vaddr < s.len)?;
            let off = at - s.vaddr;
            Some(ExecSegment { vaddr: at, paddr: s.paddr.wrapping_add(off), len: size.min(s.len - off) })
        })
        .collect()
}

/// Offsets in `code` where VMCALL or VMMCALL bytes start.
pub fn scan(code: &[u8]) -> Vec<u64> {
    scan_for(code, &BOTH)
}

/// Offsets in `code` where one of `insns` starts.
pub fn scan_for(code: &[u8], insns: &[[u8; 3]]) -> Vec<u64> {
    code.windows(3).enumerate().filter(|(_, w)| insns.iter().any(|i| i == w)).map(|(i, _)| i as u64).collect()
}

/// The linear addresses one of `insns` in `segments` may execute at,
/// read from guest memory where the loader put them: the linked address,
/// and also the physical one when they differ (a kernel's early code runs
/// identity-mapped before it jumps to its link address). Sorted, deduplicated.
pub fn find_sites(mem: &GuestMemory, segments: &[ExecSegment], insns: &[[u8; 3]]) -> Vec<u64> {
    let mut sites = Vec::new();
    for s in segments {
        let Ok(len) = usize::try_from(s.len) else { continue };
        let mut code = vec![0u8; len];
        if mem.read(s.paddr, &mut code).is_err() {
            continue;
        }
        for off in scan_for(&code, insns) {
            sites.push(s.vaddr.wrapping_add(off));
            if s.paddr != s.vaddr {
                sites.push(s.paddr.wrapping_add(off));
            }
        }
    }
    sites.sort_unstable();
    sites.dedup();
    sites
}

/// DR7 enabling instruction breakpoints in DR0..DR(n-1) (SDM vol. 3,
/// 18.2.4): G0..G3 are bits 1, 3, 5, 7; R/Wn = 00 (instruction execution)
/// and LENn = 00 (1 byte, required for execution breakpoints) leave bits
/// 16-31 clear; bit 10 is reserved and reads as 1. Global enables survive
/// task switches, local ones (L0..L3) do not.
pub fn dr7(n: usize) -> u64 {
    (0..n.min(MAX_SITES)).fold(1 << 10, |dr7, i| dr7 | 1 << (2 * i + 1))
}

/// Too many sites for the four debug registers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0} VMCALL/VMMCALL sites in the kernel's code, but only {MAX_SITES} hardware breakpoints")]
pub struct TooManySites(pub usize);

/// The KVM_SET_GUEST_DEBUG argument for `sites` (none: debugging off).
pub fn guest_debug(sites: &[u64]) -> Result<kvm_guest_debug, TooManySites> {
    if sites.len() > MAX_SITES {
        return Err(TooManySites(sites.len()));
    }
    let mut d = kvm_guest_debug::default();
    if sites.is_empty() {
        return Ok(d);
    }
    d.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP;
    d.arch.debugreg[..sites.len()].copy_from_slice(sites);
    d.arch.debugreg[7] = dr7(sites.len());
    Ok(d)
}

/// What arming the breakpoints for a kernel came to; one line for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Armed {
    /// KVM intercepts every VMCALL itself (strategy 1): nothing to arm.
    NotNeeded,
    /// The kernel's code has no VMCALL/VMMCALL: it uses the hypercall page.
    NoSites,
    /// Breakpoints on these linear addresses.
    Sites(Vec<u64>),
    /// More sites than debug registers (even for the guest vendor's instruction).
    TooMany(usize),
    /// Sites found, but KVM cannot debug guests.
    NoGuestDebug(usize),
}

impl Armed {
    /// True when such a guest's direct hypercalls cannot reach the platform.
    pub fn is_loss(&self) -> bool {
        matches!(self, Armed::TooMany(_) | Armed::NoGuestDebug(_))
    }
}

impl std::fmt::Display for Armed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Armed::NotNeeded => write!(f, "direct VMCALL/VMMCALL exits as KVM_EXIT_XEN; no breakpoints needed"),
            Armed::NoSites => {
                write!(f, "no VMCALL/VMMCALL in the kernel's code: hypercalls go through the hypercall page")
            }
            Armed::Sites(s) => write!(f, "hardware breakpoints on the kernel's VMCALL/VMMCALL sites {s:#x?}"),
            Armed::TooMany(n) => write!(
                f,
                "the kernel has {n} VMCALL/VMMCALL sites but there are only {MAX_SITES} hardware breakpoints: \
                 this guest cannot make direct hypercalls on this host"
            ),
            Armed::NoGuestDebug(n) => write!(
                f,
                "the kernel has {n} VMCALL/VMMCALL sites but this host's KVM has neither Xen support nor \
                 guest debugging: this guest cannot make direct hypercalls on this host"
            ),
        }
    }
}

/// Whether a debug exit (#DB, vector 1, at linear address `pc` with `dr6`)
/// is one of our breakpoints: B0..B3 in DR6 (bits 0-3) name the register
/// that matched; `pc` must be that register's site.
pub fn is_site_hit(sites: &[u64], exception: u32, pc: u64, dr6: u64) -> bool {
    exception == 1 && sites.iter().enumerate().any(|(i, &a)| a == pc && dr6 >> i & 1 == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_both_instructions_and_nothing_else() {
        // mov eax, 0x22; vmcall; nop; vmmcall; 0f 01 d8 (VMRUN: not a call); ret
        let code = [0xb8, 0x22, 0, 0, 0, 0x0f, 0x01, 0xc1, 0x90, 0x0f, 0x01, 0xd9, 0x0f, 0x01, 0xd8, 0xc3];
        assert_eq!(scan(&code), [5, 9]);
        assert!(scan(&[0x0f, 0x01]).is_empty());
        assert!(scan(&[]).is_empty());
    }

    #[test]
    fn sites_come_from_executable_segments_at_both_addresses() {
        let mem = GuestMemory::new(4).unwrap();
        mem.write(0x10_0000, &[0x90, 0x0f, 0x01, 0xc1, 0xc3]).unwrap();
        mem.write(0x20_0000, &[0x0f, 0x01, 0xd9]).unwrap();
        let identity = ExecSegment { vaddr: 0x10_0000, paddr: 0x10_0000, len: 5 };
        let high = ExecSegment { vaddr: 0xffff_ffff_8120_0000, paddr: 0x20_0000, len: 3 };
        assert_eq!(find_sites(&mem, &[identity], &BOTH), [0x10_0001]);
        assert_eq!(find_sites(&mem, &[identity, high], &BOTH), [0x10_0001, 0x20_0000, 0xffff_ffff_8120_0000]);
        assert_eq!(find_sites(&mem, &[identity, high], &[VMMCALL]), [0x20_0000, 0xffff_ffff_8120_0000]);
        // A segment outside RAM is skipped, not a panic.
        let outside = ExecSegment { vaddr: 0, paddr: 0x1_0000_0000, len: 16 };
        assert!(find_sites(&mem, &[outside], &BOTH).is_empty());
    }

    #[test]
    fn named_functions_narrow_the_scan_to_their_bytes() {
        let text = ExecSegment { vaddr: 0xffff_ffff_8100_0000, paddr: 0x100_0000, len: 0x10_0000 };
        let all = [text];
        assert_eq!(hypercall_code(&all, &[]), all);
        let funcs = [
            ("xen_hypercall_intel".to_string(), 0xffff_ffff_8100_2000, 0xc),
            ("xen_hypercall_amd".to_string(), 0xffff_ffff_810f_fff8, 0x20), // runs past the segment: clipped
            ("elsewhere".to_string(), 0x1000, 0x10),                        // in no segment: dropped
        ];
        assert_eq!(
            hypercall_code(&all, &funcs),
            [
                ExecSegment { vaddr: 0xffff_ffff_8100_2000, paddr: 0x100_2000, len: 0xc },
                ExecSegment { vaddr: 0xffff_ffff_810f_fff8, paddr: 0x10f_fff8, len: 8 },
            ]
        );
    }

    #[test]
    fn dr7_enables_execute_breakpoints_per_the_sdm_layout() {
        // Hand-assembled from SDM fig. 18-1: bit 10 set; G0 = bit 1 ... G3 = bit 7.
        assert_eq!(dr7(0), 0x400);
        assert_eq!(dr7(1), 0x402);
        assert_eq!(dr7(2), 0x40a);
        assert_eq!(dr7(4), 0x4aa);
        // R/W0..3 and LEN0..3 (bits 16-31) are 00: break on execution, 1 byte.
        assert_eq!(dr7(4) >> 16, 0);
        // No local enables (L0..L3: bits 0, 2, 4, 6).
        assert_eq!(dr7(4) & 0x55, 0);
    }

    #[test]
    fn guest_debug_programs_dr0_to_dr3_and_dr7() {
        let d = guest_debug(&[0x1000, 0x2003]).unwrap();
        assert_eq!(d.control, 0x1 | 0x2_0000, "KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP (api.rst)");
        assert_eq!(d.arch.debugreg, [0x1000, 0x2003, 0, 0, 0, 0, 0, 0x40a]);
        assert_eq!(guest_debug(&[]).unwrap().control, 0);
        assert_eq!(guest_debug(&[1, 2, 3, 4, 5]), Err(TooManySites(5)));
    }

    #[test]
    fn only_a_matching_breakpoint_is_a_site_hit() {
        let sites = [0x1000, 0x2000];
        assert!(is_site_hit(&sites, 1, 0x2000, 0b10));
        assert!(!is_site_hit(&sites, 1, 0x2000, 0b01), "DR6 names the other register");
        assert!(!is_site_hit(&sites, 1, 0x3000, 0b10), "not at the site");
        assert!(!is_site_hit(&sites, 3, 0x1000, 0b01), "#BP, not #DB");
        assert!(!is_site_hit(&sites, 1, 0x1000, 1 << 14), "single step (BS)");
    }
}
