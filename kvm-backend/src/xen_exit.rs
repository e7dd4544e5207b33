//! Strategy 1: KVM's own Xen hypercall interception (CONFIG_KVM_XEN).
//!
//! With KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL set, every VMCALL/VMMCALL the
//! guest executes leaves KVM_RUN as KVM_EXIT_XEN (type KVM_EXIT_XEN_HCALL)
//! with the call decoded from the registers (Documentation/virt/kvm/api.rst,
//! "KVM_XEN_HVM_CONFIG" and "KVM_EXIT_XEN"). RIP stays on the instruction;
//! on the next KVM_RUN KVM puts `hcall.result` in RAX and steps over it.

use std::os::fd::AsRawFd;

use kvm_bindings::{kvm_xen_exit, kvm_xen_hvm_config, KVM_EXIT_XEN_HCALL, KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL};
use kvm_ioctls::VmFd;
use sim_core::state::gpr;

use crate::error::KvmError;

/// KVM_XEN_HVM_CONFIG = _IOW(KVMIO, 0x7a, struct kvm_xen_hvm_config): 56
/// bytes written. kvm-ioctls has no wrapper.
const KVM_XEN_HVM_CONFIG: libc::c_ulong = 0x4038_ae7a;

/// The hypercall-page MSR the Xen platform advertises in CPUID leaf
/// 0x40000002 EBX (xen-model's HYPERCALL_MSR; the tests crate checks they
/// agree). KVM only accepts 0x40000000..=0x4fffffff.
pub const XEN_HYPERCALL_MSR: u32 = 0x4000_0000;

/// The KVM_XEN_HVM_CONFIG argument: intercept hypercalls, hypercall MSR
/// `msr`, no blobs (KVM refuses blobs together with INTERCEPT_HCALL).
pub fn hvm_config(msr: u32) -> kvm_xen_hvm_config {
    kvm_xen_hvm_config { flags: KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL, msr, ..Default::default() }
}

/// Turn on hypercall interception for `vm`. A guest WRMSR to `msr` still
/// exits to user space while the MSR filter denies it (the platform writes
/// the page with VMCALL/VMMCALL stubs); without the filter KVM writes its
/// own page of the same shape (`mov eax, n; vmcall; ret`, 32-byte stubs).
pub(crate) fn configure(vm: &VmFd, msr: u32) -> Result<(), KvmError> {
    let cfg = hvm_config(msr);
    // SAFETY: KVM_XEN_HVM_CONFIG reads one kvm_xen_hvm_config from the pointer.
    let r = unsafe { libc::ioctl(vm.as_raw_fd(), KVM_XEN_HVM_CONFIG as _, &cfg) };
    if r != 0 {
        return Err(KvmError::Ioctl { what: "KVM_XEN_HVM_CONFIG", source: std::io::Error::last_os_error() });
    }
    Ok(())
}

/// One hypercall as KVM decoded it (kvm_xen_exit.u.hcall).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenHcall {
    /// The caller was in 64-bit mode (arguments in RDI, RSI, RDX, R10, R8, R9).
    pub longmode: bool,
    pub cpl: u32,
    /// The hypercall number (RAX).
    pub input: u64,
    pub params: [u64; 6],
}

/// Where each calling convention keeps the six arguments (Xen's
/// hvm_hypercall: 64-bit RDI RSI RDX R10 R8 R9; 32-bit EBX ECX EDX ESI EDI EBP).
const ARGS_64: [usize; 6] = [gpr::RDI, gpr::RSI, gpr::RDX, gpr::R10, gpr::R8, gpr::R9];
const ARGS_32: [usize; 6] = [gpr::RBX, gpr::RCX, gpr::RDX, gpr::RSI, gpr::RDI, gpr::RBP];

impl XenHcall {
    /// The call in a KVM_EXIT_XEN exit; None for other exit types.
    pub fn from_exit(x: &kvm_xen_exit) -> Option<XenHcall> {
        if x.type_ != KVM_EXIT_XEN_HCALL {
            return None;
        }
        // SAFETY: type KVM_EXIT_XEN_HCALL says `hcall` is the live member
        // (and it is the union's only member).
        let h = unsafe { x.u.hcall };
        Some(XenHcall { longmode: h.longmode != 0, cpl: h.cpl, input: h.input, params: h.params })
    }

    /// The registers the platform's hypercall entry reads: `base` (the
    /// vCPU's registers) with the number and arguments KVM decoded put
    /// where the caller's convention keeps them. A 32-bit caller's values
    /// replace only the low halves, as the caller could not see the rest.
    pub fn registers(&self, base: &[u64; 16]) -> [u64; 16] {
        let mut g = *base;
        let (regs, mask) = if self.longmode { (&ARGS_64, u64::MAX) } else { (&ARGS_32, 0xffff_ffff) };
        for (&r, &v) in std::iter::once(&gpr::RAX).chain(regs).zip(std::iter::once(&self.input).chain(&self.params)) {
            g[r] = g[r] & !mask | v & mask;
        }
        g
    }
}

/// Put the hypercall's return value (the platform's RAX) where KVM takes
/// it from on the next KVM_RUN.
pub fn set_result(x: &mut kvm_xen_exit, rax: u64) {
    // Writing a Copy field of a union is safe (only reads are not).
    x.u.hcall.result = rax;
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_xen_exit__bindgen_ty_1__bindgen_ty_1 as Hcall;

    fn exit(longmode: u32, input: u64, params: [u64; 6]) -> kvm_xen_exit {
        let mut x = kvm_xen_exit { type_: KVM_EXIT_XEN_HCALL, u: unsafe { std::mem::zeroed() } };
        x.u.hcall = Hcall { longmode, cpl: 0, input, result: 0, params };
        x
    }

    #[test]
    fn config_is_intercept_with_the_msr_and_no_blobs() {
        let c = hvm_config(XEN_HYPERCALL_MSR);
        // api.rst: flags bit 1 = KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL.
        assert_eq!((c.flags, c.msr), (1 << 1, 0x4000_0000));
        assert_eq!((c.blob_addr_32, c.blob_addr_64, c.blob_size_32, c.blob_size_64), (0, 0, 0, 0));
        // _IOW(0xAE, 0x7a, 56): dir write (1) << 30 | size << 16 | type << 8 | nr.
        assert_eq!(std::mem::size_of::<kvm_xen_hvm_config>(), 56);
        assert_eq!(KVM_XEN_HVM_CONFIG, (1 << 30) | (56 << 16) | (0xae << 8) | 0x7a);
    }

    #[test]
    fn a_64_bit_call_lands_in_rdi_rsi_rdx_r10_r8_r9() {
        let base: [u64; 16] = std::array::from_fn(|i| 0x1111_0000_0000_0000 | i as u64);
        let h = XenHcall::from_exit(&exit(1, 18, [1, 2, 3, 4, 5, 6])).unwrap();
        assert!(h.longmode);
        let g = h.registers(&base);
        // Register numbers in encoding order: RAX 0, RCX 1, RDX 2, RBX 3,
        // RSP 4, RBP 5, RSI 6, RDI 7, R8 8, R9 9, R10 10.
        assert_eq!((g[0], g[7], g[6], g[2], g[10], g[8], g[9]), (18, 1, 2, 3, 4, 5, 6));
        for untouched in [1, 3, 4, 5, 11, 12, 13, 14, 15] {
            assert_eq!(g[untouched], base[untouched], "register {untouched}");
        }
    }

    #[test]
    fn a_32_bit_call_lands_in_ebx_ecx_edx_esi_edi_ebp_low_halves() {
        let base = [0xdead_beef_0000_0000u64; 16];
        let h = XenHcall::from_exit(&exit(0, 29, [0xa, 0xb, 0xc, 0xd, 0xe, 0xf])).unwrap();
        let g = h.registers(&base);
        let hi = 0xdead_beef_0000_0000;
        assert_eq!(g[0], hi | 29);
        assert_eq!((g[3], g[1], g[2], g[6], g[7], g[5]), (hi | 0xa, hi | 0xb, hi | 0xc, hi | 0xd, hi | 0xe, hi | 0xf));
        assert_eq!((g[8], g[9], g[10], g[4]), (base[8], base[9], base[10], base[4]));
    }

    #[test]
    fn other_exit_types_are_not_hypercalls() {
        let mut x = exit(1, 0, [0; 6]);
        x.type_ = 2;
        assert_eq!(XenHcall::from_exit(&x), None);
    }

    #[test]
    fn the_result_goes_into_the_exit_for_kvm() {
        let mut x = exit(1, 17, [0; 6]);
        set_result(&mut x, (-38i64) as u64);
        assert_eq!(unsafe { x.u.hcall.result }, 0xffff_ffff_ffff_ffda);
        // Nothing else in the exit changes.
        assert_eq!(XenHcall::from_exit(&x).unwrap().input, 17);
    }
}
