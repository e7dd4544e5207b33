//! Hypercall interception on KVM. Three strategies, best first:
//!
//! 1. `XenHvm`: the host kernel has CONFIG_KVM_XEN and KVM_CAP_XEN_HVM
//!    reports KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL; the VM is configured with
//!    KVM_XEN_HVM_CONFIG and every VMCALL/VMMCALL exits as KVM_EXIT_XEN
//!    (`xen_exit`). The hypercall page keeps its native instructions.
//! 2. `PortStub`: the platform writes hypercall-page stubs that end in
//!    `OUT HYPERCALL_PORT, AL` instead of VMCALL (`port_stub`); the backend
//!    reports that OUT as `VcpuExit::Hypercall`. Works on every KVM.
//! 3. With (2), direct VMCALL/VMMCALL in the guest's own code (Linux after
//!    XSA-466) is caught by hardware breakpoints on the sites found in the
//!    kernel's code (`guest_debug`), at most four; KVM's own hypercall
//!    handler would otherwise run and the platform never see the call.

use sim_core::layout::HYPERCALL_PORT;

use crate::caps::KvmCaps;

/// How hypercalls reach the machine on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HypercallStrategy {
    /// KVM intercepts VMCALL itself (KVM_CAP_XEN_HVM with INTERCEPT_HCALL).
    XenHvm,
    /// Hypercall-page stubs do port I/O to `HYPERCALL_PORT`.
    PortStub,
}

impl HypercallStrategy {
    pub fn detect(caps: &KvmCaps) -> Self {
        if caps.xen_hvm as u32 & kvm_bindings::KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL != 0 {
            HypercallStrategy::XenHvm
        } else {
            HypercallStrategy::PortStub
        }
    }

    /// A one-line description for `-v`.
    pub fn describe(&self) -> &'static str {
        match self {
            HypercallStrategy::XenHvm => "KVM_CAP_XEN_HVM with INTERCEPT_HCALL (VMCALL exits to xensim)",
            HypercallStrategy::PortStub => "KVM has no Xen support: hypercall-page stubs use port I/O",
        }
    }
}

/// What becomes of a VMCALL/VMMCALL the guest issues from its own code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectCalls {
    /// KVM_EXIT_XEN reports every one (strategy 1).
    Intercepted,
    /// Up to `guest_debug::MAX_SITES` sites, found before the run, get a
    /// hardware breakpoint each (strategy 3).
    Breakpoints,
    /// Neither: such a guest cannot make hypercalls on this host.
    Lost,
}

impl DirectCalls {
    pub fn detect(caps: &KvmCaps) -> Self {
        match HypercallStrategy::detect(caps) {
            HypercallStrategy::XenHvm => DirectCalls::Intercepted,
            HypercallStrategy::PortStub if caps.set_guest_debug > 0 => DirectCalls::Breakpoints,
            HypercallStrategy::PortStub => DirectCalls::Lost,
        }
    }

    pub fn describe(&self) -> &'static str {
        match self {
            DirectCalls::Intercepted => "direct VMCALL/VMMCALL exits as KVM_EXIT_XEN",
            DirectCalls::Breakpoints => {
                "direct VMCALL/VMMCALL is caught by hardware breakpoints on at most 4 sites found in the kernel"
            }
            DirectCalls::Lost => {
                "direct VMCALL/VMMCALL cannot reach the Xen platform (no KVM_CAP_SET_GUEST_DEBUG): \
                 such guests cannot make hypercalls on this host"
            }
        }
    }
}

/// Length of one hypercall-page stub written by `port_stub`.
pub const PORT_STUB_LEN: usize = 8;

/// The hypercall-page entry for hypercall `nr` under `PortStub`:
/// `mov eax, nr; out HYPERCALL_PORT, al; ret` (B8 imm32, E6 imm8, C3). It
/// clobbers only EAX, as Xen's `mov eax, nr; vmcall; ret` does, and is the
/// same bytes in 32- and 64-bit code. The port is 8-bit because every
/// other register (EBX/ECX/EDX/ESI/EDI, RDI/RSI/RDX/R10/R8) carries an
/// argument, so `OUT DX` is not an option.
pub fn port_stub(nr: u32) -> [u8; PORT_STUB_LEN] {
    let n = nr.to_le_bytes();
    [0xb8, n[0], n[1], n[2], n[3], 0xe6, HYPERCALL_PORT as u8, 0xc3]
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};

    #[test]
    fn stub_decodes_as_mov_out_ret_in_both_modes() {
        for bits in [32, 64] {
            let bytes = port_stub(0x26);
            let mut d = Decoder::new(bits, &bytes, DecoderOptions::NONE);
            let mov = d.decode();
            assert_eq!((mov.mnemonic(), mov.op0_register(), mov.immediate32()), (Mnemonic::Mov, Register::EAX, 0x26));
            let out = d.decode();
            assert_eq!(out.mnemonic(), Mnemonic::Out);
            assert_eq!(out.op0_kind(), OpKind::Immediate8);
            assert_eq!(out.immediate8() as u16, HYPERCALL_PORT);
            assert_eq!(out.op1_register(), Register::AL);
            assert_eq!(d.decode().mnemonic(), Mnemonic::Ret);
            assert_eq!(d.position(), PORT_STUB_LEN);
        }
    }

    #[test]
    fn strategy_follows_the_xen_capability() {
        let mut caps = KvmCaps::default();
        assert_eq!(HypercallStrategy::detect(&caps), HypercallStrategy::PortStub);
        caps.xen_hvm = kvm_bindings::KVM_XEN_HVM_CONFIG_HYPERCALL_MSR as i32;
        assert_eq!(HypercallStrategy::detect(&caps), HypercallStrategy::PortStub);
        caps.xen_hvm |= kvm_bindings::KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL as i32;
        assert_eq!(HypercallStrategy::detect(&caps), HypercallStrategy::XenHvm);
    }

    /// The whole table: (KVM_CAP_XEN_HVM, KVM_CAP_SET_GUEST_DEBUG) -> strategy
    /// for the hypercall page, fate of direct VMCALLs. INTERCEPT_HCALL is
    /// bit 1 of the XEN_HVM answer (api.rst); SET_GUEST_DEBUG is 0 or 1.
    #[test]
    fn decision_table() {
        use DirectCalls::*;
        use HypercallStrategy::*;
        let table = [
            (0, 0, PortStub, Lost),
            (0, 1, PortStub, Breakpoints),
            (0b1, 1, PortStub, Breakpoints), // HYPERCALL_MSR alone is not enough
            (0b10, 0, XenHvm, Intercepted),
            (0b111, 1, XenHvm, Intercepted),
        ];
        for (xen_hvm, dbg, strategy, direct) in table {
            let caps = KvmCaps { xen_hvm, set_guest_debug: dbg, ..Default::default() };
            assert_eq!((HypercallStrategy::detect(&caps), DirectCalls::detect(&caps)), (strategy, direct), "{caps}");
        }
    }
}
